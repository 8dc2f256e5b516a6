"""Runs that cannot be mixed up (`vit_hf.train`), CPU, offline, on real digits: the run fingerprint every checkpoint
records and a resume checks before any state is loaded; an output dir holding a run; every user error one line and
exit 2 before any training or write; a validation split with a subset of the classes; faults during a checkpoint
save. Each test names the row of docs/faults-training.md it backs."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch
from helpers import (
    DIGIT_NAMES,
    assert_same_weights,
    data_args,
    digit_images,
    make_digits_folder,
    point_client_at,
    reset_accelerate,
    run_train,
    train_in_process,
)
from hub_server import HubServer

from vit_hf import VitHfConfig, VitHfForImageClassification
from vit_hf import train as train_mod
from vit_hf.train import _testing

# The "test" preset at 16 px, patch 4, grey; tiny runs of a few optimizer steps.
SMALL = ["--model_name_or_path", "test", "--image_size", "16", "--patch_size", "4", "--num_channels", "1",
         "--crop_pct", "1.0", "--logging_steps", "1", "--per_device_train_batch_size", "4", "--learning_rate", "1e-3",
         "--seed", "3", "--mixed_precision", "no"]
FRUIT = ["apple", "pear", "plum", *DIGIT_NAMES[3:]]


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return make_digits_folder(tmp_path_factory.mktemp("digits"), {"train": 24, "validation": 9})


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under `folder` with its size and modification time: equal snapshots, nothing written or deleted."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")
            if p.is_file()}


def refused(argv: list[str], capsys) -> list[str]:
    """Run in-process, expect exit 2, return the stderr lines (the `vit_hf.train:` ones)."""
    with pytest.raises(SystemExit) as exit_info:
        train_mod.main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err, err
    return [line for line in err.strip().splitlines() if line.startswith("vit_hf.train:")]


@pytest.fixture(scope="module")
def first_run(digits, tmp_path_factory) -> Path:
    """A 4-step run with checkpoints at steps 2 and 4 (labels one, two, zero)."""
    out = tmp_path_factory.mktemp("first") / "out"
    train_mod.main([*SMALL, *data_args(digits), "--output_dir", str(out), "--max_train_steps", "4",
                    "--checkpointing_steps", "2"])
    reset_accelerate()
    return out


# ----------------------------------------------------------------------------------------------------------------------
# The run fingerprint (issue row "resume into another run")
# ----------------------------------------------------------------------------------------------------------------------


def test_checkpoints_record_the_run_fingerprint(first_run):
    state = json.loads((first_run / "step_2" / train_mod.TRAINER_STATE).read_text())
    run = state["run"]
    assert run["identity"] == {"labels": ["one", "two", "zero"]} and run["task"] == "classification"
    assert run["model"]["hidden_size"] == 32 and run["model"]["image_size"] == 16
    assert run["data"]["train"] == 24 and run["data"]["validation"] == 9 and len(run["data"]["train_content"]) == 16
    assert run["batch"] == {"per_device": 4, "accumulation": 1, "processes": 1}
    assert run["recipe"]["learning_rate"] == 1e-3 and run["recipe"]["seed"] == 3
    assert run["schedule"]["max_train_steps"] == 4


def test_resume_into_another_runs_checkpoints_is_refused_one_line_per_difference(first_run, tmp_path, capsys):
    """Other labels, batch geometry, learning rate and model size: refused before any state is loaded, one line per
    difference, exit 2; the output dir is left exactly as it was."""
    fruit = make_digits_folder(tmp_path / "fruit", {"train": 24, "validation": 9}, names=FRUIT)
    before = snapshot(first_run)
    lines = refused([*SMALL, *data_args(fruit), "--output_dir", str(first_run), "--max_train_steps", "4",
                     "--resume_from_checkpoint", "latest", "--per_device_train_batch_size", "6",
                     "--gradient_accumulation_steps", "2", "--learning_rate", "5e-4", "--config_overrides",
                     "hidden_size=48"], capsys)
    text = "\n".join(lines)
    assert lines[0].startswith(f"vit_hf.train: cannot resume {first_run / 'step_4'}: it was written by another run")
    assert "vit_hf.train: checkpoint labels one, two, zero; this run apple, pear, plum" in lines
    assert ("vit_hf.train: checkpoint batch 4 per device x 1 accumulation x 1 process(es); this run 6 per device x 2 "
            "accumulation x 1 process(es)") in lines
    assert "vit_hf.train: checkpoint --learning_rate 0.001; this run 0.0005" in lines
    assert re.search(r"checkpoint model hidden_size=32; this run hidden_size=48 \(--model_name_or_path", text)
    assert "size mismatch" not in text and "--overwrite_output_dir" in lines[-1]
    assert snapshot(first_run) == before


def test_resume_with_other_images_of_the_same_classes_is_refused(first_run, tmp_path, capsys):
    """Same class names and split sizes, other images: the content fingerprint tells them apart."""
    other = tmp_path / "other"
    for split, num, offset in (("train", 24, 500), ("validation", 9, 1500)):
        for i, (array, label) in enumerate(digit_images(num, offset=offset)):
            folder = other / split / DIGIT_NAMES[label]
            folder.mkdir(parents=True, exist_ok=True)
            import PIL.Image

            PIL.Image.fromarray(array).save(folder / f"{split}_{i:04d}.png")
    lines = refused([*SMALL, *data_args(other), "--output_dir", str(first_run), "--max_train_steps", "4",
                     "--resume_from_checkpoint", "latest"], capsys)
    assert len(lines) == 3 and lines[1].startswith("vit_hf.train: checkpoint data ") and "(train 24" in lines[1]


def test_more_steps_is_a_safe_change_logged_and_resumed(first_run, digits, tmp_path, caplog):
    """Resuming step_4 with --max_train_steps 6: allowed, said in the log, the run goes on from step 4."""
    import shutil

    out = tmp_path / "out"
    shutil.copytree(first_run, out)
    with caplog.at_level("INFO", logger="vit_hf.train"):
        results = train_mod.main([*SMALL, *data_args(digits), "--output_dir", str(out), "--max_train_steps", "6",
                                  "--resume_from_checkpoint", str(out / "step_4")])
    assert results["completed_steps"] == 6
    assert "with a changed schedule (allowed): max_train_steps 4 -> 6" in caplog.text
    assert "resumed from" in caplog.text and "step 4" in caplog.text


def test_a_tasks_own_identity_is_compared_key_by_key():
    """`Task.identity` is compared generically: SimMIM's mask flags as flags, lists by name; the schedule is safe."""
    from vit_hf.train.runs import differences

    def fingerprint(ratio: float, steps: int) -> dict:
        return {"task": "mim", "model": {"hidden_size": 32}, "identity": {"mask_patch_size": 8, "mask_ratio": ratio},
                "data": {}, "batch": {}, "recipe": {"seed": 0}, "schedule": {"max_train_steps": steps}}

    refusals, safe = differences(fingerprint(0.6, 8), fingerprint(0.5, 12))
    assert refusals == ["checkpoint --mask_ratio 0.6; this run 0.5"] and safe == ["max_train_steps 8 -> 12"]
    assert differences(fingerprint(0.6, 8), fingerprint(0.6, 8)) == ([], [])


