"""Features for dense tasks: `VitHfModel.forward_intermediates` against timm's, and `VitHfBackbone` (AutoBackbone).

timm is the oracle: tiny VisionTransformers with every tensor randomised (tests/timm_variants.py) are converted with
`convert.timm.convert_timm_state_dict` and compared in float64.
"""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("timm")  # timm is in the dev extra; without it there is no reference to compare with

from timm_variants import VARIANTS, H, make_timm  # noqa: E402

from convert import timm as convert_timm  # noqa: E402
from vit_hf import VitHfBackbone, VitHfImageProcessor  # noqa: E402
from vit_hf.hub import check_hub_folder, push_folder, save_hub_folder  # noqa: E402

ATOL64 = 1e-10
# prefix tokens: none, class, class + 4 registers; fc_norm (timm's `norm` is then an identity); non-square grid
FEATURE_VARIANTS = [v for v in VARIANTS if v.name in ("token", "avg_fc_norm", "reg4", "non_square", "qk_norm")]
# (indices, norm, output_fmt, intermediates_only, return_prefix_tokens): every switch, both index forms
CALLS = [
    (None, False, "NCHW", False, False),
    (2, True, "NLC", False, False),
    ([0, -1], True, "NCHW", True, True),
    ([2, 0], False, "NLC", True, False),  # block order, whatever the list's order (timm)
    ([1], True, "NCHW", False, True),
]


def pixels(hw: tuple[int, int], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, *hw, generator=g, dtype=torch.float64)


def converted(variant):
    """(timm reference in float64, the converted VitHfForImageClassification in float32)."""
    reference = make_timm(variant).double().eval()
    model, _, _ = convert_timm.convert_timm_state_dict(reference.state_dict(), num_heads=H,
                                                       source_image_size=variant.image_hw)
    return reference, model


def converted_pair(variant):
    reference, model = converted(variant)
    return reference, model.vit.double().eval()


def flatten(out) -> list[torch.Tensor]:
    """The tensors of a forward_intermediates result in order (final features, then each entry / tuple member)."""
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for item in out for t in flatten(item)]


@pytest.mark.parametrize("variant", FEATURE_VARIANTS, ids=lambda v: v.name)
def test_forward_intermediates_match_timm_in_float64(variant):
    reference, ours = converted_pair(variant)
    x = pixels(variant.image_hw)
    with torch.no_grad():
        for indices, norm, fmt, only, prefix in CALLS:
            kwargs = dict(indices=indices, norm=norm, output_fmt=fmt, intermediates_only=only,
                          return_prefix_tokens=prefix)
            expected, got = flatten(reference.forward_intermediates(x, **kwargs)), flatten(
                ours.forward_intermediates(x, **kwargs))
            assert [t.shape for t in got] == [t.shape for t in expected], kwargs
            for e, g in zip(expected, got):
                torch.testing.assert_close(g, e, rtol=0, atol=ATOL64, msg=lambda m, k=kwargs: f"{k}: {m}")


def test_forward_intermediates_final_features_are_forwards():
    _, ours = converted_pair(FEATURE_VARIANTS[0])
    x = pixels((32, 32))
    with torch.no_grad():
        final, features = ours.forward_intermediates(x, indices=1, norm=True)
        out = ours(x)
    torch.testing.assert_close(final, out.last_hidden_state, rtol=0, atol=0)
    torch.testing.assert_close(features[0], final[:, 1:].transpose(1, 2).reshape(2, -1, 4, 4), rtol=0, atol=0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(indices=0), r"indices=0 asks for the last 0 blocks, but the model has 3"),
        (dict(indices=[3]), r"block indices \[3\] are out of range: the model has 3 blocks"),
        (dict(indices=[-4]), r"block indices \[-4\] are out of range"),
        (dict(output_fmt="NHWC"), r"output_fmt='NHWC' is not supported: pass 'NCHW' or 'NLC'"),
    ],
)
def test_forward_intermediates_refuses_bad_arguments_by_name(kwargs, message):
    _, ours = converted_pair(FEATURE_VARIANTS[0])
    with pytest.raises(ValueError, match=message):
        ours.forward_intermediates(pixels((32, 32)), **kwargs)


