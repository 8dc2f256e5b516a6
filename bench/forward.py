"""Inference forward throughput (images/s): vit_hf vs timm vs transformers ViT (sdpa, eager), equal weights.

    .venv/bin/python -m bench.forward [--quick] [--cases S/16-b8,B/16-b1-fp32] [--compile] [--rounds N]

Case names: "{size}-b{batch}-{precision}[-compiled[-frozen]]"; precision is fp32, bf16-autocast (fp32 weights under
torch.autocast("cpu", bfloat16)) or bf16-weights (model and input cast to bfloat16). All calls under
torch.inference_mode(). Rounds interleave the candidates; medians, spread = (max - min) / median.
`--compile` adds torch.compile (inductor, default mode) for the subset S/16-b8 fp32 + bf16-autocast (compile time on
2 cores is minutes per model); `--compile-cases` changes that subset; `--freezing` adds the same cases compiled with
inductor's `freezing` option (weights folded as constants, oneDNN weight prepacking: the CPU inference setting).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import time

import torch

from bench.common import (
    PEERS,
    add_ratios,
    build_all,
    environment,
    gemm_peak,
    interleaved,
    logits,
    markdown,
    parse_cases,
    save,
    selected,
    vit_flops,
)

PRECISIONS = ("fp32", "bf16-autocast", "bf16-weights")
GEMM = "gemm"  # the matmul pseudo-candidate
GEMM_SHAPE = (8 * 197, 768, 3072)
SUFFIX = {None: "", "default": "-compiled", "frozen": "-compiled-frozen"}  # case name per torch.compile mode
SAME_ROUNDS_EAGER = "@eager"  # suffix of the uncompiled module timed in a compiled case's rounds


def make_call(model: torch.nn.Module, x: torch.Tensor, precision: str, inner: int = 1):
    ctx = (
        (lambda: torch.autocast("cpu", dtype=torch.bfloat16))
        if precision == "bf16-autocast"
        else contextlib.nullcontext
    )

    def call() -> None:
        with torch.inference_mode(), ctx():
            for _ in range(inner):
                logits(model, x)

    return call


def calibrate(call, target_s: float) -> int:
    t = time.perf_counter()
    call()
    dt = time.perf_counter() - t
    return max(1, round(target_s / max(dt, 1e-6)))


def run_case(
    models: dict[str, torch.nn.Module], size: str, batch: int, precision: str, rounds: int, compiled: str | None
) -> list[dict]:
    x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    if precision == "bf16-weights":
        models = {n: copy.deepcopy(m).to(torch.bfloat16) for n, m in models.items()}
        x = x.to(torch.bfloat16)
    compile_s: dict[str, float] = {}
    fullgraph: dict[str, bool] = {}
    if compiled:
        torch._dynamo.reset()
        cm = {}
        for n, m in models.items():
            # fullgraph=True (issue 6 acc. 4: no graph breaks); a candidate that breaks falls back to the default
            t = time.perf_counter()
            try:
                cm[n] = torch.compile(m, fullgraph=True, options={"freezing": compiled == "frozen"})
                make_call(cm[n], x, precision)()
                fullgraph[n] = True
            except Exception as e:  # noqa: BLE001 - any dynamo error means "not fullgraph"
                print(f"{n}: fullgraph=True failed ({type(e).__name__}); default torch.compile")
                torch._dynamo.reset()
                cm[n] = torch.compile(m)
                make_call(cm[n], x, precision)()
                fullgraph[n] = False
            make_call(cm[n], x, precision)()
            compile_s[n] = time.perf_counter() - t
        # vit_hf's eager module as one more candidate in the same rounds: compiled / eager without the drift
        # between separately timed cases (issue 6 acc. 4)
        cm.update({f"{n}{SAME_ROUNDS_EAGER}": models[n] for n in models if n == "vit_hf"})
        models = cm
    # one call ~ 0.4 s (batch 1 loops inside the call), so timer overhead and scheduling jitter stay small
    inner = {n: calibrate(make_call(m, x, precision), 0.4) for n, m in models.items()}
    inner_n = min(inner.values())
    fns = {n: make_call(m, x, precision, inner_n) for n, m in models.items()}
    # The machine's matmul throughput, timed as one more candidate in the same rounds (so contention and clock
    # drift hit it like the models): one large GEMM in the case's dtype, the ViT-B/16 MLP at batch 8,
    # (1576, 768) @ (768, 3072), repeated for ~0.4 s per call. (Smaller shapes run below this peak.)
    m, k, n = GEMM_SHAPE
    dtype = torch.float32 if precision == "fp32" else torch.bfloat16
    a, w = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    gemm_flop = 2 * m * k * n
    reps = calibrate(lambda: a @ w, 0.4)
    fns[GEMM] = lambda: [a @ w for _ in range(reps)]
    timings = interleaved(fns, warmup=1, rounds=rounds)
    gemm = timings.pop(GEMM)
    gemm_gflop_s, gemm_gflop_s_best = gemm_flop * reps / gemm.median / 1e9, gemm_flop * reps / gemm.best / 1e9
    rows = []
    for n, t in timings.items():
        rows.append(
            {
                "case": f"{size}-b{batch}-{precision}" + SUFFIX[compiled],
                "size": size,
                "batch": batch,
                "precision": precision,
                "compiled": compiled or False,
                "candidate": n,
                "img_s": batch * inner_n / t.median,
                "ms_per_batch": 1000 * t.median / inner_n,
                "img_s_best": batch * inner_n / t.best,
                "spread": t.spread,
                "rounds": len(t.times),
                "clean_rounds": t.n_clean,
                "foreign_load": max(t.foreign),
                "compile_s": compile_s.get(n),
                "fullgraph": fullgraph.get(n),
                "gemm_gflop_s": gemm_gflop_s,
                "gemm_gflop_s_best": gemm_gflop_s_best,
                "gemm_spread": gemm.spread,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="batch 1 and 8 only, 3 rounds")
    ap.add_argument("--cases", help="comma-separated substrings of case names to run, e.g. 'S/16-b8,B/16-b1-fp32'")
    ap.add_argument("--candidates", default=",".join(PEERS))
    ap.add_argument("--batches", default=None, help="comma-separated batch sizes (default 1,8,64; --quick: 1,8)")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--compile", action="store_true", help="also run torch.compile on the compile subset")
    ap.add_argument("--compile-cases", default="S/16-b8-fp32,S/16-b8-bf16-autocast")
    ap.add_argument("--freezing", action="store_true", help="also compile the subset with options={'freezing': True}")
    ap.add_argument("--no-eager-cases", action="store_true", help="only the compiled cases")
    ap.add_argument("--out", default="forward")
    args = ap.parse_args(argv)
    filters = parse_cases(args.cases)
    names = args.candidates.split(",")
    env = environment()
    peaks = {"fp32": gemm_peak(torch.float32), "bf16": gemm_peak(torch.bfloat16)}
    print(f"GEMM peak at (1576x768)@(768x3072): fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s")
    batches = (1, 8) if args.quick else (1, 8, 64)
    if args.batches:
        batches = tuple(int(b) for b in args.batches.split(","))
    rows: list[dict] = []
    for size in ("S/16", "B/16"):
        plan = []
        for b in batches:
            for p in PRECISIONS:
                case = f"{size}-b{b}-{p}"
                if not args.no_eager_cases and selected(case, filters):
                    plan.append((b, p, None))
                if selected(case, parse_cases(args.compile_cases)) and selected(case, filters):
                    plan += [(b, p, mode) for mode, on in (("default", args.compile), ("frozen", args.freezing)) if on]
        if not plan:
            continue
        models = build_all(names, size)
        for b, p, compiled in plan:
            rounds = args.rounds or (5 if b == 1 else 4 if b == 8 else 2)
            t0 = time.perf_counter()
            case_rows = run_case(models, size, b, p, rounds, compiled)
            flops = vit_flops(size)
            for r in case_rows:
                r["gflop_s"] = r["img_s"] * flops / 1e9
                # medians over the same rounds; and the start-of-run best-of-10 peak, for comparison
                r["frac_gemm_peak"] = r["gflop_s"] / r["gemm_gflop_s"]
                r["frac_gemm_peak_start"] = r["gflop_s"] / peaks["fp32" if p == "fp32" else "bf16"]
            add_ratios(case_rows, "img_s", ("case",))
            rows += case_rows
            save(args.out, {"env": env, "gemm_peak_gflop_s": peaks, "args": vars(args), "rows": rows, "partial": True})
            print(f"\n## {case_rows[0]['case']}  ({time.perf_counter() - t0:.0f} s)")
            cols = ["candidate", "img_s", "img_s_best", "ms_per_batch", "spread", "clean_rounds", "vs_best_peer"]
            print(markdown(case_rows, [*cols, "frac_gemm_peak"]))
        del models
    cols = ["case", "candidate", "img_s", "spread", "vs_best_peer", "frac_gemm_peak", "compile_s"]
    print("\n" + markdown(rows, cols))
    env["loadavg_end"] = __import__("os").getloadavg()
    path = save(args.out, {"env": env, "gemm_peak_gflop_s": peaks, "args": vars(args), "rows": rows})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
