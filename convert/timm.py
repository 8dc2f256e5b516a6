"""timm `VisionTransformer` state dict -> vit_hf hub-ready folder.

    python -m convert.timm SRC OUT_DIR [--model-name NAME] [--num-heads H] [--global-pool {token,avg,map}]
                           [--image-size S|HxW] [--act {gelu,gelu_tanh,quick_gelu}] [--eps E] [--use-ema] [--verify]
                           [--crop-pct F] [--interpolation {bilinear,bicubic}] [--mean M M M] [--std S S S]
                           [--push-to-hub REPO] [--hub-token T] [--private]

SRC is a timm state dict: `.safetensors`, or a `torch.save` file read with `weights_only=True` (plain, or wrapped
under `model` / `state_dict`), or a timm training checkpoint (`*.pth.tar` from timm's CheckpointSaver: its `args`
Namespace allowed as timm allows it; `--use-ema` takes `state_dict_ema`; `module.` prefixes removed). The
architecture comes from `--model-name` (a timm model name; only its model args and `pretrained_cfg` are used, nothing
is downloaded; the number of classes and the image size come from the weights,
as `timm.create_model(name, num_classes=N, img_size=S)` would build it) or is read off the keys and shapes; what the
shapes cannot tell is an error naming the flag to pass (heads; and for a CLIP-style pre-norm tower, whose activation
and LayerNorm eps differ by origin, `--act` and `--eps`). Without `--model-name`, `--verify` builds timm from the
same inferred arguments, so it checks the key mapping, not the inferred activation or eps: the parity rows say so.
Every key must be consumed and every parameter written; anything the model cannot represent is refused with the
feature's name, and nothing is written to OUT_DIR then. timm Hub repos and folders convert through the front door,
`python -m convert` (convert/timm_hub.py).

Key tables: convert/key_mapping.py; the architecture and its config <-> timm mapping: convert/timm_arch.py; shape
inference: convert/timm_infer.py; verification: convert/timm_verify.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from convert.checkpoints import load_checkpoint
from convert.common import (
    ConversionError,
    Options,
    build_model,
    call_from_args,
    check_paths,
    check_push,
    check_state_dict,
    converter_parser,
    image_size_arg,
    make_options,
    parity_markdown,
    parse_image_size,
    positive_float,
    positive_int,
    print_parity,
    push_if_requested,
    run_cli,
    source_card_lines,
    write_folder,
)
from convert.key_mapping import canonical_timm_keys, timm_to_hf_key
from convert.preprocessing import processor_from_flags, processor_from_timm
from convert.timm_arch import ACT_TO_HF, TimmArch, timm_model_by_name
from convert.timm_infer import grid_for, infer_arch
from convert.timm_verify import TimmReference, verify_against_timm
from vit_hf import VitHfConfig, VitHfForImageClassification, VitHfImageProcessor, resample_position_embedding

# ----------------------------------------------------------------------------------------------------------------------
# Labels
# ----------------------------------------------------------------------------------------------------------------------


def _imagenet_labels(model: torch.nn.Module, num_classes: int) -> dict[int, str] | None:
    """ImageNet label names timm ships for this model's classifier, when its pretrained_cfg names a known subset."""
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset

        subset = infer_imagenet_subset(model)
        if not subset:
            return None
        info = ImageNetInfo(subset)
        if info.num_classes() != num_classes:
            return None
        return {i: info.index_to_description(i) for i in range(num_classes)}
    except Exception:  # label names are a convenience; any failure leaves the generic LABEL_i names
        return None


def labels_for(model: torch.nn.Module, num_classes: int) -> dict[int, str] | None:
    """id2label of a timm model: its pretrained_cfg `label_names` (a timm Hub repo's own; a list, or a dict with
    gaps), else the ImageNet names timm ships for a known subset, else None (generic LABEL_i names)."""
    if not num_classes:
        return None
    names = (getattr(model, "pretrained_cfg", None) or {}).get("label_names")
    if isinstance(names, Mapping):
        return {int(i): str(n) for i, n in names.items()}
    if isinstance(names, (list, tuple)) and len(names) == num_classes:
        return dict(enumerate(map(str, names)))
    return _imagenet_labels(model, num_classes)


