"""Smoke tests of the benchmarks on the toy size, asserting the structure of what they write (rows, candidates, ratios,
columns), never timings. One test runs the entry point as a user does (`python -m bench forward --quick`, a process of
its own); the other suites run in this process, as the entry point runs them (`bench.__main__.run_suite`), in a results
folder the test picks: each subprocess would spend most of its CPU time importing torch, timm and transformers again."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
from functools import partial
from pathlib import Path

import pytest
import torch

from bench import gate

ROOT = Path(__file__).resolve().parent.parent
PEERS = {"vit_hf", "timm", "hf_sdpa", "hf_eager"}


# what libraries do when a suite first imports them, not the suite: torch._inductor, scikit-learn and joblib set these
# variables (and onnxruntime puts a folder of its own on sys.path); pytest sets PYTEST_CURRENT_TEST per phase
SET_ON_IMPORT = {"TORCHINDUCTOR_CACHE_DIR", "KMP_DUPLICATE_LIB_OK", "KMP_INIT_AT_FORK", "PYTEST_CURRENT_TEST"}
INSTALLED = sysconfig.get_paths()["purelib"]


def process_state() -> dict:
    """What a suite run in-process could leave changed for the tests after it."""
    from huggingface_hub.utils import are_progress_bars_disabled
    from transformers.utils import logging as hf_logging

    env = {f"${k}": v for k, v in os.environ.items() if k not in SET_ON_IMPORT}
    return {**env, "cwd": os.getcwd(), "sys.path": [p for p in sys.path if not p.startswith(INSTALLED)],
            "default dtype": torch.get_default_dtype(), "threads": torch.get_num_threads(),
            "grad": torch.is_grad_enabled(), "matmul precision": torch.get_float32_matmul_precision(),
            "bars": (hf_logging.is_progress_bar_enabled(), not are_progress_bars_disabled()),
            "transformers verbosity": hf_logging.get_verbosity()}  # fmt: skip


@pytest.fixture
def results(tmp_path, monkeypatch, one_thread):
    """The results folder of suites run in-process: BENCH_RESULTS (read at each call) points at it, and torch runs one
    thread as BENCH_THREADS=1 gives a command-line run (one_thread sets the count back). The suites seed torch's
    generator, which is restored after them; anything else they leave changed fails the test."""
    monkeypatch.setenv("BENCH_RESULTS", str(tmp_path))
    before = process_state()
    with torch.random.fork_rng():
        yield tmp_path
    after = process_state()
    assert {k: (before.get(k), after.get(k)) for k in {*before, *after} if before.get(k) != after.get(k)} == {}


def run_suite(name: str, argv: list[str]) -> None:
    """`python -m bench NAME ARGV` in this process: the entry point's own dispatch (module and preset arguments)."""
    from bench.__main__ import run_suite

    run_suite(name, argv)


def report_of(results: Path, monkeypatch, capsys) -> str:
    """`python -m bench report` on `results`, in-process: the markdown it prints."""
    from bench import report

    monkeypatch.setenv("BENCH_RESULTS", str(results))
    capsys.readouterr()
    report.main([])
    return capsys.readouterr().out


def assert_ratios(rows: list[dict], key: str = "vs_best_peer") -> None:
    """Per case: every candidate has a ratio to the best peer, and the best peer's own ratio is exactly 1."""
    for case in {r["case"] for r in rows}:
        ratios = [r[key] for r in rows if r["case"] == case and r["candidate"] in PEERS]
        assert all(x > 0 for x in ratios), (case, ratios)
        peers_only = [r[key] for r in rows if r["case"] == case and r["candidate"] in PEERS - {"vit_hf"}]
        assert max(peers_only) == pytest.approx(1.0), (case, peers_only)


