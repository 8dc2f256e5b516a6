"""LoRA through peft (`--lora_r`): low-rank adapters on the blocks' linear layers, the head trained fully (peft's
`modules_to_save`, so the adapter folder carries it and loads onto the base model). The run saves the merged model
(a plain vit_hf folder: whoever loads it needs no peft) and the adapter in `adapter/`."""

from __future__ import annotations

import argparse
import copy
import re
from pathlib import Path

from torch import nn

ADAPTER_SUBDIR = "adapter"
BLOCK_LINEARS = ("qkv", "proj", "fc1", "fc2")  # attn.qkv, attn.proj, mlp.fc1, mlp.fc2 of every block


def lora_targets(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in BLOCK_LINEARS]
    if not names or unknown:
        raise ValueError(f"--lora_target_modules {text!r}: name(s) {unknown or 'none'} are not block layers; choose "
                         f"from {','.join(BLOCK_LINEARS)}")
    return names


def apply_lora(model: nn.Module, args: argparse.Namespace):
    """Wrap `model` in a peft LoRA model; returns (peft model, log line). Only the blocks are targeted (a regex on
    the module names): `patch_embed.proj` and the MAP probe's `proj` share a name with `attn.proj`, and the patch
    embedding computes with its weight directly, where an adapter would never run."""
    from peft import LoraConfig, get_peft_model

    names = lora_targets(args.lora_target_modules)
    heads = [n for n in ("head", "head_dist") if isinstance(getattr(model, n, None), nn.Module)]
    config = LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha if args.lora_alpha is not None else args.lora_r,
        lora_dropout=args.lora_dropout,
        target_modules=rf"vit\.blocks\.\d+\.(attn|mlp)\.({'|'.join(map(re.escape, names))})",
        modules_to_save=heads,
    )
    peft_model = get_peft_model(model, config)
    trainable, total = parameter_counts(peft_model)
    note = (f"LoRA: r {config.r}, alpha {config.lora_alpha}, dropout {config.lora_dropout} on {','.join(names)} of "
            f"every block; trained fully: {','.join(heads)}; trainable parameters {trainable:,} of {total:,} "
            f"({trainable / total:.2%})")
    return peft_model, note


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters of the trained model (with LoRA: the frozen base, the adapters and the head's
    trained copy, as peft's `get_nb_trainable_parameters` counts them)."""
    if hasattr(model, "get_nb_trainable_parameters"):
        return model.get_nb_trainable_parameters()
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def is_lora(model: nn.Module) -> bool:
    return hasattr(model, "merge_and_unload")


def merged_copy(model: nn.Module) -> nn.Module:
    """A plain model with the adapters merged into the weights and the trained head in place; `model` is untouched
    (training goes on after a checkpoint)."""
    return copy.deepcopy(model).merge_and_unload()


def save_adapter(model: nn.Module, folder: Path) -> None:
    """peft's adapter folder: adapter_config.json + adapter_model.safetensors (LoRA weights and the trained head)."""
    model.save_pretrained(str(folder))
