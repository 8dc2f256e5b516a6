"""`python -m vit_hf.train --task mim` (SimMIM pretraining) end to end on real images (scikit-learn digits written as
image folders), CPU, offline: run_mim.py's mask semantics, the loss falls, exact resume after SIGKILL, the output
folder loads as remote code and its recorded eval_loss re-evaluates, and the result fine-tunes as a classifier."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (
    SMALL,
    assert_same_weights,
    data_args,
    digit_images,
    make_digits_folder,
    run_train,
    train_in_process,
)
from transformers import AutoModelForMaskedImageModeling

from vit_hf import VitHfConfig, VitHfForMaskedImageModeling, VitHfImageProcessor
from vit_hf import train as train_mod
from vit_hf.registration import unregistered
from vit_hf.train import _testing, mim
from vit_hf.train.args import parse_args
from vit_hf.train.data import _arrays_to_dataset

MIM = ["--task", "mim", *SMALL, "--mask_patch_size", "8", "--seed", "3", "--per_device_train_batch_size", "8"]
STEPS = ["--max_train_steps", "8", "--checkpointing_steps", "3", "--drop_path_rate", "0.1"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    """train: 40 real digits in class subfolders (labels to be ignored); validation: 13."""
    return make_digits_folder(tmp_path_factory.mktemp("digits"), {"train": 40, "validation": 13}, classes=(0, 1, 2))


@pytest.fixture(scope="module")
def pretrained(digits, tmp_path_factory) -> tuple[Path, str]:
    """A finished 8-step MIM run (checkpoints at steps 3 and 6) and its log."""
    out = tmp_path_factory.mktemp("mim") / "out"
    _, log = train_in_process([*MIM, *STEPS, *data_args(digits), "--output_dir", str(out)])
    return out, log


# ----------------------------------------------------------------------------------------------------------------------
# Masks
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "image_hw, mask_patch, patch_hw, ratio",
    [((192, 192), 32, (4, 4), 0.6), ((16, 16), 8, (4, 4), 0.6), ((32, 64), 16, (8, 4), 0.3),
     ((16, 16), 4, (4, 4), 0.5)],
)
def test_mask_generator_draws_what_run_mim_draws(image_hw, mask_patch, patch_hw, ratio):
    """run_mim.py's MaskGenerator: after np.random.seed(s), np.random.permutation(N)[:ceil(ratio N)] of the N mask
    squares are masked, then each square is repeated (mask_patch / patch) times along both axes (np.repeat)."""
    gen = mim.MaskGenerator(image_hw, mask_patch, patch_hw, ratio)
    gh, gw = image_hw[0] // mask_patch, image_hw[1] // mask_patch
    sh, sw = mask_patch // patch_hw[0], mask_patch // patch_hw[1]
    for seed in range(5):
        np.random.seed(seed)
        coarse = np.zeros(gh * gw, dtype=int)
        coarse[np.random.permutation(gh * gw)[: int(np.ceil(gh * gw * ratio))]] = 1
        expected = coarse.reshape(gh, gw).repeat(sh, axis=0).repeat(sw, axis=1).flatten()
        got = gen(np.random.RandomState(seed))
        assert got.dtype == torch.bool and got.shape == ((image_hw[0] // patch_hw[0]) * (image_hw[1] // patch_hw[1]),)
        np.testing.assert_array_equal(got.numpy().astype(int), expected)
        assert int(got.sum()) == gen.masked_patches == math.ceil(gh * gw * ratio) * sh * sw


def test_masks_change_per_epoch_and_example_but_not_in_evaluation():
    gen = mim.MaskGenerator((16, 16), 4, (4, 4), 0.5)
    draw = lambda epoch, index: gen(mim.mask_rng(3, epoch, index))  # noqa: E731
    assert torch.equal(draw(0, 5), draw(0, 5)) and torch.equal(draw(None, 5), draw(None, 5))
    assert not torch.equal(draw(0, 5), draw(1, 5)) and not torch.equal(draw(0, 5), draw(0, 6))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--task", "mim", "--mask_patch_size", "6"], r"--mask_patch_size 6 must divide the image size 16x16 and be "
         r"a multiple of the model's patch size 4x4 \(e\.g\. 4\)"),
        (["--task", "mim", "--mask_patch_size", "32"], r"must divide the image size 16x16 .*\(e\.g\. 16\)"),
        (["--task", "mim", "--mask_patch_size", "8", "--mask_ratio", "1.0"], r"--mask_ratio must be in \(0, 1\)"),
        (["--task", "mim", "--mask_patch_size", "8", "--mixup", "0.2"], r"--mixup: classification only"),
        (["--task", "mim", "--mask_patch_size", "8", "--streaming", "--max_train_steps", "5"],
         r"--streaming: classification only"),
        (["--mask_ratio", "0.5"], r"--mask_ratio needs --task mim"),
        (["--mask_ratio", "0.5", "--mask_patch_size", "8"], r"--mask_patch_size/--mask_ratio need --task mim"),
    ],
)
def test_bad_mim_flags_fail_in_one_line(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args([*SMALL, *argv, "--train_dir", str(tmp_path), "--output_dir", str(tmp_path / "out")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.search(message, err), err
    assert not (tmp_path / "out").exists()


def test_per_example_loss_averages_to_the_models_loss():
    """`evaluate` averages per-image losses; with equal mask counts their mean is the model's own batch loss."""
    torch.manual_seed(0)
    model = VitHfForMaskedImageModeling(VitHfConfig.from_preset("test", num_channels=1, image_size=16,
                                                                patch_size=4)).double().eval()
    gen = mim.MaskGenerator((16, 16), 8, (4, 4), 0.6)
    x = torch.randn(4, 1, 16, 16, dtype=torch.float64)
    mask = torch.stack([gen(np.random.RandomState(i)) for i in range(4)])
    out = model(x, bool_masked_pos=mask)
    per = mim.per_example_loss(out.reconstruction, x, mask, (4, 4))
    torch.testing.assert_close(per.mean(), out.loss.float(), rtol=1e-6, atol=0)


