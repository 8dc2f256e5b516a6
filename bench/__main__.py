"""One entry point for every benchmark: `python -m bench SUITE [--quick] [--device {cpu,cuda}] [suite options]`.

    python -m bench forward --quick                  # seconds: the toy size, a smoke test of the suite
    python -m bench train_step --sizes B/16 --device cuda
    python -m bench all                              # the full sequence behind bench/README.md (quiet machine)
    python -m bench SUITE --help                     # a suite's own options

Full runs write bench/results/ (what the READMEs cite); `--quick` runs write to a temporary folder (printed; set
BENCH_RESULTS to choose), so a smoke run never overwrites measured results. BENCH_THREADS=N pins torch's threads.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

# suite -> (module, extra arguments, what it measures)
COMPILE_CASES = "S/16-b8-fp32,S/16-b8-bf16-autocast,B/16-b8-fp32,B/16-b8-bf16-autocast"
SUITES: dict[str, tuple[str, list[str], str]] = {
    "forward": ("bench.forward", [], "inference images/s, fp32 / bf16 (CUDA: + tf32, fp16, SDPA kernels), vs GEMM"),
    "compile": (
        "bench.forward",
        ["--compile", "--freezing", "--batches", "8", "--compile-cases", COMPILE_CASES, "--cases", COMPILE_CASES,
         "--candidates", "vit_hf,timm,hf_sdpa", "--out", "forward_compiled"],
        "torch.compile(fullgraph=True) vs eager, default and freezing, same rounds",
    ),  # fmt: skip
    "train_step": ("bench.train_step", [], "training-step images/s, in-process interleaved (CUDA: + peak memory)"),
    "train_memory": ("bench.train_memory", [], "training-step peak memory, fresh process per candidate"),
    "train_loop": ("bench.train_loop", [], "vit_hf.train vs a plain timm fine-tuning loop"),
    "lora": ("bench.lora", [], "LoRA (peft) vs full fine-tuning: step time and peak memory"),
    "train_fsdp": ("bench.train_fsdp", [], "DDP vs FSDP2 step time and peak memory per process, 2 processes"),
    "preprocess": ("bench.preprocess", [], "PIL images -> batch tensor, vs transformers' and timm's processors"),
    "input_pipeline": ("bench.input_pipeline", [], "JPEG decode + train transform images/s per worker vs timm; stream"),
    "load": ("bench.load", [], "from_pretrained time and peak memory"),
    "convert": ("bench.convert", [], "timm / npz -> vit_hf conversion time and peak memory"),
    "onnx": ("bench.onnx", [], "onnxruntime fp32 / int8 vs PyTorch eager fp32 / bf16, int8 accuracy on real digits"),
    "naflex": ("bench.naflex", [], "NaFlex batch of mixed grids vs transformers' Siglip2VisionModel, same weights"),
    "device_check": ("bench.device_check", [], "the whole comparison on one device, one markdown table"),
    "profile": ("bench.profile_ops", [], "torch.profiler op table of one case, to explain a gap"),
    "report": ("bench.report", [], "results -> markdown tables (--summary: one row per case)"),
    "plot": ("bench.plot", [], "results -> results/ratios.png"),
}
# The full sequence (`all`): (step, timeout s, suite, arguments), in priority order. Every file it writes is one the
# READMEs cite; bench.report and bench.plot then render them.
SEQUENCE: list[tuple[str, int, str, list[str]]] = [
    ("preprocess", 240, "preprocess", []),
    ("forward", 1500, "forward", ["--batches", "1,8", "--rounds", "8"]),
    ("forward_b64", 900, "forward", ["--batches", "64", "--rounds", "2", "--out", "forward_b64"]),
    ("forward_rope", 900, "forward", ["--sizes", "DINOv3-S/16,EVA02-S/14", "--batches", "1,8", "--cases",
                                      "b1-fp32,b8-fp32,b8-bf16-autocast", "--candidates", "vit_hf,timm",
                                      "--rounds", "8", "--out", "forward_rope"]),
    ("compile", 1800, "compile", ["--rounds", "6"]),
    ("train_memory", 900, "train_memory", ["--batch", "8", "--rounds", "1", "--steps", "0",
                                           "--candidates", "vit_hf,timm,hf_sdpa"]),
    ("train_step_S16", 400, "train_step", ["--sizes", "S/16"]),
    ("train_step_B16", 600, "train_step", ["--sizes", "B/16", "--candidates", "vit_hf,timm"]),
    ("onnx", 1500, "onnx", []),
    ("load", 150, "load", ["--rounds", "3"]),
    ("convert", 200, "convert", ["--rounds", "1"]),
    ("convert_transformers", 400, "convert", ["--rounds", "5", "--candidates", "tf_api,tf_cli,hf_load,hf_load_used,"
                                              "hf_resave", "--out", "convert_transformers"]),
    ("lora", 900, "lora", ["--sizes", "B/16", "--batch", "8", "--rounds", "3", "--mem-rounds", "2"]),
    ("train_fsdp", 600, "train_fsdp", ["--sizes", "S/16", "--batch", "8", "--steps", "3", "--rounds", "2"]),
    ("input_pipeline", 600, "input_pipeline", ["--images", "512", "--workers", "0,1,2,4,8"]),
    ("train_loop", 300, "train_loop", ["--sizes", "S/16", "--steps", "4", "--rounds", "2"]),
    ("train_loop_b16", 600, "train_loop", ["--sizes", "B/16", "--steps", "4", "--rounds", "2",
                                           "--out", "train_loop_b16"]),
]  # fmt: skip
ROOT = Path(__file__).resolve().parent.parent


def usage() -> str:
    width = max(map(len, SUITES))
    lines = [f"  {name:<{width}}  {what}" for name, (_, _, what) in SUITES.items()]
    lines.append(f"  {'all':<{width}}  every measuring suite in sequence, then report and plot (see bench/README.md)")
    return __doc__ + "\nsuites:\n" + "\n".join(lines)


def run_suite(name: str, argv: list[str]) -> None:
    import importlib

    module, preset, _ = SUITES[name]
    if "--quick" in argv and name == "compile":  # the toy size's own case, default mode only, two candidates
        preset = ["--compile", "--no-eager-cases", "--batches", "2", "--compile-cases", "toy/8-b2-fp32",
                  "--cases", "toy/8-b2-fp32", "--candidates", "vit_hf,timm", "--out", "forward_compiled"]  # fmt: skip
    importlib.import_module(module).main(preset + argv)


def clear_results(results: Path) -> None:
    """A full sequence replaces the previous run's files (git history keeps them): only the latest run stays. The
    device check's table is not part of the sequence (it comes from a GPU machine) and stays."""
    for path in results.iterdir():
        if path.name.startswith("device_check_"):
            continue
        if path.suffix in (".json", ".md", ".png") or path.is_dir():
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def run_all(argv: list[str]) -> int:
    """Every step of SEQUENCE as a time-boxed subprocess (quick: `--quick` instead of the step's arguments, no gate,
    no clearing), then the tables, the summary and the chart."""
    from bench import gate

    quick, use_gate = "--quick" in argv, "--no-gate" not in argv and "--quick" not in argv
    if "cuda" in argv or "--device=cuda" in argv:  # no GPU: one line now, not one failure per step later
        from bench import device

        device.resolve("cuda")
    passed = [a for a in argv if a != "--no-gate"]
    results = Path(os.environ["BENCH_RESULTS"]) if os.environ.get("BENCH_RESULTS") else ROOT / "bench/results"
    logs = results / "logs"
    if not quick:
        gate.wait_quiet()
        clear_results(results)
    logs.mkdir(parents=True, exist_ok=True)
    failed, done = [], set()
    with gate.Gate(logs / "gate.txt") if use_gate else contextlib.nullcontext(), sampling(None if quick else logs):
        for step, timeout_s, suite, args in SEQUENCE:
            if quick and suite in done:
                continue  # quick: each suite once
            done.add(suite)
            cmd = [sys.executable, "-m", "bench", suite, *(passed if quick else [*args, *passed])]
            if gate.run_step(step, timeout_s, cmd, logs) != 0:
                failed.append(step)
    with open(results / "tables.md", "w") as f:
        subprocess.run([sys.executable, "-m", "bench", "report"], stdout=f, check=True)
    with open(results / "summary.md", "w") as f:
        subprocess.run([sys.executable, "-m", "bench", "report", "--summary"], stdout=f, check=True)
    subprocess.run([sys.executable, "-m", "bench", "plot"], check=True)
    print(f"results in {results}" + (f"; failed steps (see logs/): {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


@contextlib.contextmanager
def sampling(logs: Path | None) -> Iterator[None]:
    """The load-average sampler of a full run (nothing for a quick one)."""
    from bench import gate

    thread = gate.LoadSampler(logs / "loadavg.txt") if logs else None
    if thread:
        thread.start()
    try:
        yield
    finally:
        if thread:
            thread.done.set()


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name != "all" and name not in SUITES:
        print(f"error: unknown suite {name!r}; choose one of {', '.join([*SUITES, 'all'])}", file=sys.stderr)
        return 2
    if "--quick" in rest and not os.environ.get("BENCH_RESULTS"):
        os.environ["BENCH_RESULTS"] = str(Path(tempfile.gettempdir()) / "vit_hf-bench-quick")
    os.chdir(ROOT)  # children run `-m bench...` and converters from the repository root
    t0 = time.perf_counter()
    if name == "all":
        return run_all(rest)
    run_suite(name, rest)
    if "--quick" in rest:
        print(f"(quick run, {time.perf_counter() - t0:.0f} s: results in {os.environ['BENCH_RESULTS']})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