# ----------------------------------------------------------------------------------------------------------------------
# An architecture named by timm (--model-name, or a timm Hub repo's config.json)
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class Named:
    """A timm architecture resolved by name: the arch at the checkpoint's own size, the timm model to verify against,
    its pretrained_cfg and labels."""

    arch: TimmArch
    reference: TimmReference
    data_cfg: dict
    labels: dict[int, str] | None
    notes: list[str] = field(default_factory=list)


def _check_flags_agree(name: str, arch: TimmArch, flags: dict) -> None:
    """Flags given with a named architecture must say what it says (a silent override would convert a different
    model than the name)."""
    checks = [
        ("--num-heads", flags.get("num_heads"), arch.num_heads, f"{arch.num_heads} heads"),
        ("--global-pool", flags.get("global_pool"), arch.global_pool, f"global_pool={arch.global_pool!r}"),
        ("--act", flags.get("act"), arch.act, f"activation {arch.act}"),
        ("--eps", flags.get("eps"), arch.eps, f"LayerNorm eps {arch.eps:g}"),
    ]
    for flag, given, actual, says in checks:
        if given is not None and given != actual:
            raise ConversionError(f"{flag} {given} disagrees with {name} ({says})")


def _checkpoint_grid(name: str, arch: TimmArch, state, target, source_size) -> tuple[int, int]:
    """The checkpoint's own patch grid: the named model's, or (fine-tuned at another size) the one its position table
    fits (`--source-image-size` decides for a non-square one; `--image-size` is a hint)."""
    if "pos_embed" not in state or arch.pos_embed != "learn":
        return arch.grid
    rows = state["pos_embed"].shape[1]
    n = rows - (0 if arch.no_embed_class else arch.num_prefix_tokens)
    ph, pw = arch.patch_size
    if source_size:
        grid = (source_size[0] // ph, source_size[1] // pw)
        grid = grid if grid[0] * grid[1] == n else None
    else:
        grid = grid_for(n, [arch.grid] + ([(target[0] // ph, target[1] // pw)] if target else []))
    if grid is None:
        raise ConversionError(
            f"pos_embed has {rows} rows, which fit no grid of {name} "
            f"({arch.num_prefix_tokens} prefix token(s), no_embed_class={arch.no_embed_class})"
            + (f" at --source-image-size {source_size[0]}x{source_size[1]}" if source_size else "")
        )
    return grid


def arch_from_name(
    name: str,
    state: Mapping[str, torch.Tensor],
    *,
    create_kwargs: dict | None = None,
    label: str | None = None,
    target: tuple[int, int] | None = None,
    source_size: tuple[int, int] | None = None,
    **flags,
) -> Named:
    """The architecture `timm.create_model(name, num_classes=N, img_size=S, **create_kwargs)` builds, with N and S
    read off the weights (a checkpoint fine-tuned to N classes at size S converts under its base model's name).

    `name` is a timm model name or `local-dir:FOLDER` (a timm Hub layout, read by timm's own config parser); `label`
    is how messages, notes and parity rows name it (default: `name`).
    """
    label = label or name
    k = state["head.weight"].shape[0] if "head.weight" in state else 0
    kwargs = dict(create_kwargs or {}, num_classes=k)
    if "pre_logits.fc.weight" in state:
        raise ConversionError(
            f"pre_logits.fc.* (representation layer) is not part of {label} in this timm; "
            f"convert without a model name to keep the layer"
        )
    timm_model = timm_model_by_name(name, **kwargs)
    arch = TimmArch.from_timm_model(timm_model)
    _check_flags_agree(label, arch, flags)
    grid = _checkpoint_grid(label, arch, state, target, source_size)
    if name.startswith("local-dir:"):
        notes = [f"architecture from {label}'s config.json (`architecture` + `model_args`, read by timm's own "
                 f"create_model('local-dir:...'), num_classes={k} from the weights)"]
    else:
        notes = [f"architecture from timm.create_model({label!r}, pretrained=False, num_classes={k})"]
    if grid != arch.grid:
        size = (grid[0] * arch.patch_size[0], grid[1] * arch.patch_size[1])
        notes.append(f"image size {size[0]}x{size[1]} from the position table ({label} is {arch.img_size})")
        arch = dataclasses.replace(arch, img_size=size)
    data_cfg = dict(timm_model.pretrained_cfg or {})
    reference = TimmReference(name=name, kwargs=kwargs, label=label)
    return Named(arch, reference, data_cfg, labels_for(timm_model, k), notes)


# ----------------------------------------------------------------------------------------------------------------------
# Conversion
# ----------------------------------------------------------------------------------------------------------------------


def timm_processor(config: VitHfConfig, data_cfg: dict | None, flags: dict | None):
    """(processor, note, assumed): timm's eval transform of the pretrained_cfg at the model's own size (a checkpoint
    fine-tuned at another size than its name's), the flags over it; without a pretrained_cfg the flags over timm's
    ViT defaults, and `assumed` is the note when some of those defaults had to be assumed (None otherwise)."""
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    if not data_cfg:
        processor, note = processor_from_flags(config, **flags)
        return processor, note, (note if len(flags) < 4 else None)
    h, w = config.image_hw
    processor, note = processor_from_timm({**data_cfg, "input_size": (config.num_channels, h, w)}, config)
    if flags:
        processor, note = processor_from_flags(config, **flags, base=processor)
    return processor, note, None



def _resample(arch: TimmArch, state: dict, target: tuple[int, int] | None):
    """Positions resampled the timm way when `target` differs from the checkpoint's size.

    Returns (arch at the output size, state, (stored table, its grid) or None)."""
    if target is None or target == arch.img_size:
        return arch, state, None
    ph, pw = arch.patch_size
    new_grid = (target[0] // ph, target[1] // pw)  # as timm's patch convolution floors it
    if new_grid == arch.grid:  # the same grid: only the pixels past the last whole patch differ
        return dataclasses.replace(arch, img_size=target), state, None
    source_pos = None
    if "pos_embed" in state:
        prefix = 0 if arch.no_embed_class else arch.num_prefix_tokens
        source_pos = (state["pos_embed"], arch.grid)
        state = dict(state, pos_embed=resample_position_embedding(state["pos_embed"], arch.grid, new_grid, prefix,
                                                                  "timm"))
    return dataclasses.replace(arch, img_size=target), state, source_pos


def convert_timm_state_dict(
    state: Mapping[str, torch.Tensor],
    *,
    model_name: str | None = None,
    num_heads: int | None = None,
    global_pool: str | None = None,
    image_size: int | str | tuple[int, int] | None = None,
    source_image_size: int | str | tuple[int, int] | None = None,
    act: str | None = None,
    eps: float | None = None,
    verify: bool = False,
    create_kwargs: dict | None = None,
    reference_label: str | None = None,
    preprocessing: dict | None = None,
) -> tuple[VitHfForImageClassification, VitHfImageProcessor, dict]:
    """Convert a timm VisionTransformer state dict into a vit_hf model and image processor.

    Returns `(model, processor, info)`; `info` holds the timm architecture (`arch`, at the output size), notes on
    what was inferred, renames applied, the source grid, whether positions were resampled, the processor's origin,
    the pretrained_cfg (if any) and, with `verify=True`, the parity rows. The model adopts `state`'s tensors (no copy)
    except for a resampled position table. `create_kwargs` are extra `timm.create_model` arguments for a named model
    (a timm repo's `model_args`); `preprocessing` overrides the pretrained_cfg's `crop_pct` / `interpolation` / `mean`
    / `std` (None values are ignored). Raises `ConversionError` for anything that cannot be converted exactly.
    """
    state, renames = canonical_timm_keys(state)
    target, source_size = parse_image_size(image_size), parse_image_size(source_image_size)
    flags = dict(num_heads=num_heads, global_pool=global_pool, act=act, eps=eps)
    if model_name:
        named = arch_from_name(model_name, state, create_kwargs=create_kwargs, label=reference_label, target=target,
                               source_size=source_size, **flags)
        arch, notes, data_cfg, labels = named.arch, named.notes, named.data_cfg, named.labels
        reference = named.reference
    else:
        arch, notes = infer_arch(state, image_size=target, source_image_size=source_size, **flags)
        data_cfg, labels, reference = None, None, TimmReference()
    for key in state:
        timm_to_hf_key(key)  # a key the table has no rule for: refused by name
    check_state_dict(arch.expected_state(), state, target="architecture")
    source_grid = arch.grid
    arch, state, source_pos = _resample(arch, state, target)
    if arch.global_pool in ("map", "avg") and arch.num_prefix_tokens and not arch.pool_include_prefix:
        notes.append(
            f"'{arch.global_pool}' pooling excludes the {arch.num_prefix_tokens} prefix token(s), as timm >= 1.0.16 "
            f"does (pool_include_prefix=False); timm <= 1.0.15 MAP pooling attended to them"
        )
    config = arch.to_config(**({"id2label": labels} if labels else {}))
    parity = verify_against_timm(arch, state, config, reference, source_pos) if verify else None
    model = build_model(config, {timm_to_hf_key(k): v for k, v in state.items()})
    processor, processor_origin, assumed = timm_processor(config, data_cfg, preprocessing)
    info = dict(arch=arch, notes=notes, renames=renames, source_grid=source_grid, resampled=source_pos is not None,
                processor=processor_origin, assumed=assumed, pretrained_cfg=data_cfg, parity=parity,
                model_name=reference_label or model_name)
    return model, processor, info


# ----------------------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------------------


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _kwargs_text(arch: TimmArch) -> str:
    if arch.representation_size:
        return "n/a: timm >= 0.6 has no representation layer"
    kwargs = arch.timm_kwargs(json_safe=False)
    if "norm_layer" in kwargs:
        kwargs["norm_layer"] = f"partial(timm.layers.{kwargs['norm_layer'].func.__name__}, eps={arch.eps})"
    if "embed_norm_layer" in kwargs:
        kwargs["embed_norm_layer"] = kwargs["norm_layer"]
    cls = "timm.models.eva.Eva" if arch.family == "eva" else "VisionTransformer"
    return f"{cls}: `" + json.dumps(kwargs, default=lambda o: getattr(o, "__name__", repr(o))) + "`"


def source_markdown(origin_text: str, info: dict) -> str:
    """The card's "Source and conversion" section; `origin_text` is its first sentence (what was converted)."""
    arch: TimmArch = info["arch"]
    origin = (
        f"`{info['model_name']}` (timm model args)"
        if info["model_name"]
        else f"inferred from keys and shapes (activation {arch.act} and LayerNorm eps {arch.eps:g} assumed: with "
        f"`--verify` the parity rows are a self-check of the key mapping, not of these)"
    )
    grid = info["source_grid"]
    positions = (
        f"resampled from a {grid[0]}x{grid[1]} grid to {arch.grid[0]}x{arch.grid[1]} with timm's algorithm (bicubic, "
        f"antialias; `resample_abs_pos_embed` defaults)"
        if info["resampled"]
        else f"as stored ({grid[0]}x{grid[1]} grid)"
    )
    rows = [
        ("architecture", origin),
        ("timm kwargs", _kwargs_text(arch)),
        ("LayerNorm eps / activation", f"{arch.eps} / {ACT_TO_HF[arch.act]}"),
        ("preprocessing", info["processor"]),
        ("positions", positions),
        *(("key renames", r) for r in info["renames"]),
        *(("note", n) for n in info["notes"]),
    ]
    return source_card_lines(origin_text, rows)


def add_timm_arguments(p: argparse.ArgumentParser) -> None:
    """The architecture flags of a timm state dict (the front door shares them); `--image-size` is everyone's
    (convert.common.add_output_arguments)."""
    p.add_argument("--model-name", default=None, help="timm model name giving the architecture and preprocessing")
    p.add_argument("--num-heads", type=positive_int, default=None,
                   help="attention heads (not readable off a fused qkv)")
    p.add_argument("--global-pool", choices=("token", "avg", "map"), default=None, help="timm global_pool")
    p.add_argument("--source-image-size", type=image_size_arg, default=None,
                   help="the checkpoint's own image size S or HxW, when its position table does not tell")
    p.add_argument("--act", choices=sorted(ACT_TO_HF), default=None, help="MLP activation (default: timm's GELU)")
    p.add_argument("--eps", type=positive_float, default=None,
                   help="LayerNorm epsilon (default: timm's 1e-6; CLIP-style pre-norm towers need it given, e.g. 1e-5)")
    p.add_argument("--use-ema", action="store_true",
                   help="a training checkpoint's EMA weights (state_dict_ema), as timm's validate.py --use-ema")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return converter_parser(
        "python -m convert.timm", __doc__,
        "timm state dict or training checkpoint: .safetensors or a torch.save file (.pth/.pth.tar/.pt/.bin)",
        "compare logits with timm in float32 and float64", add_timm_arguments,
    ).parse_args(argv)


def write_conversion(model, processor, info: dict, out_dir: str | Path, options: Options, card: dict,
                     what: str) -> Path:
    """Write OUT_DIR, report, push: the tail every timm source shares."""
    if info.get("assumed"):
        print(info["assumed"])
    out = write_folder(model, processor, out_dir, card)
    print(f"wrote {out}")
    print_parity(info["parity"])
    push_if_requested(out, options, what)
    return out


def convert_timm_file(
    src: str | Path,
    out_dir: str | Path,
    *,
    model_name: str | None = None,
    num_heads: int | None = None,
    global_pool: str | None = None,
    source_image_size: int | str | tuple[int, int] | None = None,
    act: str | None = None,
    eps: float | None = None,
    use_ema: bool = False,
    **options,
) -> Path:
    """Convert the timm state dict or training checkpoint `src` into the hub-ready folder `out_dir` (returned).

    The architecture keywords are `convert_timm_state_dict`'s; `use_ema` takes a training checkpoint's EMA weights
    (`state_dict_ema`). `options`: `convert.common.Options` (image_size, verify, preprocessing, push). Raises
    `ConversionError` before anything is written.
    """
    opts = make_options("convert_timm_file", options)
    src = Path(src)
    check_paths(src, out_dir)
    check_push(opts)
    state, weights_note = load_checkpoint(src, use_ema=use_ema)
    from convert.siglip2 import convert_naflex_file, is_naflex_state
    if is_naflex_state(state):  # timm NaFlexViT (SigLIP2): convert/siglip2.py
        return convert_naflex_file(state, src, out_dir, opts, model_name, write_conversion)
    model, processor, info = convert_timm_state_dict(
        state, model_name=model_name, num_heads=num_heads, global_pool=global_pool, image_size=opts.image_size,
        source_image_size=source_image_size, act=act, eps=eps, verify=opts.verify, preprocessing=opts.preprocessing)
    if weights_note:
        print(weights_note)
        info["notes"].append(weights_note)
    cfg = info["pretrained_cfg"] or {}
    origin = (f"Converted from the timm `VisionTransformer` state dict `{src.name}` (sha256 `{sha256_of(src)}`) with "
              f"`python -m convert`.")
    card = dict(
        source=source_markdown(origin, info),
        parity=parity_markdown(info["parity"]) if info["parity"] else None,
        tags=["timm"],
        base_model=cfg.get("hf_hub_id") if cfg.get("tag") else None,
        license=cfg.get("license") or "apache-2.0",
    )
    return write_conversion(model, processor, info, out_dir, opts, card, f"Convert {src.name} from timm")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    call_from_args(convert_timm_file, args.src, args.out_dir, args=args)
    return 0


if __name__ == "__main__":
    run_cli(main)
