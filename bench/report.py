"""Render bench/results/*.json (and per-case results/<name>/*.json) as the markdown tables of bench/README.md.

    python -m bench report > bench/results/tables.md
    python -m bench report --summary > bench/results/summary.md   # one row per case, vit_hf vs best peer

(`python -m bench all` writes both after its steps.) Per-case files (written by bench.train_step and
bench.train_memory as each case finishes) are merged with the aggregate file of the same name; for a case present in
several files the newest file wins. Partial runs show up with the cases they finished.
"""

from __future__ import annotations

import argparse

from bench.common import load_rows, markdown, results_dir

SECTIONS = (
    ("forward", "Inference forward (images/s, medians; vs_best_peer = img/s / best of timm, hf_sdpa, hf_eager; "
     "frac_gemm_peak = model GFLOP/s / GEMM GFLOP/s timed in the same rounds)",
     ["case", "candidate", "img_s", "img_s_best", "spread", "vs_best_peer", "frac_gemm_peak", "gemm_gflop_s",
      "frac_gemm_peak_start"]),
    ("forward_rope", "Inference forward, timm eva.py families (DINOv3-S/16, EVA02-S/14) converted by convert.timm, vs "
     "timm (images/s, medians; time_vs_timm = median over rounds of vit_hf's time / timm's in the same round)",
     ["case", "candidate", "img_s", "img_s_best", "spread", "vs_best_peer", "time_vs_timm", "frac_gemm_peak"]),
    ("forward_compiled", "Inference forward, eager and torch.compile(fullgraph=True) (inductor default, and "
     "options={'freezing': True}), batch 8, same process",
     ["case", "candidate", "img_s", "img_s_best", "spread", "vs_best_peer", "frac_gemm_peak", "compile_s",
      "fullgraph"]),
    ("train_step", "Training step speed: forward + CE + backward + AdamW, in-process interleaved (images/s)",
     ["case", "candidate", "img_s", "img_s_best", "spread", "clean_rounds", "vs_best_peer", "vs_timm"]),
    ("train_memory", "Training step memory: fresh process per candidate, VmHWM (MiB); img/s here is 1 step, fresh",
     ["case", "candidate", "peak_rss_mib", "train_delta_mib", "mem_vs_best", "img_s"]),
    ("forward_b64", "Inference forward, batch 64",
     ["case", "candidate", "img_s", "img_s_best", "spread", "vs_best_peer", "frac_gemm_peak", "gemm_gflop_s"]),
    ("train_loop", "Fine-tuning loop: vit_hf.train vs a plain timm loop, bf16 autocast",
     ["case", "candidate", "img_s", "img_s_best", "spread", "vs_timm", "peak_rss_mib", "mem_vs_timm"]),
    ("preprocess", "Preprocessing, 32 PIL images -> (32, 3, 224, 224) tensor (images/s)",
     ["candidate", "img_s", "img_s_best", "ms_per_img", "spread", "vs_best_peer", "vs_hf_pil"]),
    ("onnx", "ONNX Runtime fp32 / int8 vs PyTorch eager fp32 / bf16 autocast (images/s; vs_torch_fp32 in the same "
     "rounds; max_abs_diff / top1_agreement: logits vs torch_fp32 on the case's input; digits rows: accuracy on the "
     "360 real test images). bf16 is emulated on a CPU without avx512_bf16 / amx_bf16 in its flags below",
     ["case", "candidate", "img_s", "img_s_best", "spread", "vs_torch_fp32", "max_abs_diff", "top1_agreement",
      "accuracy"]),
    ("load", "from_pretrained, ViT-B/16 fp32 safetensors (fresh process each)",
     ["candidate", "load_s", "load_s_best", "spread", "vs_best_peer", "peak_rss_mib", "load_delta_mib", "attn"]),
    ("convert", "Conversion, ViT-B/16 (fresh process each)",
     ["candidate", "seconds", "seconds_best", "spread", "peak_rss_mib", "delta_mib"]),
    ("lora", "LoRA (rank 8) vs full fine-tuning: step time (interleaved) and peak memory (fresh process each)",
     ["case", "candidate", "trainable", "s_per_step", "speedup", "peak_mib", "train_delta_mib", "mem_ratio"]),
    ("train_fsdp", "DDP vs FSDP2, 2 processes over gloo: step time, peak RSS and training state per process",
     ["case", "mode", "step_s", "peak_rss_mib", "state_mib", "step_ratio", "peak_ratio", "state_ratio"]),
    ("convert_transformers", "Conversion of a transformers ViT-B/16 snapshot vs from_pretrained (fresh process "
     "each; copies = peak RSS growth / the weights' size)",
     ["candidate", "seconds", "seconds_best", "spread", "peak_rss_mib", "delta_mib", "copies"]),
)  # fmt: skip


def env_line(name: str, envs: list[dict]) -> str:
    e = envs[0]
    starts = [v["loadavg_start"][0] for v in envs]
    ends = [v["loadavg_end"][0] for v in envs if v.get("loadavg_end")]
    load = f"{min(starts):.2f}-{max(starts):.2f}" if len(starts) > 1 else f"{starts[0]:.2f}"
    load += f" / {max(ends):.2f}" if ends else " / (not recorded: partial run)"
    files = sorted({v["file"] for v in envs})
    threads = sorted({v["threads"] for v in envs})
    partial = " (partial run)" if any(v.get("partial") for v in envs) else ""
    return (
        f"`{', '.join(files)}`{partial}: torch {e['torch']}, transformers {e['transformers']}, timm {e['timm']}, "
        f"{'/'.join(map(str, threads))} thread(s), {e['cpu']} ({e['cpu_capability']}; {' '.join(e['cpu_flags'])}), "
        f"1-min load average at start / max at end {load}"
    )


