"""In-process, interleaved training-step check (no fresh processes): vit_hf vs timm vs hf_sdpa, same weights.

    .venv/bin/python -m bench.train_step_inproc [--size S/16] [--batch 8] [--rounds 4] [--precision fp32|bf16]

A cross-check of bench/train_step.py when the machine is noisy: one process, candidates alternate step by step
(rotating start), so contention hits all alike; memory is not measured here (see train_step.py).
"""

from __future__ import annotations

import argparse
import contextlib

import torch

from bench.common import add_ratios, build_all, environment, interleaved, logits, markdown, save


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="S/16")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    ap.add_argument("--candidates", default="vit_hf,timm,hf_sdpa")
    ap.add_argument("--out", default="train_step_inproc")
    args = ap.parse_args(argv)
    env = environment()
    models = build_all(args.candidates.split(","), args.size)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, 224, 224, generator=g)
    y = torch.randint(0, 1000, (args.batch,), generator=g)
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if args.precision == "bf16" else contextlib.nullcontext

    def make_step(model: torch.nn.Module):
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)

        def step() -> None:
            with ctx():
                out = logits(model, x)
            torch.nn.functional.cross_entropy(out.float(), y).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return step

    t = interleaved({n: make_step(m) for n, m in models.items()}, warmup=1, rounds=args.rounds)
    case = f"{args.size}-b{args.batch}-{args.precision}"
    rows = [{"case": case, "candidate": n, "img_s": args.batch / v.median, "img_s_best": args.batch / v.best,
             "spread": v.spread, "clean_rounds": v.n_clean} for n, v in t.items()]  # fmt: skip
    add_ratios(rows, "img_s", ("case",))
    print(markdown(rows, ["case", "candidate", "img_s", "img_s_best", "spread", "clean_rounds", "vs_best_peer"]))
    env["loadavg_end"] = __import__("os").getloadavg()
    print(f"wrote {save(args.out, {'env': env, 'args': vars(args), 'rows': rows})}")


if __name__ == "__main__":
    main()
