"""Declarative key tables of every source format -> vit_hf, and the small named tensor transforms they use.

timm: the state dict's keys are vit_hf's under `vit.` (`KEY_RULES`), after the legacy spellings timm itself still
accepts are rewritten (`LEGACY_RENAMES`) and projections timm keeps apart are concatenated into vit_hf's fused ones
(`FUSIONS`: EVA's separate q/k/v, SwiGLU's separate gate/up); keys of features vit_hf lacks are refused by the
feature's name (`UNSUPPORTED_KEYS`).

Google (.npz, Flax layout): a `Rule` says: the Flax parameter named `source` (a template; `{i}` is the block index)
becomes the vit_hf parameter `target` after `transform`, optionally as part `part` of `parts` arrays concatenated
along axis 0 (the fused `attn.qkv` = [q; k; v] and `attn_pool.kv` = [k; v] rows).

Names here are *canonical*: the npz prefix (`params/`, `opt/target/`, `img/`, ...) is stripped, a scan-stacked
`Transformer/encoderblock/...` is split into `encoderblock_{i}`, and an old inlined MAP head is moved under
`MAPHead_0/` before matching (that canonicalisation lives in `convert/google.py`). Templates are invertible, so a
missing target parameter is reported by the npz name that should have provided it.

Two block naming schemes exist (§2.2, pitfall P5): the original vit_jax releases use pre-Linen numbering
(`LayerNorm_0`, `MultiHeadDotProductAttention_1`, `LayerNorm_2`, `MlpBlock_3`), Linen code and big_vision use
per-class numbering (`LayerNorm_0`, `MultiHeadDotProductAttention_0`, `LayerNorm_1`, `MlpBlock_0`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from convert.common import ConversionError

# ----------------------------------------------------------------------------------------------------------------------
# timm state dict -> vit_hf: the parameter names of vit_hf *are* timm's keys (under `vit.`), so the table is a prefix
# plus the legacy spellings timm's own `checkpoint_filter_fn` still accepts.
# ----------------------------------------------------------------------------------------------------------------------

# Older spellings, rewritten to timm's current keys before anything else looks at the state dict
# (timm `checkpoint_filter_fn`): (pattern, replacement, what it is).
LEGACY_RENAMES: list[tuple[str, str, str]] = [
    (r"^blocks\.(\d+)\.gamma_([12])$", r"blocks.\1.ls\2.gamma", "DeiT-3 / EVA layer scale `gamma_1/gamma_2`"),
]

# Keys of timm checkpoints whose feature vit_hf cannot represent: (pattern, feature). Checked before KEY_RULES so that
# the refusal names the feature, not just an unknown key.
UNSUPPORTED_KEYS: list[tuple[str, str]] = [
    (r"^blocks\.\d+\.attn\.(lambda_|sub_norm)", "differential attention (timm attn_layer='diff')"),
    (r"^blocks\.\d+\.attn\.gate\.", "gated attention (a sigmoid gate on the attention output, timm gated_attn)"),
    (r"^blocks\.\d+\.mlp\.(w12|w3)", "a gated MLP in the w12/w3 layout"),
    (r"^patch_embed\.backbone\.", "a hybrid CNN patch embedding (VisionTransformerHybrid, patch_embed.backbone)"),
    (r"^attn_pool\.(q_norm|k_norm|pos_embed)", "an attention pool with qk-norm or positions (AttentionPoolLatent)"),
    (
        r"^attn_pool\.(?!latent$|q\.|kv\.|proj\.|norm\.|mlp\.fc[12]\.)",
        "an attention pool other than timm's AttentionPoolLatent (e.g. global_pool='prr')",
    ),
    (
        r"^mask_token$",
        "a DINOv2-style checkpoint (mask_token): load it with timm.create_model(..., pretrained_cfg_"
        "overlay=dict(file=...)) and convert the resulting model's state_dict()",
    ),
    (
        r"^(module\.)?visual\.",
        "an OpenAI / OpenCLIP checkpoint layout (visual.*): load it into timm first (its "
        "checkpoint_filter_fn converts it) and convert the resulting state_dict()",
    ),
    (r"^rope\.(?!freqs$)|\.rope\.", "rotary position embeddings with stored tables (only RoPE-Mixed's rope.freqs "
     "is a parameter)"),
]

# Projections timm stores apart and vit_hf fuses: (module pattern with one group, the fused Linear, its parts in row
# order). Weights are concatenated along the rows; biases too when every part has one. EVA's separate q/k/v with
# query and value biases but no key bias become `attn.q_bias` / `attn.v_bias` (vit_hf's key_bias=False).
FUSIONS: list[tuple[str, str, tuple[str, ...]]] = [
    (r"^(blocks\.\d+\.attn)\.", "qkv", ("q_proj", "k_proj", "v_proj")),
    (r"^(blocks\.\d+\.mlp)\.", "fc1", ("fc1_g", "fc1_x")),  # SwiGLU: [gate; up], vit_hf mlp_layer='glu'
]

# timm key (current spelling) -> vit_hf key. Every key must match exactly one rule; nothing is dropped or invented.
KEY_RULES: list[tuple[str, str]] = [
    (r"^(cls_token|dist_token|reg_token|pos_embed)$", r"vit.\1"),
    (r"^patch_embed\.proj\.(weight|bias)$", r"vit.patch_embed.proj.\1"),
    (r"^(norm_pre|norm|fc_norm)\.(weight|bias)$", r"vit.\1.\2"),
    (
        r"^blocks\.(\d+)\.(norm1|norm2|attn\.qkv|attn\.q_norm|attn\.k_norm|attn\.norm|attn\.proj|mlp\.fc1|mlp\.norm|"
        r"mlp\.fc2)\.(weight|bias)$",
        r"vit.blocks.\1.\2.\3",
    ),
    (r"^blocks\.(\d+)\.attn\.(q_bias|v_bias)$", r"vit.blocks.\1.attn.\2"),
    (r"^patch_embed\.norm\.(weight|bias)$", r"vit.patch_embed.norm.\1"),
    (r"^rope\.freqs$", r"vit.rope.freqs"),
    (r"^blocks\.(\d+)\.(ls1|ls2)\.gamma$", r"vit.blocks.\1.\2.gamma"),
    (r"^attn_pool\.latent$", r"vit.attn_pool.latent"),
    (r"^attn_pool\.(q|kv|proj|norm|mlp\.fc1|mlp\.fc2)\.(weight|bias)$", r"vit.attn_pool.\1.\2"),
    # timm <= 0.5 representation layer (tanh(Linear) before the head); timm >= 0.6 drops it, vit_hf keeps it.
    (r"^pre_logits\.fc\.(weight|bias)$", r"vit.pre_logits.fc.\1"),
    (r"^(head|head_dist)\.(weight|bias)$", r"\1.\2"),
]

def _fuse(state: dict[str, torch.Tensor], renamed: dict[str, int]) -> dict[str, torch.Tensor]:
    """Apply FUSIONS: separate projections -> vit_hf's fused Linear (new tensors; the rest are the same objects)."""
    out = dict(state)
    for pattern, fused, parts in FUSIONS:
        modules = sorted({m.group(1) for k in state if (m := re.match(pattern + f"({'|'.join(parts)})\\.", k))})
        for module in modules:
            names = [f"{module}.{p}" for p in parts]
            missing = [n for n in names if f"{n}.weight" not in state]
            if missing:
                raise ConversionError(f"{', '.join(missing)}.weight missing: {module} has only some of {parts}")
            out[f"{module}.{fused}.weight"] = torch.cat([out.pop(f"{n}.weight") for n in names])
            biases = [out.pop(f"{n}.bias", None) for n in names]
            if all(b is not None for b in biases):
                out[f"{module}.{fused}.bias"] = torch.cat(biases)
            elif fused == "qkv" and biases[1] is None and biases[0] is not None and biases[2] is not None:
                out[f"{module}.q_bias"], out[f"{module}.v_bias"] = biases[0], biases[2]  # no key bias (EVA)
            elif any(b is not None for b in biases):
                raise ConversionError(f"{module}: biases on only some of {parts}, a layout vit_hf cannot represent")
            what = f"separate {'/'.join(parts)} -> fused {fused}"
            renamed[what] = renamed.get(what, 0) + 1
    return out