def tables() -> None:
    for name, title, cols in SECTIONS:
        rows, envs = load_rows(name)
        if not rows:
            print(f"### {title}\n\n(not run: no {name}.json or {name}/*.json)\n")
            continue
        print(f"### {title}\n")
        print(env_line(name, envs))
        agg = results_dir() / f"{name}.json"
        if agg.exists() and agg.name in {v["file"] for v in envs}:  # only when its rows are the ones shown
            import json

            data = json.loads(agg.read_text())
            if data.get("gemm_peak_gflop_s"):  # none in --quick runs
                peaks = ", ".join(f"{k} {v:.0f}" for k, v in data["gemm_peak_gflop_s"].items())
                print(f"; best-of-10 GEMM at the start of the run: {peaks} GFLOP/s")
            if "imports" in data:
                print("\n\nRSS added by importing each candidate's own library (every training child above imports all "
                      "of them, so that this is not in its peak):\n")
                print(markdown(data["imports"], ["candidate", "import_mib", "modules"]))
        present = [c for c in cols if any(c in r for r in rows)]
        print("\n" + markdown(rows, present) + "\n")


def summary() -> None:
    """vit_hf vs the best peer, one row per case, for the top-level README."""
    out: list[dict] = []

    def add(
        case: str, rows: list[dict], key: str, peers: tuple[str, ...], higher: bool = True, unit: str = "",
        ours_name: str = "vit_hf",
    ) -> None:
        ours = [r for r in rows if r["candidate"] == ours_name and r.get(key)]
        theirs = [r for r in rows if r["candidate"] in peers and r.get(key)]
        if not ours or not theirs:
            return
        best = (max if higher else min)(theirs, key=lambda r: r[key])
        v, b = ours[0][key], best[key]
        def num(x: float) -> str:
            return f"{x:.0f}" if x >= 100 else f"{x:.3g}"

        spreads = [r.get("spread") for r in (ours[0], best) if r.get("spread") is not None]
        out.append(
            {
                "case": case,
                "vit_hf": f"{num(v)}{unit}",
                "best peer": f"{best['candidate']} {num(b)}{unit}",
                "ratio": f"{(v / b if higher else b / v):.2f}",
                "spread": f"{max(spreads):.0%}" if spreads else "",
            }
        )

    peers = ("timm", "hf_sdpa", "hf_eager")
    for name in ("forward", "forward_b64", "forward_rope", "forward_compiled"):
        rows, _ = load_rows(name)
        for case in dict.fromkeys(r["case"] for r in rows):
            if name == "forward_compiled" and "compiled" not in case:
                continue
            add(f"fwd {case}", [r for r in rows if r["case"] == case], "img_s", peers)
    # compiled vs eager, vit_hf itself: the eager module timed in the same rounds when the run has
    # it (`vit_hf@eager`), else the adjacent eager case of the same process
    rows, _ = load_rows("forward_compiled")
    eager = {r["case"]: r for r in rows if r["candidate"] == "vit_hf" and not r.get("compiled")}
    same_rounds = {r["case"]: r for r in rows if r["candidate"] == "vit_hf@eager"}
    for r in rows:
        base = r["case"].replace("-compiled-frozen", "").replace("-compiled", "")
        ref = same_rounds.get(r["case"]) or eager.get(base)
        if r["candidate"] == "vit_hf" and r.get("compiled") and ref:
            add(f"compile: vit_hf {r['case']} vs eager", [r, {**ref, "candidate": "vit_hf eager"}],
                "img_s", ("vit_hf eager",))
    rows, _ = load_rows("train_step")
    for case in dict.fromkeys(r["case"] for r in rows):
        add(f"train {case}", [r for r in rows if r["case"] == case], "img_s", ("timm",))
    rows, _ = load_rows("train_loop")
    for case in dict.fromkeys(r["case"] for r in rows):
        add(f"fine-tune loop {case}", [r for r in rows if r["case"] == case], "img_s", ("timm_loop",))
    rows, _ = load_rows("train_memory")
    for case in dict.fromkeys(r["case"] for r in rows):
        add(f"train peak RSS {case} (MiB, lower is better)", [r for r in rows if r["case"] == case], "peak_rss_mib",
            ("timm",), higher=False)
    rows, _ = load_rows("preprocess")
    n = rows[0]["case"].lstrip("b") if rows else ""
    add(f"preprocess, {n} PIL images: PIL (default, = timm)", rows, "img_s", ("hf_pil",))
    add(f"preprocess, {n} PIL images: resize_backend='torch'", rows, "img_s", ("hf_pil",), ours_name="vit_hf_torch")
    rows, _ = load_rows("load")
    add("from_pretrained ViT-B (s, lower is better)", rows, "load_s", ("hf_vit",), higher=False, unit=" s")
    print("img/s unless stated; ratio = vit_hf / best peer (> 1: vit_hf faster); training vs timm only; ")
    print("spread = (max - min) / median over the rounds, the larger of the two rows.\n")
    print(markdown(out, ["case", "vit_hf", "best peer", "ratio", "spread"]))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--summary", action="store_true", help="compact vit_hf-vs-best-peer table, one row per case")
    args = ap.parse_args(argv)
    summary() if args.summary else tables()


if __name__ == "__main__":
    main()