@pytest.mark.slow
def test_forward_quick_writes_every_precision_for_every_candidate(tmp_path, monkeypatch, capsys):
    """The one run of the entry point as a command: `python -m bench forward --quick` in a process of its own."""
    measured = (ROOT / "bench" / "results" / "forward.json").read_bytes()
    # no BENCH_RESULTS: a quick run must pick a temporary folder itself, never bench/results
    env = {k: v for k, v in os.environ.items() if k != "BENCH_RESULTS"}
    env.update(HF_HUB_OFFLINE="1", BENCH_THREADS="1", TMPDIR=str(tmp_path))
    argv = [sys.executable, "-m", "bench", "forward", "--quick", "--batches", "2"]
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    quick = tmp_path / "vit_hf-bench-quick"
    assert f"results in {quick}" in proc.stdout
    assert (ROOT / "bench" / "results" / "forward.json").read_bytes() == measured
    data = json.loads((quick / "forward.json").read_text())
    rows = data["rows"]
    cases = {r["case"] for r in rows}
    assert cases == {"toy/8-b2-fp32", "toy/8-b2-bf16-autocast", "toy/8-b2-bf16-weights"}
    for case in cases:
        assert {r["candidate"] for r in rows if r["case"] == case} == PEERS
    assert_ratios(rows)
    for r in rows:
        assert r["img_s"] > 0 and r["img_s_best"] >= r["img_s"] and r["rounds"] == 2
        assert r["frac_gemm_peak"] == pytest.approx(r["gflop_s"] / r["gemm_gflop_s"])
    assert data["env"]["device"] == "cpu" and not data.get("partial")
    # the report renders these files: one table row per result row
    report = report_of(quick, monkeypatch, capsys)
    assert sum(line.startswith("| toy/8-b2-") for line in report.splitlines()) == len(rows)


def test_forward_rows_for_the_eva_families_against_timm(results):
    """The DINOv3 and EVA02 rows at their toy sizes, one round: timm's eva.py models converted by the
    project's converter (build_all checks the logits agree), vit_hf and timm only, the ratio to timm per case; timed
    by CPU time (`--clock cpu`, one thread)."""
    run_suite("forward", ["--quick", "--sizes", "toy-DINOv3/8,toy-EVA02/8", "--batches", "2", "--rounds", "1",
                          "--cases", "b2-fp32,b2-bf16-autocast", "--clock", "cpu", "--out", "forward_rope"])
    data = json.loads((results / "forward_rope.json").read_text())
    rows = data["rows"]
    cases = {f"toy-{f}/8-b2-{p}" for f in ("DINOv3", "EVA02") for p in ("fp32", "bf16-autocast")}
    assert {r["case"] for r in rows} == cases
    for case in cases:
        got = {r["candidate"]: r for r in rows if r["case"] == case}
        assert set(got) == {"vit_hf", "timm"}  # no transformers ViT for these families
        assert got["timm"]["vs_best_peer"] == 1.0 and got["timm"]["time_vs_timm"] == 1.0
        assert got["vit_hf"]["time_vs_timm"] > 0 and got["vit_hf"]["best_peer"] == "timm"
        assert all(len(r["round_s"]) == r["rounds"] == 1 and r["img_s"] > 0 and r["clock"] == "cpu"
                   for r in got.values())


def test_forward_refuses_an_unknown_size(capsys):
    from bench import forward

    with pytest.raises(SystemExit) as e:
        forward.main(["--sizes", "DINOv3-S/17"])
    assert e.value.code == 2 and "unknown size(s) DINOv3-S/17" in capsys.readouterr().err


@pytest.mark.slow
def test_train_step_quick_writes_one_file_per_case(results):
    run_suite("train_step", ["--quick", "--cases", "fp32"])
    files = sorted(p.name for p in (results / "train_step").glob("*.json"))
    assert files == ["toy8-b2-fp32-ckpt.json", "toy8-b2-fp32.json"]
    for name in files:
        rows = json.loads((results / "train_step" / name).read_text())["rows"]
        assert {r["candidate"] for r in rows} == {"vit_hf", "timm", "hf_sdpa"}
        assert_ratios(rows)
        assert next(r["vs_timm"] for r in rows if r["candidate"] == "timm") == 1.0
        assert all(r["img_s"] > 0 and r["clean_rounds"] <= r["rounds"] == 2 for r in rows)


