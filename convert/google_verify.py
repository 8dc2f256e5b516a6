"""`--verify` for Google npz sources: the converted model against timm's own npz loader (where it applies) and an
independent numpy Flax forward pass (convert/flax_numpy.py), in float32 and float64.
"""

from __future__ import annotations

import copy as copy_module

import numpy as np
import torch

from convert.common import build_model, fixed_batch, parity_row
from convert.google_layout import Conversion
from convert.timm_arch import TimmArch
from vit_hf import VitHfForImageClassification


def _clone(
    model: VitHfForImageClassification, dtype: torch.dtype, hidden_act: str | None = None
) -> VitHfForImageClassification:
    config = copy_module.deepcopy(model.config)
    if hidden_act is not None:
        config.hidden_act = hidden_act
    return build_model(config, {k: v.detach().to(dtype).clone() for k, v in model.state_dict().items()})


def timm_unsupported_reason(conv: Conversion, path: str | None) -> str | None:
    """Why timm's npz loader cannot reproduce this file exactly (None: it can)."""
    info, layout = conv.info, conv.layout
    if path is None:
        return "no file path (in-memory parameters)"
    if info["bf16"]:
        return "bfloat16 storage (timm needs jax for it)"
    if info["pos_embed_type"] != "learned":
        return "sincos2d positions (timm's loader requires a stored table)"
    if layout.representation_size:
        return "representation layer pre_logits (dropped by timm >= 0.6)"
    if layout.pool == "0":
        return "pool '0' (timm has no first-token pooling without a cls token)"
    if info["resampled_from"] is not None:
        return "resampled positions (timm resamples with a different algorithm)"
    if any("inlined MAP head" in n for n in layout.notes):
        return "inlined MAP head (old big_vision layout)"
    prefix = info["prefix"]
    stored = set(conv.tree.params.keys())
    # timm's rule (vision_transformer._load_weights): big_vision naming iff params/ prefix, a top-level
    # pos_embedding or a stacked encoder; then it reads the position table from that one location.
    timm_big_vision = (
        prefix.startswith("params/") or f"{prefix}pos_embedding" in stored or info["scan"]
    )
    if timm_big_vision != (layout.naming == "linen"):
        timm_reads = "big_vision" if timm_big_vision else "vit_jax"
        return f"{layout.naming} block names with a layout timm reads as {timm_reads}"
    expected_pos = "pos_embedding" if timm_big_vision else "Transformer/posembed_input/pos_embedding"
    if info["pos_source"] != expected_pos:
        return f"position table at {info['pos_source']} (timm reads {expected_pos})"
    if timm_big_vision and info["cls_slot"]:
        return "a big_vision position table with a class-token slot"
    return None


def _timm_model(conv: Conversion, path: str) -> torch.nn.Module | None:
    """timm's VisionTransformer for the converted config, weights from timm's own npz loader (`_load_weights`)."""
    from timm.models.vision_transformer import VisionTransformer

    kwargs = TimmArch.from_config(conv.model.config).timm_kwargs(json_safe=False)
    kwargs.pop("act_layer", None)  # timm builds Google's ViTs with exact GELU (the caller compares a GELU-exact copy)
    model = VisionTransformer(**kwargs)
    if model.blocks[0].mlp.fc1.out_features != conv.layout.mlp:  # mlp_ratio float truncation (pitfall P16)
        return None
    model.load_pretrained(path, prefix=conv.info["prefix"])
    return model.eval()


def layout_mlp_ratio(conv: Conversion) -> float:
    return conv.layout.mlp / conv.layout.width


def _zoom_table(table: np.ndarray, old: tuple[int, int], new: tuple[int, int], slot: bool) -> np.ndarray:
    """vit_jax `interpolate_posembed`: scipy.ndimage.zoom(order=1) on the grid, the cls slot kept apart."""
    from scipy import ndimage

    head, grid = table[:, : int(slot)], table[0, int(slot) :].reshape(old[0], old[1], -1)
    grid = ndimage.zoom(grid, (new[0] / old[0], new[1] / old[1], 1), order=1)
    return np.concatenate([head, grid.reshape(1, new[0] * new[1], -1)], axis=1)


def verify(conv: Conversion, path: str | None) -> tuple[list[dict], bool]:
    """Compare the converted model with timm's npz loader (where it applies) and the numpy Flax forward pass.

    timm uses exact GELU, so it is compared with a copy of the model using `hidden_act="gelu"`; the numpy pass
    uses the converted model's own GELU. Returns the parity rows and whether every check passed.
    """
    from convert.flax_numpy import FlaxSpec, flax_forward

    model = conv.model
    pixels = fixed_batch(model.config)
    outputs = "logits" if model.config.num_labels > 0 else "features"
    rows = []
    with torch.no_grad():
        reason = timm_unsupported_reason(conv, path)
        if reason is None:
            try:
                timm_model = _timm_model(conv, path)
            except ImportError:
                timm_model, reason = None, "timm is not installed"
            if timm_model is None and reason is None:
                reason = f"mlp_ratio {layout_mlp_ratio(conv)} does not give timm an MLP of width {conv.layout.mlp}"
            if timm_model is not None:
                exact32 = _clone(model, torch.float32, "gelu")
                rows.append(parity_row("timm 1.x `_load_weights` (GELU exact)", "float32", exact32(pixels).logits,
                                       timm_model(pixels), outputs))
                del exact32
                exact64 = _clone(model, torch.float64, "gelu")
                timm_model = timm_model.double()
                x64 = pixels.double()
                rows.append(parity_row("timm 1.x `_load_weights` (GELU exact)", "float64", exact64(x64).logits,
                                       timm_model(x64), outputs))
                del exact64, timm_model

        layout, info = conv.layout, conv.info
        pos = None
        if info["pos_embed_type"] == "learned":
            pos = conv.tree.get(layout.pos_source, np.float64)
            if info["resampled_from"] is not None:
                new_grid = (model.config.grid_size[0], model.config.grid_size[1])
                # Google's resampling in float64, rounded to the float32 the converted model stores: a different
                # algorithm shows up at the 1e-2 level, while the float64 comparison stays at rounding noise.
                pos = _zoom_table(pos, info["resampled_from"], new_grid, info["cls_slot"])
                pos = pos.astype(np.float32).astype(np.float64)
        spec = FlaxSpec(**layout.block_names, depth=layout.depth, pool=layout.pool, pos_embed=pos,
                        pos_has_cls_slot=info["cls_slot"], gelu=info["gelu"])
        reference = torch.from_numpy(
            flax_forward(lambda n: conv.tree.get(n, np.float64), spec, pixels.double().numpy())
        )
        conv.tree.release()
        label = f"numpy Flax forward (float64, GELU {info['gelu']})"
        rows.append(parity_row(label, "float32", model(pixels).logits, reference, outputs))
        model64 = _clone(model, torch.float64)
        rows.append(parity_row(label, "float64", model64(pixels.double()).logits, reference, outputs))
        del model64
    ok = True
    for r in rows:
        if r["dtype"] == "float64":
            r["passed"] = r["max_abs_diff"] <= 1e-7 * (1 + r["scale"]) and r["top1_agreement"] in (None, 1.0)
        else:  # float32 only has to be free of gross errors; its rounding grows with depth and width
            r["passed"] = r["max_abs_diff"] <= 1e-2 * (1 + r["scale"])
        ok &= r["passed"]
    for r in rows:
        r["timm_skipped"] = reason
    return rows, ok

