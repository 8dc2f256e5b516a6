"""Inference forward throughput (images/s): vit_hf vs timm vs transformers ViT (sdpa, eager), equal weights.

    python -m bench forward [--quick] [--device {cpu,cuda}] [--cases S/16-b8,B/16-b1-fp32] [--compile] [--rounds N]
    python -m bench forward --sizes DINOv3-S/16,EVA02-S/14 --candidates vit_hf,timm   # timm eva.py families

Case names: "{size}-b{batch}-{precision}[-{sdpa backend}][-compiled[-frozen]]". Precisions (bench.device): on the
CPU fp32, bf16-autocast (fp32 weights under torch.autocast) and bf16-weights (model and input cast to bfloat16); on
CUDA also tf32, fp16-autocast and fp16-weights, and each case again with SDPA pinned to the flash (half precisions
only) and memory-efficient kernels ("-flash", "-efficient"). All calls under torch.inference_mode(), each ending
with a device synchronisation. Rounds interleave the candidates; medians, spread = (max - min) / median;
`time_vs_timm` = the median over rounds of (candidate's time / timm's time in the same round), the ratio that
survives a loaded machine best (both calls of a round see about the same load). On CUDA
every row also has the allocator's peak during one call (`peak_mib`, all resident models included) and what the
call added to the memory held before it (`call_mib`: activations and workspace).
`--compile` adds torch.compile (inductor, default mode) for the subset S/16-b8 fp32 + bf16-autocast (compile time on
2 cores is minutes per model); `--compile-cases` changes that subset; `--freezing` adds the same cases compiled with
inductor's `freezing` option (weights folded as constants, oneDNN weight prepacking: the CPU inference setting).
`--clock cpu` times every call by this process's CPU time instead of wall time (`time.process_time`; needs
BENCH_THREADS=1 on the CPU): on a machine shared with other jobs it leaves out the time they hold the core, though
not their effect on caches and memory bandwidth.
`--quick`: the toy size (bench.common.QUICK_SIZE; or the `--sizes` given, e.g. toy-DINOv3/8,toy-EVA02/8), batch 1 and
2, 2 rounds of ~0.02 s: a smoke test, not a timing.
Sizes (bench.common.SIZES): S/16, B/16 (timm VisionTransformer, all four candidates) and DINOv3-S/16, EVA02-S/14
(timm eva.py, converted by convert.timm; vit_hf and timm only, the hf_* candidates are skipped there).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import torch

from bench import device as dev
from bench.common import (
    CLEAN,
    PEERS,
    QUICK_SIZE,
    SIZES,
    add_ratios,
    available,
    build_all,
    environment,
    gemm_peak,
    images,
    interleaved,
    logits,
    markdown,
    parse_cases,
    save,
    selected,
    vit_flops,
)

GEMM = "gemm"  # the matmul pseudo-candidate
GEMM_SHAPE = (8 * 197, 768, 3072)  # the ViT-B/16 MLP at batch 8, the reference of every real size
SUFFIX = {None: "", "default": "-compiled", "frozen": "-compiled-frozen"}  # case name per torch.compile mode
SAME_ROUNDS_EAGER = "@eager"  # suffix of the uncompiled module timed in a compiled case's rounds
CALL_S = 0.4  # target duration of one timed call (batch 1 loops inside it), so timer and scheduling jitter stay small


def make_call(
    model: torch.nn.Module, x: torch.Tensor, precision: str, inner: int = 1, sdpa: str = "default"
):  # fmt: skip
    ctx = dev.precision_context(x.device, precision)
    kernel = dev.sdpa_context(sdpa)

    def call() -> None:
        with torch.inference_mode(), ctx(), kernel():
            for _ in range(inner):
                logits(model, x)
        dev.sync(x.device)

    return call


def calibrate(call, target_s: float) -> int:
    """How many repetitions of `call` take ~target_s (timed warm: the first call pays one-off costs)."""
    call()
    t = time.perf_counter()
    call()
    dt = time.perf_counter() - t
    return max(1, round(target_s / max(dt, 1e-6)))


def compile_all(
    models: dict[str, torch.nn.Module], x: torch.Tensor, precision: str, mode: str, sdpa: str,
    backend: str = "inductor",
):  # fmt: skip
    """torch.compile every candidate (fullgraph=True: no graph breaks allowed; a candidate that breaks falls
    back to the default and is marked), run twice; returns (compiled models, compile seconds, fullgraph flags).
    `backend="aot_eager"` traces the same graphs without inductor's code generation (tiny smoke configs)."""
    torch._dynamo.reset()
    out, seconds, fullgraph = {}, {}, {}
    options = {"options": {"freezing": mode == "frozen"}} if backend == "inductor" else {}
    for n, m in models.items():
        t = time.perf_counter()
        try:
            out[n] = torch.compile(m, fullgraph=True, backend=backend, **options)
            make_call(out[n], x, precision, sdpa=sdpa)()
            fullgraph[n] = True
        except Exception as e:  # noqa: BLE001 - any dynamo error means "not fullgraph"
            print(f"{n}: fullgraph=True failed ({type(e).__name__}); default torch.compile")
            torch._dynamo.reset()
            out[n] = torch.compile(m, backend=backend)
            make_call(out[n], x, precision, sdpa=sdpa)()
            fullgraph[n] = False
        make_call(out[n], x, precision, sdpa=sdpa)()
        seconds[n] = time.perf_counter() - t
    return out, seconds, fullgraph


