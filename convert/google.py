"""Convert Google ViT `.npz` checkpoints (vision_transformer / vit_jax and big_vision) into vit_hf, exactly.

    python -m convert.google SRC.npz OUT_DIR [--prefix P] [--gelu {tanh,exact}] [--pool {tok,gap,map,0}]
                             [--image-size S|HxW] [--verify] [--push-to-hub REPO] [--hub-token T] [--private]

Everything is inferred from key names and shapes (reference/conversion-formats.md §2): the npz prefix
(`params/`, `params/img/`, `img/`, `opt/target/` or none; `SRC.npz:img` selects a two-tower file's image tower),
the block naming scheme (pre-Linen vit_jax or Linen/big_vision), a scan-stacked encoder, width / depth / heads /
MLP / patch from the kernels, the pooling (cls -> token, MAPHead_0 -> map, else gap; '0' only with `--pool 0`
because it cannot be told from the keys), the position table's location and cls slot (or sincos2d when there is
none), the representation layer (`pre_logits`) and the head. What cannot be converted exactly is refused with a
`ConversionError` that names the key or feature, and nothing is written.

The key tables and tensor transforms are in `convert/key_mapping.py`; this module canonicalises the file's names,
infers the configuration, assembles the state dict, handles the position table, and verifies.
"""

from __future__ import annotations

import argparse
import copy as copy_module
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from convert.common import (
    ConversionError,
    add_hub_arguments,
    build_model,
    check_paths,
    fixed_batch,
    image_size_arg,
    parity_markdown,
    parse_image_size,
    push_if_requested,
    run_cli,
    square_side,
    write_folder,
)
from convert.key_mapping import (
    BLOCK_NAMING,
    POS_EMBED_SOURCES,
    UNSUPPORTED_FEATURES,
    Rule,
    rules_for,
    source_for,
)
from vit_hf import VitHfConfig, VitHfForImageClassification, VitHfImageProcessor, resample_position_embedding

GELU_ACTIVATIONS = {"tanh": "gelu_pytorch_tanh", "exact": "gelu"}
POOLS = ("tok", "gap", "map", "0")
# Checked in this order; a file matching several (e.g. a training state with both params/ and params/img/) must
# be disambiguated with --prefix.
PREFIX_CANDIDATES = ("", "params/", "params/img/", "img/", "opt/target/")
_STACKED = "Transformer/encoderblock/"
# Old big_vision MAP heads were inlined at the top level (bv:vit.py fix_old_checkpoints (d)).
_INLINED_MAP = ("probe", "MultiHeadDotProductAttention_0/", "LayerNorm_0/", "MlpBlock_0/")


# ----------------------------------------------------------------------------------------------------------------------
# Reading: prefix, dtype, canonical names
# ----------------------------------------------------------------------------------------------------------------------


