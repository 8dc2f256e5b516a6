"""Tiny timm VisionTransformer variants with every tensor randomised, and the ways users save their state dicts.

Dimensions: each axis distinct (D=64, H=4 so Dh=16 != H, L=3, P=8,
M=160 != 4*D, K=10), so a head/depth transpose or an MLP/width mix-up cannot cancel out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

D, H, L, P, C, IMG, K, M = 64, 4, 3, 8, 3, 32, 10, 160
BASE_KWARGS = dict(
    img_size=IMG, patch_size=P, in_chans=C, embed_dim=D, depth=L, num_heads=H, mlp_ratio=M / D, num_classes=K
)
FORMATS = ("safetensors", "torch", "torch_model", "torch_state_dict")


@dataclass(frozen=True)
class Variant:
    """A timm constructor variant, the converter flags it needs, and the file format its test saves it in."""

    name: str
    timm_kwargs: dict = field(default_factory=dict)
    flags: tuple[str, ...] = ("--num-heads", str(H))
    fmt: str = "safetensors"

    @property
    def image_hw(self) -> tuple[int, int]:
        size = self.timm_kwargs.get("img_size", IMG)
        return (size, size) if isinstance(size, int) else tuple(size)


_HEADS = ("--num-heads", str(H))
VARIANTS = [
    Variant("token", {}, _HEADS, "safetensors"),
    Variant("avg_fc_norm", dict(class_token=False, global_pool="avg"), _HEADS, "torch"),
    Variant(
        "avg_no_fc_norm",
        dict(class_token=False, global_pool="avg", fc_norm=False),
        (*_HEADS, "--global-pool", "avg"),
        "torch_model",
    ),
    Variant("reg4", dict(reg_tokens=4), _HEADS, "torch_state_dict"),
    Variant("reg4_no_embed_class", dict(reg_tokens=4, no_embed_class=True), _HEADS, "safetensors"),
    # a 4x4 table without prefix slots could be a 3x5 grid with the cls slot: the size must be given (--image-size
    # is a hint for the checkpoint's own grid when it fits; --source-image-size says it outright, see the DeiT-3 test)
    Variant("no_embed_class_cls", dict(no_embed_class=True), (*_HEADS, "--image-size", str(IMG)), "torch"),
    Variant("no_qkv_bias", dict(qkv_bias=False), _HEADS, "torch_model"),
    Variant("qk_norm", dict(qk_norm=True), (), "safetensors"),  # heads inferred from the q_norm width
    Variant("layer_scale", dict(init_values=1e-5), _HEADS, "torch"),
    Variant("map", dict(class_token=False, global_pool="map"), _HEADS, "torch_model"),
    # pre-norm marks a CLIP-style tower: its activation and eps must be given (timm's defaults here)
    Variant("pre_norm", dict(pre_norm=True), (*_HEADS, "--act", "gelu", "--eps", "1e-6"), "safetensors"),
    Variant("no_head", dict(num_classes=0), _HEADS, "torch_state_dict"),
    Variant("non_square", dict(img_size=(32, 48)), (*_HEADS, "--image-size", "32x48"), "safetensors"),
    # sizes that are not multiples of the patch (so400m/14 at 384 px): timm's patch convolution ignores the rest
    Variant("remainder", dict(img_size=(36, 44)), (*_HEADS, "--image-size", "36x44"), "safetensors"),
    Variant("no_proj_bias", dict(proj_bias=False), _HEADS, "torch"),
    # the MAP head's MLP keeps its biases whatever proj_bias says (timm AttentionPoolLatent)
    Variant("map_no_proj_bias", dict(class_token=False, global_pool="map", proj_bias=False), _HEADS, "safetensors"),
    Variant("no_final_norm", dict(final_norm=False), _HEADS, "safetensors"),
    Variant("gelu_tanh", dict(act_layer="gelu_tanh"), (*_HEADS, "--act", "gelu_tanh"), "safetensors"),
    Variant(
        "quick_gelu_reg_map",
        dict(act_layer="quick_gelu", class_token=False, reg_tokens=2, global_pool="map"),
        (*_HEADS, "--act", "quick_gelu"),
        "torch",
    ),
]


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Fill every parameter with seeded random values of visible size: norm scales near (not at) 1, biases, tokens,
    positions, layer-scale gammas and the head all non-zero (a default value would hide a mapping bug)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            is_scale = name.endswith(".weight") and p.ndim == 1  # LayerNorm scales (norm*, q_norm, k_norm, fc_norm)
            p.copy_(1.0 + 0.2 * noise if is_scale else 0.2 * noise)
    return model.eval()


def make_timm(variant: Variant, seed: int = 0) -> torch.nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    model = randomize_(VisionTransformer(**{**BASE_KWARGS, **variant.timm_kwargs}), seed)
    assert model.blocks[0].mlp.fc1.out_features == M, "mlp_ratio truncation: the MLP width is not M"
    return model


def save_state(state: dict[str, torch.Tensor], path: Path, fmt: str) -> Path:
    """Save a state dict as users get it: safetensors, plain torch.save, or wrapped under `model` / `state_dict`."""
    state = {k: v.detach().clone().contiguous() for k, v in state.items()}
    if fmt == "safetensors":
        from safetensors.torch import save_file

        path = path.with_suffix(".safetensors")
        save_file(state, str(path))
        return path
    path = path.with_suffix(".pth")
    if fmt == "torch":
        torch.save(state, path)
    elif fmt == "torch_model":
        torch.save({"model": state, "epoch": 3}, path)
    elif fmt == "torch_state_dict":
        torch.save({"state_dict": state, "optimizer": {}}, path)
    else:
        raise ValueError(fmt)
    return path
