"""`vit_hf.train --streaming` on real digits written as parquet shards by datasets' own writer (`Dataset.to_parquet`),
CPU, offline: the window shuffle resumes exactly from any position, SIGKILL + resume is bit-exact against an
uninterrupted run, the training split is never written as Arrow, an unreadable image is skipped and counted once,
2-process DDP over shards of unequal length finishes, and a run without --max_train_steps is refused."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from helpers import (
    ACCELERATE_LAUNCH,
    REPO,
    SMALL,
    assert_same_weights,
    child_env,
    digits_dataset,
    free_port,
    make_digits_folder,
    run_train,
    train_in_process,
)

from vit_hf import train as train_mod
from vit_hf.train import _testing
from vit_hf.train.streaming import StreamPosition, records

TRAIN_SHARDS = (24, 16)  # unequal on purpose: under 2-process DDP each rank gets one shard
VALIDATION = 18


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """`root/data/{train-0000i-of-00002,validation-00000-of-00001}.parquet`, the layout push_to_hub writes; the
    second train shard holds one truncated PNG."""
    root = tmp_path_factory.mktemp("parquet")
    (root / "data").mkdir()
    digits_dataset(TRAIN_SHARDS[0], 0).to_parquet(str(root / "data" / "train-00000-of-00002.parquet"))
    digits_dataset(TRAIN_SHARDS[1], TRAIN_SHARDS[0] // 3, broken=(3,)).to_parquet(
        str(root / "data" / "train-00001-of-00002.parquet"))
    digits_dataset(VALIDATION, 1000).to_parquet(str(root / "data" / "validation-00000-of-00001.parquet"))
    return root


def stream_args(root: Path, cache: Path, steps: int = 8) -> list[str]:
    return [*SMALL, "--dataset_name", str(root), "--streaming", "--cache_dir", str(cache), "--max_train_steps",
            str(steps), "--per_device_train_batch_size", "4", "--learning_rate", "2e-3", "--seed", "11",
            "--mixed_precision", "no"]


def test_window_shuffle_resumes_from_any_position(shards, tmp_path):
    """The record stream continued from a recorded position equals the uninterrupted stream, for cut points inside a
    first window, mid-epoch (a datasets state_dict to reload), at a window's end and across an epoch boundary."""
    import datasets

    stream = datasets.load_dataset(str(shards), split="train", streaming=True, cache_dir=str(tmp_path))
    stream = stream.cast_column("image", datasets.Image(decode=False))

    def take(start: StreamPosition, n: int) -> list[tuple]:
        out = []
        for record, coords in records(stream, 5, 0, 7, start):
            out.append((record["image"]["bytes"], coords))
            if len(out) == n:
                return out

    full = take(StreamPosition(), 100)  # 40 records per epoch, windows of 7: 2.5 epochs
    epochs = [c[0] for _, c in full]
    assert epochs.count(0) == epochs.count(1) == sum(TRAIN_SHARDS)
    first_epoch = [b for b, c in full if c[0] == 0]
    assert len(set(first_epoch)) == 40 and first_epoch != [b for b, c in full if c[0] == 1]  # reshuffled per epoch
    for cut in (3, 7, 18, 39, 40, 53):
        epoch, window, offset, state = full[cut - 1][1]
        resumed = take(StreamPosition(epoch, window, offset, state), 100 - cut)
        assert [b for b, _ in resumed] == [b for b, _ in full[cut:]], cut