def decode_array(a: np.ndarray, key: str) -> np.ndarray:
    """float32 view of a stored array; big_vision's bfloat16 (numpy void 'V2', bv utils.recover_dtype) is widened
    exactly by moving its 16 bits into the high half of a float32."""
    if a.dtype.kind == "V" and a.dtype.itemsize == 2:
        return (np.ascontiguousarray(a).view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    if a.dtype.kind != "f":
        raise ConversionError(f"{key}: dtype {a.dtype} is not a float (or bfloat16 stored as V2) parameter")
    return a.astype(np.float32, copy=False)


def select_prefix(keys: list[str], prefix: str | None, subtree: str | None = None) -> str:
    """The key prefix of the ViT parameters: `prefix` if given, else the one candidate holding `embedding/kernel`."""
    if prefix is not None:
        prefix = prefix if prefix == "" or prefix.endswith("/") else prefix + "/"
        if f"{prefix}embedding/kernel" not in keys:
            raise ConversionError(f"--prefix {prefix!r}: the file has no {prefix}embedding/kernel")
        return prefix
    if subtree:
        candidates = [f"{p}{subtree.strip('/')}/" for p in ("", "params/", "opt/target/")]
    else:
        candidates = list(PREFIX_CANDIDATES)
    found = [p for p in candidates if f"{p}embedding/kernel" in keys]
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise ConversionError(f"several ViT parameter sets in one file (prefixes {found}): pick one with --prefix")
    sample = ", ".join(sorted(keys)[:8])
    raise ConversionError(
        f"unknown layout: no embedding/kernel under any of the prefixes {candidates} (first keys: {sample}); "
        f"pass --prefix if the parameters live elsewhere"
    )


class FlaxTree:
    """Canonical, lazily read view of the ViT parameters of an npz mapping.

    Canonical names have the prefix stripped, the scan-stacked encoder split into `encoderblock_{i}` and an
    inlined MAP head moved under `MAPHead_0/`. Arrays are read on demand (an `np.load`ed npz reads a member
    only when indexed), decoded to float32, and at most one raw array is cached (so a stacked array is read once
    while its L slices are taken): peak memory stays near one copy of the parameters plus one tensor.
    """

    def __init__(self, params: Mapping[str, np.ndarray], prefix: str):
        self.params = params
        self.prefix = prefix
        keys = list(params.keys())
        self.ignored = sorted(k for k in keys if not k.startswith(prefix))
        names = {k[len(prefix) :]: k for k in keys if k.startswith(prefix)}
        self.bf16 = False
        self._cache: tuple[str | None, np.ndarray | None] = (None, None)
        for name, key in names.items():
            for pattern, feature in UNSUPPORTED_FEATURES.items():
                if re.search(pattern, name):
                    raise ConversionError(f"unsupported feature: {feature} (key {key})")
        self.notes: list[str] = []
        if "probe" in names:
            names = {(f"MAPHead_0/{n}" if n.startswith(_INLINED_MAP) else n): k for n, k in names.items()}
            self.notes.append("inlined MAP head (old big_vision) read as MAPHead_0/")
        self.entries: dict[str, tuple[str, int | None]] = {}
        stacked = {n: k for n, k in names.items() if n.startswith(_STACKED)}
        self.scan_depth = 0
        if stacked:
            anchor = f"{_STACKED}LayerNorm_0/scale"
            if anchor not in stacked:
                raise ConversionError(f"scan-stacked encoder without {prefix}{anchor}: cannot tell the depth")
            if any(n.startswith("Transformer/encoderblock_") for n in names):
                raise ConversionError("the file has both a scan-stacked Transformer/encoderblock/ and encoderblock_{i}")
            self.scan_depth = int(np.shape(params[stacked[anchor]])[0])
        for name, key in names.items():
            if name in stacked:
                rest = name[len(_STACKED) :]
                for i in range(self.scan_depth):
                    self.entries[f"Transformer/encoderblock_{i}/{rest}"] = (key, i)
            else:
                self.entries[name] = (key, None)

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def names(self) -> list[str]:
        # Ordered by stored key, so each stacked array is read once for all its slices.
        return sorted(self.entries, key=lambda n: (self.entries[n][0], self.entries[n][1] or 0))

    def key_of(self, name: str) -> str:
        key, idx = self.entries[name]
        return key if idx is None else f"{key}[{idx}]"

    def _raw(self, key: str) -> np.ndarray:
        if self._cache[0] != key:
            self._cache = (None, None)  # drop the previous array before reading the next
            raw = np.asarray(self.params[key])
            self.bf16 |= raw.dtype.kind == "V"
            self._cache = (key, decode_array(raw, key))
        return self._cache[1]

    def get(self, name: str, dtype=np.float32) -> np.ndarray:
        """The float32 (or `dtype`) array of canonical `name`; `KeyError` if absent."""
        key, idx = self.entries[name]
        a = self._raw(key)
        if idx is not None:
            if a.ndim == 0 or a.shape[0] != self.scan_depth:
                raise ConversionError(
                    f"{key}: scan-stacked array has leading axis {a.shape[:1]} but the encoder depth is "
                    f"{self.scan_depth} (from {_STACKED}LayerNorm_0/scale)"
                )
            a = a[idx]
        return a.astype(dtype, copy=False)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.get(name).shape)

    def release(self) -> None:
        self._cache = (None, None)


# ----------------------------------------------------------------------------------------------------------------------
# Layout inference
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class Layout:
    """Everything inferred from the file (plus the user's overrides)."""

    naming: str
    depth: int
    width: int
    patch: tuple[int, int]
    channels: int
    heads: int
    mlp: int
    pool: str
    pos_source: str | None
    num_labels: int
    representation_size: int | None
    notes: list[str] = field(default_factory=list)

    @property
    def block_names(self) -> dict[str, str]:
        return BLOCK_NAMING[self.naming]


def _need(tree: FlaxTree, name: str) -> tuple[int, ...]:
    if name not in tree:
        raise ConversionError(f"missing key {tree.prefix}{name}")
    return tree.shape(name)


