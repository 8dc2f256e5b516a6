"""NaFlex (SigLIP2): the processor against transformers' Siglip2 processors, the model against transformers'
Siglip2VisionModel and timm's NaFlexVit (tiny random models written by the real libraries), the converters end to end
(folder -> AutoImageProcessor + AutoModel with trust_remote_code -> pooler_output), padding and attention backends."""

from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest
import torch

transformers = pytest.importorskip("transformers")

from convert.common import ConversionError, Options  # noqa: E402
from convert.siglip2 import verification_images  # noqa: E402
from vit_hf import VitHfConfig, VitHfImageProcessor, VitHfModel  # noqa: E402
from vit_hf.naflex_processing_vit_hf import naflex_image_size  # noqa: E402

SIGLIP2 = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, num_patches=16,
               patch_size=4)
TEXT = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=20, vocab_size=50)
PROCESSOR = dict(patch_size=4, max_num_patches=24)


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            values = torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.3
            p.copy_((values + (1.0 if p.ndim == 1 and "norm" in name and name.endswith("weight") else 0.0)).to(p.dtype))
    return model


def images(sizes=((37, 91), (120, 40), (64, 64), (300, 200), (17, 17), (5, 300), (1, 1))):
    rng = np.random.default_rng(0)
    return [PIL.Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]


def save_siglip2(folder, full: bool = False):
    """A transformers SigLIP2 repo as `save_pretrained` writes it, with its processor's preprocessor_config.json."""
    from transformers.models.siglip2.image_processing_pil_siglip2 import Siglip2ImageProcessorPil

    if full:
        config = transformers.Siglip2Config(vision_config=SIGLIP2, text_config=TEXT)
        model = transformers.Siglip2Model(config)
    else:
        model = transformers.Siglip2VisionModel(transformers.Siglip2VisionConfig(**SIGLIP2))
    randomize(model).save_pretrained(folder)
    Siglip2ImageProcessorPil(**PROCESSOR).save_pretrained(folder)
    return folder


def convert_siglip2(tmp_path, full: bool = False, verify: bool = True):
    from convert.transformers import convert_transformers_folder

    src, out = save_siglip2(tmp_path / "src", full), tmp_path / "out"
    convert_transformers_folder(src, out, verify=verify)
    return src, out


# ----------------------------------------------------------------------------------------------------------------------
# processor
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["pil", "torch"])
def test_processor_is_pixel_exact_with_transformers(backend):
    from transformers.models.siglip2.image_processing_pil_siglip2 import Siglip2ImageProcessorPil
    from transformers.models.siglip2.image_processing_siglip2 import Siglip2ImageProcessor

    reference = (Siglip2ImageProcessorPil if backend == "pil" else Siglip2ImageProcessor)(**PROCESSOR)
    ours = VitHfImageProcessor(**PROCESSOR, resample="bilinear", resize_backend=backend)
    batch = images()
    expected, got = reference(batch, return_tensors="pt"), ours(batch)
    assert set(got) == {"pixel_values", "pixel_attention_mask", "spatial_shapes"}
    assert torch.equal(got["spatial_shapes"], expected["spatial_shapes"])
    assert torch.equal(got["pixel_attention_mask"], expected["pixel_attention_mask"])
    assert got["pixel_values"].dtype == torch.float32
    assert (got["pixel_values"] - expected["pixel_values"]).abs().max().item() <= 1e-5
    # several grids, some padded, none over the budget
    shapes = got["spatial_shapes"].tolist()
    assert len({tuple(s) for s in shapes}) >= 5 and all(h * w <= 24 for h, w in shapes)
    assert (got["pixel_attention_mask"].sum(1) < 24).any()


def test_naflex_size_keeps_the_aspect_ratio_under_the_budget():
    from transformers.models.siglip2.image_processing_pil_siglip2 import get_image_size_for_max_num_patches

    for h, w, p, n in [(480, 640, 16, 256), (1000, 10, 14, 729), (7, 7, 16, 1024), (333, 333, 16, 100)]:
        assert naflex_image_size(h, w, p, n) == get_image_size_for_max_num_patches(h, w, p, n)


def test_processor_config_round_trips(tmp_path):
    processor = VitHfImageProcessor(**PROCESSOR, resample="bilinear")
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["max_num_patches"] == 24 and saved["patch_size"] == 4
    again = VitHfImageProcessor.from_pretrained(tmp_path)
    assert torch.equal(again(images())["pixel_values"], processor(images())["pixel_values"])
    assert "NaFlex" in again.describe_eval()
    # the classic processor is unchanged by the new fields
    assert set(VitHfImageProcessor(size=32)(images()[:2])) == {"pixel_values"}
    with pytest.raises(ValueError, match="patch_size"):
        VitHfImageProcessor(max_num_patches=16)


