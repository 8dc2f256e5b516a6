"""transformers-format folders -> vit_hf: every family written by the real `save_pretrained`, converted, and compared
with the source class's own forward in float64 (1e-9), plus the written folder and every refusal."""

from __future__ import annotations

import fnmatch
import json
from types import SimpleNamespace

import pytest
import torch

transformers = pytest.importorskip("transformers")

from helpers import TRANSFORMERS_LABELS as LABELS  # noqa: E402
from helpers import TRANSFORMERS_SMALL as SMALL  # noqa: E402
from helpers import TRANSFORMERS_TEXT as TEXT  # noqa: E402
from helpers import TRANSFORMERS_VIT as VIT  # noqa: E402
from helpers import save_random_family  # noqa: E402

from convert.common import ConversionError  # noqa: E402
from convert.transformers import (  # noqa: E402
    TRANSFORMERS_ALLOW_PATTERNS,
    build_converted,
    convert_state,
    convert_transformers_folder,
    files_to_download,
)
from convert.transformers_verify import load_source, verify  # noqa: E402

DINO = dict(SMALL, mlp_ratio=4, image_size=56)  # a 7x7 stored grid, run at a 4x4 crop as the repos are
# DINOv2 repos' processor: shortest edge 256, crop 224 of a 518-px model; here 36 / 32 of a 56-px one
DINO_PROCESSOR = (transformers.BitImageProcessor, dict(size={"shortest_edge": 36}, crop_size=dict(height=32, width=32)))
# the crop size verify() also compares DINOv2 at (what the source's processor gives; 32 for every fixture)
CROP = SimpleNamespace(size={"height": 32, "width": 32})


def _vit_in21k():
    return transformers.ViTModel(transformers.ViTConfig(**VIT), add_pooling_layer=True)


def _vit_dino():
    return transformers.ViTModel(transformers.ViTConfig(**VIT), add_pooling_layer=False)


def _dual(config_cls, model_cls, **vision):
    return model_cls(config_cls(vision_config=dict(SMALL, intermediate_size=37, **vision), text_config=TEXT))


# name -> (builder, preprocessor (class, kwargs) or None)
FAMILIES = {
    "vit": (lambda: transformers.ViTForImageClassification(transformers.ViTConfig(**VIT, id2label=LABELS)),
            (transformers.ViTImageProcessor, dict(size={"height": 32, "width": 32}))),
    "vit_in21k_pooler": (_vit_in21k, None),
    "vit_dino_no_pooler": (_vit_dino, None),
    "deit_distilled": (lambda: transformers.DeiTForImageClassificationWithTeacher(
        transformers.DeiTConfig(**VIT, id2label=LABELS)), None),
    "deit": (lambda: transformers.DeiTForImageClassification(transformers.DeiTConfig(**VIT, id2label=LABELS)), None),
    "deit_model_pooler": (lambda: transformers.DeiTModel(transformers.DeiTConfig(**VIT)), None),
    "clip_vision": (lambda: transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**SMALL, intermediate_size=37)),
                    (transformers.CLIPImageProcessor, dict(size={"shortest_edge": 32},
                                                           crop_size={"height": 32, "width": 32}))),
    "clip_full": (lambda: _dual(transformers.CLIPConfig, transformers.CLIPModel), None),
    "clip_with_projection": (lambda: transformers.CLIPVisionModelWithProjection(
        transformers.CLIPVisionConfig(**SMALL, intermediate_size=37, projection_dim=8)), None),
    "siglip_vision": (lambda: transformers.SiglipVisionModel(
        transformers.SiglipVisionConfig(**SMALL, intermediate_size=37)), None),
    "siglip_full": (lambda: _dual(transformers.SiglipConfig, transformers.SiglipModel), None),
    # so400m/14 at 384 px in small: 36 px, patch 8, a 4x4 grid; the patch convolution ignores the last 4 pixels
    "siglip_remainder": (lambda: transformers.SiglipVisionModel(
        transformers.SiglipVisionConfig(**{**SMALL, "image_size": 36}, intermediate_size=37)), None),
    "dinov2": (lambda: transformers.Dinov2Model(transformers.Dinov2Config(**DINO)), DINO_PROCESSOR),
    "dinov2_classifier": (lambda: transformers.Dinov2ForImageClassification(
        transformers.Dinov2Config(**DINO, id2label=LABELS)), None),
    "dinov2_swiglu": (lambda: transformers.Dinov2Model(transformers.Dinov2Config(**DINO, use_swiglu_ffn=True)), None),
    "dinov2_registers": (lambda: transformers.Dinov2WithRegistersModel(
        transformers.Dinov2WithRegistersConfig(**DINO, num_register_tokens=2)),
        DINO_PROCESSOR),
    "dinov2_registers_classifier": (lambda: transformers.Dinov2WithRegistersForImageClassification(
        transformers.Dinov2WithRegistersConfig(**DINO, num_register_tokens=2, id2label=LABELS)), None),
    "vit_mae": (lambda: transformers.ViTMAEForPreTraining(transformers.ViTMAEConfig(
        **VIT, decoder_hidden_size=16, decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
        decoder_intermediate_size=20)), None),
    "vit_mae_model": (lambda: transformers.ViTMAEModel(transformers.ViTMAEConfig(**VIT)), None),
}


