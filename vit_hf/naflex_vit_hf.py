"""NaFlex (SigLIP2's variable aspect ratio and patch count) for the einops ViT: the processor's resize and patchify,
and the model's patch input, per-image position resampling, padding mask and masked pooling.

An image keeps its aspect ratio: it is resized to the largest grid of P x P patches holding at most
`max_num_patches` patches, cut into patches flattened as `(ph pw c)` (transformers' and timm's layout), and padded
to `max_num_patches` rows. The model takes transformers' three inputs:

    pixel_values          (b, n, P * P * C) float  the patches, row-major over each image's grid, then padding
    pixel_attention_mask  (b, n) int or bool        1 for an image's patches, 0 for padding
    spatial_shapes        (b, 2) int                each image's (grid height, grid width)

Padding rows are defined (finite, and the same numbers as transformers' Siglip2VisionModel gives): a padding token
is given the position of its image's top-left patch, attends to the image's tokens like the others do, and no token
attends to it; pooling (token, mean, MAP) never reads it. So `last_hidden_state[i, k]` for `k >= h_i * w_i` is a
by-product, not a feature: select `pixel_attention_mask.bool()` rows.

The processor's side (the resize rule, patchify and padding) is naflex_processing_vit_hf.py, which a saved image
processor ships without the model's code.

Remote code: copied flat next to the weights; imports only torch, einops and its sibling layers module.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

from .layers_vit_hf import resample_position_embedding, sincos_2d_position_embedding

# ----------------------------------------------------------------------------------------------------------------------
# Model side
# ----------------------------------------------------------------------------------------------------------------------


def check_naflex_inputs(model, pixel_values, pixel_attention_mask, spatial_shapes) -> None:
    """One-line errors for inputs that are not the processor's NaFlex output for this model."""
    ph, pw = model.patch_embed.patch_size
    width = ph * pw * model.patch_embed.proj.in_channels
    if not isinstance(pixel_values, torch.Tensor) or pixel_values.ndim != 3 or pixel_values.shape[-1] != width:
        shape = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values).__name__
        raise ValueError(
            f"with spatial_shapes, pixel_values must be NaFlex patches (batch, num_patches, {width}), got {shape}: "
            f"preprocess with the model's processor set to max_num_patches"
        )
    b, n = pixel_values.shape[:2]
    if pixel_attention_mask is None or tuple(pixel_attention_mask.shape) != (b, n):
        raise ValueError(f"NaFlex input needs pixel_attention_mask of shape ({b}, {n}) (1 = patch, 0 = padding)")
    if tuple(spatial_shapes.shape) != (b, 2):
        raise ValueError(f"spatial_shapes must be ({b}, 2) (height, width) grids, got {tuple(spatial_shapes.shape)}")
    if (spatial_shapes <= 0).any() or (spatial_shapes.prod(-1) > n).any():
        raise ValueError(f"spatial_shapes must be positive grids of at most {n} patches, got {spatial_shapes.tolist()}")
    if ph != pw:
        raise ValueError(f"NaFlex input needs square patches, the model has {ph}x{pw}")
    if getattr(model, "rope", None) is not None:
        raise ValueError("NaFlex input with rotary position embeddings is not supported yet: pass NCHW pixel_values")


def hf_siglip2_weights(grid: tuple[int, int], spatial_shapes: torch.Tensor, length: int) -> torch.Tensor:
    """(b, length, gh * gw) float32 weights that resample a (gh, gw) table to each image's grid: bilinear with
    antialiasing (`F.interpolate(mode="bilinear", antialias=True, align_corners=False)`), separable, computed in
    float32 in transformers' own order of operations (Siglip2VisionEmbeddings.resize_positional_embeddings), so that
    even a float64 model reproduces its rounding. Row k >= h * w (padding) gets the weights of patch (0, 0)."""
    sizes = rearrange(spatial_shapes.float(), "b two -> b 1 two")
    k = rearrange(torch.arange(length, device=spatial_shapes.device, dtype=torch.float32), "n -> 1 n 1")
    row = torch.div(k, sizes[..., 1:], rounding_mode="floor")
    index = torch.cat([row, k - row * sizes[..., 1:]], dim=-1) * (k < sizes.prod(-1, keepdim=True))
    table = torch.tensor(grid, device=spatial_shapes.device, dtype=torch.float32)
    scale = table / sizes  # (b, 1, 2): source cells per output cell, per axis
    support = scale.clamp(min=1)
    center = (index + 0.5) * scale - 0.5  # (b, n, 2)
    weights = []
    for axis in (0, 1):
        source = torch.arange(grid[axis], device=spatial_shapes.device, dtype=torch.float32)
        w = (1 - (source - center[..., axis, None]).abs().div(support[..., axis, None])).clamp(min=0)
        weights.append(w / w.sum(-1, keepdim=True))
    return rearrange(weights[0][..., :, None] * weights[1][..., None, :], "b n gh gw -> b n (gh gw)")


def naflex_positions(table: torch.Tensor, grid: tuple[int, int], spatial_shapes: torch.Tensor, length: int,
                     algorithm: str) -> torch.Tensor:
    """(b, length, D) positions: the (1, gh * gw, D) table resampled to each image's grid with `algorithm`, rows
    after an image's last patch given its patch (0, 0)'s position.

    `"hf_siglip2"` is transformers' weight-matrix form, always in float32 (the stored grid included); any other
    algorithm resamples once per distinct grid of the batch with `resample_position_embedding` (timm's naflexvit:
    `"timm_naflex"`, which leaves the stored grid untouched)."""
    if algorithm == "hf_siglip2":
        weights = hf_siglip2_weights(grid, spatial_shapes, length)
        return (weights @ table[0].float()).to(table.dtype)
    return per_grid(lambda shape: resample_position_embedding(table, grid, shape, 0, algorithm)[0], spatial_shapes,
                    length)