def infer_layout(tree: FlaxTree, pool: str | None) -> Layout:
    """Naming scheme, sizes, pooling, position source, head and representation layer, from keys and shapes."""
    block_re = re.compile(r"^Transformer/encoderblock_(\d+)/")
    blocks = sorted({int(m.group(1)) for n in tree.names() if (m := block_re.match(n))})
    if not blocks:
        raise ConversionError(
            f"unknown layout: no {tree.prefix}Transformer/encoderblock_{{i}}/ or {tree.prefix}{_STACKED} keys"
        )
    if blocks != list(range(len(blocks))):
        raise ConversionError(f"encoder blocks are not numbered 0..{len(blocks) - 1}: found {blocks}")
    mha = {m.group(1) for n in tree.names() if (m := re.match(r"^Transformer/encoderblock_\d+/(\w+)/", n))}
    schemes = [s for s, names in BLOCK_NAMING.items() if names["attention"] in mha]
    if len(schemes) != 1:
        raise ConversionError(
            f"unknown layout: encoder block sub-modules {sorted(mha)} match neither the pre-Linen "
            f"(MultiHeadDotProductAttention_1/LayerNorm_2/MlpBlock_3) nor the Linen "
            f"(MultiHeadDotProductAttention_0/LayerNorm_1/MlpBlock_0) naming"
        )
    naming = schemes[0]
    names = BLOCK_NAMING[naming]

    kernel = _need(tree, "embedding/kernel")
    if len(kernel) != 4:
        raise ConversionError(f"{tree.prefix}embedding/kernel: expected (P, P, C, D), got {kernel}")
    ph, pw, channels, width = kernel
    query = f"Transformer/encoderblock_0/{names['attention']}/query/kernel"
    q = _need(tree, query)
    if len(q) != 3 or q[0] != width or q[1] * q[2] != width:
        raise ConversionError(f"wrong shape: {tree.key_of(query)}: expected (D={width}, H, D/H), got {q}")
    fc1 = _need(tree, f"Transformer/encoderblock_0/{names['mlp']}/Dense_0/kernel")
    if len(fc1) != 2 or fc1[0] != width:
        raise ConversionError(f"{names['mlp']}/Dense_0/kernel: expected (D={width}, M), got {fc1}")

    has_cls, has_map = "cls" in tree, any(n.startswith("MAPHead_0/") for n in tree.names())
    if pool is None:
        if has_cls and has_map:
            raise ConversionError("unsupported feature: both a cls token and a MAPHead_0 (MAP pooling over a cls)")
        pool = "tok" if has_cls else "map" if has_map else "gap"
    else:
        if pool not in POOLS:
            raise ConversionError(f"--pool {pool!r}: choose one of {POOLS}")
        if (pool == "tok") != has_cls:
            raise ConversionError(
                f"--pool {pool}: the file {'has' if has_cls else 'has no'} cls token ({tree.prefix}cls); "
                f"'tok' needs one and the other poolings have none"
            )
        if (pool == "map") != has_map:
            raise ConversionError(
                f"--pool {pool}: the file {'has' if has_map else 'has no'} MAPHead_0; 'map' needs it, others do not"
            )

    sources = [s for s in POS_EMBED_SOURCES if s in tree]
    if len(sources) > 1:
        raise ConversionError(f"several position tables: {[tree.prefix + s for s in sources]}")
    notes = list(tree.notes)
    if not sources and naming == "pre-linen":
        # sincos2d is a big_vision feature; a pre-Linen (vit_jax) file always stores AddPositionEmbs.
        raise ConversionError(f"missing key {tree.prefix}Transformer/posembed_input/pos_embedding")

    head = tree.shape("head/kernel") if "head/kernel" in tree else None
    if head is None and "head/bias" in tree:
        raise ConversionError(f"missing key {tree.prefix}head/kernel (head/bias is present)")
    rep = tree.shape("pre_logits/kernel") if "pre_logits/kernel" in tree else None
    if rep is not None and len(rep) != 2:
        raise ConversionError(f"{tree.prefix}pre_logits/kernel: expected (D, Rep), got {rep}")
    if head is not None and len(head) != 2:
        raise ConversionError(f"{tree.prefix}head/kernel: expected (D or Rep, K), got {head}")
    return Layout(
        naming=naming,
        depth=len(blocks),
        width=int(width),
        patch=(int(ph), int(pw)),
        channels=int(channels),
        heads=int(q[1]),
        mlp=int(fc1[1]),
        pool=pool,
        pos_source=sources[0] if sources else None,
        num_labels=int(head[1]) if head is not None else 0,
        representation_size=int(rep[1]) if rep is not None else None,
        notes=notes,
    )


# ----------------------------------------------------------------------------------------------------------------------
# State dict assembly
# ----------------------------------------------------------------------------------------------------------------------


def _match(name: str, rules: list[Rule]) -> tuple[Rule, str] | None:
    for rule in rules:
        m = rule.source_regex.match(name)
        if m:
            return rule, rule.target.format(**m.groupdict())
    return None