def save_family(name: str, folder, safe_serialization: bool = True):
    return save_random_family(FAMILIES, name, folder, safe_serialization)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_reproduces_the_source_in_float64(tmp_path, name):
    folder = save_family(name, tmp_path / "src")
    info = convert_state(folder)
    rows = verify(folder, info, processor=CROP)
    assert {r["dtype"] for r in rows} == {"float64", "float32"}
    for row in rows:
        if row["dtype"] == "float64":
            assert row["max_abs_diff"] < 1e-9, row
    if info["config"].dynamic_img_size:  # DINOv2: the stored 7x7 grid, the processor's 4x4 crop, a non-square 8x9
        assert {r["outputs"].split(" at ")[1] for r in rows} == {"56x56", "32x32", "64x72"}
    if info["kind"] != "none":
        assert info["config"].id2label == LABELS


def test_family_switches_come_from_the_source(tmp_path):
    expected = {
        "vit": dict(layer_norm_eps=1e-12, hidden_act="gelu", pooling="token"),
        "vit_in21k_pooler": dict(representation_size=32, num_labels=0),
        "deit_distilled": dict(distilled=True, num_register_tokens=0),
        "deit": dict(distilled=False, num_register_tokens=1),
        "clip_full": dict(pre_norm=True, patch_bias=False, hidden_act="quick_gelu", layer_norm_eps=1e-5),
        "siglip_full": dict(class_token=False, pooling="map", hidden_act="gelu_pytorch_tanh"),
        "siglip_remainder": dict(crop_remainder=True, image_size=36),
        "siglip_vision": dict(crop_remainder=False),
        "dinov2_classifier": dict(pooling="token_mean", dynamic_img_size=True, pos_embed_interpolation="hf_dinov2"),
        "dinov2_swiglu": dict(mlp_layer="glu", hidden_act="silu", intermediate_size=88),
        "dinov2_registers": dict(
            num_register_tokens=2, no_embed_registers=True, pos_embed_interpolation="hf_dinov2_reg"
        ),
    }
    for name, fields in expected.items():
        config = convert_state(save_family(name, tmp_path / name))["config"]
        assert {k: getattr(config, k) for k in fields} == fields, name


def test_bin_and_sharded_checkpoints_read_like_safetensors(tmp_path):
    save_family("vit", tmp_path / "safe")
    save_family("vit", tmp_path / "bin", safe_serialization=False)
    model = transformers.ViTForImageClassification.from_pretrained(tmp_path / "safe")
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    reference = convert_state(tmp_path / "safe")["state"]
    for other in ("bin", "sharded"):
        state = convert_state(tmp_path / other)["state"]
        assert state.keys() == reference.keys()
        assert all(torch.equal(state[k], reference[k]) for k in state), other


def test_converted_folder_loads_as_remote_code_and_equals_the_source(tmp_path):
    folder = save_family("dinov2", tmp_path / "src")
    out = tmp_path / "out"
    convert_transformers_folder(folder, out, verify=True, source_repo="facebook/dinov2-tiny", source_commit="0" * 40)
    card = (out / "README.md").read_text()
    assert "base_model: facebook/dinov2-tiny" in card and "0" * 40 in card and "float64" in card
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(out, trust_remote_code=True, dtype=torch.float64).eval()
    processor = AutoImageProcessor.from_pretrained(out, trust_remote_code=True)
    source = transformers.Dinov2Model.from_pretrained(folder, dtype=torch.float64, attn_implementation="sdpa").eval()
    from PIL import Image

    image = Image.fromarray((torch.rand(45, 60, 3, generator=torch.Generator().manual_seed(3)) * 255).byte().numpy())
    pixels = processor(image, return_tensors="pt")["pixel_values"].double()
    assert pixels.shape[-2:] == (32, 32)  # the processor crops; the 56-px table is resampled at run time
    with torch.no_grad():
        torch.testing.assert_close(model(pixels).logits, source(pixels).pooler_output, rtol=0, atol=1e-9)


