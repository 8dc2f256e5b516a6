"""Masked-image-modeling pretraining (SimMIM) for `python -m vit_hf.train --task mim`: unlabelled images in,
`VitHfForMaskedImageModeling` out.

    python -m vit_hf.train --task mim --model_name_or_path base/16 --train_dir UNLABELLED --output_dir out \
        --mask_patch_size 32 --mask_ratio 0.6
    python -m vit_hf.train --model_name_or_path out --train_dir LABELLED ...   # fine-tune: the decoder is dropped

As transformers' `examples/pytorch/image-pretraining/run_mim.py`: a mask is drawn at `--mask_patch_size`
granularity (ceil(ratio * N) of the N mask patches, a uniform random subset) and then upsampled to the model's patch
grid; the train transform is SimMIM's RandomResizedCrop (scale 0.67-1, ratio 3/4-4/3) + horizontal flip. Unlike the
example, the validation images get the deterministic eval transform and one fixed mask each, so that `eval_loss` (the
L1 loss over the masked pixels, averaged over the validation images) is comparable from epoch to epoch.

`MimTask` is one implementation of `task.Task` beside classification's: the loop (checkpoints, exact resume, EMA,
mixed precision, DDP) is shared; the data (labels ignored), the model, the masks, the loss, the evaluation and the
results live here.
Masks are a function of `(seed, epoch, example index)`, like the augmentations, so a resumed run sees the same masks.
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from einops import repeat

from .data import (
    INDEX_COLUMN,
    VALIDATION_SPLIT_NAMES,
    DataError,
    EpochShuffleSampler,
    ExampleTransform,
    load_raw_dataset,
)
from .model import build_model, model_config
from .task import Task

logger = logging.getLogger("vit_hf.train")

CURVES_PNG = "training_curves.png"
SIMMIM_CROP_SCALE = (0.67, 1.0)  # SimMIM's data_simmim.py and run_mim.py; the crop ratio (3/4, 4/3) is ours already
MASK_STREAM = 0x4D494D  # separates the mask RNG from the augmentation RNG of the same example
# Flags whose meaning is classification's; refused with --task mim rather than silently ignored.
CLASSIFICATION_ONLY = {"lora_r": None, "mixup": 0.0, "cutmix": 0.0, "label_smoothing": 0.0, "streaming": False}


# ----------------------------------------------------------------------------------------------------------------------
# Masks
# ----------------------------------------------------------------------------------------------------------------------


class MaskGenerator:
    """SimMIM's random mask as run_mim.py's `MaskGenerator` draws it: of the N squares of side `mask_patch_size`
    tiling the image, the first ceil(ratio * N) of a random permutation are masked; each square then covers
    (mask_patch_size / patch)^2 model patches. `__call__(rng)` returns the (gh * gw,) boolean mask over the model's
    patch tokens, row-major; given `np.random.RandomState(s)` it draws what run_mim's does after `np.random.seed(s)`.
    """

    def __init__(self, image_hw: tuple[int, int], mask_patch_size: int, patch_hw: tuple[int, int], mask_ratio: float):
        (h, w), (ph, pw), m = image_hw, patch_hw, mask_patch_size
        fits = [k for k in range(1, math.gcd(h, w) + 1) if not (h % k or w % k or k % ph or k % pw)]
        hint = f"e.g. {max([k for k in fits if k <= m] or fits)}" if fits else "none fits: change --image_size"
        if m <= 0 or h % m or w % m or m % ph or m % pw:
            raise ValueError(f"--mask_patch_size {m} must divide the image size {h}x{w} and be a multiple of the "
                             f"model's patch size {ph}x{pw} ({hint})")
        self.grid, self.scale = (h // m, w // m), (m // ph, m // pw)
        self.num_masked = math.ceil(self.grid[0] * self.grid[1] * mask_ratio)  # np.ceil in run_mim: same double

    @property
    def masked_patches(self) -> int:
        """Model patches masked in every image."""
        return self.num_masked * self.scale[0] * self.scale[1]

    def __call__(self, rng: np.random.RandomState) -> torch.Tensor:
        (gh, gw), (sh, sw) = self.grid, self.scale
        coarse = torch.zeros(gh * gw, dtype=torch.bool)
        coarse[torch.from_numpy(rng.permutation(gh * gw)[: self.num_masked])] = True
        return repeat(coarse, "(gh gw) -> (gh sh gw sw)", gh=gh, sh=sh, sw=sw)


def mask_rng(seed: int, epoch: int | None, index: int) -> np.random.RandomState:
    """The mask RNG of one example: train masks change every epoch, the eval mask (`epoch` None) never does."""
    return np.random.RandomState([seed % 2**32, 0 if epoch is None else epoch + 1, index, MASK_STREAM])


# ----------------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class MimData:
    """Train (and, if any, validation) images; the labels of a labelled set are dropped."""

    train: Any  # datasets.Dataset with the image column and INDEX_COLUMN
    validation: Any  # the same, or None: no evaluation
    image_column: str
    source: str = ""
    notes: list[str] = field(default_factory=list)
    masks: MaskGenerator | None = None  # set once the model (its patch size) is known
    labels: list[str] = field(default_factory=list)  # none; read by the loop's shared logging


def _image_split(split, column: str, where: str):
    from datasets import Image

    if column not in split.column_names:
        raise DataError(f"{where}: no image column {column!r} (columns: {split.column_names}); pass "
                        f"--image_column_name")
    if isinstance(split.features[column], Image):
        split = split.cast_column(column, Image(decode=False))  # decoded in the transform: broken files are skipped
    split = split.remove_columns([c for c in split.column_names if c != column])
    return split.add_column(INDEX_COLUMN, list(range(len(split))))


def load_data(args: argparse.Namespace, seed: int) -> MimData:
    """An image folder (class subfolders or none), a Hub id or a saved data set; validation: a named split, else
    `--train_val_split` of train (0: none)."""
    from datasets import DatasetDict

    source = args.dataset_name or args.train_dir
    raw = load_raw_dataset(args.dataset_name, args.dataset_config_name, args.train_dir, args.validation_dir,
                           args.cache_dir, args.hub_token)
    raw = raw if isinstance(raw, DatasetDict) else DatasetDict(train=raw)
    if "train" not in raw or len(raw["train"]) == 0:
        raise DataError(f"{source}: no training images (splits: {list(raw)})")
    train, notes = raw["train"], []
    validation = next((raw[name] for name in VALIDATION_SPLIT_NAMES if name in raw), None)
    if validation is None and args.train_val_split > 0:
        parts = train.train_test_split(args.train_val_split, seed=seed)
        train, validation = parts["train"], parts["test"]
        notes.append(f"validation split: {args.train_val_split:.0%} of train (seed {seed})")
    if args.max_train_samples is not None and args.max_train_samples < len(train):
        train = train.shuffle(seed=seed).select(range(args.max_train_samples))
    if validation is not None and args.max_eval_samples is not None and args.max_eval_samples < len(validation):
        validation = validation.shuffle(seed=seed).select(range(args.max_eval_samples))
    column = args.image_column_name
    train = _image_split(train, column, f"{source} train")
    validation = _image_split(validation, column, f"{source} validation") if validation is not None else None
    if validation is None:
        notes.append("no validation split (--train_val_split 0): no evaluation, no eval_loss")
    return MimData(train, validation, column, source, notes)


def describe(data: MimData) -> str:
    """The plan's examples line."""
    val = len(data.validation) if data.validation is not None else 0
    m = data.masks
    return (f"train {len(data.train)}, validation {val} images (labels ignored); masks: {m.num_masked} of "
            f"{m.grid[0] * m.grid[1]} squares of {m.scale[0]}x{m.scale[1]} patches ({m.masked_patches} patches)")


