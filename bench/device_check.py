"""The whole comparison on one device, in one process, as ONE markdown table: vit_hf vs timm vs transformers' ViT.

    bench/device_check.sh [--device cuda|cpu] [--quick] [--budget-s 360]
    python -m bench device_check [--device cuda|cpu] [--quick]

Sections, in this order (the budget skips what would start after it, and the table says so):
  forward       images/s, eager, every precision of the device (CUDA: fp32, tf32, bf16/fp16 autocast, bf16/fp16
                weights; CPU: fp32, bf16 autocast, bf16 weights), batch 1 (fp32 and bf16 autocast), 8 and 64; on CUDA
                also SDPA pinned to the flash and memory-efficient kernels (B/16, batch 64, half precisions)
  train step    images/s of forward + CE + backward + AdamW (fp32, bf16, on CUDA also tf32 and fp16 with a GradScaler)
  memory        CUDA only: what one forward call (batch 64) adds to the allocator's memory, and the peak of the first
                training step (weights + gradients + AdamW state + activations); on the CPU memory is per process
                (`python -m bench train_memory`), so the table has no memory rows
  compile       torch.compile(fullgraph=True) images/s (bf16 autocast, batch 64 on CUDA, 8 on the CPU), compile
                seconds, and compiled / eager for vit_hf in the same rounds (`python -m bench compile` has more cases)
Full config: ViT-S/16 and B/16, 5 rounds of ~0.1 s calls (GPU timings are steady), training batch 32 on CUDA (8 on the
CPU); about 6 minutes on a current GPU by estimate (no GPU run yet); the budget (default 360 s: no case starts
after it) bounds it on slower ones. `--quick` or
BENCH_TINY=1: the toy size (bench.common.QUICK_SIZE), batch 2, 2 rounds, compile through the aot_eager backend
(dynamo's fullgraph tracing without inductor's code generation, which takes ~20 s per model on a 2-core CPU): a
smoke test of every path in well under a minute on a CPU, whose numbers measure overhead only.
The table: one row per (section, case, metric), one column per candidate, and `vit_hf / best peer` (> 1: vit_hf
better: faster, or smaller for memory). Written to results/device_check_<device>.md (and .json), and printed.
"""

from __future__ import annotations

import argparse
import copy
import gc
import os
import time

import torch

from bench import device as dev
from bench.common import QUICK_SIZE, build_all, environment, images, markdown, results_dir, save
from bench.forward import SAME_ROUNDS_EAGER
from bench.forward import run_case as forward_case
from bench.train_step import run_case as train_case

CANDIDATES = ("vit_hf", "timm", "hf_sdpa", "hf_eager")
COMPILED = ("vit_hf", "timm", "hf_sdpa")  # eager attention is not what anyone compiles
TRAINED = ("vit_hf", "timm", "hf_sdpa")


def config(device: torch.device, tiny: bool) -> dict:
    """What the check runs: the full config, or the tiny one (smoke test)."""
    if tiny:
        return dict(sizes=[QUICK_SIZE], batches=(2,), rounds=2, call_s=0.02, train_batch=2, compile_batch=2,
                    backend="aot_eager", compile_precisions=("fp32",), sdpa_case=(QUICK_SIZE, 2))  # fmt: skip
    return dict(sizes=["S/16", "B/16"], batches=(1, 8, 64), rounds=5, call_s=0.1,
                train_batch=32 if device.type == "cuda" else 8, compile_batch=64 if device.type == "cuda" else 8,
                backend="inductor", compile_precisions=("bf16-autocast",), sdpa_case=("B/16", 64))  # fmt: skip


def forward_plan(device: torch.device, size: str, cfg: dict) -> list[tuple[int, str, str]]:
    """(batch, precision, sdpa backend): batch 1 in fp32 and bf16 autocast only (latency, not throughput)."""
    out = []
    for b in cfg["batches"]:
        for p in dev.precisions(device):
            if b == 1 and p not in ("fp32", "bf16-autocast"):
                continue
            pinned = (size, b) == cfg["sdpa_case"] and not p.startswith(("fp32", "tf32"))
            out += [(b, p, s) for s in dev.sdpa_backends(device, p) if s == "default" or pinned]
    return out


def table_rows(section: str, rows: list[dict], metric: str, key: str, higher: bool = True) -> list[dict]:
    """Rows of one run_case result pivoted to the table's shape: one row, one column per candidate, the ratio."""
    by = {r["candidate"]: r.get(key) for r in rows if r.get(key) is not None}
    if not by:
        return []
    out = {"section": section, "case": rows[0]["case"], "metric": metric}
    out.update({c: by[c] for c in CANDIDATES if c in by})
    peers = [v for c, v in by.items() if c in CANDIDATES and c != "vit_hf"]
    if "vit_hf" in by and peers:
        best = max(peers) if higher else min(peers)
        out["vit_hf / best peer"] = by["vit_hf"] / best if higher else best / by["vit_hf"]
    return [out]


class Budget:
    """Wall-clock budget: cases that would start after it are listed as skipped."""

    def __init__(self, seconds: float):
        self.end, self.skipped = time.monotonic() + seconds, []

    def left(self, what: str) -> bool:
        if time.monotonic() < self.end:
            return True
        self.skipped.append(what)
        return False


