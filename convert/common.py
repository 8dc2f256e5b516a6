"""Pieces shared by the converters: safe loading, strict key/shape checks, the output folder, CLI error handling."""

from __future__ import annotations

import pickle
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from vit_hf import VitHfConfig, VitHfForImageClassification


class ConversionError(Exception):
    """A conversion that cannot be exact. The message names the key, shape, feature or flag involved."""


def load_torch_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from `.safetensors` or a `torch.save` file, never executing pickled code.

    `torch.save` files are read with `weights_only=True` (and memory-mapped, so the file is not copied into RAM);
    a dict wrapped under `model` / `state_dict` / `module` (training checkpoints) is unwrapped, as is a DDP
    `module.` key prefix.
    """
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except pickle.UnpicklingError as e:
            raise ConversionError(
                f"{path} is a pickle that needs code execution to load, which is refused (weights_only=True). "
                f"Re-save it as plain tensors (torch.save(model.state_dict(), ...)) or as .safetensors. Detail: "
                f"{str(e).splitlines()[0]}"
            ) from None
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise ConversionError(f"{path}: cannot be read as a torch.save file: {e}") from None
            state = torch.load(path, map_location="cpu", weights_only=True)  # old (non-zip) format cannot mmap
    for wrapper in ("model", "state_dict", "module", "model_ema"):
        if isinstance(state, Mapping) and wrapper in state and isinstance(state[wrapper], Mapping):
            state = state[wrapper]
            break
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConversionError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return dict(state)


def check_state_dict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str = "source") -> None:
    """Refuse unknown keys, missing keys and wrong shapes, naming each (no silent init, no silent drop)."""
    expected = model.state_dict()
    unknown = sorted(set(state) - set(expected))
    missing = sorted(set(expected) - set(state))
    wrong = [
        f"{k}: {source} {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(state) & set(expected))
        if tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if unknown:
        problems.append(f"unknown key(s) the model has no place for: {', '.join(unknown)}")
    if missing:
        problems.append(f"missing key(s) the model needs: {', '.join(missing)}")
    if wrong:
        problems.append(f"wrong shape(s): {'; '.join(wrong)}")
    if problems:
        raise ConversionError(" | ".join(problems))


def build_model(config: VitHfConfig, state: Mapping[str, torch.Tensor], dtype: torch.dtype | None = None):
    """Build the classification model on the meta device and adopt `state`'s tensors (no second copy in memory)."""
    with torch.device("meta"):
        model = VitHfForImageClassification(config)
    check_state_dict(model, state)
    tensors = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v) for k, v in state.items()}
    model.load_state_dict(tensors, strict=True, assign=True)
    return model.eval()


def fixed_batch(config: VitHfConfig, batch_size: int = 8, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    """The fixed verification batch: seeded normal pixels at the model's input size (deterministic everywhere)."""
    h, w = config.image_hw
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch_size, config.num_channels, h, w, generator=g).to(dtype)


def parity_markdown(rows: list[dict]) -> str:
    """Parity report table. Each row: reference, dtype, max_abs_diff, top1_agreement (fraction), outputs."""
    lines = ["| reference | dtype | compared | max abs diff | top-1 agreement |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        top1 = "n/a" if r.get("top1_agreement") is None else f"{100 * r['top1_agreement']:.1f}%"
        lines.append(f"| {r['reference']} | {r['dtype']} | {r.get('outputs', 'logits')} | "
                     f"{r['max_abs_diff']:.3e} | {top1} |")
    return "\n".join(lines)


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    """Run a converter's main(); a `ConversionError` exits with status 2 and its message on stderr (no traceback)."""
    try:
        code = main(argv)
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)
