"""2-D rotary position embeddings (RoPE) on the queries and keys of the einops Vision Transformer.

Three kinds, by `config.rope_type` (the maths; `config.rope_numerics` names whose float rounding of the table is
reproduced, since the sources compute the same angles in different precisions and operation orders):

- `"cat"`: timm's `RotaryEmbeddingCat` (EVA02, Perception Encoder, timm's SBB RoPE ViTs, Naver RoPE-ViT axial):
  integer patch indices (+ `rope_grid_offset`, rescaled onto `rope_ref_grid` when set), frequencies
  `theta ** -(k / (head_dim / 4))`, angle = coordinate * frequency.
- `"dinov3"`: DINOv3 (Meta's, timm's `RotaryEmbeddingDinoV3`, transformers' `DINOv3ViTRopePositionEmbedding`):
  patch centres `(i + 0.5 + offset) / n` mapped to [-1, 1], periods `theta ** (4k / head_dim)`,
  angle = 2 pi * coordinate / period.
- `"mixed"`: Naver RoPE-Mixed (timm's `RotaryEmbeddingMixed`): learned frequencies per block and head
  (`rope.freqs`, shape (2, depth, heads, head_dim / 2)), angle = x * f_x + y * f_y; always computed in float32.

A table holds `cos` and a signed `sin` per token, with identity rows (cos 1, sin 0) for the prefix tokens (class,
registers), which RoPE leaves alone: `q * cos + swap(q) * sin` is then exactly `q` there, and no split /
concatenation is needed. The rotation's minus signs live in the table (`sin` negated on the channels that the
rotation negates): `swap` only moves channels, and `x * -s` is bit-identical to `-x * s`, so the sources' numbers are
kept with one elementwise pass less per query / key tensor.
Tables depend only on the patch grid (not on the weights, except for "mixed"), so they are built once per grid, dtype
and device and cached on the module; the trunk passes the same table to every block.

Remote code: copied flat next to the weights; imports only torch, einops and its sibling configuration module.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import nn

from .configuration_vit_hf import VitHfConfig


def swap_pairs(x: torch.Tensor, half: bool) -> torch.Tensor:
    """The channel permutation of RoPE's 90-degree rotation, without its signs (they are in the table's `sin`): half
    layout `[x2, x1]` (rotation `[-x2, x1]`: GPT-NeoX, DINOv3) or swapped pairs `[x1, x0, x3, x2, ...]` (rotation
    `[-x1, x0, -x3, x2, ...]`: EVA02, PE, RoPE-ViT)."""
    if half:
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat([x2, x1], dim=-1)
    pairs = rearrange(x, "... (d two) -> ... d two", two=2)  # stack of two strided views: one copy (flip is slower)
    return rearrange(torch.stack([pairs[..., 1], pairs[..., 0]], dim=-1), "... d two -> ... (d two)")


def rotation_signs(head_dim: int, half: bool) -> torch.Tensor:
    """(head_dim,) float32: -1 on the channels the rotation negates (the first half, or the even channels), else 1."""
    minus_plus = torch.tensor([-1.0, 1.0])
    return minus_plus.repeat_interleave(head_dim // 2) if half else minus_plus.repeat(head_dim // 2)


def apply_rotary(x: torch.Tensor, table: tuple[torch.Tensor, torch.Tensor], half: bool) -> torch.Tensor:
    """Rotate queries or keys (b, h, n, d) by a (cos, signed sin) table of (n, d) or (h, n, d) rows (`x * cos +
    rotate(x) * sin`, with rotate's signs in the table); computed in the table's precision (at least float32, as
    timm) and returned in `x`'s dtype."""
    cos, signed_sin = table
    return (x * cos + swap_pairs(x, half) * signed_sin).to(x.dtype)


def _layout(values: torch.Tensor, half: bool) -> torch.Tensor:
    """Per-frequency values (..., d/2) -> per-channel (..., d): `[f0, f1, .., f0, f1, ..]` or `[f0, f0, f1, f1, ..]`."""
    return torch.cat([values, values], dim=-1) if half else values.repeat_interleave(2, dim=-1)


def _axis_order(grid: tuple[int, int], indexing: str) -> tuple[list[int], str]:
    return ([grid[1], grid[0]] if indexing == "xy" else list(grid)), indexing


def index_coords(grid: tuple[int, int], indexing: str, offset: float = 0.0, ref_grid=None) -> torch.Tensor:
    """(gh * gw, 2) float32 patch indices (+ offset), rescaled so that `grid` spans `ref_grid` (timm's `_build_grid`
    'index' type, in its float32 operation order). Rows are row-major; channel 0 is y for 'ij', x for 'xy'."""
    shape, indexing = _axis_order(grid, indexing)
    axes = [torch.arange(s, dtype=torch.int64).to(torch.float32) + offset for s in shape]
    if ref_grid is not None:
        ref = [ref_grid[1], ref_grid[0]] if indexing == "xy" else list(ref_grid)
        axes = [t / s * r for t, s, r in zip(axes, shape, ref)]
    return torch.stack(torch.meshgrid(axes, indexing=indexing), dim=-1).reshape(-1, 2)


def centre_coords(grid: tuple[int, int], indexing: str, offset: float, numerics: str) -> torch.Tensor:
    """(gh * gw, 2) float32 patch centres in [-1, 1] (DINOv3), in timm's or transformers' operation order."""
    # integer ranges + 0.5: the same float32 values as arange(0.5, n), and traceable for any n (torch.export / ONNX
    # with a dynamic size: a float range's length would be specialised to the example's)
    if numerics == "transformers":  # get_patches_center_coordinates
        ys = (torch.arange(grid[0]).to(torch.float32) + 0.5) / grid[0]
        xs = (torch.arange(grid[1]).to(torch.float32) + 0.5) / grid[1]
        return 2.0 * torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).flatten(0, 1) - 1.0
    shape, indexing = _axis_order(grid, indexing)
    axes = [(torch.arange(s).to(torch.float32) + 0.5 + offset) / s for s in shape]
    return 2.0 * torch.stack(torch.meshgrid(axes, indexing=indexing), dim=-1).reshape(-1, 2) - 1.0


