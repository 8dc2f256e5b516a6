"""Test images drawn in code, and the pixel-parity check of a processor against a reference transform."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import PIL.Image
import torch


def photo(width: int, height: int, seed: int = 0, mode: str = "RGB") -> PIL.Image.Image:
    """Smooth gradients plus noise: resampling filters (and off-by-one crops) give visibly different pixels on it."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    base = np.stack([xx * 255 / width, yy * 255 / height, (xx + yy) * 127 / (width + height)], -1)
    image = np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8)
    return PIL.Image.fromarray(image).convert(mode)


def assert_same_pixels(processor, reference: Callable, sizes: Iterable[tuple[int, int]], atol: float = 1e-6) -> None:
    """`processor(image).pixel_values[0]` equals `reference(image)` (e.g. timm's eval transform) on images of the
    given (width, height) sizes: same shape, values within `atol`."""
    for i, (w, h) in enumerate(sizes):
        image = photo(w, h, seed=i)
        expected, got = reference(image), processor(image).pixel_values[0]
        assert got.shape == expected.shape, (w, h)
        torch.testing.assert_close(got, expected, rtol=0, atol=atol, msg=f"image {w}x{h}")


# (width, height) of photos for processor parity: camera shapes in both orientations, strong aspect ratios, squares at
# and near the usual 224/256 targets, images smaller than the target (upsampled). Every one leaves an odd crop margin
# in some family's geometry; where the margin is 3 mod 4 transformers' `(L - C) // 2` and torchvision's
# `round((L - C) / 2)` (half to even) start the crop a pixel apart: (257, 999), (1023, 259), (97, 61) after a
# shortest-edge resize to 256 and a 224 crop (DINOv2), (225, 301) after CLIP's 224 / 224.
PHOTO_SIZES = [
    (640, 480), (480, 640), (500, 375), (257, 999), (1023, 259), (225, 301), (224, 224), (256, 256), (97, 61),
    (300, 300),
]


def photos(sizes: Iterable[tuple[int, int]] = PHOTO_SIZES) -> list[PIL.Image.Image]:
    return [photo(w, h, seed=i) for i, (w, h) in enumerate(sizes)]


def max_pixel_difference(processor, reference: Callable, images: Iterable[PIL.Image.Image]) -> float:
    """Largest |ours - reference| over the images (shapes must agree); `reference(image)` returns (C, H, W)."""
    worst = 0.0
    for image in images:
        expected = torch.as_tensor(np.asarray(reference(image)))
        got = processor(image).pixel_values[0]
        assert got.shape == expected.shape, (image.size, got.shape, expected.shape)
        worst = max(worst, (got.double() - expected.double()).abs().max().item())
    return worst
