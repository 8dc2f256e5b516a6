"""Fine-tune (or train from scratch) the einops ViT with accelerate on a `datasets` image set.

    accelerate launch -m vit_hf.train --model_name_or_path small/16 --train_dir imgs/train --validation_dir imgs/val \
        --output_dir out --num_train_epochs 3 --checkpointing_steps 100 --with_tracking --report_to tensorboard
    accelerate launch --mixed_precision bf16 -m vit_hf.train --model_name_or_path out --dataset_name owner/set ...
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 -m vit_hf.train ...   # DDP over gloo

Flag names are those of transformers' `examples/pytorch/image-classification/run_image_classification_no_trainer.py`;
the loop has the shape of accelerate's `examples/cv_example.py` (`training_function(args)` + `main()`). Beyond the
example: gradient clipping, label smoothing, mixup/cutmix, layer-wise LR decay, weight decay chosen by parameter role
(norms, biases, LayerScale, class/register tokens, positions and the MAP probe are not decayed), a new head (timm's init)
when the label set differs, fine-tuning at a higher resolution with resampled positions, activation
checkpointing, a non-finite-loss guard, top-1/top-5/per-class metrics with plots, checkpoints that are written whole
or not at all and that resume bit-exactly, and a hub-ready output folder with a model card.

Exact resume: all randomness is a function of the seed and the position in training. The data order is a
permutation of `(seed, epoch)`, each example's augmentation is seeded by `(seed, epoch, index)`, and the global torch
RNG (dropout, drop-path, mixup) is re-seeded from `(seed, micro-step, rank)` before every micro-step, as big_vision
folds the step into its RNG key. Nothing then depends on how far the data loader has read ahead or on when an
iterator was created, so `skip_first_batches` after a restart reproduces the uninterrupted run.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .packaging import save_hub_folder

logger = logging.getLogger("vit_hf.train")

# ----------------------------------------------------------------------------------------------------------------------
# Defaults, in one block (the HF example's values where it has the flag)
# ----------------------------------------------------------------------------------------------------------------------
DEFAULTS: dict[str, Any] = dict(
    image_column_name="image",
    label_column_name="label",
    train_val_split=0.15,
    per_device_train_batch_size=8,
    per_device_eval_batch_size=8,
    learning_rate=5e-5,
    weight_decay=0.0,
    num_train_epochs=3,
    gradient_accumulation_steps=1,
    lr_scheduler_type="linear",
    num_warmup_steps=0,
    seed=None,
    report_to="all",
    max_grad_norm=1.0,
    label_smoothing=0.0,
    layer_decay=None,
    head_init="trunc_normal",
    mixup=0.0,
    cutmix=0.0,
    mixup_switch_prob=0.5,
    drop_path_rate=None,
    logging_steps=10,
    dataloader_num_workers=0,
    adam_beta1=0.9,
    adam_beta2=0.999,
    adam_epsilon=1e-8,
)

# Test hooks (not flags: no user should want them). Each makes the process SIGKILL itself at a chosen moment.
KILL_AFTER_STEP_ENV = "VIT_HF_TEST_KILL_AFTER_STEP"  # after optimizer step N (and its checkpoint, if any) completes
KILL_IN_CHECKPOINT_ENV = "VIT_HF_TEST_KILL_IN_CHECKPOINT"  # while writing the checkpoint of step N
NAN_AT_STEP_ENV = "VIT_HF_TEST_NAN_AT_STEP"  # make the loss of optimizer step N non-finite

TRAINER_STATE = "trainer_state.json"
HF_MODEL_SUBDIR = "hf_model"  # a standalone, hub-ready copy of the model inside every checkpoint
CURVES_PNG, CONFUSION_PNG = "training_curves.png", "confusion_matrix.png"


class NonFiniteLossError(RuntimeError):
    pass


# ----------------------------------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.set_defaults(**DEFAULTS)
    d = p.add_argument_group("data")
    d.add_argument("--dataset_name", help="Hub dataset id, a local dataset folder, or a `save_to_disk` folder")
    d.add_argument("--dataset_config_name")
    d.add_argument("--train_dir", help="image folder with one subfolder per class")
    d.add_argument("--validation_dir", help="image folder with the same class subfolders")
    d.add_argument("--train_val_split", type=float, help="validation fraction when the data has no validation split")
    d.add_argument("--image_column_name")
    d.add_argument("--label_column_name")
    d.add_argument("--max_train_samples", type=int)
    d.add_argument("--max_eval_samples", type=int)
    d.add_argument("--cache_dir", help="datasets cache directory")
    d.add_argument("--dataloader_num_workers", type=int)
    m = p.add_argument_group("model")
    m.add_argument(
        "--model_name_or_path",
        required=True,
        help="a saved/converted folder, a Hub id, or a size preset (test/tiny/small/base/large/huge, 'small/16') to "
        "train from scratch",
    )
    m.add_argument("--image_size", type=int, help="train at this resolution (positions are resampled when loading)")
    m.add_argument("--patch_size", type=int, help="from scratch only")
    m.add_argument("--num_channels", type=int, choices=(1, 3), help="from scratch only")
    m.add_argument("--config_overrides", help="from scratch: 'hidden_size=128,num_hidden_layers=4,...'")
    m.add_argument("--drop_path_rate", type=float)
    m.add_argument("--crop_pct", type=float, help="eval centre-crop fraction of the image processor (1.0: resize only)")
    m.add_argument("--train_crop_scale", type=float, nargs=2, metavar=("MIN", "MAX"), help="RandomResizedCrop scale")
    m.add_argument("--train_hflip", type=float, help="horizontal-flip probability of the train transform")
    m.add_argument("--trust_remote_code", action="store_true", help="accepted for compatibility; vit_hf's own "
                   "classes load the model")
    m.add_argument("--ignore_mismatched_sizes", action="store_true", help="re-initialise any weight whose shape "
                   "differs (the head is handled by label matching anyway)")
    m.add_argument("--head_init", choices=("trunc_normal", "zeros"), help="init of a new head: truncated normal with "
                   "the config's initializer_range (timm, transformers; default) or zeros (big_vision's transfer)")
    m.add_argument("--gradient_checkpointing", action="store_true")
    m.add_argument("--attn_implementation", choices=("eager", "sdpa", "flex_attention", "flash_attention_2"),
                   help="attention backend; on CPU 'eager' trains small ViTs several times faster than 'sdpa'")
    o = p.add_argument_group("optimisation")
    o.add_argument("--output_dir", required=True)
    o.add_argument("--num_train_epochs", type=int)
    o.add_argument("--max_train_steps", type=int, help="overrides --num_train_epochs")
    o.add_argument("--per_device_train_batch_size", type=int)
    o.add_argument("--per_device_eval_batch_size", type=int)
    o.add_argument("--learning_rate", type=float)
    o.add_argument("--weight_decay", type=float)
    o.add_argument("--adam_beta1", type=float)
    o.add_argument("--adam_beta2", type=float)
    o.add_argument("--adam_epsilon", type=float)
    o.add_argument("--lr_scheduler_type", help="any transformers scheduler: linear, cosine, constant_with_warmup, ...")
    o.add_argument("--num_warmup_steps", type=int)
    o.add_argument("--gradient_accumulation_steps", type=int)
    o.add_argument("--max_grad_norm", type=float, help="clip the global gradient norm (<= 0: no clipping)")
    o.add_argument("--label_smoothing", type=float)
    o.add_argument("--layer_decay", type=float, help="layer-wise LR decay (e.g. 0.75): block i gets decay^(L+1-i)")
    o.add_argument("--mixup", type=float, help="mixup Beta(alpha, alpha); 0 = off")
    o.add_argument("--cutmix", type=float, help="cutmix Beta(alpha, alpha); 0 = off")
    o.add_argument("--mixup_switch_prob", type=float, help="with both on: probability of cutmix for a batch")
    o.add_argument("--seed", type=int)
    o.add_argument("--mixed_precision", choices=("no", "fp16", "bf16"), help="for `python -m` runs; "
                   "`accelerate launch --mixed_precision` sets it otherwise")
    c = p.add_argument_group("checkpoints, logging, hub")
    c.add_argument("--checkpointing_steps", help="save the state every N optimizer steps, or 'epoch'")
    c.add_argument("--resume_from_checkpoint", help="a checkpoint folder, or 'latest' (newest complete one in "
                   "--output_dir; a fresh start when there is none)")
    c.add_argument("--logging_steps", type=int)
    c.add_argument("--with_tracking", action="store_true")
    c.add_argument("--report_to", help="tensorboard, wandb, comet_ml, clearml, or 'all'")
    c.add_argument("--push_to_hub", action="store_true")
    c.add_argument("--hub_model_id")
    c.add_argument("--hub_token")
    c.add_argument("--hub_private_repo", action="store_true")
    args = p.parse_args(argv)
    if args.dataset_name is None and args.train_dir is None:
        p.error("give --dataset_name or --train_dir")
    if args.checkpointing_steps is not None and args.checkpointing_steps != "epoch":
        if not args.checkpointing_steps.isdigit() or int(args.checkpointing_steps) <= 0:
            p.error(f"--checkpointing_steps must be a positive integer or 'epoch', got {args.checkpointing_steps!r}")
    if args.push_to_hub and not args.hub_model_id:
        p.error("--push_to_hub needs --hub_model_id")
    return args


# ----------------------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------------------


def is_preset(name: str) -> bool:
    """A size preset ('small', 'small/16', 'S/16', 'test') that is not also a local path."""
    from .configuration_vit_hf import _PRESET_ALIASES, PRESETS

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


def build_model_and_processor(args: argparse.Namespace, labels: list[str]):
    """Return (model, processor, base_model id or None, notes). From scratch for a preset; otherwise loaded, with the
    head reused (same labels), permuted (same labels, other order) or replaced (other labels)."""
    from .configuration_vit_hf import VitHfConfig
    from .image_processing_vit_hf import VitHfImageProcessor
    from .modeling_vit_hf import VitHfForImageClassification

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
        model = VitHfForImageClassification.from_pretrained(name, **kwargs)
        if getattr(model.config, "model_type", None) != "vit_hf":
            raise ValueError(
                f"{name} is a {model.config.model_type!r} model; convert it first (python -m convert.timm)"
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
            head = _new_head(model, len(labels), args.head_init)
            if sorted(old) == sorted(labels) and isinstance(model.head, nn.Linear):
                order = torch.tensor([old.index(n) for n in labels])  # same classes in another order: permute rows
                with torch.no_grad():
                    head.weight.copy_(model.head.weight[order])
                    head.bias.copy_(model.head.bias[order])
                notes.append("head kept with its rows permuted to the data set's label order")
            else:
                notes.append(f"new head: {len(old)} checkpoint labels -> {len(labels)} data set labels "
                             f"({args.head_init} init)")
            model.head = head
            model.config.num_labels = len(labels)
        model.config.id2label, model.config.label2id = id2label, label2id
        base_model = None if os.path.isdir(name) else name
        if args.image_size is not None and tuple(model.config.image_hw) != (args.image_size, args.image_size):
            before = model.config.image_hw
            model.vit.resize_position_embeddings(args.image_size)
            processor.size = {"height": args.image_size, "width": args.image_size}
            notes.append(f"resolution {before} -> {args.image_size}: positions resampled")
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
    return model, processor, base_model, notes


def parameter_groups(model, learning_rate: float, weight_decay: float, layer_decay: float | None) -> list[dict]:
    """AdamW groups. No decay for norm and LayerScale parameters (by module type), biases and other vectors (ndim <= 1),
    and the class/register tokens, positions and MAP probe (by their role on the trunk, looked up by identity). With
    `layer_decay`, the embeddings are layer 0, block i is layer i + 1, and the norm/pooling/head are layer L + 1,
    whose LR is `learning_rate`; layer j gets `learning_rate * layer_decay ** (L + 1 - j)`."""
    from .modeling_vit_hf import LayerScale

    trunk = model.vit
    no_decay: set[int] = set()
    for module in model.modules():
        if isinstance(module, (nn.LayerNorm, LayerScale)):
            no_decay.update(id(p) for p in module.parameters(recurse=False))
    for role in (trunk.cls_token, trunk.reg_token, trunk.pos_embed, getattr(trunk.attn_pool, "latent", None)):
        if role is not None:
            no_decay.add(id(role))
    depth = len(trunk.blocks)
    layer_of: dict[int, int] = {}
    for module in (trunk.patch_embed, trunk.norm_pre):
        layer_of.update((id(p), 0) for p in module.parameters())
    for role in (trunk.cls_token, trunk.reg_token, trunk.pos_embed):
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


# ----------------------------------------------------------------------------------------------------------------------
# Loss, mixing, metrics
# ----------------------------------------------------------------------------------------------------------------------


def mix_batch(pixel_values: torch.Tensor, targets: torch.Tensor, args: argparse.Namespace):
    """Mixup / CutMix on one batch (probability targets in, probability targets out); randomness from torch's global
    RNG, which the loop seeds per micro-step."""
    use_cutmix = args.cutmix > 0 and (args.mixup <= 0 or torch.rand(()).item() < args.mixup_switch_prob)
    alpha = args.cutmix if use_cutmix else args.mixup
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    perm = torch.randperm(pixel_values.shape[0]).to(pixel_values.device)
    if use_cutmix:
        h, w = pixel_values.shape[-2:]
        cut_h, cut_w = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
        cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
        y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
        x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
        pixel_values = pixel_values.clone()
        pixel_values[..., y0:y1, x0:x1] = pixel_values[perm][..., y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)  # the area actually pasted
    else:
        pixel_values = lam * pixel_values + (1 - lam) * pixel_values[perm]
    return pixel_values, lam * targets + (1 - lam) * targets[perm]


def masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor, smoothing: float):
    """Mean cross-entropy over the valid examples (a skipped image has weight 0), computed in float32."""
    per_example = F.cross_entropy(logits.float(), targets, label_smoothing=smoothing, reduction="none")
    weights = valid.to(per_example.dtype)
    return (per_example * weights).sum() / weights.sum().clamp(min=1.0)


@torch.no_grad()
def evaluate(model, dataloader, accelerator, num_labels: int) -> dict[str, Any]:
    """Top-1/top-5 accuracy, loss, per-class accuracy and the confusion matrix over the whole split, each example
    counted once across processes (`gather_for_metrics` drops the samples padded onto the last batch)."""
    model.eval()
    k = min(5, num_labels)
    topk_all, labels_all, valid_all, loss_all, index_all = [], [], [], [], []
    start, seen = time.perf_counter(), 0
    for batch in dataloader:
        logits = model(pixel_values=batch["pixel_values"]).logits.float()
        loss = F.cross_entropy(logits, batch["labels"], reduction="none")
        topk = logits.topk(k, dim=-1).indices
        topk, labels, valid, loss, index = accelerator.gather_for_metrics(
            (topk, batch["labels"], batch["valid"], loss, batch["index"])
        )
        seen += int(labels.numel())
        topk_all.append(topk.cpu())
        labels_all.append(labels.cpu())
        valid_all.append(valid.cpu())
        loss_all.append(loss.cpu())
        index_all.append(index.cpu())
    seconds = time.perf_counter() - start
    topk, labels = torch.cat(topk_all), torch.cat(labels_all)
    valid, loss, index = torch.cat(valid_all), torch.cat(loss_all), torch.cat(index_all)
    n_valid = int(valid.sum())
    top1 = topk[:, 0] == labels
    top5 = (topk == labels[:, None]).any(dim=1)
    confusion = torch.zeros(num_labels, num_labels, dtype=torch.long)
    confusion.index_put_((labels[valid], topk[valid, 0]), torch.ones(n_valid, dtype=torch.long), accumulate=True)
    support = confusion.sum(1)
    per_class = (confusion.diag().float() / support.clamp(min=1).float()).tolist()
    model.train()
    return {
        "accuracy": float(top1[valid].float().mean()) if n_valid else float("nan"),
        "top5_accuracy": float(top5[valid].float().mean()) if n_valid else float("nan"),
        "loss": float(loss[valid].mean()) if n_valid else float("nan"),
        "samples": int(labels.numel()),
        "unique_samples": int(index.unique().numel()),
        "valid_samples": n_valid,
        "skipped_images": int(labels.numel() - n_valid),
        "per_class_accuracy": per_class,
        "support": support.tolist(),
        "confusion_matrix": confusion.tolist(),
        "images_per_second": seen / max(seconds, 1e-9),
    }


# ----------------------------------------------------------------------------------------------------------------------
# Checkpoints: whole or not at all
# ----------------------------------------------------------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_json(path: Path, obj: Any) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.flush()
        os.fsync(f.fileno())


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints in `output_dir` as (completed optimizer steps, path), oldest first. A checkpoint is
    complete when it has its final name (`step_N` / `epoch_N`, given by an atomic rename after everything was
    written) and a `trainer_state.json`; the hidden `.tmp-*` folders of interrupted writes are ignored."""
    out = []
    root = Path(output_dir)
    if not root.is_dir():
        return out
    for path in root.iterdir():
        prefix, _, number = path.name.partition("_")
        if path.is_dir() and prefix in ("step", "epoch") and number.isdigit() and (path / TRAINER_STATE).is_file():
            try:
                steps = int(json.loads((path / TRAINER_STATE).read_text())["completed_steps"])
            except (ValueError, KeyError):
                continue
            out.append((steps, path))
    return sorted(out)


