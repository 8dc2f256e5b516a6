"""The training script end to end on real images (scikit-learn digits written as image folders), CPU, offline:
optimizer groups, gradient accumulation, exact resume after SIGKILL, atomic checkpoints, 2-process DDP evaluation,
broken data, the non-finite-loss guard, new heads / higher resolution, and loading the result without vit_hf."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from helpers import (
    ACCELERATE,
    REPO,
    SMALL,
    add_odd_images,
    assert_same_weights,
    child_env,
    data_args,
    free_port,
    make_digits_folder,
    run_train,
    train_in_process,
    weights,
)
from isolated import last_json_line, run_isolated

from vit_hf import VitHfConfig, VitHfForImageClassification, VitHfImageProcessor
from vit_hf import train as train_mod
from vit_hf.train import _testing


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    """train: 40 real digits of 3 classes; validation: 37 (odd, so DDP padding would show)."""
    return make_digits_folder(tmp_path_factory.mktemp("digits"), {"train": 40, "validation": 37}, classes=(0, 1, 2))


# ----------------------------------------------------------------------------------------------------------------------
# Optimizer groups
# ----------------------------------------------------------------------------------------------------------------------


def test_parameter_groups_by_role_and_layer_decay():
    config = VitHfConfig.from_preset("test", num_labels=3, num_register_tokens=2, layer_scale_init_value=1e-5,
                                     pooling="map", qk_norm=True, pre_norm=True)
    model = VitHfForImageClassification(config)
    groups = train_mod.parameter_groups(model, learning_rate=1.0, weight_decay=0.1, layer_decay=0.5)
    group_of = {id(p): g for g in groups for p in g["params"]}
    assert len(group_of) == sum(1 for _ in model.parameters())  # every parameter exactly once
    vit, depth = model.vit, config.num_hidden_layers
    no_decay = [vit.cls_token, vit.reg_token, vit.pos_embed, vit.attn_pool.latent, vit.blocks[0].norm1.weight,
                vit.blocks[0].ls1.gamma, vit.blocks[1].attn.qkv.bias, model.head.bias, vit.norm_pre.weight]
    for p in no_decay:
        assert group_of[id(p)]["weight_decay"] == 0.0
    for p in (vit.patch_embed.proj.weight, vit.blocks[0].attn.qkv.weight, vit.blocks[1].mlp.fc2.weight,
              vit.attn_pool.q.weight, model.head.weight):
        assert group_of[id(p)]["weight_decay"] == 0.1
    # layer-wise LR: embeddings 0.5^(L+1), block i 0.5^(L-i), head / pooling 1
    assert group_of[id(vit.patch_embed.proj.weight)]["lr"] == 0.5 ** (depth + 1)
    assert group_of[id(vit.pos_embed)]["lr"] == 0.5 ** (depth + 1)
    for i, block in enumerate(vit.blocks):
        assert group_of[id(block.mlp.fc1.weight)]["lr"] == 0.5 ** (depth - i)
    assert group_of[id(model.head.weight)]["lr"] == 1.0 and group_of[id(vit.attn_pool.latent)]["lr"] == 1.0
    flat = train_mod.parameter_groups(model, 1.0, 0.1, None)
    assert {g["lr"] for g in flat} == {1.0} and len(flat) == 2


# ----------------------------------------------------------------------------------------------------------------------
# Gradient accumulation (5)
# ----------------------------------------------------------------------------------------------------------------------


def test_gradient_accumulation_matches_large_batch(digits, tmp_path):
    """2 optimizer steps: batch 8 vs batch 4 x 2 accumulated. Same examples and augmentations by construction (the
    order is a permutation of (seed, epoch), each crop is seeded by the example), fp32, no dropout."""
    common = [*SMALL, *data_args(digits), "--max_train_steps", "2", "--learning_rate", "1e-3", "--seed", "5",
              "--mixed_precision", "no", "--max_grad_norm", "1.0", "--weight_decay", "0.05",
              # The key bias has an exactly-zero true gradient (softmax ignores a shift of all logits); Adam with
              # eps=1e-8 would blow its rounding noise (~1e-10) up to +-lr. A larger eps keeps Adam's update a
              # continuous function of the gradient, so the comparison measures accumulation, not noise.
              "--adam_epsilon", "1e-4"]
    big = train_mod.main([*common, "--output_dir", str(tmp_path / "big"), "--per_device_train_batch_size", "8"])
    accumulated = train_mod.main([*common, "--output_dir", str(tmp_path / "acc"), "--per_device_train_batch_size", "4",
                                  "--gradient_accumulation_steps", "2"])
    small = train_mod.main([*common, "--output_dir", str(tmp_path / "small"), "--per_device_train_batch_size", "4"])
    assert big["completed_steps"] == accumulated["completed_steps"] == small["completed_steps"] == 2
    assert_same_weights(tmp_path / "big", tmp_path / "acc", exact=False)
    # and the comparison has teeth: two un-accumulated steps of 4 end elsewhere
    wa, ws = weights(tmp_path / "big"), weights(tmp_path / "small")
    assert max((wa[k] - ws[k]).abs().max().item() for k in wa) > 1e-4


# ----------------------------------------------------------------------------------------------------------------------
# Kill and resume (2)
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigkill_and_resume_gives_identical_weights(digits, tmp_path):
    """40 images, batch 4, accumulation 2: 5 steps per epoch, 8 steps over 2 epochs, checkpoints every 3 steps.
    drop-path and mixup draw from the RNG, so the RNG discipline is checked too."""
    common = [*SMALL, *data_args(digits), "--max_train_steps", "8", "--per_device_train_batch_size", "4",
              "--gradient_accumulation_steps", "2", "--learning_rate", "2e-3", "--seed", "11", "--checkpointing_steps",
              "3", "--drop_path_rate", "0.1", "--mixup", "0.2", "--label_smoothing", "0.1", "--num_warmup_steps", "2",
              "--lr_scheduler_type", "cosine", "--mixed_precision", "no"]
    reference, killed, torn = tmp_path / "reference", tmp_path / "killed", tmp_path / "torn"
    train_in_process([*common, "--output_dir", str(reference)])  # only the killed runs need processes of their own

    # SIGKILL after step 7 (step_6 is on disk, written mid-epoch 1): resume from latest
    proc = run_train([*common, "--output_dir", str(killed)], expect=-9, **{_testing.KILL_AFTER_STEP_ENV: "7"})
    assert not (killed / "all_results.json").exists(), proc.stderr[-2000:]
    assert [p.name for _, p in train_mod.list_checkpoints(killed)] == ["step_3", "step_6"]
    _, log = train_in_process([*common, "--output_dir", str(killed), "--resume_from_checkpoint", "latest"])
    assert "resumed from" in log and "step 6" in log
    assert_same_weights(reference, killed)

    # SIGKILL while step_6 is being written: step_3 stays the latest complete checkpoint and loads standalone
    run_train([*common, "--output_dir", str(torn)], expect=-9, **{_testing.KILL_IN_CHECKPOINT_ENV: "6"})
    assert [p.name for _, p in train_mod.list_checkpoints(torn)] == ["step_3"]
    assert (torn / ".tmp-step_6").is_dir() and not (torn / "step_6").exists()
    standalone = VitHfForImageClassification.from_pretrained(torn / "step_3" / train_mod.HF_MODEL_SUBDIR)
    assert standalone.config.id2label == {0: "one", 1: "two", 2: "zero"}
    _, log = train_in_process([*common, "--output_dir", str(torn), "--resume_from_checkpoint", "latest"])
    assert "resumed from" in log and "step 3" in log
    assert_same_weights(reference, torn)
    history = json.loads((torn / "log_history.json").read_text())
    assert [h["step"] for h in history if "loss" in h] == list(range(1, 9))  # the log survives the restart too


# ----------------------------------------------------------------------------------------------------------------------
# DDP (3) and loading without vit_hf (4)
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ddp_run(digits, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp") / "out"
    cmd = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
           "-m", "vit_hf.train", *SMALL, *data_args(digits), "--output_dir", str(out), "--num_train_epochs", "1",
           "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4", "--learning_rate", "1e-3",
           "--with_tracking", "--report_to", "tensorboard"]
    proc = subprocess.run(cmd, cwd=REPO, env=child_env(ACCELERATE_USE_CPU="1"), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-6000:]
    return out


def _predictions(folder: Path, images: list[Path]) -> torch.Tensor:
    """Class probabilities of the saved model on `images`, through vit_hf's classes and the processor's own call (not
    the training script's transforms or metrics)."""
    model = VitHfForImageClassification.from_pretrained(folder).eval()
    processor = VitHfImageProcessor.from_pretrained(folder)
    import PIL.Image

    with torch.no_grad():
        pixels = processor([PIL.Image.open(p) for p in images], return_tensors="pt")["pixel_values"]
        return model(pixel_values=pixels).logits.softmax(-1)


@pytest.mark.slow
def test_ddp_two_processes_evaluates_each_example_once(ddp_run, digits):
    results = json.loads((ddp_run / "all_results.json").read_text())
    assert results["num_processes"] == 2
    # 37 = 4 * 2 * 4 + 5: the last round is padded by the sampler; gather_for_metrics must drop exactly the padding
    assert results["eval_samples"] == results["eval_unique_samples"] == 37
    assert results["completed_steps"] == 5  # 40 images / (4 per device x 2 processes)
    # The reported metrics are those of the saved model: re-predict every validation image independently
    labels = results["labels"]
    images = sorted((digits / "validation").glob("*/*.png"))
    truth = torch.tensor([labels.index(p.parent.name) for p in images])
    predicted = _predictions(ddp_run, images).argmax(-1)
    confusion = torch.zeros(3, 3, dtype=torch.long).index_put_((truth, predicted), torch.ones(37, dtype=torch.long),
                                                                accumulate=True)
    reported = torch.tensor(results["eval_confusion_matrix"])
    assert reported.sum(1).tolist() == confusion.sum(1).tolist()  # each true class counted once, DDP padding dropped
    assert (reported - confusion).abs().sum() <= 2, (reported, confusion)  # at most one image's float-rounding flip
    assert abs(results["eval_accuracy"] - float((predicted == truth).float().mean())) <= 1 / 37 + 1e-9
    per_class = [results["eval_per_class_accuracy"][n] for n in labels]
    assert per_class == [float(reported[i, i]) / float(reported[i].sum()) for i in range(3)]
    assert list(ddp_run.glob("vit_hf/events.out.tfevents.*")), "tensorboard tracking wrote no events"
    for name in (train_mod.CURVES_PNG, train_mod.CONFUSION_PNG, "README.md", "config.json"):
        assert (ddp_run / name).is_file()
    assert "confusion_matrix.png" in (ddp_run / "README.md").read_text()


def test_top5_accuracy_counts_the_five_best_of_many_classes():
    """Top-5 with 9 classes (with 3 it would always be 1): `evaluate` against torch.topk on the same logits."""
    from accelerate import Accelerator

    torch.manual_seed(0)
    model = VitHfForImageClassification(VitHfConfig.from_preset("test", num_labels=9, image_size=16, patch_size=4,
                                                                num_channels=1)).eval()
    with torch.no_grad():
        model.head.weight.mul_(40)  # spread the logits so that the ranking is far from ties
    pixels, labels = torch.randn(24, 1, 16, 16), torch.arange(24) % 9
    batches = [{"pixel_values": pixels[i:i + 8], "labels": labels[i:i + 8], "valid": torch.ones(8, dtype=torch.bool),
                "index": torch.arange(i, i + 8)} for i in (0, 8, 16)]
    metrics = train_mod.evaluate(model, batches, Accelerator(cpu=True), 9)
    with torch.no_grad():
        top5 = model(pixel_values=pixels).logits.topk(5, -1).indices
    expected = (top5 == labels[:, None]).any(1).float().mean().item()
    assert metrics["top5_accuracy"] == pytest.approx(expected) and 0.0 < expected < 1.0
    assert metrics["accuracy"] == pytest.approx((top5[:, 0] == labels).float().mean().item())


@pytest.mark.slow
def test_output_loads_through_pipeline_without_vit_hf(ddp_run, digits, tmp_path):
    """The pipeline's top-2 (of 3 classes) are the two most probable labels with their probabilities."""
    image = sorted((digits / "validation" / "two").glob("*.png"))[0]
    code = f"""
        import json
        from transformers import pipeline
        pipe = pipeline("image-classification", model={str(ddp_run)!r}, trust_remote_code=True)
        print(json.dumps({{p["label"]: p["score"] for p in pipe({str(image)!r}, top_k=2)}}))
    """
    scores = last_json_line(run_isolated(code, cwd=tmp_path))
    labels = json.loads((ddp_run / "all_results.json").read_text())["labels"]
    probs = _predictions(ddp_run, [image])[0]
    best = [labels[i] for i in probs.argsort(descending=True)[:2].tolist()]
    assert list(scores) == best
    for name, score in scores.items():
        assert score == pytest.approx(float(probs[labels.index(name)]), abs=1e-4)


# ----------------------------------------------------------------------------------------------------------------------
# Bad data (6), non-finite loss, heads and resolution
# ----------------------------------------------------------------------------------------------------------------------


def test_broken_grey_palette_images_train_and_are_counted(tmp_path):
    root = make_digits_folder(tmp_path / "data", {"train": 12, "validation": 6}, classes=(0, 1))
    add_odd_images(root / "train" / "zero")
    add_odd_images(root / "validation" / "one")
    results = train_mod.main([
        "--model_name_or_path", "test", "--image_size", "16", "--patch_size", "8", "--num_channels", "3",
        *data_args(root), "--output_dir", str(tmp_path / "out"), "--num_train_epochs", "1",
        "--per_device_train_batch_size", "5", "--gradient_checkpointing", "--mixed_precision", "bf16",
        "--cutmix", "1.0", "--mixup", "0.2",
    ])
    assert results["train_skipped_images"] == 1 and results["eval_skipped_images"] == 1
    assert results["skipped_images"] == 2
    assert results["eval_samples"] == 9 and results["eval_valid_samples"] == 8  # 6 + grey/palette/rgba/corrupt
    saved = json.loads((tmp_path / "out" / "all_results.json").read_text())
    assert saved["skipped_images"] == 2 and saved["mixed_precision"] == "bf16"


def test_one_class_or_empty_folder_fails_in_one_line_and_writes_nothing(tmp_path, capsys):
    make_digits_folder(tmp_path / "one", {"train": 6}, classes=(4,))
    for folder, says in ((tmp_path / "one" / "train", "one class subfolder (four); classification needs two or more"),
                         (tmp_path / "empty", "is empty")):
        (tmp_path / "empty" / "a").mkdir(parents=True, exist_ok=True)
        with pytest.raises(SystemExit) as exit_info:
            train_mod.main([*SMALL, "--train_dir", str(folder), "--output_dir", str(tmp_path / "o")])
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 2 and len(err) == 1 and says in err[0], err
        assert not (tmp_path / "o").exists()


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(digits, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(_testing.NAN_AT_STEP_ENV, "3")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        train_mod.main([*SMALL, *data_args(digits), "--output_dir", str(out), "--max_train_steps", "6",
                        "--checkpointing_steps", "2", "--per_device_train_batch_size", "8"])
    assert exit_info.value.code == 3
    message = capsys.readouterr().err
    assert "non-finite loss at optimizer step 3" in message and "step_2" in message
    assert [p.name for _, p in train_mod.list_checkpoints(out)] == ["step_2"]
    assert not (out / "all_results.json").exists()


def test_finetune_new_labels_new_head_higher_resolution(digits, tmp_path):
    """A saved 10-class model fine-tuned on 3 classes at 24 px: trunk loaded, head replaced, positions resampled;
    a permuted label order keeps the head with its rows permuted."""
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    config = VitHfConfig.from_preset("test", image_size=16, patch_size=4, num_channels=1, num_labels=10,
                                     id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    torch.manual_seed(0)
    source = VitHfForImageClassification(config)
    source.save_pretrained(tmp_path / "src")
    VitHfImageProcessor.from_model_config(config).save_pretrained(tmp_path / "src")
    args = train_mod.parse_args(["--model_name_or_path", str(tmp_path / "src"), "--image_size", "24",
                                 *data_args(digits), "--output_dir", str(tmp_path / "o")])
    model, processor, base_model, notes = train_mod.build_model_and_processor(args, ["one", "two", "zero"])
    assert base_model is None and any("new head" in n for n in notes)
    assert model.config.id2label == {0: "one", 1: "two", 2: "zero"} and model.head.weight.shape == (3, 32)
    # a new head as timm and transformers make one (a zero head starves a random trunk of gradient)
    assert model.head.bias.abs().sum() == 0 and 0.01 < model.head.weight.std() < 0.04
    zeros = train_mod.parse_args(["--model_name_or_path", str(tmp_path / "src"), *data_args(digits), "--output_dir",
                                  str(tmp_path / "o"), "--head_init", "zeros"])
    assert train_mod.build_model_and_processor(zeros, ["one", "two", "zero"])[0].head.weight.abs().sum() == 0
    assert torch.equal(model.vit.blocks[1].attn.qkv.weight, source.vit.blocks[1].attn.qkv.weight)
    assert model.vit.pos_embed.shape[1] == 1 + 6 * 6 and model.config.image_size == 24
    assert processor.size == {"height": 24, "width": 24}

    args = train_mod.parse_args(["--model_name_or_path", str(tmp_path / "src"), *data_args(digits),
                                 "--output_dir", str(tmp_path / "o")])
    permuted = list(reversed(names))
    model, _, _, notes = train_mod.build_model_and_processor(args, permuted)
    assert any("permuted" in n for n in notes)
    assert torch.equal(model.head.weight[0], source.head.weight[9])  # "nine" moved from row 9 to row 0
    with pytest.raises(ValueError, match="presets"):
        train_mod.build_model_and_processor(
            train_mod.parse_args(["--model_name_or_path", str(tmp_path / "src"), "--patch_size", "8",
                                  *data_args(digits), "--output_dir", str(tmp_path / "o")]), names)


def test_recipe_defaults_by_mode_and_logged(digits, tmp_path):
    """Unset optimizer flags: transformers' example values when fine-tuning a checkpoint, DeiT/timm's small-data
    recipe for a preset from scratch; the log line names the mode and only what was filled in."""
    common = [*data_args(digits), "--output_dir", str(tmp_path / "o")]
    scratch = train_mod.parse_args(["--model_name_or_path", "test", *common])
    line = train_mod.resolve_recipe(scratch, 200)
    assert (scratch.learning_rate, scratch.weight_decay, scratch.lr_scheduler_type) == (1e-3, 0.05, "cosine")
    assert scratch.num_warmup_steps == 20 and "from scratch" in line and "warm-up 20 of 200" in line
    VitHfForImageClassification(VitHfConfig.from_preset("test", num_labels=3)).save_pretrained(tmp_path / "ckpt")
    tuned = train_mod.parse_args(["--model_name_or_path", str(tmp_path / "ckpt"), "--learning_rate", "3e-4",
                                  "--num_warmup_steps", "7", *common])
    line = train_mod.resolve_recipe(tuned, 200)
    assert (tuned.learning_rate, tuned.weight_decay, tuned.lr_scheduler_type) == (3e-4, 0.0, "linear")
    assert tuned.num_warmup_steps == 7 and "fine-tuning" in line
    assert "learning_rate" not in line and "warmup_ratio" not in line  # given, or overridden: not reported as chosen