class MimTransform(ExampleTransform):
    """`ExampleTransform` (decode, seeded augmentation, broken images marked) plus each example's mask; a broken image
    gets an empty mask, so it adds nothing to the loss."""

    def __init__(self, processor, image_column: str, train: bool, seed: int, masks: MaskGenerator):
        super().__init__(processor, image_column, None, train=train, seed=seed)
        self.masks = masks

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        out: dict[str, list] = {"pixel_values": [], "bool_masked_pos": [], "valid": [], "index": batch[INDEX_COLUMN]}
        for value, index in zip(batch[self.image_column], batch[INDEX_COLUMN]):
            x = self._one(value, index)
            mask = self.masks(mask_rng(self.seed, self.epoch if self.train else None, index))
            out["pixel_values"].append(x if x is not None else torch.zeros(self.shape))
            out["bool_masked_pos"].append(mask if x is not None else torch.zeros_like(mask))
            out["valid"].append(x is not None)
        return out


def collate_fn(examples: list[dict]) -> dict[str, torch.Tensor]:
    return {
        "pixel_values": torch.stack([e["pixel_values"] for e in examples]),
        "bool_masked_pos": torch.stack([e["bool_masked_pos"] for e in examples]),
        "valid": torch.tensor([e["valid"] for e in examples], dtype=torch.bool),
        "index": torch.tensor([e["index"] for e in examples], dtype=torch.long),
    }


