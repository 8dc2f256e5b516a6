"""`python -m vit_hf.export MODEL_DIR OUT_DIR [--revision R] [--opset N] [--dynamic-batch] [--dynamic-size]
[--quantize {none,int8}] [--verify] [--debug]`: see `vit_hf.export`. Flags are documented as `--a-b`; `--a_b` is
accepted too."""

from __future__ import annotations

import argparse
import sys

from ..cli import ArgumentParser, add_debug_flag, debug_requested
from .common import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET, ExportError
from .run import QUANTIZE_CHOICES, export_model


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m vit_hf.export",
        description="Export a vit_hf image classifier to ONNX (pixel_values -> logits), optionally int8, verified "
                    "against PyTorch with onnxruntime.",
    )
    parser.add_argument("model_dir", metavar="MODEL_DIR",
                        help="hub-ready vit_hf folder, or a Hub repo id owner/name[@revision]")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="folder to write model.onnx and its description to")
    parser.add_argument("--revision", default=None, help="branch, tag or commit of a Hub repo id (pin a commit)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                        help=f"ONNX opset, {MIN_OPSET}-{MAX_OPSET} (default {DEFAULT_OPSET})")
    parser.add_argument("--dynamic-batch", action="store_true", help="any batch size (default: batch 1)")
    parser.add_argument("--dynamic-size", action="store_true",
                        help="any height/width divisible by the patch size, positions resampled in the graph")
    parser.add_argument("--quantize", choices=QUANTIZE_CHOICES, default="none",
                        help="int8: also write model_int8.onnx (dynamic quantisation of the linear layers)")
    parser.add_argument("--verify", action="store_true",
                        help="compare onnxruntime with PyTorch (float32 to 1e-4; int8 agreement, accuracy on digits)")
    add_debug_flag(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        export_model(args.model_dir, args.out_dir, revision=args.revision, opset=args.opset,
                     dynamic_batch=args.dynamic_batch, dynamic_size=args.dynamic_size, quantize=args.quantize,
                     verify=args.verify)
    except ExportError as e:
        if debug_requested(argv):
            raise
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
