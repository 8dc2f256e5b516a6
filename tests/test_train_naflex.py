"""`vit_hf.train` fine-tunes a NaFlex model (SigLIP2's variable aspect ratio) end to end, CPU, offline: a tiny
transformers `Siglip2VisionModel` converted by `convert`, an image folder of landscape, portrait and square images
(colour-coded classes), batches of mixed grids padded to the processor's `max_num_patches`, the run learns, the
output folder reloads (vit_hf's classes and remote code) and re-predicts what the run evaluated, resume is
bit-exact, and the flags that need fixed-size images are refused in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

transformers = pytest.importorskip("transformers")

from helpers import assert_same_weights, data_args  # noqa: E402

from vit_hf import VitHfForImageClassification, VitHfImageProcessor  # noqa: E402
from vit_hf import train as train_mod  # noqa: E402
from vit_hf.registration import unregistered  # noqa: E402
from vit_hf.train.args import parse_args  # noqa: E402
from vit_hf.train.tasks import TASKS  # noqa: E402

COLOURS = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (50, 60, 200)}
# (height, width): landscape 2:1 and 3:1, portrait 1:2 and 1:3, square; each class gets every shape
SHAPES = ((24, 48), (48, 24), (32, 32), (20, 60), (60, 20))
LIMIT, PATCH = 24, 4  # the processor's max_num_patches and patch side: grids 3x7, 7x3, 4x4, 2x8, 8x2 ... padded to 24
TRAIN = ["--learning_rate", "3e-3", "--num_train_epochs", "2", "--per_device_train_batch_size", "8", "--seed", "0",
         "--logging_steps", "1", "--dataloader_num_workers", "0"]


def make_folder(root: Path, split: str, per_class: int, seed: int) -> None:
    """Noisy images of a class colour (sd 60 around it) in every shape: the class is in the colour, not the shape."""
    rng = np.random.default_rng(seed)
    for c, (name, rgb) in enumerate(COLOURS.items()):
        (root / split / name).mkdir(parents=True)
        for i in range(per_class):
            h, w = SHAPES[(i + c) % len(SHAPES)]
            pixels = np.clip(np.array(rgb) + rng.normal(0, 60, (h, w, 3)), 0, 255).astype(np.uint8)
            PIL.Image.fromarray(pixels).save(root / split / name / f"{i}.png")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """train: 16 images per class; validation: 8 per class (24: chance is 1/3)."""
    root = tmp_path_factory.mktemp("naflex_images")
    make_folder(root, "train", 16, seed=0)
    make_folder(root, "validation", 8, seed=1)
    return root


@pytest.fixture(scope="module")
def naflex_model(tmp_path_factory) -> Path:
    """A tiny transformers Siglip2VisionModel (transformers' own init) with its Siglip2ImageProcessorPil, converted by
    the project's converter: a vit_hf NaFlex folder without a head (hf_siglip2 positions, MAP pooling)."""
    from transformers.models.siglip2.image_processing_pil_siglip2 import Siglip2ImageProcessorPil

    from convert.transformers import convert_transformers_folder

    root = tmp_path_factory.mktemp("naflex_model")
    torch.manual_seed(0)
    config = transformers.Siglip2VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                              num_attention_heads=4, num_patches=16, patch_size=PATCH)
    transformers.Siglip2VisionModel(config).save_pretrained(root / "src")
    Siglip2ImageProcessorPil(patch_size=PATCH, max_num_patches=LIMIT).save_pretrained(root / "src")
    convert_transformers_folder(root / "src", root / "out", verify=False)  # parity: tests/test_naflex.py
    return root / "out"


def naflex_args(model: Path, images: Path, out: Path, *extra: str) -> list[str]:
    return ["--model_name_or_path", str(model), *data_args(images), "--output_dir", str(out), *TRAIN, *extra]


@pytest.fixture(scope="module")
def trained(naflex_model, images, tmp_path_factory) -> tuple[Path, dict]:
    """2 epochs of 6 batches of 8 (12 optimizer steps), checkpoints every 3 (mid-epoch ones too)."""
    out = tmp_path_factory.mktemp("naflex_run") / "out"
    results = train_mod.main(naflex_args(naflex_model, images, out, "--checkpointing_steps", "3"))
    return out, results


