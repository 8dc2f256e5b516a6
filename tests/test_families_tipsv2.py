"""TIPSv2 (transformers 5.25 `tipsv2` dual encoder and `tipsv2_vision_model`): tiny random models written by the real
`save_pretrained`, converted, and compared in float64 with transformers' own vision tower (`last_hidden_state`,
`pooler_output`) at the stored size and at sizes its bilinear antialiased position resampling runs for; the converted
processor gives `Tipsv2ImageProcessor`'s pixels; timm's `vit_*_patch14_reg1_tipsv2` conversion of the same weights
agrees at the stored size; what vit_hf cannot represent is refused in one line, nothing written."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from helpers import TRANSFORMERS_TEXT as TEXT  # noqa: E402
from helpers import randomize, run_convert  # noqa: E402
from images import max_pixel_difference, photos  # noqa: E402

from convert.common import ConversionError  # noqa: E402
from convert.preprocessing import processor_from_transformers  # noqa: E402
from convert.transformers import build_converted, convert_state, convert_transformers_folder  # noqa: E402
from vit_hf import VitHfBackbone, VitHfConfig, VitHfImageProcessor, VitHfModel  # noqa: E402

ATOL64 = 1e-10
# a 4x4 stored grid of 14-px patches; resampled to 5x3 (up one axis, antialiased down the other) and 2x2
TOWER = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, image_size=56, patch_size=14)
SIZES = [(56, 56), (70, 42), (28, 28)]
# photos for pixel parity: landscape, a strong portrait, one smaller than the output, an odd one
PHOTOS = [(640, 480), (257, 999), (97, 61), (225, 301)]
PROCESSOR = dict(size={"height": 56, "width": 56})  # the repos' 448x448 bilinear squash, no normalisation, at 56


def _vision(**kwargs):
    return transformers.Tipsv2VisionModel(transformers.Tipsv2VisionConfig(**{**TOWER, **kwargs}))


def _dual(**vision):
    text = dict(TEXT, hidden_size=TOWER["hidden_size"])  # TIPSv2 ties the towers' widths
    return transformers.Tipsv2Model(transformers.Tipsv2Config(vision_config={**TOWER, **vision}, text_config=text))


# name -> (builder, the transformers loader of the vision tower users call on the folder)
FAMILIES = {
    "vision": (lambda: _vision(), lambda f: transformers.Tipsv2VisionModel.from_pretrained(f, dtype=torch.float64)),
    "vision_swiglu": (lambda: _vision(use_swiglu_ffn=True, num_register_tokens=2),
                      lambda f: transformers.Tipsv2VisionModel.from_pretrained(f, dtype=torch.float64)),
    # the text tower is ignored; the so400m's fractional mlp_ratio, no q/k/v bias, another activation
    "dual": (lambda: _dual(mlp_ratio=3.75, qkv_bias=False, hidden_act="gelu_pytorch_tanh"),
             lambda f: transformers.Tipsv2Model.from_pretrained(f, dtype=torch.float64).vision_model),
    "dual_swiglu": (lambda: _dual(use_swiglu_ffn=True),
                    lambda f: transformers.Tipsv2Model.from_pretrained(f, dtype=torch.float64).vision_model),
}


def save_family(name: str, folder, dtype: torch.dtype = torch.float32):
    model = randomize(FAMILIES[name][0](), seed=len(name)).to(dtype)
    model.save_pretrained(folder)
    transformers.Tipsv2ImageProcessor(**PROCESSOR).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """name -> (source folder, converted folder): each family converted once for the module, the dual-encoder repos
    with --verify (its rows on the card)."""
    root, done = tmp_path_factory.mktemp("tipsv2"), {}

    def get(name: str):
        if name not in done:
            folder = save_family(name, root / name)
            convert_transformers_folder(folder, root / f"{name}-out", verify=name.startswith("dual"))
            done[name] = folder, root / f"{name}-out"
        return done[name]

    return get


def _max_diffs(ours, source, sizes=SIZES) -> dict:
    diffs = {}
    for hw in sizes:
        x = torch.randn(2, 3, *hw, generator=torch.Generator().manual_seed(sum(hw)), dtype=torch.float64)
        with torch.no_grad():
            got, expected = ours(x, output_hidden_states=True), source(x, output_hidden_states=True)
        for name in ("last_hidden_state", "pooler_output"):
            diffs[f"{name} at {hw[0]}x{hw[1]}"] = (getattr(got, name) - getattr(expected, name)).abs().max().item()
        assert len(got.hidden_states) == len(expected.hidden_states) == TOWER["num_hidden_layers"] + 1
        for k, (a, b) in enumerate(zip(got.hidden_states, expected.hidden_states)):  # embeddings, then each block
            diffs[f"hidden_states[{k}] at {hw[0]}x{hw[1]}"] = (a - b).abs().max().item()
    return diffs


@pytest.mark.parametrize("name", list(FAMILIES))
def test_converted_tower_reproduces_transformers_in_float64(converted, name):
    """The written folder (as users load it) against the tower transformers builds from the source folder: every
    token, the pooled class token and every block's output, at the stored 4x4 grid and resampled to 5x3 and 2x2."""
    folder, out = converted(name)
    ours = VitHfModel.from_pretrained(out, dtype=torch.float64).eval()
    diffs = _max_diffs(ours, FAMILIES[name][1](folder).eval())
    assert max(diffs.values()) < ATOL64, diffs
    if name.startswith("dual"):  # --verify ran and its rows are on the card, a resampled non-square grid among them
        card, config = (out / "README.md").read_text(), ours.config
        (gh, gw), (ph, pw) = config.grid_size, config.patch_hw
        assert "float64" in card and f"at {(gh + 1) * ph}x{(gw + 2) * pw}" in card


