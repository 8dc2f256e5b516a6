"""convert.preprocessing: the converted processor gives the source processor's pixel values (transformers' PIL
processors built from their own classes with the configs the Hub repos hold; timm's eval transform), and says where
its settings came from."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from images import max_pixel_difference, photos

from convert.common import ConversionError
from convert.preprocessing import processor_from_flags, processor_from_timm, processor_from_transformers
from vit_hf import VitHfConfig, VitHfImageProcessor

IMAGENET = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
OPENAI = {"image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711]}
HALF = {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}
ON = {"do_normalize": True, "do_resize": True}

# preprocessor_config.json as the Hub repos hold them (legacy spellings kept: hub-checkpoint-formats.md §2.10), then
# the options they do not use but a fine-tuned descendant may: a crop after a squash resize with an odd margin,
# non-square sizes, padding (crop larger than the resize), rescale / normalise switched off, every PIL filter id.
TRANSFORMERS_CONFIGS = {
    "google/vit": {"feature_extractor_type": "ViTFeatureExtractor", "resample": 2, "size": 224, **HALF, **ON},
    "facebook/dino-vit": {
        "feature_extractor_type": "ViTFeatureExtractor", "resample": 2, "size": 224, **IMAGENET, **ON,
    },
    "facebook/deit-distilled": {
        "feature_extractor_type": "DeiTFeatureExtractor", "size": 256, "crop_size": 224, "do_center_crop": True,
        "resample": 3, **IMAGENET, **ON,
    },
    "facebook/dinov2": {
        "image_processor_type": "BitImageProcessor", "size": {"shortest_edge": 256}, "do_center_crop": True,
        "crop_size": {"height": 224, "width": 224}, "do_convert_rgb": True, "do_rescale": True,
        "rescale_factor": 0.00392156862745098, "resample": 3, **IMAGENET, **ON,
    },
    "openai/clip": {
        "feature_extractor_type": "CLIPFeatureExtractor", "size": 224, "crop_size": 224, "do_center_crop": True,
        "resample": 3, **OPENAI, **ON,
    },
    "google/siglip": {
        "image_processor_type": "SiglipImageProcessor", "processor_class": "SiglipProcessor", "do_rescale": True,
        "rescale_factor": 0.00392156862745098, "resample": 3, "size": {"height": 224, "width": 224}, **HALF, **ON,
    },
    "facebook/vit-mae": {"image_processor_type": "ViTImageProcessor", "size": {"height": 224, "width": 224},
                         "resample": 3, **IMAGENET, **ON},
    "vit-squash-crop-odd": {"image_processor_type": "ViTImageProcessor", "size": 255, "do_center_crop": True,
                            "crop_size": 224, "resample": 3, **HALF},
    "vit-non-square": {"image_processor_type": "ViTImageProcessor", "size": {"height": 240, "width": 320},
                       "do_center_crop": True, "crop_size": {"height": 224, "width": 287}, "resample": 0},
    "clip-pads": {"image_processor_type": "CLIPImageProcessor", "size": {"shortest_edge": 200},
                  "crop_size": {"height": 225, "width": 231}, "resample": 1},
    "vit-no-rescale": {"image_processor_type": "ViTImageProcessor", "size": 64, "do_rescale": False,
                       "image_mean": [127.5, 127.5, 127.5], "image_std": [60.0, 60.0, 60.0], "resample": 4},
    "vit-own-factor": {"image_processor_type": "ViTImageProcessor", "size": 64, "rescale_factor": 1 / 127.5,
                       "image_mean": [1.0, 1.0, 1.0], "image_std": [1.0, 1.0, 1.0], "resample": 5},
    "bit-no-normalize": {"image_processor_type": "BitImageProcessorFast", "size": {"shortest_edge": 72},
                         "crop_size": 64, "do_normalize": False},
}
MODEL = VitHfConfig.from_preset("test")  # 32x32: every source size above differs, as DINOv2's 518 vs 224 does


def _reference(config: dict, folder):
    """What transformers builds for a repo holding this preprocessor_config.json, with its PIL backend."""
    from transformers import AutoImageProcessor

    (folder / "preprocessor_config.json").write_text(json.dumps(config))
    source = AutoImageProcessor.from_pretrained(folder, backend="pil")
    assert source.backend == "pil"
    return lambda image: source(image, return_tensors="np").pixel_values[0]


@pytest.mark.parametrize("repo", list(TRANSFORMERS_CONFIGS))
def test_transformers_processors_give_the_same_pixels(repo, tmp_path):
    config = TRANSFORMERS_CONFIGS[repo]
    processor, note = processor_from_transformers(config, MODEL)
    assert max_pixel_difference(processor, _reference(config, tmp_path), photos()) <= 1e-5
    assert note.startswith("preprocessing from preprocessor_config.json") and "\n" not in note


# each family's processor built from its own class as the conversion scripts build it, written by save_pretrained
# (transformers 5 spelling: size dicts, image_processor_type without the backend suffix)
SAVED_BY_CLASS = {
    "ViTImageProcessorPil": {},
    "DeiTImageProcessorPil": {"size": 256, "crop_size": 224, **IMAGENET},
    "BitImageProcessorPil": {"size": {"shortest_edge": 256}, "crop_size": {"height": 224, "width": 224}, **IMAGENET},
    "CLIPImageProcessorPil": {},
    "SiglipImageProcessorPil": {"size": {"height": 384, "width": 384}},
}


@pytest.mark.parametrize("name", list(SAVED_BY_CLASS))
def test_processors_written_by_save_pretrained_give_the_same_pixels(name, tmp_path):
    import transformers

    source = getattr(transformers, name)(**SAVED_BY_CLASS[name])
    source.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "preprocessor_config.json").read_text())
    processor, _ = processor_from_transformers(config, MODEL)
    reference = lambda image: source(image, return_tensors="np").pixel_values[0]  # noqa: E731
    assert max_pixel_difference(processor, reference, photos()) <= 1e-5


@pytest.mark.parametrize("repo", ["facebook/dinov2", "openai/clip"])
def test_the_crop_offset_is_transformers_floor_not_timm_round(repo, tmp_path):
    """On the odd margins of the test photos timm's rounding starts the crop one pixel off: the switch matters."""
    config = TRANSFORMERS_CONFIGS[repo]
    processor, _ = processor_from_transformers(config, MODEL)
    rounding = VitHfImageProcessor(**{**processor.to_dict(), "crop_offset": "round"})
    assert max_pixel_difference(rounding, _reference(config, tmp_path), photos()) > 0.1