@pytest.mark.parametrize("height, width", [(300, 900), (900, 300), (500, 500), (40, 1000)])
def test_train_crops_draw_what_timms_naflex_crop_draws(height, width):
    """`naflex_crop_box` samples as timm's RandomResizedCropToSequence.get_params (area fraction uniform in `scale`,
    aspect ratio the image's own times a log-uniform factor in `ratio`, ten tries, then the whole image), from
    torch's RNG instead of Python's: the same distributions over 2000 draws each (means within 0.02, about 3 standard
    errors; same rejection rate), and each crop resized to timm's grid for it (`get_image_size_for_seq`)."""
    import random

    from timm.data.naflex_transforms import RandomResizedCropToSequence, get_image_size_for_seq

    from vit_hf.naflex_processing_vit_hf import naflex_crop_box, naflex_image_size

    scale, ratio, n = (0.08, 1.0), (3 / 4, 4 / 3), 2000
    torch.manual_seed(0)
    ours = [(top, left, bottom - top, right - left)
            for left, top, right, bottom in (naflex_crop_box(width, height, scale, ratio) for _ in range(n))]
    random.seed(0)
    image = torch.zeros(3, height, width)
    theirs = [RandomResizedCropToSequence.get_params(image, scale, ratio, patch_h=PATCH, patch_w=PATCH,
                                                     max_seq_len=LIMIT)[0] for _ in range(n)]

    def stats(crops):
        crops = np.array(crops, dtype=np.float64)
        area = crops[:, 2] * crops[:, 3] / (height * width)
        factor = np.log(crops[:, 3] / crops[:, 2] / (width / height))
        whole = np.mean(area == 1.0)
        inside = (crops[:, 0] >= 0).all() and (crops[:, 0] + crops[:, 2] <= height).all() and \
            (crops[:, 1] >= 0).all() and (crops[:, 1] + crops[:, 3] <= width).all()
        return area.mean(), factor.mean(), factor.std(), whole, factor.min(), factor.max(), inside

    mine, timm_ = stats(ours), stats(theirs)
    assert mine[6] and timm_[6]
    np.testing.assert_allclose(mine[:4], timm_[:4], atol=0.02)
    slack = 1.5 / min(height, width) * 2  # rounding of a crop side to whole pixels
    assert np.log(ratio[0]) - slack <= mine[4] and mine[5] <= np.log(ratio[1]) + slack
    for _, _, h, w in ours[:200]:
        assert naflex_image_size(h, w, PATCH, LIMIT) == get_image_size_for_seq((h, w), PATCH, LIMIT)[1]


def test_batches_hold_mixed_grids_padded_to_the_processor_limit(naflex_model, images, tmp_path):
    """The classification task's own loaders: every train batch mixes grids (aspect kept, timm's crop and the flip),
    rows padded to max_num_patches with the mask covering each grid; evaluation sees the processor's own output."""
    args = parse_args(naflex_args(naflex_model, images, tmp_path / "o"))
    task = TASKS["classification"](args)
    data = task.load_data(seed=0)
    _, processor, _, _ = task.build_model(data)
    train_dl, eval_dl, _, _ = task.make_loaders(data, processor, seed=0)
    for batch in train_dl:
        shapes = batch["spatial_shapes"]
        assert batch["pixel_values"].shape == (len(shapes), LIMIT, PATCH * PATCH * 3)
        assert len({tuple(s) for s in shapes.tolist()}) > 1, shapes.tolist()  # mixed grids in one batch
        assert batch["pixel_attention_mask"].sum(1).tolist() == shapes.prod(1).tolist()  # the mask covers the grid
        assert shapes.prod(1).max() <= LIMIT and batch["valid"].all()
    batch = next(iter(eval_dl))
    rows = data.validation.select(range(len(batch["labels"])))[data.image_column]
    expected = processor([PIL.Image.open(r["path"]) for r in rows])
    for key in ("pixel_values", "pixel_attention_mask", "spatial_shapes"):
        assert torch.equal(batch[key], torch.as_tensor(expected[key])), key
    assert len({tuple(s) for s in batch["spatial_shapes"].tolist()}) > 1


