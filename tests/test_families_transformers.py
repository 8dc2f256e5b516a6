"""The 2024-2026 transformers families: I-JEPA, ViT-MSN, MetaCLIP 2, DINOv3, Sapiens2, AIMv2, written by the
real `save_pretrained` as tiny random models, converted, and compared with the source class's own forward in float64
(1e-9); their processors give transformers' pixels; what cannot be represented is refused by name, nothing written."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from helpers import TRANSFORMERS_LABELS as LABELS  # noqa: E402
from helpers import TRANSFORMERS_SMALL as SMALL  # noqa: E402
from helpers import TRANSFORMERS_TEXT as TEXT  # noqa: E402
from helpers import TRANSFORMERS_VIT as VIT  # noqa: E402
from helpers import save_random_family  # noqa: E402
from images import max_pixel_difference, photos  # noqa: E402

from convert.common import ConversionError  # noqa: E402
from convert.transformers import convert_state, convert_transformers_folder  # noqa: E402
from convert.transformers_verify import verify  # noqa: E402

IMAGENET = dict(image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
# the repos' processors, at the tiny models' 32 px
VIT_PROCESSOR = (transformers.ViTImageProcessor, dict(size={"height": 32, "width": 32}, resample=3, **IMAGENET))
CLIP_PROCESSOR = (transformers.CLIPImageProcessor, dict(size={"shortest_edge": 32},
                                                        crop_size={"height": 32, "width": 32}))


DINOV3_PROCESSOR = (transformers.DINOv3ViTImageProcessor, dict(size={"height": 32, "width": 32}))
AIMV2 = dict(SMALL, intermediate_size=37)


def _dinov3(**kwargs):
    return transformers.DINOv3ViTModel(transformers.DINOv3ViTConfig(**{**SMALL, "intermediate_size": 37, **kwargs}))


def _sapiens2(**kwargs):
    config = transformers.Sapiens2Config(**{**SMALL, "num_hidden_layers": 3, "intermediate_size": 37, **kwargs})
    return transformers.Sapiens2Model(config)


def _aimv2_full(**vision):
    text = dict(TEXT, eos_token_id=1)
    return transformers.Aimv2Model(transformers.Aimv2Config(vision_config={**AIMV2, **vision}, text_config=text))


def _metaclip_full():
    config = transformers.MetaClip2Config(vision_config=dict(SMALL, intermediate_size=37), text_config=TEXT)
    return transformers.MetaClip2Model(config)


# name -> (builder, processor (class, kwargs) or None)
FAMILIES = {
    "ijepa": (lambda: transformers.IJepaModel(transformers.IJepaConfig(**VIT)), VIT_PROCESSOR),
    "ijepa_pooler": (lambda: transformers.IJepaModel(transformers.IJepaConfig(**VIT), add_pooling_layer=True), None),
    "ijepa_classifier": (lambda: transformers.IJepaForImageClassification(
        transformers.IJepaConfig(**VIT, id2label=LABELS)), None),
    "vit_msn": (lambda: transformers.ViTMSNModel(transformers.ViTMSNConfig(**SMALL, intermediate_size=37)),
                VIT_PROCESSOR),
    "vit_msn_classifier": (lambda: transformers.ViTMSNForImageClassification(
        transformers.ViTMSNConfig(**SMALL, intermediate_size=37, id2label=LABELS)), None),
    "metaclip_2_vision": (lambda: transformers.MetaClip2VisionModel(
        transformers.MetaClip2VisionConfig(**SMALL, intermediate_size=37)), CLIP_PROCESSOR),
    "metaclip_2_with_projection": (lambda: transformers.MetaClip2VisionModelWithProjection(
        transformers.MetaClip2VisionConfig(**SMALL, intermediate_size=37, projection_dim=8)), None),
    "metaclip_2_full": (_metaclip_full, CLIP_PROCESSOR),
    "dinov3": (lambda: _dinov3(num_register_tokens=2), DINOV3_PROCESSOR),
    "dinov3_no_registers": (lambda: _dinov3(), None),
    "dinov3_gated": (lambda: _dinov3(use_gated_mlp=True, hidden_act="silu", num_register_tokens=1), None),
    "dinov3_key_bias": (lambda: _dinov3(key_bias=True), None),
    "dinov3_no_qkv_bias": (lambda: _dinov3(query_bias=False, value_bias=False), None),
    # a 7x7 stored grid: patch centres that float32 does not hold exactly, 4 registers
    "dinov3_7x7": (lambda: _dinov3(image_size=56, num_register_tokens=4), None),
    # Sapiens2: full attention in the first and last blocks, 2 key/value heads in the middle one
    "sapiens2": (lambda: _sapiens2(num_register_tokens=2, num_key_value_attention_heads=2,
                                   num_first_full_attention_layers=1, num_last_full_attention_layers=1), None),
    "sapiens2_mha_no_qk_norm": (lambda: _sapiens2(num_register_tokens=1, use_qk_norm=False,
                                                  num_first_full_attention_layers=3,
                                                  num_last_full_attention_layers=0), None),
    "aimv2_vision": (lambda: transformers.Aimv2VisionModel(transformers.Aimv2VisionConfig(**AIMV2)), CLIP_PROCESSOR),
    "aimv2_biases": (lambda: transformers.Aimv2VisionModel(
        transformers.Aimv2VisionConfig(**AIMV2, qkv_bias=True, mlp_bias=True)), None),
    "aimv2_no_head": (lambda: transformers.Aimv2VisionModel(
        transformers.Aimv2VisionConfig(**AIMV2, use_head=False)), None),
    "aimv2_full": (_aimv2_full, None),
    # native: no stored positions, MAE's sin-cos table built for every input grid (any size, non-square included)
    "aimv2_native": (lambda: transformers.Aimv2VisionModel(transformers.Aimv2VisionConfig(**AIMV2, is_native=True)),
                     None),
    "aimv2_native_full": (lambda: _aimv2_full(is_native=True, qkv_bias=True, mlp_bias=True), CLIP_PROCESSOR),
}

def save_family(name: str, folder, safe_serialization: bool = True):
    return save_random_family(FAMILIES, name, folder, safe_serialization)


def _float64_rows(name, tmp_path):
    folder = save_family(name, tmp_path / "src")
    info = convert_state(folder)
    rows = verify(folder, info, processor=None)
    assert {r["dtype"] for r in rows} == {"float64", "float32"}
    if info["kind"] != "none":
        assert info["config"].id2label == LABELS
    return info, [row for row in rows if row["dtype"] == "float64"]


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_reproduces_the_source_in_float64(tmp_path, name):
    info, rows = _float64_rows(name, tmp_path)
    for row in rows:
        assert row["max_abs_diff"] < 1e-9, row
    if info["config"].pos_embed_type != "learned":  # RoPE, sin-cos: the stored grid and a larger non-square one
        assert {r["outputs"] for r in rows} >= {"pooler_output at 32x32", "last_hidden_state at 40x48"} or \
            {r["outputs"] for r in rows} >= {"pooler_output at 56x56", "last_hidden_state at 64x72"}


def test_aimv2_float32_norms_round_as_the_sources(tmp_path):
    """transformers' Aimv2RMSNorm normalises in float32 inside the float64 forward, and a float32 sum of squares
    depends on the memory it runs over. vit_hf's patch embedding hands its norm the convolution's (b, d, gh, gw)
    output viewed as (b, n, d), as transformers does, so even those float32 roundings agree. (Fed a contiguous copy,
    the norm sums in another order and the float64 outputs differ by float32 ulps carried through the blocks: 6e-6.)
    Measured: equal (0.0); held to float64 rounding, far below the float32 ulps a layout mismatch leaves."""
    _, rows = _float64_rows("aimv2_vision", tmp_path)
    assert rows and all(row["max_abs_diff"] < 1e-12 for row in rows), rows


def test_family_switches_come_from_the_source(tmp_path):
    expected = {
        "ijepa": dict(class_token=False, pooling="mean", fc_norm=False, layer_norm_eps=1e-12),
        "ijepa_pooler": dict(class_token=False, pooling="token", representation_size=32),
        "ijepa_classifier": dict(class_token=False, pooling="mean", fc_norm=False, num_labels=3),
        "vit_msn": dict(class_token=True, pooling="token", layer_norm_eps=1e-6, hidden_act="gelu"),
        "metaclip_2_full": dict(pre_norm=True, patch_bias=False, hidden_act="quick_gelu", layer_norm_eps=1e-5),
        "dinov3": dict(rope_type="dinov3", rope_theta=100.0, rope_rotate_half=True, rope_numerics="transformers",
                       pos_embed_type="none", num_register_tokens=2, qkv_bias=True, key_bias=False,
                       layer_scale_init_value=1.0, mlp_layer="mlp", layer_norm_eps=1e-5, rope_rescale_coords=2.0),
        "dinov3_gated": dict(mlp_layer="glu", hidden_act="silu", intermediate_size=37, num_register_tokens=1),
        "dinov3_key_bias": dict(qkv_bias=True, key_bias=True),
        "dinov3_no_qkv_bias": dict(qkv_bias=False),
        "aimv2_vision": dict(norm_type="rmsnorm_fp32", embed_norm=True, class_token=False, pooling="map_kv",
                             qkv_bias=False, proj_bias=False, mlp_layer="glu", hidden_act="silu", layer_norm_eps=1e-5),
        "aimv2_biases": dict(qkv_bias=True, proj_bias=True),
        "sapiens2": dict(rope_type="dinov3", norm_type="rmsnorm_fp32", qk_norm=True, layer_scale_attn_only=True,
                         num_key_value_heads=[4, 2, 4], mlp_layer="glu", hidden_act="silu", layer_norm_eps=1e-6,
                         num_register_tokens=2, key_bias=True),
        "sapiens2_mha_no_qk_norm": dict(qk_norm=False, num_key_value_heads=None),
        "aimv2_no_head": dict(pooling="mean", fc_norm=False),
        "aimv2_native": dict(pos_embed_type="sincos2d_mae", embed_norm=True, pooling="map_kv", image_size=32),
        "aimv2_native_full": dict(pos_embed_type="sincos2d_mae", qkv_bias=True, proj_bias=True),
    }
    for name, fields in expected.items():
        config = convert_state(save_family(name, tmp_path / name))["config"]
        assert {k: getattr(config, k) for k in fields} == fields, name


def test_what_is_compared_is_what_the_source_outputs(tmp_path):
    compared = {
        "ijepa": ("IJepaModel", "last_hidden_state"),
        "ijepa_pooler": ("IJepaModel", "pooler_output", "last_hidden_state"),
        "ijepa_classifier": ("IJepaForImageClassification", "logits"),
        "vit_msn": ("ViTMSNModel", "last_hidden_state"),
        "vit_msn_classifier": ("ViTMSNForImageClassification", "logits"),
        "metaclip_2_full": ("MetaClip2VisionModel", "pooler_output"),
        "dinov3": ("DINOv3ViTModel", "pooler_output", "last_hidden_state"),
        "aimv2_vision": ("Aimv2VisionModel", "pooler_output", "last_hidden_state"),
        "aimv2_full": ("Aimv2VisionModel", "pooler_output", "last_hidden_state"),
        "aimv2_no_head": ("Aimv2VisionModel", "last_hidden_state"),
        "aimv2_native_full": ("Aimv2VisionModel", "pooler_output", "last_hidden_state"),
    }
    for name, expected in compared.items():
        info = convert_state(save_family(name, tmp_path / name))
        assert (info["source_class"], info["compared"], *info["also"]) == expected, name


def test_vit_msn_classifier_blocks_saved_outside_the_backbone_prefix(tmp_path):
    """transformers 5 writes ViTMSNForImageClassification's blocks as `encoder.*` beside `vit.embeddings.*` (and
    reads them back by a rename): both layouts convert to the same tensors."""
    from safetensors.torch import load_file, save_file

    folder = save_family("vit_msn_classifier", tmp_path / "src")
    state = load_file(folder / "model.safetensors")
    assert any(k.startswith("encoder.layer.") for k in state)
    reference = convert_state(folder)["state"]
    save_file({("vit." + k if k.startswith("encoder.") else k): v for k, v in state.items()},
              folder / "model.safetensors", metadata={"format": "pt"})
    state = convert_state(folder)["state"]
    assert state.keys() == reference.keys() and all(torch.equal(state[k], reference[k]) for k in state)


@pytest.mark.parametrize("name", ["ijepa", "vit_msn_classifier", "metaclip_2_full", "dinov3", "aimv2_native_full"])
def test_image_size_resamples_as_transformers_does(tmp_path, name):
    """--image-size on a fixed position table: resampled as interpolate_pos_encoding=True does (I-JEPA without a class
    token), and --verify runs the source that way at the new, non-square size; DINOv3 and AIMv2 native have nothing
    to resample (RoPE; a sin-cos table built for every grid)."""
    folder = save_family(name, tmp_path / "src")
    convert_transformers_folder(folder, tmp_path / "out", verify=True, image_size=(48, 40))
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["image_size"] == [48, 40]
    assert "float64" in (tmp_path / "out" / "README.md").read_text()


@pytest.mark.parametrize("name", [n for n, (_, p) in FAMILIES.items() if p is not None])
def test_converted_processor_gives_the_sources_pixels(tmp_path, name):
    from transformers import AutoImageProcessor

    from vit_hf import VitHfImageProcessor

    folder = save_family(name, tmp_path / "src")
    convert_transformers_folder(folder, tmp_path / "out")
    processor = VitHfImageProcessor.from_pretrained(tmp_path / "out")
    # DINOv3's processor exists only on the torchvision backend; the others are compared with their PIL backend
    source = AutoImageProcessor.from_pretrained(folder, **({} if name.startswith("dinov3") else {"backend": "pil"}))
    reference = lambda image: source(image, return_tensors="np").pixel_values[0]  # noqa: E731
    assert max_pixel_difference(processor, reference, photos()) <= 1e-5


def test_converted_folder_loads_as_remote_code_and_equals_the_source(tmp_path):
    from transformers import AutoModelForImageClassification

    folder = save_family("ijepa_classifier", tmp_path / "src")
    out = tmp_path / "out"
    convert_transformers_folder(folder, out, verify=True)
    model = AutoModelForImageClassification.from_pretrained(out, trust_remote_code=True, dtype=torch.float64).eval()
    source = transformers.IJepaForImageClassification.from_pretrained(folder, dtype=torch.float64).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, source(x).logits, rtol=0, atol=1e-9)
    assert model.config.id2label == LABELS


def test_converted_aimv2_repo_loads_as_remote_code(tmp_path):
    """A full AIMv2 repo (image and text towers): the vision tower converts with --verify, and the folder's pooled
    output is the tower's (Aimv2Model's own vision_model) in float64."""
    from transformers import AutoModel

    folder = save_family("aimv2_full", tmp_path / "src")
    convert_transformers_folder(folder, tmp_path / "out", verify=True)
    assert "float32 rounding" not in (tmp_path / "out" / "README.md").read_text()
    model = AutoModel.from_pretrained(tmp_path / "out", trust_remote_code=True, dtype=torch.float64).eval()
    source = transformers.Aimv2Model.from_pretrained(folder, dtype=torch.float64).vision_model.eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(x).pooler_output, source(x).pooler_output, rtol=0, atol=1e-9)


def _refused(folder, out, match):
    with pytest.raises(ConversionError, match=match):
        convert_transformers_folder(folder, out, verify=False)
    assert not out.exists()


def test_unrepresentable_variants_are_refused(tmp_path):
    folder = save_family("ijepa_pooler", tmp_path / "src")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "pooler_act": "relu"}))
    _refused(folder, tmp_path / "out", "pooler_act='relu'")


def test_image_size_is_refused_where_the_source_has_one_size(tmp_path):
    folder = save_family("aimv2_vision", tmp_path / "src")
    with pytest.raises(ConversionError, match="Aimv2VisionModel runs only at its stored size 32x32"):
        convert_transformers_folder(folder, tmp_path / "out", verify=True, image_size=(48, 40))
    assert not (tmp_path / "out").exists()


# DINOv3's processor exists only on transformers' torchvision backend: rescaled to float32, then resized (antialiased)
DINOV3_PROCESSORS = {
    "repo default": {},  # 224x224 squash, bilinear, ImageNet mean / std
    "non-square": {"size": {"height": 48, "width": 64}},
    "shortest edge and crop, bicubic": {"size": {"shortest_edge": 40}, "do_center_crop": True,
                                        "crop_size": {"height": 32, "width": 32}, "resample": 3},
}


@pytest.mark.parametrize("case", list(DINOV3_PROCESSORS))
def test_dinov3_processor_gives_the_torchvision_pixels(tmp_path, case):
    from convert.preprocessing import processor_from_transformers
    from vit_hf import VitHfConfig

    source = transformers.DINOv3ViTImageProcessor(**DINOV3_PROCESSORS[case])
    source.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "preprocessor_config.json").read_text())
    processor, note = processor_from_transformers(config, VitHfConfig.from_preset("test"))
    # the released repos were written by transformers 4.56, whose only DINOv3 processor was the "Fast" one
    legacy, _ = processor_from_transformers({**config, "image_processor_type": "DINOv3ViTImageProcessorFast"},
                                            VitHfConfig.from_preset("test"))
    assert legacy.to_dict() == processor.to_dict()
    assert processor.resize_backend == "torch_float" and "torchvision" in note
    reference = lambda image: source(image, return_tensors="pt").pixel_values[0]  # noqa: E731
    assert max_pixel_difference(processor, reference, photos()) <= 1e-5
    from vit_hf import VitHfImageProcessor

    processor.save_pretrained(tmp_path / "saved")  # the setting survives the folder
    assert VitHfImageProcessor.from_pretrained(tmp_path / "saved").resize_backend == "torch_float"


def test_dinov3_processor_with_another_filter_is_refused():
    from convert.preprocessing import processor_from_flags, processor_from_transformers
    from vit_hf import VitHfConfig

    config = {"image_processor_type": "DINOv3ViTImageProcessor", "resample": 0}
    with pytest.raises(ConversionError, match="DINOv3ViTImageProcessor resamples with nearest"):
        processor_from_transformers(config, VitHfConfig.from_preset("test"))
    base, _ = processor_from_transformers({"image_processor_type": "DINOv3ViTImageProcessor"},
                                          VitHfConfig.from_preset("test"))
    with pytest.raises(ConversionError, match="--interpolation over the source's preprocessing"):
        processor_from_flags(VitHfConfig.from_preset("test"), interpolation="lanczos", base=base)


# ----------------------------------------------------------------------------------------------------------------------
# The front door: refusals (one line, exit 2, nothing written) and a Hub repo id
# ----------------------------------------------------------------------------------------------------------------------


def _cli(argv, capsys) -> tuple[int, str, str]:
    import convert.__main__ as front_door
    from convert.common import run_cli

    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        run_cli(front_door.main, [str(a) for a in argv])
    captured = capsys.readouterr()
    return exc.value.code, captured.out, captured.err


REFUSED = {
    "aimv2 qkv bias without mlp bias": (lambda: transformers.Aimv2VisionModel(
        transformers.Aimv2VisionConfig(**AIMV2, qkv_bias=True)), "AIMv2 with qkv_bias=True, mlp_bias=False"),
    "dinov3 query bias without value bias": (lambda: _dinov3(value_bias=False),
                                             "DINOv3 with query_bias=True, key_bias=False, value_bias=False"),
    "dinov3 projection bias without mlp bias": (lambda: _dinov3(mlp_bias=False),
                                                "DINOv3 with proj_bias=True, mlp_bias=False"),
    "sapiens2 without a gated MLP": (lambda: _sapiens2(use_gated_mlp=False, num_first_full_attention_layers=3,
                                                       num_last_full_attention_layers=0),
                                     "Sapiens2 with use_gated_mlp=false: transformers 5.25 cannot read"),
}


def test_other_vit_family_model_types_are_refused_with_the_missing_feature(tmp_path, capsys):
    # (SigLIP2 NaFlex, refused here before, converts: tests/test_naflex.py)
    beit = transformers.BeitModel(transformers.BeitConfig(**SMALL, intermediate_size=37))
    beit.save_pretrained(tmp_path / "beit")
    for name, expected in (("beit", "beit is not supported: relative position bias"),):
        code, _, err = _cli([tmp_path / name, tmp_path / "out"], capsys)
        assert code == 2 and err.count("\n") == 1 and expected in err, err
    assert not (tmp_path / "out").exists()


def test_a_processor_that_cannot_be_reproduced_needs_the_flags(tmp_path, capsys):
    """Sapiens2's processor crops people by box (torchvision only): refused with the way out; the flags then state the
    preprocessing and the card says the source's processor was not reproduced."""
    folder = save_family("sapiens2", tmp_path / "src")
    transformers.Sapiens2ImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    code, _, err = _cli([folder, tmp_path / "out"], capsys)
    assert code == 2 and err.count("\n") == 1 and "Sapiens2ImageProcessor" in err and "--crop-pct" in err, err
    assert not (tmp_path / "out").exists()
    code, stdout, err = _cli([folder, tmp_path / "out", "--crop-pct", "1.0", "--mean", "0.485", "0.456", "0.406",
                              "--std", "0.229", "0.224", "0.225", "--interpolation", "bilinear", "--verify"], capsys)
    assert code == 0, err
    assert "the source's processor is not reproduced" in (tmp_path / "out" / "README.md").read_text()


