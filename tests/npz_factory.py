"""Random Google ViT `.npz` files with the exact key names and shapes of each published layout.

Layouts follow the published checkpoints: vit_jax (pre-Linen and Linen names) and big_vision (including
scan-stacked encoders, MAP heads, sincos2d, pre_logits, old `Transformer/pos_embedding` tables and bfloat16 stored
as numpy void V2). Every tensor is random with a visible magnitude (LayerNorm scales around 1 but not 1, non-zero
biases, non-zero heads) so that a swapped or skipped tensor changes the logits.

Tiny dims exercise every axis distinctly: D=64, H=4, Dh=16 (H != Dh), L=3, P=8, C=3, 32x32 images (4x4 grid),
K=10, M=160 (!= 4 D).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

D, H, DH, L, P, C, IMG, K, M = 64, 4, 16, 3, 8, 3, 32, 10, 160
REP = 48  # representation (pre_logits) width, != D so a missing layer fails on shapes


@dataclass(frozen=True)
class Variant:
    """One file layout.

    naming: 'pre-linen' (vit_jax releases) or 'linen' (Linen vit_jax, big_vision).
    pool: 'tok', 'gap', 'map' or '0'.
    pos: 'posembed_input' (vit_jax: cls slot when tok), 'top' (big_vision `pos_embedding`, patches only),
        'old' (big_vision `Transformer/pos_embedding`, with a cls slot when tok) or 'sincos2d' (nothing stored).
    timm: timm 1.0.31's `_load_weights` can load it (with `prefix=timm_prefix`).
    """

    name: str
    naming: str
    pool: str
    pos: str
    prefix: str = ""
    scan: bool = False
    pre_logits: bool = False
    bf16: bool = False
    timm: bool = False
    grid: int = IMG // P
    extra_tower: bool = False  # add a txt/ tower next to img/ (two-tower file)

    @property
    def cli_pool(self) -> str | None:
        """The `--pool` a user must pass: only '0' cannot be inferred from the keys."""
        return "0" if self.pool == "0" else None

    @property
    def timm_args(self) -> dict:
        """timm VisionTransformer arguments reproducing the Google model (reference §2.5)."""
        base = dict(img_size=self.grid * P, patch_size=P, in_chans=C, num_classes=K, embed_dim=D, depth=L,
                    num_heads=H, mlp_ratio=M / D)
        if self.pool == "tok":
            return dict(base, no_embed_class=self.pos != "posembed_input")
        if self.pool == "gap":
            return dict(base, class_token=False, global_pool="avg", fc_norm=False)
        return dict(base, class_token=False, global_pool="map")


VARIANTS = [
    Variant("vitjax_token", "pre-linen", "tok", "posembed_input", timm=True),
    Variant("vitjax_gap", "pre-linen", "gap", "posembed_input", timm=True),
    Variant("vitjax_token_opt_target", "pre-linen", "tok", "posembed_input", prefix="opt/target/", timm=True),
    Variant("vitjax_linen_token", "linen", "tok", "posembed_input"),
    Variant("vitjax_token_pre_logits", "pre-linen", "tok", "posembed_input", pre_logits=True),
    Variant("bv_tok_params", "linen", "tok", "top", prefix="params/", timm=True),
    Variant("bv_gap_params", "linen", "gap", "top", prefix="params/", timm=True),
    Variant("bv_map_params", "linen", "map", "top", prefix="params/", timm=True),
    Variant("bv_tok_params_img", "linen", "tok", "top", prefix="params/img/", timm=True),
    Variant("bv_gap_params_img", "linen", "gap", "top", prefix="params/img/", timm=True),
    Variant("bv_map_params_img", "linen", "map", "top", prefix="params/img/", timm=True),
    Variant("bv_scan_gap", "linen", "gap", "top", prefix="params/", scan=True, timm=True),
    Variant("bv_scan_map", "linen", "map", "top", prefix="params/", scan=True, timm=True),
    Variant("bv_bare_gap", "linen", "gap", "top", timm=True),
    Variant("bv_img_map", "linen", "map", "top", prefix="img/", timm=True, extra_tower=True),
    Variant("bv_opt_target_tok", "linen", "tok", "top", prefix="opt/target/", timm=True),
    Variant("bv_sincos2d_gap", "linen", "gap", "sincos2d", prefix="params/"),
    Variant("bv_sincos2d_tok", "linen", "tok", "sincos2d"),
    Variant("bv_rep_gap", "linen", "gap", "top", prefix="params/", pre_logits=True),
    Variant("bv_pool0", "linen", "0", "top", prefix="params/"),
    Variant("bv_old_pos_tok", "linen", "tok", "old", prefix="params/"),
    Variant("bv_old_pos_gap", "linen", "gap", "old"),
    Variant("bv_bf16_gap", "linen", "gap", "top", prefix="params/", bf16=True),
    Variant("bv_bf16_scan_map", "linen", "map", "top", scan=True, bf16=True),
]
BY_NAME = {v.name: v for v in VARIANTS}


class _Random:
    """Seeded tensors of visible magnitude."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)

    def normal(self, shape, std: float = 0.2, mean: float = 0.0) -> np.ndarray:
        return (mean + std * self.rng.standard_normal(shape)).astype(np.float32)

    def layer_norm(self, out: dict, name: str) -> None:
        out[f"{name}/scale"] = self.normal((D,), 0.2, 1.0)
        out[f"{name}/bias"] = self.normal((D,), 0.2)

    def dense(self, out: dict, name: str, n_in: int, n_out: int) -> None:
        out[f"{name}/kernel"] = self.normal((n_in, n_out), 1.2 / np.sqrt(n_in))
        out[f"{name}/bias"] = self.normal((n_out,), 0.2)

    def attention(self, out: dict, name: str) -> None:
        for proj in ("query", "key", "value"):
            out[f"{name}/{proj}/kernel"] = self.normal((D, H, DH), 1.2 / np.sqrt(D))
            out[f"{name}/{proj}/bias"] = self.normal((H, DH), 0.2)
        out[f"{name}/out/kernel"] = self.normal((H, DH, D), 1.2 / np.sqrt(D))
        out[f"{name}/out/bias"] = self.normal((D,), 0.2)

    def mlp(self, out: dict, name: str) -> None:
        self.dense(out, f"{name}/Dense_0", D, M)
        self.dense(out, f"{name}/Dense_1", M, D)


