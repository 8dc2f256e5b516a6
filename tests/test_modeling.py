"""The model: parity with an independent implementation, backends, gradients, resolution, compile, bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vit_hf import VitHfConfig, VitHfForImageClassification, VitHfModel, resample_position_embedding
from vit_hf.modeling_vit_hf import sincos_2d_position_embedding

# Every switch on at once (except those that exclude each other), so one model exercises every parameter.
ALL_FEATURES = dict(
    num_register_tokens=2,
    qk_norm=True,
    layer_scale_init_value=0.1,
    pre_norm=True,
    representation_size=24,
    hidden_act="gelu_pytorch_tanh",
)


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Visible random values in every tensor (LayerNorm scales != 1, biases != 0), so no mapping hides at init."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            values = torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.3
            if name.endswith("weight") and p.ndim == 1:
                values = 1.0 + values
            p.copy_(values.to(p.dtype))
    return model


def make(config_kwargs=None, attn="eager", dtype=torch.float64, cls=VitHfForImageClassification, seed=0):
    config = VitHfConfig.from_preset("test", num_labels=10, **(config_kwargs or {}))
    config._attn_implementation = attn
    return randomize(cls(config), seed).to(dtype).eval()


# ----------------------------------------------------------------------------------------------- independent parity
def test_matches_transformers_vit_in_float64():
    """Copy a random transformers ViTForImageClassification into ours: logits agree to 1e-10 in float64.

    The config sets only the sizes, so this also pins the other constructor defaults (the family switches off): a
    default that added a parameter fails the strict load, one that changed the computation the logits (one that
    resized on its own, dynamic_img_size, fails test_bad_input_errors_name_the_problem)."""
    from transformers import ViTConfig, ViTForImageClassification

    hf_config = ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, image_size=32,
        patch_size=8, num_labels=10, layer_norm_eps=1e-6, hidden_act="gelu",
        attn_implementation="sdpa",  # transformers' eager softmax is always float32, which would cap the parity
    )
    hf = randomize(ViTForImageClassification(hf_config), seed=1).double().eval()
    ours = VitHfForImageClassification(VitHfConfig.from_preset("test", num_labels=10)).double().eval()
    src = hf.state_dict()
    mapped = {
        "vit.cls_token": src["vit.embeddings.cls_token"],
        "vit.pos_embed": src["vit.embeddings.position_embeddings"],
        "vit.patch_embed.proj.weight": src["vit.embeddings.patch_embeddings.projection.weight"],
        "vit.patch_embed.proj.bias": src["vit.embeddings.patch_embeddings.projection.bias"],
        "vit.norm.weight": src["vit.layernorm.weight"],
        "vit.norm.bias": src["vit.layernorm.bias"],
        "head.weight": src["classifier.weight"],
        "head.bias": src["classifier.bias"],
    }
    for i in range(2):
        a, b = f"vit.layers.{i}.", f"vit.blocks.{i}."
        for part in ("weight", "bias"):
            # HF keeps separate q/k/v; our fused qkv stacks them as rows (qkv h d), timm's layout
            mapped[b + f"attn.qkv.{part}"] = torch.cat([src[a + f"attention.{n}_proj.{part}"] for n in "qkv"])
            mapped[b + f"attn.proj.{part}"] = src[a + f"attention.o_proj.{part}"]
            mapped[b + f"norm1.{part}"] = src[a + f"layernorm_before.{part}"]
            mapped[b + f"norm2.{part}"] = src[a + f"layernorm_after.{part}"]
            mapped[b + f"mlp.fc1.{part}"] = src[a + f"mlp.fc1.{part}"]
            mapped[b + f"mlp.fc2.{part}"] = src[a + f"mlp.fc2.{part}"]
    ours.load_state_dict(mapped, strict=True)
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected, got = hf(x).logits, ours(x).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)


def test_attention_is_softmax_over_keys_with_head_dim_scale():
    """The seed's defects: softmax over heads, scale after softmax by sqrt(width). Check against a direct formula."""
    model = make(cls=VitHfModel)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        out = model(x, output_attentions=True, output_hidden_states=True)
        block = model.blocks[0]
        h = block.norm1(out.hidden_states[0])
        q, k, _ = block.attn.qkv(h).reshape(2, h.shape[1], 3, 4, 8).permute(2, 0, 3, 1, 4)
        expected = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8), dim=-1)
    torch.testing.assert_close(out.attentions[0], expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(out.attentions[0].sum(-1), torch.ones_like(out.attentions[0].sum(-1)))


def test_sincos2d_table_matches_big_vision_formula():
    import numpy as np

    gh, gw, d = 3, 5, 16
    y, x = np.mgrid[:gh, :gw]
    omega = 1.0 / 10_000 ** (np.arange(d // 4) / (d // 4 - 1))
    xs, ys = np.einsum("m,d->md", x.flatten(), omega), np.einsum("m,d->md", y.flatten(), omega)
    expected = np.concatenate([np.sin(xs), np.cos(xs), np.sin(ys), np.cos(ys)], axis=1)[None]
    np.testing.assert_allclose(sincos_2d_position_embedding((gh, gw), d).numpy(), expected, atol=1e-12)


# ----------------------------------------------------------------------------------------------- backends
@pytest.mark.parametrize("features", [{}, ALL_FEATURES, {"pooling": "map", "class_token": False}])
def test_eager_sdpa_flex_agree_and_return_attention_maps(features, pixel_values):
    ref = make(features, attn="eager", dtype=torch.float32)
    x = pixel_values
    with torch.no_grad():
        expected = ref(x, output_attentions=True)
    for attn in ("sdpa", "flex_attention"):
        model = make(features, attn=attn, dtype=torch.float32)
        with torch.no_grad():
            plain = model(x)
            with_maps = model(x, output_attentions=True)
        torch.testing.assert_close(plain.logits, expected.logits, rtol=0, atol=1e-5)
        assert len(with_maps.attentions) == ref.config.num_hidden_layers
        for a, b in zip(with_maps.attentions, expected.attentions):
            assert a is not None
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_hidden_states_are_embeddings_then_each_block(pixel_values):
    model = make(dtype=torch.float32)
    with torch.no_grad():
        out = model.vit(pixel_values, output_hidden_states=True)
    assert len(out.hidden_states) == model.config.num_hidden_layers + 1
    torch.testing.assert_close(model.vit.norm(out.hidden_states[-1]), out.last_hidden_state)


# ----------------------------------------------------------------------------------------------- training mechanics
def test_every_parameter_gets_a_gradient():
    for features in (ALL_FEATURES, {"pooling": "map", "class_token": False}, {"pooling": "mean"}):
        model = make(features, dtype=torch.float32).train()
        loss = model(torch.randn(2, 3, 32, 32), labels=torch.tensor([1, 2])).loss
        loss.backward()
        for name, p in model.named_parameters():
            assert p.grad is not None, f"no gradient for {name}"
            assert torch.isfinite(p.grad).all(), f"non-finite gradient for {name}"
            assert p.grad.abs().sum() > 0, f"zero gradient for {name}"


def test_gradient_checkpointing_gives_same_loss_and_gradients():
    x, y = torch.randn(2, 3, 32, 32, dtype=torch.float64), torch.tensor([3, 4])
    results = []
    for checkpointing in (False, True):
        model = make(ALL_FEATURES).train()
        if checkpointing:
            model.gradient_checkpointing_enable()
            assert all(b.gradient_checkpointing for b in model.vit.blocks)
        loss = model(x, labels=y).loss
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_a, loss_b, rtol=0, atol=1e-12)
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=0, atol=1e-12, msg=name)


@pytest.mark.parametrize(
    "problem_type,labels,loss_fn",
    [
        ("single_label_classification", torch.tensor([1, 7]), lambda z, y: F.cross_entropy(z, y)),
        ("multi_label_classification", (torch.rand(2, 10) > 0.5).double(), F.binary_cross_entropy_with_logits),
        ("regression", torch.randn(2, 10, dtype=torch.float64), F.mse_loss),
    ],
)
def test_loss_by_problem_type(problem_type, labels, loss_fn):
    model = make({"problem_type": problem_type})
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    out = model(x, labels=labels)
    torch.testing.assert_close(out.loss, loss_fn(out.logits, labels))


def test_save_load_is_bit_identical(tmp_path, pixel_values):
    model = make(ALL_FEATURES, attn="sdpa", dtype=torch.float32)  # the backend from_pretrained picks by default
    model.save_pretrained(tmp_path)
    loaded = VitHfForImageClassification.from_pretrained(tmp_path).eval()
    for (n, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), n
    with torch.no_grad():
        assert torch.equal(model(pixel_values).logits, loaded(pixel_values).logits)


@pytest.mark.slow
def test_torch_compile_fullgraph_matches_eager_without_graph_breaks(pixel_values):
    """inductor (torch.compile's default) on the plain model: each distinct fused kernel is a g++ run on a cold cache,
    ~16 s here, ~7 s fewer than with every feature on. Every feature on, at two grids (the runtime position
    resampling recompiles), traced with aot_eager: dynamo's fullgraph tracing, which a graph break fails, and AOT
    autograd, without inductor's C++ code generation (the tracing is what vit_hf's code decides)."""
    plain = make(attn="sdpa", dtype=torch.float32)
    inductor = torch.compile(plain, fullgraph=True, backend="inductor")  # a graph break raises
    model = make(ALL_FEATURES, attn="sdpa", dtype=torch.float32)
    traced = torch.compile(model, fullgraph=True, backend="aot_eager")
    other_size = torch.randn(2, 3, 48, 40)
    with torch.no_grad():
        torch.testing.assert_close(inductor(pixel_values).logits, plain(pixel_values).logits, rtol=1e-4, atol=1e-5)
        for size in (pixel_values, other_size):
            torch.testing.assert_close(traced(size, interpolate_pos_encoding=True).logits,
                                       model(size, interpolate_pos_encoding=True).logits, rtol=1e-4, atol=1e-5)


def test_gradient_checkpointing_with_attention_maps():
    model = make(ALL_FEATURES).train()
    model.gradient_checkpointing_enable()
    out = model(torch.randn(2, 3, 32, 32, dtype=torch.float64), labels=torch.tensor([0, 1]), output_attentions=True)
    out.loss.backward()
    assert len(out.attentions) == model.config.num_hidden_layers
    assert all(p.grad is not None for p in model.parameters())


# ----------------------------------------------------------------------------------------------- resolution
@pytest.mark.parametrize("size", [(48, 48), (32, 48), (24, 40), (16, 16)])
@pytest.mark.parametrize("features", [{}, {"no_embed_class": True, "num_register_tokens": 1}])
def test_interpolate_pos_encoding_any_size_equals_resized_model(size, features):
    model = make(features)
    x = torch.randn(1, 3, *size, dtype=torch.float64)
    with torch.no_grad():
        interpolated = model(x, interpolate_pos_encoding=True).logits
    with pytest.raises(ValueError, match="interpolate_pos_encoding=True"):
        model(x)
    model.vit.resize_position_embeddings(size)
    assert tuple(model.config.image_hw) == size
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, interpolated, rtol=0, atol=1e-12)