@pytest.mark.parametrize("case", list(REFUSED))
def test_variants_not_covered_are_refused_in_one_line(tmp_path, capsys, case):
    build, expected = REFUSED[case]
    build().save_pretrained(tmp_path / "src")
    code, _, err = _cli([tmp_path / "src", tmp_path / "out", "--verify"], capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and expected in err, err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


# repo name, fixture, the source as its users load it from the repo: models that run at any size (no stored table)
ANY_SIZE_REPOS = {
    "dinov3": ("tester/dinov3-vit-tiny", lambda repo: transformers.DINOv3ViTModel.from_pretrained(
        repo, dtype=torch.float64)),
    "aimv2_native_full": ("tester/aimv2-native-tiny", lambda repo: transformers.Aimv2Model.from_pretrained(
        repo, dtype=torch.float64).vision_model),
}


@pytest.mark.parametrize("name", list(ANY_SIZE_REPOS))
def test_repo_id_converts_and_runs_as_remote_code_at_any_size(tmp_path, capsys, monkeypatch, name):
    """A DINOv3 repo and a full native AIMv2 repo (image and text towers) on the loopback Hub: `python -m convert
    OWNER/NAME OUT --verify`, then the written folder, loaded as remote code, equals the source class read from the
    same repo at a non-square size it was not stored for, and its processor gives the source processor's pixels."""
    from helpers import TOKEN, TOKENS, point_client_at, publish_folder
    from hub_server import HubServer
    from huggingface_hub import HfApi
    from transformers import AutoImageProcessor, AutoModel

    from vit_hf import VitHfImageProcessor

    repo, load = ANY_SIZE_REPOS[name]
    folder = save_family(name, tmp_path / "src")
    with HubServer(tokens=TOKENS) as hub:
        point_client_at(monkeypatch, hub, tmp_path / "cache")
        commit = publish_folder(HfApi(endpoint=hub.endpoint, token=TOKEN), folder, repo)
        code, stdout, err = _cli([repo, tmp_path / "out", "--verify"], capsys)
        assert code == 0, err
        source = load(repo).eval()
        # DINOv3's processor exists only on the torchvision backend; CLIP's is compared on its PIL backend
        source_processor = AutoImageProcessor.from_pretrained(repo, **({} if name == "dinov3" else {"backend": "pil"}))
    assert type(source).__name__ in stdout and commit in (tmp_path / "out" / "README.md").read_text()
    model = AutoModel.from_pretrained(tmp_path / "out", trust_remote_code=True, dtype=torch.float64).eval()
    x = torch.randn(2, 3, 48, 72, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    with torch.no_grad():
        got, expected = model(x), source(x)
    torch.testing.assert_close(got.last_hidden_state, expected.last_hidden_state, rtol=0, atol=1e-9)
    torch.testing.assert_close(got.pooler_output, expected.pooler_output, rtol=0, atol=1e-9)
    processor = VitHfImageProcessor.from_pretrained(tmp_path / "out")
    reference = lambda image: source_processor(image, return_tensors="pt").pixel_values[0]  # noqa: E731
    assert max_pixel_difference(processor, reference, photos()) <= 1e-5
