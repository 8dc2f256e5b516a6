"""The switches of the newer families in the model itself: RoPE kinds through every attention backend,
attention maps, forward_intermediates, VitHfBackbone, gradient checkpointing, torch.compile(fullgraph=True) and ONNX
export; rotary tables cached once per grid; the zero key bias that stays zero in training; any input size without
interpolation; configuration errors; a saved folder loading in an interpreter without vit_hf.

(Exactness against timm and transformers is tested with the converters: tests/test_families_timm.py.)
"""

from __future__ import annotations

import pytest
import torch
from isolated import last_json_line, run_isolated

from vit_hf import VitHfBackbone, VitHfConfig, VitHfForImageClassification, VitHfImageProcessor

BASE = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=40, image_size=32,
            patch_size=8, num_labels=5)
# one configuration per family shape: the switches each family combines
FAMILIES = {
    "dinov3": dict(rope_type="dinov3", pos_embed_type="none", num_register_tokens=4, layer_scale_init_value=1e-5,
                   qkv_bias=True, key_bias=False, pooling="mean", fc_norm=False, dynamic_img_size=True),
    "eva02": dict(rope_type="cat", rope_ref_grid=16, mlp_layer="glu", hidden_act="silu", mlp_inner_norm=True,
                  attn_inner_norm=True, key_bias=False, pooling="mean"),
    "pe": dict(rope_type="cat", rope_grid_indexing="xy", rope_grid_offset=1.0, pre_norm=True, pooling="map",
               pool_num_heads=4, pool_include_prefix=True),
    "rope_mixed": dict(rope_type="mixed", pos_embed_type="none", layer_scale_init_value=1e-5),
    "sapiens2": dict(rope_type="dinov3", pos_embed_type="none", norm_type="rmsnorm", qk_norm=True,
                     num_key_value_heads=[2, 1, 2], layer_scale_init_value=1.0, layer_scale_attn_only=True),
    "aimv2": dict(norm_type="rmsnorm_fp32", embed_norm=True, mlp_layer="glu", hidden_act="silu", class_token=False,
                  qkv_bias=False, proj_bias=False, pooling="map_kv"),
    "post_norm": dict(post_norm=True),
}


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make(family: str, attn: str = "sdpa", dtype=torch.float32, **overrides) -> VitHfForImageClassification:
    config = VitHfConfig(**{**BASE, **FAMILIES[family], **overrides}, attn_implementation=attn)
    torch.manual_seed(0)
    model = VitHfForImageClassification(config).to(dtype).eval()
    with torch.no_grad():  # visible values everywhere (a zero-initialised bias or norm would hide a wiring error)
        for name, p in model.named_parameters():
            if "freqs" not in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def pixels(hw=(32, 32), batch=2, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(batch, 3, *hw, generator=torch.Generator().manual_seed(1), dtype=dtype)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_backends_agree_and_return_attention_maps(family):
    x = pixels()
    ref = make(family, attn="eager")
    with torch.no_grad():
        expected = ref(x, output_attentions=True)
    for attn in ("sdpa", "flex_attention"):
        model = make(family, attn=attn)
        with torch.no_grad():
            plain, with_maps = model(x), model(x, output_attentions=True)
        torch.testing.assert_close(plain.logits, expected.logits, rtol=0, atol=1e-5)
        for a, b in zip(with_maps.attentions, expected.attentions, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    tokens = 16 + ref.config.num_prefix_tokens
    assert expected.attentions[0].shape == (2, 2, tokens, tokens)


@pytest.mark.parametrize("family", ["dinov3", "rope_mixed", "sapiens2"])
def test_any_size_without_interpolation(family):
    """RoPE without learned positions runs at any grid; the tables follow the grid (no interpolation), so a crop of
    the input attends like the same model at that size, and a non-square input works."""
    model = make(family)
    with torch.no_grad():
        for hw in ((32, 32), (48, 24), (16, 40)):
            out = model(pixels(hw))
            assert out.logits.shape == (2, 5) and torch.isfinite(out.logits).all()


def test_rotary_tables_are_cached_once_per_grid_not_per_block():
    model = make("dinov3")
    rope = model.vit.rope
    with torch.no_grad():
        tables = model.vit.rotary_tables(pixels(), pixels())
        assert all(t is tables[0] for t in tables)  # one table object for every block
        model(pixels())
        model(pixels())
        model(pixels((48, 24)))
    assert len(rope._cache) == 2 and {k[0] for k in rope._cache} == {(4, 4), (6, 3)}


def test_prefix_tokens_are_not_rotated():
    """The table's prefix rows are the identity (cos 1, sin 0): q and k of class and register tokens come out
    bit-identical, as timm's and transformers' split-and-concatenate leaves them."""
    from vit_hf.rope_vit_hf import apply_rotary

    model = make("dinov3")
    cos, sin = model.vit.rope((4, 4), 5, torch.float32, torch.device("cpu"))[0]
    q = torch.randn(2, 2, 21, 16)
    rotated = apply_rotary(q, (cos, sin), half=True)
    assert torch.equal(rotated[:, :, :5], q[:, :, :5]) and not torch.allclose(rotated[:, :, 5:], q[:, :, 5:])


@pytest.mark.parametrize("family", ["dinov3", "eva02"])
def test_forward_intermediates_and_backbone(family):
    model = make(family)
    x = pixels((32, 48))
    with torch.no_grad():
        hidden = model.vit(x, output_hidden_states=True, interpolate_pos_encoding=True).hidden_states
        final, feats = model.vit.forward_intermediates(x, indices=[0, 2], interpolate_pos_encoding=True)
    prefix = model.config.num_prefix_tokens
    for f, h in zip(feats, (hidden[1], hidden[3])):
        assert f.shape == (2, 32, 4, 6)
        torch.testing.assert_close(f.flatten(2).transpose(1, 2), h[:, prefix:], rtol=0, atol=1e-6)
    fields = {k: v for k, v in model.config.to_dict().items() if k not in ("out_features", "out_indices")}
    backbone = VitHfBackbone(VitHfConfig(**fields, out_indices=[1, 3])).eval()
    backbone.vit.load_state_dict(model.vit.state_dict())
    with torch.no_grad():
        maps = backbone(x, interpolate_pos_encoding=True).feature_maps
    assert [m.shape for m in maps] == [(2, 32, 4, 6)] * 2


@pytest.mark.parametrize("family", ["rope_mixed", "eva02", "sapiens2"])
def test_gradient_checkpointing_gives_same_gradients(family):
    """Including the learned RoPE-Mixed frequencies, which reach the blocks through the rotary tables."""
    x, labels = pixels(), torch.tensor([1, 3])
    grads = []
    for checkpointing in (None, False, True):  # off, non-reentrant, reentrant
        model = make(family, dtype=torch.float64).train()
        if checkpointing is not None:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": checkpointing})
        loss = model(x.double(), labels=labels).loss
        loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() == grads[2].keys()
    if family == "rope_mixed":
        assert grads[0]["vit.rope.freqs"].abs().sum() > 0
    for other in grads[1:]:
        for name in grads[0]:
            torch.testing.assert_close(other[name], grads[0][name], rtol=0, atol=1e-12, msg=name)


def test_zero_key_bias_has_no_parameter_and_trains_nothing():
    """key_bias=False: query and value biases are parameters (`attn.q_bias`, `attn.v_bias`), the key bias is a
    constant zero: with RoPE a key bias would not cancel in the softmax, and training would grow one."""
    model = make("dinov3").train()
    names = {n for n, _ in model.named_parameters()}
    assert "vit.blocks.0.attn.q_bias" in names and "vit.blocks.0.attn.qkv.bias" not in names
    model(pixels(), labels=torch.tensor([0, 1])).loss.backward()
    assert model.vit.blocks[0].attn.q_bias.grad.abs().sum() > 0


# What vit_hf's code decides is whether dynamo traces the model as one graph (fullgraph=True raises on a break) with
# guards that recompile for a new grid; aot_eager runs that tracing and AOT autograd without inductor's C++ code
# generation, which costs ~25 s a family on a cold cache (test_modeling.py runs inductor once, on the plain ViT).
# Two blocks, not three: dynamo unrolls the blocks, so each costs ~2.5 s of tracing; two still share one rotary table.
@pytest.mark.slow
@pytest.mark.parametrize("family", ["dinov3", "eva02", "rope_mixed"])
def test_torch_compile_fullgraph(family):
    model = make(family, num_hidden_layers=2)
    x = pixels()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x).logits, model(x).logits, rtol=1e-4, atol=1e-5)
        other = pixels((48, 24))
        torch.testing.assert_close(compiled(other, interpolate_pos_encoding=True).logits,
                                   model(other, interpolate_pos_encoding=True).logits, rtol=1e-4, atol=1e-5)


