"""Training methods of `vit_hf.train` beyond plain fine-tuning, on the real digits the other training tests use, CPU,
offline: weight EMA (`--model_ema_decay`) against timm's ModelEmaV3, its exact resume after SIGKILL, and the
accuracy it records against a re-evaluation of the saved folder; LoRA through peft (`--lora_r`)."""

from __future__ import annotations

import json
from pathlib import Path

import PIL.Image
import pytest
import torch
from helpers import SMALL, assert_same_weights, data_args, make_digits_folder, run_train, train_in_process, weights

from vit_hf import VitHfConfig, VitHfForImageClassification, VitHfImageProcessor
from vit_hf import train as train_mod
from vit_hf.train import _testing
from vit_hf.train.ema import ModelEma, ema_decay


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    """train: 40 real digits of 3 classes; validation: 37."""
    return make_digits_folder(tmp_path_factory.mktemp("digits"), {"train": 40, "validation": 37}, classes=(0, 1, 2))


def reevaluate(folder: Path, validation: Path) -> list[list[int]]:
    """The confusion matrix (true label x predicted label) of a saved folder on an image folder, through its own
    processor's eval transform."""
    model = VitHfForImageClassification.from_pretrained(folder).eval()
    transform = VitHfImageProcessor.from_pretrained(folder).eval_transforms()
    n = model.config.num_labels
    confusion = [[0] * n for _ in range(n)]
    for class_dir in sorted(p for p in validation.iterdir() if p.is_dir()):
        for path in sorted(class_dir.glob("*.png")):
            with torch.no_grad():
                logits = model(pixel_values=transform(PIL.Image.open(path))[None]).logits
            confusion[model.config.label2id[class_dir.name]][int(logits.argmax())] += 1
    return confusion


# ----------------------------------------------------------------------------------------------------------------------
# EMA
# ----------------------------------------------------------------------------------------------------------------------


def test_ema_matches_timm_model_ema_v3_with_warmup():
    from timm.utils.model_ema import ModelEmaV3

    config = VitHfConfig.from_preset("test", num_labels=3)
    torch.manual_seed(0)
    model = VitHfForImageClassification(config)
    ours, timms = ModelEma(model, 0.99), ModelEmaV3(model, decay=0.99, use_warmup=True)
    for step in range(1, 8):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        ours.update(model)
        timms.update(model, step=step)
        assert ema_decay(0.99, step) == timms.get_decay(step)
    got, want = ours.module.state_dict(), timms.module.state_dict()
    assert got.keys() == want.keys()
    for key in got:
        torch.testing.assert_close(got[key], want[key], rtol=1e-6, atol=1e-7, msg=key)
    assert not torch.equal(got["head.weight"], model.head.weight)  # averaged, not a copy of the last weights


@pytest.mark.slow
def test_ema_sigkill_resume_bit_exact_and_saved_accuracy_reevaluates(digits, tmp_path):
    common = [*SMALL, *data_args(digits), "--max_train_steps", "8", "--per_device_train_batch_size", "4",
              "--gradient_accumulation_steps", "2", "--learning_rate", "2e-3", "--seed", "11", "--checkpointing_steps",
              "3", "--drop_path_rate", "0.1", "--mixed_precision", "no", "--model_ema_decay", "0.9"]
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    train_in_process([*common, "--output_dir", str(reference)])  # only the killed run needs a process of its own
    run_train([*common, "--output_dir", str(killed)], expect=-9, **{_testing.KILL_AFTER_STEP_ENV: "7"})
    assert [p.name for _, p in train_mod.list_checkpoints(killed)] == ["step_3", "step_6"]
    _, log = train_in_process([*common, "--output_dir", str(killed), "--resume_from_checkpoint", "latest"])
    assert "resumed from" in log and "step 6" in log
    assert_same_weights(reference, killed)

    results = json.loads((reference / "all_results.json").read_text())
    assert results["eval_accuracy"] == results["eval_accuracy_ema"]
    assert 0.0 <= results["eval_accuracy_raw"] <= 1.0
    confusion = reevaluate(reference, digits / "validation")
    assert results["eval_confusion_matrix"] == confusion  # every prediction, not only the count of right ones
    right = sum(confusion[i][i] for i in range(len(confusion)))
    assert results["eval_accuracy_ema"] == pytest.approx(right / 37, rel=1e-6)
    assert json.loads((killed / "all_results.json").read_text())["eval_accuracy_ema"] == results["eval_accuracy_ema"]

    # the saved weights are the average: a checkpoint's trained (raw) weights, in the accelerate state, differ from
    # its hub-ready model
    raw, ema = weights(reference / "step_6"), weights(reference / "step_6" / train_mod.HF_MODEL_SUBDIR)
    assert raw.keys() == ema.keys() and max((raw[k] - ema[k]).abs().max().item() for k in raw) > 1e-4