# ----------------------------------------------------------------------------------------------------------------------
# model
# ----------------------------------------------------------------------------------------------------------------------


def _source_and_ours(tmp_path, dtype=torch.float64):
    from convert.transformers import build_converted, convert_state

    src = save_siglip2(tmp_path / "src")
    info = convert_state(src)
    ours = build_converted(info).to(dtype).vit
    source = transformers.Siglip2VisionModel.from_pretrained(src, dtype=dtype, attn_implementation="sdpa").eval()
    return source, ours, src


def _inputs(dtype=torch.float64):
    batch = VitHfImageProcessor(**PROCESSOR, resample="bilinear")(images())
    return {**batch, "pixel_values": batch["pixel_values"].to(dtype)}


@pytest.mark.parametrize("attn", ["sdpa", "eager", "flex_attention"])
def test_every_attention_backend_masks_the_padding(tmp_path, attn):
    # flex attention runs float32 only on CPU (torch's inductor kernel)
    dtype, tolerance = (torch.float32, 1e-5) if attn == "flex_attention" else (torch.float64, 1e-12)
    source, ours, _ = _source_and_ours(tmp_path, dtype)
    ours.config._attn_implementation = attn
    inputs = _inputs(dtype)
    with torch.no_grad():
        expected, got = source(**inputs), ours(**inputs)
    assert (got.pooler_output - expected.pooler_output).abs().max().item() <= tolerance
    # padding rows are defined as transformers' (finite, same numbers), valid rows equal
    assert torch.isfinite(got.last_hidden_state).all()
    assert (got.last_hidden_state - expected.last_hidden_state).abs().max().item() <= tolerance


def test_an_image_pools_the_same_alone_padded_or_in_a_mixed_batch(tmp_path):
    _, ours, _ = _source_and_ours(tmp_path)
    batch = images()
    with torch.no_grad():
        together = ours(**_inputs()).pooler_output
        for i, image in enumerate(batch):
            for limit in (24, 40):
                alone = VitHfImageProcessor(patch_size=4, max_num_patches=limit, resample="bilinear")([image])
                if limit == 40 and alone["pixel_attention_mask"].sum() != _inputs()["pixel_attention_mask"][i].sum():
                    continue  # a bigger budget gives a bigger grid: another input
                alone["pixel_values"] = alone["pixel_values"].double()
                assert (ours(**alone).pooler_output[0] - together[i]).abs().max().item() <= 1e-12


