"""The test suite's own float64 numpy forward pass of Google's ViT, reading the npz dictionary in Flax layout.

Written from the Flax models' semantics (vit_jax `models_vit.py`, big_vision `models/vit.py`), independently of
`convert/`: it never imports the converter and never converts layouts, so it checks the converter and timm alike.
The file's flavour (prefix, naming, pooling, where the positions live, scan-stacking, bf16) is passed in by the
test, which knows what it wrote, rather than inferred.
"""

from __future__ import annotations

import numpy as np
from scipy.special import erf

EPS = 1e-6  # flax.linen.LayerNorm default


def _f64(a: np.ndarray) -> np.ndarray:
    if a.dtype.kind == "V":  # bfloat16 stored as V2: the 16 stored bits are the top half of a float32
        a = (a.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    return a.astype(np.float64)


def gelu(x: np.ndarray, approximate: bool) -> np.ndarray:
    if approximate:  # jax.nn.gelu(approximate=True) == flax nn.gelu
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
    return 0.5 * x * (1 + erf(x / np.sqrt(2)))


def layer_norm(x, p, name) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)  # biased
    return (x - mu) / np.sqrt(var + EPS) * p(f"{name}/scale") + p(f"{name}/bias")


def mha(xq, xkv, p, name) -> np.ndarray:
    """flax MultiHeadDotProductAttention over (B, N, D) inputs with (D, H, Dh) / (H, Dh, D) kernels."""
    q = np.einsum("bld,dhk->blhk", xq, p(f"{name}/query/kernel")) + p(f"{name}/query/bias")
    k = np.einsum("bnd,dhk->bnhk", xkv, p(f"{name}/key/kernel")) + p(f"{name}/key/bias")
    v = np.einsum("bnd,dhk->bnhk", xkv, p(f"{name}/value/kernel")) + p(f"{name}/value/bias")
    q = q / np.sqrt(q.shape[-1])  # flax scales the query
    s = np.einsum("blhk,bnhk->bhln", q, k)
    a = np.exp(s - s.max(-1, keepdims=True))
    a = a / a.sum(-1, keepdims=True)  # over the keys
    o = np.einsum("bhln,bnhk->blhk", a, v)
    return np.einsum("blhk,hkd->bld", o, p(f"{name}/out/kernel")) + p(f"{name}/out/bias")


def mlp_block(x, p, name, approximate) -> np.ndarray:
    x = gelu(x @ p(f"{name}/Dense_0/kernel") + p(f"{name}/Dense_0/bias"), approximate)
    return x @ p(f"{name}/Dense_1/kernel") + p(f"{name}/Dense_1/bias")


def posemb_sincos_2d(h, w, width, temperature=10_000.0) -> np.ndarray:
    """big_vision posemb_sincos_2d."""
    y, x = np.mgrid[:h, :w]
    omega = np.arange(width // 4) / (width // 4 - 1)
    omega = 1.0 / temperature**omega
    y = np.einsum("m,d->md", y.flatten(), omega)
    x = np.einsum("m,d->md", x.flatten(), omega)
    return np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)[None]


def forward(
    params, pixels_nchw, *, prefix, naming, pool, pos, scan=False, approximate_gelu=True, depth=None
) -> np.ndarray:
    """Logits of the Flax model for NCHW pixels (float64).

    naming: 'pre-linen' | 'linen'; pool: 'tok' | 'gap' | 'map' | '0';
    pos: 'posembed_input' | 'top' | 'old' | 'sincos2d' (see tests/npz_factory.Variant).
    """

    def p(name):
        return _f64(params[prefix + name])

    attn_name, ln2, mlp_name = (
        ("MultiHeadDotProductAttention_1", "LayerNorm_2", "MlpBlock_3") if naming == "pre-linen"
        else ("MultiHeadDotProductAttention_0", "LayerNorm_1", "MlpBlock_0")
    )
    x = np.asarray(pixels_nchw, np.float64).transpose(0, 2, 3, 1)  # NHWC
    kernel = p("embedding/kernel")
    ps, _, c, d = kernel.shape
    b, hh, ww, _ = x.shape
    gh, gw = hh // ps, ww // ps
    # Conv with stride = kernel = P is a per-patch contraction over (P, P, C).
    x = np.einsum("bhpwqc,pqcd->bhwd", x.reshape(b, gh, ps, gw, ps, c), kernel) + p("embedding/bias")
    x = x.reshape(b, gh * gw, d)

    if pos == "posembed_input":  # vit_jax: [cls] then AddPositionEmbs over every token
        if pool == "tok":
            x = np.concatenate([np.tile(p("cls"), (b, 1, 1)), x], axis=1)
        x = x + p("Transformer/posembed_input/pos_embedding")
    else:
        if pos == "sincos2d":
            pe, cls = posemb_sincos_2d(gh, gw, d), p("cls") if pool == "tok" else None
        else:
            pe = p("pos_embedding" if pos == "top" else "Transformer/pos_embedding")
            cls = p("cls") if pool == "tok" else None
            if pe.shape[1] == gh * gw + 1:  # big_vision fix_old_checkpoints: fold the cls slot into cls
                cls, pe = cls + pe[:, :1], pe[:, 1:]
        x = x + pe
        if pool == "tok":
            x = np.concatenate([np.tile(cls, (b, 1, 1)), x], axis=1)

    n_blocks = depth
    if n_blocks is None:
        n_blocks = params[prefix + "Transformer/encoderblock/LayerNorm_0/scale"].shape[0] if scan else sum(
            1 for k in params if k.startswith(prefix + "Transformer/encoderblock_") and k.endswith("LayerNorm_0/scale")
        )
    for i in range(n_blocks):
        if scan:
            def q(name, i=i):
                return _f64(params[f"{prefix}Transformer/encoderblock/{name}"][i])
        else:
            def q(name, i=i):
                return p(f"Transformer/encoderblock_{i}/{name}")
        x = x + mha(layer_norm(x, q, "LayerNorm_0"), layer_norm(x, q, "LayerNorm_0"), q, attn_name)
        x = x + mlp_block(layer_norm(x, q, ln2), q, mlp_name, approximate_gelu)
    x = layer_norm(x, p, "Transformer/encoder_norm")

    if pool in ("tok", "0"):
        x = x[:, 0]
    elif pool == "gap":
        x = x.mean(axis=1)
    else:  # MAPHead: the probe is the only query
        probe = np.tile(p("MAPHead_0/probe"), (b, 1, 1))
        y = mha(probe, x, p, "MAPHead_0/MultiHeadDotProductAttention_0")
        y = y + mlp_block(layer_norm(y, p, "MAPHead_0/LayerNorm_0"), p, "MAPHead_0/MlpBlock_0", approximate_gelu)
        x = y[:, 0]
    if prefix + "pre_logits/kernel" in params:
        x = np.tanh(x @ p("pre_logits/kernel") + p("pre_logits/bias"))
    return x @ p("head/kernel") + p("head/bias")


def forward_variant(params, variant, pixels_nchw, approximate_gelu=True) -> np.ndarray:
    """`forward` with the flavour of a `tests.npz_factory.Variant`."""
    return forward(params, pixels_nchw, prefix=variant.prefix, naming=variant.naming, pool=variant.pool,
                   pos=variant.pos, scan=variant.scan, approximate_gelu=approximate_gelu)
