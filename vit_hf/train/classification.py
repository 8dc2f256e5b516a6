"""Image classification (`--task classification`, the default): labelled images in, `VitHfForImageClassification`
out, with the checkpoint's head kept, permuted or replaced to match the data set's labels; cross-entropy with label
smoothing and mixup/cutmix; top-1/top-5, per-class accuracy and the confusion matrix."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .data import EpochShuffleSampler, ExampleTransform, collate_fn, load_image_classification_data, model_inputs
from .metrics import evaluate, masked_cross_entropy, mix_batch, results_markdown
from .model import build_model, is_preset
from .streaming import load_streaming_data, make_stream_loaders
from .task import Task

CURVES_PNG, CONFUSION_PNG = "training_curves.png", "confusion_matrix.png"


# ----------------------------------------------------------------------------------------------------------------------
# The model: a head for the data set's labels
# ----------------------------------------------------------------------------------------------------------------------


def _new_head(model, num_labels: int, init: str) -> nn.Linear:
    # "trunc_normal" (default) is timm's and transformers' init of a fresh head: logits start near zero, so a
    # pretrained trunk gets small gradients, yet not zero ones. "zeros" is big_vision's transfer recipe; with it the
    # trunk gets no gradient at all until the head has moved, which measured 34 % against 95 % on a small model
    # trained from random weights: keep it for pretrained trunks only.
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


def dropped_weights_note(name: str, unexpected: set[str]) -> str | None:
    """The log line for weights of `name` the classifier does not use (a MIM checkpoint's decoder and mask token)."""
    if not unexpected:
        return None
    keys = ", ".join(sorted(unexpected))
    if any(k.startswith("decoder.") or k == "vit.mask_token" for k in unexpected):
        return f"{name} is a masked-image-modeling checkpoint: encoder reused, decoder and mask token dropped ({keys})"
    return f"{name}: weights the classifier does not use, dropped ({keys})"


def build_model_and_processor(args: argparse.Namespace, labels: list[str]):
    """(model, processor, base_model id or None, notes): from scratch for a preset; otherwise loaded, with the head
    reused (same labels), permuted (same labels, other order) or replaced (other labels)."""
    from ..modeling_vit_hf import VitHfForImageClassification

    id2label, label2id = dict(enumerate(labels)), {n: i for i, n in enumerate(labels)}
    built = build_model(args, VitHfForImageClassification, num_labels=len(labels), id2label=id2label,
                        label2id=label2id)
    model, notes = built.model, built.notes
    if not is_preset(args.model_name_or_path):  # a preset was built with the labels already
        notes += filter(None, [dropped_weights_note(args.model_name_or_path, built.unexpected)])  # e.g. a decoder
        config = model.config
        old = [config.id2label[i] for i in range(config.num_labels)] if config.num_labels else []
        if old == labels:
            notes.append("head kept: the checkpoint's labels are the data set's")
        else:
            model.head, kept = _relabelled_head(model, "head", old, labels, args.head_init)
            if getattr(model, "head_dist", None) is not None:  # DeiT distilled: the second head follows the first
                model.head_dist, _ = _relabelled_head(model, "head_dist", old, labels, args.head_init)
            notes.append("head kept with its rows permuted to the data set's label order" if kept else
                         f"new head: {len(old)} checkpoint labels -> {len(labels)} data set labels "
                         f"({args.head_init} init)")
            config.num_labels = len(labels)
        config.id2label, config.label2id = id2label, label2id
    return model, built.processor, built.base_model, notes


def make_loaders(args: argparse.Namespace, data, processor, seed: int):
    """(train loader, eval loader, sampler, train transform) of a map-style data set (or of a stream)."""
    if args.streaming:  # each rank's own endless stream, for --max_train_steps; not prepared by accelerate
        return make_stream_loaders(args, data, processor, seed)
    train_transform = ExampleTransform(processor, data.image_column, data.label_column, train=True, seed=seed)
    eval_transform = ExampleTransform(processor, data.image_column, data.label_column, train=False, seed=seed)
    train_ds, eval_ds = data.train.with_transform(train_transform), data.validation.with_transform(eval_transform)
    sampler = EpochShuffleSampler(len(train_ds), seed=seed)
    train_dl = torch.utils.data.DataLoader(train_ds, sampler=sampler, batch_size=args.per_device_train_batch_size,
                                           collate_fn=collate_fn, num_workers=args.dataloader_num_workers)
    eval_dl = torch.utils.data.DataLoader(eval_ds, batch_size=args.per_device_eval_batch_size, collate_fn=collate_fn,
                                          num_workers=args.dataloader_num_workers)
    return train_dl, eval_dl, sampler, train_transform


def num_examples(split) -> int | str:
    return "streamed" if not hasattr(split, "__len__") else len(split)


# ----------------------------------------------------------------------------------------------------------------------
# The task
# ----------------------------------------------------------------------------------------------------------------------


class ClassificationTask(Task):
    name = "classification"
    help = "classification: labelled images, VitHfForImageClassification"

    @classmethod
    def check_naflex(cls, args: argparse.Namespace, model: str) -> str | None:
        mixing = [f"--{k} {getattr(args, k)}" for k in ("mixup", "cutmix") if getattr(args, k) > 0]
        if mixing:  # timm mixes NaFlex batches patch-wise (naflex_mixup.py); not here yet
            return (f"{model}: {' and '.join(mixing)} mix fixed-size images, a NaFlex batch holds images of different "
                    f"grids: drop {'/'.join(m.split()[0] for m in mixing)}")
        return None

    def load_data(self, seed: int):
        a = self.args
        if a.streaming:
            return load_streaming_data(a, seed)
        return load_image_classification_data(
            a.dataset_name, a.dataset_config_name, a.train_dir, a.validation_dir, a.image_column_name,
            a.label_column_name, a.train_val_split, a.max_train_samples, a.max_eval_samples, seed, a.cache_dir,
            a.hub_token,
        )

    def build_model(self, data):
        return build_model_and_processor(self.args, data.labels)

    def make_loaders(self, data, processor, seed: int):
        return make_loaders(self.args, data, processor, seed)

    def describe(self, data) -> str:
        labels = data.labels
        return (f"train {num_examples(data.train)}, validation {len(data.validation)}, classes {len(labels)} "
                f"({', '.join(labels[:10])}{' ...' if len(labels) > 10 else ''})")

    def identity(self, data) -> dict[str, Any]:
        return {"labels": list(data.labels)}

    def loss(self, run, batch: dict) -> torch.Tensor:
        args, inputs, targets = run.args, model_inputs(batch), batch["labels"]
        if args.mixup > 0 or args.cutmix > 0:  # fixed-size images only: refused for NaFlex before the run starts
            targets = F.one_hot(targets, len(run.data.labels)).float()
            inputs["pixel_values"], targets = mix_batch(inputs["pixel_values"], targets, args)
        logits = run.model(**inputs).logits
        return masked_cross_entropy(logits, targets, batch["valid"], args.label_smoothing)

    def evaluate(self, run, model) -> dict[str, Any]:
        return evaluate(model, run.eval_dl, run.accelerator, len(run.data.labels))

    def eval_entry(self, metrics: dict, raw: dict | None) -> tuple[dict, str]:
        entry = {"eval_accuracy": metrics["accuracy"], "eval_top5_accuracy": metrics["top5_accuracy"],
                 "eval_loss": metrics["loss"]}
        extra = ""
        if raw is not None:
            entry.update(eval_accuracy_raw=raw["accuracy"], eval_accuracy_ema=metrics["accuracy"])
            extra = f" (raw weights {raw['accuracy']:.4f})"
        line = (f"eval accuracy {metrics['accuracy']:.4f}{extra}, top-5 {metrics['top5_accuracy']:.4f}, loss "
                f"{metrics['loss']:.4f} ({metrics['valid_samples']} images, {metrics['images_per_second']:.0f} "
                f"images/s)")
        return entry, line

    def results(self, run) -> dict[str, Any]:
        metrics, labels = run.state.eval_metrics, run.data.labels
        extra = {}
        if run.state.eval_raw is not None:
            extra = {"eval_accuracy_raw": run.state.eval_raw["accuracy"], "eval_accuracy_ema": metrics["accuracy"]}
        return {
            "eval_accuracy": metrics["accuracy"],
            **extra,
            "eval_top5_accuracy": metrics["top5_accuracy"],
            "eval_loss": metrics["loss"],
            "eval_samples": metrics["samples"],
            "eval_unique_samples": metrics["unique_samples"],
            "eval_valid_samples": metrics["valid_samples"],
            "eval_per_class_accuracy": dict(zip(labels, metrics["per_class_accuracy"])),
            "eval_per_class_images": dict(zip(labels, metrics["support"])),
            "eval_confusion_matrix": metrics["confusion_matrix"],
            "eval_images_per_second": metrics["images_per_second"],
            "eval_skipped_images": metrics["skipped_images"],
            "train_samples": num_examples(run.data.train),
            "labels": labels,
        }

    def card(self, run, results: dict, out: Path) -> tuple[dict, dict[str, Path]]:
        from .plots import plot_confusion_matrix, plot_training_curves

        metrics, labels, acc = run.state.eval_metrics, run.data.labels, run.accelerator
        plot_training_curves(run.state.history, out / CURVES_PNG)
        plot_confusion_matrix(metrics["confusion_matrix"], labels, out / CONFUSION_PNG,
                              title=f"validation, top-1 {metrics['accuracy']:.2%}")
        card = {"eval_results": {"accuracy": metrics["accuracy"]}, "plots": [CURVES_PNG, CONFUSION_PNG],
                "results": results_markdown(metrics, labels, {"optimizer steps": run.state.completed_steps,
                                                              "mixed precision": acc.mixed_precision})}
        return card, {CURVES_PNG: out / CURVES_PNG, CONFUSION_PNG: out / CONFUSION_PNG}

    def summary(self, results: dict) -> str:
        return f"eval_accuracy {results['eval_accuracy']:.4f}"
