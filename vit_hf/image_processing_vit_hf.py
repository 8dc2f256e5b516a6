"""Image processor of the einops ViT: one definition of the eval and train transforms, used by `pipeline`, evaluation
and training alike.

The eval transform is timm's (`transforms_imagenet_eval`): resize to `size / crop_pct` (shortest edge for a square
target, "cover" for a non-square one), centre-crop to `size`, scale to [0, 1], normalise. With `crop_pct=1.0` and a
square input it is a plain resize. Three settings reproduce transformers' PIL processors (ViT, DeiT, CLIP, BiT/DINOv2,
SigLIP) instead: `resize_size` (their `size`: shortest edge, or height x width ignoring the aspect ratio),
`crop_offset="floor"` (their centre crop starts at `(L - C) // 2`; timm/torchvision round) and `rescale_factor`.

The train transform is RandomResizedCrop + horizontal flip with the same resample filter and normalisation, drawn
from torch's RNG so that `accelerate`'s checkpoints restore it.

Works with PIL only (no torchvision). Grey, grey+alpha, palette, RGBA, CMYK and 16-bit images are converted to the
model's channels; alpha is composited onto white (as transformers' `convert_to_rgb` does).

Remote code: copied flat next to the weights; imports only numpy, PIL, torch and transformers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature
from transformers.processing_utils import ImagesKwargs

from .configuration_vit_hf import ProcessorSavedByVersion
from .naflex_processing_vit_hf import NaFlexTransform, describe_naflex, naflex_batch
from .pixels_vit_hf import (  # noqa: F401 (RESAMPLE and the means are this module's public names too)
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    INCEPTION_MEAN,
    INCEPTION_STD,
    RESAMPLE,
    RESCALE_255,
    _array_to_pil,
    _hwc_array,
    _normalize,
    _prepare,
    _resample_filter,
    _to_float,
    convert_channels,
    to_pil_image,
)


class VitHfImagesKwargs(ImagesKwargs, total=False):
    crop_pct: float | None
    crop_mode: str
    crop_offset: str
    resize_size: dict[str, int] | None
    num_channels: int
    train_crop_scale: Sequence[float]
    train_crop_ratio: Sequence[float]
    train_hflip: float
    resize_backend: str
    max_num_patches: int | None
    patch_size: int | None


# Filters that torch's antialiased uint8 interpolation implements (it follows PIL's algorithm, in another fixed-point
# precision: measured within 2/255 of PIL); other filters stay on PIL whatever the resize backend.
TORCH_MODES = {int(PIL.Image.Resampling.BILINEAR): "bilinear", int(PIL.Image.Resampling.BICUBIC): "bicubic"}
BACKENDS = ("pil", "torch", "torch_float")
CROP_OFFSETS = ("round", "floor")


def _check_resize_size(resize_size: dict | None) -> dict[str, int] | None:
    if resize_size is None:
        return None
    keys = set(resize_size)
    if keys == {"shortest_edge"}:
        return {"shortest_edge": int(resize_size["shortest_edge"])}
    if keys == {"height", "width"}:
        return {"height": int(resize_size["height"]), "width": int(resize_size["width"])}
    raise ValueError(
        f"resize_size must be None (resize to size / crop_pct), {{'shortest_edge': S}} or "
        f"{{'height': H, 'width': W}}, got {resize_size}"
    )


def _axis_crop(length: int, crop: int, offset: str) -> tuple[int, int]:
    """(zeros padded before the image, start of the crop in the padded image) along one axis.

    Padding happens only when the image is shorter than the crop (the crop then starts at 0). torchvision ("round")
    pads `(C - L) // 2` before and starts at `round((L - C) / 2)` (Python's round: half to even); transformers
    ("floor") pads `ceil((C - L) / 2)` before and starts at `(L - C) // 2`. They differ by one pixel for some odd
    margins."""
    if length < crop:
        margin = crop - length
        return (margin // 2 if offset == "round" else (margin + 1) // 2), 0
    margin = length - crop
    return 0, (int(round(margin / 2.0)) if offset == "round" else margin // 2)


class EvalTransform:
    """timm's eval transform: resize to size / crop_pct, centre crop, to tensor, normalise; or, with `resize_size`,
    `crop_offset="floor"` and `rescale_factor`, the resize / centre crop / rescale / normalise of transformers' PIL
    image processors.

    resize_backend="pil" resizes with PIL, bit-identical to timm's eval transform; batches are spread over
    `torch.get_num_threads()` threads (PIL releases the GIL while resizing). resize_backend="torch" resizes with
    `torch.nn.functional.interpolate(antialias=True)` on uint8, images of equal size in one call: several times
    faster, the same geometry, pixels within 2/255 of PIL's for camera-sized downscales. resize_backend="torch_float"
    rescales to float32 first and resizes those floats (antialiased, bilinear or bicubic, no rounding to 8 bits, no
    clamping), then crops and normalises: the order of transformers' torchvision DINOv3ViTImageProcessor.
    """

    def __init__(
        self, size, crop_pct, resample, mean, std, num_channels, crop_mode="center", resize_backend="pil",
        resize_size=None, crop_offset="round", rescale_factor=RESCALE_255,
    ):
        if crop_mode not in ("center", "squash"):
            raise ValueError(f"crop_mode must be 'center' or 'squash', got {crop_mode!r}")
        if resize_backend not in BACKENDS:
            raise ValueError(f"resize_backend must be one of {BACKENDS}, got {resize_backend!r}")
        if crop_offset not in CROP_OFFSETS:
            raise ValueError(f"crop_offset must be one of {CROP_OFFSETS}, got {crop_offset!r}")
        self.size = (int(size["height"]), int(size["width"]))
        self.crop_pct = 1.0 if crop_pct is None else float(crop_pct)
        self.crop_mode, self.crop_offset = crop_mode, crop_offset
        self.resize_size = _check_resize_size(resize_size)
        self.resample = _resample_filter(resample)
        self.mean, self.std, self.num_channels = tuple(mean), tuple(std), num_channels
        self.rescale_factor = float(rescale_factor)
        self.torch_mode = TORCH_MODES.get(self.resample) if resize_backend == "torch" else None
        self.float_mode = TORCH_MODES.get(self.resample) if resize_backend == "torch_float" else None
        if resize_backend == "torch_float" and self.float_mode is None:
            raise ValueError("resize_backend='torch_float' resizes bilinear or bicubic only: pick one of those")

    def resized_size(self, w: int, h: int) -> tuple[int, int]:
        """(width, height) after the resize step, exactly as timm/torchvision (or transformers) compute it."""
        if self.resize_size is not None and "height" in self.resize_size:
            # transformers {"height", "width"}: both sides to exactly that, ignoring the aspect ratio
            return self.resize_size["width"], self.resize_size["height"]
        if self.resize_size is not None:
            return self._shortest_edge(w, h, self.resize_size["shortest_edge"])
        th, tw = self.size
        sh, sw = math.floor(th / self.crop_pct), math.floor(tw / self.crop_pct)
        if self.crop_mode == "squash":
            # timm crop_mode='squash': resize both sides to size / crop_pct, ignoring the aspect ratio
            return sw, sh
        if sh == sw:
            return self._shortest_edge(w, h, sh)
        # timm ResizeKeepRatio: scale so the image covers the (non-square) target, rounding each side
        ratio = min(h / sh, w / sw)
        return round(w / ratio), round(h / ratio)

    @staticmethod
    def _shortest_edge(w: int, h: int, edge: int) -> tuple[int, int]:
        # torchvision Resize(int) and transformers {"shortest_edge"}: the shorter edge becomes `edge`, the longer one
        # is truncated
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = edge, int(edge * long / short)
        return (new_short, new_long) if w <= h else (new_long, new_short)

    def crop_origin(self, w: int, h: int) -> tuple[int, int, int, int, int, int]:
        """(left, top) of the centre crop in the image padded to at least the crop size, that padded size (pw, ph),
        and where the image sits in it (pad_left, pad_top). Resizing makes padding rare."""
        th, tw = self.size
        pad_left, left = _axis_crop(w, tw, self.crop_offset)
        pad_top, top = _axis_crop(h, th, self.crop_offset)
        return left, top, max(w, tw), max(h, th), pad_left, pad_top

    def resize(self, image: PIL.Image.Image) -> PIL.Image.Image:
        new_w, new_h = self.resized_size(*image.size)
        if (new_w, new_h) == image.size:
            return image
        return image.resize((new_w, new_h), resample=self.resample)

    def crop(self, image: PIL.Image.Image) -> PIL.Image.Image:
        th, tw = self.size
        w, h = image.size
        if (w, h) == (tw, th):
            return image
        left, top, pw, ph, pad_left, pad_top = self.crop_origin(w, h)
        if (pw, ph) != (w, h):
            padded = PIL.Image.new(image.mode, (pw, ph))
            padded.paste(image, (pad_left, pad_top))
            image = padded
        return image.crop((left, top, left + tw, top + th))

    def prepare(self, image: Any) -> PIL.Image.Image:
        return _prepare(image, self.num_channels)

    def _pil_uint8(self, image: Any) -> np.ndarray:
        return _hwc_array(self.crop(self.resize(self.prepare(image))))

    def __call__(self, image: Any) -> torch.Tensor:
        return self.batch([image])[0]

    def batch(self, images: Sequence[Any]) -> torch.Tensor:
        """Images -> (B, C, H, W) float32: the per-image transform, done for the whole batch at once."""
        if self.float_mode is not None:  # rescaled before the resize: only the normalisation is left
            scaled = self._torch_resized([self.prepare(image) for image in images], floats=True)
            return _to_float(scaled, self.mean, self.std, rescale_factor=1.0)
        if self.torch_mode is not None:
            uint8 = self._torch_resized([self.prepare(image) for image in images])
        else:
            workers = min(torch.get_num_threads(), len(images))
            if workers > 1:
                with ThreadPoolExecutor(workers) as pool:
                    arrays = list(pool.map(self._pil_uint8, images))
            else:
                arrays = [self._pil_uint8(image) for image in images]
            uint8 = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
        return _to_float(uint8, self.mean, self.std, self.rescale_factor)

    def _torch_resized(self, images: list[PIL.Image.Image], floats: bool = False) -> torch.Tensor:
        """Resize and crop with torch, images of equal size in one call: uint8 (`"torch"`), or, with `floats`, the
        rescaled float32 values (uint8 x factor, as transformers' torchvision `rescale`) resized without rounding."""
        th, tw = self.size
        mode = self.float_mode if floats else self.torch_mode
        out = torch.empty((len(images), self.num_channels, th, tw), dtype=torch.float32 if floats else torch.uint8)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            groups.setdefault(image.size, []).append(i)
        for (w, h), index in groups.items():
            # (n, C, H, W) in channels-last strides: the layout of torch's vectorised uint8 resampling kernels
            x = torch.from_numpy(np.stack([_hwc_array(images[i]) for i in index])).permute(0, 3, 1, 2)
            x = x * self.rescale_factor if floats else x
            new_w, new_h = self.resized_size(w, h)
            if (new_w, new_h) != (w, h):
                x = F.interpolate(x, size=(new_h, new_w), mode=mode, antialias=True, align_corners=False)
            left, top, pw, ph, pad_l, pad_t = self.crop_origin(new_w, new_h)
            if (pw, ph) != (new_w, new_h):
                x = F.pad(x, (pad_l, pw - new_w - pad_l, pad_t, ph - new_h - pad_t))
            out[index] = x[:, :, top : top + th, left : left + tw]
        return out


class TrainTransform:
    """RandomResizedCrop (torchvision's sampling) + horizontal flip + normalise, randomness from torch's RNG."""

    def __init__(self, size, resample, mean, std, num_channels, scale, ratio, hflip, rescale_factor=RESCALE_255):
        self.size = (int(size["height"]), int(size["width"]))
        self.resample = _resample_filter(resample)
        self.mean, self.std, self.num_channels = tuple(mean), tuple(std), num_channels
        self.rescale_factor = float(rescale_factor)
        self.scale, self.ratio, self.hflip = tuple(scale), tuple(ratio), float(hflip)

    def crop_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        area = width * height
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target_area = area * (self.scale[0] + (self.scale[1] - self.scale[0]) * torch.rand(()).item())
            aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * torch.rand(()).item())
            w = int(round(math.sqrt(target_area * aspect)))
            h = int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, ()).item())
                left = int(torch.randint(0, width - w + 1, ()).item())
                return left, top, left + w, top + h
        # Fallback: the largest centred crop within the ratio bounds (torchvision's behaviour)
        in_ratio = width / height
        if in_ratio < min(self.ratio):
            w, h = width, int(round(width / min(self.ratio)))
        elif in_ratio > max(self.ratio):
            w, h = int(round(height * max(self.ratio))), height
        else:
            w, h = width, height
        top, left = (height - h) // 2, (width - w) // 2
        return left, top, left + w, top + h

    def __call__(self, image: Any) -> torch.Tensor:
        image = _prepare(image, self.num_channels)
        box = self.crop_box(*image.size)
        image = image.resize(self.size[::-1], resample=self.resample, box=box)
        if self.hflip > 0 and torch.rand(()).item() < self.hflip:
            image = image.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT)
        return _normalize(image, self.mean, self.std, self.rescale_factor)