@pytest.mark.slow
def test_device_check_sh_runs_the_suite_from_the_repository_root(tmp_path):
    """The wrapper's own work, with the real interpreter, from another folder: it finds the suite from the repository
    root, and without `--device` it asks for CUDA, which this CPU machine refuses in one line before any model is
    built (nothing written). The suite itself is the next test's."""
    script = ROOT / "bench" / "device_check.sh"
    env = {**os.environ, "PYTHON": sys.executable, "BENCH_RESULTS": str(tmp_path / "results")}
    run = partial(subprocess.run, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    usage = run([str(script), "--device", "cpu", "--help"])
    assert usage.returncode == 0 and "--device {cpu,cuda}" in usage.stdout, usage
    if torch.cuda.is_available():
        return  # the default device exists here: the refusal below cannot happen
    default = run([str(script), "--quick"])
    assert default.returncode != 0 and default.stderr.startswith("error: --device cuda: "), default
    assert len(default.stderr.strip().splitlines()) == 1 and not (tmp_path / "results").exists()


@pytest.mark.slow
def test_device_check_cpu_tiny_writes_one_table(results, monkeypatch):
    with monkeypatch.context() as env:
        env.setenv("BENCH_TINY", "1")  # the tiny config (as --quick)
        run_suite("device_check", ["--device", "cpu"])
    torch._dynamo.reset()  # the compile section's compiled models: cached by dynamo, holding them in memory
    text = (results / "device_check_cpu.md").read_text()
    assert text.startswith("# Device check: cpu") and "TINY CONFIG" in text
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert table[0] == "| section | case | metric | vit_hf | timm | hf_sdpa | hf_eager | vit_hf / best peer |"
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table[2:]]
    assert all(len(r) == 8 for r in rows)
    sections = {r[0] for r in rows}
    assert sections == {"forward", "train step", "compile (aot_eager)"}  # no memory rows on the CPU
    assert {r[1] for r in rows if r[0] == "forward"} == {f"toy/8-b2-{p}" for p in ("fp32", "bf16-autocast",
                                                                                 "bf16-weights")}  # fmt: skip
    assert {r[1] for r in rows if r[0] == "train step"} == {"toy/8-b2-fp32", "toy/8-b2-bf16"}
    for section, _, metric, *values, ratio in rows:
        if metric == "vit_hf compiled / eager, same rounds":
            assert float(values[0]) > 0 and not any(values[1:]) and not ratio
            continue
        filled = [float(v) for v in values if v]
        assert len(filled) == (4 if section == "forward" else 3) and min(filled) > 0, (section, metric, values)
        assert float(ratio) > 0
    data = json.loads((results / "device_check_cpu.json").read_text())
    assert data["tiny"] and data["skipped"] == [] and len(data["rows"]) == len(rows)


@pytest.mark.slow
def test_onnx_quick_times_every_candidate_and_the_int8_accuracy(results, monkeypatch, capsys):
    """`python -m bench onnx --quick`: every candidate in every case, ratios to PyTorch fp32, the fp32 graph's parity,
    and the digits rows carrying the accuracies that vit_hf.export's verification measured on the real test split."""
    run_suite("onnx", ["--quick"])
    stdout = capsys.readouterr().out
    data = json.loads((results / "onnx.json").read_text())
    rows, candidates = data["rows"], {"torch_fp32", "torch_bf16", "ort_fp32", "ort_int8"}
    assert {r["case"] for r in rows} == {"toy/8-b1", "toy/8-b2", "digits-b360"} and not data.get("partial")
    for case in {r["case"] for r in rows}:
        by = {r["candidate"]: r for r in rows if r["case"] == case}
        assert set(by) == candidates, case
        assert by["torch_fp32"]["vs_torch_fp32"] == 1.0 and by["torch_fp32"]["max_abs_diff"] == 0.0
        assert by["ort_fp32"]["max_abs_diff"] <= 1e-4, case  # the exported graph computes the model
        for r in by.values():
            assert r["img_s"] > 0 and r["vs_torch_fp32"] == pytest.approx(r["img_s"] / by["torch_fp32"]["img_s"])
            assert r["rounds"] == 2 and 0 <= r["top1_agreement"] <= 1
    verified = data["digits"]["verify"]["digits"]
    assert verified["images"] == 360 and verified["labels_are_digits"]
    digits = {r["candidate"]: r for r in rows if r["case"] == "digits-b360"}
    for candidate, key in (("torch_fp32", "pytorch"), ("ort_fp32", "fp32"), ("ort_int8", "int8")):
        assert digits[candidate]["accuracy"] == verified["models"][key]["accuracy"]
    assert digits["ort_fp32"]["accuracy"] == digits["torch_fp32"]["accuracy"] and "accuracy" not in digits["torch_bf16"]
    native = data["env"]["native_bf16"]
    assert ("computes bf16 natively" if native else "has NO native bf16") in stdout
    report = report_of(results, monkeypatch, capsys)
    assert sum(line.startswith(("| toy/8-b", "| digits-b360 |")) for line in report.splitlines()) == len(rows)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_device_cuda_without_gpu_fails_with_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    """The entry point in-process (`python -m bench` is `main(sys.argv[1:])`)."""
    from bench.__main__ import main

    monkeypatch.setenv("BENCH_RESULTS", str(tmp_path / "results"))
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as e:
        main(["train_step", "--quick", "--device", "cuda"])
    message = str(e.value.code)  # sys.exit(message): printed on stderr, exit status 1
    assert len(message.splitlines()) == 1 and "--device cuda" in message and "--device cpu" in message
    assert not (tmp_path / "results").exists()