def test_resampling_runs_in_float32_for_low_precision_tables():
    table = torch.randn(1, 1 + 16, 8)
    low = resample_position_embedding(table.bfloat16(), (4, 4), (6, 6), 1, "timm")
    ref = resample_position_embedding(table.bfloat16().float(), (4, 4), (6, 6), 1, "timm")
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low, ref.bfloat16(), rtol=0, atol=0)
    assert torch.equal(low[:, :1], table[:, :1].bfloat16())  # the class-token slot is never resampled


@pytest.mark.parametrize("algorithm", ["timm", "timm_npz", "google", "hf"])
def test_resize_records_algorithm_and_survives_save(tmp_path, algorithm):
    model = make(attn="sdpa")
    model.vit.resize_position_embeddings((40, 24), algorithm=algorithm)
    model.save_pretrained(tmp_path)
    loaded = VitHfForImageClassification.from_pretrained(tmp_path, dtype=torch.float64).eval()
    assert loaded.config.pos_embed_interpolation == algorithm
    assert tuple(loaded.config.image_hw) == (40, 24)
    x = torch.randn(1, 3, 40, 24, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, model(x).logits, rtol=0, atol=1e-12)


def test_google_algorithm_is_corner_aligned_linear_zoom():
    scipy_ndimage = pytest.importorskip("scipy.ndimage")
    grid = torch.randn(1, 36, 8, dtype=torch.float64)
    ours = resample_position_embedding(grid, (6, 6), (4, 4), 0, "google")[0].reshape(4, 4, 8)
    expected = scipy_ndimage.zoom(grid[0].reshape(6, 6, 8).numpy(), (4 / 6, 4 / 6, 1), order=1)
    assert abs(ours.numpy() - expected).max() < 1e-6