def test_family_switches_come_from_the_source(converted):
    expected = {
        "vision": dict(num_register_tokens=1, no_embed_registers=True, dynamic_img_size=True,
                       pos_embed_interpolation="timm_naflex", layer_scale_init_value=1.0, mlp_layer="mlp",
                       intermediate_size=128, hidden_act="gelu", pooling="token", layer_norm_eps=1e-6),
        "vision_swiglu": dict(num_register_tokens=2, mlp_layer="glu", hidden_act="silu", intermediate_size=88),
        "dual": dict(qkv_bias=False, proj_bias=True, intermediate_size=120, hidden_act="gelu_pytorch_tanh"),
    }
    for name, fields in expected.items():
        config = VitHfConfig.from_pretrained(converted(name)[1])
        assert {k: getattr(config, k) for k in fields} == fields, name


def test_resampling_is_bilinear_antialiased_not_dinov2s_bicubic(converted):
    """What makes the other sizes exact: with DINOv2-with-registers' bicubic resampling the same weights miss the
    source by far more than float64 rounding, with TIPSv2's (`timm_naflex`: the same `F.interpolate` call) they
    do not."""
    folder, _ = converted("vision")
    info = convert_state(folder)
    source = FAMILIES["vision"][1](folder).eval()
    info["config"].pos_embed_interpolation = "hf_dinov2_reg"
    bicubic = _max_diffs(build_converted(info).double().eval().vit, source, sizes=[(70, 42)])
    assert min(bicubic.values()) > 1e-4, bicubic


def test_original_mlp_names_convert_the_same(converted, tmp_path):
    """`save_pretrained` writes a plain MLP as `mlp.c_fc` / `c_proj`; the original TIPS checkpoints (what timm reads)
    name it `mlp.fc1` / `fc2`. transformers loads both, and both convert to the same tensors."""
    from safetensors.torch import load_file, save_file

    folder, _ = converted("dual")
    state = load_file(folder / "model.safetensors")
    assert any(".mlp.c_fc." in k for k in state)
    renamed = {k.replace(".mlp.c_fc.", ".mlp.fc1.").replace(".mlp.c_proj.", ".mlp.fc2."): v for k, v in state.items()}
    other = tmp_path / "fc1"
    other.mkdir()
    for name in ("config.json", "preprocessor_config.json"):
        (other / name).write_text((folder / name).read_text())
    save_file(renamed, other / "model.safetensors", metadata={"format": "pt"})
    reference, state = convert_state(folder)["state"], convert_state(other)["state"]
    assert state.keys() == reference.keys() and all(torch.equal(state[k], reference[k]) for k in state)
    diffs = _max_diffs(FAMILIES["dual"][1](other).eval(), FAMILIES["dual"][1](folder).eval(), sizes=[(56, 56)])
    assert max(diffs.values()) == 0.0, diffs