def augment_coords(coords: torch.Tensor, shift: float | None, jitter: float | None, rescale: float | None):
    """DINOv3's training-time coordinate augmentation (one transform for all positions): a uniform per-axis shift in
    [-shift, shift], a log-uniform per-axis scale in [1/jitter, jitter], a log-uniform shared scale in
    [1/rescale, rescale], in that order (the order and draws of timm and transformers)."""
    if shift is not None:
        coords = coords + torch.empty(1, 2, dtype=coords.dtype, device=coords.device).uniform_(-shift, shift)
    if jitter is not None:
        j = math.log(jitter)
        coords = coords * torch.empty(1, 2, dtype=coords.dtype, device=coords.device).uniform_(-j, j).exp()
    if rescale is not None:
        r = math.log(rescale)
        coords = coords * torch.empty(1, dtype=coords.dtype, device=coords.device).uniform_(-r, r).exp()
    return coords


class RotaryEmbedding(nn.Module):
    """The model's rotary tables: `forward(grid, num_prefix, dtype, device)` -> one (cos, sin) pair per block."""

    def __init__(self, config: VitHfConfig):
        super().__init__()
        self.kind = config.rope_type
        self.theta = config.rope_theta
        self.half = config.rope_rotate_half
        self.indexing = config.rope_grid_indexing
        self.offset = config.rope_grid_offset
        self.ref_grid = tuple(config.rope_ref_grid) if config.rope_ref_grid else None
        self.numerics = config.rope_numerics
        self.augment = (config.rope_shift_coords, config.rope_jitter_coords, config.rope_rescale_coords)
        self.depth = config.num_hidden_layers
        self.head_dim = config.head_dim
        if self.kind == "mixed":
            self.freqs = nn.Parameter(torch.empty(2, self.depth, config.num_attention_heads, self.head_dim // 2))
        self._cache: dict = {}

    # -------------------------------------------------------------- frequencies and coordinates (float32)
    def frequencies(self) -> torch.Tensor:
        """(head_dim / 4,) float32: inverse frequencies ('cat'; 'dinov3' in transformers' numerics) or periods
        ('dinov3' in timm's numerics, which divides by them)."""
        n = self.head_dim // 4
        if self.kind == "cat":  # timm freq_bands(step=1)
            return 1.0 / (self.theta ** (torch.arange(0, n, 1, dtype=torch.int64).to(torch.float32) / n))
        if self.numerics == "transformers":  # inverse frequencies
            return 1 / self.theta ** torch.arange(0, 1, 4 / self.head_dim, dtype=torch.float32)
        return self.theta ** (2.0 * torch.arange(n, dtype=torch.float32) / (self.head_dim // 2))  # timm: periods

    def coordinates(self, grid: tuple[int, int]) -> torch.Tensor:
        if self.kind == "dinov3":
            coords = centre_coords(grid, self.indexing, self.offset, self.numerics)
        else:
            coords = index_coords(grid, self.indexing, self.offset if self.kind == "cat" else 0.0, self.ref_grid)
        if self.training and any(a is not None for a in self.augment):
            coords = augment_coords(coords, *self.augment)
        return coords

    def init_mixed_frequencies(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """timm's `init_random_2d_freqs`: magnitudes theta ** -(4k / head_dim), a random rotation per block and head."""
        depth, heads = self.freqs.shape[1:3]
        mag = 1.0 / (self.theta ** (torch.arange(0, self.head_dim, 4, dtype=torch.float32) / self.head_dim))
        angles = torch.rand(depth, heads, 1, generator=generator) * 2 * torch.pi
        fx = torch.cat([mag * torch.cos(angles), mag * torch.cos(angles + torch.pi / 2)], dim=-1)
        fy = torch.cat([mag * torch.sin(angles), mag * torch.sin(angles + torch.pi / 2)], dim=-1)
        return torch.stack([fx, fy], dim=0)

    # -------------------------------------------------------------- tables
    def _angles(self, coords: torch.Tensor, compute: torch.dtype) -> torch.Tensor:
        """(n, head_dim / 2) angles: [axis 0 frequencies, axis 1 frequencies]."""
        freqs = self.frequencies().to(coords.device)
        if self.kind == "cat":
            angles = coords[:, :, None].to(compute) * freqs.to(compute)
        elif self.numerics == "transformers":
            angles = 2 * math.pi * coords[:, :, None] * freqs[None, None, :]
        else:
            angles = 2 * math.pi * coords[:, :, None].to(compute) / freqs[None, None, :].to(compute)
        return angles.flatten(1)

    def _table(self, grid, num_prefix, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, signed sin) for the prefix + patch tokens in the dtype q and k are rotated in (timm: at least
        float32)."""
        out = torch.promote_types(dtype, torch.float32)
        coords = self.coordinates(grid).to(device)
        if self.kind == "mixed":  # timm get_mixed_freqs: everything in float32, the parameter included
            freqs, coords = self.freqs.float(), coords.float()
            angles = coords[:, 0, None] * freqs[0][..., None, :] + coords[:, 1, None] * freqs[1][..., None, :]
            cos, sin = _layout(angles.cos(), False), _layout(angles.sin(), False)
            sin = sin * rotation_signs(self.head_dim, False).to(sin.device)
        else:
            # timm builds its 'cat' tables in float32 (the cached table of a fixed-size model; float32 models always)
            # and its DINOv3 tables in the model's precision; transformers' DINOv3 computes in float32 throughout
            compute = out if self.kind == "dinov3" and self.numerics == "timm" else torch.float32
            angles = _layout(self._angles(coords, compute), self.half)
            cos, sin = angles.cos(), angles.sin() * rotation_signs(self.head_dim, self.half).to(compute)
        cos, sin = cos.to(device=device, dtype=out), sin.to(device=device, dtype=out)
        if num_prefix:  # identity rows: RoPE leaves the prefix tokens alone
            pad = (0, 0, num_prefix, 0)
            cos = nn.functional.pad(cos, pad, value=1.0)
            sin = nn.functional.pad(sin, pad, value=0.0)
        return cos, sin

    def forward(self, grid: tuple[int, int], num_prefix: int, dtype: torch.dtype, device: torch.device) -> list:
        """One (cos, sin) per block: the same cached table for 'cat' / 'dinov3', block i's slice for 'mixed'."""
        if self.kind == "mixed":
            cos, sin = self._table(grid, num_prefix, dtype, self.freqs.device)
            return [(cos[i], sin[i]) for i in range(self.depth)]
        augmenting = self.training and any(a is not None for a in self.augment)
        if augmenting or torch.compiler.is_compiling():  # a fresh draw / traced inline (no cache side effects)
            return [self._table(grid, num_prefix, dtype, device)] * self.depth
        key = (tuple(grid), num_prefix, dtype, device)
        if key not in self._cache:
            self._cache[key] = self._table(grid, num_prefix, dtype, device)
        return [self._cache[key]] * self.depth


__all__ = [
    "RotaryEmbedding",
    "apply_rotary",
    "swap_pairs",
    "rotation_signs",
    "index_coords",
    "centre_coords",
    "augment_coords",
]