def _maybe_kill(env: str, step: int) -> None:
    if os.environ.get(env) == str(step):
        logger.warning("%s=%d: killing this process now (test hook)", env, step)
        logging.shutdown()
        os.kill(os.getpid(), signal.SIGKILL)


def save_checkpoint(accelerator, output_dir: Path, name: str, state: dict, model, processor, card_kwargs) -> Path:
    """`accelerator.save_state` + a standalone hub-ready model (`hf_model/`) + `trainer_state.json`, written into a
    hidden temporary folder and renamed into place once complete (a kill at any point leaves the previous checkpoint
    intact and no half-written `step_N`). Called on every process."""

    final, tmp = output_dir / name, output_dir / f".tmp-{name}"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_hub_folder(accelerator.unwrap_model(model), processor, tmp / HF_MODEL_SUBDIR, card_kwargs=card_kwargs)
        _maybe_kill(KILL_IN_CHECKPOINT_ENV, state["completed_steps"])
        _write_json(tmp / TRAINER_STATE, state)
        _fsync_dir(tmp)
        if final.exists():  # re-running over an old output folder: replace it, never merge
            old = output_dir / f".old-{name}-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(output_dir)
        logger.info("checkpoint saved: %s", final)
    accelerator.wait_for_everyone()
    return final