def test_backbone_folder_converts_and_gives_tipsv2_backbones_maps(tmp_path):
    """A `Tipsv2VisionBackbone` folder converts (--verify against `Tipsv2VisionModel` read from it); AutoBackbone on the
    converted folder (`VitHfBackbone`: normed stages without the class token and registers, NCHW) gives the source
    backbone's feature maps, at the stored and a resampled size."""
    config = transformers.Tipsv2VisionConfig(**TOWER, use_swiglu_ffn=True, num_register_tokens=2, out_indices=[0, 2])
    randomize(transformers.Tipsv2VisionBackbone(config), seed=7).save_pretrained(tmp_path / "src")
    convert_transformers_folder(tmp_path / "src", tmp_path / "out", verify=True)
    ours = VitHfBackbone.from_pretrained(tmp_path / "out", out_indices=[0, 2], dtype=torch.float64).eval()
    source = transformers.Tipsv2VisionBackbone.from_pretrained(tmp_path / "src", dtype=torch.float64).eval()
    for hw in ((56, 56), (70, 42)):
        x = torch.randn(2, 3, *hw, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        with torch.no_grad():
            got, expected = ours(x).feature_maps, source(x).feature_maps
        assert [g.shape for g in got] == [e.shape for e in expected] and len(got) == 2
        assert max((g - e).abs().max().item() for g, e in zip(got, expected)) < ATOL64


# ----------------------------------------------------------------------------------------------------------------------
# Preprocessing: Tipsv2ImageProcessor exists on the torchvision backend only (uint8 resized antialiased, then rescaled)
# ----------------------------------------------------------------------------------------------------------------------


def _source_pixels(source):
    return lambda image: source(image, return_tensors="pt").pixel_values[0]


def test_converted_processor_gives_tipsv2s_pixels(converted):
    from transformers import AutoImageProcessor

    folder, out = converted("dual")
    processor = VitHfImageProcessor.from_pretrained(out)
    assert processor.resize_backend == "torch"
    source = AutoImageProcessor.from_pretrained(folder)
    assert max_pixel_difference(processor, _source_pixels(source), photos(PHOTOS)) <= 1e-5


PROCESSORS = {
    "repo default (448, bilinear)": {},
    "non-square, bicubic": {"size": {"height": 48, "width": 64}, "resample": 3},
    "shortest edge, crop, normalised": {"size": {"shortest_edge": 64}, "do_center_crop": True,
                                        "crop_size": {"height": 56, "width": 56}, "do_normalize": True,
                                        "image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.3, 0.4]},
}


@pytest.mark.parametrize("case", list(PROCESSORS))
def test_tipsv2_processor_settings_give_its_pixels(tmp_path, case):
    source = transformers.Tipsv2ImageProcessor(**PROCESSORS[case])
    source.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "preprocessor_config.json").read_text())
    processor, note = processor_from_transformers(config, VitHfConfig(**TOWER))
    assert "Tipsv2ImageProcessor, torchvision: uint8 resized antialiased" in note
    assert max_pixel_difference(processor, _source_pixels(source), photos(PHOTOS)) <= 1e-5


@pytest.mark.parametrize("settings, expected", [
    ({"resample": 0}, "Tipsv2ImageProcessor resamples with nearest"),
    ({"size": {"shortest_edge": 40}, "do_center_crop": True, "crop_size": {"height": 56, "width": 56}},
     "it pads them as torchvision does"),
])
def test_tipsv2_processor_settings_not_reproduced_are_refused(tmp_path, settings, expected):
    transformers.Tipsv2ImageProcessor(**settings).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "preprocessor_config.json").read_text())
    with pytest.raises(ConversionError, match=expected):
        processor_from_transformers(config, VitHfConfig(**TOWER))


# ----------------------------------------------------------------------------------------------------------------------
# Refusals through the front door: one line, exit 2, nothing written
# ----------------------------------------------------------------------------------------------------------------------


def _backbone_flag(folder, **flag):
    transformers.Tipsv2VisionBackbone(transformers.Tipsv2VisionConfig(**TOWER, **flag)).save_pretrained(folder)


# case -> (fixture writer, what the one line says)
REFUSED = {
    "non-square position grid": (lambda f: _vision(image_size=[56, 70]).save_pretrained(f),
                                 "TIPSv2 with image_size=[56, 70], patch_size=14: a 4x5 position grid"),
    "backbone without the final norm": (lambda f: _backbone_flag(f, apply_layernorm=False),
                                        "TIPSv2 with apply_layernorm=false"),
    "backbone without NCHW maps": (lambda f: _backbone_flag(f, reshape_hidden_states=False),
                                   "TIPSv2 with reshape_hidden_states=false"),
    "a tensor with no place": (lambda f: _extra_tensor(f), "has tensor(s) with no place in a plain ViT"),
}


def _extra_tensor(folder):
    from safetensors.torch import load_file, save_file

    _dual().save_pretrained(folder)
    state = load_file(folder / "model.safetensors")
    state["vision_encoder.blocks.0.attn.q_norm.weight"] = torch.ones(8)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize("case", list(REFUSED))