def test_nchw_input_keeps_working_and_equals_the_naflex_path_on_a_full_grid(tmp_path):
    _, ours, _ = _source_and_ours(tmp_path)
    x = torch.randn(2, 3, 16, 24, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    patches = torch.stack([torch.einsum("chw->hwc", im).reshape(4, 4, 6, 4, 3).permute(0, 2, 1, 3, 4).reshape(24, 48)
                           for im in x])
    naflex = dict(pixel_values=patches, pixel_attention_mask=torch.ones(2, 24, dtype=torch.int32),
                  spatial_shapes=torch.tensor([[4, 6], [4, 6]]))
    with torch.no_grad():
        nchw, flex = ours(x).pooler_output, ours(**naflex).pooler_output
    assert (nchw - flex).abs().max().item() <= 1e-6  # hf_siglip2 is a weight matrix, NCHW resamples with interpolate


def test_naflex_inputs_are_checked_in_one_line(tmp_path):
    _, ours, _ = _source_and_ours(tmp_path)
    inputs = _inputs()
    with pytest.raises(ValueError, match="NaFlex patches"):
        ours(pixel_values=inputs["pixel_values"][..., :-1], pixel_attention_mask=inputs["pixel_attention_mask"],
             spatial_shapes=inputs["spatial_shapes"])
    with pytest.raises(ValueError, match="pixel_attention_mask"):
        ours(pixel_values=inputs["pixel_values"], spatial_shapes=inputs["spatial_shapes"])
    with pytest.raises(ValueError, match="at most 24"):
        ours(**{**inputs, "spatial_shapes": inputs["spatial_shapes"] * 3})


# ----------------------------------------------------------------------------------------------------------------------
# converters, end to end
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("full", [False, True], ids=["vision_model", "full_siglip2"])
def test_converted_folder_reproduces_transformers_from_image_to_pooler_output(tmp_path, full):
    from transformers import AutoImageProcessor, AutoModel
    from transformers.models.siglip2.image_processing_pil_siglip2 import Siglip2ImageProcessorPil

    src, out = convert_siglip2(tmp_path, full=full)
    card = (out / "README.md").read_text()
    assert "Siglip2VisionModel" in card and "NaFlex grids" in card
    processor = AutoImageProcessor.from_pretrained(out, trust_remote_code=True)
    model = AutoModel.from_pretrained(out, trust_remote_code=True, dtype=torch.float64).eval()
    source = transformers.Siglip2VisionModel.from_pretrained(src, dtype=torch.float64).eval()
    batch = verification_images()
    ours_in, theirs_in = processor(batch), Siglip2ImageProcessorPil.from_pretrained(src)(batch, return_tensors="pt")
    assert len({tuple(s) for s in ours_in["spatial_shapes"].tolist()}) >= 4  # mixed grids, padded
    with torch.no_grad():
        got = model(**{**ours_in, "pixel_values": ours_in["pixel_values"].double()}).pooler_output
        expected = source(**{**theirs_in, "pixel_values": theirs_in["pixel_values"].double()}).pooler_output
    assert (got - expected).abs().max().item() <= 1e-6
    # transformers' AutoImageProcessor is its torchvision class: resize_backend="torch" gives its pixels (6e-8)
    processor.resize_backend = "torch"
    ours_in, theirs_in = processor(batch), AutoImageProcessor.from_pretrained(src)(batch, return_tensors="pt")
    assert type(AutoImageProcessor.from_pretrained(src)).__name__ == "Siglip2ImageProcessor"
    with torch.no_grad():
        got = model(**{**ours_in, "pixel_values": ours_in["pixel_values"].double()}).pooler_output
        expected = source(**{**theirs_in, "pixel_values": theirs_in["pixel_values"].double()}).pooler_output
    assert (got - expected).abs().max().item() <= 1e-5


def test_a_model_that_differs_is_refused_by_verify(tmp_path):
    from convert.siglip2 import verify_siglip2
    from convert.transformers import convert_state, make_processor

    src = save_siglip2(tmp_path / "src")
    info = convert_state(src)
    info["state"]["vit.pos_embed"] = info["state"]["vit.pos_embed"].flip(1)  # a transposed-grid kind of mistake
    processor, _ = make_processor(info, info["config"], Options())
    with pytest.raises(ConversionError, match="differs from transformers"):
        verify_siglip2(src, info, processor)


def save_timm_naflex(folder, num_classes: int = 0, arch: str = "naflexvit_base_patch16_siglip"):
    timm = pytest.importorskip("timm")
    model = timm.create_model(arch, pretrained=False, embed_dim=32, depth=2, num_heads=4, mlp_ratio=37 / 32,
                              patch_size=4, pos_embed_grid_size=(4, 4), num_classes=num_classes)
    timm.models.save_for_hf(randomize(model), folder, safe_serialization=True)
    return folder


@pytest.mark.parametrize("arch, num_classes", [
    ("naflexvit_base_patch16_siglip", 0),  # SigLIP2: MAP head, bilinear positions (timm_naflex)
    ("naflexvit_base_patch16_siglip", 3),
    ("naflexvit_so150m2_patch16_reg1_gap", 3),  # a register, layer scale, mean pooling, bicubic positions ("timm")
])
def test_timm_naflexvit_folder_converts_exactly(tmp_path, arch, num_classes, capsys):
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from convert.timm_hub import convert_timm_folder

    src, out = save_timm_naflex(tmp_path / "src", num_classes, arch), tmp_path / "out"
    convert_timm_folder(src, out, verify=True)
    printed = capsys.readouterr().out
    rows = [line for line in printed.splitlines() if line.startswith("parity")]
    assert len(rows) == 6
    card = (out / "README.md").read_text()
    assert "16x16" in card and "NaFlex grids" in card  # the fixed-size path at the stored grid, and mixed grids
    model = AutoModelForImageClassification.from_pretrained(out, trust_remote_code=True)
    processor = AutoImageProcessor.from_pretrained(out, trust_remote_code=True)
    expected = "timm_naflex" if "siglip" in arch else "timm"
    assert processor.max_num_patches == 16 and model.config.pos_embed_interpolation == expected
    if num_classes:  # pipeline: the processor's three NaFlex inputs reach the classification model
        from transformers import pipeline

        classify = pipeline("image-classification", model=str(out), trust_remote_code=True)
        with torch.no_grad():
            logits = model(**processor(images()[:1])).logits[0]
        top = classify(images()[0], top_k=1)[0]
        assert top["label"] == model.config.id2label[int(logits.argmax())]
        assert abs(top["score"] - logits.softmax(-1).max().item()) < 1e-6


def test_timm_naflexvit_features_vit_hf_lacks_are_refused(tmp_path):
    timm = pytest.importorskip("timm")
    from convert.timm_hub import convert_timm_folder

    model = timm.create_model("naflexvit_base_patch16_parfac_gap", pretrained=False, embed_dim=32, depth=2,
                              num_heads=4, patch_size=4, pos_embed_grid_size=(4, 4), num_classes=0)
    timm.models.save_for_hf(model, tmp_path / "src", safe_serialization=True)
    with pytest.raises(ConversionError, match="cannot represent"):
        convert_timm_folder(tmp_path / "src", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_attention_maps_and_flash_with_padding(tmp_path):
    _, ours, _ = _source_and_ours(tmp_path)
    inputs = _inputs()
    ours.config._attn_implementation = "flex_attention"  # maps force eager: the mask must be eager's
    with torch.no_grad():
        out = ours(**inputs, output_attentions=True)
    padded = ~inputs["pixel_attention_mask"].bool()
    assert all((a.sum(-1) - 1).abs().max() < 1e-12 for a in out.attentions)
    assert all((a * padded[:, None, None, :]).abs().max() == 0 for a in out.attentions)  # no query sees the padding
    ours.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="sdpa"):
        ours(**inputs)


def test_bench_suite_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BENCH_RESULTS", str(tmp_path))  # read at each call (bench.common.results_dir)
    from bench import naflex

    naflex.main(["--quick", "--rounds", "1"])
    payload = json.loads((tmp_path / "naflex.json").read_text())
    assert {r["candidate"] for r in payload["rows"]} == {"hf_sdpa", "vit_hf"} and len(payload["grids"]) > 1
    assert float(payload["rows"][1]["max_abs_diff"]) < 1e-4


def test_naflex_train_transform_and_collate_feed_a_training_step(tmp_path):
    from vit_hf import VitHfForImageClassification
    from vit_hf.naflex_processing_vit_hf import naflex_collate

    processor = VitHfImageProcessor(**PROCESSOR, resample="bilinear")
    transform = processor.train_transforms()
    torch.manual_seed(0)
    examples = [{**transform(image), "labels": i % 3} for i, image in enumerate(images())]
    assert all(e["pixel_values"].shape == (24, 48) for e in examples)
    torch.manual_seed(0)
    again = [transform(image) for image in images()]
    assert all(torch.equal(a["pixel_values"], e["pixel_values"]) for a, e in zip(again, examples))  # torch's RNG
    batch = naflex_collate(examples)
    assert batch["labels"].tolist() == [0, 1, 2, 0, 1, 2, 0] and batch["spatial_shapes"].shape == (7, 2)
    config = VitHfConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                         image_size=16, patch_size=4, class_token=False, pooling="map", num_labels=3,
                         pos_embed_interpolation="hf_siglip2", dynamic_img_size=True)
    model = VitHfForImageClassification(config).train()
    out = model(**batch)
    out.loss.backward()
    assert torch.isfinite(out.loss) and model.vit.pos_embed.grad.abs().sum() > 0