def per_grid(table_for, spatial_shapes: torch.Tensor, length: int) -> torch.Tensor:
    """(b, length, D) rows of `table_for((h, w))` ((h * w, D)), made once per distinct grid of the batch; rows after
    an image's last patch take its first row."""
    shapes = [tuple(s) for s in spatial_shapes.tolist()]
    tables, offsets = [], {}
    for shape in dict.fromkeys(shapes):  # each distinct grid once, in order of appearance
        offsets[shape] = sum(t.shape[0] for t in tables)
        tables.append(table_for(shape))
    k = torch.arange(length, device=tables[0].device)
    index = torch.stack([offsets[s] + torch.where(k < s[0] * s[1], k, 0) for s in shapes])
    return torch.cat(tables)[index]


def naflex_embed(model, pixel_values: torch.Tensor, pixel_attention_mask: torch.Tensor, spatial_shapes: torch.Tensor,
                 output_attentions: bool = False):
    """(tokens with prefix tokens and positions, (b, prefix + n) bool validity, the attention mask for the attention
    function this call uses (eager when attention maps are asked for), or None when nothing is padded)."""
    check_naflex_inputs(model, pixel_values, pixel_attention_mask, spatial_shapes)
    proj = model.patch_embed.proj
    weight = rearrange(proj.weight, "d c ph pw -> d (ph pw c)")
    x = model.patch_embed.norm(F.linear(pixel_values.to(weight.dtype), weight, proj.bias))
    b, n = x.shape[:2]
    cfg = model.config
    if model.pos_embed is not None:
        table = model.pos_embed[:, model.pos_covered_prefix :]
        pos = naflex_positions(table, cfg.grid_size, spatial_shapes, n, cfg.pos_embed_interpolation)
        x = x + pos.to(x.dtype)
    elif cfg.pos_embed_type == "sincos2d":  # the fixed table of each image's own grid
        pos = per_grid(lambda shape: sincos_2d_position_embedding(shape, cfg.hidden_size)[0], spatial_shapes, n)
        x = x + pos.to(device=x.device, dtype=x.dtype)
    tokens = (model.cls_token, model.dist_token, model.reg_token)
    prefix = [t.expand(b, -1, -1).to(x.dtype) for t in tokens if t is not None]
    if prefix and model.pos_covered_prefix:  # the prefix rows of an original-ViT table go to the prefix tokens
        covered = torch.cat(prefix, dim=1)
        prefix = [torch.cat([covered[:, : model.pos_covered_prefix] + model.pos_embed[:, : model.pos_covered_prefix],
                             covered[:, model.pos_covered_prefix :]], dim=1)]
    x = torch.cat([*prefix, x], dim=1)
    valid = torch.cat([pixel_values.new_ones(b, x.shape[1] - n, dtype=torch.bool), pixel_attention_mask.bool()], 1)
    backend = "eager" if output_attentions else (cfg._attn_implementation or "eager")
    if backend.startswith("flash") and not bool(valid.all()):
        raise ValueError(f"{backend} takes no padding mask here: load the model with attn_implementation='sdpa' "
                         f"(or 'flex_attention') for padded NaFlex batches")
    return model.pos_drop(x), valid, attention_mask(valid, x.dtype, backend == "flex_attention")


def attention_mask(valid: torch.Tensor, dtype: torch.dtype, flex: bool = False):
    """The mask hiding the padding keys from every query (None when nothing is padded): an additive (b, 1, 1, n)
    tensor, which transformers' eager and SDPA attention broadcast, or for its flex attention a BlockMask (a tensor
    there becomes a score_mod, which crashes torch's compiled CPU kernel)."""
    if bool(valid.all()):
        return None
    if flex:
        from torch.nn.attention.flex_attention import create_block_mask

        b, n = valid.shape
        return create_block_mask(lambda i, h, q, k: valid[i, k], b, None, n, n, device=valid.device)
    mask = torch.zeros(valid.shape, dtype=dtype, device=valid.device).masked_fill(~valid, torch.finfo(dtype).min)
    return rearrange(mask, "b n -> b 1 1 n")


def naflex_pool(model, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor | None:
    """`VitHfModel.pool` over the valid tokens only: masked mean, MAP with the padding keys hidden."""
    pooling, prefix = model.config.pooling, model.num_prefix_tokens
    if pooling in ("token", "none"):
        return x[:, 0] if pooling == "token" else None
    keep = slice(None) if model.config.pool_include_prefix and pooling != "token_mean" else slice(prefix, None)
    tokens, mask = x[:, keep], valid[:, keep]
    if pooling in ("map", "map_kv"):
        return model.attn_pool(tokens, rearrange(mask, "b n -> b 1 1 n"))
    weights = rearrange(mask.to(x.dtype), "b n -> b n 1")
    mean = (tokens * weights).sum(1) / weights.sum(1).clamp(min=1)
    return torch.cat([x[:, 0], mean], dim=-1) if pooling == "token_mean" else mean


__all__ = ["naflex_positions", "per_grid", "naflex_embed", "naflex_pool", "attention_mask", "hf_siglip2_weights"]
