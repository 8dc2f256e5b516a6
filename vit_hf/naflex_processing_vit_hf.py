"""NaFlex preprocessing (SigLIP2's variable aspect ratio and patch count): the resize rule, patchify and padding of
`VitHfImageProcessor(max_num_patches=..., patch_size=...)`, its train transform and the collate function.

An image keeps its aspect ratio: it is resized to the largest grid of P x P patches holding at most
`max_num_patches` patches, cut into patches flattened as `(ph pw c)` (transformers' and timm's layout) and padded
to `max_num_patches` rows: `pixel_values` (max_num_patches, P * P * C), `pixel_attention_mask` (1 on the image's
rows) and `spatial_shapes` (grid height, width), which the model reads (naflex_vit_hf.py).

Remote code: copied flat next to a saved image processor; imports only torch, einops and (inside NaFlexTransform)
the processor's own pixel steps, never the model's code.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange

from .pixels_vit_hf import RESAMPLE, _hwc_array, _to_float


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


def naflex_crop_box(width: int, height: int, scale, ratio) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a random crop for NaFlex training, timm's `RandomResizedCropToSequence`: an area
    fraction drawn uniformly from `scale`, an aspect ratio that is the image's own times a factor drawn log-uniformly
    from `ratio` (relative, unlike RandomResizedCrop's absolute ratio, so a panorama stays a panorama), ten tries,
    then the largest centred crop within those ratios (the whole image when `ratio` holds 1). Drawn from torch's RNG
    (area, factor, top, left), which the training data seeds per example."""
    area, aspect = width * height, width / height
    low, high = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * (scale[0] + (scale[1] - scale[0]) * torch.rand(()).item())
        wanted = aspect * math.exp(low + (high - low) * torch.rand(()).item())
        w, h = int(round(math.sqrt(target * wanted))), int(round(math.sqrt(target / wanted)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, ()).item())
            left = int(torch.randint(0, width - w + 1, ()).item())
            return left, top, left + w, top + h
    w, h = width, height
    if ratio[1] < 1:  # a ratio range without 1: the image's own aspect clamped to the range's nearer end
        w = min(int(round(height * aspect * ratio[1])), width)
    elif ratio[0] > 1:
        h = min(int(round(width / (aspect * ratio[0]))), height)
    w, h = max(1, w), max(1, h)
    top, left = (height - h) // 2, (width - w) // 2
    return left, top, left + w, top + h


class NaFlexTransform:
    """One image -> its NaFlex `pixel_values` (max_num_patches, P * P * C), `pixel_attention_mask` and
    `spatial_shapes`, with the eval transform `tf`'s channels, filter, resize backend and normalisation. With `train`
    (the processor's TrainTransform: its crop scale and ratio, flip probability), timm's NaFlex train transform: a
    crop whose aspect ratio is the image's own jittered by `ratio` (`naflex_crop_box`), resized keeping the crop's
    aspect ratio to the largest grid of at most `max_num_patches`, then the horizontal flip; randomness from torch's
    RNG; always resized with PIL."""

    def __init__(self, tf, patch_size: int, max_num_patches: int, train=None):
        self.tf, self.patch, self.limit, self.train = tf, int(patch_size), int(max_num_patches), train

    def __call__(self, image) -> dict[str, torch.Tensor]:
        tf, p = self.tf, self.patch
        image = tf.prepare(image)
        box = (0, 0, *image.size) if self.train is None else naflex_crop_box(*image.size, self.train.scale,
                                                                           self.train.ratio)
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
    filt = {int(v): k for k, v in RESAMPLE.items()}.get(tf.resample, str(tf.resample))
    mean, std = ", ".join(f"{v:.6g}" for v in tf.mean), ", ".join(f"{v:.6g}" for v in tf.std)
    return (f"Resize keeping the aspect ratio to the largest grid of at most {max_num_patches} patches of "
            f"{patch_size}x{patch_size} ({filt}), scale to [0, 1], normalise with mean=({mean}), std=({std}), cut "
            f"into patches padded to {max_num_patches} (NaFlex).")


__all__ = [
    "NaFlexTransform", "naflex_collate", "naflex_batch", "naflex_crop_box", "naflex_image_size", "patchify_padded",
    "describe_naflex",
]
