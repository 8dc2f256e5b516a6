"""`--verify` for timm sources: the converted model against timm's own forward, in float64 and float32.

The reference is `timm.create_model(name, pretrained=False, **kwargs)` when the architecture has a timm name (a
`--model-name`, a timm Hub repo's `architecture` + `model_args`), else timm's `VisionTransformer` built from the
converter's own inferred arguments, in which case the rows say they are a self-check of the key mapping.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch
import torch.nn.functional as F

from convert.common import VerificationError, build_model, fixed_batch, parity_markdown, parity_row
from convert.key_mapping import timm_to_hf_key
from convert.timm_arch import TimmArch, import_timm
from vit_hf import VitHfConfig

# float64 bar on the logits: two exact implementations differ by rounding only (~1e-15 relative)
FLOAT64_TOLERANCE = 1e-9


@dataclasses.dataclass
class TimmReference:
    """How to build the timm model the conversion is checked against: `create_model(name, **kwargs)` or, without a
    name, `VisionTransformer(**arch.timm_kwargs())`; `label` names it in the parity rows (default: `name`)."""

    name: str | None = None
    kwargs: dict = dataclasses.field(default_factory=dict)
    label: str | None = None


def self_check_label(arch: TimmArch, timm_version: str) -> str:
    """The parity rows' reference when timm is built from the converter's own (inferred or given) arguments: it then
    checks the key mapping only; an activation or eps that differs from the checkpoint's training goes unnoticed."""
    return (
        f"mapping self-check against timm built from the inferred arguments (activation {arch.act}, eps "
        f"{arch.eps:g} assumed), timm {timm_version} VisionTransformer"
    )


def _reference_model(ref: TimmReference, arch: TimmArch, state: Mapping[str, torch.Tensor]) -> torch.nn.Module:
    """The timm model on the meta device, then adopting `state` (strict)."""
    timm = import_timm("--verify")
    from timm.models.deit import VisionTransformerDistilled
    from timm.models.vision_transformer import VisionTransformer

    h, w = arch.img_size
    with torch.device("meta"):
        if ref.name:  # at the output size (a resampled table is resampled for timm too)
            model = timm.create_model(ref.name, pretrained=False, **{**ref.kwargs, "img_size": h if h == w else (h, w)})
        else:
            rep = arch.representation_size
            ref_arch = dataclasses.replace(arch, representation_size=None, num_classes=0 if rep else arch.num_classes)
            from timm.models.eva import Eva

            vit_class = VisionTransformerDistilled if arch.distilled else VisionTransformer
            vit_class = Eva if arch.family == "eva" else vit_class
            model = vit_class(**ref_arch.timm_kwargs(json_safe=False))
    from convert.key_mapping import to_timm_layout

    model.load_state_dict(to_timm_layout(state, set(model.state_dict())), strict=True, assign=True)
    _materialize_buffers(model, next(iter(state.values())).dtype)
    return model.eval()


def _materialize_buffers(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Non-persistent buffers (EVA's zero key bias, RoPE bands and cached tables) of a meta-built timm model: allocated,
    then filled by timm's own `init_non_persistent_buffers`, as `timm.create_model(..., dtype=dtype)` would."""
    from timm.models._manipulate import reinit_non_persistent_buffers

    meta = False
    for module in model.modules():
        for name, buf in list(module._buffers.items()):
            if buf is not None and buf.is_meta:
                meta = True
                module._buffers[name] = torch.zeros(buf.shape, dtype=dtype if buf.is_floating_point() else buf.dtype)
    if meta:
        reinit_non_persistent_buffers(model)


def _outputs(arch, ref: TimmReference, cast, ref_pos, config, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(vit_hf output, timm output) on the fixed batch, both models adopting the same `cast` tensors. The timm
    reference for a representation layer (which timm >= 0.6 lacks) is timm's pooled features, then tanh(Linear) and
    the head applied here by hand."""
    rep = arch.representation_size
    dropped = ("pre_logits.", "head.") if rep else ("pre_logits.",)
    ref_state = {k: v for k, v in cast.items() if not k.startswith(dropped)}
    if ref_pos is not None:
        ref_state["pos_embed"] = ref_pos.to(dtype)
    timm_model = _reference_model(ref, arch, ref_state)
    ours = build_model(config, {timm_to_hf_key(k): v for k, v in cast.items()})
    x = fixed_batch(config, dtype=dtype)
    with torch.no_grad():
        expected = timm_model(x)
        if rep:
            expected = torch.tanh(F.linear(expected, cast["pre_logits.fc.weight"], cast["pre_logits.fc.bias"]))
            if "head.weight" in cast:
                expected = F.linear(expected, cast["head.weight"], cast["head.bias"])
        return ours(pixel_values=x).logits, expected


def verify_against_timm(
    arch: TimmArch,
    timm_state: Mapping[str, torch.Tensor],
    config: VitHfConfig,
    reference: TimmReference,
    source_pos: tuple[torch.Tensor, tuple[int, int]] | None = None,
) -> list[dict]:
    """Compare vit_hf with timm on `fixed_batch` in float32 and float64; VerificationError if over tolerance.

    Both models adopt the same (cast) tensors, so a pass adds at most one copy of the weights per dtype. When the
    positions were resampled, `source_pos` (the stored table and its grid) is resampled for the timm model by timm's
    own `resample_abs_pos_embed`, so the check covers our resampling too.
    """
    timm = import_timm("--verify")
    from timm.layers import resample_abs_pos_embed

    ref_pos = None
    if source_pos is not None:
        table, old_grid = source_pos
        prefix = 0 if arch.no_embed_class else arch.num_prefix_tokens
        ref_pos = resample_abs_pos_embed(table, new_size=list(arch.grid), old_size=list(old_grid),
                                         num_prefix_tokens=prefix)
    if reference.name:
        label = f"timm {timm.__version__} `{reference.label or reference.name}`"
    else:
        label = self_check_label(arch, timm.__version__)
    label += " + pre_logits" if arch.representation_size else ""
    outputs = "logits" if config.num_labels > 0 else "pooled features"
    rows, refs = [], {}
    # float64 first: its timm outputs are the exact values that measure float32's own rounding noise below
    for dtype in (torch.float64, torch.float32):
        cast = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in timm_state.items()}
        got, expected = _outputs(arch, reference, cast, ref_pos, config, dtype)
        refs[dtype] = expected
        if dtype == torch.float64:
            rows.append(parity_row(label, dtype, got, expected, outputs, tolerance=FLOAT64_TOLERANCE))
        else:
            # float32 rounding grows with depth and activation size; two correct float32 implementations differ by
            # about twice timm's own float32-vs-float64 error, so that (reported as its own row) sets the bar when it
            # exceeds 1e-4. Mapping bugs are caught by the float64 row.
            noise = parity_row(f"{label} float32 vs its float64 (rounding noise)", dtype, expected,
                               refs[torch.float64], outputs, tolerance=None)
            rows.insert(0, parity_row(label, dtype, got, expected, outputs,
                                      tolerance=max(1e-4, 4 * noise["max_abs_diff"])))
            rows.append(noise)
        del cast
    if any(r["tolerance"] is not None and not r["max_abs_diff"] <= r["tolerance"] for r in rows):  # NaN fails too
        raise VerificationError(
            "verification against timm failed (tolerance float64 1e-9, float32 max(1e-4, 4x timm's own float32 "
            "rounding noise); nothing written):\n" + parity_markdown(rows)
        )
    return rows