def canonical_timm_keys(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Apply LEGACY_RENAMES and FUSIONS, refuse UNSUPPORTED_KEYS. Returns the state in current timm spelling (the same
    tensors, except fused ones) and a description of each rename applied."""
    out: dict[str, torch.Tensor] = {}
    renamed: dict[str, int] = {}
    for key, value in state.items():
        for pattern, feature in UNSUPPORTED_KEYS:
            if re.search(pattern, key):
                raise ConversionError(f"key {key!r} belongs to {feature}, which vit_hf cannot represent")
        new = key
        for pattern, replacement, what in LEGACY_RENAMES:
            if re.match(pattern, key):
                new = re.sub(pattern, replacement, key)
                renamed[what] = renamed.get(what, 0) + 1
                break
        if new in out:
            raise ConversionError(f"key {key!r} and another key both map to {new!r}")
        out[new] = value
    fused: dict[str, int] = {}
    out = _fuse(out, fused)
    notes = [f"{what} -> current timm names ({n} keys)" for what, n in renamed.items()]
    return out, notes + [f"{what} ({n} modules)" for what, n in fused.items()]


def _split_rows(state: Mapping[str, torch.Tensor], module: str, fused: str, value: torch.Tensor) -> list:
    """A fused tensor's parts: fc1 = [gate; up] halves; qkv = [q (width rows); k; v] with k and v of equal size (fewer
    rows than q under grouped-query attention)."""
    if fused != "qkv":
        return list(value.chunk(2))
    width = state[f"{module}.qkv.weight"].shape[1]
    kv = (value.shape[0] - width) // 2
    return list(value.split([width, kv, kv]))


def to_timm_layout(state: Mapping[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """Canonical timm keys (vit_hf's fused layout) -> the keys a timm model `expected`: layer scale as `gamma_1/2`
    where the model spells it so (EVA), fused projections split back into FUSIONS' parts where it keeps them apart
    (views of the fused tensors: nothing is copied). Keys already expected pass through."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in expected:
            out[key] = value
            continue
        m = re.match(r"^(blocks\.\d+)\.ls([12])\.gamma$", key)
        if m and f"{m.group(1)}.gamma_{m.group(2)}" in expected:
            out[f"{m.group(1)}.gamma_{m.group(2)}"] = value
            continue
        m = re.match(r"^(blocks\.\d+\.attn)\.(q|v)_bias$", key)
        if m and f"{m.group(1)}.{m.group(2)}_proj.bias" in expected:
            out[f"{m.group(1)}.{m.group(2)}_proj.bias"] = value
            continue
        for pattern, fused, parts in FUSIONS:
            m = re.match(pattern + fused + r"\.(weight|bias)$", key)
            if m and all(f"{m.group(1)}.{p}.weight" in expected for p in parts):
                for part, chunk in zip(parts, _split_rows(state, m.group(1), fused, value)):
                    out[f"{m.group(1)}.{part}.{m.group(2)}"] = chunk
                break
        else:
            raise ConversionError(f"key {key!r} has no place in the timm model (expected keys such as "
                                  f"{sorted(expected)[:3]}...)")
    return out


def timm_to_hf_key(key: str) -> str:
    """timm key (current spelling) -> vit_hf key, by KEY_RULES; an unmatched key is a ConversionError naming it."""
    for pattern, replacement in KEY_RULES:
        if re.match(pattern, key):
            return re.sub(pattern, replacement, key)
    raise ConversionError(f"unknown key {key!r}: not part of a timm VisionTransformer that vit_hf can represent")


# ----------------------------------------------------------------------------------------------------------------------
# Named tensor transforms (Flax layout -> torch layout). Each checks the rank it relies on: a reshape of the wrong
# rank could otherwise succeed and scramble the numbers silently.
# ----------------------------------------------------------------------------------------------------------------------


def _expect_ndim(a: np.ndarray, ndim: int, what: str) -> None:
    if a.ndim != ndim:
        raise ValueError(f"expected a {ndim}-D {what}, got shape {tuple(a.shape)}")


def copy(a: np.ndarray) -> np.ndarray:
    """Same layout on both sides (LayerNorm scale/bias, dense biases, cls token, position table, MAP probe)."""
    return a


def conv_hwio_to_oihw(a: np.ndarray) -> np.ndarray:
    """Flax Conv kernel (P, P, C, D) -> torch Conv2d weight [D, C, P, P]."""
    _expect_ndim(a, 4, "conv kernel (P, P, C, D)")
    return a.transpose(3, 2, 0, 1)


def dense_kernel(a: np.ndarray) -> np.ndarray:
    """Flax Dense kernel (in, out) -> torch Linear weight [out, in]."""
    _expect_ndim(a, 2, "dense kernel (in, out)")
    return a.T


def heads_in_kernel(a: np.ndarray) -> np.ndarray:
    """DenseGeneral(features=(H, Dh)) kernel (D, H, Dh) -> Linear weight [H*Dh, D], rows ordered (h d)."""
    _expect_ndim(a, 3, "query/key/value kernel (D, H, Dh)")
    return a.reshape(a.shape[0], -1).T


def heads_out_kernel(a: np.ndarray) -> np.ndarray:
    """DenseGeneral(axis=(-2, -1)) kernel (H, Dh, D) -> Linear weight [D, H*Dh], columns ordered (h d)."""
    _expect_ndim(a, 3, "attention out kernel (H, Dh, D)")
    return a.reshape(-1, a.shape[-1]).T


def heads_bias(a: np.ndarray) -> np.ndarray:
    """query/key/value bias (H, Dh) -> [H*Dh], ordered (h d)."""
    _expect_ndim(a, 2, "query/key/value bias (H, Dh)")
    return a.reshape(-1)


# ----------------------------------------------------------------------------------------------------------------------
# Rules
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """`source` (canonical Flax name template) -> `target` (vit_hf state-dict key template).

    `part`/`parts`: this array is row block `part` of `parts` concatenated (in order) into `target`.
    """

    source: str
    target: str
    transform: Callable[[np.ndarray], np.ndarray] = copy
    part: int = 0
    parts: int = 1

    @property
    def source_regex(self) -> re.Pattern:
        return _template_regex(self.source, sep="/")

    @property
    def target_regex(self) -> re.Pattern:
        return _template_regex(self.target, sep=".")


def _template_regex(template: str, sep: str) -> re.Pattern:
    # `{i}` is the only placeholder: a block index. Everything else is literal.
    return re.compile("^" + re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)") + "$")


def _layer_norm(source: str, target: str) -> list[Rule]:
    return [Rule(f"{source}/scale", f"{target}.weight"), Rule(f"{source}/bias", f"{target}.bias")]


def _dense(source: str, target: str) -> list[Rule]:
    return [Rule(f"{source}/kernel", f"{target}.weight", dense_kernel), Rule(f"{source}/bias", f"{target}.bias")]


def _mlp(source: str, target: str) -> list[Rule]:
    return _dense(f"{source}/Dense_0", f"{target}.fc1") + _dense(f"{source}/Dense_1", f"{target}.fc2")


def _attention(source: str, target: str, fused: dict[str, tuple[str, int, int]]) -> list[Rule]:
    """Flax MultiHeadDotProductAttention: `fused` maps query/key/value to (target Linear, part, parts)."""
    rules = []
    for name, (linear, part, parts) in fused.items():
        rules.append(Rule(f"{source}/{name}/kernel", f"{target}.{linear}.weight", heads_in_kernel, part, parts))
        rules.append(Rule(f"{source}/{name}/bias", f"{target}.{linear}.bias", heads_bias, part, parts))
    rules.append(Rule(f"{source}/out/kernel", f"{target}.proj.weight", heads_out_kernel))
    rules.append(Rule(f"{source}/out/bias", f"{target}.proj.bias"))
    return rules


# Self-attention: q, k, v fused into `attn.qkv` rows [q; k; v]. MAP head: q alone, k and v fused into `kv` [k; v].
_SELF_ATTENTION = {"query": ("qkv", 0, 3), "key": ("qkv", 1, 3), "value": ("qkv", 2, 3)}
_POOL_ATTENTION = {"query": ("q", 0, 1), "key": ("kv", 0, 2), "value": ("kv", 1, 2)}


def _block_rules(attention: str, norm2: str, mlp: str) -> list[Rule]:
    src, dst = "Transformer/encoderblock_{i}", "vit.blocks.{i}"
    return (
        _layer_norm(f"{src}/LayerNorm_0", f"{dst}.norm1")
        + _attention(f"{src}/{attention}", f"{dst}.attn", _SELF_ATTENTION)
        + _layer_norm(f"{src}/{norm2}", f"{dst}.norm2")
        + _mlp(f"{src}/{mlp}", f"{dst}.mlp")
    )


# Position tables: three historical locations, all into `vit.pos_embed`; which one was found decides the cls-slot
# convention and the provenance note (convert/google.py post-processes the table).
POS_EMBED_SOURCES = {
    "Transformer/posembed_input/pos_embedding": "vision_transformer (vit_jax) AddPositionEmbs",
    "pos_embedding": "big_vision top-level pos_embedding",
    "Transformer/pos_embedding": "big_vision before 2022 (Transformer/pos_embedding)",
}

STEM_RULES: list[Rule] = [
    Rule("embedding/kernel", "vit.patch_embed.proj.weight", conv_hwio_to_oihw),
    Rule("embedding/bias", "vit.patch_embed.proj.bias"),
    Rule("cls", "vit.cls_token"),
    *(Rule(source, "vit.pos_embed") for source in POS_EMBED_SOURCES),
]

HEAD_RULES: list[Rule] = [
    *_layer_norm("Transformer/encoder_norm", "vit.norm"),
    *_dense("pre_logits", "vit.pre_logits.fc"),
    *_dense("head", "head"),
]

MAP_HEAD_RULES: list[Rule] = [
    Rule("MAPHead_0/probe", "vit.attn_pool.latent"),
    *_attention("MAPHead_0/MultiHeadDotProductAttention_0", "vit.attn_pool", _POOL_ATTENTION),
    *_layer_norm("MAPHead_0/LayerNorm_0", "vit.attn_pool.norm"),
    *_mlp("MAPHead_0/MlpBlock_0", "vit.attn_pool.mlp"),
]

# The two block naming schemes (pitfall P5), detected independently of the position-table location.
BLOCK_NAMING = {
    "pre-linen": dict(attention="MultiHeadDotProductAttention_1", norm2="LayerNorm_2", mlp="MlpBlock_3"),
    "linen": dict(attention="MultiHeadDotProductAttention_0", norm2="LayerNorm_1", mlp="MlpBlock_0"),
}


def rules_for(naming: str) -> list[Rule]:
    """The full table for one block naming scheme ('pre-linen' or 'linen')."""
    return STEM_RULES + _block_rules(**BLOCK_NAMING[naming]) + HEAD_RULES + MAP_HEAD_RULES


# Keys that identify features vit_hf cannot represent; matched on canonical names, reported by name.
UNSUPPORTED_FEATURES: dict[str, str] = {
    r"^conv_root/": "hybrid ResNet backbone (conv_root): R50/R26+ViT hybrids are not supported",
    r"^gn_root/": "hybrid ResNet backbone (gn_root): R50/R26+ViT hybrids are not supported",
    r"^block\d+/unit\d+/": "hybrid ResNet backbone stages (block*/unit*): hybrids are not supported",
    r"^txt/": "a text tower (two-tower LiT/SigLIP file): select the image tower with --prefix img/ or path.npz:img",
}


def source_for(target: str, rules: list[Rule]) -> list[str]:
    """The canonical npz name(s) that provide `target` under `rules` (for 'missing key' messages)."""
    found = []
    for rule in rules:
        m = rule.target_regex.match(target)
        if m:
            found.append(rule.source.format(**m.groupdict()))
    return found


__all__ = [
    "LEGACY_RENAMES",
    "UNSUPPORTED_KEYS",
    "KEY_RULES",
    "FUSIONS",
    "canonical_timm_keys",
    "to_timm_layout",
    "timm_to_hf_key",
    "Rule",
    "rules_for",
    "source_for",
    "BLOCK_NAMING",
    "POS_EMBED_SOURCES",
    "UNSUPPORTED_FEATURES",
    "copy",
    "conv_hwio_to_oihw",
    "dense_kernel",
    "heads_in_kernel",
    "heads_out_kernel",
    "heads_bias",
]