def make_loaders(args: argparse.Namespace, data: MimData, processor, seed: int):
    """(train loader, validation loader or None, sampler, train transform), as `classification.make_loaders`. The
    train crop is SimMIM's unless --train_crop_scale is given; the saved processor keeps its own (fine-tuning)
    defaults."""
    train_processor = copy.deepcopy(processor)
    if args.train_crop_scale is None:
        train_processor.train_crop_scale = list(SIMMIM_CROP_SCALE)
    train_transform = MimTransform(train_processor, data.image_column, True, seed, data.masks)
    sampler = EpochShuffleSampler(len(data.train), seed=seed)
    train_dl = torch.utils.data.DataLoader(data.train.with_transform(train_transform), sampler=sampler,
                                           batch_size=args.per_device_train_batch_size, collate_fn=collate_fn,
                                           num_workers=args.dataloader_num_workers)
    eval_dl = None
    if data.validation is not None:
        eval_transform = MimTransform(processor, data.image_column, False, seed, data.masks)
        eval_dl = torch.utils.data.DataLoader(data.validation.with_transform(eval_transform),
                                              batch_size=args.per_device_eval_batch_size, collate_fn=collate_fn,
                                              num_workers=args.dataloader_num_workers)
    return train_dl, eval_dl, sampler, train_transform


# ----------------------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------------------


def _loading_note(name: str, missing: set[str], unexpected: set[str]) -> str | None:
    new, dropped = sorted(missing), sorted(unexpected)
    if not new and not dropped:
        return None
    return (f"{name}: encoder reused; initialised new: {', '.join(new) or 'nothing'}; dropped: "
            f"{', '.join(dropped) or 'nothing'}")


def build_model_and_processor(args: argparse.Namespace, data: MimData):
    """(VitHfForMaskedImageModeling, processor, base_model id or None, notes): a preset from scratch, or a folder /
    Hub id (a classifier gets a new mask token and decoder, its head dropped). No labels: `num_labels` 0, so a
    classifier fine-tuned from the result always gets a new head. Sets `data.masks` for the model's patch grid."""
    from ..modeling_vit_hf import VitHfForMaskedImageModeling

    built = build_model(args, VitHfForMaskedImageModeling, num_labels=0)
    model, notes = built.model, built.notes
    if built.notes and built.notes[0].startswith("from scratch"):
        notes[0] = "masked-image modeling " + notes[0]
    else:
        notes[:0] = filter(None, [_loading_note(args.model_name_or_path, built.missing, built.unexpected)])
        model.config.num_labels = 0  # the folder's labels (if a classifier) do not describe this model
    data.masks = MaskGenerator(model.config.image_hw, args.mask_patch_size, model.config.patch_hw, args.mask_ratio)
    return model, built.processor, built.base_model, notes


