"""`--verify` for transformers sources: the source's own transformers class is the oracle.

The source class is loaded from the same folder by transformers itself (`from_pretrained`, SDPA attention: its eager
softmax always runs in float32), both models run in float64 and then float32 on seeded pixels, and the outputs the
source exposes are compared: logits, or the pooled output of a headless source, or `last_hidden_state` where the
source has no pooled output (ViTMAE: no masking, patches in order); DINOv3 and AIMv2 compare `last_hidden_state`
besides the pooled output. DINOv2 is also compared at its processor's crop size, where transformers resamples the
518-px position table at every call; a model without a stored position table (DINOv3's RoPE, AIMv2 native's sin-cos
table built per grid) at a larger non-square size.
"""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path

import torch

from convert.common import VerificationError, build_model, fixed_batch

# times max(1, largest reference magnitude). A source that rounds to float32 inside its float64 forward (AIMv2's and
# Sapiens2's RMSNorm) is held to float64's 1e-9 too: vit_hf sums those float32 norms over the same memory layout
# (see PatchEmbed), so they round as the source's do.
TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-3}


@contextlib.contextmanager
def _quiet_transformers():
    """transformers prints a load report for every unused tensor (text towers, decoders): not news here."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


# dual-encoder repos whose vision class cannot read the full checkpoint: the full model is loaded, its tower taken
LOADED_THROUGH = {"aimv2": ("Aimv2Model", "vision_model")}


def load_source(folder: Path, info: dict, dtype: torch.dtype = torch.float64) -> torch.nn.Module:
    """The transformers model of the source class in `dtype`, SDPA attention, eval mode."""
    import transformers

    through = LOADED_THROUGH.get(info["raw"].get("model_type"))
    if through is not None:
        with _quiet_transformers():
            model = getattr(transformers, through[0]).from_pretrained(folder, dtype=dtype, attn_implementation="sdpa")
        return getattr(model, through[1]).eval()
    cls = getattr(transformers, info["source_class"])
    kwargs = {}
    if info["source_class"] in ("ViTModel", "DeiTModel", "IJepaModel"):  # a pooler only when the checkpoint has one
        kwargs["add_pooling_layer"] = "vit.pre_logits.fc.weight" in info["state"]
    if info["source_class"] == "ViTMAEModel":
        kwargs["mask_ratio"] = 0.0
    with _quiet_transformers():
        model = cls.from_pretrained(folder, dtype=dtype, attn_implementation="sdpa", **kwargs)
    return model.eval()


def _outputs(model, x: torch.Tensor, compared: tuple[str, ...], source: bool, resized: bool = False):
    kwargs = {"interpolate_pos_encoding": True} if resized and source else {}
    if compared == ("logits",):
        return [model(x, **kwargs).logits]
    if not source:
        model = model.vit
    if source and type(model).__name__ == "ViTMAEModel":  # keep every patch, in order: noise = arange
        p = model.config.patch_size
        ph, pw = (p, p) if isinstance(p, int) else p
        n = (x.shape[-2] // ph) * (x.shape[-1] // pw)
        kwargs["noise"] = torch.arange(n, dtype=x.dtype).expand(x.shape[0], n)
    out = model(x, **kwargs)
    return [getattr(out, name) for name in compared]


def _sizes(config, processor) -> list[tuple[int, int]]:
    """The stored size; DINOv2's and TIPSv2's processor crop (positions resampled at every call); and a non-square
    grid one and two patches larger, run as it is by a model without a stored position table (RoPE: DINOv3; sin-cos
    built per grid: AIMv2 native) and with its table resampled by one that resamples at every call (a processor crop
    equal to the stored size would leave that resampling unchecked)."""
    sizes = [tuple(config.image_hw)]
    size = getattr(processor, "size", None) or {}
    crop = (size.get("height"), size.get("width"))
    if config.dynamic_img_size and None not in crop and crop not in sizes:
        sizes.append(crop)
    if config.pos_embed_type != "learned" or config.dynamic_img_size:
        (gh, gw), (ph, pw) = config.grid_size, config.patch_hw
        sizes.append(((gh + 1) * ph, (gw + 2) * pw))
    return sizes


def _row(reference: str, dtype: torch.dtype, compared: str, hw, got, expected, tolerance: float) -> dict:
    diff = (got - expected).abs().max().item()
    top1 = (got.argmax(-1) == expected.argmax(-1)).double().mean().item() if compared == "logits" else None
    limit = tolerance * max(1.0, expected.abs().max().item())
    return dict(
        reference=reference, dtype=str(dtype).replace("torch.", ""), outputs=f"{compared} at {hw[0]}x{hw[1]}",
        max_abs_diff=diff, top1_agreement=top1, ok=diff <= limit,
    )


def _inputs(config, processor, dtype: torch.dtype) -> list[torch.Tensor]:
    """Seeded pixels at the model's size (the `fixed_batch`), and at the processor's crop for run-time resampling."""
    inputs = []
    for k, hw in enumerate(_sizes(config, processor)):
        generator = torch.Generator().manual_seed(1)
        x = fixed_batch(config) if k == 0 else torch.randn(4, config.num_channels, *hw, generator=generator)
        inputs.append(x.to(dtype))
    return inputs


def _run(model: torch.nn.Module, inputs: list[torch.Tensor], compared: tuple[str, ...], source: bool,
         resized: bool = False) -> list[list[torch.Tensor]]:
    with torch.no_grad():
        return [_outputs(model, x, compared, source, resized) for x in inputs]


def _ours(info: dict, dtype: torch.dtype) -> torch.nn.Module:
    """The converted model in `dtype`; after --image-size, the stored table resampled in that dtype (the written
    float32 table was resampled in float32, as transformers does in a float32 model; float64 is then exact too)."""
    if "unresized" not in info:
        return build_model(info["config"], info["state"], dtype=dtype)
    config, table = info["unresized"]
    model = build_model(copy.deepcopy(config), {**info["state"], "vit.pos_embed": table}, dtype=dtype)
    model.vit.resize_position_embeddings(tuple(info["config"].image_hw), algorithm="hf")
    return model


def verify(folder: Path, info: dict, processor) -> list[dict]:
    """Parity rows against the source's transformers class; VerificationError if any is over tolerance.

    One model at a time is held in each dtype (the source's outputs are computed, the source freed, then ours), so
    the check adds one float64 copy of the weights at most."""
    import transformers

    config, compared = info["config"], (info["compared"], *info.get("also", ()))
    reference = f"transformers {transformers.__version__} `{info['source_class']}`"
    rows = []
    for dtype in (torch.float64, torch.float32):
        inputs = _inputs(config, processor, dtype)
        resized = "resized_from" in info  # the source runs at the new size with its own run-time resampling
        expected = _run(load_source(folder, info, dtype), inputs, compared, source=True, resized=resized)
        got = _run(_ours(info, dtype), inputs, compared, source=False)
        for x, outs, refs in zip(inputs, got, expected):
            rows += [_row(reference, dtype, name, x.shape[-2:], a, b, TOLERANCE[dtype])
                     for name, a, b in zip(compared, outs, refs)]
    bad = [r for r in rows if not r.pop("ok")]
    if bad:
        worst = max(bad, key=lambda r: r["max_abs_diff"])
        raise VerificationError(
            f"--verify: the converted model differs from {reference} by {worst['max_abs_diff']:.3e} "
            f"({worst['dtype']}, {worst['outputs']}); nothing written"
        )
    return rows
