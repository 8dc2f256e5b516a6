"""NaFlex forward: a batch of mixed grids (images of several aspect ratios, padded to `max_num_patches`) through vit_hf
and through transformers' Siglip2VisionModel with the same weights, in one process, interleaved.

    python -m bench naflex [--quick] [--size B/16] [--batch 8] [--max-num-patches 256] [--rounds 5] [--out naflex]

The transformers model (SDPA attention) is built at random (seed 0), written by `save_pretrained` and converted with
convert/siglip2.py, so both run the same weights; the inputs come from the converted NaFlex processor. Candidates:
`hf_sdpa` and `vit_hf` (SDPA); `speedup` is hf_sdpa's seconds per batch over vit_hf's. The pooled outputs are
compared once (max abs diff, float32). Results: results/<out>.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile

import torch

from bench.common import environment, interleaved, markdown, save

# (hidden, depth, heads, mlp) of SigLIP2 B/16 and a toy size for smoke runs; patch 16 (toy 8), 16x16 tables
SIZES = {"B/16": (768, 12, 12, 3072, 16), "toy/8": (64, 2, 4, 128, 8)}
COLUMNS = ["case", "candidate", "s_per_batch", "img_s", "speedup", "spread", "max_abs_diff"]


def models(size: str, folder: str):
    import transformers

    from convert.transformers import build_converted, convert_state

    d, depth, heads, mlp, patch = SIZES[size]
    torch.manual_seed(0)
    config = transformers.Siglip2VisionConfig(hidden_size=d, num_hidden_layers=depth, num_attention_heads=heads,
                                              intermediate_size=mlp, patch_size=patch, num_patches=256)
    transformers.Siglip2VisionModel(config).save_pretrained(folder)
    hf = transformers.Siglip2VisionModel.from_pretrained(folder, attn_implementation="sdpa").eval()
    ours = build_converted(convert_state(folder)).vit.eval()
    ours.config._attn_implementation = "sdpa"
    return hf, ours


def inputs(size: str, batch: int, max_num_patches: int) -> dict:
    from convert.siglip2 import verification_images
    from vit_hf import VitHfImageProcessor

    shapes = [(480, 640), (640, 480), (512, 512), (300, 900), (1024, 256), (200, 200), (720, 1280), (90, 400)]
    processor = VitHfImageProcessor(patch_size=SIZES[size][4], max_num_patches=max_num_patches, resample="bilinear")
    return processor(verification_images([shapes[i % len(shapes)] for i in range(batch)]))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the toy size, batch 4, 2 rounds (smoke test)")
    ap.add_argument("--size", default="B/16", choices=sorted(SIZES))
    ap.add_argument("--batch", type=int, default=None, help="default 8 (--quick: 4)")
    ap.add_argument("--max-num-patches", type=int, default=None, help="default 256 (--quick: 64)")
    ap.add_argument("--rounds", type=int, default=None, help="timed batches per candidate (default 5, --quick 2)")
    ap.add_argument("--out", default="naflex")
    args = ap.parse_args(argv)
    size = "toy/8" if args.quick else args.size
    batch, limit = args.batch or (4 if args.quick else 8), args.max_num_patches or (64 if args.quick else 256)
    rounds = args.rounds or (2 if args.quick else 5)
    with tempfile.TemporaryDirectory() as folder:
        hf, ours = models(size, folder)
    x = inputs(size, batch, limit)
    grids = sorted({f"{h}x{w}" for h, w in x["spatial_shapes"].tolist()})
    with torch.inference_mode():
        diff = (hf(**x).pooler_output - ours(**x).pooler_output).abs().max().item()
        fns = {"hf_sdpa": lambda: hf(**x), "vit_hf": lambda: ours(**x)}
        timing = interleaved(fns, warmup=1, rounds=rounds, collect=not args.quick)
    case = f"{size}-b{batch}-n{limit}-fp32"
    median = {name: statistics.median(t.clean_times) for name, t in timing.items()}
    rows = [dict(case=case, candidate=name, s_per_batch=round(median[name], 4), img_s=round(batch / median[name], 1),
                 speedup=round(median["hf_sdpa"] / median[name], 3),
                 spread=round((max(t.clean_times) - min(t.clean_times)) / median[name], 3),
                 max_abs_diff=f"{diff:.2e}" if name == "vit_hf" else "")
            for name, t in timing.items()]
    print(f"grids in the batch: {', '.join(grids)}")
    print("\n" + markdown(rows, COLUMNS))
    env = {**environment("cpu"), "loadavg_end": os.getloadavg()}
    print(f"\nwrote {save(args.out, {'env': env, 'args': vars(args), 'grids': grids, 'rows': rows})}")


if __name__ == "__main__":
    main()
