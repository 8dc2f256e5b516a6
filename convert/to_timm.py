"""vit_hf folder -> timm `VisionTransformer` state dict (+ its constructor kwargs as JSON).

    python -m convert.to_timm MODEL_DIR OUT.safetensors

Writes `OUT.safetensors` (timm's keys: the vit_hf keys without `vit.`, the head as `head.*`) and `OUT.json`, the
keyword arguments of `timm.models.vision_transformer.VisionTransformer` for that state dict:

    model = VisionTransformer(**json.load(open("OUT.json")))
    model.load_state_dict(safetensors.torch.load_file("OUT.safetensors"))

Tensors are written as stored (no cast, no copy of values), so timm -> vit_hf -> timm is bit-identical. Features
timm's VisionTransformer cannot represent (representation layer, sincos2d positions, token pooling without a class
token, ...) are refused by name, and nothing is written then.

The newer families export too: a model with RoPE, EVA's query/value biases without a key bias, attention-only layer
scale, grouped-query attention or a MAP head of its own width becomes timm's `Eva` (timm/models/eva.py), with timm's
key layout (separate `q_proj/k_proj/v_proj` or `fc1_g/fc1_x` where Eva keeps them apart: views of the fused tensors,
`gamma_1/gamma_2`). When the constructor needs Python objects (a norm layer with its eps, an activation, a block
class), OUT.json is `{"class": ..., "kwargs": {...}, "objects": {name: [timm import path, {its kwargs}]}}` and
`build_timm_model(OUT.json)` (this module) builds the model:

    model = build_timm_model("OUT.json")
    model.load_state_dict(safetensors.torch.load_file("OUT.safetensors"))
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


def _describe(kwargs: dict, cls: str) -> dict:
    """JSON of constructor kwargs with Python objects (partial(LayerNorm, eps=...), classes): the plain kwargs when
    there are none (`VisionTransformer(**json)`, as before), else {"class", "kwargs", "objects"}."""
    from functools import partial

    import timm.layers

    named = {id(v): f"timm.layers.{k}" for k, v in vars(timm.layers).items() if not k.startswith("_")}
    plain, objects = {}, {}
    for name, value in kwargs.items():
        if id(value) in named:  # timm's own objects by their public name (SwiGLUPacked is a partial of GluMlp)
            objects[name] = [named[id(value)], {}]
        elif isinstance(value, partial):
            objects[name] = [_object_name(value.func), dict(value.keywords)]
        elif isinstance(value, type) or callable(value):
            objects[name] = [_object_name(value), {}]
        else:
            plain[name] = value
    if not objects and cls.endswith(".VisionTransformer"):
        return plain
    return {"class": cls, "kwargs": plain, "objects": objects}


def _object_name(obj) -> str:
    return f"{obj.__module__}.{obj.__name__}"


def _import(path: str):
    import importlib

    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def build_timm_model(json_path: str | Path) -> torch.nn.Module:
    """The timm model an OUT.json describes (plain VisionTransformer kwargs, or {"class", "kwargs", "objects"})."""
    from functools import partial

    spec = json.loads(Path(json_path).read_text())
    if "class" not in spec:
        from timm.models.vision_transformer import VisionTransformer

        return VisionTransformer(**spec)
    objects = {name: (partial(_import(path), **kw) if kw else _import(path))
               for name, (path, kw) in spec["objects"].items()}
    return _import(spec["class"])(**spec["kwargs"], **objects)


def export_to_timm(config: VitHfConfig, state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict]:
    """(timm state dict, the JSON description of its constructor) of a vit_hf model; the tensors are the same objects
    (or views of them, for projections timm keeps apart)."""
    from convert.key_mapping import to_timm_layout

    arch = TimmArch.from_config(config)
    kwargs = arch.timm_kwargs(json_safe=False)
    out = {}
    for key, value in state.items():
        out[export_key(key)] = value
    from timm.models.deit import VisionTransformerDistilled
    from timm.models.eva import Eva
    from timm.models.vision_transformer import VisionTransformer

    timm_class = Eva if arch.family == "eva" else VisionTransformerDistilled if arch.distilled else VisionTransformer
    with torch.device("meta"):
        expected = dict(timm_class(**kwargs).state_dict())
    out = to_timm_layout(out, set(expected))
    kwargs = _describe(kwargs, f"{timm_class.__module__}.{timm_class.__name__}")
    try:
        check_state_dict(expected, out, source="export", target="timm model")
    except ConversionError as e:
        raise ConversionError(f"the exported state does not fit {timm_class.__name__}(**{kwargs}): {e}") from None
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
