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
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from convert.common import (
    ConversionError,
    build_model,
    check_paths,
    converter_parser,
    image_size_arg,
    parity_markdown,
    parse_image_size,
    preprocessing_flags,
    push_if_requested,
    run_cli,
    square_side,
    write_folder,
)
from convert.google_tree import STACKED, FlaxTree, map_tree, npz_names, open_npz, select_prefix
from convert.google_verify import verify
from convert.key_mapping import BLOCK_NAMING, POS_EMBED_SOURCES, rules_for
from convert.preprocessing import describe, processor_from_flags
from convert.timm_arch import TimmArch
from vit_hf import VitHfForImageClassification, VitHfImageProcessor, resample_position_embedding

# --gelu -> timm activation name (TimmArch.act): JAX `nn.gelu` is the tanh approximation
GELU_ACTIVATIONS = {"tanh": "gelu_tanh", "exact": "gelu"}
POOLS = ("tok", "gap", "map", "0")
# Google pool_type -> timm global_pool ('0', the first token without a class token, is vit_hf pooling 'token')
POOL_TO_TIMM = {"tok": "token", "gap": "avg", "map": "map", "0": "token"}


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


def _pooling(tree: FlaxTree, pool: str | None) -> str:
    """The pool type: `--pool` checked against the keys, else cls -> tok, MAPHead_0 -> map, else gap."""
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
    return pool


