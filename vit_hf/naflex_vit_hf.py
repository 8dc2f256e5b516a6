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

Remote code: copied flat next to the weights; imports only torch, einops and its siblings (layers at the top, the
image processor's pixel steps inside NaFlexTransform).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange

from .layers_vit_hf import resample_position_embedding, sincos_2d_position_embedding

# ----------------------------------------------------------------------------------------------------------------------
# Processor side: geometry and patches
# ----------------------------------------------------------------------------------------------------------------------


def naflex_image_size(height: int, width: int, patch_size: int, max_num_patches: int) -> tuple[int, int]:
    """(height, width) in pixels, multiples of `patch_size`, of the largest resize of an image keeping its aspect
    ratio whose grid holds at most `max_num_patches` patches (at least one patch per side).

    The scale is found by bisection on [1e-6, 100] down to an interval of 1e-5, each side rounded up to whole
    patches, as transformers' `get_image_size_for_max_num_patches` does: the same sizes for every image."""

    def side(scale: float, length: int) -> int:
        return max(patch_size, math.ceil(length * scale / patch_size) * patch_size)

    low, high = 1e-6, 100.0
    while high - low >= 1e-5:
        mid = (low + high) / 2
        patches = (side(mid, height) / patch_size) * (side(mid, width) / patch_size)
        low, high = (mid, high) if patches <= max_num_patches else (low, mid)
    return side(low, height), side(low, width)


def patchify_padded(image: torch.Tensor, patch_size: int, max_num_patches: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(c, h, w) image -> ((max_num_patches, P * P * c) patches, zero rows after the image's; (max_num_patches,) int32
    mask, 1 on the image's rows)."""
    patches = rearrange(image, "c (gh ph) (gw pw) -> (gh gw) (ph pw c)", ph=patch_size, pw=patch_size)
    n = patches.shape[0]
    if n > max_num_patches:
        raise ValueError(f"{n} patches do not fit in max_num_patches={max_num_patches}")
    mask = torch.zeros(max_num_patches, dtype=torch.int32)
    mask[:n] = 1
    return F.pad(patches, (0, 0, 0, max_num_patches - n)), mask


class NaFlexTransform:
    """One image -> its NaFlex `pixel_values` (max_num_patches, P * P * C), `pixel_attention_mask` and
    `spatial_shapes`, with the eval transform `tf`'s channels, filter, resize backend and normalisation. With `train`
    (the processor's TrainTransform): RandomResizedCrop's box (scale, ratio) first, the crop keeping its own aspect
    ratio, then the horizontal flip, drawn from torch's RNG in TrainTransform's order; always resized with PIL."""

    def __init__(self, tf, patch_size: int, max_num_patches: int, train=None):
        self.tf, self.patch, self.limit, self.train = tf, int(patch_size), int(max_num_patches), train

    def __call__(self, image) -> dict[str, torch.Tensor]:
        from .image_processing_vit_hf import _hwc_array, _to_float  # the processor's own pixel steps (imports this)

        tf, p = self.tf, self.patch
        image = tf.prepare(image)
        box = self.train.crop_box(*image.size) if self.train is not None else (0, 0, *image.size)
        h, w = naflex_image_size(box[3] - box[1], box[2] - box[0], p, self.limit)
        torch_resize = tf.torch_mode is not None and self.train is None and (w, h) != image.size
        if not torch_resize and ((w, h) != image.size or self.train is not None):
            # transformers' PIL processor resizes with PIL, its torchvision one with torch (resize_backend="torch")
            image = image.resize((w, h), resample=tf.resample, box=box)
        uint8 = torch.from_numpy(_hwc_array(image).copy()).permute(2, 0, 1)
        if torch_resize:
            uint8 = F.interpolate(uint8[None], size=(h, w), mode=tf.torch_mode, antialias=True)[0]
        if self.train is not None and self.train.hflip > 0 and torch.rand(()).item() < self.train.hflip:
            uint8 = uint8.flip(-1)
        patches, mask = patchify_padded(_to_float(uint8, tf.mean, tf.std, tf.rescale_factor), p, self.limit)
        return {"pixel_values": patches, "pixel_attention_mask": mask, "spatial_shapes": torch.tensor([h // p, w // p])}


def naflex_collate(examples: list[dict]) -> dict[str, torch.Tensor]:
    """Stack per-example NaFlex dicts (all padded to the same max_num_patches) and any other tensor or number keys
    (labels, ...) into a batch: the collate function for NaFlex training."""
    return {k: torch.stack([torch.as_tensor(e[k]) for e in examples]) for k in examples[0]}


def naflex_batch(tf, images: list, patch_size: int, max_num_patches: int) -> dict[str, torch.Tensor]:
    """`VitHfImageProcessor`'s NaFlex output for `images`: one image at a time (each has its own size), as
    transformers' Siglip2 processors do."""
    transform = NaFlexTransform(tf, patch_size, max_num_patches)
    return naflex_collate([transform(image) for image in images])


def describe_naflex(tf, patch_size: int, max_num_patches: int) -> str:
    """The NaFlex transform in one sentence (model cards)."""
    from .image_processing_vit_hf import RESAMPLE

    filt = {int(v): k for k, v in RESAMPLE.items()}.get(tf.resample, str(tf.resample))
    mean, std = ", ".join(f"{v:.6g}" for v in tf.mean), ", ".join(f"{v:.6g}" for v in tf.std)
    return (f"Resize keeping the aspect ratio to the largest grid of at most {max_num_patches} patches of "
            f"{patch_size}x{patch_size} ({filt}), scale to [0, 1], normalise with mean=({mean}), std=({std}), cut "
            f"into patches padded to {max_num_patches} (NaFlex).")


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


__all__ = [
    "NaFlexTransform", "naflex_collate", "naflex_batch", "naflex_image_size", "patchify_padded", "naflex_positions",
    "naflex_embed", "naflex_pool", "attention_mask", "hf_siglip2_weights", "describe_naflex",
]
