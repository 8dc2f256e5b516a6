"""LoRA (peft, as `vit_hf.train --lora_r`) vs full fine-tuning: training-step time and peak memory, same model, same
batch.

    python -m bench lora [--quick] [--device {cpu,cuda}] [--sizes B/16] [--batch 8] [--ranks 8] [--rounds 3]
        [--mem-rounds 1] [--cases fp32]

Candidates: `full` (every weight trained) and `lora_r{R}` (the model wrapped by `vit_hf.train.lora.apply_lora`:
adapters on qkv, proj, fc1, fc2 of every block, the head trained fully, the rest frozen). Both start from the same
seed-0 vit_hf weights. The step is bench.train_step's (forward, cross-entropy on fp32 logits, backward, AdamW over
the parameters that have gradients, zero_grad; bf16 = torch.autocast with fp32 master weights).
Time: in one process, interleaved (A B, B A, ...) after one warm-up step each, `--rounds` timed steps per
candidate; `speedup` is full's seconds per step over the candidate's.
Memory: a FRESH process per candidate and `--mem-rounds` (peak memory is per process on the CPU): build, wrap, one
step; the peak resident set (VmHWM; CUDA: the allocator's peak) and what the step added over the memory held just
before it (`train_delta_mib`: gradients, AdamW moments, activations). `mem_ratio` is the candidate's peak over full's.
Results: results/<out>/<case>.json and results/<out>.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time

import torch

from bench import device as dev
from bench.common import QUICK_SIZE, environment, images, interleaved, markdown, parse_cases, run_child, save, save_case
from bench.common import selected as case_selected

COLUMNS = ["case", "candidate", "trainable", "s_per_step", "img_s", "speedup", "spread", "peak_mib", "train_delta_mib",
           "mem_ratio"]


def build(candidate: str, size: str, device: torch.device) -> torch.nn.Module:
    """The seed-0 vit_hf model of `size`, wrapped with LoRA for `lora_r{R}`, in train mode."""
    from bench.common import vit_hf_config
    from vit_hf import VitHfForImageClassification

    torch.manual_seed(0)
    model = VitHfForImageClassification(vit_hf_config(size)).to(device)
    if candidate.startswith("lora_r"):
        from vit_hf.train.lora import apply_lora

        r = int(candidate.removeprefix("lora_r"))
        lora = argparse.Namespace(lora_r=r, lora_alpha=None, lora_dropout=0.0, lora_target_modules="qkv,proj,fc1,fc2")
        model, _ = apply_lora(model, lora)
    return model.train()


def trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def child(candidate: str, size: str, batch: int, precision: str, device_name: str) -> dict:
    """One fresh process: build, one step, peak memory."""
    from bench.train_step import make_step

    device = dev.resolve(device_name)
    model = build(candidate, size, device)
    x = images(size, batch, device)
    y = torch.randint(0, 1000, (batch,), generator=torch.Generator().manual_seed(0)).to(device)
    step = make_step(model, x, y, precision)
    gc.collect()
    dev.reset_peak(device)
    before = dev.current_mib(device)
    step()
    return {"peak_mib": dev.peak_mib(device), "before_mib": before, "trainable": trainable(model)}


def time_case(candidates: list[str], size: str, batch: int, precision: str, rounds: int, device: torch.device,
              collect: bool) -> dict[str, dict]:
    from bench.train_step import make_step

    x = images(size, batch, device)
    y = torch.randint(0, 1000, (batch,), generator=torch.Generator().manual_seed(0)).to(device)
    models = {c: build(c, size, device) for c in candidates}
    fns = {c: make_step(m, x, y, precision) for c, m in models.items()}
    timings = interleaved(fns, warmup=1, rounds=rounds, collect=collect)
    out = {c: {"trainable": trainable(models[c]), "s_per_step": t.median, "img_s": batch / t.median,
               "spread": t.spread} for c, t in timings.items()}
    del fns, models
    gc.collect()
    return out


def memory_case(candidates: list[str], size: str, batch: int, precision: str, rounds: int, device: torch.device
                ) -> dict[str, dict]:  # fmt: skip
    res: dict[str, list[dict]] = {c: [] for c in candidates}
    for r in range(rounds):
        for c in candidates[r % len(candidates):] + candidates[: r % len(candidates)]:
            res[c].append(run_child(["-m", "bench.lora", "--child", c, size, str(batch), precision, device.type],
                                    extra_env={"MALLOC_MMAP_THRESHOLD_": "131072"}))  # as bench.train_memory
    return {c: {"peak_mib": max(r["peak_mib"] for r in rs),
                "train_delta_mib": statistics.median(r["peak_mib"] - r["before_mib"] for r in rs)}
            for c, rs in res.items()}


def case_rows(case: str, timing: dict[str, dict], memory: dict[str, dict]) -> list[dict]:
    full_t, full_m = timing["full"]["s_per_step"], memory["full"]["peak_mib"]
    return [{"case": case, "candidate": c, **timing[c], **memory[c], "speedup": full_t / timing[c]["s_per_step"],
             "mem_ratio": memory[c]["peak_mib"] / full_m} for c in timing]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", nargs=5, metavar=("CANDIDATE", "SIZE", "BATCH", "PREC", "DEVICE"),
                    help=argparse.SUPPRESS)
    dev.add_argument(ap)
    ap.add_argument("--quick", action="store_true", help="the toy size, batch 2, 2 rounds (smoke test)")
    ap.add_argument("--sizes", default="B/16")
    ap.add_argument("--batch", type=int, default=None, help="default 8 (--quick: 2)")
    ap.add_argument("--ranks", default="8", help="LoRA ranks, one candidate each")
    ap.add_argument("--rounds", type=int, default=None, help="timed steps per candidate (default 3, --quick 2)")
    ap.add_argument("--mem-rounds", type=int, default=1, help="fresh processes per candidate for the peak memory")
    ap.add_argument("--cases", help="comma-separated substrings of case names")
    ap.add_argument("--out", default="lora")
    args = ap.parse_args(argv)
    if args.child:
        c, size, batch, prec, device_name = args.child
        print("RESULT " + json.dumps(child(c, size, int(batch), prec, device_name)))
        return
    device = dev.resolve(args.device)
    candidates = ["full", *(f"lora_r{r}" for r in args.ranks.split(","))]
    batch, rounds = args.batch or (2 if args.quick else 8), args.rounds or (2 if args.quick else 3)
    filters, env, rows = parse_cases(args.cases), environment(device), []
    for size in [QUICK_SIZE] if args.quick else args.sizes.split(","):
        for prec in ("fp32",) if args.quick else dev.train_precisions(device):
            case = f"{size}-b{batch}-{prec}"
            if not case_selected(case, filters):
                continue
            t0 = time.perf_counter()
            timing = time_case(candidates, size, batch, prec, rounds, device, collect=not args.quick)
            memory = memory_case(candidates, size, batch, prec, args.mem_rounds, device)
            rows += case_rows(case, timing, memory)
            save_case(args.out, case, {"env": {**env, "loadavg_end": os.getloadavg()}, "args": vars(args),
                                       "rows": [r for r in rows if r["case"] == case]})
            print(f"\n## {case} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
            print(markdown([r for r in rows if r["case"] == case], COLUMNS), file=sys.stderr)
    print("\n" + markdown(rows, COLUMNS))
    env["loadavg_end"] = os.getloadavg()
    print(f"\nwrote {save(args.out, {'env': env, 'args': vars(args), 'rows': rows})}")


if __name__ == "__main__":
    main()
