"""Training-step peak memory (forward + cross-entropy + backward + AdamW.step), equal weights, fresh processes.

    python -m bench train_memory [--quick] [--device {cpu,cuda}] [--cases S/16-b8-fp32,B/16-b8-bf16] [--rounds N]
        [--steps N]

Every (case, candidate, round) runs in a FRESH subprocess (rounds interleave the candidates: A B C D, B C D A, ...)
that builds the model, does 1 warm-up step, then `--steps` timed steps. Memory: the child's VmHWM from
/proc/self/status, its resident high-water mark, which counts everything the allocator touched: weights, grads,
AdamW state, activations, oneDNN scratch (not getrusage's ru_maxrss: Linux carries the forking parent's RSS into it
across exec); reported as the peak and as the peak minus the RSS just before the first
step (model + optimizer built, so the delta is what training adds: grads, AdamW moments, activations). Model building
holds one extra fp32 copy of the weights briefly, far below the training peak.
Case names: "{size}-b{batch}-{precision}[-ckpt]"; precisions and the step itself are bench.train_step's (bf16 /
fp16 = torch.autocast with fp32 master weights; on CUDA also tf32 and fp16); ckpt = activation checkpointing per block.
On CUDA the memory is the allocator's (`torch.cuda.max_memory_allocated` over the steps, `peak_mib`; the delta is over
the memory allocated before the first step, the weights), which counts tensors only, exactly.
`--quick`: the toy size, fp32 without checkpointing, vit_hf and timm, 1 round (a smoke test).

Equal footing for memory: every child imports the same libraries (torch, timm, transformers, vit_hf) whatever its
candidate, and builds its model the same way: from one timm state dict the parent saved once per size (safetensors),
loaded into the freshly built candidate. So the peak differs only by what the model and its training step allocate.
What importing each candidate's own library costs is reported separately (`import_mib`, a child that imports only
that library). `--alloc mmap` (default) runs the children with glibc's MALLOC_MMAP_THRESHOLD_=131072: every tensor
above 128 KiB is mmapped and returned to the OS when freed, so VmHWM follows the live tensors instead of glibc's
dynamic threshold, which keeps freed blocks resident depending on the order of earlier allocations (model building);
`--alloc default` measures with glibc's defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench import device as dev
from bench.common import (
    PEERS,
    QUICK_SIZE,
    Timing,
    add_ratios,
    cpu_snapshot,
    environment,
    foreign_load,
    markdown,
    parse_cases,
    rss_mib,
    run_child,
    save,
    save_case,
)
from bench.common import selected as case_selected

BATCH = {"S/16": 8, "B/16": 4, QUICK_SIZE: 2}


# the per-candidate columns of every table this script prints
COLUMNS = [
    "candidate", "img_s", "img_s_best", "clean_steps", "img_s_vs_best", "peak_rss_mib", "train_delta_mib", "mem_vs_best"
]

def child(
    name: str, size: str, batch: int, precision: str, ckpt: bool, steps: int, weights: str, device_name: str
) -> dict:  # fmt: skip
    import timm  # noqa: F401  (equal imports in every child, see the module docstring)
    import transformers  # noqa: F401
    from safetensors.torch import load_file

    import vit_hf  # noqa: F401
    from bench.common import build, images
    from bench.train_step import make_step, set_ckpt

    device = dev.resolve(device_name)
    model = build(name, size, load_file(weights)).to(device).train()
    set_ckpt(name, model, ckpt)
    x = images(size, batch, device)
    y = torch.randint(0, 1000, (batch,), generator=torch.Generator().manual_seed(0)).to(device)
    step = make_step(model, x, y, precision)

    import gc

    gc.collect()
    dev.reset_peak(device)
    rss0 = dev.current_mib(device)
    step()
    times, foreign = [], []
    for _ in range(steps):
        c0 = cpu_snapshot()
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
        foreign.append(foreign_load(c0, cpu_snapshot(), times[-1]))
    return {"times": times, "foreign": foreign, "maxrss_mib": dev.peak_mib(device), "rss_before_mib": rss0}


def save_weights(size: str, folder: Path) -> str:
    """The timm state dict every child of this size loads (built once from seed 0)."""
    from safetensors.torch import save_file

    from bench.common import timm_model

    path = folder / f"{size.replace('/', '_')}.safetensors"
    save_file({k: v.contiguous() for k, v in timm_model(size).state_dict().items()}, str(path))
    return str(path)


def import_child(name: str) -> dict:
    """RSS added by importing the library a candidate needs (torch already imported)."""
    before_mods, rss0 = set(sys.modules), rss_mib()
    if name == "timm":
        import timm  # noqa: F401
    elif name.startswith("vit_hf"):
        from vit_hf import VitHfForImageClassification  # noqa: F401
    else:
        from transformers import ViTForImageClassification  # noqa: F401
    return {"import_mib": rss_mib() - rss0, "modules": len(set(sys.modules) - before_mods)}


def case_table(case: str, res: dict[str, list[dict]], batch: int, peak_key: str) -> list[dict]:
    """One row per candidate from its children's results: speed of the timed steps (when any), peak memory (the
    largest over the children), what the training step added (median), each against the best peer."""
    rows = []
    for n, rs in res.items():
        tm = Timing([t for r in rs for t in r["times"]], [f for r in rs for f in r["foreign"]])
        times = tm.times  # --steps 0: memory only (the warm-up step already reaches the peak)
        med = tm.median if times else None
        rows.append(
            {
                "case": case,
                "candidate": n,
                "img_s": batch / med if med else None,
                "s_per_step": med,
                "spread": (max(times) - min(times)) / med if med else None,
                "steps": len(times),
                "clean_steps": tm.n_clean if times else 0,
                "img_s_best": batch / tm.best if times else None,
                peak_key: max(r["maxrss_mib"] for r in rs),
                "train_delta_mib": statistics.median(r["maxrss_mib"] - r["rss_before_mib"] for r in rs),
            }
        )
    add_ratios(rows, "img_s", ("case",))
    for r in rows:
        r["img_s_vs_best"] = r.pop("vs_best_peer", None)
    add_ratios(rows, peak_key, ("case",), higher_better=False)
    for r in rows:
        r["mem_vs_best"] = r.pop("vs_best_peer", None)
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--child", nargs=8, metavar=("NAME", "SIZE", "BATCH", "PREC", "CKPT", "STEPS", "WEIGHTS", "DEVICE"),
        help=argparse.SUPPRESS,
    )
    ap.add_argument("--import-child", metavar="NAME", help=argparse.SUPPRESS)
    ap.add_argument("--alloc", choices=("mmap", "default"), default="mmap", help="glibc allocator setting, see above")
    dev.add_argument(ap)
    ap.add_argument("--quick", action="store_true", help="the toy size, fp32, vit_hf and timm, 1 round (smoke test)")
    ap.add_argument("--cases", help="comma-separated substrings of case names")
    ap.add_argument("--candidates", default=",".join(PEERS))
    ap.add_argument("--rounds", type=int, default=2, help="fresh processes per candidate and case")
    ap.add_argument(
        "--steps", type=int, default=3, help="timed steps per process after 1 warm-up step (0: memory only)"
    )
    ap.add_argument("--batch", type=int, default=None, help="batch for every size (default S/16: 8, B/16: 4)")
    ap.add_argument("--sizes", default="S/16,B/16")
    ap.add_argument("--out", default="train_memory")
    args = ap.parse_args(argv)
    if args.child:
        name, size, batch, prec, ckpt, steps, weights, device_name = args.child
        res = child(name, size, int(batch), prec, ckpt == "1", int(steps), weights, device_name)
        print("RESULT " + json.dumps(res))
        return
    if args.import_child:
        print("RESULT " + json.dumps(import_child(args.import_child)))
        return
    device = dev.resolve(args.device)
    alloc_env = {"MALLOC_MMAP_THRESHOLD_": "131072"} if args.alloc == "mmap" else {}
    tmp = tempfile.TemporaryDirectory()
    weights_of = {}
    quick_names = "vit_hf,timm" if args.candidates == ",".join(PEERS) else args.candidates
    names = (quick_names if args.quick else args.candidates).split(",")
    filters = parse_cases(args.cases)
    rounds = 1 if args.quick else args.rounds
    env = environment(device)
    batch_of = {s: args.batch or BATCH[s] for s in BATCH}
    peak_key = "peak_rss_mib" if device.type == "cpu" else "peak_mib"
    columns = [peak_key if c == "peak_rss_mib" else c for c in COLUMNS]
    rows: list[dict] = []
    for size in [QUICK_SIZE] if args.quick else args.sizes.split(","):
        for prec in ("fp32",) if args.quick else dev.train_precisions(device):
            for ckpt in (False,) if args.quick else (False, True):
                case = f"{size}-b{batch_of[size]}-{prec}" + ("-ckpt" if ckpt else "")
                if not case_selected(case, filters):
                    continue
                t0 = time.perf_counter()
                res: dict[str, list[dict]] = {n: [] for n in names}
                for r in range(rounds):
                    for n in names[r % len(names) :] + names[: r % len(names)]:
                        if size not in weights_of:
                            weights_of[size] = save_weights(size, Path(tmp.name))
                        argv_c = ["-m", "bench.train_memory", "--child", n, size, str(batch_of[size]), prec]
                        argv_c += ["1" if ckpt else "0", str(args.steps), weights_of[size], device.type]
                        res[n].append(run_child(argv_c, extra_env=alloc_env))
                case_rows = case_table(case, res, batch_of[size], peak_key)
                rows += case_rows
                env_c = {**env, "loadavg_end": os.getloadavg()}
                save_case(args.out, case, {"env": env_c, "args": vars(args), "batch": batch_of, "rows": case_rows})
                save(args.out, {"env": env, "args": vars(args), "batch": batch_of, "rows": rows, "partial": True})
                print(f"\n## {case} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
                print(markdown(case_rows, columns), file=sys.stderr)
    print("\n" + markdown(rows, ["case", *columns]))
    # what importing each candidate's own library costs (not part of the rows above: every child imports all)
    imports = [{"candidate": n, **run_child(["-m", "bench.train_memory", "--import-child", n], extra_env=alloc_env)}
               for n in names]
    print("\n" + markdown(imports, ["candidate", "import_mib", "modules"]))
    env["loadavg_end"] = os.getloadavg()
    payload = {"env": env, "args": vars(args), "batch": batch_of, "rows": rows, "imports": imports}
    print(f"\nwrote {save(args.out, payload)}")


if __name__ == "__main__":
    main()
