"""Pixel steps shared by the image processors: any accepted input to a PIL image in the model's channels, the filter
names, and uint8 -> normalised float32. `image_processing_vit_hf.py` (the eval and train transforms) and
`naflex_processing_vit_hf.py` (SigLIP2's NaFlex resize and patchify) both build on these.

Remote code: copied flat next to the weights with the processor; imports only numpy, PIL and torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import PIL.Image
import torch

# timm / torchvision interpolation names -> PIL filters
RESAMPLE = {
    name: PIL.Image.Resampling[name.upper()] for name in ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")
}
IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)  # Google ViT: inputs in [-1, 1]
INCEPTION_STD = (0.5, 0.5, 0.5)


def _resample_filter(resample: int | str) -> int:
    if isinstance(resample, str) and resample not in RESAMPLE:
        raise ValueError(f"unknown resample {resample!r}: choose one of {sorted(RESAMPLE)}")
    return int(RESAMPLE[resample] if isinstance(resample, str) else resample)


def _array_to_pil(array: np.ndarray) -> PIL.Image.Image:
    """HWC / CHW / HW array (uint8, uint16, bool or float in [0, 1]) -> 8-bit PIL image."""
    if array.ndim == 3 and array.shape[0] in (1, 2, 3, 4) and array.shape[-1] not in (1, 2, 3, 4):
        array = np.moveaxis(array, 0, -1)  # CHW -> HWC
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (2, 3, 4)):
        raise ValueError(
            f"cannot read an image from an array of shape {array.shape}: expected (H, W), (H, W, C) or (C, H, W) "
            f"with C in 1..4"
        )
    if array.dtype == np.uint8:
        pass
    elif array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif array.dtype == np.uint16:
        array = (array // 257).astype(np.uint8)  # full 16-bit range -> 8 bits, whatever the content
    elif np.issubdtype(array.dtype, np.floating):
        # One fixed range per dtype (ToTensor's [0, 1]); a guess from the content would make the same pixel value
        # mean different things in different images.
        lo, hi = (float(np.nanmin(array)), float(np.nanmax(array))) if array.size else (0.0, 0.0)
        if lo < 0.0 or hi > 1.0 or np.isnan(array).any():
            raise ValueError(
                f"float images must hold values in [0, 1] (got {lo:.3g}..{hi:.3g}): pass uint8 images, or scale "
                f"to [0, 1]; already-normalised pixel_values go to the model directly, not through the processor"
            )
        array = np.rint(array * 255.0).astype(np.uint8)
    elif np.issubdtype(array.dtype, np.integer):
        array = np.clip(array, 0, 255).astype(np.uint8)
    else:
        raise ValueError(f"unsupported image array dtype {array.dtype}")
    if array.ndim == 3 and array.shape[-1] == 2:  # grey + alpha: fromarray has no 2-channel default
        return PIL.Image.merge("LA", [PIL.Image.fromarray(np.ascontiguousarray(array[..., i])) for i in (0, 1)])
    return PIL.Image.fromarray(np.ascontiguousarray(array))  # (H, W) -> L, (H, W, 3) -> RGB, (H, W, 4) -> RGBA


def to_pil_image(image: Any) -> PIL.Image.Image:
    """Accept a PIL image, a numpy array or a torch tensor and return a PIL image (no mode conversion yet)."""
    if isinstance(image, PIL.Image.Image):
        return image
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        if image.dtype == torch.bfloat16:
            image = image.float()
        image = image.numpy()
    if isinstance(image, np.ndarray):
        return _array_to_pil(image)
    raise TypeError(f"expected a PIL image, numpy array or torch tensor, got {type(image).__name__}")


def convert_channels(image: PIL.Image.Image, num_channels: int) -> PIL.Image.Image:
    """Convert any PIL mode to "RGB" (3 channels) or "L" (1 channel); alpha is composited onto white."""
    if num_channels not in (1, 3):
        raise ValueError(f"images can be converted to 1 or 3 channels, not {num_channels}")
    target = "RGB" if num_channels == 3 else "L"
    if image.mode == target:
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # Wide grey modes: PIL's convert("L") clips instead of rescaling. 16-bit images use their full range
        # (divide by 257); "F" is read as [0, 1]; "I" (32-bit) is ambiguous: 8-bit values stay, larger ones are
        # taken as 16-bit.
        array = np.asarray(image, dtype=np.float64)
        peak = array.max() if array.size else 0.0
        wide = image.mode.startswith("I;16") or (image.mode == "I" and peak > 255)
        scale = 1.0 / 257.0 if wide else (255.0 if image.mode == "F" else 1.0)
        image = PIL.Image.fromarray(np.clip(np.rint(array * scale), 0, 255).astype(np.uint8))
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        background = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = PIL.Image.alpha_composite(background, rgba)
    return image.convert(target)


def _prepare(image: Any, num_channels: int) -> PIL.Image.Image:
    """Any accepted input -> a PIL image in the model's channels; empty images refused."""
    image = convert_channels(to_pil_image(image), num_channels)
    if 0 in image.size:
        raise ValueError(f"empty image of size {image.size[0]}x{image.size[1]}")
    return image


RESCALE_255 = 1 / 255  # ToTensor's scale


def _to_float(batch: torch.Tensor, mean: Sequence[float], std: Sequence[float], rescale_factor=RESCALE_255):
    """uint8 (..., C, H, W) -> float32 scaled by `rescale_factor`, then (x - mean) / std in float32.

    The default factor divides by 255 as ToTensor does (for 8-bit values the same float32 as transformers' float64
    product rounded down to float32); another factor is applied in float64 and rounded to float32, as transformers'
    `rescale` does. Elementwise only, so a batch gives bit for bit what its images give one by one."""
    mean_t = torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1)
    exact = rescale_factor == RESCALE_255
    scaled = batch.float().div_(255) if exact else batch.double().mul_(rescale_factor).float()
    return scaled.sub_(mean_t).div_(std_t)


def _hwc_array(image: PIL.Image.Image) -> np.ndarray:
    array = np.asarray(image, dtype=np.uint8)
    return array[:, :, None] if array.ndim == 2 else array


def _normalize(image: PIL.Image.Image, mean: Sequence[float], std: Sequence[float], rescale: float) -> torch.Tensor:
    return _to_float(torch.from_numpy(_hwc_array(image).copy()).permute(2, 0, 1), mean, std, rescale)