def resolve_checkpoint(spec: str | None, output_dir: Path) -> Path | None:
    if spec is None:
        return None
    if spec == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            logger.info("--resume_from_checkpoint latest: no complete checkpoint in %s, starting fresh", output_dir)
            return None
        return found[-1][1]
    path = Path(spec)
    if not (path / TRAINER_STATE).is_file():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {TRAINER_STATE})")
    return path


# ----------------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------------


def _seed_for(seed: int, a: int, b: int) -> int:
    from .data import example_seed

    return example_seed(seed, a, b) % (2**63)


def _push(folder: Path, args: argparse.Namespace, message: str) -> str | None:
    from .hub import push_folder  # lazy: the hub client is only needed when pushing

    sha = push_folder(folder, args.hub_model_id, token=args.hub_token, private=args.hub_private_repo,
                      commit_message=message)
    logger.info("pushed %s to %s (%s)", folder, args.hub_model_id, sha)
    return sha


def _results_markdown(metrics: dict, labels: list[str], extra: dict) -> str:
    lines = [
        "| metric | value |",
        "|---|---|",
        f"| top-1 accuracy | {metrics['accuracy']:.4f} |",
        f"| top-{min(5, len(labels))} accuracy | {metrics['top5_accuracy']:.4f} |",
        f"| loss | {metrics['loss']:.4f} |",
        f"| evaluation images | {metrics['valid_samples']} |",
    ]
    lines += [f"| {k} | {v} |" for k, v in extra.items()]
    lines += ["", "| class | accuracy | images |", "|---|---|---|"]
    lines += [
        f"| {name} | {acc:.4f} | {n} |"
        for name, acc, n in zip(labels, metrics["per_class_accuracy"], metrics["support"])
    ]
    return "\n".join(lines)