def test_what_cannot_be_represented_is_refused_in_one_line(tmp_path, capsys, case):
    write, expected = REFUSED[case]
    write(tmp_path / "src")
    code, _, err = run_convert([tmp_path / "src", tmp_path / "out", "--verify"], capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and expected in err, err
    assert not (tmp_path / "out").exists()


def test_image_size_is_refused_the_positions_follow_every_input(converted, tmp_path, capsys):
    folder, _ = converted("vision")
    code, _, err = run_convert([folder, tmp_path / "out", "--image-size", "84"], capsys)
    assert code == 2 and err.count("\n") == 1 and "drop --image-size" in err, err
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------------------------------
# timm's own TIPSv2 architectures, from the same weights
# ----------------------------------------------------------------------------------------------------------------------


def test_timm_and_transformers_conversions_of_the_same_weights_agree(tmp_path, capsys):
    """The same float64 weights as a transformers folder and as timm's `vit_base_patch14_reg1_tipsv2` (loaded by timm's
    own checkpoint filter, which folds the class token's position into the class token), each converted with --verify
    against its own library: at the stored size the two vit_hf models are equal; elsewhere each follows its library
    (timm resamples bicubic, transformers' TIPSv2 bilinear), so they differ there by design."""
    timm = pytest.importorskip("timm")
    from safetensors.torch import load_file
    from timm.models import save_for_hf
    from timm.models.vision_transformer import checkpoint_filter_fn

    folder = save_family("vision", tmp_path / "hf", dtype=torch.float64)
    state = load_file(folder / "model.safetensors")
    state = {k.replace(".mlp.c_fc.", ".mlp.fc1.").replace(".mlp.c_proj.", ".mlp.fc2."): v for k, v in state.items()}
    tiny = dict(img_size=56, embed_dim=32, depth=2, num_heads=4, num_classes=0)
    model = timm.create_model("vit_base_patch14_reg1_tipsv2", pretrained=False, **tiny).double()
    model.load_state_dict(checkpoint_filter_fn(state, model))
    save_for_hf(model, tmp_path / "timm", safe_serialization=True)
    for source, out in ((folder, "hf-out"), (tmp_path / "timm", "timm-out")):
        code, _, err = run_convert([source, tmp_path / out, "--verify"], capsys)
        assert code == 0, err
    from_hf, from_timm = (VitHfModel.from_pretrained(tmp_path / o, dtype=torch.float64).eval()
                          for o in ("hf-out", "timm-out"))
    assert from_timm.config.no_embed_class and not from_hf.config.no_embed_class
    same = _max_diffs(from_timm, from_hf, sizes=[(56, 56)])
    assert max(same.values()) < ATOL64, same
    x = torch.randn(1, 3, 70, 42, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        apart = (from_timm(x, interpolate_pos_encoding=True).pooler_output - from_hf(x).pooler_output).abs().max()
    assert apart > 1e-4


# ----------------------------------------------------------------------------------------------------------------------
# A Hub repo id (the loopback Hub)
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_repo_id_converts_and_runs_as_remote_code(converted, tmp_path, capsys, monkeypatch):
    """A full TIPSv2 repo (image and text towers, its processor) on the loopback Hub: `python -m convert OWNER/NAME OUT
    --verify`; the folder, loaded as remote code, equals `Tipsv2Model.from_pretrained(repo).vision_model` at the
    stored and a non-square size, the second class token (register 0) included, and its processor gives the repo
    processor's pixels."""
    from helpers import TOKEN, TOKENS, point_client_at, publish_folder
    from hub_server import HubServer
    from huggingface_hub import HfApi
    from transformers import AutoImageProcessor, AutoModel

    folder, _ = converted("dual_swiglu")
    repo = "tester/tipsv2-tiny"
    with HubServer(tokens=TOKENS) as hub:
        point_client_at(monkeypatch, hub, tmp_path / "cache")
        commit = publish_folder(HfApi(endpoint=hub.endpoint, token=TOKEN), folder, repo)
        code, stdout, err = run_convert([repo, tmp_path / "out", "--verify"], capsys)
        assert code == 0, err
        source = transformers.Tipsv2Model.from_pretrained(repo, dtype=torch.float64).vision_model.eval()
        source_processor = AutoImageProcessor.from_pretrained(repo)
    assert "Tipsv2VisionModel" in stdout and commit in (tmp_path / "out" / "README.md").read_text()
    model = AutoModel.from_pretrained(tmp_path / "out", trust_remote_code=True, dtype=torch.float64).eval()
    diffs = _max_diffs(model, source, sizes=[(56, 56), (42, 84)])  # 3x6: down one axis, up the other
    assert max(diffs.values()) < ATOL64, diffs
    processor = VitHfImageProcessor.from_pretrained(tmp_path / "out")
    assert max_pixel_difference(processor, _source_pixels(source_processor), photos(PHOTOS)) <= 1e-5
