"""The model a run trains: a preset from scratch, or a loaded checkpoint whose head is kept, permuted or replaced to
match the data set's labels; and the optimizer's parameter groups."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

import torch
from torch import nn


def is_preset(name: str) -> bool:
    """A size preset ('small', 'small/16', 'S/16', 'test') that is not also a local path."""
    from ..configuration_vit_hf import _PRESET_ALIASES, PRESETS

    if os.path.exists(name):
        return False
    size, _, patch = name.strip().lower().partition("/")
    return _PRESET_ALIASES.get(size, size) in PRESETS and (not patch or patch.isdigit())


def _parse_overrides(text: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in filter(None, (text or "").split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--config_overrides item {item!r} is not key=value")
        out[key.strip()] = json.loads(value) if value.strip()[:1] in "-0123456789[{tfn" else value.strip()
    return out


def _new_head(model, num_labels: int, init: str) -> nn.Linear:
    # "trunc_normal" (default) is timm's and transformers' init of a fresh head: logits start near zero, so a
    # pretrained trunk gets small gradients, yet not zero ones. "zeros" is big_vision's transfer recipe; with it the
    # trunk gets no gradient at all until the head has moved, which measured 34 % against 95 % on a small model
    # trained from random weights (issue 16): keep it for pretrained trunks only.
    head = nn.Linear(model.config.pooled_size, num_labels)
    if init == "zeros":
        nn.init.zeros_(head.weight)
    else:
        nn.init.trunc_normal_(head.weight, std=model.config.initializer_range)
    nn.init.zeros_(head.bias)
    return head


def _relabelled_head(model, name: str, old: list[str], labels: list[str], init: str) -> tuple[nn.Linear, bool]:
    """The head for the data set's labels: the checkpoint's rows permuted when it has the same classes in another
    order (True), else a new head (False)."""
    head, current = _new_head(model, len(labels), init), getattr(model, name)
    if sorted(old) != sorted(labels) or not isinstance(current, nn.Linear):
        return head, False
    order = torch.tensor([old.index(n) for n in labels])
    with torch.no_grad():
        head.weight.copy_(current.weight[order])
        head.bias.copy_(current.bias[order])
    return head, True


def build_model_and_processor(args: argparse.Namespace, labels: list[str]):
    """Return (model, processor, base_model id or None, notes). From scratch for a preset; otherwise loaded, with the
    head reused (same labels), permuted (same labels, other order) or replaced (other labels)."""
    from ..configuration_vit_hf import VitHfConfig
    from ..image_processing_vit_hf import VitHfImageProcessor
    from ..modeling_vit_hf import VitHfForImageClassification
    from .mim import dropped_weights_note

    id2label, label2id = dict(enumerate(labels)), {n: i for i, n in enumerate(labels)}
    notes: list[str] = []
    name = args.model_name_or_path
    if is_preset(name):
        overrides = _parse_overrides(args.config_overrides)
        for key in ("image_size", "patch_size", "num_channels", "drop_path_rate"):
            if getattr(args, key) is not None:
                overrides[key] = getattr(args, key)
        config = VitHfConfig.from_preset(
            name, num_labels=len(labels), id2label=id2label, label2id=label2id, **overrides
        )
        model = VitHfForImageClassification(config)
        processor = VitHfImageProcessor.from_model_config(config)
        notes.append(f"from scratch: preset {name!r} with {overrides or 'no overrides'}")
        base_model = None
    else:
        if args.patch_size is not None or args.num_channels is not None or args.config_overrides:
            raise ValueError("--patch_size/--num_channels/--config_overrides apply to presets (training from scratch)")
        kwargs = {"ignore_mismatched_sizes": args.ignore_mismatched_sizes, "token": args.hub_token}
        if args.drop_path_rate is not None:
            kwargs["drop_path_rate"] = args.drop_path_rate
        model, info = VitHfForImageClassification.from_pretrained(name, output_loading_info=True, **kwargs)
        notes += filter(None, [dropped_weights_note(name, info["unexpected_keys"])])  # e.g. a MIM decoder
        if getattr(model.config, "model_type", None) != "vit_hf":
            raise ValueError(
                f"{name} is a {model.config.model_type!r} model; convert it first: python -m convert {name} OUT_DIR"
            )
        try:
            processor = VitHfImageProcessor.from_pretrained(name, token=args.hub_token)
        except OSError:
            processor = VitHfImageProcessor.from_model_config(model.config)
            notes.append("no preprocessor_config.json: image processor built from the model config")
        old = [model.config.id2label[i] for i in range(model.config.num_labels)] if model.config.num_labels else []
        if old == labels:
            notes.append("head kept: the checkpoint's labels are the data set's")
        else:
            model.head, kept = _relabelled_head(model, "head", old, labels, args.head_init)
            if getattr(model, "head_dist", None) is not None:  # DeiT distilled: the second head follows the first
                model.head_dist, _ = _relabelled_head(model, "head_dist", old, labels, args.head_init)
            notes.append("head kept with its rows permuted to the data set's label order" if kept else
                         f"new head: {len(old)} checkpoint labels -> {len(labels)} data set labels "
                         f"({args.head_init} init)")
            model.config.num_labels = len(labels)
        model.config.id2label, model.config.label2id = id2label, label2id
        base_model = None if os.path.isdir(name) else name
        if args.image_size is not None and tuple(model.config.image_hw) != (args.image_size, args.image_size):
            before = model.config.image_hw
            model.vit.resize_position_embeddings(args.image_size)
            processor.size = {"height": args.image_size, "width": args.image_size}
            notes.append(f"resolution {before} -> {args.image_size}: positions resampled")
    apply_processor_flags(args, model, processor)
    return model, processor, base_model, notes


def apply_processor_flags(args: argparse.Namespace, model, processor) -> None:
    """The attention backend and the processor flags (crop, flip), then the channel check; for every task."""
    if args.attn_implementation is not None:
        model.set_attn_implementation(args.attn_implementation)
    for key in ("crop_pct", "train_hflip"):
        if getattr(args, key) is not None:
            setattr(processor, key, getattr(args, key))
    if args.train_crop_scale is not None:
        processor.train_crop_scale = [float(v) for v in args.train_crop_scale]
    if processor.num_channels != model.config.num_channels:
        raise ValueError(
            f"processor makes {processor.num_channels} channels, the model reads {model.config.num_channels}"
        )


def parameter_groups(model, learning_rate: float, weight_decay: float, layer_decay: float | None) -> list[dict]:
    """AdamW groups. No decay for norm and LayerScale parameters (by module type), biases and other vectors (ndim <= 1),
    and the class/register tokens, positions and MAP probe (by their role on the trunk, looked up by identity). With
    `layer_decay`, the embeddings are layer 0, block i is layer i + 1, and the norm/pooling/head are layer L + 1,
    whose LR is `learning_rate`; layer j gets `learning_rate * layer_decay ** (L + 1 - j)`."""
    from ..layers_vit_hf import LayerScale

    trunk = model.vit
    no_decay: set[int] = set()
    for module in model.modules():
        if isinstance(module, (nn.LayerNorm, LayerScale)):
            no_decay.update(id(p) for p in module.parameters(recurse=False))
    for role in (trunk.cls_token, trunk.reg_token, trunk.pos_embed, getattr(trunk.attn_pool, "latent", None),
                 trunk.mask_token):  # SimMIM does not decay its mask token either
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
        group = groups.setdefault(
            (layer, decay),
            {
                "params": [],
                "weight_decay": weight_decay if decay else 0.0,
                "lr": learning_rate * scale,
                "lr_scale": scale,
            },
        )
        group["params"].append(p)
    return list(groups.values())