class VitHfImageProcessor(ProcessorSavedByVersion, BaseImageProcessor):
    r"""Image processor for [`VitHfForImageClassification`].

    Args:
        size: `{"height": H, "width": W}` (or an int) of the model input.
        crop_pct: centre-crop fraction of the eval transform (timm `crop_pct`); `1.0` (or None) resizes straight to
            `size`.
        crop_mode: timm's `crop_mode`: `"center"` keeps the aspect ratio (shortest edge to `size / crop_pct`, then
            centre crop), `"squash"` resizes both sides to `size / crop_pct` before the crop.
        resample: PIL filter (int or name) for resizing; timm's ViTs use bicubic.
        image_mean, image_std: normalisation; Google ViTs use 0.5 / 0.5 (inputs in [-1, 1]).
        num_channels: 3 (RGB) or 1 (grey); every input is converted to it.
        train_crop_scale, train_crop_ratio, train_hflip: RandomResizedCrop scale/ratio and flip probability of the
            train transform.
        resize_size: the resize step as transformers' processors state it, overriding the `size / crop_pct` rule:
            `{"shortest_edge": S}` (shorter side to S, the longer one truncated: CLIP, BiT/DINOv2) or
            `{"height": H, "width": W}` (both sides to exactly that, ignoring the aspect ratio: ViT, DeiT, SigLIP).
            The centre crop to `size` follows (nothing to crop when the resize already gives `size`). When set,
            `crop_pct` and `crop_mode` are not used.
        crop_offset: where the centre crop starts when the margin `L - C` is odd: `"round"` (timm/torchvision,
            `round((L - C) / 2)`, default) or `"floor"` (transformers, `(L - C) // 2`; an image smaller than the
            crop gets the extra padding pixel before it instead of after).
        rescale_factor: multiplies the 8-bit values before normalisation (default 1/255; transformers'
            `do_rescale=False` is 1.0).
        resize_backend: how the eval transform resizes. `"pil"` (default): PIL, bit-identical to timm's eval transform,
            batches spread over `torch.get_num_threads()` threads. `"torch"`: torch's antialiased uint8
            interpolation (bilinear/bicubic; other filters stay on PIL), same geometry, several times faster,
            pixels within 2/255 of PIL's for camera-sized downscales. `"torch_float"`: rescale to float32 first,
            then torch's antialiased float interpolation (bilinear/bicubic), crop, normalise: the pixels of
            transformers' torchvision-only DINOv3ViTImageProcessor. No torchvision needed for any.
        max_num_patches, patch_size: NaFlex (SigLIP2): aspect kept, at most `max_num_patches` patches, returned as
            patches, `pixel_attention_mask` and `spatial_shapes` (naflex_processing_vit_hf.py); `size`, crop unused.

    Example:
    ```python
    >>> processor = VitHfImageProcessor(size=224)
    >>> processor(images=[pil_image], return_tensors="pt").pixel_values.shape
    torch.Size([1, 3, 224, 224])
    ```
    """

    model_input_names = ["pixel_values"]
    valid_kwargs = VitHfImagesKwargs

    def __init__(
        self,
        size: int | dict[str, int] = 224,
        crop_pct: float | None = 0.9,
        crop_mode: str = "center",
        resample: int | str = PIL.Image.Resampling.BICUBIC,
        image_mean: Sequence[float] = INCEPTION_MEAN,
        image_std: Sequence[float] = INCEPTION_STD,
        num_channels: int = 3,
        train_crop_scale: Sequence[float] = (0.08, 1.0),
        train_crop_ratio: Sequence[float] = (3 / 4, 4 / 3),
        train_hflip: float = 0.5,
        resize_backend: str = "pil",
        resize_size: dict[str, int] | None = None,
        crop_offset: str = "round",
        rescale_factor: float = RESCALE_255,
        max_num_patches: int | None = None,
        patch_size: int | None = None,
        **kwargs,
    ):
        for legacy in ("do_resize", "do_rescale", "do_normalize", "do_center_crop", "crop_size"):
            kwargs.pop(legacy, None)  # always on / derived here; tolerated so ViTImageProcessor configs load
        super().__init__(**kwargs)
        if isinstance(size, int):
            size = {"height": size, "width": size}
        elif isinstance(size, (list, tuple)):
            size = {"height": int(size[0]), "width": int(size[1])}
        if "shortest_edge" in size:
            size = {"height": size["shortest_edge"], "width": size["shortest_edge"]}
        if not {"height", "width"} <= set(size):
            raise ValueError(f"size must be an int, (height, width) or {{'height': H, 'width': W}}, got {size}")
        self.size = {"height": int(size["height"]), "width": int(size["width"])}
        if crop_pct is not None and not 0 < crop_pct <= 1:
            raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
        # None means no crop margin; stored as 1.0 because to_dict drops None values and a reload would take 0.9
        self.crop_pct = 1.0 if crop_pct is None else float(crop_pct)
        if crop_mode not in ("center", "squash"):
            raise ValueError(f"crop_mode must be 'center' or 'squash', got {crop_mode!r}")
        self.crop_mode = crop_mode
        self.resample = _resample_filter(resample)
        if len(image_mean) != num_channels or len(image_std) != num_channels:
            raise ValueError(f"image_mean/image_std have {len(image_mean)}/{len(image_std)} values for {num_channels} "
                             f"channel(s)")
        self.image_mean, self.image_std = [float(v) for v in image_mean], [float(v) for v in image_std]
        self.num_channels = num_channels
        self.train_crop_scale = [float(v) for v in train_crop_scale]
        self.train_crop_ratio = [float(v) for v in train_crop_ratio]
        self.train_hflip = float(train_hflip)
        # Not named `backend`: AutoImageProcessor.from_pretrained takes `backend=` for itself (pil/torchvision class
        # choice) and would never pass it on, so the setting would be lost without a word.
        if resize_backend not in BACKENDS:
            raise ValueError(f"resize_backend must be one of {BACKENDS}, got {resize_backend!r}")
        if resize_backend == "torch_float" and self.resample not in TORCH_MODES:
            raise ValueError("resize_backend='torch_float' resizes bilinear or bicubic only: pick one of those")
        self.resize_backend = resize_backend
        self.resize_size = _check_resize_size(resize_size)
        if crop_offset not in CROP_OFFSETS:
            raise ValueError(f"crop_offset must be one of {CROP_OFFSETS}, got {crop_offset!r}")
        self.crop_offset = crop_offset
        self.rescale_factor = float(rescale_factor)
        if max_num_patches is not None and not (int(max_num_patches) > 0 and int(patch_size or 0) > 0):
            raise ValueError(f"NaFlex needs max_num_patches and patch_size > 0, got {max_num_patches}, {patch_size}")
        self.max_num_patches, self.patch_size = max_num_patches, patch_size

    @classmethod
    def from_model_config(cls, config, **kwargs) -> VitHfImageProcessor:
        """Defaults from a model config: its image size and channel count (mean/std stay the processor's)."""
        h, w = config.image_hw
        kwargs.setdefault("size", {"height": h, "width": w})
        kwargs.setdefault("num_channels", config.num_channels)
        if config.num_channels == 1:
            kwargs.setdefault("image_mean", [INCEPTION_MEAN[0]])
            kwargs.setdefault("image_std", [INCEPTION_STD[0]])
        return cls(**kwargs)

    # ------------------------------------------------------------------ the one source of truth
    def eval_transforms(self) -> EvalTransform:
        """The per-image transform used by `preprocess` (and so by `pipeline`) and by evaluation in training."""
        return EvalTransform(
            self.size, self.crop_pct, self.resample, self.image_mean, self.image_std, self.num_channels,
            getattr(self, "crop_mode", "center"), getattr(self, "resize_backend", "pil"),
            getattr(self, "resize_size", None), getattr(self, "crop_offset", "round"), self._rescale_factor(),
        )

    def train_transforms(self) -> TrainTransform | NaFlexTransform:
        tf = TrainTransform(self.size, self.resample, self.image_mean, self.image_std, self.num_channels,
                            self.train_crop_scale, self.train_crop_ratio, self.train_hflip, self._rescale_factor())
        limit = getattr(self, "max_num_patches", None)  # NaFlex: a dict per image (naflex_collate batches them)
        return NaFlexTransform(self.eval_transforms(), self.patch_size, limit, tf) if limit else tf

    def describe_eval(self, channels: bool = True) -> str:
        """The eval transform in one sentence (model cards, converter notes); `channels=False` leaves out the
        channel conversion."""
        tf = self.eval_transforms()
        if getattr(self, "max_num_patches", None):
            return describe_naflex(tf, self.patch_size, self.max_num_patches)
        (h, w), resize = tf.size, tf.resize_size
        filt = {int(v): k for k, v in RESAMPLE.items()}.get(tf.resample, str(tf.resample))
        pct = f"{math.floor(h / tf.crop_pct)}x{math.floor(w / tf.crop_pct)}"
        rule = f"{filt}; size / crop_pct {tf.crop_pct}"
        if resize is not None and "shortest_edge" in resize:
            step = f"resize the shorter side to {resize['shortest_edge']} keeping the aspect ratio ({filt})"
        elif resize is not None:
            step = f"resize to {resize['height']}x{resize['width']} ignoring the aspect ratio ({filt})"
        elif tf.crop_mode == "squash":
            step = f"resize to {pct} ignoring the aspect ratio ({rule})"
        elif h == w:
            step = f"resize the shorter side to {math.floor(h / tf.crop_pct)} ({rule})"
        else:
            step = f"resize keeping the aspect ratio until the image covers {pct} ({rule})"
        crop = "" if resize == {"height": h, "width": w} else f", centre-crop to {h}x{w}"
        if crop and tf.crop_offset == "floor":
            crop += " (starting at (L - C) // 2, as transformers does)"
        scale = "scale to [0, 1]" if tf.rescale_factor == RESCALE_255 else f"multiply by {tf.rescale_factor:g}"
        mean, std = ", ".join(f"{v:.6g}" for v in tf.mean), ", ".join(f"{v:.6g}" for v in tf.std)
        convert = f"convert to {tf.num_channels} channel(s) (alpha composited onto white), " if channels else ""
        text = f"{convert}{step}{crop}, {scale}, normalise with mean=({mean}), std=({std})."
        return text[0].upper() + text[1:]

    def _rescale_factor(self) -> float:
        # folders saved before the setting existed (and transformers' class default) mean 1/255
        factor = getattr(self, "rescale_factor", None)
        return RESCALE_255 if factor is None else float(factor)

    def preprocess(self, images: Any, return_tensors: str | None = "pt", **kwargs) -> BatchFeature:
        """Preprocess one image or a batch (PIL images, HWC/CHW numpy arrays or torch tensors, a 4-D batch too).

        Keyword arguments override the processor's eval settings for this call (`size`, `crop_pct`, `crop_mode`,
        `resample`, `image_mean`, `image_std`, `resize_size`, `crop_offset`, `rescale_factor`, `resize_backend`);
        `crop_pct` or `crop_mode` alone also drops a `resize_size`, so that they take effect. Other transformers
        options (`do_resize=False`, ...) are refused rather than silently ignored, since this processor always
        resizes, rescales and normalises.
        """
        given = {k: v for k, v in kwargs.items() if v is not None and k not in ("data_format", "input_data_format")}
        unsupported = sorted(set(given) - set(_CALL_OVERRIDES))
        if unsupported:
            raise TypeError(f"{type(self).__name__}.preprocess does not support {unsupported}: it takes "
                            f"{list(_CALL_OVERRIDES)} (set other options when constructing the processor)")
        processor = self
        if given:
            fields = {k: getattr(self, k) for k in _CALL_OVERRIDES}
            fields.update(num_channels=self.num_channels, **given)
            if {"crop_pct", "crop_mode"} & set(given) and "resize_size" not in given:
                fields["resize_size"] = None
            processor = type(self)(**fields)
        if return_tensors not in ("pt", "torch", "np", None):
            raise ValueError(f"return_tensors={return_tensors!r} is not supported; use 'pt' or 'np'")
        images = _as_image_list(images)
        if not images:
            raise ValueError("no images were given")
        tf, limit = processor.eval_transforms(), getattr(processor, "max_num_patches", None)
        patch = getattr(processor, "patch_size", None)
        data = naflex_batch(tf, images, patch, limit) if limit else {"pixel_values": tf.batch(images)}
        return BatchFeature({k: v.numpy() if return_tensors == "np" else v for k, v in data.items()})

    def __call__(self, images: Any = None, *args, **kwargs) -> BatchFeature:
        return self.preprocess(images, *args, **kwargs)


_CALL_OVERRIDES = (
    "size", "crop_pct", "crop_mode", "resample", "image_mean", "image_std", "resize_backend", "resize_size",
    "crop_offset", "rescale_factor", "max_num_patches", "patch_size",
)


def _as_image_list(images: Any) -> list:
    """A single image, a list/tuple of images, or a 4-D array/tensor batch -> list of single images."""
    if images is None:
        raise ValueError("images is None: pass a PIL image, an array, a tensor, or a list of them")
    if isinstance(images, (PIL.Image.Image, str)):
        if isinstance(images, str):
            raise TypeError("pass loaded images (PIL/numpy/torch), not a path; `pipeline` loads paths and URLs")
        return [images]
    if isinstance(images, (np.ndarray, torch.Tensor)):
        return list(images) if images.ndim == 4 else [images]
    if isinstance(images, Iterable):
        out = []
        for image in images:
            out.extend(_as_image_list(image) if isinstance(image, (list, tuple)) else [image])
        return out
    raise TypeError(f"cannot read images from a {type(images).__name__}")


VitHfImageProcessor.register_for_auto_class("AutoImageProcessor")

__all__ = ["VitHfImageProcessor", "EvalTransform", "TrainTransform", "convert_channels", "to_pil_image"]
