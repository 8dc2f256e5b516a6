"""Loss, mixup/cutmix and the evaluation metrics (top-1/top-5, per-class accuracy, confusion matrix), each example
counted once across processes."""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

import torch
import torch.nn.functional as F

from .data import model_inputs


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
        logits = model(**model_inputs(batch)).logits.float()
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
    # a class without validation images has no accuracy (None, JSON null), not 0
    per_class = [float(c) / n if n else None for c, n in zip(confusion.diag().tolist(), support.tolist())]
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


def results_markdown(metrics: dict, labels: list[str], extra: dict) -> str:
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
        f"| {name} | {'n/a' if acc is None else f'{acc:.4f}'} | {n} |"
        for name, acc, n in zip(labels, metrics["per_class_accuracy"], metrics["support"])
    ]
    return "\n".join(lines)