# ----------------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------------


def test_labelled_saved_dataset_loads_with_labels_dropped(tmp_path):
    """`--dataset_name` a saved image set with a label column and a `test` split: the labels are dropped, the test
    split validates."""
    from datasets import DatasetDict

    def split(n: int, offset: int):
        pairs = digit_images(n, offset=offset)
        return _arrays_to_dataset(np.stack([a for a, _ in pairs]), np.array([c for _, c in pairs]), ["0", "1", "2"])

    DatasetDict(train=split(10, 0), test=split(4, 500)).save_to_disk(str(tmp_path / "set"))
    args = parse_args([*MIM, "--dataset_name", str(tmp_path / "set"), "--output_dir", str(tmp_path / "out")])
    data = mim.load_data(args, seed=0)
    assert data.train.column_names == ["image", "__index__"] and len(data.train) == 10
    assert data.validation.column_names == ["image", "__index__"] and len(data.validation) == 4
    assert data.labels == [] and data.notes == []


# ----------------------------------------------------------------------------------------------------------------------
# Runs
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_mim_run_loss_falls_and_output_loads_as_remote_code(pretrained, digits):
    out, log = pretrained
    results = json.loads((out / "all_results.json").read_text())
    history = json.loads((out / "log_history.json").read_text())
    losses = [h["loss"] for h in history if "loss" in h]
    assert len(losses) == 8 and all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-3:]) < np.mean(losses[:3]), losses
    assert results["task"] == "mim" and results["completed_steps"] == 8 and results["eval_valid_samples"] == 13
    assert results["masked_patches_per_image"] == 12  # ceil(0.6 * 4) squares of 2x2 patches
    assert "masks: 3 of 4 squares of 2x2 patches (12 patches)" in log
    # the folder loads without vit_hf's classes, and the recorded eval_loss is a re-evaluation of it
    with unregistered():  # an installed vit_hf would otherwise build the folder with its own classes
        model = AutoModelForMaskedImageModeling.from_pretrained(out, trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules.")
    assert "pipeline_tag: image-feature-extraction" in (out / "README.md").read_text()  # not a classifier's card
    args = parse_args([*MIM, *data_args(digits), "--output_dir", str(out), "--dataloader_num_workers", "0"])
    data = mim.load_data(args, seed=3)
    data.masks = mim.MaskGenerator((16, 16), 8, (4, 4), 0.6)
    processor = VitHfImageProcessor.from_pretrained(out)
    _, eval_dl, _, _ = mim.make_loaders(args, data, processor, seed=3)
    per = []
    with torch.no_grad():
        for batch in eval_dl:
            rec = model(pixel_values=batch["pixel_values"], bool_masked_pos=batch["bool_masked_pos"]).reconstruction
            per.append(mim.per_example_loss(rec, batch["pixel_values"], batch["bool_masked_pos"], (4, 4)))
    torch.testing.assert_close(torch.cat(per).mean().item(), results["eval_loss"], rtol=1e-6, atol=0)


@pytest.mark.slow
def test_mim_sigkill_and_resume_gives_identical_weights(pretrained, digits, tmp_path):
    """Killed after step 4 (step_3 on disk, mid-epoch 0), resumed: the same weights as the uninterrupted run, bit for
    bit (the masks, like the crops, are functions of (seed, epoch, example))."""
    reference, _ = pretrained
    killed = tmp_path / "killed"
    common = [*MIM, *STEPS, *data_args(digits), "--output_dir", str(killed)]
    run_train(common, expect=-9, **{_testing.KILL_AFTER_STEP_ENV: "4"})
    assert sorted(p.name for p in killed.glob("step_*")) == ["step_3"]
    _, log = train_in_process([*common, "--resume_from_checkpoint", "latest"])  # only the killed run is a subprocess
    assert "resumed from" in log and "step 3" in log
    assert_same_weights(killed, reference)
    assert_same_weights(killed / "step_6" / train_mod.HF_MODEL_SUBDIR, reference / "step_6" / train_mod.HF_MODEL_SUBDIR)
    assert (json.loads((killed / "all_results.json").read_text())["eval_loss"]
            == json.loads((reference / "all_results.json").read_text())["eval_loss"])


@pytest.mark.slow
def test_mim_output_fine_tunes_as_a_classifier(pretrained, digits, tmp_path):
    """Classification from the MIM folder: the encoder is reused as is, the decoder and mask token are dropped (one
    log line), a new head is made for the data set's labels."""
    from vit_hf.train.classification import build_model_and_processor

    out, _ = pretrained
    args = parse_args([*data_args(digits), "--model_name_or_path", str(out), "--output_dir", str(tmp_path / "c")])
    model, _, _, notes = build_model_and_processor(args, ["one", "two", "zero"])
    dropped = [n for n in notes if "dropped" in n]
    assert dropped == [f"{out} is a masked-image-modeling checkpoint: encoder reused, decoder and mask token dropped "
                       f"(decoder.0.bias, decoder.0.weight, vit.mask_token)"]
    assert "new head: 0 checkpoint labels -> 3 data set labels (trunc_normal init)" in notes
    mim_model = VitHfForMaskedImageModeling.from_pretrained(out)
    encoder = {k: v for k, v in mim_model.vit.state_dict().items() if k != "mask_token"}
    assert encoder.keys() == model.vit.state_dict().keys()
    for key, tensor in model.vit.state_dict().items():
        assert torch.equal(tensor, encoder[key]), key
    _, log = train_in_process([*data_args(digits), "--model_name_or_path", str(out), "--crop_pct", "1.0",
                               "--max_train_steps", "2", "--learning_rate", "1e-3",
                               "--output_dir", str(tmp_path / "c")])
    assert dropped[0] in log
    results = json.loads((tmp_path / "c" / "all_results.json").read_text())
    assert results["labels"] == ["one", "two", "zero"] and results["completed_steps"] == 2
    config = json.loads((tmp_path / "c" / "config.json").read_text())
    assert config["id2label"] == {"0": "one", "1": "two", "2": "zero"}


def test_mim_from_a_classifier_folder_reuses_the_encoder(tmp_path):
    """`--task mim --model_name_or_path CLASSIFIER`: the encoder loads as is, a new mask token (zeros, as
    transformers') and decoder are made, the head is dropped, both said in one line; the labels are forgotten."""
    from vit_hf import VitHfForImageClassification

    torch.manual_seed(0)
    config = VitHfConfig.from_preset("test", num_labels=3, image_size=16, patch_size=4, num_channels=1)
    VitHfForImageClassification(config).save_pretrained(tmp_path / "clf")
    VitHfImageProcessor.from_model_config(config).save_pretrained(tmp_path / "clf")
    args = parse_args([*MIM, "--train_dir", str(tmp_path), "--output_dir", str(tmp_path / "out")])
    args.model_name_or_path = str(tmp_path / "clf")
    args.image_size = args.patch_size = args.num_channels = None  # from the folder
    data = mim.MimData(None, None, "image")
    model, _, _, notes = mim.build_model_and_processor(args, data)
    assert notes == [f"{tmp_path / 'clf'}: encoder reused; initialised new: decoder.0.bias, decoder.0.weight, "
                     f"vit.mask_token; dropped: head.bias, head.weight"]
    source = VitHfForImageClassification.from_pretrained(tmp_path / "clf").vit.state_dict()
    for key, tensor in source.items():
        assert torch.equal(model.vit.state_dict()[key], tensor), key
    assert torch.count_nonzero(model.vit.mask_token) == 0 and model.config.num_labels == 0
    assert data.masks.masked_patches == 12


def test_mask_token_is_not_weight_decayed_and_sits_with_the_embeddings():
    """SimMIM's optimizer skips weight decay for the mask token (its `no_weight_decay` adds it); layer decay puts it
    with the embeddings, the decoder with the head."""
    model = VitHfForMaskedImageModeling(VitHfConfig.from_preset("test"))
    groups = train_mod.parameter_groups(model, learning_rate=1.0, weight_decay=0.05, layer_decay=0.5)
    group_of = {id(p): g for g in groups for p in g["params"]}
    assert len(group_of) == sum(1 for _ in model.parameters())
    token, embed = group_of[id(model.vit.mask_token)], group_of[id(model.vit.patch_embed.proj.weight)]
    assert token["weight_decay"] == 0.0 and token["lr"] == embed["lr"] == 0.5 ** (model.config.num_hidden_layers + 1)
    assert group_of[id(model.decoder[0].weight)]["lr"] == 1.0 and group_of[id(model.decoder[0].weight)]["weight_decay"]


def test_flat_image_folder_without_classes_loads_and_splits(tmp_path):
    """An image folder with no class subfolders (no label column at all): train, and 15 % split off to validate."""
    import PIL.Image

    for i, (array, _) in enumerate(digit_images(20)):
        PIL.Image.fromarray(array).save(tmp_path / f"{i}.png")
    args = parse_args([*MIM, "--train_dir", str(tmp_path), "--output_dir", str(tmp_path / "out")])
    data = mim.load_data(args, seed=0)
    assert (len(data.train), len(data.validation)) == (17, 3)
    assert data.notes[0] == "validation split: 15% of train (seed 0)"
    assert data.train.column_names == ["image", "__index__"]
