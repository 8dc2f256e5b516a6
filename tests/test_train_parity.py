"""`vit_hf.train` learns as well as forty lines of plain PyTorch given the same model, data and recipe.

Real data: scikit-learn's handwritten digits, 8x8 upscaled (nearest) to 16x16 RGB, written as PNG image folders whose
class names do not sort in numeric order (the plain loop maps them by name, `vit_hf.train` by its own label logic, so
a label-mapping slip shows). A small ViT with fixed 2-D sin-cos positions. The plain loop below shares nothing with
`vit_hf.train` but the starting weights: its own tensors, parameter groups, schedule, head init and shuffling.

Two kinds of test, for two kinds of defect:
- Mechanics (`test_same_batches_same_losses`, exact): fed the same batches, the two loops' per-step losses agree to
  float rounding. A wrong schedule, parameter group, step accounting or transform changes the losses within a few
  steps, whatever the CPU.
- Accuracy (`test_from_scratch_*`, `test_finetuning_*`, statistical): what the mechanics test cannot see (the new
  head's init, the label mapping, the data pipeline, evaluation) shows as a loop that learns worse. One training run
  per loop, and `vit_hf.train` must not land more than a margin below the plain loop. fp32 kernels differ between CPU
  generations (AVX2, AVX-512, AVX-512-BF16, ARM, and thread counts), which makes every run a different trajectory, as
  another seed does: so the margin is set from the seed-to-seed spread of the difference, measured below, and not
  from one machine's pair of numbers.

Measured spread (this machine: 2 cores with AVX-512, BF16, FP16 and VNNI; fp32; one torch thread per run, as under
pytest-xdist; both loops from the same starting weights; validation accuracy after 15 epochs, in points):

| runs | plain loop | vit_hf.train | same-seed difference | worst pair |
|---|---|---|---|---|
| from scratch, seeds 0-15 | 94.05 +- 0.96 (92.5-96.1) | 94.15 +- 2.28 (88.6-96.1) | +0.10 +- 2.41 (-5.6..+2.8) | -7.5 |
| fine-tuning, seeds 0-7 | 95.76 +- 1.36 (94.4-98.3) | 95.49 +- 0.69 (94.4-96.7) | -0.28 +- 1.11 (-1.7..+1.1) | -3.9 |

No sign of a gap in the means; the former two-sided single-seed check at 2 points failed on 6 of the 16 from-scratch
seeds here.
MARGIN_FROM_SCRATCH (10 points) is 4.1 standard deviations of the same-seed difference, and none of the 256 pairings
of a vit_hf.train run with a plain-loop run comes within 2.5 points of it; MARGIN_FINETUNING (6 points) is 5.4
standard deviations, 2.1 points beyond the worst of the 64 pairings (and beyond the widest range recorded before,
on another machine with two threads: plain 94.4-95.6 %, vit_hf.train 91.1-96.7 % over seeds 0-2). vit_hf.train's
from-scratch runs have the wider spread (4 of 16 end below 92 %, after a slow escape from chance); their mean is the
plain loop's.
What a loop that learns worse gives (plain loop, seed 0, from scratch): a zero-initialised new head 51.1 % (43 points
down), a label slip (train labels by sorted folder name) 10.0 %, a cosine schedule that ends after the first epoch
10.3 %: all far beyond the margins.
The first epoch is at chance (10 %) in all 32 from-scratch runs of both loops, the second in 11 of 16 plain-loop runs
and 13 of 16 vit_hf.train runs: that is the recipe (warm-up over the first 1.5 epochs from random weights), not a
difference between the loops.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vit_hf import VitHfConfig, VitHfForImageClassification
from vit_hf import train as train_mod
from vit_hf.train.data import EpochShuffleSampler

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
SIDE = 16
RECIPE = dict(learning_rate=1e-3, weight_decay=0.05, warmup_fraction=0.1, batch_size=32, epochs=15)
# How far below the plain loop `vit_hf.train` may end: from the measured spread (module docstring)
MARGIN_FROM_SCRATCH = 0.10
MARGIN_FINETUNING = 0.06


# ----------------------------------------------------------------------------------------------------------------------
# Data and starting weights
# ----------------------------------------------------------------------------------------------------------------------


def write_digits(root: Path, classes: tuple[int, ...]) -> Path:
    """Stratified 80/20 split (seed 0) of the given digit classes as root/{train,validation}/<name>/<i>.png."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    keep = np.isin(digits.target, classes)
    images = (digits.images[keep] * 255 / 16).round().astype(np.uint8)
    images = images.repeat(SIDE // 8, axis=1).repeat(SIDE // 8, axis=2)  # nearest upscaling
    splits = train_test_split(images, digits.target[keep], test_size=0.2, random_state=0,
                              stratify=digits.target[keep])
    for split, x, y in (("train", splits[0], splits[2]), ("validation", splits[1], splits[3])):
        for i, (array, label) in enumerate(zip(x, y)):
            folder = root / split / NAMES[label]
            folder.mkdir(parents=True, exist_ok=True)
            PIL.Image.fromarray(np.stack([array] * 3, axis=-1)).save(folder / f"{i:04d}.png")
    return root


def read_split(folder: Path, classes: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain loop's own reader: pixels to [-1, 1] (the 0.5/0.5 normalisation), labels by folder name."""
    files = sorted(folder.glob("*/*.png"))
    x = np.stack([np.asarray(PIL.Image.open(f).convert("RGB")) for f in files]).astype(np.float32)
    labels = torch.tensor([classes.index(f.parent.name) for f in files])
    return torch.from_numpy(x).permute(0, 3, 1, 2) / 127.5 - 1, labels


def sincos_table(side: int, dim: int) -> torch.Tensor:
    """MoCo-v3 / big_vision 2-D sin-cos positions for a side x side grid, (side * side, dim)."""
    y, x = torch.meshgrid(torch.arange(side, dtype=torch.float64), torch.arange(side, dtype=torch.float64),
                          indexing="ij")
    omega = 1.0 / 10_000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4 - 1))
    y, x = y.flatten()[:, None] * omega, x.flatten()[:, None] * omega
    return torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1).float()