def block_names(naming: str) -> tuple[str, str, str]:
    """(attention, second LayerNorm, MLP) sub-module names of an encoder block."""
    if naming == "pre-linen":
        return "MultiHeadDotProductAttention_1", "LayerNorm_2", "MlpBlock_3"
    return "MultiHeadDotProductAttention_0", "LayerNorm_1", "MlpBlock_0"


def make_params(variant: Variant, seed: int = 0) -> dict[str, np.ndarray]:
    """The full key -> array dictionary (prefix included) of `variant`."""
    r = _Random(seed)
    tree: dict[str, np.ndarray] = {}
    tree["embedding/kernel"] = r.normal((P, P, C, D), 0.1)
    tree["embedding/bias"] = r.normal((D,), 0.2)
    n = variant.grid**2
    if variant.pool == "tok":
        tree["cls"] = r.normal((1, 1, D), 0.5)
    slot = int(variant.pool == "tok" and variant.pos in ("posembed_input", "old"))
    pos_key = {"posembed_input": "Transformer/posembed_input/pos_embedding", "top": "pos_embedding",
               "old": "Transformer/pos_embedding", "sincos2d": None}[variant.pos]
    if pos_key:
        tree[pos_key] = r.normal((1, n + slot, D), 0.5)
    attention, norm2, mlp = block_names(variant.naming)
    blocks = []
    for _ in range(L):
        blk: dict[str, np.ndarray] = {}
        r.layer_norm(blk, "LayerNorm_0")
        r.attention(blk, attention)
        r.layer_norm(blk, norm2)
        r.mlp(blk, mlp)
        blocks.append(blk)
    if variant.scan:
        for sub in blocks[0]:
            tree[f"Transformer/encoderblock/{sub}"] = np.stack([blk[sub] for blk in blocks])
    else:
        for i, blk in enumerate(blocks):
            tree.update({f"Transformer/encoderblock_{i}/{sub}": a for sub, a in blk.items()})
    r.layer_norm(tree, "Transformer/encoder_norm")
    if variant.pool == "map":
        tree["MAPHead_0/probe"] = r.normal((1, 1, D), 0.5)
        r.attention(tree, "MAPHead_0/MultiHeadDotProductAttention_0")
        r.layer_norm(tree, "MAPHead_0/LayerNorm_0")
        r.mlp(tree, "MAPHead_0/MlpBlock_0")
    width = D
    if variant.pre_logits:
        r.dense(tree, "pre_logits", D, REP)
        width = REP
    r.dense(tree, "head", width, K)
    if variant.bf16:
        tree = {k: to_bf16_void(a) for k, a in tree.items()}
    out = {f"{variant.prefix}{k}": a for k, a in tree.items()}
    if variant.extra_tower:  # a two-tower (LiT/SigLIP) file: the text tower sits next to img/
        out["txt/Embed_0/embedding"] = r.normal((100, D))
        out["txt/head/kernel"] = r.normal((D, D))
        out["t"] = r.normal((1,))
        out["b"] = r.normal((1,))
    return out


def to_bf16_void(a: np.ndarray) -> np.ndarray:
    """big_vision's bfloat16 storage: the high 16 bits of each float32 (round to nearest even), as numpy void V2."""
    bits = a.astype(np.float32).view(np.uint32)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype(np.uint16).view("V2")


def write_npz(path: str | Path, params: dict[str, np.ndarray]) -> Path:
    path = Path(path)
    np.savez(path, **params)
    return path


__all__ = ["Variant", "VARIANTS", "BY_NAME", "make_params", "write_npz", "to_bf16_void", "block_names",
           "D", "H", "DH", "L", "P", "C", "IMG", "K", "M", "REP"]