# ------------------------------------------------------------------------------------------------------ VitHfBackbone
@pytest.mark.parametrize("variant", [FEATURE_VARIANTS[1], FEATURE_VARIANTS[2]], ids=lambda v: v.name)
def test_backbone_feature_maps_are_timms_normed_intermediates(variant, tmp_path):
    """Saved as a hub folder, loaded with `out_indices=[1, 3]`: stage i is block i - 1 through the final norm."""
    reference, model = converted(variant)
    save_hub_folder(model, VitHfImageProcessor.from_model_config(model.config), tmp_path / "folder")
    backbone = VitHfBackbone.from_pretrained(tmp_path / "folder", out_indices=[1, 3]).double().eval()
    assert backbone.out_features == ["stage1", "stage3"] and backbone.channels == [64, 64]
    x = pixels(variant.image_hw)
    with torch.no_grad():
        expected = reference.forward_intermediates(x, indices=[0, 2], norm=True, intermediates_only=True)
        out = backbone(x, output_hidden_states=True)
    assert len(out.feature_maps) == 2 and len(out.hidden_states) == 4  # stem + 3 blocks
    for e, g in zip(expected, out.feature_maps):
        torch.testing.assert_close(g, e, rtol=0, atol=ATOL64)


def test_backbone_stem_and_out_features(tmp_path):
    _, model = converted(FEATURE_VARIANTS[0])
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"]["AutoBackbone"] == "modeling_vit_hf.VitHfBackbone"
    backbone = VitHfBackbone.from_pretrained(tmp_path, out_features=["stem", "stage2"]).double().eval()
    assert backbone.out_indices == [0, 2]
    x = pixels((32, 32))
    with torch.no_grad():
        stem, block1 = backbone(x).feature_maps
        vit = backbone.vit
        embedded = vit.norm(vit.norm_pre(vit.embed(x)))[:, 1:]
    torch.testing.assert_close(stem, embedded.transpose(1, 2).reshape(2, 64, 4, 4), rtol=0, atol=0)
    torch.testing.assert_close(block1, vit.forward_intermediates(x, [1], norm=True)[1][0], rtol=0, atol=0)


def test_backbone_refuses_a_stage_the_model_does_not_have(tmp_path):
    _, model = converted(FEATURE_VARIANTS[0])
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"out_indices must be valid indices for stage_names \['stem', 'stage1'"):
        VitHfBackbone.from_pretrained(tmp_path, out_indices=[4])


CONSUMER = """
import json, torch
from transformers import AutoBackbone
backbone = AutoBackbone.from_pretrained({repo!r}, trust_remote_code=True, out_indices=[1, 3]).eval()
with torch.no_grad():
    maps = backbone(torch.load({pixels!r})).feature_maps
print(json.dumps(dict(module=type(backbone).__module__, stages=backbone.out_features,
                      maps=[m.tolist() for m in maps])))
"""


@pytest.mark.slow
def test_auto_backbone_by_repo_id_as_remote_code(tmp_path, monkeypatch):
    """Pushed to the loopback Hub, loaded by a consumer without vit_hf: `AutoBackbone` gives the same maps."""
    from helpers import TOKEN, TOKENS, consumer_env, go_online
    from hub_server import HubServer
    from isolated import last_json_line, run_isolated

    go_online(monkeypatch)
    _, model = converted(FEATURE_VARIANTS[2])
    model = model.float()  # as users save them (the reference was float64)
    processor = VitHfImageProcessor.from_model_config(model.config)
    folder = save_hub_folder(model, processor, tmp_path / "folder", card_kwargs={"repo_id": "tester/vit-backbone"})
    check_hub_folder(folder)
    x = pixels((32, 32)).float()
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        expected = VitHfBackbone.from_pretrained(folder, out_indices=[1, 3]).eval()(x).feature_maps
    with HubServer(tokens=TOKENS) as hub:
        push_folder(folder, "tester/vit-backbone", token=TOKEN, endpoint=hub.endpoint)
        code = CONSUMER.format(repo="tester/vit-backbone", pixels=str(tmp_path / "x.pt"))
        out = last_json_line(run_isolated(code, cwd=tmp_path, env=consumer_env(hub, tmp_path / "home")))
    assert out["module"].startswith("transformers_modules.") and out["stages"] == ["stage1", "stage3"]
    for e, g in zip(expected, out["maps"], strict=True):
        torch.testing.assert_close(torch.tensor(g, dtype=e.dtype), e, rtol=0, atol=1e-6)
