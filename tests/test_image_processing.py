"""The image processor: timm-exact eval transform, every image mode and input type, train transform, no torchvision."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from images import assert_same_pixels, photo

from vit_hf import VitHfConfig, VitHfImageProcessor


@pytest.mark.parametrize(
    "size,crop_pct,interpolation,crop_mode",
    [
        (32, 0.9, "bicubic", "center"),
        (32, 1.0, "bilinear", "center"),
        (24, 0.875, "bicubic", "center"),
        ((32, 48), 0.9, "bicubic", "center"),
        (32, 1.0, "bicubic", "squash"),
        ((24, 40), 0.95, "bilinear", "squash"),
    ],
)
def test_eval_transform_equals_timm(size, crop_pct, interpolation, crop_mode):
    """Same pixels as timm's `transforms_imagenet_eval` for the same pretrained_cfg (timm is in the dev extra)."""
    from timm.data import create_transform

    timm_tf = create_transform(
        input_size=(3, *size) if isinstance(size, tuple) else (3, size, size),
        crop_pct=crop_pct,
        crop_mode=crop_mode,
        interpolation=interpolation,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
    )
    ours = VitHfImageProcessor(
        size=size, crop_pct=crop_pct, crop_mode=crop_mode, resample=interpolation, image_mean=(0.485, 0.456, 0.406),
        image_std=(0.229, 0.224, 0.225),
    )
    assert_same_pixels(ours, timm_tf, [(64, 48), (37, 91), (32, 32), (50, 20)])


@pytest.mark.parametrize("mode", ["L", "LA", "P", "PA", "RGBA", "CMYK", "I;16", "I", "F", "1", "YCbCr"])
def test_every_image_mode_becomes_rgb(mode):
    processor = VitHfImageProcessor(size=16, crop_pct=1.0)
    image = photo(20, 18).convert(mode) if mode not in ("I;16", "I", "F") else None
    if mode == "I;16":
        image = PIL.Image.fromarray((np.arange(20 * 18).reshape(18, 20) * 150).astype(np.uint16))
    elif mode == "I":
        image = photo(20, 18).convert("L").convert("I")
    elif mode == "F":
        image = PIL.Image.fromarray(np.linspace(0, 1, 20 * 18, dtype=np.float32).reshape(18, 20))
    pixel_values = processor(image).pixel_values
    assert pixel_values.shape == (1, 3, 16, 16)
    assert torch.isfinite(pixel_values).all()
    assert pixel_values.min() >= -1.0 - 1e-6 and pixel_values.max() <= 1.0 + 1e-6
    assert pixel_values.std() > 0.01, f"{mode} image lost its content"


def test_alpha_is_composited_on_white_and_grey_models_get_one_channel():
    transparent = PIL.Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    rgb = VitHfImageProcessor(size=16, crop_pct=1.0)(transparent).pixel_values
    torch.testing.assert_close(rgb, torch.ones_like(rgb))  # white, normalised with mean=std=0.5
    grey = VitHfImageProcessor.from_model_config(VitHfConfig.from_preset("test", num_channels=1), crop_pct=1.0)
    assert grey(photo(40, 30)).pixel_values.shape == (1, 1, 32, 32)


def test_numpy_torch_and_batches_match_pil():
    processor = VitHfImageProcessor(size=16, crop_pct=0.9)
    image = photo(30, 22)
    array = np.asarray(image)
    expected = processor(image).pixel_values
    for variant in (array, array.transpose(2, 0, 1), torch.from_numpy(array.copy()), array.astype(np.float32) / 255):
        torch.testing.assert_close(processor(variant).pixel_values, expected, rtol=0, atol=0)
    batch = processor([image, photo(18, 40, seed=1)]).pixel_values
    assert batch.shape == (2, 3, 16, 16)
    stacked = processor(np.stack([array, array])).pixel_values
    torch.testing.assert_close(stacked, torch.cat([expected, expected]))
    assert isinstance(processor(image, return_tensors="np").pixel_values, np.ndarray)


def test_bad_inputs_raise_clear_errors():
    processor = VitHfImageProcessor(size=16)
    with pytest.raises(ValueError, match="no images"):
        processor([])
    with pytest.raises(ValueError, match="cannot read an image"):
        processor(np.zeros((5, 6, 7, 8, 9)))
    with pytest.raises(TypeError, match="not a path"):
        processor("cat.png")
    with pytest.raises(ValueError, match="crop_pct"):
        VitHfImageProcessor(crop_pct=1.5)
    with pytest.raises(ValueError, match=r"float images must hold values in \[0, 1\]"):
        processor(np.full((8, 8, 3), 2.0, np.float32))  # e.g. already-normalised pixels sent through again
    with pytest.raises(TypeError, match="does not support \\['do_resize'\\]"):
        processor(photo(8, 8), do_resize=False)
    with pytest.raises(ValueError, match="empty image"):
        processor(PIL.Image.new("RGB", (0, 5)))
    with pytest.raises(ValueError, match="size must be"):
        VitHfImageProcessor(size={"h": 224})