# ----------------------------------------------------------------------------------------------- bad input
def test_bad_input_errors_name_the_problem(tiny_config):
    model = VitHfForImageClassification(tiny_config).eval()
    cases = [
        (torch.randn(2, 1, 32, 32), "1 channel"),
        (torch.randn(2, 3, 30, 32), "not divisible by the patch size"),
        (torch.randn(3, 32, 32), "add the batch axis"),
        (torch.randn(0, 3, 32, 32), "empty batch"),
        (torch.randn(1, 3, 48, 48), "interpolate_pos_encoding=True"),
    ]
    for x, message in cases:
        with pytest.raises(ValueError, match=message):
            model(x)
    with pytest.raises(ValueError, match="pixel_values is required"):
        model(None)
    with pytest.raises(ValueError, match="floating-point pixels"):
        model(torch.randint(0, 255, (1, 3, 32, 32), dtype=torch.uint8))
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        model(torch.randn(1, 3, 32, 32).numpy())
    with pytest.raises(ValueError, match="positive int"):
        model.vit.resize_position_embeddings((40,))


def test_a_keyword_the_forward_would_ignore_is_refused(tiny_config, pixel_values):
    """`attention_mask` (a mask the caller believes applied), a misspelt flag, or NaFlex's patch mask without its grids:
    refused by name in every head. What transformers itself hands a forward (the Trainer's `num_items_in_batch`) and a
    keyword given as None (peft's task wrappers pass `attention_mask=None`) are accepted and change nothing."""
    from vit_hf import VitHfBackbone, VitHfForMaskedImageModeling

    for cls in (VitHfModel, VitHfForImageClassification, VitHfBackbone, VitHfForMaskedImageModeling):
        model = cls(tiny_config).eval()
        for name in ("attention_mask", "output_hidden_state"):
            refused = rf"{cls.__name__}\.forward\(\) got unexpected keyword argument\(s\) {name}:"
            with pytest.raises(TypeError, match=refused):
                model(pixel_values, **{name: True})
        with torch.no_grad():
            plain, given = model(pixel_values), model(pixel_values, num_items_in_batch=7, attention_mask=None)
        assert all(torch.equal(a, b) for a, b in zip(plain.to_tuple(), given.to_tuple()) if torch.is_tensor(a))
    with pytest.raises(ValueError, match="pixel_attention_mask without spatial_shapes"):
        VitHfForImageClassification(tiny_config)(pixel_values, pixel_attention_mask=torch.ones(2, 16))


