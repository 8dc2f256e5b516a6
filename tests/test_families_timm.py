"""timm's newer ViT families through the converter: eva.py (EVA, EVA02 and its CLIP towers, DINOv3 with and
without qkv bias, Perception Encoder Core / Lang / Spatial, timm's and Naver's RoPE ViTs incl. RoPE-Mixed and RoPE +
APE, LingBot, Sapiens2 with grouped-query attention) and vision_transformer.py's AIMv2 and BEiT-3.

Every family: a tiny random instance built by timm itself is written by timm's own writer (`save_for_hf`), converted
through the front door with `--verify`, loaded back as remote code and compared in float64 with timm's own forward at
the stored size and at a non-square other size (6x5 patches), where timm runs at that size as its users would: the
same model when it has `dynamic_img_size`, else `create_model(..., img_size=...)` with the position table resampled by
timm's `resample_abs_pos_embed` (vit_hf: `interpolate_pos_encoding=True`; RoPE tables are built for any grid).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("timm")

import timm  # noqa: E402
from helpers import TOKEN, TOKENS, float64_rows, point_client_at, publish_folder, run_cli_captured, run_convert  # noqa: E402
from hub_server import HubServer  # noqa: E402
from huggingface_hub import HfApi  # noqa: E402
from images import assert_same_pixels  # noqa: E402
from timm.layers import resample_abs_pos_embed  # noqa: E402
from timm.models import save_for_hf  # noqa: E402
from timm_variants import randomize_  # noqa: E402
from transformers import AutoModelForImageClassification  # noqa: E402

from convert import timm as convert_timm  # noqa: E402
from convert import to_timm  # noqa: E402
from vit_hf import VitHfConfig  # noqa: E402
from vit_hf.registration import unregistered  # noqa: E402

ATOL64 = 1e-9
TINY = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=5)
OTHER = (48, 40)  # a 6x5 grid: not the stored 4x4, not square

# timm name -> (extra create_model kwargs, the vit_hf switches the conversion must set)
FAMILIES: dict[str, tuple[dict, dict]] = {
    "eva02_tiny_patch14_224": ({}, dict(rope_type="cat", rope_ref_grid=[16, 16], key_bias=False, mlp_layer="glu")),
    "eva02_base_patch14_224": ({}, dict(rope_type="cat", mlp_inner_norm=True, key_bias=False)),
    "eva02_base_patch16_clip_224": ({}, dict(attn_inner_norm=True, mlp_inner_norm=True, pooling="token")),
    "eva02_enormous_patch14_clip_224": ({}, dict(post_norm=True, rope_type="none")),
    "eva_giant_patch14_224": ({}, dict(key_bias=False, rope_type="none", pooling="mean")),
    "vit_small_patch16_dinov3": ({}, dict(rope_type="dinov3", qkv_bias=False, num_register_tokens=4,
                                          pos_embed_type="none", dynamic_img_size=True)),
    "vit_small_patch16_dinov3_qkvb": ({}, dict(rope_type="dinov3", qkv_bias=True, key_bias=False)),
    "vit_small_plus_patch16_dinov3": ({}, dict(rope_type="dinov3", mlp_layer="glu", hidden_act="silu")),
    "vit_pe_core_tiny_patch16_384": ({}, dict(rope_type="cat", rope_grid_indexing="xy", rope_grid_offset=1.0,
                                              pooling="map", pool_num_heads=8, pool_include_prefix=True)),
    "vit_pe_lang_large_patch14_448": ({}, dict(rope_type="cat", final_norm=False, layer_scale_init_value=0.1)),
    "vit_pe_spatial_tiny_patch16_512": ({}, dict(rope_type="cat", pre_norm=True, final_norm=False)),
    "vit_small_patch16_rope_224": ({}, dict(rope_type="cat", rope_theta=100.0, pos_embed_type="none")),
    "vit_small_patch16_rope_ape_224": ({}, dict(rope_type="cat", pos_embed_type="learned", no_embed_class=True)),
    "vit_small_patch16_rope_mixed_224": ({}, dict(rope_type="mixed", rope_theta=10.0, pos_embed_type="none")),
    "vit_small_patch16_rope_mixed_ape_224": ({}, dict(rope_type="mixed", pos_embed_type="learned")),
    "vit_medium_patch16_rope_reg1_gap_256": ({}, dict(rope_type="cat", class_token=False, num_register_tokens=1)),
    "vit_small_patch16_lingbot": ({}, dict(rope_type="dinov3", pooling="token")),
    "vit_base_patch16_sapiens2": (dict(depth=4, num_kv_heads=(4, 2, 2, 4)),
                                  dict(norm_type="rmsnorm", qk_norm=True, num_key_value_heads=[4, 2, 2, 4],
                                       layer_scale_attn_only=True)),
    "aimv2_large_patch14_224": ({}, dict(norm_type="rmsnorm", embed_norm=True, mlp_layer="glu", qkv_bias=False)),
    "beit3_base_patch16_224": ({}, dict(attn_inner_norm=True, mlp_inner_norm=True)),
}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny matrices run faster on one thread


def build(name: str, dtype: torch.dtype = torch.float32, **overrides) -> torch.nn.Module:
    extra, _ = FAMILIES[name]
    return timm.create_model(name, pretrained=False, dtype=dtype, **{**TINY, **extra, **overrides})


def timm_reference(name: str, state: dict, hw: tuple[int, int]) -> tuple[torch.nn.Module, bool]:
    """timm in float64 at `hw` with `state`, and whether vit_hf needs interpolate_pos_encoding there."""
    model = build(name, torch.float64)
    if hw == tuple(model.patch_embed.img_size) or getattr(model, "dynamic_img_size", False):
        model.load_state_dict(state)
        return model.eval(), False
    model = build(name, torch.float64, img_size=hw)
    if "pos_embed" in state:
        old = [TINY["img_size"] // 8] * 2
        prefix = 0 if model.no_embed_class else model.num_prefix_tokens
        state = dict(state, pos_embed=resample_abs_pos_embed(state["pos_embed"], new_size=[hw[0] // 8, hw[1] // 8],
                                                             old_size=old, num_prefix_tokens=prefix))
    model.load_state_dict(state)
    return model.eval(), True


def assert_matches_timm(out: Path, name: str, state: dict) -> None:
    with unregistered():  # an installed vit_hf would otherwise build the folder with its own classes
        model = AutoModelForImageClassification.from_pretrained(out, trust_remote_code=True).double().eval()
    assert type(model).__module__.startswith("transformers_modules"), "not loaded through the folder's remote code"
    state = {k: v.double() if v.is_floating_point() else v for k, v in state.items()}
    for i, hw in enumerate(((32, 32), OTHER)):
        reference, interpolate = timm_reference(name, state, hw)
        x = torch.randn(2, 3, *hw, generator=torch.Generator().manual_seed(i), dtype=torch.float64)
        with torch.no_grad():
            expected, pooled = reference(x), reference.forward_head(reference.forward_features(x), pre_logits=True)
            got = model(pixel_values=x, interpolate_pos_encoding=interpolate)
            ours_pooled = model.vit(pixel_values=x, interpolate_pos_encoding=interpolate).pooler_output
        torch.testing.assert_close(got.logits, expected, rtol=0, atol=ATOL64, msg=f"{name} logits at {hw}")
        torch.testing.assert_close(ours_pooled, pooled, rtol=0, atol=ATOL64, msg=f"{name} pooled at {hw}")


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_timm_folder_converts_exactly(name, tmp_path, capsys):
    """save_for_hf folder -> `python -m convert FOLDER OUT --verify`: the switches the family needs, float64 parity
    with timm (the --verify rows and our own check, at 4x4 and 6x5 patches), remote-code loading."""
    reference = randomize_(build(name), seed=3)
    folder, out = tmp_path / name, tmp_path / "out"
    save_for_hf(reference, folder, safe_serialization=True)
    code, stdout, err = run_convert([folder, out, "--verify"], capsys)
    assert code == 0, err
    rows = float64_rows(stdout)
    assert rows and max(rows) <= ATOL64, stdout
    config = VitHfConfig.from_pretrained(out)  # config.json holds the non-default fields only
    expected = FAMILIES[name][1]
    assert {k: getattr(config, k) for k in expected} == expected
    assert_matches_timm(out, name, reference.state_dict())
    assert_exports_back(out, reference, tmp_path)


def assert_exports_back(out: Path, reference: torch.nn.Module, tmp_path: Path) -> None:
    """`python -m convert.to_timm`: OUT.json rebuilds a timm model (Eva, or VisionTransformer with its norm / MLP
    objects) whose own state dict the exported file fills exactly (strict), bit-identical where the original's keys
    are kept, and which computes what the original does. (vit_hf fuses q/k/v and gate/up; timm's fused layout is the
    one exported, so an original with separate projections comes back fused: the same numbers, other keys.)"""
    from safetensors.torch import load_file

    target = tmp_path / "back" / "timm.safetensors"
    assert to_timm.main([str(out), str(target)]) == 0
    back, state = load_file(str(target)), reference.state_dict()
    rebuilt = to_timm.build_timm_model(target.with_suffix(".json")).eval()
    rebuilt.load_state_dict(back, strict=True)
    kept = set(back) & set(state)
    assert len(kept) >= len(back) // 2
    for key in kept:
        assert torch.equal(back[key], state[key]), key
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.double()(x.double()), reference.double().eval()(x.double()), rtol=0,
                                   atol=ATOL64)


@pytest.mark.slow
def test_state_dict_file_with_model_name(tmp_path, capsys):
    """A state-dict file, named with --model-name (the only way to give RoPE's settings, which the weights do not
    hold): a real-size DINOv3-S/16, converted for 64 px and verified in float64 by the CLI, then loaded as remote code
    and compared with timm at 64 px and at 80x48 (DINOv3 runs at any size)."""
    from safetensors.torch import save_file

    reference = randomize_(timm.create_model("vit_small_patch16_dinov3", pretrained=False), seed=4)
    src = tmp_path / "dinov3_s16.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(src))
    out = tmp_path / "out"
    code, stdout, err = run_cli_captured(
        convert_timm, [src, out, "--model-name", "vit_small_patch16_dinov3", "--image-size", "64", "--verify"], capsys)
    assert code == 0, err
    assert max(float64_rows(stdout)) <= ATOL64, stdout
    model = AutoModelForImageClassification.from_pretrained(out, trust_remote_code=True).double().eval()
    assert model.config.rope_type == "dinov3" and model.config.image_size == 64
    reference = reference.double().eval()
    for hw in ((64, 64), (80, 48)):
        x = torch.randn(2, 3, *hw, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        with torch.no_grad():
            torch.testing.assert_close(model(pixel_values=x).logits, reference(x), rtol=0, atol=ATOL64)


def test_unsupported_variant_is_one_line(tmp_path, capsys):
    """A variant whose feature vit_hf lacks (timm's parallel ViT-22B-style block): one line naming it, exit 2,
    nothing written."""
    folder = tmp_path / "pwee"
    save_for_hf(timm.create_model("vit_pwee_patch16_reg1_gap_256", pretrained=False, **TINY), folder,
                safe_serialization=True)
    code, _, err = run_convert([folder, tmp_path / "out"], capsys)
    assert code == 2 and err.count("\n") == 1 and "ParallelScalingBlock" in err, err
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------------------------------
# A Hub id (the loopback Hub): timm's own loader of the same repo is the oracle; the processor is timm's transform
# ----------------------------------------------------------------------------------------------------------------------

HUB_REPOS = {"tester/vit_small_patch16_dinov3.tiny": "vit_small_patch16_dinov3",
             "tester/eva02_tiny_patch14_224.tiny": "eva02_tiny_patch14_224",
             "tester/vit_pe_core_tiny_patch16_384.tiny": "vit_pe_core_tiny_patch16_384"}


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("family_repos")
    with HubServer(tokens=TOKENS) as server, pytest.MonkeyPatch.context() as mp:
        point_client_at(mp, server, root / "pusher_cache")
        api = HfApi(endpoint=server.endpoint, token=TOKEN)
        for repo, name in HUB_REPOS.items():
            save_for_hf(randomize_(build(name), seed=5), root / name, safe_serialization=True)
            publish_folder(api, root / name, repo)
        yield server


@pytest.mark.parametrize("repo", sorted(HUB_REPOS))
def test_hub_repo_converts_exactly(hub, repo, tmp_path, capsys, monkeypatch):
    from timm.data import create_transform, resolve_data_config

    from vit_hf import VitHfImageProcessor

    point_client_at(monkeypatch, hub, tmp_path / "cache")
    out = tmp_path / "out"
    code, stdout, err = run_convert([repo, out, "--verify"], capsys)
    assert code == 0, err
    assert max(float64_rows(stdout)) <= ATOL64, stdout
    oracle = timm.create_model(f"hf-hub:{repo}", pretrained=True).double().eval()
    model = AutoModelForImageClassification.from_pretrained(out, trust_remote_code=True).double().eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values=x).logits, oracle(x), rtol=0, atol=ATOL64)
    # timm's eval transform of the repo's pretrained_cfg at the model's size (a tiny dynamic-size DINOv3 keeps the
    # real one's 256 px in its pretrained_cfg; the converter sizes the processor for the converted model)
    processor = VitHfImageProcessor.from_pretrained(out)
    data_cfg = resolve_data_config({"input_size": (3, *model.config.image_hw)}, model=oracle)
    assert_same_pixels(processor, create_transform(**data_cfg), [(300, 200), (97, 181)])
