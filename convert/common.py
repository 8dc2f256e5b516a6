"""Pieces shared by the converters: strict key/shape/dtype checks, the meta-device model, parity rows, the output
folder and the Hub push, and CLI argument types and error handling. Safe loading is convert/checkpoints.py; the errors
(convert/errors.py) are importable from here too."""

from __future__ import annotations

import argparse
import inspect
import math
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from convert.errors import ConversionError, VerificationError
from vit_hf import VitHfConfig, VitHfForImageClassification
from vit_hf.cli import ArgumentParser, add_debug_flag, debug_requested, no_transformers_bars
from vit_hf.hub import HubFolderError, HubPushError

# ----------------------------------------------------------------------------------------------------------------------
# Checks and the model
# ----------------------------------------------------------------------------------------------------------------------


def _few(items, sep: str = ", ", limit: int = 12) -> str:
    """The first `limit` items joined, then how many more (a whole model's key list is no message)."""
    items = list(items)
    more = f"{sep}... and {len(items) - limit} more" if len(items) > limit else ""
    return sep.join(items[:limit]) + more


def check_state_dict(
    expected: Mapping[str, torch.Tensor | tuple[int, ...]],
    state: Mapping[str, torch.Tensor],
    *,
    name: Callable[[str], str] = str,
    source: str = "checkpoint",
    target: str = "model",
) -> None:
    """Refuse unknown keys, missing keys, wrong shapes and non-float tensors where floats belong, naming each.

    `expected` maps each key to a tensor (a meta-device state dict: shape and dtype) or to a shape; `name(key)` is
    how a key is spelled in the messages (e.g. the source file's own key names). Nothing is initialised or dropped
    silently: any problem raises one `ConversionError` listing all of them.
    """

    def shape(v: torch.Tensor | tuple[int, ...]) -> tuple[int, ...]:
        return tuple(v.shape) if isinstance(v, torch.Tensor) else tuple(v)

    unknown = sorted(set(state) - set(expected))
    missing = sorted(set(expected) - set(state))
    common = sorted(set(state) & set(expected))
    wrong = [
        f"{name(k)}: {source} {tuple(state[k].shape)} vs {target} {shape(expected[k])}"
        for k in common
        if tuple(state[k].shape) != shape(expected[k])
    ]
    not_float = [
        f"{name(k)} ({str(state[k].dtype).replace('torch.', '')})"
        for k in common
        if not state[k].is_floating_point()
        and (not isinstance(expected[k], torch.Tensor) or expected[k].is_floating_point())
    ]
    problems = []
    if unknown:
        problems.append(f"unknown key(s) the {target} has no place for: {_few(name(k) for k in unknown)}")
    if missing:
        problems.append(f"missing key(s) the {target} needs: {_few(name(k) for k in missing)}")
    if wrong:
        problems.append(f"wrong shape(s): {_few(wrong, '; ')}")
    if not_float:
        problems.append(f"not floating-point (a float parameter is expected): {_few(not_float)}")
    if problems:
        raise ConversionError(" | ".join(problems))


def empty_model(config: VitHfConfig) -> VitHfForImageClassification:
    """The classification model with its parameters on the meta device (no memory, no init)."""
    with torch.device("meta"):
        return VitHfForImageClassification(config)


def build_model(
    config: VitHfConfig,
    state: Mapping[str, torch.Tensor],
    dtype: torch.dtype | None = None,
    name: Callable[[str], str] = str,
) -> VitHfForImageClassification:
    """Build the classification model on the meta device and adopt `state`'s tensors (no second copy in memory).

    `state` is checked first (`check_state_dict`, keys spelled by `name` in the messages); `dtype` casts the
    floating-point tensors.
    """
    model = empty_model(config)
    check_state_dict(model.state_dict(), state, name=name)
    tensors = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v) for k, v in state.items()}
    model.load_state_dict(tensors, strict=True, assign=True)
    return model.eval()


def fixed_batch(config: VitHfConfig, batch_size: int = 8, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    """The fixed verification batch: seeded normal pixels at the model's input size (deterministic everywhere)."""
    h, w = config.image_hw
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch_size, config.num_channels, h, w, generator=g).to(dtype)


def parity_row(reference: str, dtype: torch.dtype | str, got: torch.Tensor, expected: torch.Tensor, outputs: str,
               **extra) -> dict:
    """One parity row: the largest absolute difference (in float64), the reference's scale, and for logits the share
    of images whose top-1 class agrees. `extra` (e.g. a tolerance) is kept in the row."""
    got, expected = got.double(), expected.double()
    top1 = (got.argmax(-1) == expected.argmax(-1)).double().mean().item() if outputs == "logits" else None
    return dict(reference=reference, dtype=str(dtype).replace("torch.", ""), max_abs_diff=(got - expected).abs().max()
                .item(), top1_agreement=top1, scale=expected.abs().max().item(), outputs=outputs, **extra)