def test_training_augmentation_only_in_train_mode():
    """DINOv3's coordinate augmentation draws a fresh transform per training forward; eval mode never augments."""
    model = make("dinov3", rope_rescale_coords=2.0, rope_shift_coords=0.1)
    x = pixels()
    with torch.no_grad():
        a, b = model(x).logits, model(x).logits
        assert torch.equal(a, b)
        model.train()
        c, d = model(x).logits, model(x).logits
    assert not torch.equal(c, d) and not torch.equal(a, c)


@pytest.mark.parametrize("bad, needle", [
    (dict(rope_type="spiral"), "rope_type='spiral' is not one of"),
    (dict(rope_type="cat", num_attention_heads=4, hidden_size=40), "head_dim divisible by 4"),
    (dict(rope_type="dinov3", rope_ref_grid=16), "rope_ref_grid rescales 'cat' coordinates only"),
    (dict(rope_type="mixed", rope_rotate_half=True), "rope_type='mixed' rotates interleaved pairs"),
    (dict(rope_type="cat", rope_numerics="transformers"), "rope_numerics='transformers' exists for"),
    (dict(norm_type="batchnorm"), "norm_type='batchnorm' is not one of"),
    (dict(layer_scale_attn_only=True), "layer_scale_attn_only=True needs layer scale"),
    (dict(num_key_value_heads=3), "must divide num_attention_heads"),
    (dict(num_key_value_heads=[1, 2]), "num_key_value_heads has 2 entries for 3 blocks"),
    (dict(rope_type="dinov3", rope_jitter_coords=0.5), "rope_jitter_coords must be a number >= 1"),
])
def test_configuration_errors_are_one_line(bad, needle):
    with pytest.raises(ValueError, match=None) as info:
        VitHfConfig(**{**BASE, **bad})
    assert needle in str(info.value) and "\n" not in str(info.value), str(info.value)