# ----------------------------------------------------------------------------------------------------------------------
# An output dir that holds a run
# ----------------------------------------------------------------------------------------------------------------------


def test_output_dir_holding_a_run_is_refused_without_resume_or_overwrite(first_run, digits, capsys):
    before = snapshot(first_run)
    lines = refused([*SMALL, *data_args(digits), "--output_dir", str(first_run), "--max_train_steps", "2"], capsys)
    assert len(lines) == 1 and "already holds a run (step_2, step_4, all_results.json" in lines[0]
    assert "--resume_from_checkpoint latest" in lines[0] and "--overwrite_output_dir" in lines[0]
    assert snapshot(first_run) == before


def test_resume_latest_into_a_finished_run_without_checkpoints_is_refused(first_run, digits, tmp_path, capsys):
    """`latest` starts afresh only where there is no run: a finished run's results are not silently overwritten."""
    import shutil

    out = tmp_path / "out"
    shutil.copytree(first_run, out, ignore=shutil.ignore_patterns("step_*"))
    before = snapshot(out)
    lines = refused([*SMALL, *data_args(digits), "--output_dir", str(out), "--max_train_steps", "2",
                     "--resume_from_checkpoint", "latest"], capsys)
    assert len(lines) == 1 and "holds a run (all_results.json" in lines[0] and "no complete checkpoint" in lines[0]
    assert snapshot(out) == before


