"""The converted model's image processor, taken from where the weights came from.

Three sources, each returning `(VitHfImageProcessor, note)`, the note being one line that says what was taken from
where and which defaults were assumed:

- `processor_from_transformers(preprocessor_config, model_config)`: a transformers `preprocessor_config.json`. The
  dict is read by transformers' own PIL processor class (`ViTImageProcessorPil`, `CLIPImageProcessorPil`, ...), so
  legacy spellings (`feature_extractor_type`, an int `size`) and missing keys mean what they mean to transformers;
  the resolved steps become `resize_size` / `crop_offset="floor"` / `rescale_factor` settings.
- `processor_from_timm(pretrained_cfg, model_config)`: timm's `pretrained_cfg` as `resolve_data_config` reads it
  (its defaults when a key is missing), i.e. `transforms_imagenet_eval`.
- `processor_from_flags(model_config, crop_pct=..., interpolation=..., mean=..., std=..., base=...)`: the converter's
  `--crop-pct/--interpolation/--mean/--std`, over `base` when given, else over timm's ViT defaults.

What cannot be reproduced exactly is a `ConversionError` naming the option.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from convert.common import ConversionError
from vit_hf import VitHfConfig, VitHfImageProcessor
from vit_hf.image_processing_vit_hf import RESAMPLE

RESAMPLE_NAME = {int(v): k for k, v in RESAMPLE.items()}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# timm's `resolve_data_config` when pretrained_cfg lacks a key (timm/data/config.py, DEFAULT_CROP_PCT / _MODE)
TIMM_DATA_DEFAULTS = {"interpolation": "bicubic", "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "crop_pct": 0.875,
                      "crop_mode": "center"}
# timm's `_cfg` for ViTs (vision_transformer.py): what a file that says nothing was most likely trained with
VIT_DEFAULTS = {"crop_pct": 0.9, "interpolation": "bicubic", "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
# transformers' PilBackend steps; a processor class overriding any of them does something else (e.g. ConvNeXt's
# crop_pct resize, BEiT's label reduction) and is refused rather than approximated
PIL_STEPS = ("process_image", "resize", "center_crop", "rescale", "normalize", "_preprocess",
             "_preprocess_image_like_inputs", "preprocess")
# transformers processors that exist only on the torchvision backend and whose own `_preprocess` rescales to float32
# before resizing (antialiased), then crops and normalises: `resize_backend="torch_float"` gives their pixels
TORCH_FLOAT_CLASSES = ("DINOv3ViTImageProcessor",)
TORCH_FLOAT_STEPS = tuple(step for step in PIL_STEPS if step != "_preprocess")
# transformers processors that exist only on the torchvision backend and keep all its steps (resize the uint8 image,
# antialiased, crop, then rescale and normalise): `resize_backend="torch"` makes the same uint8 interpolation call
TORCH_UINT8_CLASSES = ("Tipsv2ImageProcessor",)


# ----------------------------------------------------------------------------------------------------------------------
# transformers
# ----------------------------------------------------------------------------------------------------------------------


def _transformers_class(config: Mapping) -> tuple[str, type, str]:
    """The class transformers would build for this preprocessor_config.json (its PIL backend, or the torchvision
    class of a `TORCH_FLOAT_CLASSES` processor), its base name, and the resize backend that reproduces it."""
    from transformers.image_processing_backends import PilBackend, TorchvisionBackend
    from transformers.models.auto.image_processing_auto import get_image_processor_class_from_name

    name = config.get("image_processor_type")
    if name is None and config.get("feature_extractor_type"):
        name = config["feature_extractor_type"].replace("FeatureExtractor", "ImageProcessor")
    if not name:
        raise ConversionError("preprocessor_config.json names no image_processor_type (nor feature_extractor_type)")
    for suffix in ("Fast", "Pil"):
        name = name.removesuffix(suffix)
    if name in TORCH_FLOAT_CLASSES + TORCH_UINT8_CLASSES:
        cls = get_image_processor_class_from_name(name)
        if cls is None or not issubclass(cls, TorchvisionBackend):
            raise ConversionError(f"image processor {name} needs torchvision to be read: pip install torchvision")
        for step in TORCH_FLOAT_STEPS if name in TORCH_FLOAT_CLASSES else PIL_STEPS:
            if getattr(cls, step) is not getattr(TorchvisionBackend, step):
                raise ConversionError(f"{name} has its own `{step}` step, which the converted processor cannot "
                                      f"reproduce")
        return name, cls, "torch_float" if name in TORCH_FLOAT_CLASSES else "torch"
    cls = get_image_processor_class_from_name(name + "Pil")
    if cls is None or not issubclass(cls, PilBackend):
        raise ConversionError(f"image processor {name} is not one transformers {_version()} has a PIL backend for")
    for step in PIL_STEPS:
        if getattr(cls, step) is not getattr(PilBackend, step):
            raise ConversionError(f"{name} has its own `{step}` step, which the converted processor cannot reproduce")
    return name, cls, "pil"


def _version() -> str:
    import transformers

    return transformers.__version__


def _resize_size(name: str, src) -> dict[str, int]:
    if not src.do_resize:
        raise ConversionError(
            f"{name} has do_resize=false: it passes images through at their own size, which a fixed-size processor "
            f"cannot reproduce (convert with --crop-pct/--interpolation to state a resize)"
        )
    size = {k: v for k, v in dict(src.size).items() if v is not None}
    if set(size) in ({"shortest_edge"}, {"height", "width"}):
        return size
    raise ConversionError(f"{name} resizes with size={size}; supported: shortest_edge alone, or height and width")


def _output_size(name: str, src, resize: dict[str, int]) -> dict[str, int]:
    if src.do_center_crop:
        crop = {k: v for k, v in dict(src.crop_size or {}).items() if v is not None}
        if set(crop) != {"height", "width"}:
            raise ConversionError(f"{name} centre-crops with crop_size={crop}; it needs a height and a width")
        return crop
    if "height" in resize:
        return dict(resize)
    raise ConversionError(
        f"{name} resizes the shortest edge to {resize['shortest_edge']} without a centre crop: images of other "
        f"aspect ratios come out in other sizes, which a fixed-size processor cannot reproduce"
    )


def _per_channel(values, num_channels: int, what: str, origin: str) -> list[float]:
    values = [float(values)] * num_channels if isinstance(values, (int, float)) else [float(v) for v in values]
    if len(values) == 1:
        values = values * num_channels
    if len(values) != num_channels:
        raise ConversionError(
            f"{origin} gives {len(values)} {what} values for a model with {num_channels} input channel(s) "
            f"(give 1 or {num_channels})"
        )
    return values


def _resample_id(value, origin: str) -> int:
    if isinstance(value, str) and value in RESAMPLE:
        return int(RESAMPLE[value])
    try:
        resample = int(value)
    except (TypeError, ValueError):
        resample = -1
    if resample not in RESAMPLE_NAME:
        raise ConversionError(f"{origin}: unknown resample {value!r} (PIL filters: {sorted(RESAMPLE)})")
    return resample


def processor_from_transformers(
    preprocessor_config: Mapping, model_config: VitHfConfig
) -> tuple[VitHfImageProcessor, str]:
    """The converted processor giving the same pixel values as transformers' PIL processor for this config (a
    `VitHfImageProcessor` config, from a folder this package wrote, is taken as it is)."""
    if preprocessor_config.get("image_processor_type") == VitHfImageProcessor.__name__:
        try:
            processor = VitHfImageProcessor.from_dict(dict(preprocessor_config))
        except (TypeError, ValueError) as e:
            raise ConversionError(f"preprocessor_config.json is not a valid VitHfImageProcessor config: {e}") from None
        return processor, f"preprocessing from preprocessor_config.json (VitHfImageProcessor): {describe(processor)}"
    name, cls, backend = _transformers_class(preprocessor_config)
    try:
        src = cls.from_dict(dict(preprocessor_config))
    except (TypeError, ValueError) as e:
        raise ConversionError(f"preprocessor_config.json is not a valid {name} config: {e}") from None
    if src.do_pad:
        raise ConversionError(f"{name} has do_pad=true, which the converted processor cannot reproduce")
    resize = _resize_size(name, src)
    size = _output_size(name, src, resize)
    channels = model_config.num_channels
    normalize = bool(src.do_normalize)
    mean = _per_channel(src.image_mean if normalize else 0.0, channels, "image_mean", name)
    std = _per_channel(src.image_std if normalize else 1.0, channels, "image_std", name)
    rescale = float(src.rescale_factor) if src.do_rescale else 1.0
    resample = _resample_id(src.resample, name)
    if backend != "pil" and resample not in (RESAMPLE["bilinear"], RESAMPLE["bicubic"]):
        what = "the rescaled floats" if backend == "torch_float" else "torchvision's uint8 images"
        raise ConversionError(f"{name} resamples with {RESAMPLE_NAME[resample]}: only bilinear and bicubic resizes "
                              f"of {what} can be reproduced")
    if backend != "pil":
        _check_torchvision_crop(name, resize, size)
    processor = VitHfImageProcessor(
        size=size, crop_pct=1.0, resize_size=resize, crop_offset="floor", resample=resample, image_mean=mean,
        image_std=std, num_channels=channels, rescale_factor=rescale, resize_backend=backend,
    )
    defaults = [k for k in ("size", "resample", "image_mean", "image_std") if k not in preprocessor_config]
    how = {"pil": "PIL backend", "torch_float": "torchvision: rescaled, then resized as floats",
           "torch": "torchvision: uint8 resized antialiased, then rescaled"}[backend]
    note = (
        f"preprocessing from preprocessor_config.json ({name}, {how}): {describe(processor)}"
        + (f"; {name}'s defaults for {', '.join(defaults)}" if defaults else "")
        + _size_remark(size, model_config)
    )
    return processor, note


def _check_torchvision_crop(name: str, resize: Mapping[str, int], crop: Mapping[str, int]) -> None:
    """transformers' torchvision centre crop pads a resized image smaller than the crop with (C - L) // 2 zeros
    before it, its PIL one (and `crop_offset="floor"`) with the rounded-up half: a crop that pads is refused."""
    smallest = (resize["height"], resize["width"]) if "height" in resize else (resize["shortest_edge"],) * 2
    if crop["height"] > smallest[0] or crop["width"] > smallest[1]:
        raise ConversionError(
            f"{name} centre-crops {crop['height']}x{crop['width']} out of images resized to {dict(resize)}: it pads "
            f"them as torchvision does, which the converted processor cannot reproduce"
        )


# ----------------------------------------------------------------------------------------------------------------------
# timm
# ----------------------------------------------------------------------------------------------------------------------


def processor_from_timm(pretrained_cfg: Mapping, model_config: VitHfConfig) -> tuple[VitHfImageProcessor, str]:
    """timm's eval transform for this pretrained_cfg (a timm Hub config.json is accepted too)."""
    architecture = pretrained_cfg.get("architecture")
    if isinstance(pretrained_cfg.get("pretrained_cfg"), Mapping):
        pretrained_cfg = pretrained_cfg["pretrained_cfg"]
    cfg = {k: pretrained_cfg.get(k) or v for k, v in TIMM_DATA_DEFAULTS.items()}
    defaults = [k for k in TIMM_DATA_DEFAULTS if not pretrained_cfg.get(k)]
    if cfg["crop_mode"] not in ("center", "squash"):
        raise ConversionError(f"timm crop_mode={cfg['crop_mode']!r} is not supported (center and squash are)")
    if not 0 < float(cfg["crop_pct"]) <= 1:
        raise ConversionError(f"timm crop_pct={cfg['crop_pct']} is not supported (0 < crop_pct <= 1 is)")
    channels = model_config.num_channels
    input_size = pretrained_cfg.get("input_size")
    if input_size is None:
        size, defaults = list(model_config.image_hw), [*defaults, "input_size (the model's image size)"]
    else:
        size = [int(v) for v in input_size[-2:]]
    mean, std, averaged = cfg["mean"], cfg["std"], ""
    if channels == 1 and len(mean) == 3:  # an RGB cfg for a grey model (in_chans=1): timm averages the weights
        mean, std, averaged = [sum(mean) / 3], [sum(std) / 3], ", averaged over RGB for the 1-channel model"
    origin = "timm pretrained_cfg"
    processor = VitHfImageProcessor(
        size={"height": size[0], "width": size[1]}, crop_pct=float(cfg["crop_pct"]), crop_mode=cfg["crop_mode"],
        resample=_resample_id(cfg["interpolation"], origin), num_channels=channels,
        image_mean=_per_channel(mean, channels, "mean", origin), image_std=_per_channel(std, channels, "std", origin),
    )
    tag = ".".join(str(v) for v in (architecture or pretrained_cfg.get("architecture"), pretrained_cfg.get("tag")) if v)
    note = (
        f"preprocessing from timm's pretrained_cfg{f' of {tag}' if tag else ''} (transforms_imagenet_eval): "
        f"{describe(processor)}{averaged}"
        + (f"; timm's defaults for {', '.join(defaults)}" if defaults else "")
        + _size_remark(processor.size, model_config)
    )
    return processor, note


