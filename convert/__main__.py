"""The converters' front door: convert a ViT-family checkpoint from where it lives into a vit_hf folder.

    python -m convert SOURCE OUT_DIR [--revision REV] [--verify] [--offline]
                      [--crop-pct F] [--interpolation {bilinear,bicubic}] [--mean M M M] [--std S S S]
                      [timm flags: --model-name --num-heads --global-pool --source-image-size --act --eps]
                      [Google flags: --prefix --gelu --pool] [--image-size S|HxW]
                      [--push-to-hub REPO] [--hub-token T] [--private]

SOURCE is a Hub repo id (`owner/name`, `owner/name@REV`; only the files the conversion needs are downloaded, with
huggingface_hub: HF_ENDPOINT / HF_HOME / HF_TOKEN apply, `--offline` reads the cache only), a local folder in timm Hub
layout (config.json with `architecture`) or transformers layout (config.json with `model_type`), or a file: a timm
state dict (.safetensors, .pth/.pt/.bin) or a Google .npz. The format is detected from what is there
(convert/source.py); each format's converter does the rest (convert/timm.py, convert/timm_hub.py, convert/google.py,
convert/transformers.py). Any refusal is one line on stderr, exit status 2, and nothing written to OUT_DIR.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from convert.common import (
    OUT_DIR_HELP,
    ConversionError,
    add_hub_arguments,
    add_preprocessing_arguments,
    check_paths,
    image_size_arg,
    run_cli,
)
from convert.google import add_google_arguments
from convert.google import run as convert_npz_file
from convert.source import resolve
from convert.timm import add_timm_arguments, run_file
from convert.timm_hub import convert_timm_folder


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m convert", description=__doc__.split("\n\n")[0])
    p.add_argument("source", help="Hub repo id owner/name[@REV], a timm or transformers folder, or a weights file")
    p.add_argument("out_dir", help=OUT_DIR_HELP)
    p.add_argument("--revision", default=None, help="branch, tag or commit of a Hub repo (default: main)")
    p.add_argument("--offline", action="store_true", help="use the local Hub cache only (no network)")
    p.add_argument("--verify", action="store_true", help="compare outputs with the source library in float64/32")
    p.add_argument("--image-size", type=image_size_arg, default=None,
                   help="output image size S or HxW (positions resampled the source's way)")
    add_preprocessing_arguments(p)
    add_timm_arguments(p.add_argument_group("timm state dicts (see python -m convert.timm -h)"), image_size=False)
    add_google_arguments(p.add_argument_group("Google .npz files (see python -m convert.google -h)"), image_size=False)
    p.set_defaults(gelu=None)  # to tell a given --gelu from none; an npz without it gets convert.google's default
    add_hub_arguments(p)
    return p.parse_args(argv)


# Flags that only mean something for some formats: given for another, they are refused rather than ignored.
FORMAT_FLAGS = {
    "--model-name": ("model_name", ("timm-file",)),
    "--num-heads": ("num_heads", ("timm-file", "timm-folder")),
    "--global-pool": ("global_pool", ("timm-file", "timm-folder")),
    "--source-image-size": ("source_image_size", ("timm-file", "timm-folder")),
    "--act": ("act", ("timm-file", "timm-folder")),
    "--eps": ("eps", ("timm-file", "timm-folder")),
    "--prefix": ("prefix", ("npz",)),
    "--gelu": ("gelu", ("npz",)),
    "--pool": ("pool", ("npz",)),
}
KIND_NAMES = {"timm-file": "a timm state dict", "timm-folder": "a timm repo/folder", "npz": "a Google .npz",
              "transformers-folder": "a transformers repo/folder"}


def refuse_inapplicable(args: argparse.Namespace, kind: str) -> None:
    given = [flag for flag, (dest, kinds) in FORMAT_FLAGS.items()
             if getattr(args, dest, None) is not None and kind not in kinds]
    if given:
        verb = "does" if len(given) == 1 else "do"
        raise ConversionError(f"{', '.join(given)} {verb} not apply to {KIND_NAMES[kind]} (the SOURCE given): drop it")


def _transformers_converter():
    """convert.transformers' converter, when the module exists (an ImportError from inside it is a real error, not its
    absence)."""
    try:
        from convert.transformers import convert_transformers_folder
    except ImportError as e:
        if e.name not in ("convert.transformers", None):
            raise
        raise ConversionError(
            "transformers-format conversion is not available in this version (convert/transformers.py is missing)"
        ) from None
    return convert_transformers_folder


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    source = resolve(args.source, revision=args.revision, offline=args.offline)
    args.source_repo, args.source_commit = source.repo, source.commit
    refuse_inapplicable(args, source.kind)
    if source.kind == "npz":
        args.gelu = args.gelu or "tanh"
        return convert_npz_file(args, source.text)
    if source.kind == "timm-file":
        run_file(args, source.path, tool="python -m convert")
    elif source.kind == "timm-folder":
        convert_timm_folder(source.path, args)
    else:
        convert_transformers_folder = _transformers_converter()
        check_paths(source.path, args.out_dir)
        convert_transformers_folder(source.path, Path(args.out_dir), args)
    return 0


if __name__ == "__main__":
    run_cli(main)
