"""Render bench/results/*.json as the markdown tables of bench/README.md.

    .venv/bin/python -m bench.report > bench/results/tables.md
"""

from __future__ import annotations

import json

from bench.common import RESULTS, markdown

SECTIONS = (
    ("forward", "Inference forward (images/s, medians; vs_best_peer = img/s / best of timm, hf_sdpa, hf_eager)",
     ["case", "candidate", "img_s", "img_s_best", "spread", "vs_best_peer", "frac_gemm_peak"]),
    ("forward_compiled", "Inference forward with torch.compile (inductor), S/16 batch 8",
     ["case", "candidate", "img_s", "img_s_best", "spread", "vs_best_peer", "frac_gemm_peak", "compile_s"]),
    ("train_step", "Training step: forward + CE + backward + AdamW (images/s; peak RSS of a fresh process)",
     ["case", "candidate", "img_s", "img_s_best", "img_s_vs_best", "peak_rss_mib", "train_delta_mib", "mem_vs_best"]),
    ("train_loop", "Fine-tuning loop (issue 4 acc. 7): vit_hf.train vs a plain timm loop, bf16 autocast",
     ["case", "candidate", "img_s", "img_s_best", "spread", "vs_timm", "peak_rss_mib", "mem_vs_timm"]),
    ("preprocess", "Preprocessing, 32 PIL images -> (32, 3, 224, 224) tensor (images/s)",
     ["candidate", "img_s", "img_s_best", "ms_per_img", "spread", "vs_best_peer"]),
    ("load", "from_pretrained, ViT-B/16 fp32 safetensors (fresh process each)",
     ["candidate", "load_s", "load_s_best", "spread", "vs_best_peer", "peak_rss_mib", "load_delta_mib", "attn"]),
    ("convert", "Conversion, ViT-B/16 (fresh process each)",
     ["candidate", "seconds", "seconds_best", "spread", "peak_rss_mib", "delta_mib"]),
    ("proposals", "Proposed modeling changes, prototyped (vs_vit_hf = variant / current vit_hf)",
     ["case", "candidate", "img_s", "img_s_best", "spread", "vs_best_peer", "vs_vit_hf", "best_vs_vit_hf", "us_per_fwd",
      "ms", "ms_best"]),
)  # fmt: skip


def main() -> None:
    for name, title, cols in SECTIONS:
        path = RESULTS / f"{name}.json"
        if not path.exists():
            print(f"### {title}\n\n(not run: {path.name} missing)\n")
            continue
        data = json.loads(path.read_text())
        env = data["env"]
        print(f"### {title}\n")
        print(
            f"`{name}.json`: torch {env['torch']}, transformers {env['transformers']}, timm {env['timm']}, "
            f"{env['threads']} thread(s), {env['cpu']} ({env['cpu_capability']}; {' '.join(env['cpu_flags'])}), "
            f"load average at start/end {env['loadavg_start'][0]:.1f}/{env.get('loadavg_end', [float('nan')])[0]:.1f}"
        )
        if "gemm_peak_gflop_s" in data:
            p = data["gemm_peak_gflop_s"]
            print(f"; GEMM peak measured in the same run: fp32 {p['fp32']:.0f}, bf16 {p['bf16']:.0f} GFLOP/s")
        if "numerics" in data:
            print("\n\nNumerics (max |logits diff| vs current vit_hf):\n")
            print(markdown([{"variant": k, **v} for k, v in data["numerics"].items()], ["variant", "fp64", "fp32", "ok"]))
        present = [c for c in cols if any(c in r for r in data["rows"])]
        print("\n" + markdown(data["rows"], present) + "\n")


if __name__ == "__main__":
    main()
