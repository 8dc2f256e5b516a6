"""Training-step speed, in-process and interleaved: vit_hf vs timm (vs hf_sdpa), same weights, same batch.

    python -m bench train_step [--quick] [--device {cpu,cuda}] [--sizes S/16,B/16] [--batch 8]
        [--cases fp32,bf16-ckpt] [--candidates vit_hf,timm,hf_sdpa] [--rounds 3]

One process per size; for every case "{size}-b{batch}-{precision}[-ckpt]" each candidate gets a fresh AdamW, one
warm-up step, then `--rounds` rounds of one timed step each, candidates alternating (A B C, B C A, ...), so drift
hits all alike. Step = forward (bf16/fp16: torch.autocast with fp32 master weights; fp16 with a GradScaler, as fp16
training needs; tf32: CUDA TF32 matmuls) + CE on fp32 logits + backward + AdamW(lr 1e-4, wd 0.05) + zero_grad, ending
with a device synchronisation. ckpt = activation checkpointing per block (timm `set_grad_checkpointing`,
HF/vit_hf `gradient_checkpointing_enable(use_reentrant=False)`).
Memory: on CUDA every row has the allocator's peak during the candidate's first step minus what was allocated before
it (`step_mib`: gradients, AdamW moments, activations, workspace), its weights (`weights_mib`) and their sum
(`peak_mib`, the peak of a process holding only this model). On the CPU memory is per process: see
`python -m bench train_memory` (fresh process per candidate, VmHWM).
Each case is saved as soon as it finishes to results/<out>/<case>.json (bench.report merges them).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time

import torch

from bench import device as dev
from bench.common import (
    QUICK_SIZE,
    add_ratios,
    build_all,
    environment,
    images,
    interleaved,
    logits,
    markdown,
    parse_cases,
    save_case,
    selected,
)


def set_ckpt(name: str, model: torch.nn.Module, on: bool) -> None:
    if name == "timm":
        model.set_grad_checkpointing(on)
    elif on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_disable()


def make_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, precision: str):
    """One training step of `model` on (x, y): a fresh AdamW; fp16 scales the loss (GradScaler) as fp16 needs."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    ctx = dev.precision_context(x.device, precision)
    scaler = torch.amp.GradScaler(x.device.type) if precision == "fp16" else None

    def step() -> None:
        with ctx():
            loss = torch.nn.functional.cross_entropy(logits(model, x).float(), y)
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        opt.zero_grad(set_to_none=True)
        dev.sync(x.device)

    return step


def first_step_memory(step, model: torch.nn.Module, device: torch.device) -> dict:
    """CUDA only: run the first step under the allocator's peak counter (see the module docstring)."""
    if device.type != "cuda":
        return {}
    dev.reset_peak(device)
    before = dev.current_mib(device)
    step()
    step_mib = dev.peak_mib(device) - before
    weights_mib = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    return {"step_mib": step_mib, "weights_mib": weights_mib, "peak_mib": step_mib + weights_mib}


def run_case(
    models: dict[str, torch.nn.Module], case: str, x: torch.Tensor, y: torch.Tensor, precision: str, ckpt: bool,
    rounds: int, collect: bool = True,
) -> list[dict]:  # fmt: skip
    fns, memory = {}, {}
    for n, m in models.items():
        m.train()
        set_ckpt(n, m, ckpt)
        fns[n] = make_step(m, x, y, precision)
        memory[n] = first_step_memory(fns[n], m, x.device)
    t = interleaved(fns, warmup=1, rounds=rounds, collect=collect)
    batch = x.shape[0]
    rows = [
        {
            "case": case,
            "candidate": n,
            "img_s": batch / v.median,
            "img_s_best": batch / v.best,
            "s_per_step": v.median,
            "spread": v.spread,
            "rounds": len(v.times),
            "clean_rounds": v.n_clean,
            **memory[n],
        }
        for n, v in t.items()
    ]
    add_ratios(rows, "img_s", ("case",))
    timm_r = [r["img_s"] for r in rows if r["candidate"] == "timm"]
    for r in rows:
        if timm_r:
            r["vs_timm"] = r["img_s"] / timm_r[0]
    for n, m in models.items():  # leave the models as found: no checkpointing, no gradients
        set_ckpt(n, m, False)
        m.zero_grad(set_to_none=True)
    del fns
    gc.collect()
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    dev.add_argument(ap)
    ap.add_argument("--quick", action="store_true", help="the toy size, batch 2, 2 rounds (smoke test)")
    ap.add_argument("--sizes", default="S/16,B/16")
    ap.add_argument("--batch", type=int, default=None, help="default 8 (--quick: 2)")
    ap.add_argument("--cases", help="comma-separated substrings of case names")
    ap.add_argument("--rounds", type=int, default=None, help="default 3 (--quick: 2)")
    ap.add_argument("--candidates", default="vit_hf,timm,hf_sdpa")
    ap.add_argument("--out", default="train_step")
    args = ap.parse_args(argv)
    device = dev.resolve(args.device)
    filters = parse_cases(args.cases)
    env = environment(device)
    batch, rounds = args.batch or (2 if args.quick else 8), args.rounds or (2 if args.quick else 3)
    all_rows: list[dict] = []
    for size in [QUICK_SIZE] if args.quick else args.sizes.split(","):
        x = images(size, batch, device)
        y = torch.randint(0, 1000, (batch,), generator=torch.Generator().manual_seed(0)).to(device)
        plan = [
            (p, c, f"{size}-b{batch}-{p}" + ("-ckpt" if c else ""))
            for p in dev.train_precisions(device)
            for c in (False, True)
        ]
        plan = [(p, c, case) for p, c, case in plan if selected(case, filters)]
        if not plan:
            continue
        models = build_all(args.candidates.split(","), size, device=device)
        for prec, ckpt, case in plan:
            t0 = time.perf_counter()
            rows = run_case(models, case, x, y, prec, ckpt, rounds, collect=not args.quick)
            all_rows += rows
            env_c = {**env, "loadavg_end": os.getloadavg()}
            save_case(args.out, case, {"env": env_c, "args": vars(args), "rows": rows})
            print(f"\n## {case} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
            cols = ["candidate", "img_s", "img_s_best", "spread", "clean_rounds", "vs_best_peer", "vs_timm"]
            print(markdown(rows, cols + (["peak_mib", "step_mib"] if device.type == "cuda" else [])))
            sys.stdout.flush()
        del models
        gc.collect()
    print(markdown(all_rows, ["case", "candidate", "img_s", "spread", "vs_best_peer", "vs_timm"]))


if __name__ == "__main__":
    main()