def training_function(args: argparse.Namespace) -> dict[str, Any]:
    """Train and evaluate; returns the `all_results.json` dict (on every process)."""
    import datasets
    import transformers
    from accelerate import Accelerator, DataLoaderConfiguration
    from accelerate.utils import gather_object, set_seed
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    from .data import EpochShuffleSampler, ExampleTransform, collate_fn, load_image_classification_data
    from .plots import plot_confusion_matrix, plot_training_curves

    output_dir = Path(args.output_dir).resolve()
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=args.report_to if args.with_tracking else None,
        project_dir=str(output_dir),
        # our own sampler is already rank-agnostic and epoch-seeded; keep accelerate from swapping it
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=False),
    )
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", level=logging.INFO
    )
    if accelerator.is_main_process:
        datasets.utils.logging.set_verbosity_warning()
        transformers.utils.logging.set_verbosity_warning()
    else:
        logger.setLevel(logging.ERROR)
        datasets.utils.logging.set_verbosity_error()
        transformers.utils.logging.set_verbosity_error()
    seed = 0 if args.seed is None else args.seed
    set_seed(seed)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()

    # ------------------------------------------------------------------ data and model
    with accelerator.main_process_first():  # the main process fills the datasets cache, the others read it
        data = load_image_classification_data(
            args.dataset_name, args.dataset_config_name, args.train_dir, args.validation_dir,
            args.image_column_name, args.label_column_name, args.train_val_split, args.max_train_samples,
            args.max_eval_samples, seed, args.cache_dir, args.hub_token,
        )
    model, processor, base_model, notes = build_model_and_processor(args, data.labels)
    for note in data.notes + notes:
        logger.info(note)
    if args.gradient_checkpointing:
        # transformers 5 renamed it (the old name warns); non-reentrant checkpointing works with DDP's hooks
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    train_transform = ExampleTransform(processor, data.image_column, data.label_column, train=True, seed=seed)
    eval_transform = ExampleTransform(processor, data.image_column, data.label_column, train=False, seed=seed)
    train_ds, eval_ds = data.train.with_transform(train_transform), data.validation.with_transform(eval_transform)
    sampler = EpochShuffleSampler(len(train_ds), seed=seed)
    train_dl = torch.utils.data.DataLoader(
        train_ds, sampler=sampler, batch_size=args.per_device_train_batch_size, collate_fn=collate_fn,
        num_workers=args.dataloader_num_workers,
    )
    eval_dl = torch.utils.data.DataLoader(
        eval_ds, batch_size=args.per_device_eval_batch_size, collate_fn=collate_fn,
        num_workers=args.dataloader_num_workers,
    )

    # ------------------------------------------------------------------ optimiser and schedule
    groups = parameter_groups(model, args.learning_rate, args.weight_decay, args.layer_decay)
    optimizer = torch.optim.AdamW(groups, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                                  eps=args.adam_epsilon)
    # Step counts are per process; accelerate steps a prepared scheduler once per process, hence the factor.
    steps_per_epoch = math.ceil(math.ceil(len(train_ds) / accelerator.num_processes / args.per_device_train_batch_size)
                                / args.gradient_accumulation_steps)
    max_train_steps = args.max_train_steps or args.num_train_epochs * steps_per_epoch
    scheduler = get_scheduler(
        args.lr_scheduler_type, optimizer=optimizer, num_warmup_steps=args.num_warmup_steps * accelerator.num_processes,
        num_training_steps=max_train_steps * accelerator.num_processes,
    )
    model, optimizer, train_dl, eval_dl, scheduler = accelerator.prepare(model, optimizer, train_dl, eval_dl, scheduler)
    steps_per_epoch = math.ceil(len(train_dl) / args.gradient_accumulation_steps)  # exact, after sharding
    num_epochs = math.ceil(max_train_steps / steps_per_epoch)
    total_batch = args.per_device_train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps

    card_base = {
        "base_model": base_model,
        "datasets": [args.dataset_name] if args.dataset_name and not os.path.isdir(args.dataset_name) else None,
        # a local folder (save_to_disk, image folder) is named by its basename, not by a path of this machine
        "dataset_name": Path(args.dataset_name).name if args.dataset_name and os.path.isdir(args.dataset_name)
        else args.dataset_name or Path(args.train_dir).name,
        "repo_id": args.hub_model_id,
    }
    hparams = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool)) and "token" not in k}
    if args.with_tracking:
        accelerator.init_trackers("vit_hf", config=hparams)

    # ------------------------------------------------------------------ resume
    completed_steps, start_epoch, skip_batches = 0, 0, 0
    history: list[dict] = []
    train_skipped: set[int] = set()
    checkpoint = resolve_checkpoint(args.resume_from_checkpoint, output_dir)
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        state = json.loads((checkpoint / TRAINER_STATE).read_text())
        completed_steps, start_epoch, skip_batches = state["completed_steps"], state["epoch"], state["batches_in_epoch"]
        history, train_skipped = state.get("log_history", []), set(state.get("train_skipped_indices", []))
        if state.get("batches_per_epoch") not in (None, len(train_dl)):
            raise ValueError(f"{checkpoint} was written with {state['batches_per_epoch']} batches per epoch, this run "
                             f"has {len(train_dl)}: resume with the same data, batch size and number of processes")
        if skip_batches >= len(train_dl):
            start_epoch, skip_batches = start_epoch + 1, 0
        logger.info("resumed from %s: step %d, epoch %d, batch %d", checkpoint, completed_steps, start_epoch,
                    skip_batches)

    logger.info("***** training *****")
    logger.info("  examples: train %d, validation %d, classes %d (%s)", len(train_ds), len(eval_ds), len(data.labels),
                ", ".join(data.labels[:10]) + (" ..." if len(data.labels) > 10 else ""))
    logger.info("  images per optimizer step: %d (per device %d x processes %d x accumulation %d)", total_batch,
                args.per_device_train_batch_size, accelerator.num_processes, args.gradient_accumulation_steps)
    logger.info("  optimizer steps: %d (%d per epoch, %d epochs); mixed precision: %s; parameters: %.2fM",
                max_train_steps, steps_per_epoch, num_epochs, accelerator.mixed_precision,
                sum(p.numel() for p in model.parameters()) / 1e6)

    # ------------------------------------------------------------------ loop
    kill_after = os.environ.get(KILL_AFTER_STEP_ENV)
    nan_at = os.environ.get(NAN_AT_STEP_ENV)
    every = int(args.checkpointing_steps) if args.checkpointing_steps not in (None, "epoch") else None
    progress = tqdm(total=max_train_steps, initial=completed_steps, disable=not accelerator.is_local_main_process,
                    desc="train", dynamic_ncols=True)
    window = {"loss": 0.0, "n": 0, "images": 0, "t": time.perf_counter()}
    train_images, train_seconds = 0, 0.0
    last_checkpoint = checkpoint
    eval_metrics = None
    num_labels = len(data.labels)
    model.train()
    for epoch in range(start_epoch, num_epochs):
        train_dl.set_epoch(epoch)
        sampler.set_epoch(epoch)
        train_transform.epoch = epoch
        batches = accelerator.skip_first_batches(train_dl, skip_batches) if skip_batches else train_dl
        first, skip_batches = skip_batches, 0
        epoch_start = time.perf_counter()
        step_nonfinite = torch.zeros((), device=accelerator.device)
        step_loss = torch.zeros((), device=accelerator.device)
        for batch_index, batch in enumerate(batches, start=first):
            micro_step = epoch * len(train_dl) + batch_index
            torch.manual_seed(_seed_for(seed, micro_step, -2 - accelerator.process_index))
            valid = batch["valid"]
            if not bool(valid.all()):
                train_skipped.update(batch["index"][~valid].tolist())
            with accelerator.accumulate(model):
                pixel_values, targets = batch["pixel_values"], batch["labels"]
                if args.mixup > 0 or args.cutmix > 0:
                    targets = F.one_hot(targets, num_labels).float()
                    pixel_values, targets = mix_batch(pixel_values, targets, args)
                logits = model(pixel_values=pixel_values).logits
                loss = masked_cross_entropy(logits, targets, valid, args.label_smoothing)
                if nan_at is not None and completed_steps + 1 == int(nan_at):
                    loss = loss * float("nan")  # test hook: a loss that has gone non-finite
                step_nonfinite += (~torch.isfinite(loss.detach())).float()
                step_loss += loss.detach().float() / args.gradient_accumulation_steps
                accelerator.backward(loss)
                grad_norm = None
                if accelerator.sync_gradients:
                    # One all-reduce per optimizer step: every rank must agree to stop, or DDP would hang.
                    flags = accelerator.reduce(torch.stack([step_nonfinite, step_loss]), reduction="sum")
                    if bool(flags[0] > 0):
                        raise NonFiniteLossError(
                            f"non-finite loss at optimizer step {completed_steps + 1} (epoch {epoch}); training "
                            f"stopped before the update. Last good checkpoint: {last_checkpoint or 'none'}. Try a "
                            f"lower --learning_rate, --max_grad_norm 1.0, bf16 instead of fp16, or more warmup."
                        )
                    max_norm = args.max_grad_norm if args.max_grad_norm and args.max_grad_norm > 0 else float("inf")
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_norm)
                    mean_loss = float(flags[1]) / accelerator.num_processes
                    step_nonfinite.zero_()
                    step_loss.zero_()
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            images = int(valid.numel()) * accelerator.num_processes
            window["images"] += images
            train_images += images
            if not accelerator.sync_gradients:
                continue
            completed_steps += 1
            progress.update(1)
            window["loss"] += mean_loss
            window["n"] += 1
            if completed_steps % args.logging_steps == 0 or completed_steps == max_train_steps:
                now = time.perf_counter()
                entry = {
                    "step": completed_steps,
                    "epoch": round(epoch + (batch_index + 1) / len(train_dl), 4),
                    "loss": window["loss"] / window["n"],
                    "lr": scheduler.get_last_lr()[-1],
                    "grad_norm": float(grad_norm) if grad_norm is not None else None,
                    "images_per_second": window["images"] / max(now - window["t"], 1e-9),
                }
                history.append(entry)
                progress.set_postfix(loss=f"{entry['loss']:.4f}", lr=f"{entry['lr']:.2e}",
                                     ips=f"{entry['images_per_second']:.0f}")
                if args.with_tracking:
                    accelerator.log({f"train/{k}": v for k, v in entry.items() if v is not None and k != "step"},
                                    step=completed_steps)
                window.update(loss=0.0, n=0, images=0, t=now)
            if every and completed_steps % every == 0:
                state = {"completed_steps": completed_steps, "epoch": epoch, "batches_in_epoch": batch_index + 1,
                         "batches_per_epoch": len(train_dl), "log_history": history,
                         "train_skipped_indices": sorted(train_skipped)}
                last_checkpoint = save_checkpoint(accelerator, output_dir, f"step_{completed_steps}", state, model,
                                                  processor, card_base)
                if args.push_to_hub and accelerator.is_main_process:
                    _push(last_checkpoint / HF_MODEL_SUBDIR, args, f"Training in progress, step {completed_steps}")
            if kill_after is not None and completed_steps == int(kill_after):
                _maybe_kill(KILL_AFTER_STEP_ENV, completed_steps)
            if completed_steps >= max_train_steps:
                break
        train_seconds += time.perf_counter() - epoch_start

        eval_metrics = evaluate(model, eval_dl, accelerator, num_labels)
        history.append({"step": completed_steps, "epoch": epoch + 1, "eval_accuracy": eval_metrics["accuracy"],
                        "eval_top5_accuracy": eval_metrics["top5_accuracy"], "eval_loss": eval_metrics["loss"]})
        logger.info("epoch %d: eval accuracy %.4f, top-5 %.4f, loss %.4f (%d images, %.0f images/s)", epoch,
                    eval_metrics["accuracy"], eval_metrics["top5_accuracy"], eval_metrics["loss"],
                    eval_metrics["valid_samples"], eval_metrics["images_per_second"])
        if args.with_tracking:
            accelerator.log({"eval/accuracy": eval_metrics["accuracy"], "eval/top5_accuracy":
                             eval_metrics["top5_accuracy"], "eval/loss": eval_metrics["loss"]}, step=completed_steps)
        if args.checkpointing_steps == "epoch":
            state = {"completed_steps": completed_steps, "epoch": epoch, "batches_in_epoch": len(train_dl),
                     "batches_per_epoch": len(train_dl), "log_history": history,
                     "train_skipped_indices": sorted(train_skipped)}
            last_checkpoint = save_checkpoint(accelerator, output_dir, f"epoch_{epoch}", state, model, processor,
                                              card_base)
            if args.push_to_hub and accelerator.is_main_process:
                _push(last_checkpoint / HF_MODEL_SUBDIR, args, f"Training in progress, epoch {epoch}")
        if completed_steps >= max_train_steps:
            break
    progress.close()
    if eval_metrics is None:  # resumed from a finished run: nothing trained, still report the metrics
        eval_metrics = evaluate(model, eval_dl, accelerator, num_labels)

    # ------------------------------------------------------------------ results and output folder
    all_skipped: set[int] = set()
    for part in gather_object([sorted(train_skipped)]):
        all_skipped.update(part)
    results = {
        "eval_accuracy": eval_metrics["accuracy"],
        "eval_top5_accuracy": eval_metrics["top5_accuracy"],
        "eval_loss": eval_metrics["loss"],
        "eval_samples": eval_metrics["samples"],
        "eval_unique_samples": eval_metrics["unique_samples"],
        "eval_valid_samples": eval_metrics["valid_samples"],
        "eval_per_class_accuracy": dict(zip(data.labels, eval_metrics["per_class_accuracy"])),
        "eval_confusion_matrix": eval_metrics["confusion_matrix"],
        "eval_images_per_second": eval_metrics["images_per_second"],
        "eval_skipped_images": eval_metrics["skipped_images"],
        "train_skipped_images": len(all_skipped),
        "skipped_images": len(all_skipped) + eval_metrics["skipped_images"],
        "train_samples": len(train_ds),
        "train_images_per_second": train_images / max(train_seconds, 1e-9),
        "train_runtime": train_seconds,
        "completed_steps": completed_steps,
        "epochs": num_epochs,
        "num_processes": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision,
        "labels": data.labels,
        "data_source": data.source,
    }
    if results["skipped_images"]:
        logger.warning("skipped %d unreadable image(s): %d in train, %d in validation", results["skipped_images"],
                       results["train_skipped_images"], results["eval_skipped_images"])
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        plot_training_curves(history, output_dir / CURVES_PNG)
        plot_confusion_matrix(eval_metrics["confusion_matrix"], data.labels, output_dir / CONFUSION_PNG,
                              title=f"validation, top-1 {eval_metrics['accuracy']:.2%}")
        card = dict(card_base)
        card.update(
            eval_results={"accuracy": eval_metrics["accuracy"]},
            results=_results_markdown(eval_metrics, data.labels, {"optimizer steps": completed_steps,
                                                                   "mixed precision": accelerator.mixed_precision}),
            plots=[CURVES_PNG, CONFUSION_PNG],
        )
        model_to_save = accelerator.unwrap_model(model)
        # merges the hub files into output_dir; checkpoints, logs and tracker files stay where they are
        save_hub_folder(model_to_save, processor, output_dir, card,
                        {CURVES_PNG: output_dir / CURVES_PNG, CONFUSION_PNG: output_dir / CONFUSION_PNG})
        _write_json(output_dir / "all_results.json", results)
        _write_json(output_dir / "log_history.json", history)
        logger.info("eval_accuracy %.4f -> %s", results["eval_accuracy"], output_dir / "all_results.json")
        if args.push_to_hub:
            _push(output_dir, args, "End of training")
    accelerator.wait_for_everyone()
    if args.with_tracking:
        accelerator.end_training()
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    try:
        return training_function(args)
    except NonFiniteLossError as err:
        logger.error("%s", err)
        print(f"vit_hf.train: {err}", file=sys.stderr)
        raise SystemExit(3) from None


if __name__ == "__main__":
    main()