@pytest.mark.slow
def test_streaming_sigkill_and_resume_is_bit_exact(shards, tmp_path):
    """Checkpoints every 3 steps, SIGKILL after step 7; the step_6 position lies mid-window of the second local
    epoch, so resuming reloads a datasets state_dict. No Arrow file of the train split is ever written."""
    cache = tmp_path / "cache"
    common = [*stream_args(shards, cache), "--checkpointing_steps", "3", "--shuffle_buffer_size", "5",
              "--gradient_accumulation_steps", "2", "--drop_path_rate", "0.1", "--mixup", "0.2"]
    reference, _ = train_in_process([*common, "--output_dir", str(tmp_path / "reference")])
    killed = tmp_path / "killed"
    run_train([*common, "--output_dir", str(killed)], expect=-9, **{_testing.KILL_AFTER_STEP_ENV: "7"})
    assert not (killed / "all_results.json").exists()
    saved = json.loads((killed / "step_6" / train_mod.TRAINER_STATE).read_text())["stream"]
    assert len(saved) == 1 and saved[0]["batches"] == 12 and saved[0]["state"] is not None  # 48 of 40 records read
    _, log = train_in_process([*common, "--output_dir", str(killed), "--resume_from_checkpoint", "latest"])
    assert "resumed from" in log and "step 6" in log
    assert_same_weights(tmp_path / "reference", killed)

    resumed = json.loads((killed / "all_results.json").read_text())
    assert resumed["train_skipped_images"] == reference["train_skipped_images"] == 1  # seen twice, counted once
    assert reference["train_samples"] == "streamed" and reference["eval_samples"] == VALIDATION
    arrow = sorted(p.name for p in cache.rglob("*.arrow"))
    assert arrow and all("validation" in name for name in arrow), arrow  # only the validation split was prepared


@pytest.mark.slow
def test_streaming_ddp_unequal_shards_finishes(shards, tmp_path):
    """2 processes, one shard each (24 vs 16 examples): 8 steps of 4 read 32 records per rank, so both cycle their
    shards a different number of times, and both stop at step 8 together."""
    out = tmp_path / "ddp"
    cmd = [*ACCELERATE_LAUNCH, "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
           "-m", "vit_hf.train", *stream_args(shards, tmp_path / "cache"), "--output_dir", str(out),
           "--checkpointing_steps", "4", "--shuffle_buffer_size", "6"]
    proc = subprocess.run(cmd, cwd=REPO, env=child_env(ACCELERATE_USE_CPU="1"), capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-6000:]
    results = json.loads((out / "all_results.json").read_text())
    assert results["num_processes"] == 2 and results["completed_steps"] == 8
    assert results["eval_samples"] == results["eval_unique_samples"] == VALIDATION
    positions = json.loads((out / "step_8" / train_mod.TRAINER_STATE).read_text())["stream"]
    assert [p["batches"] for p in positions] == [8, 8] and all(p["epoch"] >= 1 for p in positions)  # both cycled


def test_streaming_needs_max_train_steps(shards, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_mod.parse_args([*SMALL, "--dataset_name", str(shards), "--streaming", "--output_dir", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "--streaming needs --max_train_steps" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_image_folder_streams_one_shard_per_file(tmp_path):
    """--train_dir --streaming: labels as the map-style loader infers them (from both folders), one shard per file so
    that every local epoch reshuffles the files, the validation folder alone prepared; no validation is refused."""
    from vit_hf.train.data import DataError, load_image_classification_data
    from vit_hf.train.streaming import load_streaming_data

    root = make_digits_folder(tmp_path / "digits", {"train": 12, "validation": 6}, classes=(0, 1, 2))
    folders = ["--train_dir", str(root / "train"), "--validation_dir", str(root / "validation")]
    args = train_mod.parse_args([*SMALL, *folders, "--streaming", "--max_train_steps", "1", "--output_dir",
                                 str(tmp_path / "o"), "--cache_dir", str(tmp_path / "cache")])
    data = load_streaming_data(args, seed=0)
    mapped = load_image_classification_data(train_dir=str(root / "train"), validation_dir=str(root / "validation"),
                                            cache_dir=str(tmp_path / "map_cache"))
    assert data.labels == mapped.labels == ["one", "two", "zero"] and len(data.validation) == 6
    assert data.train.num_shards == 12
    examples = list(data.train)
    assert len(examples) == 12
    assert all(data.labels[ex["label"]] == Path(ex["image"]["path"]).parent.name for ex in examples)
    assert [p.name for p in (tmp_path / "cache").rglob("*.arrow")] == ["imagefolder-validation.arrow"]
    args.validation_dir = None
    with pytest.raises(DataError, match="needs a validation split"):
        load_streaming_data(args, seed=0)