def test_sixteen_bit_images_use_their_full_range_whatever_the_content():
    processor = VitHfImageProcessor(size=8, crop_pct=1.0)
    dark = np.full((8, 8), 100 * 257, np.uint16)
    bright_corner = dark.copy()
    bright_corner[0, 0] = 65535
    a, b = processor(dark).pixel_values, processor(bright_corner).pixel_values
    torch.testing.assert_close(a[..., 1:, 1:], b[..., 1:, 1:])  # the same pixel means the same thing in both
    torch.testing.assert_close(a, processor(np.full((8, 8), 100, np.uint8)).pixel_values)


def test_train_transform_is_seeded_by_torch_and_shaped_like_eval():
    processor = VitHfImageProcessor(size=24, train_crop_scale=(0.3, 1.0))
    train = processor.train_transforms()
    image = photo(50, 40)
    torch.manual_seed(3)
    a = [train(image) for _ in range(4)]
    torch.manual_seed(3)
    b = [train(image) for _ in range(4)]
    for x, y in zip(a, b):
        assert torch.equal(x, y)
        assert x.shape == (3, 24, 24)
    assert not torch.equal(a[0], a[1])  # really random between draws
    eval_tf = processor.eval_transforms()
    assert torch.equal(eval_tf(image), processor(image).pixel_values[0])  # the pipeline path is the eval transform


def test_save_load_round_trip(tmp_path):
    processor = VitHfImageProcessor(size=(24, 40), crop_pct=0.95, resample="bilinear", train_hflip=0.0)
    processor.save_pretrained(tmp_path)
    loaded = VitHfImageProcessor.from_pretrained(tmp_path)
    image = photo(60, 30)
    assert loaded.to_dict() == processor.to_dict()
    assert torch.equal(loaded(image).pixel_values, processor(image).pixel_values)


@pytest.mark.slow
def test_works_without_torchvision(tmp_path):
    code = """
import sys
from pathlib import Path
sys.modules["torchvision"] = None  # any import of torchvision now fails
import numpy as np, PIL.Image
from vit_hf import VitHfImageProcessor
p = VitHfImageProcessor(size=16)
print(tuple(p(PIL.Image.fromarray(np.zeros((20, 20, 3), np.uint8))).pixel_values.shape))
"""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))  # this checkout's vit_hf
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                         env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("(1, 3, 16, 16)")


# ------------------------------------------------------------------------------------------ batches and backends
MIXED_SIZES = [(64, 48), (48, 64), (64, 48), (37, 91), (20, 12), (32, 32), (91, 37), (64, 48)]


@pytest.mark.parametrize("threads", [1, 2])
def test_pil_batches_equal_single_images_bit_for_bit(threads):
    """A batch is spread over torch.get_num_threads() threads; order and pixels are those of one-by-one calls."""
    processor = VitHfImageProcessor(size=24, crop_pct=0.875)
    images = [photo(w, h, seed=i) for i, (w, h) in enumerate(MIXED_SIZES)]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        batch = processor(images).pixel_values
    finally:
        torch.set_num_threads(before)
    singles = torch.cat([processor(image).pixel_values for image in images])
    assert torch.equal(batch, singles)


def _uint8(processor, images) -> torch.Tensor:
    """pixel_values back to the uint8 values they were normalised from (exact: (x / 255 - m) / s inverts to x)."""
    x = processor(images).pixel_values.double()
    mean = torch.tensor(processor.image_mean, dtype=torch.float64).view(-1, 1, 1)
    std = torch.tensor(processor.image_std, dtype=torch.float64).view(-1, 1, 1)
    return ((x * std + mean) * 255).round().to(torch.int16)