def test_hub_ids_through_the_front_door(tmp_path, capsys):
    """`python -m convert REPO_ID OUT --verify` for a transformers SigLIP2 repo and a timm naflexvit repo on the
    loopback Hub: downloaded, converted, verified, the card naming the repo."""
    from helpers import TOKEN, TOKENS, point_client_at, publish_folder, run_convert
    from hub_server import HubServer
    from huggingface_hub import HfApi

    with HubServer(tokens=TOKENS) as server, pytest.MonkeyPatch.context() as mp:
        point_client_at(mp, server, tmp_path / "cache")
        api = HfApi(endpoint=server.endpoint, token=TOKEN)
        repos = {"tester/siglip2-naflex": save_siglip2(tmp_path / "hf"),
                 "tester/naflexvit_base_patch16_siglip.v2_webli": save_timm_naflex(tmp_path / "timm")}
        for repo, folder in repos.items():
            publish_folder(api, folder, repo)
            out = tmp_path / repo.split("/")[1]
            code, stdout, err = run_convert([repo, out, "--verify"], capsys)
            assert code == 0, err
            assert repo in (out / "README.md").read_text() and "NaFlex grids" in (out / "README.md").read_text()
            assert json.loads((out / "preprocessor_config.json").read_text())["max_num_patches"] in (16, 24)


