"""Building blocks of the einops Vision Transformer: norms, patch embedding, attention, MLPs, blocks, pooling heads
and position tables (the rotary ones are in `rope_vit_hf.py`). `modeling_vit_hf.py` assembles them into the
transformers models.

Remote code: this file is copied flat next to the weights with `modeling_vit_hf.py` (which imports it relatively);
it imports only torch, einops, transformers and its sibling configuration module.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils.generic import TransformersKwargs

from .configuration_vit_hf import POS_EMBED_INTERPOLATIONS, VitHfConfig
from .rope_vit_hf import apply_rotary

# ----------------------------------------------------------------------------------------------------------------------
# Position tables
# ----------------------------------------------------------------------------------------------------------------------


def sincos_2d_position_embedding(
    grid: tuple[int, int], dim: int, temperature: float = 10_000.0, mae: bool = False
) -> torch.Tensor:
    """Fixed 2-D sin-cos table of big_vision's `posemb_sincos_2d` (MoCo-v3), shape (1, gh * gw, dim), float64;
    `mae=True`: MAE's frequencies temperature^-(k / (dim/4)) instead of temperature^-(k / (dim/4 - 1)) (AIMv2 native).

    Order of the four bands is `[sin x, cos x, sin y, cos y]` with x the column index (not stored in checkpoints, so
    the order is part of the model's definition).
    """
    gh, gw = grid
    y, x = torch.meshgrid(torch.arange(gh, dtype=torch.float64), torch.arange(gw, dtype=torch.float64), indexing="ij")
    omega = 1.0 / temperature ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4 - (0 if mae else 1)))
    x = rearrange(x, "gh gw -> (gh gw) 1") * omega
    y = rearrange(y, "gh gw -> (gh gw) 1") * omega
    return torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1)[None]


def resample_position_embedding(
    pos_embed: torch.Tensor,
    old_grid: tuple[int, int],
    new_grid: tuple[int, int],
    num_prefix_tokens: int = 0,
    algorithm: str = "timm",
) -> torch.Tensor:
    """Resample a (1, prefix + gh * gw, D) position table to a new grid; prefix rows are kept unchanged.

    `algorithm` names the library whose resampling is reproduced (see `POS_EMBED_INTERPOLATIONS`): `"timm"`
    (bicubic, antialiased), `"timm_npz"` (bilinear), `"google"` (scipy `zoom(order=1)` == corner-aligned bilinear),
    `"hf"` (bicubic), `"hf_dinov2"` (bicubic), `"hf_dinov2_reg"` (bicubic, antialiased). The interpolation runs in
    float32 at least (bf16/fp16 tables are upcast, then cast back); the `timm` and `hf_dinov2*` algorithms always run in
    float32, float64 tables included, because timm's `resample_abs_pos_embed` and transformers' DINOv2 do (reproducing
    their outputs needs their rounding).
    """
    if algorithm not in POS_EMBED_INTERPOLATIONS:
        raise ValueError(f"unknown resampling algorithm {algorithm!r}: choose one of {tuple(POS_EMBED_INTERPOLATIONS)}")
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    expected = num_prefix_tokens + old_grid[0] * old_grid[1]
    if pos_embed.shape[1] != expected:
        raise ValueError(
            f"position table has {pos_embed.shape[1]} rows but a {old_grid[0]}x{old_grid[1]} grid with "
            f"{num_prefix_tokens} prefix token(s) needs {expected}"
        )
    mode, align_corners, antialias, always_float32 = POS_EMBED_INTERPOLATIONS[algorithm]
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    compute_dtype = torch.float32 if always_float32 else torch.promote_types(grid.dtype, torch.float32)
    grid = rearrange(grid.to(compute_dtype), "b (gh gw) d -> b d gh gw", gh=old_grid[0], gw=old_grid[1])
    grid = F.interpolate(grid, size=tuple(new_grid), mode=mode, align_corners=align_corners, antialias=antialias)
    grid = rearrange(grid, "b d gh gw -> b (gh gw) d").to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)


# ----------------------------------------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """x * rsqrt(mean(x^2) + eps) * weight: in the input's precision (timm `RmsNorm`), or with `fp32=True` computed in
    float32 and cast back before the weight (transformers' T5-style RMSNorm, e.g. `Aimv2RMSNorm`)."""

    def __init__(self, dim: int, eps: float, fp32: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.fp32 = fp32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fp32:
            h = x.to(torch.float32)
            h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
            return self.weight * h.to(x.dtype)
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def make_norm(config: VitHfConfig, dim: int | None = None) -> nn.Module:
    """The model's norm (`config.norm_type`) over `dim` channels (default: the width)."""
    dim = dim or config.hidden_size
    if config.norm_type == "layernorm":
        return nn.LayerNorm(dim, eps=config.layer_norm_eps)
    return RMSNorm(dim, config.layer_norm_eps, fp32=config.norm_type == "rmsnorm_fp32")


def norm_or_identity(config: VitHfConfig, enabled: bool, dim: int | None = None) -> nn.Module:
    return make_norm(config, dim) if enabled else nn.Identity()


class PatchEmbed(nn.Module):
    """Cut the image into P x P patches and project each with one GEMM (the seed's `Rearrange` + `Linear`).

    The weight is kept as a Conv2d (`proj.weight` [D, C, P, P], timm's key and layout) but applied as a linear
    map on `(c ph pw)`-flattened patches: the same numbers as the convolution, as a single matmul (which the int8
    ONNX export quantises with the other linear layers).

    With a norm right after the projection (`embed_norm`, AIMv2) the projection is the convolution itself, its
    (b, d, gh, gw) output read as tokens through a view: the norm's reduction over d then runs over the same strided
    memory as timm's and transformers' (their `flatten(2).transpose(1, 2)`), so a norm computed in float32 inside a
    float64 forward (transformers' Aimv2RMSNorm) rounds as theirs does. Over a contiguous (b, n, d) product the
    float32 sums run in another order and the float64 outputs differ by float32 ulps carried through the blocks.
    """

    def __init__(self, config: VitHfConfig):
        super().__init__()
        self.patch_size = config.patch_hw
        self.crop_remainder = config.crop_remainder
        self.proj = nn.Conv2d(
            config.num_channels,
            config.hidden_size,
            kernel_size=self.patch_size,
            stride=self.patch_size,
            bias=config.patch_bias,
        )
        self.norm = norm_or_identity(config, config.embed_norm)  # AIMv2: a norm right after the projection
        self.norm_on_conv_layout = config.embed_norm

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.norm_on_conv_layout:  # a stride-P convolution never reads the pixels past the last whole patch
            x = F.conv2d(pixel_values, self.proj.weight, self.proj.bias, stride=self.patch_size)
            return self.norm(rearrange(x, "b d gh gw -> b (gh gw) d"))
        ph, pw = self.patch_size
        if self.crop_remainder:  # what a stride-P convolution never reads
            h, w = pixel_values.shape[-2:]
            pixel_values = pixel_values[..., : h - h % ph, : w - w % pw]
        patches = rearrange(pixel_values, "b c (gh ph) (gw pw) -> b (gh gw) (c ph pw)", ph=ph, pw=pw)
        weight = rearrange(self.proj.weight, "d c ph pw -> d (c ph pw)")
        return F.linear(patches, weight, self.proj.bias)


def _dropout(p: float) -> nn.Module:
    """Dropout, or nothing when the rate is 0 (the common inference/fine-tuning case): one module call less per use,
    measurable in per-forward Python overhead, and identical numbers."""
    return nn.Dropout(p) if p > 0 else nn.Identity()


class LayerScale(nn.Module):
    """Per-channel residual-branch scale of CaiT / DeiT-3 (timm `ls1.gamma`)."""

    def __init__(self, config: VitHfConfig):
        super().__init__()
        self.gamma = nn.Parameter(torch.empty(config.hidden_size))
        self.init_value = config.layer_scale_init_value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class DropPath(nn.Module):
    """Stochastic depth: drop the residual branch per sample, rescaling the survivors (identity in eval)."""

    def __init__(self, drop_prob: float):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T * head_dim^-0.5) v over the keys (last axis), in einops notation.

    Returns the output as (b, n, h, d), the layout of transformers' attention interface, and the weights.
    """
    scores = torch.einsum("b h q d, b h k d -> b h q k", query, key) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    # The softmax runs in at least float32 (bf16/fp16 attention stays normalised; float64 stays float64, which
    # transformers' own eager path, always float32, would not).
    weights = scores.softmax(dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32)).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    out = torch.einsum("b h q k, b h k d -> b q h d", weights, value)
    return out, weights


def _attention_interface(config: VitHfConfig, need_weights: bool) -> Callable:
    # Attention maps exist only on the eager path; when asked for, that call falls back to eager whatever the backend.
    if need_weights or config._attn_implementation in (None, "eager"):
        return eager_attention_forward
    return ALL_ATTENTION_FUNCTIONS.get_interface(config._attn_implementation, eager_attention_forward)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (timm `attn.qkv` rows ordered `(qkv h d)`); optionally
    query/value biases without a key bias (`attn.q_bias`, `attn.v_bias`: timm `EvaAttention`), qk-norm, rotary
    embeddings on q and k, and a norm on the merged heads before the output projection (EVA02-CLIP)."""

    is_causal = False

    def __init__(self, config: VitHfConfig, layer: int = 0):
        super().__init__()
        self.config = config
        d = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.kv_heads(layer)  # grouped-query attention when fewer than the query heads
        self.head_dim = config.head_dim
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_probs_dropout_prob
        split_bias = config.qkv_bias and not config.key_bias
        qkv_rows = d + 2 * self.num_kv_heads * self.head_dim
        self.qkv = nn.Linear(d, qkv_rows, bias=config.qkv_bias and not split_bias)
        self.q_bias = nn.Parameter(torch.empty(d)) if split_bias else None
        self.v_bias = nn.Parameter(torch.empty(d)) if split_bias else None
        self.q_norm = norm_or_identity(config, config.qk_norm, self.head_dim)
        self.k_norm = norm_or_identity(config, config.qk_norm, self.head_dim)
        self.rotate_half = config.rope_rotate_half
        self.norm = norm_or_identity(config, config.attn_inner_norm)
        self.proj = nn.Linear(d, d, bias=config.proj_bias)
        self.proj_drop = _dropout(config.hidden_dropout_prob)

    def _qkv(self, x: torch.Tensor) -> torch.Tensor:
        if self.q_bias is None:
            return self.qkv(x)
        # a key bias fixed at zero (not a parameter: with RoPE it would not cancel in the softmax, and train). Added
        # after calling the module, not handed to F.linear with its weight: a LoRA adapter (peft) wraps the module
        return self.qkv(x) + torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])

    def forward(
        self,
        x: torch.Tensor,
        output_attentions: bool = False,
        attention: Callable | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`attention`: the attention function, as `_attention_interface` resolves it (the trunk resolves it once per
        forward for all blocks: a config read and an interface lookup per block cost measurable time at batch 1).
        `rope`: this block's (cos, sin) rotary table over all tokens (identity rows for the prefix tokens).
        `attention_mask`: the NaFlex padding mask (naflex_vit_hf.attention_mask) or None."""
        if self.num_kv_heads == self.num_heads:
            q, k, v = rearrange(self._qkv(x), "b n (qkv h d) -> qkv b h n d", qkv=3, h=self.num_heads)
        else:
            qkv = self._qkv(x)
            q = rearrange(qkv[..., : self.num_heads * self.head_dim], "b n (h d) -> b h n d", h=self.num_heads)
            k, v = rearrange(qkv[..., self.num_heads * self.head_dim :], "b n (kv h d) -> kv b h n d", kv=2,
                             h=self.num_kv_heads)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rotary(q, rope, self.rotate_half), apply_rotary(k, rope, self.rotate_half)
        if self.num_kv_heads != self.num_heads:  # query head i reads key/value head i // group (timm, transformers)
            groups = self.num_heads // self.num_kv_heads
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        attention = attention or _attention_interface(self.config, output_attentions)
        out, weights = attention(
            self,
            q,
            k,
            v,
            attention_mask,
            scaling=self.scaling,
            dropout=self.attention_dropout if self.training else 0.0,
        )
        out = self.proj_drop(self.proj(self.norm(rearrange(out, "b n h d -> b n (h d)"))))
        return out, weights


class Mlp(nn.Module):
    """fc1 -> activation -> dropout -> [norm] -> fc2 -> dropout (timm `Mlp`; the norm is EVA02's `scale_mlp`)."""

    def __init__(self, config: VitHfConfig, bias: bool | None = None, width: int | None = None, inner_norm=None):
        super().__init__()
        bias = config.proj_bias if bias is None else bias
        width = width or config.intermediate_size
        self.fc1 = nn.Linear(config.hidden_size, width, bias=bias)
        self.act = ACT2FN[config.hidden_act]
        inner_norm = config.mlp_inner_norm if inner_norm is None else inner_norm
        self.norm = norm_or_identity(config, inner_norm, width)
        self.fc2 = nn.Linear(width, config.hidden_size, bias=bias)
        self.drop = _dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.norm(self.drop(self.act(self.fc1(x))))))


