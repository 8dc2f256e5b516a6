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