@pytest.mark.slow
def test_saved_folder_loads_without_vit_hf(tmp_path):
    """A RoPE + RMSNorm + GQA model saved by save_pretrained: the folder holds rope_vit_hf.py and loads with
    trust_remote_code in an interpreter that has torch, einops and transformers only."""
    model = make("sapiens2")
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    VitHfImageProcessor.from_model_config(model.config).save_pretrained(folder)
    assert (folder / "rope_vit_hf.py").is_file()
    x = pixels((32, 48))
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        expected = model(x).logits.tolist()
    proc = run_isolated(f"""
        import json, torch
        from transformers import AutoModelForImageClassification
        model = AutoModelForImageClassification.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
        with torch.no_grad():
            logits = model(torch.load({str(tmp_path / "x.pt")!r})).logits.tolist()
        print(json.dumps(dict(logits=logits, module=type(model).__module__)))
    """, cwd=tmp_path)
    result = last_json_line(proc)
    assert result["module"].startswith("transformers_modules")
    torch.testing.assert_close(torch.tensor(result["logits"]), torch.tensor(expected), rtol=0, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("family, flags", [("dinov3", ["--dynamic-size"]), ("eva02", [])])
def test_onnx_export(family, flags, tmp_path, capsys):
    """`python -m vit_hf.export` of a RoPE model; the graph against PyTorch with onnxruntime."""
    pytest.importorskip("onnxruntime")
    from vit_hf.export.__main__ import main
    from vit_hf.export.verify import OrtModel

    model = make(family)
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    VitHfImageProcessor.from_model_config(model.config).save_pretrained(folder)
    out = tmp_path / "onnx"
    assert main([str(folder), str(out), *flags]) == 0, capsys.readouterr().err
    session = OrtModel(out / "model.onnx")
    for hw in [(32, 32)] + ([(48, 24)] if flags else []):
        x = pixels(hw)
        with torch.no_grad():
            expected = model(x).logits.numpy()
        assert abs(session(x) - expected).max() <= 1e-4, hw


def test_aimv2_parts_equal_transformers_own():
    """The AIMv2 pieces against transformers' modules in float64: the `map_kv` head (Aimv2AttentionPoolingHead, its
    k_proj / v_proj fused into `kv`), `rmsnorm_fp32` (Aimv2RMSNorm) and `sincos2d_mae` (the native variant's table,
    whose halves transformers swaps to AIMv2's [w | h] layout)."""
    from transformers import Aimv2VisionConfig
    from transformers.models.aimv2.modeling_aimv2 import (
        Aimv2AttentionPoolingHead,
        Aimv2RMSNorm,
        build_2d_sinusoidal_position_embedding,
    )

    from vit_hf.layers_vit_hf import AttentionPoolKV, RMSNorm, sincos_2d_position_embedding

    config = VitHfConfig(**{**BASE, **FAMILIES["aimv2"], "qkv_bias": True})
    hf_config = Aimv2VisionConfig(hidden_size=32, num_attention_heads=2, qkv_bias=True)
    torch.manual_seed(0)
    theirs = Aimv2AttentionPoolingHead(hf_config).double()
    with torch.no_grad():
        for p in theirs.parameters():
            p.normal_()
    ours = AttentionPoolKV(config).double()
    ours.load_state_dict({"latent": theirs.cls_token, "proj.weight": theirs.output_proj.weight,
                          "proj.bias": theirs.output_proj.bias,
                          "kv.weight": torch.cat([theirs.k_proj.weight, theirs.v_proj.weight]),
                          "kv.bias": torch.cat([theirs.k_proj.bias, theirs.v_proj.bias])})
    x = torch.randn(3, 17, 32, dtype=torch.float64)
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-12)

    norm_theirs, norm_ours = Aimv2RMSNorm(32, eps=1e-5).double(), RMSNorm(32, 1e-5, fp32=True).double()
    with torch.no_grad():
        norm_theirs.weight.normal_()
        norm_ours.weight.copy_(norm_theirs.weight)
    assert torch.equal(norm_ours(x), norm_theirs(x))

    table = build_2d_sinusoidal_position_embedding(3, 5, 32, dtype=torch.float64)
    table = torch.cat([table[..., 16:], table[..., :16]], dim=-1)
    assert torch.equal(sincos_2d_position_embedding((3, 5), 32, mae=True)[0], table)