@pytest.mark.slow
def test_overwrite_output_dir_removes_the_old_checkpoints_before_training(first_run, digits, tmp_path):
    """Killed after its first step, the overwriting run has already removed every checkpoint of the old run: nothing
    of it can be resumed by mistake; run to the end, the folder holds only the new run."""
    import shutil

    out = tmp_path / "out"
    shutil.copytree(first_run, out)
    argv = [*SMALL, *data_args(digits), "--output_dir", str(out), "--max_train_steps", "3", "--overwrite_output_dir"]
    run_train(argv, expect=-9, **{_testing.KILL_AFTER_STEP_ENV: "1"})
    assert train_mod.list_checkpoints(out) == [] and not (out / "all_results.json").exists()
    assert not (out / "model.safetensors").exists()
    train_in_process([*argv, "--checkpointing_steps", "3"])  # only the killed run needs a process of its own
    assert [p.name for _, p in train_mod.list_checkpoints(out)] == ["step_3"]
    assert json.loads((out / "all_results.json").read_text())["completed_steps"] == 3


# ----------------------------------------------------------------------------------------------------------------------
# User errors: one line, exit 2, before any training or write
# ----------------------------------------------------------------------------------------------------------------------


def _saved_dataset(root: Path, label_column: str = "label") -> Path:
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image

    pairs = digit_images(12)
    features = Features({"image": Image(), label_column: ClassLabel(names=["zero", "one", "two"])})
    import PIL.Image

    ds = Dataset.from_dict({"image": [PIL.Image.fromarray(a) for a, _ in pairs], label_column: [c for _, c in pairs]},
                           features=features)
    DatasetDict(train=ds, validation=ds.select(range(4))).save_to_disk(str(root))
    return root


def _flat_folder(root: Path) -> Path:
    import PIL.Image

    root.mkdir(parents=True)
    for i, (array, _) in enumerate(digit_images(8)):
        PIL.Image.fromarray(array).save(root / f"{i}.png")
    return root


def _checkpoint_folder(first_run: Path) -> Path:
    return first_run / "step_2"