def map_tree(tree: FlaxTree, rules: list[Rule]) -> tuple[dict[str, torch.Tensor], dict[str, list[str]]]:
    """Apply the key table to every canonical name; unknown names are an error (nothing is dropped silently).

    Returns the float32 state dict and, per target key, the npz keys it came from (for error messages).
    """
    parts: dict[str, dict[int, np.ndarray]] = {}
    counts: dict[str, int] = {}
    groups: dict[str, dict] = {}  # target -> the template groups ({i}) that named it, to name missing parts
    provenance: dict[str, list[str]] = {}
    unknown = []
    for name in tree.names():
        hit = _match(name, rules)
        if hit is None:
            unknown.append(tree.key_of(name))
            continue
        rule, target = hit
        groups[target] = rule.source_regex.match(name).groupdict()
        try:
            array = rule.transform(tree.get(name))
        except ValueError as e:
            raise ConversionError(f"wrong shape: {tree.key_of(name)}: {e}") from None
        slots = parts.setdefault(target, {})
        if rule.part in slots:
            raise ConversionError(f"{provenance[target]} and {tree.key_of(name)} both map to {target}")
        slots[rule.part] = np.ascontiguousarray(array)
        counts[target] = rule.parts
        provenance.setdefault(target, []).append(tree.key_of(name))
    tree.release()
    if unknown:
        raise ConversionError(f"unknown key(s) with no place in the model: {', '.join(unknown)}")
    state: dict[str, torch.Tensor] = {}
    for target in list(parts):
        slots = parts.pop(target)
        if len(slots) != counts[target]:
            absent = [
                tree.prefix + r.source.format(**groups[target])
                for r in rules
                if r.target_regex.match(target) and r.parts == counts[target] and r.part not in slots
            ]
            raise ConversionError(
                f"missing key(s): {', '.join(absent)} (fused into {target} with {provenance[target]})"
            )
        arrays = [slots[i] for i in range(counts[target])]
        if len({a.shape for a in arrays}) != 1:
            shapes = {k: tuple(a.shape) for k, a in zip(provenance[target], arrays)}
            raise ConversionError(f"wrong shape: the arrays fused into {target} differ: {shapes}")
        state[target] = torch.from_numpy(arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0))
    return state, provenance


# ----------------------------------------------------------------------------------------------------------------------
# Conversion
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class Conversion:
    model: VitHfForImageClassification
    processor: VitHfImageProcessor
    info: dict
    tree: FlaxTree
    layout: Layout