def random_vit(folder: Path, seed: int = 0) -> Path:
    """The parity model (width 96, depth 4, 4 heads, patch 4, class token), positions set to a sin-cos table."""
    torch.manual_seed(seed)
    config = VitHfConfig(image_size=SIDE, patch_size=4, hidden_size=96, num_hidden_layers=4, num_attention_heads=4,
                         intermediate_size=384, num_labels=10)
    model = VitHfForImageClassification(config)
    with torch.no_grad():
        model.vit.pos_embed.zero_()
        model.vit.pos_embed[0, 1:] = sincos_table(SIDE // 4, 96)
    model.save_pretrained(folder)
    return folder


# ----------------------------------------------------------------------------------------------------------------------
# The plain loop
# ----------------------------------------------------------------------------------------------------------------------


def warmup_cosine(total: int, warmup: int):
    return lambda step: step / warmup if step < warmup else 0.5 * (1 + math.cos(math.pi * (step - warmup) /
                                                                              (total - warmup)))


def plain_optimizer(model: nn.Module, recipe: dict, total_steps: int):
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "pos_embed" not in n and "cls_token" not in n]
    ids = {id(p) for p in decay}
    rest = [p for p in model.parameters() if id(p) not in ids]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": recipe["weight_decay"]},
                                   {"params": rest, "weight_decay": 0.0}], lr=recipe["learning_rate"])
    warmup = round(recipe["warmup_fraction"] * total_steps)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total_steps, warmup))