CASES = {
    # name: (data/model arguments from (tmp_path, digits, first_run), the fix the line must name)
    "no label column": (lambda t, d, r: ["--dataset_name", str(_saved_dataset(t / "ds", "category"))],
                        "no label column 'label' (columns: ['image', 'category']): pass --label_column_name"),
    "single class": (lambda t, d, r: ["--train_dir", str(make_digits_folder(t / "one", {"train": 6},
                                                                            classes=(4,)) / "train")],
                     "one class subfolder (four); classification needs two or more"),
    "flat folder": (lambda t, d, r: ["--train_dir", str(_flat_folder(t / "flat"))],
                    "no class subfolders (a flat folder of images): put each class's images in its own subfolder"),
    "missing train_dir": (lambda t, d, r: ["--train_dir", str(t / "no_such_dir")],
                          "--train_dir {t}/no_such_dir: no such folder"),
    "train_val_split 0": (lambda t, d, r: ["--train_dir", str(d / "train"), "--train_val_split", "0"],
                          "no validation split and --train_val_split 0.0 is not in (0, 1): pass --train_val_split "
                          "0.15"),
    "checkpoint as model": (lambda t, d, r: ["--train_dir", str(d / "train"), "--validation_dir",
                                             str(d / "validation"), "--model_name_or_path", str(r / "step_2")],
                            "is a training checkpoint: fine-tune its model with --model_name_or_path "
                            "{r}/step_2/hf_model, or continue that run with --resume_from_checkpoint {r}/step_2"),
    "mistyped local path": (lambda t, d, r: [*data_args(d), "--model_name_or_path", "./models/vit-tyny"],
                            "--model_name_or_path ./models/vit-tyny: no such folder"),
    "unknown Hub id offline": (lambda t, d, r: [*data_args(d), "--model_name_or_path", "someone/vit-nowhere"],
                               "--model_name_or_path someone/vit-nowhere: "),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_user_errors_are_one_line_exit_2_and_write_nothing(case, tmp_path, digits, first_run, capsys):
    make_args, says = CASES[case]
    data_and_model = make_args(tmp_path, digits, first_run)
    model = SMALL[8:] if "--model_name_or_path" in data_and_model else SMALL  # a loaded model takes no preset flags
    argv = [*model, *data_and_model, "--output_dir", str(tmp_path / "out"), "--max_train_steps", "2"]
    says = says.format(t=tmp_path, r=first_run)
    with pytest.raises(SystemExit) as exit_info:
        train_mod.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and "Traceback" not in "\n".join(err)
    assert len([line for line in err if "vit_hf.train" in line]) == 1 and says in err[-1], err
    assert not (tmp_path / "out").exists()


def test_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    flat = _flat_folder(tmp_path / "flat")
    for how in ("flag", "env"):
        argv = [*SMALL, "--train_dir", str(flat), "--output_dir", str(tmp_path / "out")]
        if how == "flag":
            argv.append("--debug")
        else:
            monkeypatch.setenv("VIT_HF_DEBUG", "1")
        with pytest.raises(SystemExit) as exit_info:
            train_mod.main(argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and "Traceback" in err and "DataError" in err, err
        assert err.strip().splitlines()[-1].startswith("vit_hf.train: ")


HUB_TOKENS = {"hf_tester_write": "tester"}


@pytest.fixture(scope="module")
def hub():
    with HubServer(tokens=HUB_TOKENS) as server:
        yield server


@pytest.mark.parametrize("token, repo, says", [
    (None, "tester/model", "--push_to_hub needs a Hub token with write access: pass --hub_token"),
    ("hf_wrong", "tester/model", "rejected the token (401): pass a valid write token with --hub_token"),
    ("hf_tester_write", "bob/model", "--hub_model_id bob/model: 'tester' cannot write to the namespace 'bob'"),
])
def test_push_to_hub_is_checked_at_start(hub, digits, tmp_path, token, repo, says, monkeypatch, capsys, caplog):
    """Token and namespace checked before any data is read: one line, exit 2, nothing logged before it, no output
    dir, no write to the Hub."""
    import huggingface_hub.constants as constants

    argv = [*SMALL, *data_args(digits), "--output_dir", str(tmp_path / "out"), "--push_to_hub", "--hub_model_id",
            repo, *(["--hub_token", token] if token else [])]
    point_client_at(monkeypatch, hub, tmp_path / "cache")
    monkeypatch.delenv("HF_TOKEN")  # and no stored login either
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no_token"))
    hub.clear_log()
    capsys.readouterr()
    with caplog.at_level("INFO"), pytest.raises(SystemExit) as exit_info:
        train_mod.main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1 and says in lines[0] and "Traceback" not in err, err
    assert [r.getMessage() for r in caplog.records if r.name.startswith("vit_hf")] == []
    assert not (tmp_path / "out").exists()
    assert all(r.method == "GET" for r in hub.requests), hub.requests  # whoami only: nothing created or pushed


# ----------------------------------------------------------------------------------------------------------------------
# Validation splits with a subset of the classes
# ----------------------------------------------------------------------------------------------------------------------


def test_validation_split_with_a_subset_of_the_classes_uses_the_train_label_ids(tmp_path):
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image

    from vit_hf.train.data import load_image_classification_data

    def split(classes, names):
        import PIL.Image

        pairs = digit_images(9, classes=classes)
        features = Features({"image": Image(), "label": ClassLabel(names=names)})
        return Dataset.from_dict({"image": [PIL.Image.fromarray(a) for a, _ in pairs],
                                  "label": [names.index(DIGIT_NAMES[c]) for _, c in pairs]}, features=features)

    # validation has zero and two only: its own ClassLabel numbers them 0 and 1, train's 2 and 1... by name
    DatasetDict(train=split((0, 1, 2), ["one", "two", "zero"]),
                validation=split((0, 2), ["two", "zero"])).save_to_disk(str(tmp_path / "d"))
    data = load_image_classification_data(dataset_name=str(tmp_path / "d"))
    assert data.labels == ["one", "two", "zero"]
    assert data.validation.features["label"].names == data.labels
    assert sorted(set(data.validation["label"])) == [1, 2]  # two -> 1, zero -> 2, as in train
    raw = Dataset.load_from_disk(str(tmp_path / "d" / "validation"))
    assert [data.labels[i] for i in data.validation["label"]] == [raw.features["label"].names[i] for i in raw["label"]]
    # --streaming reads the validation split map-style: the same encoding
    from vit_hf.train.streaming import load_streaming_data

    args = train_mod.parse_args([*SMALL, "--dataset_name", str(tmp_path / "d"), "--streaming", "--max_train_steps",
                                 "1", "--output_dir", str(tmp_path / "out")])
    streamed = load_streaming_data(args, seed=0)
    assert streamed.labels == data.labels and streamed.validation["label"] == data.validation["label"]


def test_class_without_validation_images_has_null_accuracy(tmp_path):
    root = make_digits_folder(tmp_path / "d", {"train": 12})
    make_digits_folder(tmp_path / "v", {"validation": 6}, classes=(0, 1))
    results = train_mod.main([*SMALL, "--train_dir", str(root / "train"), "--validation_dir",
                              str(tmp_path / "v" / "validation"), "--output_dir", str(tmp_path / "out"),
                              "--max_train_steps", "1"])
    assert results["eval_per_class_images"] == {"one": 3, "two": 0, "zero": 3}
    assert results["eval_per_class_accuracy"]["two"] is None
    saved = json.loads((tmp_path / "out" / "all_results.json").read_text())
    assert saved["eval_per_class_accuracy"]["two"] is None
    assert "| two | n/a | 0 |" in (tmp_path / "out" / "README.md").read_text()


# ----------------------------------------------------------------------------------------------------------------------
# Faults during a save, and advice that works
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_disk_full_during_a_checkpoint_keeps_the_previous_one_and_resume_picks_it(digits, tmp_path):
    """ENOSPC while step_4 is saved: one line naming the intact step_2, no half-written folder left; step_2 loads
    standalone; resume from latest ends with the weights of an uninterrupted run, bit for bit."""
    common = [*SMALL, *data_args(digits), "--max_train_steps", "6", "--checkpointing_steps", "2"]
    reference, full = tmp_path / "reference", tmp_path / "full"
    train_in_process([*common, "--output_dir", str(reference)])
    proc = run_train([*common, "--output_dir", str(full)], expect=2, **{_testing.ENOSPC_IN_CHECKPOINT_ENV: "4"})
    lines = [line for line in proc.stderr.splitlines() if line.startswith("vit_hf.train:")]
    assert len(lines) == 1 and lines[0] == (
        f"vit_hf.train: writing checkpoint step_4 in {full} failed ([Errno 28] No space left on device); step_2 is "
        f"intact: free space, then continue with --resume_from_checkpoint latest"), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert [p.name for _, p in train_mod.list_checkpoints(full)] == ["step_2"]
    assert not list(full.glob(".tmp-*")) and not (full / "all_results.json").exists()
    VitHfForImageClassification.from_pretrained(full / "step_2" / train_mod.HF_MODEL_SUBDIR)
    _, log = train_in_process([*common, "--output_dir", str(full), "--resume_from_checkpoint", "latest"])
    assert f"resumed from {full / 'step_2'}" in log
    assert_same_weights(reference, full)


def test_image_size_error_advises_a_call_that_works():
    """Each call the error advises is run on the classification model as written, then the forward works."""
    torch.manual_seed(0)
    model = VitHfForImageClassification(VitHfConfig.from_preset("test", num_labels=3)).eval()
    x = torch.randn(1, 3, 48, 48)
    with pytest.raises(ValueError) as info:
        model(pixel_values=x)
    advice = re.findall(r"(model(?:\.\w+)+\(\(\d+, \d+\)\))", str(info.value))
    assert advice, str(info.value)
    for call in advice:
        eval(call, {"model": model})  # noqa: S307 - the message's own advice, run as a user would
        assert model(pixel_values=x).logits.shape == (1, 3)
    assert model(pixel_values=x, interpolate_pos_encoding=True).logits.shape == (1, 3)


def test_import_graph_of_vit_hf_train_has_no_cycle():
    """Every import of one vit_hf.train module by another (function-level ones included): no cycle."""
    import ast

    root = Path(train_mod.__file__).parent
    modules = {p.stem: p for p in root.glob("*.py")}
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                deps.update([node.module.split(".")[0]] if node.module else [a.name for a in node.names])
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("vit_hf.train."):
                deps.add(node.module.split(".")[2])
        edges[name] = {d for d in deps if d in modules and d != name}

    def reachable(start: str) -> set[str]:
        seen, todo = set(), list(edges[start])
        while todo:
            n = todo.pop()
            if n not in seen:
                seen.add(n)
                todo.extend(edges[n])
        return seen

    assert [n for n in modules if n in reachable(n)] == []
    assert "mim" not in edges["loop"] and "classification" not in edges["loop"]  # the loop knows tasks by registry
    assert sys.modules["vit_hf.train"].__all__ and not any("ENV" in n for n in train_mod.__all__)