class GluMlp(nn.Module):
    """Gated MLP: fc1 -> [gate; up], act(gate) * up -> dropout -> [norm] -> fc2 -> dropout (timm
    `GluMlp(gate_last=False)`; with SiLU, timm's `SwiGLUPacked`, and its `SwiGLU` / transformers' gate-up MLPs with
    `fc1 = [gate; up]`)."""

    def __init__(self, config: VitHfConfig):
        super().__init__()
        bias = config.proj_bias
        self.fc1 = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=bias)
        self.act = ACT2FN[config.hidden_act]
        self.norm = norm_or_identity(config, config.mlp_inner_norm, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size, bias=bias)
        self.drop = _dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = rearrange(self.fc1(x), "... (two m) -> two ... m", two=2)
        return self.drop(self.fc2(self.norm(self.drop(self.act(gate) * up))))


class Block(GradientCheckpointingLayer):
    """Pre-norm transformer block: x + ls1(attn(norm1(x))), then x + ls2(mlp(norm2(x))); with `post_norm`,
    x + norm1(attn(x)), then x + norm2(mlp(x))."""

    def __init__(self, config: VitHfConfig, drop_path: float = 0.0, layer: int = 0):
        super().__init__()
        layer_scale = config.layer_scale_init_value is not None
        self.post_norm = config.post_norm
        self.norm1 = make_norm(config)
        self.attn = Attention(config, layer)
        self.ls1 = LayerScale(config) if layer_scale else nn.Identity()
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = make_norm(config)
        self.mlp = GluMlp(config) if config.mlp_layer == "glu" else Mlp(config)
        self.ls2 = LayerScale(config) if layer_scale and not config.layer_scale_attn_only else nn.Identity()
        self.drop_path2 = DropPath(drop_path)

    def forward(
        self,
        x: torch.Tensor,
        output_attentions: bool = False,
        attention: Callable | None = None,
        rope_cos: torch.Tensor | None = None,
        rope_sin: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`rope_cos` / `rope_sin`: this block's rotary table, passed as tensors of their own (not a tuple) so that
        reentrant gradient checkpointing carries their gradients (RoPE-Mixed's learned frequencies)."""
        rope = None if rope_cos is None else (rope_cos, rope_sin)
        if self.post_norm:
            attn_out, weights = self.attn(x, output_attentions, attention, rope, attention_mask)
            x = x + self.drop_path1(self.norm1(attn_out))
            return x + self.drop_path2(self.norm2(self.mlp(x))), weights
        attn_out, weights = self.attn(self.norm1(x), output_attentions, attention, rope, attention_mask)
        x = x + self.drop_path1(self.ls1(attn_out))
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x, weights


class AttentionPool(nn.Module):
    """Multi-head attention pooling (MAP) with a learned probe: big_vision `MAPHead`, timm `AttentionPoolLatent`."""

    def __init__(self, config: VitHfConfig):
        super().__init__()
        d = config.hidden_size
        self.num_heads = config.pool_num_heads or config.num_attention_heads
        self.latent = nn.Parameter(torch.empty(1, 1, d))
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * d)
        self.proj = nn.Linear(d, d)
        self.norm = make_norm(config)
        # timm's AttentionPoolLatent and big_vision's MAPHead always have biases, and no inner norm
        self.mlp = Mlp(config, bias=True, width=config.pool_intermediate_size, inner_norm=False)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """`attention_mask`: (b, 1, 1, n) bool, True for the tokens to pool (NaFlex padding excluded), or None."""
        q = rearrange(self.q(self.latent), "1 l (h d) -> 1 h l d", h=self.num_heads).expand(x.shape[0], -1, -1, -1)
        k, v = rearrange(self.kv(x), "b n (kv h d) -> kv b h n d", kv=2, h=self.num_heads)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask)
        x = self.proj(rearrange(out, "b h l d -> b l (h d)"))
        x = x + self.mlp(self.norm(x))
        return x[:, 0]


