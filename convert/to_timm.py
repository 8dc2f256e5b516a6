"""vit_hf folder -> timm `VisionTransformer` state dict (+ its constructor kwargs as JSON).

    python -m convert.to_timm MODEL_DIR OUT.safetensors

Writes `OUT.safetensors` (timm's keys: the vit_hf keys without `vit.`, the head as `head.*`) and `OUT.json`, the
keyword arguments of `timm.models.vision_transformer.VisionTransformer` for that state dict:

    model = VisionTransformer(**json.load(open("OUT.json")))
    model.load_state_dict(safetensors.torch.load_file("OUT.safetensors"))

Tensors are written as stored (no cast, no copy of values), so timm -> vit_hf -> timm is bit-identical. Features
timm's VisionTransformer cannot represent (representation layer, sincos2d positions, token pooling without a class
token, a LayerNorm eps other than 1e-6 in JSON kwargs, ...) are refused by name, and nothing is written then.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch

from convert.common import ConversionError, check_state_dict, run_cli
from convert.timm import TimmArch
from vit_hf import VitHfConfig

# vit_hf key -> timm key: (pattern, replacement or None = refuse with the reason given). First match wins.
EXPORT_RULES: list[tuple[str, str | None, str]] = [
    (r"^vit\.pre_logits\.", None, "the representation layer (pre_logits), which timm >= 0.6 does not have"),
    (r"^vit\.(.+)$", r"\1", "trunk: timm's own key"),
    (r"^head\.(weight|bias)$", r"head.\1", "classification head"),
]


def export_key(key: str) -> str:
    """vit_hf key -> timm key by EXPORT_RULES; a key timm has no place for is a ConversionError naming it."""
    for pattern, replacement, what in EXPORT_RULES:
        if re.match(pattern, key):
            if replacement is None:
                raise ConversionError(f"key {key!r}: {what}")
            return re.sub(pattern, replacement, key)
    raise ConversionError(f"unknown key {key!r}: not a vit_hf parameter timm has a place for")


def load_folder_state(model_dir: Path) -> dict[str, torch.Tensor]:
    """All tensors of a saved vit_hf folder (`model.safetensors`, or the shards of `model.safetensors.index.json`)."""
    from safetensors.torch import load_file

    single, index = model_dir / "model.safetensors", model_dir / "model.safetensors.index.json"
    if single.is_file():
        return load_file(str(single))
    if index.is_file():
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            state.update(load_file(str(model_dir / shard)))
        return state
    raise ConversionError(f"{model_dir} has no model.safetensors (or index): not a saved vit_hf folder")


def export_to_timm(config: VitHfConfig, state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict]:
    """(timm state dict, VisionTransformer kwargs) of a vit_hf model; the tensors are the same objects."""
    arch = TimmArch.from_config(config)
    kwargs = arch.timm_kwargs(json_safe=True)
    out = {}
    for key, value in state.items():
        out[export_key(key)] = value
    try:
        from timm.models.vision_transformer import VisionTransformer
    except ImportError:  # the exported kwargs are still checked below against our own view of the architecture
        VisionTransformer = None
    if VisionTransformer is not None:
        with torch.device("meta"):
            expected = dict(VisionTransformer(**kwargs).state_dict())
    else:
        expected = arch.expected_state()
    try:
        check_state_dict(expected, out, source="export", target="timm model")
    except ConversionError as e:
        raise ConversionError(f"the exported state does not fit VisionTransformer(**{kwargs}): {e}") from None
    return out, kwargs


def _write_atomically(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m convert.to_timm", description=__doc__.split("\n\n")[0])
    p.add_argument("model_dir", help="a vit_hf folder (config.json + model.safetensors)")
    p.add_argument("out", help="output .safetensors path; the timm kwargs go to the same name with .json")
    args = p.parse_args(argv)
    model_dir, out = Path(args.model_dir), Path(args.out)
    if out.suffix != ".safetensors":
        raise ConversionError(f"{out}: the output must be a .safetensors file")
    if not (model_dir / "config.json").is_file():
        raise ConversionError(f"{model_dir}/config.json not found: not a saved vit_hf folder")
    config = VitHfConfig.from_pretrained(model_dir)
    state, kwargs = export_to_timm(config, load_folder_state(model_dir))

    from safetensors.torch import save_file

    out.parent.mkdir(parents=True, exist_ok=True)
    _write_atomically(
        out, lambda tmp: save_file({k: v.contiguous() for k, v in state.items()}, tmp, metadata={"format": "pt"})
    )
    _write_atomically(out.with_suffix(".json"), lambda tmp: Path(tmp).write_text(json.dumps(kwargs, indent=2) + "\n"))
    print(f"wrote {out} ({len(state)} tensors) and {out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    run_cli(main)
