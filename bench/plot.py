"""Bar charts of vit_hf's ratio to the best peer, from bench/results/*.json.

    python -m bench plot            # writes bench/results/ratios.png

Ratio > 1: vit_hf is faster (or lighter) than the best peer in that case; < 1: slower. One panel per benchmark.
"""

from __future__ import annotations

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from bench.common import load_rows, results_dir  # noqa: E402

PANELS = (  # (results name, value, ratio column, title, vit_hf candidates shown)
    ("forward", "img_s", "vs_best_peer", "inference forward (images/s), vs best of timm / HF sdpa / HF eager",
     ("vit_hf",)),
    ("forward_b64", "img_s", "vs_best_peer", "inference forward, batch 64", ("vit_hf",)),
    ("forward_rope", "img_s", "vs_best_peer", "inference forward, DINOv3-S/16 and EVA02-S/14, vs timm", ("vit_hf",)),
    ("forward_compiled", "img_s", "vs_best_peer", "forward, eager and torch.compile (default, freezing), batch 8",
     ("vit_hf",)),
    ("train_step", "img_s", "vs_timm", "train step (images/s, in-process interleaved), vs timm", ("vit_hf",)),
    ("train_memory", "peak_rss_mib", "mem_vs_best", "train step peak RSS, fresh process, equal imports (best/ours)",
     ("vit_hf",)),
    ("preprocess", "img_s", "vs_hf_pil", "preprocessing (images/s) vs transformers' PIL ViTImageProcessor",
     ("vit_hf", "vit_hf_torch")),
    ("load", "load_s", "vs_best_peer", "from_pretrained time (best/ours)", ("vit_hf",)),
    ("train_loop", "img_s", "vs_timm", "fine-tuning loop vs timm (images/s)", ("vit_hf",)),
)  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    panels = []
    for name, _, ratio, title, ours in PANELS:
        rows, _ = load_rows(name)
        rows = [r for r in rows if r["candidate"] in ours and r.get(ratio)]
        if rows:
            labels = [r.get("case", "") + ("" if len(ours) == 1 else f" {r['candidate']}") for r in rows]
            panels.append((title, labels, [r[ratio] for r in rows]))
    heights = [1 + 0.3 * len(p[1]) for p in panels]
    fig, axes = plt.subplots(
        len(panels), 1, figsize=(10, 1.0 + sum(heights)), squeeze=False, gridspec_kw={"height_ratios": heights}
    )
    for ax, (title, cases, ratios) in zip(axes[:, 0], panels, strict=True):
        colors = ["tab:green" if r >= 0.97 else "tab:orange" if r >= 0.9 else "tab:red" for r in ratios]
        ax.barh(range(len(cases)), ratios, color=colors)
        ax.set_yticks(range(len(cases)), cases, fontsize=7)
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set_title(title, fontsize=9)
        ax.invert_yaxis()
        for i, r in enumerate(ratios):
            ax.text(r, i, f" {r:.2f}", va="center", fontsize=6)
        ax.set_xlim(0, max(1.3, max(ratios) * 1.15))
    axes[-1, 0].set_xlabel("vit_hf / best peer, medians (higher is better); see tables.md for spreads")
    fig.tight_layout()
    out = results_dir() / "ratios.png"
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
