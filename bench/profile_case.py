"""torch.profiler op table of one forward case for several candidates (to explain a measured gap).

    .venv/bin/python -m bench.profile_case --size B/16 --batch 8 --precision bf16-autocast [--candidates vit_hf,timm]

Per candidate: 1 warm-up call, then `--calls` profiled calls; prints the top ops by self CPU time and the wall time
of each candidate's profiled calls (profiler overhead included, so compare rows, not with bench.forward).
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from torch.profiler import ProfilerActivity, profile

from bench.common import build_all, logits
from bench.forward import make_call


def make_train_step(model: torch.nn.Module, x: torch.Tensor, precision: str):
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    y = torch.randint(0, 1000, (x.shape[0],), generator=torch.Generator().manual_seed(0))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-autocast"):
            out = logits(model, x)
        torch.nn.functional.cross_entropy(out.float(), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="S/16")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16-autocast", "bf16-weights"))
    ap.add_argument("--candidates", default="vit_hf,timm")
    ap.add_argument("--calls", type=int, default=3)
    ap.add_argument("--top", type=int, default=14)
    ap.add_argument("--train", action="store_true", help="profile a training step (fwd + CE + bwd + AdamW) instead")
    args = ap.parse_args(argv)
    models = build_all(args.candidates.split(","), args.size)
    x = torch.randn(args.batch, 3, 224, 224)
    if args.precision == "bf16-weights":
        models = {n: copy.deepcopy(m).to(torch.bfloat16) for n, m in models.items()}
        x = x.to(torch.bfloat16)
    for n, m in models.items():
        call = make_train_step(m, x, args.precision) if args.train else make_call(m, x, args.precision)
        call()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t = time.perf_counter()
            for _ in range(args.calls):
                call()
            wall = (time.perf_counter() - t) / args.calls
        print(f"\n## {n}: {1000 * wall:.1f} ms per call (profiled)")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top, max_name_column_width=40))


if __name__ == "__main__":
    main()