def infer_layout(tree: FlaxTree, pool: str | None) -> Layout:
    """Naming scheme, sizes, pooling, position source, head and representation layer, from keys and shapes."""
    block_re = re.compile(r"^Transformer/encoderblock_(\d+)/")
    blocks = sorted({int(m.group(1)) for n in tree.names() if (m := block_re.match(n))})
    if not blocks:
        raise ConversionError(
            f"unknown layout: no {tree.prefix}Transformer/encoderblock_{{i}}/ or {tree.prefix}{STACKED} keys"
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

    pool = _pooling(tree, pool)

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
# Conversion
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class Conversion:
    model: VitHfForImageClassification
    processor: VitHfImageProcessor
    info: dict
    tree: FlaxTree
    layout: Layout


def _position_table(state: dict, provenance: dict, layout: Layout, notes: list[str]):
    """(cls_slot, grid, native size) of the stored position table, or (False, None, None) for sincos2d.

    Its row count tells whether it has a cls slot (s^2 + 1 rows, the vit_jax convention and old big_vision files) or
    covers the patches only (s^2 rows, big_vision). A slotted table is kept as it is (concat, then add:
    no_embed_class=False), which is exact for both origins."""
    pos = state.get("vit.pos_embed")
    if pos is None:
        return False, None, None
    key = provenance["vit.pos_embed"][0]
    if pos.ndim != 3 or pos.shape[0] != 1 or pos.shape[2] != layout.width:
        raise ConversionError(f"wrong shape: {key} is {tuple(pos.shape)}, expected (1, tokens, {layout.width})")
    rows = pos.shape[1]
    side, cls_slot = square_side(rows), False
    if side is None and square_side(rows - 1) is not None:
        if layout.pool != "tok":
            raise ConversionError(
                f"{key} has {rows} = {square_side(rows - 1)}^2 + 1 rows (a class-token slot) but the file has no cls "
                f"token"
            )
        side, cls_slot = square_side(rows - 1), True
    if side is None:
        raise ConversionError(f"{key} has {rows} rows: neither a square grid nor a square grid plus a class-token slot")
    notes.append(f"position table from `{key}` ({POS_EMBED_SOURCES[layout.pos_source]}), {side}x{side} grid"
                 + (", with a class-token slot" if cls_slot else ", patches only"))
    return cls_slot, (side, side), (side * layout.patch[0], side * layout.patch[1])


def _resize(state: dict, layout: Layout, grid, cls_slot: bool, native, image_size, notes: list[str]):
    """(output size, grid the table was resampled from or None): `--image-size`, positions zoomed Google's way."""
    if native is None:
        notes.append(
            "no position table in the file: big_vision `posemb='sincos2d'` (fixed 2-D sin-cos positions, "
            "generated by the model, never stored)"
            + ("" if image_size else "; the image size is not stored either, 224 was assumed (--image-size)")
        )
    if image_size is None:
        return native or (224, 224), None
    new_hw = parse_image_size(image_size)
    if new_hw[0] % layout.patch[0] or new_hw[1] % layout.patch[1]:
        raise ConversionError(
            f"--image-size {new_hw[0]}x{new_hw[1]} is not a multiple of the patch size "
            f"{layout.patch[0]}x{layout.patch[1]}"
        )
    if native is None or new_hw == native:
        return new_hw, None
    new_grid = (new_hw[0] // layout.patch[0], new_hw[1] // layout.patch[1])
    # Google's algorithm (scipy.ndimage.zoom order=1 == corner-aligned bilinear), run in float64.
    state["vit.pos_embed"] = resample_position_embedding(
        state["vit.pos_embed"].double(), grid, new_grid, int(cls_slot), algorithm="google"
    ).float()
    notes.append(
        f"positions resampled {grid[0]}x{grid[1]} -> {new_grid[0]}x{new_grid[1]} with Google's algorithm "
        f"(scipy.ndimage.zoom order=1, i.e. bilinear with aligned corners; vit_jax interpolate_posembed)"
    )
    return new_hw, grid


def google_arch(layout: Layout, size: tuple[int, int], gelu: str, cls_slot: bool, learned: bool) -> TimmArch:
    """The architecture of a Google ViT in timm's vocabulary (the config mapping lives in TimmArch.to_config)."""
    return TimmArch(
        embed_dim=layout.width,
        depth=layout.depth,
        num_heads=layout.heads,
        mlp_hidden=layout.mlp,
        img_size=size,
        patch_size=layout.patch,
        in_chans=layout.channels,
        num_classes=layout.num_labels,
        global_pool=POOL_TO_TIMM[layout.pool],
        class_token=layout.pool == "tok",
        no_embed_class=layout.pool == "tok" and not cls_slot,
        pos_embed="learn" if learned else "sincos2d",
        act=GELU_ACTIVATIONS[gelu],
        eps=1e-6,  # Flax LayerNorm's default
        fc_norm=False,  # Google normalises all tokens, then pools (pitfall P3)
        representation_size=layout.representation_size,
    )


def _layout_notes(tree: FlaxTree, layout: Layout, pool: str | None) -> list[str]:
    notes = []
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
        notes.append(f"scan-stacked encoder ({STACKED}..., {tree.scan_depth} layers) split per block")
    if tree.ignored:
        notes.append(f"{len(tree.ignored)} key(s) outside `{tree.prefix}` ignored (other towers / optimizer state)")
    return notes


def google_processor(config, flags: dict | None) -> tuple[VitHfImageProcessor, str, str | None]:
    """(processor, note, assumed): vit_jax's evaluation preprocessing (resize to the model size, bilinear, inputs
    scaled to [-1, 1]), which the file does not state, with the flags over it; `assumed` is the note when a flag was
    left to that assumption (None when all four were given)."""
    c = config.num_channels
    base = VitHfImageProcessor.from_model_config(config, crop_pct=1.0, resample="bilinear", image_mean=[0.5] * c,
                                                 image_std=[0.5] * c)
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    if flags:
        processor, note = processor_from_flags(config, **flags, base=base)
    else:
        processor, note = base, f"preprocessing: {describe(base)}"
    missing = [f"--{k.replace('_', '-')}" for k in ("crop_pct", "interpolation", "mean", "std") if k not in flags]
    assumed = None
    if missing:
        assumed = (f"{note}; the npz does not say how its images were preprocessed: assumed vit_jax's evaluation for "
                   f"{', '.join(missing)} (pass them if the weights were trained otherwise)")
    return processor, note, assumed


_LAYOUT_NAMES = {
    "Transformer/posembed_input/pos_embedding": "vision_transformer (vit_jax)",
    "pos_embedding": "big_vision",
    "Transformer/pos_embedding": "big_vision (pre-2022 layout)",
    None: "big_vision (sincos2d)",
}


def _convert(
    params: Mapping[str, np.ndarray],
    *,
    prefix: str | None = None,
    subtree: str | None = None,
    gelu: str = "tanh",
    pool: str | None = None,
    image_size: int | tuple[int, int] | str | None = None,
    preprocessing: dict | None = None,
) -> Conversion:
    if gelu not in GELU_ACTIVATIONS:
        raise ConversionError(f"--gelu {gelu!r}: choose 'tanh' (JAX nn.gelu, exact for these weights) or 'exact'")
    prefix = select_prefix(list(params.keys()), prefix, subtree)
    tree = FlaxTree(params, prefix)
    layout = infer_layout(tree, pool)
    rules = rules_for(layout.naming)
    state, provenance = map_tree(tree, rules)
    notes = list(layout.notes)
    cls_slot, grid, native = _position_table(state, provenance, layout, notes)
    size, resampled_from = _resize(state, layout, grid, cls_slot, native, image_size, notes)
    config = google_arch(layout, size, gelu, cls_slot, learned=grid is not None).to_config(
        pos_embed_interpolation="google")
    model = build_model(config, state, name=npz_names(provenance, rules, tree.prefix))
    processor, processor_text, assumed = google_processor(config, preprocessing)
    notes += _layout_notes(tree, layout, pool)
    info = dict(
        layout=_LAYOUT_NAMES[layout.pos_source], naming=layout.naming, prefix=tree.prefix, pool=layout.pool,
        gelu=gelu, hidden_act=config.hidden_act, pos_embed_type=config.pos_embed_type, pos_source=layout.pos_source,
        cls_slot=cls_slot, grid=grid, resampled_from=resampled_from, image_size=size, scan=bool(tree.scan_depth),
        bf16=tree.bf16, ignored_keys=tree.ignored, notes=notes, processor=processor_text, assumed=assumed,
    )
    return Conversion(model, processor, info, tree, layout)


def convert_npz(
    params: Mapping[str, np.ndarray],
    *,
    prefix: str | None = None,
    gelu: str = "tanh",
    pool: str | None = None,
    image_size: int | tuple[int, int] | str | None = None,
    subtree: str | None = None,
    preprocessing: dict | None = None,
) -> tuple[VitHfForImageClassification, VitHfImageProcessor, dict]:
    """Convert a Google npz parameter mapping (`np.load(path)` or a dict) into (model, processor, info).

    Args:
        prefix: key prefix of the ViT parameters (`params/`, `img/`, ...); auto-detected when None.
        gelu: `"tanh"` (JAX `nn.gelu`, what the weights were trained with) or `"exact"` (erf, timm's choice).
        pool: `"tok"`, `"gap"`, `"map"` or `"0"`; inferred when None (`"0"` must be asked for).
        image_size: input size, `S`, `(H, W)` or `"HxW"`; the position table is resampled with Google's algorithm
            (per axis) if it differs.
        subtree: a two-tower sub-tree such as `"img"` (the `path.npz:img` convention).
        preprocessing: `crop_pct` / `interpolation` / `mean` / `std` overriding vit_jax's evaluation defaults.
    """
    conv = _convert(params, prefix=prefix, subtree=subtree, gelu=gelu, pool=pool, image_size=image_size,
                    preprocessing=preprocessing)
    return conv.model, conv.processor, conv.info


# ----------------------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------------------


def split_source(src: str) -> tuple[str, str | None]:
    """`path.npz:img` -> (`path.npz`, `img`); a path that exists as given is never split."""
    if Path(src).exists() or ":" not in src:
        return src, None
    path, _, subtree = src.rpartition(":")
    return path, subtree or None


def source_markdown(origin: str, info: dict) -> str:
    """The card's "Source and conversion" section; `origin` names what was converted."""
    lines = [
        f"{origin} (layout: {info['layout']}, {info['naming']} block names, prefix `{info['prefix'] or '(none)'}`, "
        f"pooling `{info['pool']}`).",
        "",
        f"- GELU: `{info['hidden_act']}`"
        + (" (JAX `nn.gelu` is the tanh approximation; the weights were trained with it)" if info["gelu"] == "tanh"
           else " (exact erf, as timm; the JAX original used the tanh approximation)"),
        "- LayerNorm eps 1e-6 (Flax default); the final norm is applied to all tokens before pooling (fc_norm=False).",
        f"- Preprocessing: {info['processor']}.",
        "- Position resampling at run time uses Google's algorithm (`pos_embed_interpolation='google'`).",
    ]
    lines += [f"- {n[0].upper()}{n[1:]}." for n in info["notes"]]
    return "\n".join(lines)


def add_google_arguments(p: argparse.ArgumentParser, image_size: bool = True) -> None:
    """The flags of a Google npz (the front door shares them)."""
    p.add_argument("--prefix", default=None, help="key prefix of the ViT parameters (default: auto-detect)")
    p.add_argument("--gelu", choices=sorted(GELU_ACTIVATIONS), default="tanh",
                   help="tanh = JAX nn.gelu (default, exact for these weights); exact = erf (timm)")
    p.add_argument("--pool", choices=POOLS, default=None,
                   help="pooling; inferred from the keys (cls -> tok, MAPHead_0 -> map, else gap); '0' = first token")
    if image_size:
        p.add_argument("--image-size", type=image_size_arg, default=None,
                       help="input size, S or HxW; positions are resampled with Google's zoom(order=1) if it differs")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return converter_parser(
        "python -m convert.google", __doc__,
        "Google .npz file (vit_jax or big_vision); `path.npz:img` selects a sub-tree",
        "check logits against timm / a numpy Flax forward pass", add_google_arguments,
    ).parse_args(argv)


def run(args: argparse.Namespace, src: str, card_extra: dict | None = None) -> int:
    """Convert the npz `src` (`path.npz[:subtree]`) with the CLI's flags, write OUT_DIR, push if asked."""
    path, subtree = split_source(src)
    check_paths(path, args.out_dir)
    flags = preprocessing_flags(args)
    with open_npz(path) as npz:
        conv = _convert(npz, prefix=args.prefix, subtree=subtree, gelu=args.gelu, pool=args.pool,
                        image_size=args.image_size, preprocessing=flags)
        parity = None
        if args.verify:
            rows, ok = verify(conv, path)
            parity = parity_markdown(rows)
            print(parity)
            if rows and rows[0].get("timm_skipped"):
                print(f"timm not used as a reference: {rows[0]['timm_skipped']}")
            if not ok:
                print("error: verification failed; nothing written")
                return 1
    if conv.info["assumed"]:
        print(conv.info["assumed"])
    name = Path(args.out_dir).resolve().name
    origin = f"Converted from the Google checkpoint `{Path(path).name}` with `python -m convert.google`"
    card = dict(source=source_markdown(origin, conv.info), parity=parity, model_name=name,
                repo_id=args.push_to_hub or f"<owner>/{name}", tags=["google", "jax-conversion"], **(card_extra or {}))
    out = write_folder(conv.model, conv.processor, args.out_dir, card)
    print(f"wrote {out}")
    push_if_requested(out, args, f"Convert {Path(path).name} from a Google checkpoint")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run(args, args.src)


if __name__ == "__main__":
    run_cli(main)