def test_peft_task_wrapper_passes_its_none_keywords(tiny_config, pixel_values):
    """peft's FEATURE_EXTRACTION wrapper calls the model with `input_ids=None, attention_mask=None, inputs_embeds=None`
    beside the pixels: they ask for nothing and pass the keyword check; the adapters start at zero, so the output is
    the base model's."""
    peft = pytest.importorskip("peft")
    model = VitHfModel(tiny_config).eval()
    with torch.no_grad():
        base = model(pixel_values).last_hidden_state
        lora = peft.LoraConfig(task_type="FEATURE_EXTRACTION", target_modules=["qkv"], r=2)
        wrapped = peft.get_peft_model(model, lora)
        torch.testing.assert_close(wrapped(pixel_values=pixel_values).last_hidden_state, base, rtol=0, atol=0)


def test_crop_remainder_ignores_the_pixels_past_the_last_whole_patch():
    """A stride-P convolution never reads them (timm, transformers' SigLIP so400m/14 at 384 px): neither does the
    model with `crop_remainder`; the grid, not the pixel size, must match the position table."""
    model = make(dict(image_size=(36, 44), crop_remainder=True))
    assert model.config.grid_size == (4, 5)
    x = torch.randn(2, 3, 36, 44, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    conv = F.conv2d(x, model.vit.patch_embed.proj.weight, model.vit.patch_embed.proj.bias, stride=8)
    ours = model.vit.patch_embed(x)
    torch.testing.assert_close(ours, conv.flatten(2).transpose(1, 2), rtol=0, atol=1e-12)
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, model(x[..., :32, :40]).logits, rtol=0, atol=0)
        assert not torch.equal(model(x).logits, model(x[..., 4:, 4:]).logits)  # the bottom/right pixels go


