"""Training-curve and confusion-matrix figures for the output folder and the model card (matplotlib, Agg backend:
no display needed). Not remote code."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: must precede pyplot's import
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_training_curves(history: Sequence[dict], path: str | Path) -> Path:
    """Train loss and learning rate against the optimizer step, with the evaluation loss and (for a classifier)
    accuracy on a second axis.

    Args:
        history: log entries; train entries have `loss` and `lr`, eval entries `eval_loss` and, for a classifier,
            `eval_accuracy` (all have `step`).
    """
    train = [h for h in history if "loss" in h]
    evals = [h for h in history if "eval_loss" in h]  # a SimMIM run evaluates its loss only
    # constrained layout makes room for the legend below the axes, where no curve can hide it
    fig, (ax_loss, ax_lr) = plt.subplots(1, 2, figsize=(10, 3.9), layout="constrained")
    if train:
        ax_loss.plot([h["step"] for h in train], [h["loss"] for h in train], label="train loss", color="tab:blue")
    if evals:
        ax_loss.plot([h["step"] for h in evals], [h["eval_loss"] for h in evals], "o--", label="eval loss",
                     color="tab:orange")
    if evals and all("eval_accuracy" in h for h in evals):
        ax_acc = ax_loss.twinx()
        ax_acc.plot([h["step"] for h in evals], [h["eval_accuracy"] for h in evals], "s-", color="tab:green",
                    label="eval top-1")
        ax_acc.set_ylabel("eval top-1 accuracy")
        ax_acc.set_ylim(0, 1)
    # One legend for both y axes (two legends, one per axis, overlapped each other and the curves)
    handles = [line for ax in fig.axes if ax is not ax_lr for line in ax.get_lines()]
    if handles:
        ax_loss.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=len(handles),
                       frameon=False)
    ax_loss.set_xlabel("optimizer step")
    ax_loss.set_ylabel("loss")
    ax_loss.set_title("loss and accuracy" if len(fig.axes) > 2 else "loss")
    if train:
        ax_lr.plot([h["step"] for h in train], [h["lr"] for h in train], color="tab:purple")
    ax_lr.set_xlabel("optimizer step")
    ax_lr.set_ylabel("learning rate (last group)")
    ax_lr.set_title("schedule")
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_confusion_matrix(confusion: Sequence[Sequence[int]], labels: Sequence[str], path: str | Path,
                          title: str = "") -> Path:
    """Row-normalised confusion matrix (rows: true class, columns: prediction), counts printed when it is small."""
    counts = np.asarray(confusion, dtype=np.int64)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    n = len(labels)
    size = min(3 + 0.45 * n, 16)
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if n <= 40:
        ax.set_xticks(range(n), labels, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(n), labels, fontsize=8)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion matrix")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