def _convert(
    params: Mapping[str, np.ndarray],
    *,
    prefix: str | None = None,
    subtree: str | None = None,
    gelu: str = "tanh",
    pool: str | None = None,
    image_size: int | tuple[int, int] | str | None = None,
) -> Conversion:
    if gelu not in GELU_ACTIVATIONS:
        raise ConversionError(f"--gelu {gelu!r}: choose 'tanh' (JAX nn.gelu, exact for these weights) or 'exact'")
    prefix = select_prefix(list(params.keys()), prefix, subtree)
    tree = FlaxTree(params, prefix)
    layout = infer_layout(tree, pool)
    rules = rules_for(layout.naming)
    state, provenance = map_tree(tree, rules)

    # Position table: its row count tells whether it has a cls slot (s^2 + 1 rows, the vit_jax convention and
    # old big_vision files) or covers the patches only (s^2 rows, big_vision). A slotted table is kept as it is
    # (concat, then add: no_embed_class=False), which is exact for both origins.
    notes = list(layout.notes)
    cls_slot, grid, resampled_from = False, None, None
    pos = state.get("vit.pos_embed")
    if pos is not None:
        key = provenance["vit.pos_embed"][0]
        if pos.ndim != 3 or pos.shape[0] != 1 or pos.shape[2] != layout.width:
            raise ConversionError(f"wrong shape: {key} is {tuple(pos.shape)}, expected (1, tokens, {layout.width})")
        rows = pos.shape[1]
        side = square_side(rows)
        if side is None and square_side(rows - 1) is not None:
            if layout.pool != "tok":
                raise ConversionError(
                    f"{key} has {rows} = {square_side(rows - 1)}^2 + 1 rows (a class-token slot) but the file has "
                    f"no cls token"
                )
            side, cls_slot = square_side(rows - 1), True
        if side is None:
            raise ConversionError(
                f"{key} has {rows} rows: neither a square grid nor a square grid plus a class-token slot"
            )
        grid = (side, side)
        native = (side * layout.patch[0], side * layout.patch[1])
        notes.append(f"position table from `{key}` ({POS_EMBED_SOURCES[layout.pos_source]}), {side}x{side} grid"
                     + (", with a class-token slot" if cls_slot else ", patches only"))
    else:
        native = (224, 224)
        notes.append(
            "no position table in the file: big_vision `posemb='sincos2d'` (fixed 2-D sin-cos positions, "
            "generated by the model, never stored)"
            + ("" if image_size else "; the image size is not stored either, 224 was assumed (--image-size)")
        )

    if image_size is not None:
        new_hw = parse_image_size(image_size)
        if new_hw[0] % layout.patch[0] or new_hw[1] % layout.patch[1]:
            raise ConversionError(
                f"--image-size {new_hw[0]}x{new_hw[1]} is not a multiple of the patch size "
                f"{layout.patch[0]}x{layout.patch[1]}"
            )
        if pos is not None and new_hw != native:
            new_grid = (new_hw[0] // layout.patch[0], new_hw[1] // layout.patch[1])
            # Google's algorithm (scipy.ndimage.zoom order=1 == corner-aligned bilinear), run in float64.
            state["vit.pos_embed"] = resample_position_embedding(
                pos.double(), grid, new_grid, int(cls_slot), algorithm="google"
            ).float()
            resampled_from = grid
            notes.append(
                f"positions resampled {grid[0]}x{grid[1]} -> {new_grid[0]}x{new_grid[1]} with Google's algorithm "
                f"(scipy.ndimage.zoom order=1, i.e. bilinear with aligned corners; vit_jax interpolate_posembed)"
            )
        native = new_hw

    cfg_pool = {"tok": "token", "gap": "mean", "map": "map", "0": "token"}[layout.pool]
    try:
        config = VitHfConfig(
            hidden_size=layout.width,
            num_hidden_layers=layout.depth,
            num_attention_heads=layout.heads,
            intermediate_size=layout.mlp,
            hidden_act=GELU_ACTIVATIONS[gelu],
            layer_norm_eps=1e-6,
            image_size=native[0] if native[0] == native[1] else list(native),
            patch_size=layout.patch[0] if layout.patch[0] == layout.patch[1] else list(layout.patch),
            num_channels=layout.channels,
            class_token=layout.pool == "tok",
            no_embed_class=layout.pool == "tok" and not cls_slot,
            pos_embed_type="learned" if pos is not None else "sincos2d",
            pos_embed_interpolation="google",
            pooling=cfg_pool,
            fc_norm=False,  # Google normalises all tokens, then pools (pitfall P3)
            representation_size=layout.representation_size,
            num_labels=layout.num_labels,
        )
    except ValueError as e:
        raise ConversionError(f"unsupported configuration: {e}") from None

    model = build_model(config, state, name=_npz_names(provenance, rules, tree.prefix))
    processor = VitHfImageProcessor(
        size={"height": native[0], "width": native[1]},
        crop_pct=1.0,
        resample="bilinear",
        image_mean=[0.5] * layout.channels,
        image_std=[0.5] * layout.channels,
        num_channels=layout.channels,
    )
    if layout.representation_size:
        notes.append(
            f"representation layer `pre_logits` ({layout.width} -> {layout.representation_size}) applied as "
            f"tanh(Linear), as in vit_jax and current big_vision (old big_vision rep_size models were trained "
            f"without the tanh; the file cannot tell)"
        )
    if layout.pool == "gap" and pool is None:
        notes.append("no cls token and no MAP head: global average pooling ('gap') assumed; a big_vision "
                     "pool_type='0' model (first token) has the same keys and needs --pool 0")
    if tree.bf16:
        notes.append("stored as bfloat16 (numpy void V2); widened exactly to float32")
    if tree.scan_depth:
        notes.append(f"scan-stacked encoder ({_STACKED}..., {tree.scan_depth} layers) split per block")
    if tree.ignored:
        notes.append(f"{len(tree.ignored)} key(s) outside `{tree.prefix}` ignored (other towers / optimizer state)")
    layout_name = {
        "Transformer/posembed_input/pos_embedding": "vision_transformer (vit_jax)",
        "pos_embedding": "big_vision",
        "Transformer/pos_embedding": "big_vision (pre-2022 layout)",
        None: "big_vision (sincos2d)",
    }[layout.pos_source]
    info = dict(
        layout=layout_name,
        naming=layout.naming,
        prefix=tree.prefix,
        pool=layout.pool,
        gelu=gelu,
        hidden_act=config.hidden_act,
        pos_embed_type=config.pos_embed_type,
        pos_source=layout.pos_source,
        cls_slot=cls_slot,
        grid=grid,
        resampled_from=resampled_from,
        image_size=native,
        scan=bool(tree.scan_depth),
        bf16=tree.bf16,
        ignored_keys=tree.ignored,
        notes=notes,
    )
    return Conversion(model, processor, info, tree, layout)


def _npz_names(provenance: dict[str, list[str]], rules: list[Rule], prefix: str) -> Callable[[str], str]:
    """Spell a vit_hf key as the npz key(s) it came from (or, for a missing one, could come from) in messages."""

    def name(key: str) -> str:
        if key in provenance:
            return f"{', '.join(provenance[key])} -> {key}"
        return " or ".join(prefix + s for s in source_for(key, rules)) or key

    return name


def convert_npz(
    params: Mapping[str, np.ndarray],
    *,
    prefix: str | None = None,
    gelu: str = "tanh",
    pool: str | None = None,
    image_size: int | tuple[int, int] | str | None = None,
    subtree: str | None = None,
) -> tuple[VitHfForImageClassification, VitHfImageProcessor, dict]:
    """Convert a Google npz parameter mapping (`np.load(path)` or a dict) into (model, processor, info).

    Args:
        prefix: key prefix of the ViT parameters (`params/`, `img/`, ...); auto-detected when None.
        gelu: `"tanh"` (JAX `nn.gelu`, what the weights were trained with) or `"exact"` (erf, timm's choice).
        pool: `"tok"`, `"gap"`, `"map"` or `"0"`; inferred when None (`"0"` must be asked for).
        image_size: input size, `S`, `(H, W)` or `"HxW"`; the position table is resampled with Google's algorithm
            (per axis) if it differs.
        subtree: a two-tower sub-tree such as `"img"` (the `path.npz:img` convention).
    """
    conv = _convert(params, prefix=prefix, subtree=subtree, gelu=gelu, pool=pool, image_size=image_size)
    return conv.model, conv.processor, conv.info


# ----------------------------------------------------------------------------------------------------------------------
# Verification
# ----------------------------------------------------------------------------------------------------------------------


def _clone(
    model: VitHfForImageClassification, dtype: torch.dtype, hidden_act: str | None = None
) -> VitHfForImageClassification:
    config = copy_module.deepcopy(model.config)
    if hidden_act is not None:
        config.hidden_act = hidden_act
    return build_model(config, {k: v.detach().to(dtype).clone() for k, v in model.state_dict().items()})


def timm_unsupported_reason(conv: Conversion, path: str | None) -> str | None:
    """Why timm's npz loader cannot reproduce this file exactly (None: it can)."""
    info, layout = conv.info, conv.layout
    if path is None:
        return "no file path (in-memory parameters)"
    if info["bf16"]:
        return "bfloat16 storage (timm needs jax for it)"
    if info["pos_embed_type"] != "learned":
        return "sincos2d positions (timm's loader requires a stored table)"
    if layout.representation_size:
        return "representation layer pre_logits (dropped by timm >= 0.6)"
    if layout.pool == "0":
        return "pool '0' (timm has no first-token pooling without a cls token)"
    if info["resampled_from"] is not None:
        return "resampled positions (timm resamples with a different algorithm)"
    if any("inlined MAP head" in n for n in layout.notes):
        return "inlined MAP head (old big_vision layout)"
    prefix = info["prefix"]
    stored = set(conv.tree.params.keys())
    # timm's rule (vision_transformer._load_weights): big_vision naming iff params/ prefix, a top-level
    # pos_embedding or a stacked encoder; then it reads the position table from that one location.
    timm_big_vision = (
        prefix.startswith("params/") or f"{prefix}pos_embedding" in stored or info["scan"]
    )
    if timm_big_vision != (layout.naming == "linen"):
        timm_reads = "big_vision" if timm_big_vision else "vit_jax"
        return f"{layout.naming} block names with a layout timm reads as {timm_reads}"
    expected_pos = "pos_embedding" if timm_big_vision else "Transformer/posembed_input/pos_embedding"
    if info["pos_source"] != expected_pos:
        return f"position table at {info['pos_source']} (timm reads {expected_pos})"
    if timm_big_vision and info["cls_slot"]:
        return "a big_vision position table with a class-token slot"
    return None


def _timm_model(conv: Conversion, path: str) -> torch.nn.Module | None:
    """timm's VisionTransformer for the converted config, weights from timm's own npz loader (`_load_weights`)."""
    from timm.models.vision_transformer import VisionTransformer

    from convert.timm import TimmArch

    kwargs = TimmArch.from_config(conv.model.config).timm_kwargs(json_safe=False)
    kwargs.pop("act_layer", None)  # timm builds Google's ViTs with exact GELU (the caller compares a GELU-exact copy)
    model = VisionTransformer(**kwargs)
    if model.blocks[0].mlp.fc1.out_features != conv.layout.mlp:  # mlp_ratio float truncation (pitfall P16)
        return None
    model.load_pretrained(path, prefix=conv.info["prefix"])
    return model.eval()


def layout_mlp_ratio(conv: Conversion) -> float:
    return conv.layout.mlp / conv.layout.width


def _row(reference: str, dtype: str, ours: torch.Tensor, ref: torch.Tensor, outputs: str) -> dict:
    ours, ref = ours.double(), ref.double()
    top1 = (ours.argmax(-1) == ref.argmax(-1)).double().mean().item() if outputs == "logits" else None
    return dict(
        reference=reference,
        dtype=dtype,
        max_abs_diff=(ours - ref).abs().max().item(),
        top1_agreement=top1,
        scale=ref.abs().max().item(),
        outputs=outputs,
    )


def _zoom_table(table: np.ndarray, old: tuple[int, int], new: tuple[int, int], slot: bool) -> np.ndarray:
    """vit_jax `interpolate_posembed`: scipy.ndimage.zoom(order=1) on the grid, the cls slot kept apart."""
    from scipy import ndimage

    head, grid = table[:, : int(slot)], table[0, int(slot) :].reshape(old[0], old[1], -1)
    grid = ndimage.zoom(grid, (new[0] / old[0], new[1] / old[1], 1), order=1)
    return np.concatenate([head, grid.reshape(1, new[0] * new[1], -1)], axis=1)


def verify(conv: Conversion, path: str | None) -> tuple[list[dict], bool]:
    """Compare the converted model with timm's npz loader (where it applies) and the numpy Flax forward pass.

    timm uses exact GELU, so it is compared with a copy of the model using `hidden_act="gelu"`; the numpy pass
    uses the converted model's own GELU. Returns the parity rows and whether every check passed.
    """
    from convert.flax_numpy import FlaxSpec, flax_forward

    model = conv.model
    pixels = fixed_batch(model.config)
    outputs = "logits" if model.config.num_labels > 0 else "features"
    rows = []
    with torch.no_grad():
        reason = timm_unsupported_reason(conv, path)
        if reason is None:
            try:
                timm_model = _timm_model(conv, path)
            except ImportError:
                timm_model, reason = None, "timm is not installed"
            if timm_model is None and reason is None:
                reason = f"mlp_ratio {layout_mlp_ratio(conv)} does not give timm an MLP of width {conv.layout.mlp}"
            if timm_model is not None:
                exact32 = _clone(model, torch.float32, "gelu")
                rows.append(_row("timm 1.x `_load_weights` (GELU exact)", "float32", exact32(pixels).logits,
                                 timm_model(pixels), outputs))
                del exact32
                exact64 = _clone(model, torch.float64, "gelu")
                timm_model = timm_model.double()
                rows.append(_row("timm 1.x `_load_weights` (GELU exact)", "float64", exact64(pixels.double()).logits,
                                 timm_model(pixels.double()), outputs))
                del exact64, timm_model

        layout, info = conv.layout, conv.info
        pos = None
        if info["pos_embed_type"] == "learned":
            pos = conv.tree.get(layout.pos_source, np.float64)
            if info["resampled_from"] is not None:
                new_grid = (model.config.grid_size[0], model.config.grid_size[1])
                # Google's resampling in float64, rounded to the float32 the converted model stores: a different
                # algorithm shows up at the 1e-2 level, while the float64 comparison stays at rounding noise.
                pos = _zoom_table(pos, info["resampled_from"], new_grid, info["cls_slot"])
                pos = pos.astype(np.float32).astype(np.float64)
        spec = FlaxSpec(**layout.block_names, depth=layout.depth, pool=layout.pool, pos_embed=pos,
                        pos_has_cls_slot=info["cls_slot"], gelu=info["gelu"])
        reference = torch.from_numpy(
            flax_forward(lambda n: conv.tree.get(n, np.float64), spec, pixels.double().numpy())
        )
        conv.tree.release()
        label = f"numpy Flax forward (float64, GELU {info['gelu']})"
        rows.append(_row(label, "float32", model(pixels).logits, reference, outputs))
        model64 = _clone(model, torch.float64)
        rows.append(_row(label, "float64", model64(pixels.double()).logits, reference, outputs))
        del model64
    ok = True
    for r in rows:
        if r["dtype"] == "float64":
            r["passed"] = r["max_abs_diff"] <= 1e-7 * (1 + r["scale"]) and r["top1_agreement"] in (None, 1.0)
        else:  # float32 only has to be free of gross errors; its rounding grows with depth and width
            r["passed"] = r["max_abs_diff"] <= 1e-2 * (1 + r["scale"])
        ok &= r["passed"]
    for r in rows:
        r["timm_skipped"] = reason
    return rows, ok


# ----------------------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------------------


def split_source(src: str) -> tuple[str, str | None]:
    """`path.npz:img` -> (`path.npz`, `img`); a path that exists as given is never split."""
    if Path(src).exists() or ":" not in src:
        return src, None
    path, _, subtree = src.rpartition(":")
    return path, subtree or None


def source_markdown(src: str, info: dict, processor: VitHfImageProcessor) -> str:
    lines = [
        f"Converted from the Google checkpoint `{Path(src).name}` with `python -m convert.google` "
        f"(layout: {info['layout']}, {info['naming']} block names, prefix `{info['prefix'] or '(none)'}`, "
        f"pooling `{info['pool']}`).",
        "",
        f"- GELU: `{info['hidden_act']}`"
        + (" (JAX `nn.gelu` is the tanh approximation; the weights were trained with it)" if info["gelu"] == "tanh"
           else " (exact erf, as timm; the JAX original used the tanh approximation)"),
        "- LayerNorm eps 1e-6 (Flax default); the final norm is applied to all tokens before pooling (fc_norm=False).",
        f"- Preprocessing: resize straight to {processor.size['height']}x{processor.size['width']} (bilinear, "
        f"crop_pct=1.0, as vit_jax's evaluation), inputs scaled to [-1, 1] (mean = std = 0.5).",
        "- Position resampling at run time uses Google's algorithm (`pos_embed_interpolation='google'`).",
    ]
    lines += [f"- {n[0].upper()}{n[1:]}." for n in info["notes"]]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m convert.google", description=__doc__.split("\n\n")[0])
    p.add_argument("src", help="Google .npz file (vit_jax or big_vision); `path.npz:img` selects a sub-tree")
    p.add_argument("out_dir", help="output folder (hub files written only on success; other files left alone)")
    p.add_argument("--prefix", default=None, help="key prefix of the ViT parameters (default: auto-detect)")
    p.add_argument("--gelu", choices=sorted(GELU_ACTIVATIONS), default="tanh",
                   help="tanh = JAX nn.gelu (default, exact for these weights); exact = erf (timm)")
    p.add_argument("--pool", choices=POOLS, default=None,
                   help="pooling; inferred from the keys (cls -> tok, MAPHead_0 -> map, else gap); '0' = first token")
    p.add_argument("--image-size", type=image_size_arg, default=None,
                   help="input size, S or HxW; positions are resampled with Google's zoom(order=1) if it differs")
    p.add_argument("--verify", action="store_true", help="check logits against timm / a numpy Flax forward pass")
    add_hub_arguments(p)
    return p.parse_args(argv)


_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip archive's first member / an empty archive


def open_npz(path: str) -> np.lib.npyio.NpzFile:
    """`np.load` of an .npz, lazily (members are read and decompressed one at a time), never unpickling anything.

    Anything but a zip archive of .npy members is a ConversionError saying what the file is not (and, for the
    formats users confuse it with, what it looks like instead).
    """
    if not Path(path).is_file():
        raise ConversionError(f"{path}: no such file")
    with open(path, "rb") as f:
        head = f.read(16)
    if not head.startswith(_ZIP_MAGIC):
        looks = ""
        if head.startswith(b"\x93NUMPY"):
            looks = " (it is a single .npy array)"
        elif len(head) >= 9 and head[8:9] == b"{":
            looks = " (it looks like a .safetensors file: timm state dicts convert with `python -m convert.timm`)"
        elif not head:
            looks = " (it is empty)"
        raise ConversionError(f"{path}: not an .npz file{looks}; an .npz is a zip archive of .npy arrays")
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise ConversionError(f"{path}: not a readable .npz file ({e})") from None
    if not isinstance(npz, Mapping):
        raise ConversionError(f"{path}: not an .npz parameter tree")
    return npz


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    path, subtree = split_source(args.src)
    check_paths(path, args.out_dir)
    npz = open_npz(path)
    with npz:
        conv = _convert(npz, prefix=args.prefix, subtree=subtree, gelu=args.gelu, pool=args.pool,
                        image_size=args.image_size)
        parity = None
        if args.verify:
            rows, ok = verify(conv, path)
            table = parity_markdown(rows)
            print(table)
            if rows and rows[0].get("timm_skipped"):
                print(f"timm not used as a reference: {rows[0]['timm_skipped']}")
            if not ok:
                print("error: verification failed; nothing written")
                return 1
            parity = table
    name = Path(args.out_dir).resolve().name
    card = dict(source=source_markdown(path, conv.info, conv.processor), parity=parity, model_name=name,
                repo_id=args.push_to_hub or f"<owner>/{name}", tags=["google", "jax-conversion"])
    out = write_folder(conv.model, conv.processor, args.out_dir, card)
    print(f"wrote {out}")
    push_if_requested(out, args, f"Convert {Path(path).name} from a Google checkpoint")
    return 0


if __name__ == "__main__":
    run_cli(main)