def test_notes_say_what_came_from_the_class_defaults():
    _, note = processor_from_transformers({"image_processor_type": "SiglipImageProcessor"}, MODEL)
    assert "SiglipImageProcessor's defaults for size, resample, image_mean, image_std" in note
    assert "resize to 224x224 ignoring the aspect ratio (bicubic), scale to [0, 1]" in note
    assert note.endswith("(the model's image size is 32x32)")


@pytest.mark.parametrize(
    "config,message",
    [
        ({"image_processor_type": "ViTImageProcessor", "do_resize": False}, "do_resize=false"),
        ({"image_processor_type": "ViTImageProcessor", "resample": 7}, "unknown resample 7"),
        ({"image_processor_type": "ConvNextImageProcessor"}, "ConvNextImageProcessor has its own `resize` step"),
        ({"image_processor_type": "NoSuchImageProcessor"}, "NoSuchImageProcessor is not one transformers"),
        ({"size": 224}, "names no image_processor_type"),
        ({"image_processor_type": "CLIPImageProcessor", "do_center_crop": False}, "without a centre crop"),
        ({"image_processor_type": "ViTImageProcessor", "size": {"longest_edge": 300}}, "supported: shortest_edge"),
        ({"image_processor_type": "ViTImageProcessor", "do_pad": True}, "do_pad=true"),
        ({"image_processor_type": "ViTImageProcessor", "image_mean": [0.5, 0.5]}, "2 image_mean values"),
        ({"image_processor_type": "ViTImageProcessor", "size": "big"}, "not a valid ViTImageProcessor config"),
    ],
)
def test_transformers_options_that_cannot_be_reproduced_are_refused(config, message):
    with pytest.raises(ConversionError, match=message) as error:
        processor_from_transformers(config, MODEL)
    assert "\n" not in str(error.value)


