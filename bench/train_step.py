"""Training step (forward + cross-entropy + backward + AdamW.step) throughput and peak memory, equal weights.

    .venv/bin/python -m bench.train_step [--quick] [--cases S/16-fp32,B/16-bf16] [--rounds N] [--steps N]

Every (case, candidate, round) runs in a FRESH subprocess (rounds interleave the candidates: A B C D, B C D A, ...)
that builds the model, does 1 warm-up step, then `--steps` timed steps. Memory: the child's VmHWM from
/proc/self/status, its resident high-water mark, which counts everything the allocator touched: weights, grads,
AdamW state, activations, oneDNN scratch (not getrusage's ru_maxrss: Linux carries the forking parent's RSS into it
across exec); reported as the peak and as the peak minus the RSS just before the first
step (model + optimizer built, so the delta is what training adds: grads, AdamW moments, activations). Model building
holds one extra fp32 copy of the weights briefly, far below the training peak.
Case names: "{size}-b{batch}-{fp32|bf16}[-ckpt]"; bf16 = torch.autocast("cpu", bfloat16) with fp32 master weights;
ckpt = activation checkpointing per block (timm `set_grad_checkpointing`, HF `gradient_checkpointing_enable`).

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
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.common import (
    PEERS,
    Timing,
    add_ratios,
    cpu_snapshot,
    environment,
    foreign_load,
    markdown,
    maxrss_mib,
    parse_cases,
    rss_mib,
    run_child,
    save,
    save_case,
)
from bench.common import selected as case_selected

BATCH = {"S/16": 8, "B/16": 4}


# the per-candidate columns of every table this script prints
COLUMNS = [
    "candidate", "img_s", "img_s_best", "clean_steps", "img_s_vs_best", "peak_rss_mib", "train_delta_mib", "mem_vs_best"
]

def child(name: str, size: str, batch: int, precision: str, ckpt: bool, steps: int, weights: str) -> dict:
    import timm  # noqa: F401  (equal imports in every child, see the module docstring)
    import transformers  # noqa: F401
    from safetensors.torch import load_file

    import vit_hf  # noqa: F401
    from bench.common import build, logits

    model = build(name, size, load_file(weights)).train()
    if ckpt:
        if name == "timm":
            model.set_grad_checkpointing(True)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 224, 224, generator=g)
    y = torch.randint(0, 1000, (batch,), generator=g)
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16" else contextlib.nullcontext

    def step() -> float:
        with ctx():
            out = logits(model, x)
        loss = torch.nn.functional.cross_entropy(out.float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    import gc

    gc.collect()
    rss0 = rss_mib()
    step()
    times, foreign = [], []
    for _ in range(steps):
        c0 = cpu_snapshot()
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
        foreign.append(foreign_load(c0, cpu_snapshot(), times[-1]))
    return {"times": times, "foreign": foreign, "maxrss_mib": maxrss_mib(), "rss_before_mib": rss0}


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


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--child", nargs=7, metavar=("NAME", "SIZE", "BATCH", "PREC", "CKPT", "STEPS", "WEIGHTS"),
        help=argparse.SUPPRESS,
    )
    ap.add_argument("--import-child", metavar="NAME", help=argparse.SUPPRESS)
    ap.add_argument("--alloc", choices=("mmap", "default"), default="mmap", help="glibc allocator setting, see above")
    ap.add_argument("--quick", action="store_true", help="S/16 only, 1 round")
    ap.add_argument("--cases", help="comma-separated substrings of case names")
    ap.add_argument("--candidates", default=",".join(PEERS))
    ap.add_argument("--rounds", type=int, default=2, help="fresh processes per candidate and case")
    ap.add_argument(
        "--steps", type=int, default=3, help="timed steps per process after 1 warm-up step (0: memory only)"
    )
    ap.add_argument("--batch", type=int, default=None, help="batch for every size (default S/16: 8, B/16: 4)")
    ap.add_argument("--sizes", default="S/16,B/16")
    ap.add_argument("--out", default="train_step")
    args = ap.parse_args(argv)
    if args.child:
        name, size, batch, prec, ckpt, steps, weights = args.child
        res = child(name, size, int(batch), prec, ckpt == "1", int(steps), weights)
        print("RESULT " + json.dumps(res))
        return
    if args.import_child:
        print("RESULT " + json.dumps(import_child(args.import_child)))
        return
    alloc_env = {"MALLOC_MMAP_THRESHOLD_": "131072"} if args.alloc == "mmap" else {}
    tmp = tempfile.TemporaryDirectory()
    weights_of = {}
    names = args.candidates.split(",")
    filters = parse_cases(args.cases)
    rounds = 1 if args.quick else args.rounds
    env = environment()
    batch_of = {s: args.batch or BATCH[s] for s in BATCH}
    rows: list[dict] = []
    for size in ("S/16",) if args.quick else args.sizes.split(","):
        for prec in ("fp32", "bf16"):
            for ckpt in (False, True):
                case = f"{size}-b{batch_of[size]}-{prec}" + ("-ckpt" if ckpt else "")
                if not case_selected(case, filters):
                    continue
                t0 = time.perf_counter()
                res: dict[str, list[dict]] = {n: [] for n in names}
                for r in range(rounds):
                    for n in names[r % len(names) :] + names[: r % len(names)]:
                        if size not in weights_of:
                            weights_of[size] = save_weights(size, Path(tmp.name))
                        argv_c = ["-m", "bench.train_step", "--child", n, size, str(batch_of[size]), prec]
                        argv_c += ["1" if ckpt else "0", str(args.steps), weights_of[size]]
                        res[n].append(run_child(argv_c, extra_env=alloc_env))
                case_rows = []
                for n, rs in res.items():
                    tm = Timing([t for r in rs for t in r["times"]], [f for r in rs for f in r["foreign"]])
                    times = tm.times  # --steps 0: memory only (the warm-up step already reaches the peak)
                    med = tm.median if times else None
                    peak = max(r["maxrss_mib"] for r in rs)
                    case_rows.append(
                        {
                            "case": case,
                            "candidate": n,
                            "img_s": batch_of[size] / med if med else None,
                            "s_per_step": med,
                            "spread": (max(times) - min(times)) / med if med else None,
                            "steps": len(times),
                            "clean_steps": tm.n_clean if times else 0,
                            "img_s_best": batch_of[size] / tm.best if times else None,
                            "peak_rss_mib": peak,
                            "train_delta_mib": statistics.median(r["maxrss_mib"] - r["rss_before_mib"] for r in rs),
                        }
                    )
                add_ratios(case_rows, "img_s", ("case",))
                for r in case_rows:
                    r["img_s_vs_best"] = r.pop("vs_best_peer", None)
                add_ratios(case_rows, "peak_rss_mib", ("case",), higher_better=False)
                for r in case_rows:
                    r["mem_vs_best"] = r.pop("vs_best_peer", None)
                rows += case_rows
                env_c = {**env, "loadavg_end": __import__("os").getloadavg()}
                save_case(args.out, case, {"env": env_c, "args": vars(args), "batch": batch_of, "rows": case_rows})
                save(args.out, {"env": env, "args": vars(args), "batch": batch_of, "rows": rows, "partial": True})
                print(f"\n## {case} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
                print(markdown(case_rows, COLUMNS), file=sys.stderr)
    print("\n" + markdown(rows, ["case", *COLUMNS]))
    # what importing each candidate's own library costs (not part of the rows above: every child imports all)
    imports = [{"candidate": n, **run_child(["-m", "bench.train_step", "--import-child", n], extra_env=alloc_env)}
               for n in names]
    print("\n" + markdown(imports, ["candidate", "import_mib", "modules"]))
    env["loadavg_end"] = __import__("os").getloadavg()
    payload = {"env": env, "args": vars(args), "batch": batch_of, "rows": rows, "imports": imports}
    print(f"\nwrote {save(args.out, payload)}")


if __name__ == "__main__":
    main()