# ----------------------------------------------------------------------------------------------------------------------
# Loss, evaluation, results
# ----------------------------------------------------------------------------------------------------------------------


def loss(model, batch: dict) -> torch.Tensor:
    """The model's SimMIM loss (L1 over the masked pixels); broken images carry an empty mask."""
    return model(pixel_values=batch["pixel_values"], bool_masked_pos=batch["bool_masked_pos"]).loss.float()


def per_example_loss(reconstruction: torch.Tensor, pixel_values: torch.Tensor, mask: torch.Tensor,
                     patch_hw: tuple[int, int]) -> torch.Tensor:
    """Each image's L1 over its masked pixels and channels. With equal mask counts (every valid image has
    `MaskGenerator.masked_patches`), their mean is the model's batch loss."""
    ph, pw = patch_hw
    gh = pixel_values.shape[-2] // ph
    pixels = repeat(mask, "b (gh gw) -> b 1 (gh ph) (gw pw)", gh=gh, ph=ph, pw=pw).float()
    l1 = F.l1_loss(reconstruction.float(), pixel_values.float(), reduction="none")
    return (l1 * pixels).sum((1, 2, 3)) / (pixels.sum((1, 2, 3)) * pixel_values.shape[1]).clamp(min=1.0)


@torch.no_grad()
def evaluate(model, dataloader, accelerator) -> dict[str, Any]:
    """Mean masked L1 over the valid validation images, each counted once across processes."""
    model.eval()
    patch_hw = tuple(accelerator.unwrap_model(model).config.patch_hw)
    losses, valid_all, index_all = [], [], []
    start = time.perf_counter()
    for batch in dataloader:
        out = model(pixel_values=batch["pixel_values"], bool_masked_pos=batch["bool_masked_pos"])
        per = per_example_loss(out.reconstruction, batch["pixel_values"], batch["bool_masked_pos"], patch_hw)
        per, valid, index = accelerator.gather_for_metrics((per, batch["valid"], batch["index"]))
        losses.append(per.cpu())
        valid_all.append(valid.cpu())
        index_all.append(index.cpu())
    seconds = time.perf_counter() - start
    model.train()
    per, valid, index = torch.cat(losses), torch.cat(valid_all), torch.cat(index_all)
    n_valid = int(valid.sum())
    return {"loss": float(per[valid].mean()) if n_valid else float("nan"), "samples": int(valid.numel()),
            "unique_samples": int(index.unique().numel()), "valid_samples": n_valid,
            "skipped_images": int(valid.numel()) - n_valid, "images_per_second": valid.numel() / max(seconds, 1e-9)}


