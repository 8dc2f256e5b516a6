"""The converters' front door: convert a ViT-family checkpoint from where it lives into a vit_hf folder.

    python -m convert SOURCE OUT_DIR [--revision REV] [--verify] [--offline]
                      [--crop-pct F] [--interpolation {bilinear,bicubic}] [--mean M M M] [--std S S S]
                      [timm flags: --model-name --num-heads --global-pool --source-image-size --act --eps --use-ema]
                      [Google flags: --prefix --gelu --pool] [--image-size S|HxW]
                      [--push-to-hub REPO] [--hub-token T] [--private] [--debug]

SOURCE is a Hub repo id (`owner/name`, `owner/name@REV`; only the files the conversion needs are downloaded, with
huggingface_hub: HF_ENDPOINT / HF_HOME / HF_TOKEN apply, `--offline` reads the cache only), a local folder in timm Hub
layout (config.json with `architecture`) or transformers layout (config.json with `model_type`), or a file: a timm state
dict or training checkpoint (.safetensors, .pth/.pth.tar/.pt/.bin) or a Google .npz. The format is detected from what is
there (convert/source.py); each format's entry point does the rest (`CONVERTERS`: convert/timm.py, convert/timm_hub.py,
convert/google.py, convert/transformers.py), called with the flags that are its keyword arguments (a flag only another
format's entry point takes is refused). Any refusal is one line on stderr, exit status 2, and nothing written to OUT_DIR
(`--debug` or VIT_HF_DEBUG=1 shows the traceback). Flags are documented as `--a-b`; `--a_b` is accepted too.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from convert.common import (
    OPTION_NAMES,
    OUT_DIR_HELP,
    ConversionError,
    add_output_arguments,
    call_from_args,
    check_push,
    keywords,
    make_options,
    run_cli,
)
from convert.google import add_google_arguments, convert_npz_file
from convert.source import resolve
from convert.timm import add_timm_arguments, convert_timm_file
from convert.timm_hub import convert_timm_folder
from convert.transformers import convert_transformers_folder
from vit_hf.cli import ArgumentParser

# each format's entry point: its keyword arguments are the flags that apply to it
CONVERTERS: dict[str, Callable] = {
    "timm-file": convert_timm_file,
    "timm-folder": convert_timm_folder,
    "npz": convert_npz_file,
    "transformers-folder": convert_transformers_folder,
}
KIND_NAMES = {"timm-file": "a timm state dict", "timm-folder": "a timm repo/folder", "npz": "a Google .npz",
              "transformers-folder": "a transformers repo/folder"}
# Flags that only mean something for some formats (dest -> the formats whose entry point takes it), read off the
# entry points' signatures: given for another format, they are refused rather than ignored.
FORMAT_FLAGS: dict[str, tuple[str, ...]] = {
    name: tuple(kind for kind, entry in CONVERTERS.items() if name in keywords(entry))
    for name in dict.fromkeys(k for entry in CONVERTERS.values() for k in keywords(entry))
    if name not in OPTION_NAMES and not all(name in keywords(entry) for entry in CONVERTERS.values())
}


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m convert", description=__doc__.split("\n\n")[0])
    p.add_argument("source", help="Hub repo id owner/name[@REV], a timm or transformers folder, or a weights file")
    p.add_argument("out_dir", help=OUT_DIR_HELP)
    p.add_argument("--revision", default=None, help="branch, tag or commit of a Hub repo (default: main)")
    p.add_argument("--offline", action="store_true", help="use the local Hub cache only (no network)")
    add_timm_arguments(p.add_argument_group("timm state dicts and checkpoints (see python -m convert.timm -h)"))
    add_google_arguments(p.add_argument_group("Google .npz files (see python -m convert.google -h)"))
    add_output_arguments(p, "compare outputs with the source library in float64/32")
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def refuse_inapplicable(args: argparse.Namespace, kind: str) -> None:
    given = [f"--{name.replace('_', '-')}" for name, kinds in FORMAT_FLAGS.items()
             if getattr(args, name, None) not in (None, False) and kind not in kinds]
    if given:
        verb = "does" if len(given) == 1 else "do"
        raise ConversionError(f"{', '.join(given)} {verb} not apply to {KIND_NAMES[kind]} (the SOURCE given): drop it")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_push(make_options("python -m convert", {k: getattr(args, k) for k in ("push_to_hub", "hub_token")}))
    source = resolve(args.source, revision=args.revision, offline=args.offline)
    refuse_inapplicable(args, source.kind)
    call_from_args(CONVERTERS[source.kind], source.text if source.kind == "npz" else source.path, args.out_dir,
                   args=args, source_repo=source.repo, source_commit=source.commit)
    return 0


if __name__ == "__main__":
    run_cli(main)