def _patches(x: torch.Tensor, p: int) -> torch.Tensor:
    from einops import rearrange

    return rearrange(x, "b c (gh ph) (gw pw) -> b (gh gw) (ph pw c)", ph=p, pw=p)


@pytest.mark.parametrize("variant", [
    dict(pooling="token"),  # class token, the original ViT table (prefix rows)
    dict(pooling="mean", num_register_tokens=2, no_embed_class=True),
    dict(pooling="map", class_token=False),
    dict(pooling="token_mean", pos_embed_type="sincos2d", no_embed_class=True),
    dict(pooling="mean", class_token=False, embed_norm=True, norm_type="rmsnorm"),
])
def test_switches_agree_with_the_nchw_path_and_ignore_padding(variant):
    """NaFlex patches of a full stored grid give the NCHW forward's outputs; padding the same image changes nothing
    it pools, whatever the prefix tokens, positions, patch norm and pooling."""
    config = VitHfConfig.from_preset("test", pos_embed_interpolation="timm_naflex", **variant)
    model = randomize(VitHfModel(config)).double().eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    full = dict(pixel_values=_patches(x, 8), pixel_attention_mask=torch.ones(2, 16, dtype=torch.int32),
                spatial_shapes=torch.tensor([[4, 4], [4, 4]]))
    padded = {**full, "pixel_values": torch.nn.functional.pad(full["pixel_values"], (0, 0, 0, 7)),
              "pixel_attention_mask": torch.nn.functional.pad(full["pixel_attention_mask"], (0, 7))}
    with torch.no_grad():
        nchw, flex, pad = model(x), model(**full), model(**padded)
    # the same numbers up to the summation order of the patch projection ((ph pw c) rows here, (c ph pw) there)
    assert (nchw.pooler_output - flex.pooler_output).abs().max().item() <= 1e-13
    assert (nchw.last_hidden_state - flex.last_hidden_state).abs().max().item() <= 1e-13
    assert (pad.pooler_output - nchw.pooler_output).abs().max().item() <= 1e-13
    prefix = config.num_prefix_tokens
    assert (pad.last_hidden_state[:, : prefix + 16] - nchw.last_hidden_state).abs().max().item() <= 1e-13


@pytest.mark.slow
def test_timm_naflexvit_state_dict_file_converts_with_its_model_name(tmp_path):
    """A bare NaFlexVit state dict (embeds.* keys): the architecture comes from --model-name (refused without one), the
    grid from the weights; the converted model computes timm's features on a NaFlex batch."""
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    from convert.siglip2 import _timm_naflex_forward
    from convert.timm import convert_timm_file

    arch = "naflexvit_base_patch16_siglip"
    source = randomize(timm.create_model(arch, pretrained=False, pos_embed_grid_size=(6, 6), depth=1)).eval()
    small = tmp_path / "weights.safetensors"
    save_file(source.state_dict(), small)
    with pytest.raises(ConversionError, match="--model-name"):
        convert_timm_file(small, tmp_path / "no")
    with pytest.raises(ConversionError, match="does not apply to a NaFlex model"):
        convert_timm_file(small, tmp_path / "no", model_name=arch, crop_pct=0.9)
    assert not (tmp_path / "no").exists()
    # the registry's architecture (12 blocks) against these weights (1 block) is a key mismatch, named
    with pytest.raises(ConversionError, match="blocks.1"):
        convert_timm_file(small, tmp_path / "no", model_name=arch)
    # the registry model itself (a 6x6 grid, from the weights)
    model = randomize(timm.create_model(arch, pretrained=False, pos_embed_grid_size=(6, 6))).eval()
    full = tmp_path / "full.safetensors"
    save_file(model.state_dict(), full)
    out = convert_timm_file(full, tmp_path / "out", model_name=arch)
    from transformers import AutoImageProcessor, AutoModel

    ours = AutoModel.from_pretrained(out, trust_remote_code=True).eval()
    processor = AutoImageProcessor.from_pretrained(out, trust_remote_code=True)
    assert processor.max_num_patches == 36 and ours.config.image_hw == (96, 96)
    inputs = processor(images()[:3])
    with torch.no_grad():
        diff = (ours(**inputs).pooler_output - _timm_naflex_forward(model, inputs)).abs().max().item()
    assert diff <= 1e-3