def test_pipeline_on_a_converted_dinov2_classifier_equals_the_source(tmp_path):
    """The repos' processor crops below the stored grid: the pipeline runs (positions resampled at every call, as
    transformers does) and its scores are the source model's on the same pixels."""
    from PIL import Image
    from transformers import pipeline

    folder = save_family("dinov2_registers_classifier", tmp_path / "src")
    DINO_PROCESSOR[0](**DINO_PROCESSOR[1]).save_pretrained(folder)
    out = tmp_path / "out"
    convert_transformers_folder(folder, out, verify=True)
    classify = pipeline("image-classification", model=str(out), trust_remote_code=True)
    image = Image.fromarray((torch.rand(50, 41, 3, generator=torch.Generator().manual_seed(5)) * 255).byte().numpy())
    results = classify(image, top_k=3)
    pixels = classify.image_processor(image, return_tensors="pt")["pixel_values"]
    source = transformers.Dinov2WithRegistersForImageClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        expected = source(pixels).logits.softmax(-1)[0]
    assert pixels.shape[-2:] == (32, 32)
    assert {r["label"] for r in results} == set(LABELS.values())
    for r in results:
        index = {v: k for k, v in LABELS.items()}[r["label"]]
        assert abs(r["score"] - expected[index].item()) < 1e-5, r


def test_preprocessing_is_the_sources_and_flags_override_it(tmp_path, capsys):
    from vit_hf import VitHfImageProcessor

    folder = save_family("vit", tmp_path / "src")  # ViTImageProcessor: 32x32 squash, bilinear, mean = std = 0.5
    convert_transformers_folder(folder, tmp_path / "a")
    saved = VitHfImageProcessor.from_pretrained(tmp_path / "a").to_dict()  # the file holds non-defaults only
    assert "ViTImageProcessor" in capsys.readouterr().out
    assert saved["image_mean"] == [0.5] * 3 and saved["size"] == {"height": 32, "width": 32}
    convert_transformers_folder(folder, tmp_path / "b", crop_pct=0.5, interpolation="bicubic", mean=[0.1, 0.2, 0.3])
    saved = VitHfImageProcessor.from_pretrained(tmp_path / "b").to_dict()
    assert "--crop-pct 0.5" in capsys.readouterr().out
    assert saved["crop_pct"] == 0.5 and saved["image_mean"] == [0.1, 0.2, 0.3] and saved["image_std"] == [0.5] * 3


@pytest.mark.parametrize("name", ["vit", "clip_vision", "deit_distilled", "siglip_vision", "vit_mae"])
def test_image_size_resamples_as_transformers_does(tmp_path, name):
    """--image-size: positions resampled as transformers' interpolate_pos_encoding=True does (--verify runs the source
    that way at the new size), and the source's processor scaled to the new size."""
    folder = save_family(name, tmp_path / "src")
    convert_transformers_folder(folder, tmp_path / "out", verify=True, image_size=(48, 40))
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["image_size"] == [48, 40] and config["pos_embed_interpolation"] == "hf"
    assert "as transformers does at run time" in (tmp_path / "out" / "README.md").read_text()
    from vit_hf import VitHfImageProcessor

    processor = VitHfImageProcessor.from_pretrained(tmp_path / "out")
    image = (torch.rand(70, 50, 3, generator=torch.Generator().manual_seed(0)) * 255).byte().numpy()
    assert processor(image, return_tensors="pt")["pixel_values"].shape[-2:] == (48, 40)


def test_image_size_is_refused_where_positions_follow_the_input(tmp_path):
    folder = save_family("dinov2", tmp_path / "src")
    with pytest.raises(ConversionError, match="resamples its positions at every call"):
        convert_transformers_folder(folder, tmp_path / "out", image_size=(48, 48))
    with pytest.raises(ConversionError, match="not divisible by the patch size"):
        convert_transformers_folder(save_family("vit", tmp_path / "v"), tmp_path / "out", image_size=(50, 48))
    assert not (tmp_path / "out").exists()


def test_card_license_is_the_sources(tmp_path):
    folder = save_family("vit_mae", tmp_path / "src")
    (folder / "README.md").write_text("---\nlicense: cc-by-nc-4.0\ntags: [vision]\n---\n# MAE\n")
    convert_transformers_folder(folder, tmp_path / "out")
    assert "license: cc-by-nc-4.0" in (tmp_path / "out" / "README.md").read_text()
    (folder / "README.md").unlink()
    convert_transformers_folder(folder, tmp_path / "out2")
    assert "license: other" in (tmp_path / "out2" / "README.md").read_text()


