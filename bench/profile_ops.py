"""torch.profiler op table of one forward (or training-step) case for several candidates, to explain a measured gap.

    python -m bench profile [--device {cpu,cuda}] --size B/16 --batch 8 --precision bf16-autocast
        [--candidates vit_hf,timm] [--train] [--quick]

Per candidate: 1 warm-up call, then `--calls` profiled calls; prints the top ops by self time (CPU; on CUDA by self
device time, with CUDA activity recorded) and the wall time of each candidate's profiled calls (profiler overhead
included, so compare rows, not with `bench forward`). `--quick`: the toy size, batch 2, 1 call.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from torch.profiler import ProfilerActivity, profile

from bench import device as dev
from bench.common import QUICK_SIZE, build_all, images
from bench.forward import make_call
from bench.train_step import make_step


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    dev.add_argument(ap)
    ap.add_argument("--quick", action="store_true", help="the toy size, batch 2, 1 call (smoke test)")
    ap.add_argument("--size", default="S/16")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--precision", default="fp32", help="a forward precision of the device (bench.device.PRECISIONS)")
    ap.add_argument("--candidates", default="vit_hf,timm")
    ap.add_argument("--calls", type=int, default=3)
    ap.add_argument("--top", type=int, default=14)
    ap.add_argument("--train", action="store_true", help="profile a training step (fwd + CE + bwd + AdamW) instead")
    args = ap.parse_args(argv)
    device = dev.resolve(args.device)
    if args.precision not in dev.precisions(device):
        ap.error(f"--precision {args.precision}: on {device.type} choose one of {', '.join(dev.precisions(device))}")
    size, batch, calls = (QUICK_SIZE, 2, 1) if args.quick else (args.size, args.batch, args.calls)
    models = build_all(args.candidates.split(","), size, device=device)
    x = images(size, batch, device)
    if dtype := dev.weights_dtype(args.precision):
        models = {n: copy.deepcopy(m).to(dtype) for n, m in models.items()}
        x = x.to(dtype)
    y = torch.randint(0, 1000, (batch,), generator=torch.Generator().manual_seed(0)).to(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort_by = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    for n, m in models.items():
        # a training step takes the autocast dtype as its precision name ("bf16-autocast" -> "bf16")
        step_precision = args.precision.split("-")[0]
        call = make_step(m.train(), x, y, step_precision) if args.train else make_call(m, x, args.precision)
        call()
        with profile(activities=activities) as prof:
            t = time.perf_counter()
            for _ in range(calls):
                call()
            wall = (time.perf_counter() - t) / calls
        print(f"\n## {n}: {1000 * wall:.1f} ms per call (profiled)")
        print(prof.key_averages().table(sort_by=sort_by, row_limit=args.top, max_name_column_width=40))


if __name__ == "__main__":
    main()