def parity_markdown(rows: list[dict]) -> str:
    """Parity report table. Each row: reference, dtype, max_abs_diff, top1_agreement (fraction), outputs."""
    lines = ["| reference | dtype | compared | max abs diff | top-1 agreement |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        top1 = "n/a" if r.get("top1_agreement") is None else f"{100 * r['top1_agreement']:.1f}%"
        lines.append(
            f"| {r['reference']} | {r['dtype']} | {r.get('outputs', 'logits')} | {r['max_abs_diff']:.3e} | {top1} |"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------------
# Small shape helpers
# ----------------------------------------------------------------------------------------------------------------------


def square_side(n: int) -> int | None:
    """s when n == s * s for a positive s, else None."""
    side = math.isqrt(n) if n > 0 else 0
    return side if side > 0 and side * side == n else None


def pair(size: int | tuple[int, int] | list[int] | None) -> tuple[int, int] | None:
    """`s` -> (s, s); a pair -> (h, w); None stays None."""
    if size is None:
        return None
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


# ----------------------------------------------------------------------------------------------------------------------
# CLI: argument types, paths, the output folder, the push, errors
# ----------------------------------------------------------------------------------------------------------------------



def parse_image_size(text: str | int | tuple | None) -> tuple[int, int] | None:
    """`224`, `"224"`, `"224x320"` (height x width) or a pair -> (h, w); sizes must be positive."""
    if text is None:
        return None
    if isinstance(text, (int, tuple, list)):
        size = pair(text)
    else:
        m = re.fullmatch(r"\s*(\d+)\s*(?:[xX,]\s*(\d+))?\s*", str(text))
        if not m:
            raise ConversionError(f"image size {text!r}: expected S or HxW, e.g. 224 or 224x320")
        size = (int(m.group(1)), int(m.group(2) or m.group(1)))
    if min(size) <= 0:
        raise ConversionError(f"image size {text!r}: height and width must be positive")
    return size


def image_size_arg(text: str) -> tuple[int, int]:
    """argparse type for `--image-size` / `--source-image-size` (S or HxW, positive)."""
    try:
        return parse_image_size(text)
    except ConversionError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def positive_int(text: str) -> int:
    """argparse type: an integer > 0 (a head count or size of 0 or less would write a broken folder)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive integer")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite float > 0 (e.g. a LayerNorm epsilon)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number")
    return value


def check_paths(src: str | Path, out_dir: str | Path) -> None:
    """Refuse an OUT_DIR that holds SRC (or is SRC): writing the folder would overwrite or remove the source."""
    src_path, out = Path(src).resolve(), Path(out_dir).resolve()
    if out.is_file():
        raise ConversionError(f"the output folder {out_dir} is an existing file: choose a folder path for OUT_DIR")
    if src_path == out or src_path.is_relative_to(out):
        raise ConversionError(
            f"the source {src} is inside the output folder {out_dir}: writing the folder could overwrite or remove "
            f"it. Choose an OUT_DIR that does not contain the source"
        )
    weights = out / "model.safetensors"
    if weights.exists() and src_path.exists() and os.path.samefile(weights, src_path):
        raise ConversionError(f"the source {src} is {weights} (a link to it): it would be overwritten; copy it first")


def unit_interval(text: str) -> float:
    """argparse type: a float in (0, 1] (a crop fraction)."""
    value = positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be in (0, 1]: the fraction of the resized image kept")
    return value


PREPROCESSING = ("crop_pct", "interpolation", "mean", "std")


@dataclass(frozen=True)
class Options:
    """The keywords every converter entry point takes beside its source's own (`convert_timm_file`,
    `convert_timm_folder`, `convert_npz_file`, `convert_transformers_folder`), each named as its CLI flag:

    image_size: output size S or (H, W) or "HxW" (positions resampled with the source's own algorithm);
    verify: compare outputs with the source library first; crop_pct / interpolation / mean / std: the eval
    preprocessing, over what the source says; push_to_hub (repo id) / hub_token / private: push OUT_DIR afterwards
    (token and write access checked before anything is converted); source_repo / source_commit: the Hub repo and
    commit the files came from, named in the card (`python -m convert` sets them for a repo id).
    """

    image_size: int | str | tuple[int, int] | None = None
    verify: bool = False
    crop_pct: float | None = None
    interpolation: str | None = None
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    push_to_hub: str | None = None
    hub_token: str | None = None
    private: bool = False
    source_repo: str | None = None
    source_commit: str | None = None

    @property
    def preprocessing(self) -> dict:
        """The preprocessing overrides (None where not given)."""
        return {k: getattr(self, k) for k in PREPROCESSING}


OPTION_NAMES = tuple(f.name for f in fields(Options))


def make_options(entry: str, given: Mapping[str, object]) -> Options:
    """`Options` from an entry point's `**options`; an unknown keyword is a TypeError naming the entry point, as
    Python's own would be."""
    unknown = sorted(set(given) - set(OPTION_NAMES))
    if unknown:
        raise TypeError(f"{entry}() got unexpected keyword argument(s) {', '.join(unknown)}; it takes its source's "
                        f"keywords and {', '.join(OPTION_NAMES)}")
    return Options(**given)


def keywords(entry: Callable) -> tuple[str, ...]:
    """The keyword arguments an entry point takes: its own keyword-only parameters, then `Options`' fields."""
    own = [p.name for p in inspect.signature(entry).parameters.values() if p.kind is p.KEYWORD_ONLY]
    return (*own, *OPTION_NAMES)


def call_from_args(entry: Callable, *positional, args: argparse.Namespace, **extra):
    """`entry(*positional, **keywords)` with each of its keywords taken from the parsed flag of the same name (flags
    not given, None, are left to the entry point's defaults); `extra` adds or overrides keywords."""
    given = {k: v for k in keywords(entry) if (v := getattr(args, k, None)) is not None}
    return entry(*positional, **{**given, **extra})


def add_preprocessing_arguments(parser: argparse.ArgumentParser) -> None:
    """`--crop-pct F`, `--interpolation {bilinear,bicubic}`, `--mean M..`, `--std S..`: the eval preprocessing the
    weights were trained with, when the source does not say it (or says it wrong). Each overrides the source."""
    parser.add_argument("--crop-pct", type=unit_interval, default=None,
                        help="eval crop fraction: resize the short side to size / F, centre-crop size (1.0: no crop)")
    parser.add_argument("--interpolation", choices=("bilinear", "bicubic"), default=None, help="resize filter")
    parser.add_argument("--mean", type=float, nargs="+", default=None, metavar="M", help="per-channel mean")
    parser.add_argument("--std", type=positive_float, nargs="+", default=None, metavar="S", help="per-channel std")


OUT_DIR_HELP = "output folder (hub files written only on success; other files left alone)"


def add_output_arguments(parser: argparse.ArgumentParser, verify_help: str) -> None:
    """The flags every converter shares, declared here once: `--image-size`, `--verify`, the preprocessing flags, the
    Hub flags and `--debug`."""
    parser.add_argument("--image-size", type=image_size_arg, default=None,
                        help="output image size S or HxW (positions resampled with the source's own algorithm)")
    parser.add_argument("--verify", action="store_true", help=verify_help)
    add_preprocessing_arguments(parser)
    add_hub_arguments(parser)
    add_debug_flag(parser)


def converter_parser(
    prog: str, doc: str, src_help: str, verify_help: str, add_format: Callable[[argparse.ArgumentParser], None]
) -> argparse.ArgumentParser:
    """A per-format converter's parser: SRC, OUT_DIR, the format's own flags (`add_format`), then the shared ones
    (`add_output_arguments`). Both spellings of a flag (`--image-size`, `--image_size`) are accepted."""
    p = ArgumentParser(prog=prog, description=doc.split("\n\n")[0])
    p.add_argument("src", help=src_help)
    p.add_argument("out_dir", help=OUT_DIR_HELP)
    add_format(p)
    add_output_arguments(p, verify_help)
    return p


def add_hub_arguments(parser: argparse.ArgumentParser) -> None:
    """`--push-to-hub REPO`, `--hub-token T`, `--private`: the same for every converter."""
    parser.add_argument("--push-to-hub", metavar="REPO", default=None, help="push OUT_DIR to this Hub repo afterwards")
    parser.add_argument("--hub-token", default=None, help="Hub write token (default: HF_TOKEN or `hf auth login`)")
    parser.add_argument("--private", action="store_true", help="create the Hub repo as private")


def check_push(options: Options) -> None:
    """Before anything is converted: a push needs a token the Hub accepts, with write access to the repo's namespace
    (`whoami`, one request). A Hub that cannot be reached now is left to the push itself to report."""
    repo = options.push_to_hub
    if not repo:
        return
    from huggingface_hub import HfApi, constants, get_token
    from huggingface_hub.errors import HfHubHTTPError

    token = options.hub_token or get_token()
    if not token:
        raise ConversionError(f"--push-to-hub {repo}: no Hub token: pass --hub-token, set HF_TOKEN, or run "
                              f"`hf auth login` (nothing was converted)")
    if constants.HF_HUB_OFFLINE:
        raise ConversionError(f"--push-to-hub {repo}: HF_HUB_OFFLINE=1 is set: unset it to push (nothing was "
                              f"converted)")
    try:
        me = HfApi().whoami(token=token)
    except HfHubHTTPError as e:
        if e.response is not None and e.response.status_code == 401:
            raise ConversionError(f"--push-to-hub {repo}: {constants.ENDPOINT} rejected the Hub token (401): pass a "
                                  f"valid write token with --hub-token or HF_TOKEN, or run `hf auth login`") from None
        return
    except Exception:  # not reachable now: the push reports it, after the folder is written
        return
    role = ((me.get("auth") or {}).get("accessToken") or {}).get("role")
    if role == "read":
        raise ConversionError(f"--push-to-hub {repo}: the Hub token is read-only: pass a write token with "
                              f"--hub-token or HF_TOKEN")
    namespaces = [me.get("name"), *(o.get("name") for o in me.get("orgs") or [])]
    owner, _, name = repo.rpartition("/")
    if owner and owner not in namespaces:
        raise ConversionError(f"--push-to-hub {repo}: user {me.get('name')!r} cannot write to the namespace "
                              f"{owner!r}: push to {me.get('name')}/{name}, or ask for write access to {owner}")


def write_folder(model, processor, out_dir: str | Path, card: dict) -> Path:
    """Write the hub-ready folder (`vit_hf.hub.save_hub_folder`, imported late: it pulls in the model-card
    machinery only when a folder is written) and return its path."""
    from vit_hf.hub import save_hub_folder

    try:
        return save_hub_folder(model, processor, out_dir, card_kwargs=card)
    except OSError as e:  # a full disk, a read-only or forbidden folder: the folder was written in a temporary
        # sibling that is gone again, so OUT_DIR is as it was
        raise ConversionError(f"cannot write {out_dir} ({e.strerror or e}): nothing was written; free space or "
                              f"choose another OUT_DIR") from None


def push_if_requested(out: Path, options: Options, commit_message: str) -> None:
    """After the folder is written: push it when `push_to_hub` was given. A failure raises `HubPushError` (or
    `HubFolderError`), which `run_cli` reports in one line; the folder stays as written."""
    if not options.push_to_hub:
        return
    from vit_hf.hub import push_folder

    sha = push_folder(out, options.push_to_hub, token=options.hub_token, private=options.private,
                      commit_message=commit_message)
    print(f"pushed {out} to {options.push_to_hub} at {sha}")


def print_parity(rows: list[dict] | None) -> None:
    """One line per parity row on stdout."""
    for row in rows or []:
        top1 = row.get("top1_agreement")
        print(
            f"parity vs {row['reference']} ({row['dtype']}): max abs diff {row['max_abs_diff']:.3e}"
            + (f", top-1 agreement {100 * top1:.1f}%" if top1 is not None else "")
        )


def source_card_lines(first: str, rows: list[tuple[str, str]]) -> str:
    """The card's "Source and conversion" section: a first sentence, then a two-column table."""
    return "\n".join([first, "", "| | |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in rows)])


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    """Run a converter's main() without tracebacks for the errors a user can fix (`--debug` or VIT_HF_DEBUG=1 shows
    them).

    A `ConversionError` exits with status 2 and its message on stderr (nothing was written). A failed verification
    (`VerificationError`) or push (`HubPushError`, or `HubFolderError` for a folder that would not load) exits with
    status 1 and one line on stderr; a written folder stays as it is.
    """
    debug = debug_requested(argv)
    try:
        with no_transformers_bars(keep_hub_bars=True):
            code = main(argv)
    except VerificationError as e:
        if debug:
            raise
        print(f"error: verification failed, nothing written: {_one_line(e)}", file=sys.stderr)
        sys.exit(1)
    except ConversionError as e:
        if debug:
            raise
        print(f"error: {_one_line(e)}", file=sys.stderr)
        sys.exit(2)
    except HubPushError as e:
        if debug:
            raise
        print(f"error: push failed (the output folder was written and is left as it is): {_one_line(e)}",
              file=sys.stderr)
        sys.exit(1)
    except HubFolderError as e:
        if debug:
            raise
        print(f"error: the folder is not hub-ready: {_one_line(e)}", file=sys.stderr)
        sys.exit(1)
    sys.exit(code or 0)