def test_round_trip_through_save_pretrained(tmp_path):
    from transformers import AutoImageProcessor

    processor, _ = processor_from_transformers(TRANSFORMERS_CONFIGS["facebook/dinov2"], MODEL)
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["resize_size"] == {"shortest_edge": 256} and saved["crop_offset"] == "floor"
    images = photos()[:4]
    for loaded in (
        VitHfImageProcessor.from_pretrained(tmp_path),
        AutoImageProcessor.from_pretrained(tmp_path, trust_remote_code=True),  # the remote code copied beside it
    ):
        assert loaded.to_dict() == processor.to_dict()
        assert torch.equal(loaded(images).pixel_values, processor(images).pixel_values)


def test_a_vit_hf_processor_config_is_taken_as_it_is(tmp_path):
    ours = VitHfImageProcessor(size=48, crop_pct=0.95, resample="bilinear", resize_backend="torch")
    ours.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "preprocessor_config.json").read_text())
    processor, note = processor_from_transformers(config, MODEL)
    assert processor.to_dict() == ours.to_dict() and "(VitHfImageProcessor)" in note


# ---------------------------------------------------------------------------------------------------------------- timm
TIMM_TAGS = [
    "vit_base_patch16_224.augreg2_in21k_ft_in1k",  # crop_pct 0.9, mean = std = 0.5
    "vit_base_patch16_clip_224.openai",  # OpenAI mean/std
    "vit_small_patch14_dinov2.lvd142m",  # 518, crop_pct 1.0
    "vit_medium_patch16_gap_384.sw_in12k_ft_in1k",  # crop_mode squash, crop_pct 0.95
    "deit_base_distilled_patch16_224.fb_in1k",
]


def _timm_transform(pretrained_cfg: dict):
    from timm.data import create_transform, resolve_data_config

    return create_transform(**resolve_data_config(pretrained_cfg=pretrained_cfg))


@pytest.mark.parametrize("name", TIMM_TAGS)
def test_timm_pretrained_cfgs_give_timms_pixels(name):
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name).to_dict()
    processor, note = processor_from_timm(cfg, MODEL)
    images = photos([(640, 480), (257, 999), (97, 61), (300, 300)])
    assert max_pixel_difference(processor, _timm_transform(cfg), images) <= 1e-5
    assert note.startswith("preprocessing from timm's pretrained_cfg") and "defaults" not in note


