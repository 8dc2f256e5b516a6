"""In-process, interleaved training-step speed: vit_hf vs timm (vs hf_sdpa), same weights, same batch.

    .venv/bin/python -m bench.train_step_inproc [--sizes S/16,B/16] [--batch 8] [--cases fp32,bf16-ckpt]
        [--candidates vit_hf,timm,hf_sdpa] [--rounds 3]

One process per size; for every case "{size}-b{batch}-{fp32|bf16}[-ckpt]" each candidate gets a fresh AdamW, one
warm-up step, then `--rounds` rounds of one timed step each, candidates alternating (A B C, B C A, ...), so drift
hits all alike. Step = forward (bf16: torch.autocast("cpu", bfloat16), fp32 master weights) + CE on fp32 logits +
backward + AdamW(lr 1e-4, wd 0.05) + zero_grad. ckpt = activation checkpointing per block (timm
`set_grad_checkpointing`, HF/vit_hf `gradient_checkpointing_enable(use_reentrant=False)`). Memory is NOT measured
here (all models share one process): see bench.train_step (fresh process per candidate, VmHWM).
Each case is saved as soon as it finishes to results/<out>/<case>.json (bench.report merges them).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import sys
import time

import torch

from bench.common import (
    add_ratios,
    build_all,
    environment,
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


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="S/16,B/16")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--cases", help="comma-separated substrings of case names")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--candidates", default="vit_hf,timm,hf_sdpa")
    ap.add_argument("--out", default="train_step_inproc")
    args = ap.parse_args(argv)
    filters = parse_cases(args.cases)
    env = environment()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, 224, 224, generator=g)
    y = torch.randint(0, 1000, (args.batch,), generator=g)
    all_rows: list[dict] = []
    for size in args.sizes.split(","):
        plan = [
            (p, c)
            for p in ("fp32", "bf16")
            for c in (False, True)
            if selected(f"{size}-b{args.batch}-{p}" + ("-ckpt" if c else ""), filters)
        ]
        if not plan:
            continue
        models = build_all(args.candidates.split(","), size)
        for prec, ckpt in plan:
            case = f"{size}-b{args.batch}-{prec}" + ("-ckpt" if ckpt else "")
            t0 = time.perf_counter()
            ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if prec == "bf16" else contextlib.nullcontext
            fns, opts = {}, []

            def make_step(model: torch.nn.Module, opt: torch.optim.Optimizer, ctx=ctx):
                def step() -> None:
                    with ctx():
                        out = logits(model, x)
                    torch.nn.functional.cross_entropy(out.float(), y).backward()
                    opt.step()
                    opt.zero_grad(set_to_none=True)

                return step

            for n, m in models.items():
                m.train()
                set_ckpt(n, m, ckpt)
                opt = torch.optim.AdamW(m.parameters(), lr=1e-4, weight_decay=0.05)
                opts.append(opt)
                fns[n] = make_step(m, opt)
            t = interleaved(fns, warmup=1, rounds=args.rounds)
            rows = [
                {
                    "case": case,
                    "candidate": n,
                    "img_s": args.batch / v.median,
                    "img_s_best": args.batch / v.best,
                    "s_per_step": v.median,
                    "spread": v.spread,
                    "rounds": len(v.times),
                    "clean_rounds": v.n_clean,
                }
                for n, v in t.items()
            ]
            add_ratios(rows, "img_s", ("case",))
            timm_r = [r["img_s"] for r in rows if r["candidate"] == "timm"]
            for r in rows:
                if timm_r:
                    r["vs_timm"] = r["img_s"] / timm_r[0]
            all_rows += rows
            env_c = {**env, "loadavg_end": os.getloadavg()}
            save_case(args.out, case, {"env": env_c, "args": vars(args), "rows": rows})
            print(f"\n## {case} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
            print(
                markdown(
                    rows, ["candidate", "img_s", "img_s_best", "spread", "clean_rounds", "vs_best_peer", "vs_timm"]
                )
            )
            sys.stdout.flush()
            del fns, opts
            for n, m in models.items():
                set_ckpt(n, m, False)
                m.zero_grad(set_to_none=True)
            gc.collect()
        del models
        gc.collect()
    print(markdown(all_rows, ["case", "candidate", "img_s", "spread", "vs_best_peer", "vs_timm"]))


if __name__ == "__main__":
    main()
