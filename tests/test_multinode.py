"""Multi-node training as two machines on one: two `accelerate launch --num_machines 2 --machine_rank R` launchers
over loopback, one process each, writing one shared output folder (as on a shared file system). The result is the
2-process single-node DDP run's, to the bit."""

from __future__ import annotations

import json
import subprocess

import pytest
from helpers import ACCELERATE_LAUNCH, REPO, assert_same_weights, child_env, data_args, free_port

pytest.register_assert_rewrite("scale_out")  # a helper and a plugin (pytest_plugins): rewrite it on first import
from scale_out import COMMON  # noqa: E402

pytest_plugins = ("scale_out",)  # the digits and the 2-process DDP run, shared with test_fsdp


def machine(rank: int, port: int, argv: list[str]) -> subprocess.Popen:
    """One "machine": a launcher with one process (--num_processes counts all machines' processes)."""
    cmd = [*ACCELERATE_LAUNCH, "--multi_gpu", "--num_machines", "2", "--machine_rank", str(rank),
           "--main_process_ip", "127.0.0.1", "--main_process_port", str(port), "--num_processes", "2",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "vit_hf.train", *argv]
    return subprocess.Popen(cmd, cwd=REPO, env=child_env(ACCELERATE_USE_CPU="1"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_two_machines_over_loopback_equal_single_node_ddp(ddp_reference, fsdp_digits, tmp_path):
    out = tmp_path / "shared"
    port = free_port()
    launchers = [machine(rank, port, [*COMMON, *data_args(fsdp_digits), "--output_dir", str(out)]) for rank in (0, 1)]
    for rank, proc in enumerate(launchers):
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"machine {rank} exit {proc.returncode}\n{stderr[-6000:]}"
    results = json.loads((out / "all_results.json").read_text())
    assert results["num_processes"] == 2 and results["eval_samples"] == results["eval_unique_samples"] == 37
    assert_same_weights(ddp_reference, out)
    # each machine's process wrote its own RNG state into the one checkpoint folder; the models (accelerate's state,
    # hf_model/, the output folder), global rank 0 only: one of each, complete, no temporary folder left behind
    for step in ("step_2", "step_4"):
        assert {p.name for p in (out / step).glob("random_states_*.pkl")} == {"random_states_0.pkl",
                                                                               "random_states_1.pkl"}
    assert [p.relative_to(out).as_posix() for p in sorted(out.rglob("model.safetensors"))] == [
        "model.safetensors", "step_2/hf_model/model.safetensors", "step_2/model.safetensors",
        "step_4/hf_model/model.safetensors", "step_4/model.safetensors"]
    assert not list(out.glob(".tmp-*")) and not list(out.glob(".old-*"))
