"""Reading a Google `.npz` checkpoint: the file itself (`open_npz`: a lazy zip of .npy members, never unpickled),
the ViT parameters' prefix (`select_prefix`), their canonical, lazily read view (`FlaxTree`): the prefix stripped,
a scan-stacked encoder split per block, an old inlined MAP head moved under `MAPHead_0/`, bfloat16 widened exactly;
and the key table applied to it (`map_tree`, tables in convert/key_mapping.py).
A corrupt or truncated file is a `ConversionError` naming it, whenever the damage is found.
"""

from __future__ import annotations

import re
import zipfile
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch

from convert.common import ConversionError
from convert.key_mapping import UNSUPPORTED_FEATURES, Rule, source_for

# Checked in this order; a file matching several (e.g. a training state with both params/ and params/img/) must
# be disambiguated with --prefix.
PREFIX_CANDIDATES = ("", "params/", "params/img/", "img/", "opt/target/")
STACKED = "Transformer/encoderblock/"
# Old big_vision MAP heads were inlined at the top level (bv:vit.py fix_old_checkpoints (d)).
_INLINED_MAP = ("probe", "MultiHeadDotProductAttention_0/", "LayerNorm_0/", "MlpBlock_0/")
# What a damaged zip member raises while it is read and decompressed
_READ_ERRORS = (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError)

def read_member(params: Mapping[str, np.ndarray], key: str) -> np.ndarray:
    """One stored array; a member that fails to decompress or parse (a corrupt or truncated file) is a
    ConversionError naming it rather than a zipfile traceback."""
    try:
        return np.asarray(params[key])
    except _READ_ERRORS as e:
        raise ConversionError(
            f"the .npz member {key!r} cannot be read ({type(e).__name__}: {e}): the file is corrupt or truncated"
        ) from None


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
        stacked = {n: k for n, k in names.items() if n.startswith(STACKED)}
        self.scan_depth = 0
        if stacked:
            anchor = f"{STACKED}LayerNorm_0/scale"
            if anchor not in stacked:
                raise ConversionError(f"scan-stacked encoder without {prefix}{anchor}: cannot tell the depth")
            if any(n.startswith("Transformer/encoderblock_") for n in names):
                raise ConversionError("the file has both a scan-stacked Transformer/encoderblock/ and encoderblock_{i}")
            self.scan_depth = int(np.shape(read_member(params, stacked[anchor]))[0])
        for name, key in names.items():
            if name in stacked:
                rest = name[len(STACKED) :]
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
            raw = read_member(self.params, key)
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
                    f"{self.scan_depth} (from {STACKED}LayerNorm_0/scale)"
                )
            a = a[idx]
        return a.astype(dtype, copy=False)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.get(name).shape)

    def release(self) -> None:
        self._cache = (None, None)



_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip archive's first member / an empty archive


def open_npz(path: str) -> np.lib.npyio.NpzFile:
    """`np.load` of an .npz, lazily (members are read and decompressed one at a time), never unpickling anything.

    Anything but a zip archive of .npy members is a ConversionError saying what the file is not (and, for the
    formats users confuse it with, what it looks like instead).
    """
    if Path(path).is_dir():
        raise ConversionError(f"{path} is a folder: pass the .npz file itself")
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
    except _READ_ERRORS as e:
        raise ConversionError(
            f"{path}: not a readable .npz file, corrupt or truncated ({type(e).__name__}: {e})"
        ) from None
    if not isinstance(npz, Mapping):
        raise ConversionError(f"{path}: not an .npz parameter tree")
    return npz


# ----------------------------------------------------------------------------------------------------------------------
# The key table applied to the tree
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


def npz_names(provenance: dict[str, list[str]], rules: list[Rule], prefix: str) -> Callable[[str], str]:
    """Spell a vit_hf key as the npz key(s) it came from (or, for a missing one, could come from) in messages."""

    def name(key: str) -> str:
        if key in provenance:
            return f"{', '.join(provenance[key])} -> {key}"
        return " or ".join(prefix + s for s in source_for(key, rules)) or key

    return name