def test_fine_tuning_learns_and_the_saved_folder_predicts_what_the_run_evaluated(trained, images):
    """Accuracy well above chance (1/3): training seeds 0-3 all measured 1.0 on these colours, after the first epoch
    already; 0.9 (22 of 24) leaves room for a slower seed, and no model that learnt nothing reaches it (22 of 24
    balanced images right by guessing: p < 1e-8). The folder, reloaded, recomputes the run's accuracy, confusion matrix
    and loss from the validation images through its own processor."""
    out, results = trained
    assert results["eval_accuracy"] >= 0.9, results["eval_accuracy"]
    losses = [e["loss"] for e in json.loads((out / "log_history.json").read_text()) if "loss" in e]
    assert sum(losses[-3:]) < 0.5 * sum(losses[:3]), losses
    processor = VitHfImageProcessor.from_pretrained(out)
    assert processor.max_num_patches == LIMIT
    model = VitHfForImageClassification.from_pretrained(out).eval()
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    paths = sorted((images / "validation").rglob("*.png"))
    targets = torch.tensor([labels.index(p.parent.name) for p in paths])
    inputs = processor([PIL.Image.open(p) for p in paths])
    assert len({tuple(s) for s in inputs["spatial_shapes"].tolist()}) == len(SHAPES)  # one grid per image shape
    with torch.no_grad():
        logits = model(**inputs).logits
    confusion = torch.zeros(len(labels), len(labels), dtype=torch.long)
    confusion.index_put_((targets, logits.argmax(-1)), torch.ones(len(paths), dtype=torch.long), accumulate=True)
    assert confusion.tolist() == results["eval_confusion_matrix"]
    loss = torch.nn.functional.cross_entropy(logits, targets).item()
    assert loss == pytest.approx(results["eval_loss"], rel=1e-5, abs=1e-7)
    with unregistered():  # the folder's own remote code, as a user without vit_hf loads it
        auto = transformers.AutoModelForImageClassification.from_pretrained(out, trust_remote_code=True).eval()
        auto_processor = transformers.AutoImageProcessor.from_pretrained(out, trust_remote_code=True)
    assert type(auto).__module__.startswith("transformers_modules.")
    with torch.no_grad():
        remote = auto(**auto_processor([PIL.Image.open(p) for p in paths], return_tensors="pt")).logits
    assert torch.equal(remote, logits)


def test_resume_is_bit_exact_and_another_patch_budget_is_refused(trained, naflex_model, images, tmp_path, capsys):
    out, results = trained
    resumed = tmp_path / "resumed"
    again = train_mod.main(naflex_args(naflex_model, images, resumed, "--resume_from_checkpoint",
                                       str(out / "step_3")))
    assert again["completed_steps"] == results["completed_steps"] == 12
    assert_same_weights(out, resumed)
    assert again["eval_accuracy"] == results["eval_accuracy"]
    recorded = json.loads((out / "step_3" / "trainer_state.json").read_text())["run"]
    assert recorded["naflex"] == {"max_num_patches": LIMIT, "patch_size": PATCH}
    # the same model with another max_num_patches: its checkpoint is not this run's
    other = tmp_path / "other_budget"
    shutil.copytree(naflex_model, other)
    config = json.loads((other / "preprocessor_config.json").read_text())
    (other / "preprocessor_config.json").write_text(json.dumps({**config, "max_num_patches": 20}))
    with pytest.raises(SystemExit) as exit_info:
        train_mod.main(naflex_args(other, images, tmp_path / "o", "--resume_from_checkpoint", str(out / "step_3")))
    assert exit_info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("vit_hf.train:")]
    assert lines[1] == ("vit_hf.train: checkpoint input NaFlex, max_num_patches 24 of 4px patches; this run NaFlex, "
                        "max_num_patches 20 of 4px patches (the model's preprocessor_config.json)"), lines
    assert len(lines) == 3 and not (tmp_path / "o").exists()  # that difference only; nothing written


@pytest.mark.parametrize("flags, named", [
    (["--mixup", "0.8"], "--mixup 0.8"), (["--cutmix", "1.0"], "--cutmix 1.0"),
    (["--image_size", "32"], "--image_size"), (["--crop_pct", "0.9"], "--crop_pct"),
    (["--task", "mim", "--mask_patch_size", "8"], "--task mim"),
])
def test_fixed_size_flags_are_refused_in_one_line(naflex_model, images, tmp_path, capsys, flags, named):
    """Before any data is read or anything written: exit 2, one line naming the flag."""
    with pytest.raises(SystemExit) as exit_info:
        train_mod.main(naflex_args(naflex_model, images, tmp_path / "o", *flags))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()  # refused before any model is loaded: no progress bar either
    assert len(err.splitlines()) == 1 and "is a NaFlex model" in err and named in err, err
    assert not (tmp_path / "o").exists()