@pytest.mark.parametrize(
    "size,crop_pct,resample,crop_mode,channels",
    [
        (24, 0.875, "bicubic", "center", 3),
        (32, 1.0, "bilinear", "center", 3),
        ((24, 40), 0.9, "bicubic", "center", 3),
        ((40, 24), 0.95, "bilinear", "squash", 3),
        (24, 0.9, "bicubic", "center", 1),
        (96, 1.0, "bicubic", "center", 3),  # upsampling every image
    ],
)
def test_torch_backend_has_pil_geometry(size, crop_pct, resample, crop_mode, channels):
    """resize_backend="torch": the same shape and crop position as PIL and a rounding-level difference in pixels.

    On these noisy test images a crop or resize off by one pixel moves the mean error to tens of levels; torch's
    fixed-point precision (and Pillow 13's choice of pass order for strongly anisotropic resizes) give well under
    one. The per-pixel bound for the usual photo -> model-size case is the next test."""
    kwargs = dict(size=size, crop_pct=crop_pct, resample=resample, crop_mode=crop_mode, num_channels=channels)
    if channels == 1:
        kwargs.update(image_mean=[0.5], image_std=[0.5])
    pil, fast = VitHfImageProcessor(**kwargs), VitHfImageProcessor(**kwargs, resize_backend="torch")
    images = [photo(w, h, seed=i) for i, (w, h) in enumerate(MIXED_SIZES)]
    a, b = _uint8(pil, images), _uint8(fast, images)
    assert a.shape == b.shape == (len(images), channels, *((size, size) if isinstance(size, int) else size))
    mean_error = (a - b).abs().float().mean(dim=(1, 2, 3))
    assert mean_error.max() < 1.0, mean_error
    singles = torch.cat([fast(image).pixel_values for image in images])
    assert torch.equal(fast(images).pixel_values, singles)  # grouped by size = one by one


@pytest.mark.parametrize("resample", ["bicubic", "bilinear"])
def test_torch_backend_is_within_two_levels_of_pil_on_photo_sizes(resample):
    """Camera-sized images to 224 (crop_pct 0.9): every pixel within 2/255 of PIL's, 99 % identical."""
    kwargs = dict(size=224, crop_pct=0.9, resample=resample)
    pil, fast = VitHfImageProcessor(**kwargs), VitHfImageProcessor(**kwargs, resize_backend="torch")
    images = [photo(w, h, seed=i) for i, (w, h) in enumerate([(640, 480), (480, 640), (500, 375), (1024, 768)])]
    diff = (_uint8(pil, images) - _uint8(fast, images)).abs()
    assert diff.max() <= 2, diff.max()
    assert (diff == 0).float().mean() > 0.99


def test_torch_backend_on_an_extreme_aspect_ratio_and_other_filters_on_pil():
    # (3, 200) -> shorter side 24, longer 1600 (an 8x upsampling one way), centre crop 24x24
    pil = VitHfImageProcessor(size=24, crop_pct=1.0)
    fast = VitHfImageProcessor(size=24, crop_pct=1.0, resize_backend="torch")
    thin = photo(3, 200)
    assert (_uint8(pil, thin) - _uint8(fast, thin)).abs().max() <= 2
    lanczos = dict(size=24, crop_pct=0.9, resample="lanczos")
    images = [photo(w, h, seed=i) for i, (w, h) in enumerate(MIXED_SIZES)]
    assert torch.equal(
        VitHfImageProcessor(**lanczos, resize_backend="torch")(images).pixel_values,
        VitHfImageProcessor(**lanczos)(images).pixel_values,
    )


def test_backend_is_saved_overridable_per_call_and_checked(tmp_path):
    processor = VitHfImageProcessor(size=16, resize_backend="torch")
    processor.save_pretrained(tmp_path)
    assert VitHfImageProcessor.from_pretrained(tmp_path).resize_backend == "torch"
    image = photo(40, 30)
    exact = VitHfImageProcessor(size=16)(image).pixel_values
    assert torch.equal(processor(image, resize_backend="pil").pixel_values, exact)
    with pytest.raises(ValueError, match="resize_backend must be one of"):
        VitHfImageProcessor(resize_backend="torchvision")


# ------------------------------------------------------------------------------- transformers-style settings
def test_folders_saved_before_the_transformers_settings_load_with_todays_pixels(tmp_path):
    """A preprocessor_config.json without resize_size / crop_offset / rescale_factor (written before they existed)
    gives bit for bit what a default processor gives; crop_pct=None survives a save as 1.0."""
    processor = VitHfImageProcessor(size=24, crop_pct=0.875)
    processor.save_pretrained(tmp_path)
    path = tmp_path / "preprocessor_config.json"
    config = json.loads(path.read_text())
    for key in ("resize_size", "crop_offset", "rescale_factor"):
        config.pop(key, None)
    path.write_text(json.dumps(config))
    images = [photo(w, h, seed=i) for i, (w, h) in enumerate(MIXED_SIZES)]
    old = VitHfImageProcessor.from_pretrained(tmp_path)
    assert torch.equal(old(images).pixel_values, processor(images).pixel_values)
    VitHfImageProcessor(size=24, crop_pct=None).save_pretrained(tmp_path)
    reloaded = VitHfImageProcessor.from_pretrained(tmp_path)
    assert reloaded.crop_pct == 1.0
    assert torch.equal(reloaded(images).pixel_values, VitHfImageProcessor(size=24, crop_pct=1.0)(images).pixel_values)


