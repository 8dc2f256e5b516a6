"""A float64 numpy forward pass of Google's ViT (vit_jax `models_vit.py` / big_vision `models/vit.py`) in Flax layout.

Used by `python -m convert.google --verify` when timm cannot load a file (sincos2d, `pre_logits`, pool '0',
Linen-named vit_jax files, old big_vision layouts, bf16, resampled positions), and as a second reference when it
can: it reads the parameters in their Flax shapes ((P,P,C,D) conv, (D,H,Dh) / (H,Dh,D) attention, (in,out) dense)
and never goes through the converter's key tables or transforms, so a layout mistake there shows up as a
difference here. Semantics follow the Flax models (vit_jax `models_vit.py`, big_vision `models/vit.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.special import erf


@dataclass(frozen=True)
class FlaxSpec:
    """What the forward pass needs beyond the parameters.

    Args:
        attention / norm2 / mlp: block sub-module names of the naming scheme (pre-Linen or Linen).
        depth: number of encoder blocks (`Transformer/encoderblock_{i}`).
        pool: 'tok', 'gap', 'map' or '0' (first token, no cls).
        pos_embed: (1, T, D) table (possibly already resampled), or None for sincos2d.
        pos_has_cls_slot: the table's row 0 belongs to the cls token (vit_jax: concat, then add).
        gelu: 'tanh' (Flax nn.gelu) or 'exact'.
    """

    attention: str
    norm2: str
    mlp: str
    depth: int
    pool: str
    pos_embed: np.ndarray | None
    pos_has_cls_slot: bool
    gelu: str = "tanh"
    eps: float = 1e-6


def _layer_norm(x: np.ndarray, get: Callable, name: str, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)  # biased, as flax.linen.LayerNorm
    return (x - mean) / np.sqrt(var + eps) * get(f"{name}/scale") + get(f"{name}/bias")


def _gelu(x: np.ndarray, kind: str) -> np.ndarray:
    if kind == "tanh":  # jax.nn.gelu(approximate=True)
        return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))
    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


def _mlp(x: np.ndarray, get: Callable, name: str, gelu: str) -> np.ndarray:
    h = _gelu(x @ get(f"{name}/Dense_0/kernel") + get(f"{name}/Dense_0/bias"), gelu)
    return h @ get(f"{name}/Dense_1/kernel") + get(f"{name}/Dense_1/bias")


def _attention(q_in: np.ndarray, kv_in: np.ndarray, get: Callable, name: str) -> np.ndarray:
    """flax MultiHeadDotProductAttention: DenseGeneral projections, query scaled by 1/sqrt(Dh), softmax over keys."""
    q = np.einsum("bqd,dhk->bqhk", q_in, get(f"{name}/query/kernel"), optimize=True) + get(f"{name}/query/bias")
    k = np.einsum("bnd,dhk->bnhk", kv_in, get(f"{name}/key/kernel"), optimize=True) + get(f"{name}/key/bias")
    v = np.einsum("bnd,dhk->bnhk", kv_in, get(f"{name}/value/kernel"), optimize=True) + get(f"{name}/value/bias")
    logits = np.einsum("bqhk,bnhk->bhqn", q / np.sqrt(q.shape[-1]), k, optimize=True)
    logits -= logits.max(-1, keepdims=True)
    weights = np.exp(logits)
    weights /= weights.sum(-1, keepdims=True)
    out = np.einsum("bhqn,bnhk->bqhk", weights, v, optimize=True)
    return np.einsum("bqhk,hkd->bqd", out, get(f"{name}/out/kernel"), optimize=True) + get(f"{name}/out/bias")


def sincos2d(gh: int, gw: int, dim: int, temperature: float = 10_000.0) -> np.ndarray:
    """big_vision `posemb_sincos_2d`: [sin x, cos x, sin y, cos y], x = column index, shape (1, gh*gw, dim)."""
    y, x = np.mgrid[:gh, :gw]
    omega = 1.0 / temperature ** (np.arange(dim // 4) / (dim // 4 - 1))
    x = x.reshape(-1)[:, None] * omega[None]
    y = y.reshape(-1)[:, None] * omega[None]
    return np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)[None]


def flax_forward(get: Callable[[str], np.ndarray], spec: FlaxSpec, pixels_nchw: np.ndarray) -> np.ndarray:
    """Logits (or pooled features when there is no head) for NCHW pixels, everything in float64.

    `get(name)` returns the float64 array of a canonical Flax parameter name (prefix stripped, scan split).
    """
    x = np.asarray(pixels_nchw, dtype=np.float64).transpose(0, 2, 3, 1)  # Flax convolutions are NHWC
    kernel = get("embedding/kernel")
    ph, pw, c, d = kernel.shape
    b, h, w, _ = x.shape
    gh, gw = h // ph, w // pw
    patches = x.reshape(b, gh, ph, gw, pw, c)
    x = np.einsum("bipjqc,pqcd->bijd", patches, kernel, optimize=True).reshape(b, gh * gw, d)
    x = x + get("embedding/bias")

    pos = sincos2d(gh, gw, d) if spec.pos_embed is None else spec.pos_embed
    if spec.pool == "tok":
        cls = np.broadcast_to(get("cls"), (b, 1, d))
        if spec.pos_has_cls_slot:  # vit_jax: AddPositionEmbs after the cls concat
            x = np.concatenate([cls, x], axis=1) + pos
        else:  # big_vision: positions on the patches, then the cls token
            x = np.concatenate([cls, x + pos], axis=1)
    else:
        x = x + pos

    for i in range(spec.depth):
        blk = f"Transformer/encoderblock_{i}"
        y = _layer_norm(x, get, f"{blk}/LayerNorm_0", spec.eps)
        x = x + _attention(y, y, get, f"{blk}/{spec.attention}")
        y = _layer_norm(x, get, f"{blk}/{spec.norm2}", spec.eps)
        x = x + _mlp(y, get, f"{blk}/{spec.mlp}", spec.gelu)
    x = _layer_norm(x, get, "Transformer/encoder_norm", spec.eps)

    if spec.pool in ("tok", "0"):
        x = x[:, 0]
    elif spec.pool == "gap":
        x = x.mean(axis=1)
    elif spec.pool == "map":
        probe = np.broadcast_to(get("MAPHead_0/probe"), (b, 1, d))
        y = _attention(probe, x, get, "MAPHead_0/MultiHeadDotProductAttention_0")
        y = y + _mlp(_layer_norm(y, get, "MAPHead_0/LayerNorm_0", spec.eps), get, "MAPHead_0/MlpBlock_0", spec.gelu)
        x = y[:, 0]
    else:
        raise ValueError(f"unknown pool {spec.pool!r}")

    try:
        x = np.tanh(x @ get("pre_logits/kernel") + get("pre_logits/bias"))
    except KeyError:
        pass
    try:
        return x @ get("head/kernel") + get("head/bias")
    except KeyError:
        return x


__all__ = ["FlaxSpec", "flax_forward", "sincos2d"]