def call_memory(fns: dict, device: torch.device) -> dict[str, tuple[float, float]]:
    """CUDA only: (allocator peak during one call, what the call added to the memory held before it) per candidate."""
    if device.type != "cuda":
        return {}
    out = {}
    for n, fn in fns.items():
        dev.reset_peak(device)
        before = dev.current_mib(device)
        fn()
        peak = dev.peak_mib(device)
        out[n] = (peak, peak - before)
    return out


def gemm_shape(size: str) -> tuple[int, int, int]:
    """The reference matmul: GEMM_SHAPE, or the toy size's own MLP at batch 8 (a CPU without bf16 instructions takes
    seconds per bf16 GEMM of the real shape)."""
    if not size.startswith("toy"):
        return GEMM_SHAPE
    s = SIZES[size]
    return 8 * ((s.image // s.patch) ** 2 + 1), s.width, s.mlp


def gemm_call(device: torch.device, precision: str, target_s: float, shape: tuple[int, int, int] = GEMM_SHAPE):
    """The machine's matmul throughput as one more candidate in the same rounds (contention and clock drift hit it
    like the models): the ViT-B/16 MLP at batch 8, (1576, 768) @ (768, 3072), in the case's compute dtype (and TF32
    setting), repeated for ~target_s per call. Returns (call, FLOP per call)."""
    m, k, n = shape
    dtype = dev.compute_dtype(precision)
    a, w = torch.randn(m, k).to(device, dtype), torch.randn(k, n).to(device, dtype)
    ctx = dev.precision_context(device, "tf32" if precision == "tf32" else "fp32")

    def once() -> None:
        with ctx():
            a @ w
        dev.sync(device)

    reps = calibrate(once, target_s)

    def call() -> None:
        with ctx():
            for _ in range(reps):
                a @ w
        dev.sync(device)

    return call, 2 * m * k * n * reps


def run_case(
    models: dict[str, torch.nn.Module], size: str, batch: int, precision: str, rounds: int, compiled: str | None,
    sdpa: str = "default", call_s: float = CALL_S, backend: str = "inductor", clock: str = "wall",
) -> list[dict]:  # fmt: skip
    device = next(next(iter(models.values())).parameters()).device
    x = images(size, batch, device)
    if dtype := dev.weights_dtype(precision):
        models = {n: copy.deepcopy(m).to(dtype) for n, m in models.items()}
        x = x.to(dtype)
    compile_s: dict[str, float] = {}
    fullgraph: dict[str, bool] = {}
    if compiled:
        cm, compile_s, fullgraph = compile_all(models, x, precision, compiled, sdpa, backend)
        # vit_hf's eager module as one more candidate in the same rounds: compiled / eager without the drift
        # between separately timed cases
        cm.update({f"{n}{SAME_ROUNDS_EAGER}": models[n] for n in models if n == "vit_hf"})
        models = cm
    inner = {n: calibrate(make_call(m, x, precision, sdpa=sdpa), call_s) for n, m in models.items()}
    inner_n = min(inner.values())
    fns = {n: make_call(m, x, precision, inner_n, sdpa) for n, m in models.items()}
    memory = call_memory({n: make_call(m, x, precision, 1, sdpa) for n, m in models.items()}, device)
    fns[GEMM], gemm_flop = gemm_call(device, precision, call_s, gemm_shape(size))
    timer = time.process_time if clock == "cpu" else time.perf_counter
    timings = interleaved(fns, warmup=1, rounds=rounds, collect=call_s >= CALL_S, clock=timer)
    gemm = timings.pop(GEMM)
    paired = {n: paired_ratio(t, timings["timm"]) for n, t in timings.items()} if "timm" in timings else {}
    gemm_gflop_s, gemm_gflop_s_best = gemm_flop / gemm.median / 1e9, gemm_flop / gemm.best / 1e9
    case = f"{size}-b{batch}-{precision}" + ("" if sdpa == "default" else f"-{sdpa}") + SUFFIX[compiled]
    rows = []
    for n, t in timings.items():
        rows.append(
            {
                "case": case,
                "size": size,
                "batch": batch,
                "precision": precision,
                "sdpa": sdpa,
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
                "peak_mib": memory[n][0] if n in memory else None,
                "call_mib": memory[n][1] if n in memory else None,
                "gemm_gflop_s": gemm_gflop_s,
                "gemm_gflop_s_best": gemm_gflop_s_best,
                "gemm_spread": gemm.spread,
                "time_vs_timm": paired.get(n),
                "clock": clock,
                "round_s": t.times,  # every round's call, in round order (paired ratios, spreads)
            }
        )
    flops = vit_flops(size)
    for r in rows:
        r["gflop_s"] = r["img_s"] * flops / 1e9
        r["frac_gemm_peak"] = r["gflop_s"] / r["gemm_gflop_s"]  # medians over the same rounds
    add_ratios(rows, "img_s", ("case",))
    return rows


def paired_ratio(t, ref) -> float:
    """Median over rounds of t / ref, each round's two calls timed next to each other (clean rounds of both when
    there are any, else all)."""
    pairs = list(zip(t.times, ref.times, t.foreign or [0.0] * len(t.times), ref.foreign or [0.0] * len(t.times)))
    clean = [a / b for a, b, fa, fb in pairs if fa < CLEAN and fb < CLEAN]
    return statistics.median(clean or [a / b for a, b, _, _ in pairs])


def plan(args: argparse.Namespace, size: str, device: torch.device, batches: tuple[int, ...]) -> list[tuple]:
    """(batch, precision, sdpa backend, compile mode) of every case of one size that the filters select."""
    filters, compile_filters = parse_cases(args.cases), parse_cases(args.compile_cases)
    modes = [mode for mode, on in (("default", args.compile), ("frozen", args.freezing)) if on]
    out = []
    for b in batches:
        for p in dev.precisions(device):
            for sdpa in dev.sdpa_backends(device, p):
                case = f"{size}-b{b}-{p}" + ("" if sdpa == "default" else f"-{sdpa}")
                if not selected(case, filters):
                    continue
                if not args.no_eager_cases:
                    out.append((b, p, sdpa, None))
                if selected(case, compile_filters):
                    out += [(b, p, sdpa, mode) for mode in modes]
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    dev.add_argument(ap)
    ap.add_argument("--quick", action="store_true", help="the toy size, batch 1 and 2, 2 short rounds (smoke test)")
    ap.add_argument(
        "--sizes", default=None, help="comma-separated bench.common.SIZES (default S/16,B/16; --quick: the toy size)"
    )
    ap.add_argument("--cases", help="comma-separated substrings of case names to run, e.g. 'S/16-b8,B/16-b1-fp32'")
    ap.add_argument("--candidates", default=",".join(PEERS))
    ap.add_argument("--batches", default=None, help="comma-separated batch sizes (default 1,8,64; --quick: 1,2)")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--compile", action="store_true", help="also run torch.compile on the compile subset")
    ap.add_argument("--compile-cases", default="S/16-b8-fp32,S/16-b8-bf16-autocast")
    ap.add_argument("--freezing", action="store_true", help="also compile the subset with options={'freezing': True}")
    ap.add_argument("--no-eager-cases", action="store_true", help="only the compiled cases")
    ap.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="time calls by wall time, or by this process's CPU time (one thread, CPU only)",
    )
    ap.add_argument("--out", default="forward")
    args = ap.parse_args(argv)
    sizes = args.sizes.split(",") if args.sizes else [QUICK_SIZE] if args.quick else ["S/16", "B/16"]
    if unknown := [s for s in sizes if s not in SIZES]:
        ap.error(f"unknown size(s) {', '.join(unknown)}: choose from {', '.join(SIZES)}")
    device = dev.resolve(args.device)
    if args.clock == "cpu" and (device.type != "cpu" or torch.get_num_threads() != 1):
        ap.error("--clock cpu measures one thread on the CPU: set BENCH_THREADS=1 (and --device cpu)")
    names = args.candidates.split(",")
    env = environment(device)
    half = "fp16" if device.type == "cuda" else "bf16"
    # the best-of-10 GEMM at the start of the run, kept next to the in-round one for comparison with older runs
    peaks = {} if args.quick else {p: gemm_peak(dev.compute_dtype(p), device=device) for p in ("fp32", "bf16", half)}
    print("GEMM peak at (1576x768)@(768x3072): " + ", ".join(f"{p} {v:.0f}" for p, v in peaks.items()) + " GFLOP/s")
    batches = (1, 2) if args.quick else (1, 8, 64)
    if args.batches:
        batches = tuple(int(b) for b in args.batches.split(","))
    rows: list[dict] = []
    for size in sizes:
        cases = plan(args, size, device, batches)
        if not cases:
            continue
        models = build_all(available(names, size), size, device=device)
        for b, p, sdpa, compiled in cases:
            rounds = args.rounds or (2 if args.quick else 5 if b == 1 else 4 if b == 8 else 2)
            t0 = time.perf_counter()
            case_rows = run_case(
                models, size, b, p, rounds, compiled, sdpa, call_s=0.02 if args.quick else CALL_S, clock=args.clock
            )
            start_peak = peaks.get(p.split("-")[0])  # the start-of-run best-of-10 GEMM (none taken for tf32)
            for r in case_rows:
                r["frac_gemm_peak_start"] = r["gflop_s"] / start_peak if start_peak else None
            rows += case_rows
            save(args.out, {"env": env, "gemm_peak_gflop_s": peaks, "args": vars(args), "rows": rows, "partial": True})
            print(f"\n## {case_rows[0]['case']}  ({time.perf_counter() - t0:.0f} s)")
            cols = [
                "candidate",
                "img_s",
                "img_s_best",
                "ms_per_batch",
                "spread",
                "clean_rounds",
                "vs_best_peer",
                "time_vs_timm",
            ]
            cols += ["frac_gemm_peak"] + (["peak_mib", "call_mib"] if device.type == "cuda" else [])
            print(markdown(case_rows, cols))
        del models
    cols = ["case", "candidate", "img_s", "spread", "vs_best_peer", "time_vs_timm", "frac_gemm_peak", "compile_s"]
    print("\n" + markdown(rows, cols))
    env["loadavg_end"] = os.getloadavg()
    path = save(args.out, {"env": env, "gemm_peak_gflop_s": peaks, "args": vars(args), "rows": rows})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