class AttentionPoolKV(nn.Module):
    """AIMv2's attention pooling head: the learned query `latent` is used as is (no query projection), keys and values
    are projected (`kv`, [k; v] rows, bias = `qkv_bias`), then an output projection; no norm, no MLP."""

    def __init__(self, config: VitHfConfig):
        super().__init__()
        d = config.hidden_size
        self.num_heads = config.pool_num_heads or config.num_attention_heads
        self.latent = nn.Parameter(torch.empty(1, 1, d))
        self.kv = nn.Linear(d, 2 * d, bias=config.qkv_bias)
        self.proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        q = rearrange(self.latent.to(x.dtype), "1 l (h d) -> 1 h l d", h=self.num_heads).expand(x.shape[0], -1, -1, -1)
        k, v = rearrange(self.kv(x), "b n (kv h d) -> kv b h n d", kv=2, h=self.num_heads)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask)
        return self.proj(rearrange(out, "b h 1 d -> b (h d)"))


class RepresentationLayer(nn.Module):
    """tanh(Linear) "pre-logits" of the original ImageNet-21k ViT releases (timm <= 0.5 `pre_logits.fc`)."""

    def __init__(self, config: VitHfConfig):
        super().__init__()
        self.fc = nn.Linear(config.hidden_size, config.representation_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.fc(x))