def test_bad_config_errors_name_the_field():
    with pytest.raises(ValueError, match="not divisible by num_attention_heads"):
        VitHfConfig(hidden_size=30, num_attention_heads=4)
    with pytest.raises(ValueError, match="unknown preset"):
        VitHfConfig.from_preset("gigantic")
    with pytest.raises(ValueError, match="pooling"):
        VitHfConfig(pooling="max")
    with pytest.raises(ValueError, match="not divisible by patch_size.*crop_remainder=True"):
        VitHfConfig(image_size=30, patch_size=8)
    with pytest.raises(ValueError, match="hidden_act"):
        VitHfConfig(hidden_act="swishy")
    with pytest.raises(ValueError, match="sincos2d"):
        VitHfConfig(hidden_size=30, num_attention_heads=3, pos_embed_type="sincos2d")
    for field in ("num_attention_heads", "patch_size", "hidden_size", "num_channels"):
        with pytest.raises(ValueError, match=f"{field}.* must be a positive integer"):
            VitHfConfig(**{field: 0})
    with pytest.raises(ValueError, match="would pool register token 0"):
        VitHfConfig(class_token=False, num_register_tokens=4, pooling="token")
    with pytest.raises(ValueError, match="pooling='none'"):
        VitHfForImageClassification(VitHfConfig.from_preset("test", pooling="none", num_labels=0))


# ----------------------------------------------------------------------------------------------- family switches
# Each switch added for transformers' families is off by default and checked against its source here;
# the families themselves are checked end to end in tests/test_convert_transformers.py.
def _timm_to_ours(state: dict) -> dict:
    return {(k if k.startswith("head") else f"vit.{k}"): v for k, v in state.items()}


def test_distilled_equals_timm_vision_transformer_distilled():
    """DeiT distilled: [cls, dist, patches] + positions, heads on tokens 0 and 1 averaged (timm at inference)."""
    from timm.models.deit import VisionTransformerDistilled

    timm_model = VisionTransformerDistilled(
        img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, mlp_ratio=37 / 32, num_classes=10
    )
    timm_model = randomize(timm_model, seed=3).double().eval()
    model = make({"distilled": True})
    model.load_state_dict(_timm_to_ours(timm_model.state_dict()), strict=True)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, timm_model(x), rtol=0, atol=1e-10)
        pooled = model.vit(x).pooler_output
    torch.testing.assert_close(pooled, timm_model.forward_features(x)[:, 0], rtol=0, atol=1e-12)