def test_ema_decay_out_of_range_is_refused(digits, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_mod.parse_args([*SMALL, *data_args(digits), "--output_dir", str(tmp_path / "o"),
                              "--model_ema_decay", "1.5"])
    assert exit_info.value.code == 2 and "--model_ema_decay must be in (0, 1)" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------------------------------------------------
# LoRA
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_base(digits, tmp_path_factory) -> Path:
    """A model fully fine-tuned on the digits for a few steps: the base a LoRA run starts from."""
    out = tmp_path_factory.mktemp("base") / "out"
    train_in_process([*SMALL, *data_args(digits), "--output_dir", str(out), "--max_train_steps", "6",
                      "--per_device_train_batch_size", "8", "--learning_rate", "2e-3", "--seed", "3"])
    return out


def lora_args(digits: Path, base: Path) -> list[str]:
    return ["--model_name_or_path", str(base), *data_args(digits), "--max_train_steps", "8",
            "--per_device_train_batch_size", "4", "--learning_rate", "5e-3", "--seed", "7", "--mixed_precision", "no",
            "--logging_steps", "1", "--lora_r", "4", "--lora_alpha", "8", "--lora_dropout", "0.1",
            "--checkpointing_steps", "3"]


@pytest.mark.slow
def test_lora_merged_folder_equals_peft_merge_and_resumes_bit_exact(digits, trained_base, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForImageClassification

    out, killed = tmp_path / "lora", tmp_path / "killed"
    train_in_process([*lora_args(digits, trained_base), "--output_dir", str(out)])
    results = json.loads((out / "all_results.json").read_text())
    base = weights(trained_base)
    # counted from the base model: r * (in + out) per adapted Linear, plus the head's trained copy
    model = VitHfForImageClassification.from_pretrained(trained_base)
    adapted = [m for b in model.vit.blocks for m in (b.attn.qkv, b.attn.proj, b.mlp.fc1, b.mlp.fc2)]
    lora = sum(4 * (m.in_features + m.out_features) for m in adapted)
    head = sum(p.numel() for p in model.head.parameters())
    assert results["trainable_parameters"] == lora + head
    assert results["total_parameters"] == sum(p.numel() for p in model.parameters()) + lora + head
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert (out / "adapter" / "adapter_model.safetensors").is_file()

    # the merged folder is a plain vit_hf model (no peft keys) and equals peft's own merge of the adapter onto the base
    merged = weights(out)
    assert merged.keys() == base.keys()
    peft_model = PeftModel.from_pretrained(
        AutoModelForImageClassification.from_pretrained(trained_base, trust_remote_code=True), out / "adapter")
    reference = peft_model.merge_and_unload().state_dict()
    for key in base:
        assert torch.equal(merged[key], reference[key]), key
    changed = {k for k in base if not torch.equal(base[k], merged[k])}
    assert {"head.weight", "vit.blocks.0.attn.qkv.weight", "vit.blocks.1.mlp.fc2.weight"} <= changed
    assert "vit.patch_embed.proj.weight" not in changed and "vit.pos_embed" not in changed  # frozen
    assert results["eval_accuracy"] == pytest.approx(
        sum(r[i] for i, r in enumerate(reevaluate(out, digits / "validation"))) / 37, rel=1e-6)
    assert "eval_accuracy_raw" not in results  # no EMA: one set of weights

    run_train([*lora_args(digits, trained_base), "--output_dir", str(killed)], expect=-9,
              **{_testing.KILL_AFTER_STEP_ENV: "7"})
    _, log = train_in_process([*lora_args(digits, trained_base), "--output_dir", str(killed),
                               "--resume_from_checkpoint", "latest"])
    assert "resumed from" in log and "step 6" in log
    assert_same_weights(out, killed)
    assert_same_weights_file(out / "adapter" / "adapter_model.safetensors",
                             killed / "adapter" / "adapter_model.safetensors")


def assert_same_weights_file(a: Path, b: Path) -> None:
    from safetensors.torch import load_file

    wa, wb = load_file(str(a)), load_file(str(b))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_lora_flags_refused_clearly(digits, tmp_path, capsys):
    for flags, message in ((["--lora_alpha", "4"], "need --lora_r"),
                           (["--lora_r", "0"], "--lora_r must be a positive integer"),
                           (["--lora_r", "2", "--lora_target_modules", "qkv,q_proj"], "are not block layers")):
        with pytest.raises(SystemExit) as exit_info:
            train_mod.parse_args([*SMALL, *data_args(digits), "--output_dir", str(tmp_path / "o"), *flags])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