# ----------------------------------------------------------------------------------------------------------------------
# Input checks and block selection
# ----------------------------------------------------------------------------------------------------------------------


def check_pixel_values(
    model: nn.Module, pixel_values: torch.Tensor | None, interpolate_pos_encoding: bool
) -> None:
    """Refuse, with the fix, what `VitHfModel` cannot read: not a float (b, c, h, w) tensor of the right channels and
    size."""
    cfg = model.config
    if pixel_values is None:
        raise ValueError("pixel_values is required: pass a (batch, channels, height, width) tensor")
    if not isinstance(pixel_values, torch.Tensor):
        raise TypeError(
            f"pixel_values must be a torch.Tensor, got {type(pixel_values).__name__}: preprocess images with the "
            f"model's image processor (processor(images, return_tensors='pt'))"
        )
    if not pixel_values.is_floating_point():
        raise ValueError(
            f"pixel_values has dtype {pixel_values.dtype}, but the model expects normalised floating-point pixels "
            f"(raw 0..255 integers would be classified as garbage): preprocess with the model's image processor"
        )
    if pixel_values.ndim != 4:
        hint = " (a single image? add the batch axis with pixel_values[None])" if pixel_values.ndim == 3 else ""
        raise ValueError(
            f"pixel_values must be 4-D (batch, channels, height, width), got shape {tuple(pixel_values.shape)}"
            f"{hint}"
        )
    b, c, h, w = pixel_values.shape
    if b == 0:
        raise ValueError("pixel_values is an empty batch (batch size 0): pass at least one image")
    channels = model.patch_embed.proj.in_channels  # config.num_channels, fixed with the weights' shape
    if c != channels:
        raise ValueError(
            f"pixel_values has {c} channel(s) but the model expects {channels} (config.num_channels): "
            f"preprocess images with the model's image processor, which converts grey/RGBA/palette images"
        )
    ph, pw = model.patch_embed.patch_size  # config.patch_hw, likewise
    if (h % ph or w % pw) and not model.patch_embed.crop_remainder:
        raise ValueError(
            f"image size {h}x{w} is not divisible by the patch size {ph}x{pw}: resize or crop to a multiple of "
            f"the patch size (the image processor does this)"
        )
    # the image size can change (resize_position_embeddings): read from the config, only when it matters;
    # grids, not pixels: with crop_remainder, 378 and 384 px both make the 27x27 grid of a /14 model
    fixed_size = model.pos_embed is not None and not interpolate_pos_encoding
    if fixed_size and (h // ph, w // pw) != cfg.grid_size and not cfg.dynamic_img_size:
        ih, iw = cfg.image_hw
        raise ValueError(
            f"image size {h}x{w} does not match the model's {ih}x{iw} (config.image_size): pass "
            f"interpolate_pos_encoding=True to resample the positions for this call, or call "
            f"model.vit.resize_position_embeddings(({h}, {w})) to change the model's resolution for good (on a bare "
            f"VitHfModel, resize_position_embeddings is the model's own method)"
        )


# What transformers itself may hand a model's forward (the Trainer's `num_items_in_batch`, ...): accepted, unused
TRANSFORMERS_KWARGS = frozenset(TransformersKwargs.__annotations__)


def check_forward_kwargs(model: nn.Module, kwargs: dict, pixel_attention_mask=None, spatial_shapes=None) -> None:
    """Refuse what a forward would otherwise ignore in silence: a keyword it does not read (`attention_mask`: a mask
    the caller believes applied), or NaFlex's patch mask without the grids it belongs to. A keyword given as None asks
    for nothing and passes (peft's task wrappers hand every model `input_ids=None, attention_mask=None`)."""
    unknown = sorted(k for k, v in kwargs.items() if v is not None and k not in TRANSFORMERS_KWARGS)
    if unknown:
        raise TypeError(
            f"{type(model).__name__}.forward() got unexpected keyword argument(s) {', '.join(unknown)}: it reads "
            f"pixel_values (NaFlex inputs: with pixel_attention_mask and spatial_shapes), as the image processor gives"
        )
    if pixel_attention_mask is not None and spatial_shapes is None:
        raise ValueError(
            "pixel_attention_mask without spatial_shapes: the mask is NaFlex's patch mask, read with the patch grids; "
            "pass all three NaFlex processor outputs (model(**processor(images, return_tensors='pt'))) or neither"
        )


def take_indices(depth: int, indices: int | list[int] | tuple[int, ...] | None) -> list[int]:
    """Block indices to return (timm's `feature_take_indices`): all for None, the last n for an int n, else the
    listed ones (negative ones count from the end)."""
    if indices is None:
        indices = depth
    if isinstance(indices, int):
        if not 0 < indices <= depth:
            raise ValueError(f"indices={indices} asks for the last {indices} blocks, but the model has {depth}: "
                             f"pass 1..{depth}, or a list of block indices")
        return list(range(depth - indices, depth))
    taken = [i + depth if i < 0 else i for i in indices]
    bad = [i for i, t in zip(indices, taken) if not 0 <= t < depth]
    if bad or not taken:
        raise ValueError(f"block indices {list(indices)} are out of range: the model has {depth} blocks "
                         f"(indices 0..{depth - 1}, or -{depth}..-1 from the end)")
    return taken