def test_files_to_download_prefers_safetensors():
    listing = ["config.json", "README.md", "pytorch_model.bin", "model.safetensors", "tf_model.h5", ".gitattributes"]
    assert files_to_download(listing) == ["config.json", "README.md", "model.safetensors"]
    sharded = ["config.json", "preprocessor_config.json", "pytorch_model.bin.index.json",
               "pytorch_model-00002-of-00002.bin", "pytorch_model-00001-of-00002.bin"]
    assert files_to_download(sharded) == ["config.json", "preprocessor_config.json", "pytorch_model.bin.index.json",
                                          "pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"]


def test_allow_patterns_cover_what_is_read():
    for name in ("config.json", "preprocessor_config.json", "model.safetensors", "pytorch_model.bin",
                 "model.safetensors.index.json", "model-00001-of-00002.safetensors"):
        assert any(fnmatch.fnmatch(name, p) for p in TRANSFORMERS_ALLOW_PATTERNS), name


# ----------------------------------------------------------------------------------------------- refusals
def _refused(folder, out, match):
    with pytest.raises(ConversionError, match=match):
        convert_transformers_folder(folder, out, verify=False)
    assert not out.exists()


def test_not_a_plain_vit_is_refused_by_name(tmp_path):
    swin = transformers.SwinModel(transformers.SwinConfig(embed_dim=16, depths=[1], num_heads=[2], image_size=32))
    swin.save_pretrained(tmp_path / "swin")
    _refused(tmp_path / "swin", tmp_path / "out", "swin is not a plain ViT")
    convert_transformers_folder(save_family("vit", tmp_path / "src"), tmp_path / "done")
    _refused(tmp_path / "done", tmp_path / "out", "already a vit_hf model")


def test_broken_folders_are_refused(tmp_path):
    folder = save_family("vit", tmp_path / "src")
    _refused(tmp_path / "missing", tmp_path / "out", "not a folder")
    _refused(folder / "model.safetensors", tmp_path / "out", "not a folder")
    (folder / "model.safetensors").write_bytes(b"\0" * 64)
    _refused(folder, tmp_path / "out", "not a readable .safetensors")
    (folder / "model.safetensors").unlink()
    _refused(folder, tmp_path / "out", "holds no weights")
    (folder / "config.json").write_text("{")
    _refused(folder, tmp_path / "out", "not a readable JSON")


def test_extra_or_missing_tensors_are_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = save_family("vit", tmp_path / "src")
    state = load_file(folder / "model.safetensors")
    save_file({**state, "vit.encoder.layer.0.attention.attention.rotary.weight": torch.zeros(2)},
              folder / "model.safetensors", metadata={"format": "pt"})
    _refused(folder, tmp_path / "out", "cannot be represented.*rotary")
    del state["vit.encoder.layer.1.attention.attention.value.weight"]
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    _refused(folder, tmp_path / "out", "missing key.*vit.encoder.layer.1.attention.attention")


def test_old_clip_position_ids_buffer_is_dropped(tmp_path):
    """transformers <= 4.30 saved CLIP's int64 position_ids buffer: not a weight, dropped (and said so)."""
    from safetensors.torch import load_file, save_file

    folder = save_family("clip_full", tmp_path / "src")
    state = load_file(folder / "model.safetensors")
    state["vision_model.embeddings.position_ids"] = torch.arange(17)[None]
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    info = convert_state(folder)
    assert "position ids buffer (transformers <= 4.30)" in info["dropped"]
    assert verify(folder, info, processor=None)[0]["max_abs_diff"] < 1e-9


def test_unrepresentable_features_are_refused(tmp_path):
    folder = save_family("vit_in21k_pooler", tmp_path / "src")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "pooler_act": "relu"}))
    _refused(folder, tmp_path / "out", "pooler_act='relu'")
    folder = save_family("siglip_vision", tmp_path / "siglip")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "vision_use_head": False}))
    _refused(folder, tmp_path / "out", "vision_use_head=false")


def test_tower_classifiers_are_refused(tmp_path):
    clip = transformers.CLIPForImageClassification(
        transformers.CLIPConfig(vision_config=dict(SMALL, intermediate_size=37), text_config=TEXT, num_labels=3)
    )
    clip.save_pretrained(tmp_path / "clip")
    _refused(tmp_path / "clip", tmp_path / "out", "CLIPForImageClassification: .* not supported")


def test_verify_refuses_a_model_that_differs(tmp_path):
    folder = save_family("vit", tmp_path / "src")
    info = convert_state(folder)
    info["state"]["vit.norm.bias"] = info["state"]["vit.norm.bias"] + 1e-6
    with pytest.raises(ConversionError, match="differs from transformers"):
        verify(folder, info, processor=None)
    assert build_converted(info) is not None and load_source(folder, info) is not None
