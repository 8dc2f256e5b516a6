"""The model a run trains, built in one place for every task: a preset from scratch (with `--config_overrides`), or
a loaded folder / Hub id (resolution changed with `--image_size`); the image processor and its flags; and the
optimizer's parameter groups. What a task adds (a relabelled head, a decoder) it does on the returned model."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ..configuration_vit_hf import VitHfConfig
from .errors import UserError

FROM_SCRATCH_ONLY = ("patch_size", "num_channels")  # flags that describe a new model, not a loaded one


def is_preset(name: str) -> bool:
    """A size preset ('small', 'small/16', 'S/16', 'test') that is not also a local path."""
    if os.path.exists(name):
        return False
    try:
        VitHfConfig.parse_preset(name)
    except ValueError:
        return False
    return True


def model_path_problem(name: str) -> str | None:
    """Why `--model_name_or_path name` cannot be a model (one line naming the fix), or None: a training checkpoint
    folder (its model is in `hf_model/`), an output folder holding only checkpoints, a folder without config.json, or
    a local path that does not exist. Hub ids and presets pass (the Hub answers for ids)."""
    from .checkpoints import HF_MODEL_SUBDIR, TRAINER_STATE, list_checkpoints

    path = Path(name).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return None
        if (path / TRAINER_STATE).is_file():
            return (f"--model_name_or_path {name} is a training checkpoint: fine-tune its model with "
                    f"--model_name_or_path {path / HF_MODEL_SUBDIR}, or continue that run with "
                    f"--resume_from_checkpoint {name}")
        found = list_checkpoints(path)
        if found:
            return (f"--model_name_or_path {name} holds the checkpoints of an unfinished run ({found[-1][1].name} the "
                    f"latest): fine-tune its model with --model_name_or_path {found[-1][1] / HF_MODEL_SUBDIR}, or "
                    f"continue it with --output_dir {name} --resume_from_checkpoint latest")
        return (f"--model_name_or_path {name}: no config.json in this folder: give a folder written by "
                f"save_pretrained, python -m convert or vit_hf.train, a Hub id, or a size preset")
    if is_preset(name):
        return None
    local = name.startswith((".", "/", "~")) or name.count("/") > 1 or (os.sep in name and path.parent.is_dir()
                                                                       and path.parent != Path("."))
    if local or path.suffix in (".json", ".safetensors", ".bin", ".pth", ".pt"):
        return (f"--model_name_or_path {name}: no such folder (nor a size preset: test, tiny, small, base, large, "
                f"huge; nor a Hub id owner/name)")
    return None


def parse_overrides(text: str | None) -> dict[str, Any]:
    """`--config_overrides 'hidden_size=128,rope_type=mixed,pos_embed_type=none,rope_ref_grid=[4,4]'` as a dict: a
    value that parses as JSON is that (numbers, true/false/null, lists), any other a string (`pooling=token`,
    `pos_embed_type=none`: words that merely start like a JSON literal); commas inside brackets belong to the value.
    A key that is not a config field is refused: the config would store it and nothing would change."""
    out: dict[str, Any] = {}
    fields = _config_fields()
    for item in _top_level_items(text or ""):
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not key:
            raise UserError(f"--config_overrides item {item!r} is not key=value (e.g. hidden_size=128)")
        if key not in fields:
            raise UserError(f"--config_overrides {key}={value}: {key!r} is not a VitHfConfig field: check the spelling "
                            f"(e.g. hidden_size, mlp_layer, rope_type)")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _top_level_items(text: str) -> list[str]:
    """`text` split at the commas outside brackets, empty items dropped."""
    items, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += (char in "[{") - (char in "]}")
        if char == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return [item for item in items if item.strip()]


def _config_fields() -> set[str]:
    import inspect

    named = set(inspect.signature(VitHfConfig.__init__).parameters) - {"self", "kwargs"}
    internal = {"_name_or_path", "model_type", "transformers_version", "architectures"}
    return named | set(VitHfConfig().to_dict()) - internal


def preset_config(name: str, **fields) -> VitHfConfig:
    """`VitHfConfig.from_preset`, an invalid combination (e.g. `rope_type` with a head width not divisible by 4) a
    one-line user error."""
    try:
        return VitHfConfig.from_preset(name, **fields)
    except (ValueError, TypeError) as err:
        raise UserError(f"--model_name_or_path {name} (from scratch) with --config_overrides: {err}") from None


def _preset_fields(args: argparse.Namespace) -> dict[str, Any]:
    fields = parse_overrides(args.config_overrides)
    for key in ("image_size", *FROM_SCRATCH_ONLY, "drop_path_rate"):
        if getattr(args, key) is not None:
            fields[key] = getattr(args, key)
    return fields


def model_config(args: argparse.Namespace, **fields) -> VitHfConfig:
    """The config of the model this run trains, without building it (presets and `--image_size` applied)."""
    if is_preset(args.model_name_or_path):
        return preset_config(args.model_name_or_path, **{**_preset_fields(args), **fields})
    config = VitHfConfig.from_pretrained(args.model_name_or_path, token=args.hub_token)
    if args.image_size is not None:
        config.image_size = args.image_size
    return config


FIXED_SIZE_ONLY = ("image_size", "crop_pct")  # flags a NaFlex model has no use for (its images keep their shape)


def naflex_patches(args: argparse.Namespace) -> int | None:
    """`max_num_patches` of `--model_name_or_path`'s image processor: set for a NaFlex model (SigLIP2's variable
    aspect ratio), None for a fixed-size one, a preset, or a processor not readable here (loading says why later)."""
    from ..image_processing_vit_hf import VitHfImageProcessor

    if is_preset(args.model_name_or_path):
        return None
    try:
        processor = VitHfImageProcessor.from_pretrained(args.model_name_or_path, token=args.hub_token)
    except (OSError, ValueError):
        return None
    return getattr(processor, "max_num_patches", None) or None


def naflex_problem(args: argparse.Namespace, task) -> str | None:
    """Why a run cannot train its NaFlex model (one line: the fixed-size flags, then the task's `check_naflex`), or
    None (also for any fixed-size model)."""
    limit = naflex_patches(args)
    if limit is None:
        return None
    model = f"{args.model_name_or_path} is a NaFlex model (each image its own grid of at most {limit} patches)"
    fixed = [f"--{k}" for k in FIXED_SIZE_ONLY if getattr(args, k) is not None]
    if fixed:
        return f"{model}: {'/'.join(fixed)} set a fixed input size: drop {'/'.join(fixed)}"
    return task.check_naflex(args, model)


@dataclass
class Built:
    """What `build_model` made: the model, its processor, the Hub id it came from (None: a preset or a local folder),
    log lines, and the loading report of a loaded model (weights new and dropped)."""

    model: Any
    processor: Any
    base_model: str | None
    notes: list[str] = field(default_factory=list)
    missing: set[str] = field(default_factory=set)
    unexpected: set[str] = field(default_factory=set)


def build_model(args: argparse.Namespace, model_class, **fields) -> Built:
    """`model_class` from a preset (`fields` fill the config, e.g. the labels) or from `--model_name_or_path`."""
    from ..image_processing_vit_hf import VitHfImageProcessor

    name = args.model_name_or_path
    if is_preset(name):
        preset = _preset_fields(args)
        config = preset_config(name, **{**fields, **preset})
        model = model_class(config)
        built = Built(model, VitHfImageProcessor.from_model_config(config), None,
                      [f"from scratch: preset {name!r} with {preset or 'no overrides'}"])
    else:
        given = [f"--{k}" for k in FROM_SCRATCH_ONLY if getattr(args, k) is not None]
        if given or args.config_overrides:
            raise UserError(f"{'/'.join(given) or '--config_overrides'} apply to presets (training from scratch); "
                            f"{name} is loaded with its own config: drop the flag")
        kwargs = {"token": args.hub_token, "ignore_mismatched_sizes": args.ignore_mismatched_sizes}
        if args.drop_path_rate is not None:
            kwargs["drop_path_rate"] = args.drop_path_rate
        model, info = model_class.from_pretrained(name, output_loading_info=True, **kwargs)
        if getattr(model.config, "model_type", None) != "vit_hf":
            raise UserError(f"{name} is a {model.config.model_type!r} model; convert it first: python -m convert "
                            f"{name} OUT_DIR, then pass --model_name_or_path OUT_DIR")
        built = Built(model, None, None if os.path.isdir(name) else name, [], set(info["missing_keys"]),
                      set(info["unexpected_keys"]))
        try:
            built.processor = VitHfImageProcessor.from_pretrained(name, token=args.hub_token)
        except OSError:
            built.processor = VitHfImageProcessor.from_model_config(model.config)
            built.notes.append("no preprocessor_config.json: image processor built from the model config")
        if args.image_size is not None and tuple(model.config.image_hw) != (args.image_size, args.image_size):
            before = model.config.image_hw
            model.vit.resize_position_embeddings(args.image_size)
            built.processor.size = {"height": args.image_size, "width": args.image_size}
            built.notes.append(f"resolution {before} -> {args.image_size}: positions resampled")
    _apply_processor_flags(args, built.model, built.processor)
    return built


def _apply_processor_flags(args: argparse.Namespace, model, processor) -> None:
    """The attention backend and the processor flags (crop, flip), then the channel check."""
    if args.attn_implementation is not None:
        model.set_attn_implementation(args.attn_implementation)
    for key in ("crop_pct", "train_hflip"):
        if getattr(args, key) is not None:
            setattr(processor, key, getattr(args, key))
    if args.train_crop_scale is not None:
        processor.train_crop_scale = [float(v) for v in args.train_crop_scale]
    if processor.num_channels != model.config.num_channels:
        raise UserError(f"the image processor makes {processor.num_channels} channels, the model reads "
                        f"{model.config.num_channels}: fix preprocessor_config.json or pass --num_channels")


def parameter_groups(model, learning_rate: float, weight_decay: float, layer_decay: float | None) -> list[dict]:
    """AdamW groups. No decay for norm and LayerScale parameters (by module type), biases and other vectors (ndim <= 1),
    and the class/register tokens, positions, MAP probe, mask token and RoPE-Mixed's learned frequencies (by their
    role on the trunk, looked up by identity). With `layer_decay`, the embeddings are layer 0, block i is layer i + 1,
    and the norm/pooling/head (and a SimMIM decoder, and the frequencies of all blocks, as timm groups them) are layer
    L + 1, whose LR is `learning_rate`; layer j gets `learning_rate * layer_decay ** (L+1-j)`.
    """
    from ..layers_vit_hf import LayerScale

    trunk = model.vit
    no_decay: set[int] = set()
    for module in model.modules():
        if isinstance(module, (nn.LayerNorm, LayerScale)):
            no_decay.update(id(p) for p in module.parameters(recurse=False))
    # SimMIM does not decay its mask token either; nor RoPE-Mixed its learned frequencies (timm's and Naver's
    # no_weight_decay): decay would pull every rotation towards angle 0, i.e. towards no position signal
    for role in (trunk.cls_token, trunk.reg_token, trunk.pos_embed, getattr(trunk.attn_pool, "latent", None),
                 trunk.mask_token, getattr(trunk.rope, "freqs", None)):
        if role is not None:
            no_decay.add(id(role))
    depth = len(trunk.blocks)
    layer_of: dict[int, int] = {}
    for module in (trunk.patch_embed, trunk.norm_pre):
        layer_of.update((id(p), 0) for p in module.parameters())
    for role in (trunk.cls_token, trunk.reg_token, trunk.pos_embed, trunk.mask_token):
        if role is not None:
            layer_of[id(role)] = 0
    for i, block in enumerate(trunk.blocks):
        layer_of.update((id(p), i + 1) for p in block.parameters())
    groups: dict[tuple[int, bool], dict] = {}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        layer = layer_of.get(id(p), depth + 1) if layer_decay else depth + 1
        decay = not (id(p) in no_decay or p.ndim <= 1)
        scale = layer_decay ** (depth + 1 - layer) if layer_decay else 1.0
        group = groups.setdefault((layer, decay), {"params": [], "weight_decay": weight_decay if decay else 0.0,
                                                   "lr": learning_rate * scale, "lr_scale": scale})
        group["params"].append(p)
    return list(groups.values())