def plain_train(model_dir: Path, data: Path, recipe: dict, seed: int = 0) -> tuple[list[float], nn.Module]:
    """Train with plain PyTorch and a new head (as timm and transformers make one); returns (validation accuracy after
    each epoch, the trained model)."""
    torch.manual_seed(seed)
    model = VitHfForImageClassification.from_pretrained(model_dir, attn_implementation="eager")
    classes = [n for n in NAMES if (data / "train" / n).is_dir()]
    (x, y), (x_val, y_val) = read_split(data / "train", classes), read_split(data / "validation", classes)
    model.head = nn.Linear(model.config.hidden_size, len(classes))
    nn.init.trunc_normal_(model.head.weight, std=0.02)
    nn.init.zeros_(model.head.bias)
    model.config.id2label = dict(enumerate(classes))
    model.config.label2id = {n: i for i, n in enumerate(classes)}
    steps_per_epoch = math.ceil(len(x) / recipe["batch_size"])
    optimizer, scheduler = plain_optimizer(model, recipe, recipe["epochs"] * steps_per_epoch)
    accuracies = []
    for _ in range(recipe["epochs"]):
        model.train()
        for batch in torch.randperm(len(x)).split(recipe["batch_size"]):
            loss = F.cross_entropy(model(x[batch]).logits, y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
        model.eval()
        with torch.no_grad():
            accuracies.append((model(x_val).logits.argmax(-1) == y_val).float().mean().item())
    return accuracies, model


def vit_hf_train(model_dir: Path, data: Path, out: Path, recipe: dict, *extra: str) -> list[float]:
    """Train with `vit_hf.train`; returns its validation accuracy after each epoch (the last is `eval_accuracy`)."""
    steps = recipe["epochs"] * math.ceil(len(list((data / "train").glob("*/*.png"))) / recipe["batch_size"])
    results = train_mod.main([
        "--model_name_or_path", str(model_dir), "--train_dir", str(data / "train"),
        "--validation_dir", str(data / "validation"), "--output_dir", str(out), "--seed", "0",
        "--learning_rate", str(recipe["learning_rate"]), "--weight_decay", str(recipe["weight_decay"]),
        "--lr_scheduler_type", "cosine", "--num_warmup_steps", str(round(recipe["warmup_fraction"] * steps)),
        "--per_device_train_batch_size", str(recipe["batch_size"]), "--num_train_epochs", str(recipe["epochs"]),
        "--crop_pct", "1.0", "--train_crop_scale", "1.0", "1.0", "--train_hflip", "0", "--max_grad_norm", "0",
        "--mixed_precision", "no", "--attn_implementation", "eager", "--logging_steps", "1", *extra,
    ])
    history = json.loads((out / "log_history.json").read_text())
    accuracies = [entry["eval_accuracy"] for entry in history if "eval_accuracy" in entry and "epoch" in entry]
    assert accuracies and accuracies[-1] == results["eval_accuracy"]
    return accuracies


def compare(name: str, plain: list[float], ours: list[float], margin: float, floor: float) -> None:
    """The accuracy check: the plain loop learned (else the comparison says nothing), and `vit_hf.train` ends no more
    than `margin` below it. Both curves are printed, epoch by epoch, for the record and for a failure's reader."""
    print(f"{name}: per-epoch validation accuracy\n  plain  {' '.join(f'{a:.3f}' for a in plain)}\n"
          f"  vit_hf {' '.join(f'{a:.3f}' for a in ours)}")
    assert plain[-1] > floor, f"the plain loop itself did not learn ({plain[-1]:.4f}): the comparison would say nothing"
    assert ours[-1] >= plain[-1] - margin, (
        f"vit_hf.train ends at {ours[-1]:.4f}, more than {margin:.2f} below the plain loop's {plain[-1]:.4f} "
        f"(the measured seed-to-seed spread makes that a defect, not noise)"
    )


# ----------------------------------------------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def all_digits(tmp_path_factory) -> Path:
    return write_digits(tmp_path_factory.mktemp("digits10"), tuple(range(10)))


@pytest.mark.slow
@pytest.mark.timeout(1800)  # two 15-epoch trainings: a minute on a quiet 2-core machine, more on a busy one
def test_from_scratch_learns_as_the_plain_loop(all_digits, tmp_path):
    """From random weights, one run per loop (seed 0). A zero-initialised new head lands 43 points lower, a label
    slip at chance: both far outside MARGIN_FROM_SCRATCH (module docstring)."""
    start = random_vit(tmp_path / "start")
    plain, _ = plain_train(start, all_digits, RECIPE)
    ours = vit_hf_train(start, all_digits, tmp_path / "out", RECIPE)
    compare("from scratch", plain, ours, MARGIN_FROM_SCRATCH, floor=0.8)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_finetuning_learns_as_the_plain_loop(tmp_path):
    """A trunk trained on digits 0-4 (plain loop), fine-tuned on digits 5-9 with a new head by both loops, one run
    each (seed 0)."""
    source = write_digits(tmp_path / "source", (0, 1, 2, 3, 4))
    target = write_digits(tmp_path / "target", (5, 6, 7, 8, 9))
    source_accuracy, trained = plain_train(random_vit(tmp_path / "start"), source, RECIPE)
    assert source_accuracy[-1] > 0.8
    trained.save_pretrained(tmp_path / "pretrained")
    plain, _ = plain_train(tmp_path / "pretrained", target, RECIPE)
    ours = vit_hf_train(tmp_path / "pretrained", target, tmp_path / "out", RECIPE)
    compare("fine-tuning", plain, ours, MARGIN_FINETUNING, floor=0.85)


@pytest.mark.slow
def test_same_batches_same_losses(all_digits, tmp_path):
    """Fed the same batches in the same order (vit_hf's epoch permutation) from the same starting weights, head
    included, the plain loop and `vit_hf.train` take the same steps: per-step losses agree to float rounding across
    an epoch boundary. This rules out, by measurement, the parameter groups, the schedule's step accounting, the
    per-step reseeding and the train transform at crop scale 1 (the identity) as causes of a gap."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image

    classes = NAMES
    splits = {s: read_split(all_digits / s, classes) for s in ("train", "validation")}
    features = Features({"image": Image(), "label": ClassLabel(names=classes)})

    def to_dataset(x: torch.Tensor, y: torch.Tensor) -> Dataset:
        pixels = ((x + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
        return Dataset.from_dict({"image": [PIL.Image.fromarray(a) for a in pixels], "label": y.tolist()},
                                 features=features)

    DatasetDict({s: to_dataset(*xy) for s, xy in splits.items()}).save_to_disk(str(tmp_path / "data"))
    start = random_vit(tmp_path / "start")
    model = VitHfForImageClassification.from_pretrained(start, attn_implementation="eager")
    model.config.id2label, model.config.label2id = dict(enumerate(classes)), {n: i for i, n in enumerate(classes)}
    model.save_pretrained(start)  # the data set's labels: vit_hf.train keeps this head

    steps, recipe = 50, dict(RECIPE, epochs=2)  # 45 steps per epoch: the epoch boundary is crossed
    train_mod.main([
        "--model_name_or_path", str(start), "--dataset_name", str(tmp_path / "data"), "--output_dir",
        str(tmp_path / "out"), "--seed", "0", "--learning_rate", "1e-3", "--weight_decay", "0.05",
        "--lr_scheduler_type", "cosine", "--num_warmup_steps", "5", "--per_device_train_batch_size", "32",
        "--num_train_epochs", "2", "--crop_pct", "1.0", "--train_crop_scale", "1.0", "1.0", "--train_hflip", "0",
        "--max_grad_norm", "0", "--mixed_precision", "no", "--attn_implementation", "eager", "--logging_steps", "1",
        "--max_train_steps", str(steps),
    ])
    history = json.loads((tmp_path / "out" / "log_history.json").read_text())
    ours = torch.tensor([entry["loss"] for entry in history if "loss" in entry])

    x, y = splits["train"]
    optimizer, scheduler = plain_optimizer(model, dict(recipe, warmup_fraction=0.1), steps)  # 5 warm-up steps
    sampler, plain = EpochShuffleSampler(len(x), seed=0), []
    model.train()
    for epoch in range(2):
        sampler.set_epoch(epoch)
        for batch in torch.tensor(list(sampler)).split(32):
            loss = F.cross_entropy(model(x[batch]).logits, y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            plain.append(loss.item())
    plain = torch.tensor(plain[:steps])
    assert len(ours) == steps
    torch.testing.assert_close(ours, plain, rtol=0, atol=1e-4)
    assert (plain - math.log(10)).abs().max() > 0.05  # not a model stuck at uniform predictions
