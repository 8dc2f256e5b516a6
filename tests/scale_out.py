"""What the scale-out tests (test_fsdp, test_multinode) share: the training arguments, a 2-process CPU launcher, and two
session fixtures, the real digits and the 2-process DDP run both compare against. Loaded with
`pytest_plugins = ("scale_out",)`, so that each fixture has one definition and runs once per session."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from helpers import ACCELERATE_LAUNCH, REPO, SMALL, child_env, data_args, free_port, make_digits_folder

# 40 images / (4 per device x 2 processes) = 5 batches per epoch, accumulation 2: optimizer steps 1, 2 and 3 (the
# epoch's last, a lone batch), 5 steps in 2 epochs, checkpoints at 2 and 4. drop-path draws from the RNG; the default
# --max_grad_norm 1.0 clips (the logged norms are above 1, asserted below).
COMMON = [*SMALL, "--max_train_steps", "5", "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4",
          "--gradient_accumulation_steps", "2", "--learning_rate", "1e-3", "--seed", "3", "--checkpointing_steps", "2",
          "--drop_path_rate", "0.1"]
DDP = ["--multi_gpu"]
FSDP = ["--use_fsdp", "--fsdp_version", "2"]


@pytest.fixture(scope="session")
def fsdp_digits(tmp_path_factory) -> Path:
    """train: 40 real digits of 3 classes; validation: 37 (odd: padding of the last eval batch would show)."""
    return make_digits_folder(tmp_path_factory.mktemp("digits"), {"train": 40, "validation": 37}, classes=(0, 1, 2))


def launch(mode: list[str], argv: list[str], expect: int = 0, **env: str) -> subprocess.CompletedProcess:
    """`accelerate launch MODE --num_processes 2 -m vit_hf.train ARGV` on CPU (gloo)."""
    cmd = [*ACCELERATE_LAUNCH, *mode, "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--main_process_port", str(free_port()), "-m", "vit_hf.train", *argv]
    proc = subprocess.run(cmd, cwd=REPO, env=child_env(ACCELERATE_USE_CPU="1", **env), capture_output=True,
                          text=True, timeout=300)
    if (proc.returncode == 0) != (expect == 0):
        raise AssertionError(f"exit {proc.returncode} (expected {expect})\nSTDERR:\n{proc.stderr[-6000:]}")
    return proc


@pytest.fixture(scope="session")
def ddp_reference(fsdp_digits, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp") / "out"
    launch(DDP, [*COMMON, *data_args(fsdp_digits), "--output_dir", str(out)])
    return out


