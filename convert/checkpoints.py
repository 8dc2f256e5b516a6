"""Reading weights without executing code: `.safetensors`, `torch.save` files and training checkpoints (timm's
layout, EMA weights, wrapper prefixes), and JSON configs; anything unreadable is a `ConversionError` naming the file."""

from __future__ import annotations

import argparse
import json
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch

from convert.errors import ConversionError


def _load_safetensors(path: Path, mapped: bool = True) -> Mapping[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        if mapped:
            return load_file(str(path))
        try:  # safetensors >= 0.8 reads into private memory with pread(2)
            return load_file(str(path), backend="pread")
        except TypeError:  # older: its only backend maps the file
            return load_file(str(path))
    except SafetensorError as e:
        raise ConversionError(f"{path}: not a readable .safetensors file ({e})") from None


# What a training checkpoint may hold besides tensors and plain containers: timm's train.py (and DeiT's) store their
# `args` as an argparse.Namespace. torch.load's weights_only unpickler allows exactly this class more, as timm's own
# loader does (timm.models._helpers._torch_load); any other class is still refused, never executed.
SAFE_GLOBALS = [argparse.Namespace]
# Where training checkpoints keep the weights (timm's load_state_dict order): the model's, then its EMA's.
WEIGHTS_KEYS = ("state_dict", "model", "module")
EMA_KEYS = ("state_dict_ema", "model_ema")
# wrappers whose prefix a saved key may carry, in either order (DDP / DataParallel, torch.compile)
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def _unsafe_globals(path: Path) -> str:
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # an old torch, or a file it cannot list: the message does without
        return ""
    names = [n for n in names if n not in ("argparse.Namespace",)]
    return f" ({', '.join(names[:5])})" if names else ""


def _load_torch(path: Path, mapped: bool = True) -> object:
    """`torch.load(weights_only=True)` with `SAFE_GLOBALS` allowed, memory-mapped when asked and the file allows it
    (the zip format of torch >= 1.6)."""
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=mapped)
            except RuntimeError as e:
                if "mmap" not in str(e):
                    raise
                # the old (non-zip) format cannot be memory-mapped: read it whole, under the same weights_only rules
                return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).splitlines()[0]
        if "weights only load failed" not in first.lower():
            raise ConversionError(f"{path}: not a torch.save file ({first})") from None
        raise ConversionError(
            f"{path} is a pickle that needs code execution to load{_unsafe_globals(path)}, which is refused (only "
            f"tensors, plain containers and timm's argparse.Namespace are read). Where you trust the file, re-save "
            f"its weights alone (torch.save(model.state_dict(), 'weights.pth')) and convert that"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise ConversionError(f"{path}: cannot be read as a torch.save file ({type(e).__name__}: {e})") from None


def _strip_wrappers(state: Mapping[str, object]) -> dict:
    """Keys without DDP's `module.` or torch.compile's `_orig_mod.` prefixes (timm's clean_state_dict)."""
    out = {}
    for key, value in state.items():
        while key.startswith(WRAPPER_PREFIXES):
            key = key.split(".", 1)[1]
        out[key] = value
    return out


def _entry(checkpoint: Mapping, keys: tuple[str, ...]) -> str | None:
    return next((k for k in keys if isinstance(checkpoint.get(k), Mapping)), None)


def pick_weights(checkpoint: object, path: Path, use_ema: bool = False) -> tuple[Mapping, str | None]:
    """The weights of a loaded file and a note on which ones, as timm's validate.py takes them: the model's
    (`state_dict`, or `model` / `module`), or with `use_ema` (`--use-ema`) the EMA's (`state_dict_ema` / `model_ema`);
    a file that holds only EMA weights gives those; a plain state dict is taken as it is."""
    if not isinstance(checkpoint, Mapping):
        return checkpoint, None
    ema, plain = _entry(checkpoint, EMA_KEYS), _entry(checkpoint, WEIGHTS_KEYS)
    if use_ema:
        if ema is None:
            held = f"its weights are under `{plain}`" if plain else "it is a plain state dict"
            raise ConversionError(f"--use-ema: {path} holds no EMA weights ({' or '.join(EMA_KEYS)}; {held}): "
                                  f"drop --use-ema")
        return checkpoint[ema], f"weights: the EMA weights (`{ema}`) of {path.name}"
    if plain is not None:
        note = (f"weights: `{plain}` of {path.name}; it also holds EMA weights (`{ema}`): --use-ema converts those"
                if ema else None)
        return checkpoint[plain], note
    if ema is not None:
        return checkpoint[ema], f"weights: `{ema}`, the only weights in {path.name} (EMA)"
    return checkpoint, None


def load_checkpoint(path: str | Path, use_ema: bool = False, mapped: bool = True) -> tuple[dict[str, torch.Tensor],
                                                                                               str | None]:
    """(state dict, note) of a weights file: `.safetensors`, or a `torch.save` file read with `weights_only=True`
    (plus timm's argparse.Namespace): a plain state dict, or a training checkpoint as timm's `CheckpointSaver`
    writes it (`*.pth.tar`: `state_dict`, `state_dict_ema`, `args`, optimizer, ...; see `pick_weights`). DDP
    `module.` and torch.compile `_orig_mod.` key prefixes are removed. The note says which weights a checkpoint gave
    (None for a plain state dict)."""
    path = Path(path)
    if path.is_dir():
        raise ConversionError(
            f"{path} is a folder: pass the weights file in it, or convert the whole folder (a timm or transformers "
            f"model folder) with `python -m convert {path} OUT_DIR`"
        )
    if not path.is_file():
        raise ConversionError(f"{path}: no such file")
    loaded = _load_safetensors(path, mapped) if path.suffix == ".safetensors" else _load_torch(path, mapped)
    state, note = pick_weights(loaded, path, use_ema)
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConversionError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return _strip_wrappers(state), note


def read_privately(path: Path, keys: list[str]) -> dict[str, torch.Tensor]:
    """`keys` of a `.safetensors` file read into private memory with pread(2) (safetensors >= 0.8), never mapped:
    a tensor that is rebuilt (q/k/v fused into qkv) can then be freed, where its mapped pages, once read, would stay
    resident beside the rebuilt one. Older safetensors: {} (the caller keeps the mapped tensors)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", backend="pread") as f:
            return {k: f.get_tensor(k) for k in keys}
    except TypeError:  # no `backend` before safetensors 0.8
        return {}
    except SafetensorError as e:
        raise ConversionError(f"{path}: not a readable .safetensors file ({e})") from None


def load_torch_state_dict(path: str | Path, mapped: bool = True, use_ema: bool = False) -> dict[str, torch.Tensor]:
    """Read a state dict from `.safetensors` or a `torch.save` file, never executing pickled code (`load_checkpoint`
    without its note).

    `mapped=True` memory-maps the file: tensors adopted as they are are never copied into RAM. A converter that
    rebuilds most tensors (fusing q/k/v) passes False: the tensors are then read into private memory, which it
    frees as it goes, where mapped pages it has read would stay resident beside the rebuilt tensors (a second copy).
    Any file that cannot be read this way is a `ConversionError` naming the file.
    """
    return load_checkpoint(path, use_ema=use_ema, mapped=mapped)[0]


def read_json_object(path: str | Path, where: str | None = None) -> dict:
    """A JSON object from `path` (a config.json); anything else is a ConversionError naming `where` (default: path)."""
    where = where or str(path)
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise ConversionError(f"{where}: not a readable JSON config ({type(e).__name__}: {e})") from None
    if not isinstance(value, dict):
        raise ConversionError(f"{where}: not a JSON object")
    return value