@pytest.mark.parametrize(
    "length,crop,round_start,floor_start,round_pad,floor_pad",
    [(31, 24, 4, 3, 0, 0), (29, 24, 2, 2, 0, 0), (24, 24, 0, 0, 0, 0), (21, 24, 0, 0, 1, 2), (22, 24, 0, 0, 1, 1)],
)
def test_crop_offsets_round_half_to_even_or_floor(length, crop, round_start, floor_start, round_pad, floor_pad):
    """torchvision: start round((L - C) / 2) (7 / 2 -> 4, 5 / 2 -> 2), pad (C - L) // 2 before; transformers: start
    (L - C) // 2, pad ceil((C - L) / 2) before. The photo's pixels say where the crop really began."""
    image = photo(length, 8)
    for offset, start, pad in (("round", round_start, round_pad), ("floor", floor_start, floor_pad)):
        processor = VitHfImageProcessor(size={"height": 8, "width": crop}, resize_size={"height": 8, "width": length},
                                        crop_offset=offset)
        got = _uint8(processor, image)[0]
        expected = torch.zeros((3, 8, crop), dtype=torch.int16)
        source = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).to(torch.int16)
        if length >= crop:
            expected = source[:, :, start : start + crop]
        else:
            expected[:, :, pad : pad + length] = source
        assert torch.equal(got, expected), offset


def test_torch_backend_follows_the_transformers_geometry():
    """resize_size + crop_offset="floor" (+ padding when the crop is larger) on the torch backend: PIL's geometry."""
    kwargs = dict(size={"height": 30, "width": 27}, resize_size={"shortest_edge": 26}, crop_offset="floor")
    pil, fast = VitHfImageProcessor(**kwargs), VitHfImageProcessor(**kwargs, resize_backend="torch")
    images = [photo(w, h, seed=i) for i, (w, h) in enumerate(MIXED_SIZES)]
    mean_error = (_uint8(pil, images) - _uint8(fast, images)).abs().float().mean(dim=(1, 2, 3))
    assert mean_error.max() < 1.0, mean_error


def test_rescale_factor_other_than_255_is_applied_in_float64():
    processor = VitHfImageProcessor(size=8, crop_pct=1.0, rescale_factor=1 / 127.5, image_mean=[1.0] * 3,
                                    image_std=[1.0] * 3)
    image = photo(8, 8)
    expected = (torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).double() / 127.5).float() - 1.0
    assert torch.equal(processor(image).pixel_values[0], expected)


def test_bad_transformers_settings_raise_clear_errors():
    with pytest.raises(ValueError, match="resize_size must be None"):
        VitHfImageProcessor(resize_size={"longest_edge": 300})
    with pytest.raises(ValueError, match="crop_offset must be one of"):
        VitHfImageProcessor(crop_offset="ceil")


def test_describe_eval_states_the_steps_that_run():
    assert VitHfImageProcessor(size=224, crop_pct=0.9).describe_eval() == (
        "Convert to 3 channel(s) (alpha composited onto white), resize the shorter side to 248 (bicubic; size / "
        "crop_pct 0.9), centre-crop to 224x224, scale to [0, 1], normalise with mean=(0.5, 0.5, 0.5), "
        "std=(0.5, 0.5, 0.5)."
    )
    clip = VitHfImageProcessor(size=224, resize_size={"shortest_edge": 224}, crop_offset="floor", num_channels=1,
                               image_mean=[0.5], image_std=[0.5], resample="bilinear")
    assert clip.describe_eval(channels=False) == (
        "Resize the shorter side to 224 keeping the aspect ratio (bilinear), centre-crop to 224x224 (starting at "
        "(L - C) // 2, as transformers does), scale to [0, 1], normalise with mean=(0.5), std=(0.5)."
    )
    squash = VitHfImageProcessor(size=64, resize_size={"height": 64, "width": 64}, rescale_factor=1.0)
    assert "resize to 64x64 ignoring the aspect ratio (bicubic), multiply by 1, normalise" in squash.describe_eval()


def test_a_per_call_crop_pct_replaces_a_stated_resize():
    """On a processor converted from transformers (resize_size set), crop_pct=... per call is not silently ignored."""
    converted = VitHfImageProcessor(size=24, resize_size={"height": 24, "width": 24}, crop_offset="floor")
    image = photo(50, 40)
    timm_style = VitHfImageProcessor(size=24, crop_pct=0.875, crop_offset="floor")(image).pixel_values
    assert torch.equal(converted(image, crop_pct=0.875).pixel_values, timm_style)
    assert not torch.equal(converted(image).pixel_values, timm_style)
    assert torch.equal(converted(image, resize_size={"shortest_edge": 24}).pixel_values,
                       VitHfImageProcessor(size=24, crop_pct=1.0, crop_offset="floor")(image).pixel_values)