def _results_markdown(results: dict) -> str:
    rows = [("validation masked L1 loss", results.get("eval_loss", "no validation split")),
            ("mask patch size / ratio", f"{results['mask_patch_size']} / {results['mask_ratio']}"),
            ("masked model patches per image", results["masked_patches_per_image"]),
            ("optimizer steps", results["completed_steps"]), ("mixed precision", results["mixed_precision"])]
    return "\n".join(["| SimMIM pretraining | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])


# ----------------------------------------------------------------------------------------------------------------------
# The task
# ----------------------------------------------------------------------------------------------------------------------


class MimTask(Task):
    name = "mim"
    help = "mim: SimMIM pretraining of VitHfForMaskedImageModeling on images whose labels, if any, are ignored"
    # Flags whose meaning is classification's; refused with --task mim rather than silently ignored.
    CLASSIFICATION_ONLY = {"lora_r": None, "mixup": 0.0, "cutmix": 0.0, "label_smoothing": 0.0, "streaming": False}

    @classmethod
    def add_arguments(cls, group) -> None:
        group.add_argument("--mask_patch_size", type=int, default=32, help="side of the square mask patches "
                           "(run_mim.py's; a multiple of the model's patch size that divides the image size)")
        group.add_argument("--mask_ratio", type=float, default=0.6, help="fraction of the mask patches masked "
                           "(rounded up)")

    @classmethod
    def check_arguments(cls, args: argparse.Namespace) -> str | None:
        given = [f"--{k}" for k, off in cls.CLASSIFICATION_ONLY.items() if getattr(args, k) != off]
        if given:
            return f"{', '.join(given)}: classification only; --task mim trains every weight on the masked L1 loss"
        if not 0.0 < args.mask_ratio < 1.0:
            return f"--mask_ratio must be in (0, 1), e.g. 0.6; got {args.mask_ratio}"
        if not 0.0 <= args.train_val_split < 1.0:
            return f"--train_val_split must be in [0, 1) with --task mim (0: no validation); got {args.train_val_split}"
        try:
            config = model_config(args)
            MaskGenerator(tuple(config.image_hw), args.mask_patch_size, tuple(config.patch_hw), args.mask_ratio)
        except (ValueError, OSError) as err:
            return str(err)
        return None

    def load_data(self, seed: int) -> MimData:
        return load_data(self.args, seed)

    def build_model(self, data: MimData):
        return build_model_and_processor(self.args, data)

    def make_loaders(self, data: MimData, processor, seed: int):
        return make_loaders(self.args, data, processor, seed)

    def describe(self, data: MimData) -> str:
        return describe(data)

    def identity(self, data: MimData) -> dict[str, Any]:
        return {"mask_patch_size": self.args.mask_patch_size, "mask_ratio": self.args.mask_ratio}

    def loss(self, run, batch: dict) -> torch.Tensor:
        return loss(run.model, batch)

    def evaluate(self, run, model) -> dict[str, Any]:
        return evaluate(model, run.eval_dl, run.accelerator)

    def eval_entry(self, metrics: dict, raw: dict | None) -> tuple[dict, str]:
        entry = {"eval_loss": metrics["loss"]}
        if raw is not None:
            entry.update(eval_loss_raw=raw["loss"], eval_loss_ema=metrics["loss"])
        raw_part = f" (raw weights {raw['loss']:.4f})" if raw is not None else ""
        line = (f"eval masked L1 loss {metrics['loss']:.4f}{raw_part} ({metrics['valid_samples']} images, "
                f"{metrics['images_per_second']:.0f} images/s)")
        return entry, line

    def results(self, run) -> dict[str, Any]:
        state, metrics = run.state, run.state.eval_metrics
        evals = {}
        if metrics is not None:
            evals = {"eval_loss": metrics["loss"], "eval_samples": metrics["samples"],
                     "eval_valid_samples": metrics["valid_samples"], "eval_skipped_images": metrics["skipped_images"],
                     "eval_images_per_second": metrics["images_per_second"]}
            if state.eval_raw is not None:
                evals.update(eval_loss_raw=state.eval_raw["loss"], eval_loss_ema=metrics["loss"])
        return {"task": "mim", **evals, "mask_patch_size": self.args.mask_patch_size,
                "mask_ratio": self.args.mask_ratio, "masked_patches_per_image": run.data.masks.masked_patches,
                "train_samples": len(run.data.train)}

    def card(self, run, results: dict, out: Path) -> tuple[dict, dict[str, Path]]:
        from .plots import plot_training_curves

        plot_training_curves(run.state.history, out / CURVES_PNG)
        card = {"tags": ["masked-image-modeling", "simmim"], "plots": [CURVES_PNG],
                "pipeline_tag": "image-feature-extraction", "results": _results_markdown(results)}
        return card, {CURVES_PNG: out / CURVES_PNG}

    def summary(self, results: dict) -> str:
        return f"eval_loss {results.get('eval_loss', '(no validation)')}"