def test_timm_hub_config_json_and_missing_keys(tmp_path):
    """A real `save_for_hf` config.json (the nested pretrained_cfg is read), and timm's own defaults for keys an old
    pretrained_cfg lacks (crop_pct 0.875, bicubic, ImageNet mean/std)."""
    import timm
    from timm.models import save_for_hf

    model = timm.create_model("vit_tiny_patch16_224.augreg_in21k_ft_in1k", pretrained=False, depth=1, img_size=48)
    save_for_hf(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    processor, note = processor_from_timm(config, MODEL)
    assert "vit_tiny_patch16_224.augreg_in21k_ft_in1k" in note
    assert max_pixel_difference(processor, _timm_transform(config["pretrained_cfg"]), photos()[:5]) <= 1e-5
    sparse = {"input_size": [3, 40, 56]}
    processor, note = processor_from_timm(sparse, MODEL)
    assert "timm's defaults for interpolation, mean, std, crop_pct, crop_mode" in note
    assert max_pixel_difference(processor, _timm_transform(sparse), photos()[:5]) <= 1e-5


def test_timm_options_that_cannot_be_reproduced_are_refused():
    with pytest.raises(ConversionError, match="crop_mode='border'"):
        processor_from_timm({"crop_mode": "border"}, MODEL)
    with pytest.raises(ConversionError, match="unknown resample 'random'"):
        processor_from_timm({"interpolation": "random"}, MODEL)
    with pytest.raises(ConversionError, match="crop_pct=1.2"):
        processor_from_timm({"crop_pct": 1.2}, MODEL)


# --------------------------------------------------------------------------------------------------------------- flags
def test_flags_without_a_source_say_which_defaults_were_assumed():
    from timm.data import create_transform

    processor, note = processor_from_flags(MODEL)
    assert "nothing states how the images were preprocessed" in note
    assert "assumed timm's ViT defaults for --crop-pct, --interpolation, --mean, --std" in note
    reference = create_transform(input_size=(3, 32, 32), crop_pct=0.9, interpolation="bicubic", mean=(0.5,) * 3,
                                 std=(0.5,) * 3)
    assert max_pixel_difference(processor, reference, photos()[:5]) <= 1e-5

    processor, note = processor_from_flags(MODEL, crop_pct=1.0, mean=[0.2], std=[0.3, 0.3, 0.3])
    assert "--crop-pct 1.0, --mean 0.2, --std 0.3 0.3 0.3 from the command line" in note
    assert "assumed timm's ViT defaults for --interpolation" in note
    reference = create_transform(input_size=(3, 32, 32), crop_pct=1.0, interpolation="bicubic", mean=(0.2,) * 3,
                                 std=(0.3,) * 3)
    assert max_pixel_difference(processor, reference, photos()[:5]) <= 1e-5


def test_flags_override_the_sources_processor():
    from timm.data import create_transform

    base, _ = processor_from_transformers(TRANSFORMERS_CONFIGS["openai/clip"], MODEL)
    processor, note = processor_from_flags(MODEL, crop_pct=0.875, interpolation="bilinear", base=base)
    assert note.endswith("; --crop-pct 0.875, --interpolation bilinear from the command line, the rest from the source")
    assert processor.resize_size is None and processor.image_mean == base.image_mean
    reference = create_transform(input_size=(3, 224, 224), crop_pct=0.875, interpolation="bilinear",
                                 mean=tuple(OPENAI["image_mean"]), std=tuple(OPENAI["image_std"]))
    # the crop offset stays the source's ((L - C) // 2): compare on photos whose margins round the same both ways
    assert max_pixel_difference(processor, reference, photos([(640, 480), (300, 300), (480, 640)])) <= 1e-5
    same, note = processor_from_flags(MODEL, base=base)
    assert same.to_dict() == base.to_dict() and note.endswith("; the source's")


@pytest.mark.parametrize(
    "flags,message",
    [
        ({"crop_pct": 1.5}, "--crop-pct 1.5: must be in"),
        ({"interpolation": "cubic"}, "--interpolation: unknown resample 'cubic'"),
        ({"mean": [0.5, 0.5]}, r"--mean gives 2 mean values for a model with 3 input channel\(s\) \(give 1 or 3\)"),
        ({"std": [0.0]}, "every value must be positive"),
    ],
)
def test_bad_flags_are_refused(flags, message):
    with pytest.raises(ConversionError, match=message):
        processor_from_flags(MODEL, **flags)


def test_grey_models_take_the_channel_average_of_an_rgb_timm_cfg():
    grey = VitHfConfig.from_preset("test", num_channels=1)
    processor, note = processor_from_timm({"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}, grey)
    np.testing.assert_allclose(processor.image_mean, [np.mean([0.485, 0.456, 0.406])])
    assert "averaged over RGB" in note and processor(photos()[0]).pixel_values.shape == (1, 1, 32, 32)
