"""What a Google npz holds, read off its keys and shapes (`infer_layout`), and what a conversion of one produced
(`Conversion`): shared by the converter (convert/google.py) and its verification (convert/google_verify.py), which
import this module and not each other."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from convert.common import ConversionError
from convert.google_tree import STACKED, FlaxTree
from convert.key_mapping import BLOCK_NAMING, POS_EMBED_SOURCES
from vit_hf import VitHfForImageClassification, VitHfImageProcessor

POOLS = ("tok", "gap", "map", "0")


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



@dataclass
class Conversion:
    """A converted npz: the model and processor, the notes (`info`), and the file tree and layout they came from."""

    model: VitHfForImageClassification
    processor: VitHfImageProcessor
    info: dict
    tree: FlaxTree
    layout: Layout