def test_aimv2_native_embedding_equals_transformers_bit_for_bit():
    """AIMv2 native's embedding (patch convolution, float32 RMSNorm, sin-cos table of the input's grid) against
    transformers' Aimv2VisionEmbeddings in float64 at a non-square size: equal, the float32 roundings inside the norm
    included, because vit_hf's norm runs over the convolution's own output viewed as tokens, as transformers' does
    (a contiguous copy sums in another order; the test fails by float32 ulps then)."""
    from transformers import Aimv2VisionConfig
    from transformers.models.aimv2.modeling_aimv2 import Aimv2VisionEmbeddings

    from vit_hf import VitHfModel

    theirs = Aimv2VisionEmbeddings(Aimv2VisionConfig(hidden_size=32, image_size=32, patch_size=8, is_native=True,
                                                     rms_norm_eps=1e-5)).double()
    config = VitHfConfig(**{**BASE, **FAMILIES["aimv2"], "pos_embed_type": "sincos2d_mae", "layer_norm_eps": 1e-5})
    ours = VitHfModel(config).double()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in theirs.parameters():
            p.normal_()
        ours.patch_embed.proj.load_state_dict(theirs.patch_embed.state_dict())
        ours.patch_embed.norm.weight.copy_(theirs.rms_norm.weight)
    x = torch.randn(2, 3, 40, 72, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(ours.embed(x), theirs(x))