def forward_section(models: dict, size: str, device: torch.device, cfg: dict, budget: Budget) -> list[dict]:
    out = []
    for b, p, sdpa in forward_plan(device, size, cfg):
        if not budget.left(f"forward {size}-b{b}-{p}-{sdpa}"):
            continue
        rows = forward_case(models, size, b, p, cfg["rounds"], None, sdpa, call_s=cfg["call_s"])
        out += table_rows("forward", rows, "img/s", "img_s")
        if device.type == "cuda" and b == max(cfg["batches"]) and sdpa == "default":
            # what one call adds to the memory held before it (activations, workspace); the allocator's absolute peak
            # counts every resident model, so it is in the JSON, not compared here
            out += table_rows("memory", rows, "forward call MiB (activations)", "call_mib", higher=False)
    return out


def train_section(models: dict, size: str, device: torch.device, cfg: dict, budget: Budget) -> list[dict]:
    out = []
    batch = cfg["train_batch"]
    x = images(size, batch, device)
    y = torch.randint(0, 1000, (batch,), generator=torch.Generator().manual_seed(0)).to(device)
    # copies: training changes the weights, and the compile section times the models as built
    trained = {n: copy.deepcopy(m) for n, m in models.items() if n in TRAINED}
    for p in dev.train_precisions(device):
        case = f"{size}-b{batch}-{p}"
        if not budget.left(f"train step {case}"):
            continue
        rows = train_case(trained, case, x, y, p, False, cfg["rounds"], collect=False)
        out += table_rows("train step", rows, "img/s", "img_s")
        out += table_rows("memory", rows, "train step peak MiB (weights + step)", "peak_mib", higher=False)
    del trained
    gc.collect()
    return out


def compile_section(models: dict, size: str, device: torch.device, cfg: dict, budget: Budget) -> list[dict]:
    out = []
    batch = cfg["compile_batch"]
    # a GPU without bf16 (pre-Ampere) compiles its fp16 autocast instead
    for p in (p if p in dev.precisions(device) else "fp16-autocast" for p in cfg["compile_precisions"]):
        if not budget.left(f"compile {size}-b{batch}-{p}"):
            continue
        compiled = {n: m for n, m in models.items() if n in COMPILED}
        rows = forward_case(compiled, size, batch, p, cfg["rounds"], "default", call_s=cfg["call_s"],
                            backend=cfg["backend"])  # fmt: skip
        label = "compile" if cfg["backend"] == "inductor" else f"compile ({cfg['backend']})"
        out += table_rows(label, rows, "img/s", "img_s")
        out += table_rows(label, rows, "compile s", "compile_s", higher=False)
        eager = next(r for r in rows if r["candidate"] == f"vit_hf{SAME_ROUNDS_EAGER}")
        ours = next(r for r in rows if r["candidate"] == "vit_hf")
        out.append({"section": label, "case": rows[0]["case"], "metric": "vit_hf compiled / eager, same rounds",
                    "vit_hf": ours["img_s"] / eager["img_s"]})  # fmt: skip
    return out


def header(env: dict, seconds: float, tiny: bool, skipped: list[str]) -> str:
    where = env.get("gpu") or f"{env['cpu']}, {env['threads']} thread(s)"
    lines = [
        f"# Device check: {env['device']} ({where})",
        "",
        f"torch {env['torch']}, transformers {env['transformers']}, timm {env['timm']}"
        + (f", CUDA {env['cuda']}, cuDNN {env['cudnn']}" if env["device"] == "cuda" else "")
        + f"; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(env['started_unix']))}, {seconds:.0f} s"
        + ("; TINY CONFIG (smoke test: the numbers measure overhead, not the models)" if tiny else ""),
        "",
        "vit_hf / best peer > 1: vit_hf better (faster, or less memory). Medians of interleaved rounds.",
    ]
    if skipped:
        lines += ["", f"Skipped (budget): {', '.join(skipped)}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    dev.add_argument(ap)
    ap.add_argument("--quick", action="store_true", help="the tiny config (also BENCH_TINY=1)")
    ap.add_argument("--budget-s", type=float, default=360.0, help="start no case after this many seconds")
    args = ap.parse_args(argv)
    device = dev.resolve(args.device)
    tiny = args.quick or os.environ.get("BENCH_TINY", "") not in ("", "0")
    cfg, env, t0, budget = config(device, tiny), environment(device), time.perf_counter(), Budget(args.budget_s)
    rows: list[dict] = []
    models = {size: build_all(list(CANDIDATES), size, device=device) for size in cfg["sizes"]}
    for size in cfg["sizes"]:  # compile last: the slowest part, and the first the budget drops
        rows += forward_section(models[size], size, device, cfg, budget)
        rows += train_section(models[size], size, device, cfg, budget)
    for size in cfg["sizes"]:
        rows += compile_section(models[size], size, device, cfg, budget)
    order = {"forward": 0, "train step": 1, "memory": 2}
    rows.sort(key=lambda r: order.get(r["section"], 3))
    columns = ["section", "case", "metric", *CANDIDATES, "vit_hf / best peer"]
    text = header(env, time.perf_counter() - t0, tiny, budget.skipped) + "\n" + markdown(rows, columns) + "\n"
    name, results = f"device_check_{device.type}", results_dir()
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{name}.md").write_text(text)
    env["loadavg_end"] = os.getloadavg()
    save(name, {"env": env, "args": vars(args), "tiny": tiny, "config": cfg, "skipped": budget.skipped, "rows": rows})
    print(text)
    print(f"wrote {results / name}.md")


if __name__ == "__main__":
    main()