# ----------------------------------------------------------------------------------------------------------------------
# command-line flags
# ----------------------------------------------------------------------------------------------------------------------


def processor_from_flags(
    model_config: VitHfConfig,
    crop_pct: float | None = None,
    interpolation: str | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    base: VitHfImageProcessor | None = None,
) -> tuple[VitHfImageProcessor, str]:
    """`--crop-pct/--interpolation/--mean/--std` over `base` (the source's processor) or, without one, over timm's
    ViT defaults (crop_pct 0.9, bicubic, mean = std = 0.5), which the note then says were assumed."""
    flags = {"crop-pct": crop_pct, "interpolation": interpolation, "mean": mean, "std": std}
    given = {k: v for k, v in flags.items() if v is not None}
    channels = model_config.num_channels
    if base is not None:
        fields = {k: getattr(base, k) for k in ("size", "crop_pct", "crop_mode", "resample", "image_mean",
                                                 "image_std", "num_channels", "resize_size", "crop_offset",
                                                 "rescale_factor", "resize_backend")}
    else:
        h, w = model_config.image_hw
        fields = {"size": {"height": h, "width": w}, "crop_pct": VIT_DEFAULTS["crop_pct"], "num_channels": channels,
                  "resample": VIT_DEFAULTS["interpolation"], "image_mean": VIT_DEFAULTS["mean"][:1] * channels,
                  "image_std": VIT_DEFAULTS["std"][:1] * channels}
    if crop_pct is not None:
        if not 0 < crop_pct <= 1:
            raise ConversionError(f"--crop-pct {crop_pct}: must be in (0, 1] (1.0 resizes without cropping)")
        fields.update(crop_pct=float(crop_pct), resize_size=None)  # the crop_pct rule replaces a stated resize
    if interpolation is not None:
        fields["resample"] = _resample_id(interpolation, "--interpolation")
    if mean is not None:
        fields["image_mean"] = _per_channel(mean, fields["num_channels"], "mean", "--mean")
    if std is not None:
        fields["image_std"] = _per_channel(std, fields["num_channels"], "std", "--std")
        if min(fields["image_std"]) <= 0:
            raise ConversionError(f"--std {list(std)}: every value must be positive")
    try:
        processor = VitHfImageProcessor(**fields)
    except ValueError as e:  # e.g. --interpolation lanczos over a processor that resizes floats (DINOv3)
        raise ConversionError(f"{', '.join(f'--{k}' for k in given)} over the source's preprocessing: {e}") from None
    stated = ", ".join(f"--{k} {_flag_text(v)}" for k, v in given.items())
    if base is not None:
        origin = f"{stated} from the command line, the rest from the source" if given else "the source's"
        note = f"preprocessing: {describe(processor)}; {origin}"
    else:
        rest = [k for k in flags if k not in given]
        note = (
            f"preprocessing: {describe(processor)}; "
            + (f"{stated} from the command line, " if given else "nothing states how the images were preprocessed: ")
            + (f"assumed timm's ViT defaults for {', '.join('--' + k for k in rest)}" if rest else "")
            + (" (pass them if the weights were trained otherwise)" if rest else "")
        ).rstrip(", ")
    return processor, note


def _flag_text(value) -> str:
    return " ".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)


# ----------------------------------------------------------------------------------------------------------------------
# Description
# ----------------------------------------------------------------------------------------------------------------------


def describe(processor: VitHfImageProcessor) -> str:
    """The eval transform in words, without the sentence's capital and full stop (it goes inside a note)."""
    text = processor.describe_eval(channels=False).rstrip(".")
    return text[0].lower() + text[1:]


def _size_remark(size: Mapping[str, int], model_config: VitHfConfig) -> str:
    hw = (size["height"], size["width"])
    if hw == tuple(model_config.image_hw):
        return ""
    return f" (the model's image size is {model_config.image_hw[0]}x{model_config.image_hw[1]})"