def test_glu_mlp_equals_timm_swiglu_packed():
    """mlp_layer='glu' with SiLU: fc1 -> [gate; up], silu(gate) * up, fc2 (timm SwiGLUPacked, DINOv2-giant)."""
    from timm.layers import SwiGLUPacked
    from timm.models.vision_transformer import VisionTransformer

    timm_model = VisionTransformer(
        img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, mlp_ratio=74 / 32, num_classes=10,
        mlp_layer=SwiGLUPacked, act_layer=torch.nn.SiLU,
    )
    timm_model = randomize(timm_model, seed=4).double().eval()
    model = make({"mlp_layer": "glu", "hidden_act": "silu"})
    assert model.vit.blocks[0].mlp.fc1.weight.shape == (74, 32)
    model.load_state_dict(_timm_to_ours(timm_model.state_dict()), strict=True)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, timm_model(x), rtol=0, atol=1e-10)


def test_token_mean_pooling_is_cls_and_mean_of_patches():
    model = make({"pooling": "token_mean", "num_register_tokens": 2})
    assert model.head.in_features == 64
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        out = model.vit(x)
        tokens = out.last_hidden_state
        expected = torch.cat([tokens[:, 0], tokens[:, 3:].mean(1)], dim=-1)  # registers excluded from the mean
        torch.testing.assert_close(out.pooler_output, expected, rtol=0, atol=0)
        torch.testing.assert_close(model(x).logits, model.head(expected), rtol=0, atol=1e-12)


def test_no_embed_registers_equals_folding_the_class_position():
    """Positions on [cls, patches], registers joining after: the same as timm's fold (cls + pos[0], positions on
    the patches only) up to the fold's rounding, which the switch avoids."""
    ours = make({"num_register_tokens": 2, "no_embed_registers": True})
    assert ours.vit.pos_embed.shape[1] == 1 + 16
    folded = make({"num_register_tokens": 2, "no_embed_class": True})
    state = ours.state_dict()
    state["vit.cls_token"] = state["vit.cls_token"] + state["vit.pos_embed"][:, :1]
    state["vit.pos_embed"] = state["vit.pos_embed"][:, 1:]
    folded.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x).logits, folded(x).logits, rtol=0, atol=1e-12)
        torch.testing.assert_close(  # also resampled: the class slot is kept, the grid resampled
            ours(torch.randn(1, 3, 48, 40, dtype=torch.float64), interpolate_pos_encoding=True).logits.shape,
            torch.Size([1, 10]),
        )


def test_dynamic_img_size_resamples_from_the_stored_grid_at_every_call():
    plain = make({"pos_embed_interpolation": "hf_dinov2"})
    dynamic = make({"pos_embed_interpolation": "hf_dinov2", "dynamic_img_size": True})
    x = torch.randn(2, 3, 24, 40, dtype=torch.float64)
    with pytest.raises(ValueError, match="interpolate_pos_encoding=True"):
        plain(x)
    with torch.no_grad():
        torch.testing.assert_close(dynamic(x).logits, plain(x, interpolate_pos_encoding=True).logits, rtol=0, atol=0)
        same = torch.randn(2, 3, 32, 32, dtype=torch.float64)
        torch.testing.assert_close(dynamic(same).logits, plain(same).logits, rtol=0, atol=0)  # stored grid: as is
    assert tuple(dynamic.config.image_hw) == (32, 32)


