"""VitHfForMaskedImageModeling (SimMIM) against transformers' ViTForMaskedImageModeling given the same weights."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForMaskedImageModeling, ViTConfig, ViTForMaskedImageModeling

from vit_hf import VitHfConfig, VitHfForImageClassification, VitHfForMaskedImageModeling
from vit_hf.registration import unregistered

ATOL64 = 1e-9
LAYERS = 2


def randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Visible random values in every tensor (LayerNorm scales != 1, biases != 0, a non-zero mask token)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            values = torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.3
            p.copy_(1.0 + values if name.endswith("weight") and p.ndim == 1 else values)
    return model


def transformers_mim(stride: int = 8) -> ViTForMaskedImageModeling:
    config = ViTConfig(
        hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=4, intermediate_size=37, image_size=32,
        patch_size=8, encoder_stride=stride, layer_norm_eps=1e-6, hidden_act="gelu",
        attn_implementation="sdpa",  # transformers' eager softmax is always float32, which would cap the parity
    )
    return randomize(ViTForMaskedImageModeling(config), seed=1).double().eval()


def ours_from(hf: ViTForMaskedImageModeling) -> VitHfForMaskedImageModeling:
    """Copy transformers' weights into ours: fused qkv rows (qkv h d), timm's names under `vit.`, same decoder."""
    src = hf.state_dict()
    mapped = {
        "vit.mask_token": src["vit.embeddings.mask_token"],
        "vit.cls_token": src["vit.embeddings.cls_token"],
        "vit.pos_embed": src["vit.embeddings.position_embeddings"],
        "vit.patch_embed.proj.weight": src["vit.embeddings.patch_embeddings.projection.weight"],
        "vit.patch_embed.proj.bias": src["vit.embeddings.patch_embeddings.projection.bias"],
        "vit.norm.weight": src["vit.layernorm.weight"],
        "vit.norm.bias": src["vit.layernorm.bias"],
        **{k: v for k, v in src.items() if k.startswith("decoder.")},
    }
    for i in range(LAYERS):
        a, b = f"vit.layers.{i}.", f"vit.blocks.{i}."
        for part in ("weight", "bias"):
            mapped[b + f"attn.qkv.{part}"] = torch.cat([src[a + f"attention.{n}_proj.{part}"] for n in "qkv"])
            mapped[b + f"attn.proj.{part}"] = src[a + f"attention.o_proj.{part}"]
            mapped[b + f"norm1.{part}"] = src[a + f"layernorm_before.{part}"]
            mapped[b + f"norm2.{part}"] = src[a + f"layernorm_after.{part}"]
            mapped[b + f"mlp.fc1.{part}"] = src[a + f"mlp.fc1.{part}"]
            mapped[b + f"mlp.fc2.{part}"] = src[a + f"mlp.fc2.{part}"]
    ours = VitHfForMaskedImageModeling(VitHfConfig.from_preset("test", num_hidden_layers=LAYERS)).double().eval()
    ours.load_state_dict(mapped, strict=True)
    return ours


def inputs(seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64, generator=g)
    return x, torch.rand(3, 16, generator=g) < 0.6


def test_reconstruction_and_loss_match_transformers_in_float64():
    hf = transformers_mim()
    ours = ours_from(hf)
    x, mask = inputs()
    assert 0 < mask.sum() < mask.numel()
    with torch.no_grad():
        expected, got = hf(x, bool_masked_pos=mask), ours(x, bool_masked_pos=mask)
        unmasked_expected, unmasked = hf(x).reconstruction, ours(x).reconstruction
    torch.testing.assert_close(got.reconstruction, expected.reconstruction, rtol=0, atol=ATOL64)
    torch.testing.assert_close(got.loss, expected.loss, rtol=0, atol=ATOL64)
    torch.testing.assert_close(unmasked, unmasked_expected, rtol=0, atol=ATOL64)
    assert not torch.allclose(unmasked, got.reconstruction)  # the mask token changed the input
    assert got.loss > 0


def test_saved_folder_loads_as_remote_code_and_fine_tunes_as_a_classifier(tmp_path):
    ours = ours_from(transformers_mim())
    ours.save_pretrained(tmp_path)
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForMaskedImageModeling"] == "modeling_vit_hf.VitHfForMaskedImageModeling"
    with unregistered():  # an installed vit_hf would otherwise build the folder with its own classes
        loaded = AutoModelForMaskedImageModeling.from_pretrained(tmp_path, trust_remote_code=True).eval()
    assert type(loaded).__module__.startswith("transformers_modules.")
    x, mask = inputs()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, bool_masked_pos=mask).loss, ours(x, bool_masked_pos=mask).loss,
                                   rtol=0, atol=0)
    classifier = VitHfForImageClassification.from_pretrained(tmp_path, num_labels=5)  # encoder kept, decoder dropped
    for name, tensor in classifier.vit.state_dict().items():
        torch.testing.assert_close(tensor, ours.vit.state_dict()[name], rtol=0, atol=0)
    assert classifier.vit.mask_token is None


@pytest.mark.parametrize(
    "model_kwargs, call, message",
    [
        (dict(encoder_stride=16), "mim", r"encoder_stride \(16\) to equal the patch size \(8, 8\)"),
        ({}, "mim_bad_shape", r"bool_masked_pos has shape \(3, 15\) but the image has 16 patches"),
        ({}, "classifier", r"bool_masked_pos needs a mask token, which this model has not"),
    ],
)
def test_bad_masking_is_refused_by_name(model_kwargs, call, message):
    config = VitHfConfig.from_preset("test", **model_kwargs)
    x, mask = inputs()
    if call == "classifier":
        model, mask = VitHfForImageClassification(config).vit, mask
    else:
        model = VitHfForMaskedImageModeling(config)
        mask = mask[:, :15] if call == "mim_bad_shape" else mask
    with pytest.raises(ValueError, match=message):
        model(x.float(), bool_masked_pos=mask)