def test_unknown_suite_names_the_choices(capsys):
    from bench.__main__ import SUITES, main

    assert {"forward", "convert", "onnx", "lora", "train_fsdp", "input_pipeline"} <= set(SUITES)
    capsys.readouterr()
    assert main(["forwards"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: unknown suite 'forwards'; choose one of {', '.join(SUITES)}, all"
    ]


def test_readmes_cite_only_result_files_that_exist():
    cited = set()
    for readme, base in ((ROOT / "README.md", ROOT), (ROOT / "bench" / "README.md", ROOT / "bench")):
        # a path after "<commit>:" cites git history, not a file of the tree
        for path in re.findall(r"(?<![\w:/])((?:bench/)?results/[\w./-]+\.(?:json|md|png|txt))", readme.read_text()):
            cited.add((base if not path.startswith("bench/") else ROOT) / path)
    assert cited, "no result file cited"
    assert [str(p.relative_to(ROOT)) for p in sorted(cited) if not p.exists()] == []


def test_gate_run_step_logs_output_and_times_out(tmp_path, capsys):
    assert gate.run_step("ok", 60, [sys.executable, "-c", "print('measured')"], tmp_path) == 0
    assert (tmp_path / "ok.txt").read_text() == "measured\n"
    assert gate.run_step("slow", 0.5, [sys.executable, "-c", "import time; time.sleep(30)"], tmp_path) == 124
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1:3] for line in lines] == [["START", "ok"], ["END", "ok"], ["START", "slow"], ["END", "slow"]]
    assert lines[-1].split()[3] == "rc=124"


def test_gate_counts_only_other_processes_ticks():
    prev = {1: (0, 100, "python"), 2: (1, 50, "python"), 3: (1, 10, "make")}
    snap = {1: (0, 130, "python"), 2: (1, 90, "python"), 3: (1, 15, "make"), 4: (1, 99, "new")}
    # 2 is ours; 4 was not in the previous snapshot (its ticks before it was seen are unknown); 1 and 3 count
    assert gate.others_ticks(prev, snap, mine={2}) == 30 + 5
    assert gate.descendants(1, snap) == {1, 2, 3, 4}


def test_device_precision_contexts_switch_tf32_and_restore_it():
    """The CUDA fp32 / tf32 contexts only flip torch's switches, so they are checked here without a GPU."""
    from bench import device

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    before = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    with device.precision_context(cuda, "tf32")():
        assert (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32) == ("high", True)
    with device.precision_context(cuda, "fp32")():  # true fp32: no TF32 for matmuls nor for cuDNN convolutions
        assert (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32) == ("highest", False)
    assert (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32) == before
    with device.precision_context(cpu, "bf16-autocast")():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with device.precision_context(cpu, "bf16-weights")():
        assert not torch.is_autocast_enabled("cpu")
    assert device.weights_dtype("fp16-weights") == torch.float16 and device.weights_dtype("bf16-autocast") is None
    assert device.compute_dtype("tf32") == torch.float32 and device.compute_dtype("fp16-autocast") == torch.float16
    assert device.sdpa_backends(cpu, "bf16-autocast") == ("default",)
    assert device.precisions(cpu) == ("fp32", "bf16-autocast", "bf16-weights")


@pytest.mark.slow
def test_input_pipeline_quick_rows_for_every_loader_and_worker_count(results):
    # 16 photos, batch 8: per pass one untimed batch (worker start-up) and one timed
    run_suite("input_pipeline", ["--quick", "--images", "16", "--batch", "8"])
    rows = json.loads((results / "input_pipeline.json").read_text())["rows"]
    loaders = {"vit_hf", "timm", "vit_hf_parquet", "vit_hf_stream"}
    assert {(r["candidate"], r["workers"]) for r in rows} == {(c, w) for c in loaders for w in (0, 1)}
    assert all(r["img_s"] > 0 and r["per_worker"] == r["img_s"] for r in rows)  # 0 and 1 worker: per worker = total
    assert all(r["vs_timm"] == 1.0 for r in rows if r["candidate"] == "timm")