@pytest.mark.parametrize(
    "algorithm,embeddings",
    [("hf_dinov2", "dinov2.modeling_dinov2.Dinov2Embeddings"),
     ("hf_dinov2_reg", "dinov2_with_registers.modeling_dinov2_with_registers.Dinov2WithRegistersEmbeddings")],
)
def test_dinov2_resampling_is_transformers_own_in_float32(algorithm, embeddings):
    """transformers' DINOv2 embeddings resample in float32 whatever the table's dtype: bit-identical here."""
    import importlib

    from transformers import Dinov2Config

    module, cls = embeddings.rsplit(".", 1)
    hf = getattr(importlib.import_module(f"transformers.models.{module}"), cls)(
        Dinov2Config(hidden_size=8, image_size=56, patch_size=8, num_register_tokens=0)
    ).double()
    table = hf.position_embeddings.data
    for h, w in ((32, 32), (24, 40), (80, 80)):
        expected = hf.interpolate_pos_encoding(torch.zeros(1, 1 + (h // 8) * (w // 8), 8), h, w)
        ours = resample_position_embedding(table, (7, 7), (h // 8, w // 8), 1, algorithm)
        assert ours.dtype == torch.float64
        assert torch.equal(ours, expected.reshape(ours.shape)), (h, w)
    # the same interpolation computed in float64 is ~1e-7 away: the float32 rounding is the point ("timm" runs in
    # float32 too, as timm's resample_abs_pos_embed does, so the float64 reference is computed here)
    grid = table[:, 1:].reshape(1, 7, 7, 8).permute(0, 3, 1, 2)
    grid = torch.nn.functional.interpolate(grid, size=(10, 10), mode="bicubic", antialias=algorithm == "hf_dinov2_reg")
    in_float64 = torch.cat([table[:, :1], grid.permute(0, 2, 3, 1).reshape(1, 100, 8)], dim=1)
    ours = resample_position_embedding(table, (7, 7), (10, 10), 1, algorithm)
    assert 0 < (in_float64 - ours).abs().max() < 1e-5


def test_family_switches_train_and_round_trip(tmp_path):
    features = {"distilled": True, "mlp_layer": "glu", "hidden_act": "silu", "dynamic_img_size": True,
                "pos_embed_interpolation": "hf_dinov2_reg"}
    for config in (features, {"pooling": "token_mean", "num_register_tokens": 1, "no_embed_registers": True}):
        model = make(config, attn="sdpa").train()
        x = torch.randn(2, 3, 24, 24, dtype=torch.float64)
        model(x, labels=torch.tensor([1, 2]), interpolate_pos_encoding=True).loss.backward()
        for name, p in model.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient for {name}"
        model.save_pretrained(tmp_path / "m")
        loaded = VitHfForImageClassification.from_pretrained(tmp_path / "m", dtype=torch.float64).eval()
        assert all(getattr(loaded.config, k) == v for k, v in config.items())
        x = torch.randn(1, 3, 40, 40, dtype=torch.float64)
        with torch.no_grad():
            expected = model.eval()(x, interpolate_pos_encoding=True).logits
            torch.testing.assert_close(loaded(x, interpolate_pos_encoding=True).logits, expected, rtol=0, atol=1e-12)


def test_bad_family_switches_name_the_field():
    cases = [
        (dict(distilled=True, pooling="mean"), "distilled=True reads the class and distillation tokens"),
        (dict(distilled=True, class_token=False, pooling="map"), "distilled=True"),
        (dict(no_embed_registers=True, no_embed_class=True, num_register_tokens=2), "no_embed_registers=True needs"),
        (dict(pooling="token_mean", class_token=False), "token_mean"),
        (dict(pooling="token_mean", representation_size=8), "cannot take fc_norm or representation_size"),
        (dict(mlp_layer="moe"), "mlp_layer"),
        (dict(pos_embed_interpolation="dinov3"), "hf_dinov2"),
    ]
    for fields, message in cases:
        with pytest.raises(ValueError, match=message):
            VitHfConfig.from_preset("test", **fields)
