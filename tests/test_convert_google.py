"""Google .npz -> vit_hf conversion: every published layout, against an independent Flax oracle and timm's loader.

References:
- `tests/flax_oracle.py`: the suite's own float64 numpy forward pass in Flax layout (GELU tanh, as JAX trained it);
- timm 1.0.31's npz loader (`VisionTransformer.load_pretrained` -> `_load_weights`) for the files it can read,
  built with the arguments the file implies; timm uses exact GELU, so those comparisons convert with `gelu="exact"`.
Tolerance 1e-10 in float64: catches LayerNorm eps (1e-12 vs 1e-6) and GELU-variant mistakes, which 1e-3 would not.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_cli_captured

from convert.common import ConversionError
from convert.google import convert_npz, main
from tests import flax_oracle
from tests.npz_factory import BY_NAME, IMG, VARIANTS, D, Variant, make_params, write_npz
from vit_hf import VitHfConfig, VitHfImageProcessor
from vit_hf.registration import unregistered

ATOL = 1e-10
TIMM_VARIANTS = [v for v in VARIANTS if v.timm]


@pytest.fixture(scope="module")
def npz_dir(tmp_path_factory) -> Path:
    """Every variant written once, with np.savez, as users receive them."""
    folder = tmp_path_factory.mktemp("google_npz")
    for v in VARIANTS:
        write_npz(folder / f"{v.name}.npz", make_params(v))
    return folder


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    return np.random.default_rng(123).standard_normal((2, 3, IMG, IMG))


def _logits(model, pixels: np.ndarray) -> np.ndarray:
    model = model.double().eval()
    with torch.no_grad():
        return model(torch.from_numpy(pixels)).logits.numpy()


def _timm_reference(variant: Variant, path: Path):
    timm_vit = pytest.importorskip("timm.models.vision_transformer")
    model = timm_vit.VisionTransformer(**variant.timm_args)
    assert model.blocks[0].mlp.fc1.out_features == 160  # mlp_ratio truncation (pitfall P16)
    model.load_pretrained(str(path), prefix=variant.prefix)  # -> _load_weights; float32, then cast
    return model.double().eval()


# ----------------------------------------------------------------------------------------------------------------------
# Every layout: converter == oracle (tanh GELU)
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
def test_every_layout_matches_flax_oracle(variant: Variant, npz_dir: Path, pixels: np.ndarray):
    with np.load(npz_dir / f"{variant.name}.npz") as npz:
        model, processor, info = convert_npz(npz, pool=variant.cli_pool)
        reference = flax_oracle.forward_variant(npz, variant, pixels, approximate_gelu=True)
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size) == (D, 3, 4, 160)
    assert cfg.hidden_act == "gelu_pytorch_tanh" and cfg.layer_norm_eps == 1e-6
    assert cfg.pos_embed_interpolation == "google"
    assert info["prefix"] == variant.prefix and info["scan"] == variant.scan and info["bf16"] == variant.bf16
    assert info["pos_embed_type"] == ("sincos2d" if variant.pos == "sincos2d" else "learned")
    assert processor.image_mean == [0.5] * 3 and processor.image_std == [0.5] * 3 and processor.crop_pct == 1.0
    if variant.pos != "sincos2d":
        assert cfg.image_size == IMG and processor.size == {"height": IMG, "width": IMG}
    ours = _logits(model, pixels)
    np.testing.assert_allclose(ours, reference, rtol=0, atol=ATOL)
    assert np.abs(reference).max() > 0.5  # the comparison is on visible numbers


def test_oracle_is_sensitive_to_gelu_and_eps(npz_dir: Path, pixels: np.ndarray):
    """The 1e-10 tolerance discriminates the errors it is meant to catch (P1, P2)."""
    v = BY_NAME["bv_map_params"]
    with np.load(npz_dir / f"{v.name}.npz") as npz:
        tanh = flax_oracle.forward_variant(npz, v, pixels, approximate_gelu=True)
        exact = flax_oracle.forward_variant(npz, v, pixels, approximate_gelu=False)
        model, _, _ = convert_npz(npz)
    assert np.abs(tanh - exact).max() > 1e-5
    model.config.layer_norm_eps = 1e-12
    for module in model.modules():
        if isinstance(module, torch.nn.LayerNorm):
            module.eps = 1e-12
    assert np.abs(_logits(model, pixels) - tanh).max() > 1e3 * ATOL


# ----------------------------------------------------------------------------------------------------------------------
# timm-loadable files: converter (exact GELU) == timm, and the oracle == timm
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", TIMM_VARIANTS, ids=lambda v: v.name)
def test_timm_loadable_layouts_match_timm(variant: Variant, npz_dir: Path, pixels: np.ndarray):
    path = npz_dir / f"{variant.name}.npz"
    timm_model = _timm_reference(variant, path)
    with torch.no_grad():
        timm_logits = timm_model(torch.from_numpy(pixels)).numpy()
    with np.load(path) as npz:
        model, _, _ = convert_npz(npz, gelu="exact")
        oracle = flax_oracle.forward_variant(npz, variant, pixels, approximate_gelu=False)
    assert model.config.hidden_act == "gelu"
    np.testing.assert_allclose(_logits(model, pixels), timm_logits, rtol=0, atol=ATOL)
    np.testing.assert_allclose(oracle, timm_logits, rtol=0, atol=ATOL)  # sanity of the oracle itself


def test_gap_needs_fc_norm_false_in_timm(npz_dir: Path, pixels: np.ndarray):
    """P3: timm's default fc_norm for 'avg' is a different function; it must not be the GAP reference."""
    timm_vit = pytest.importorskip("timm.models.vision_transformer")
    v = BY_NAME["vitjax_gap"]
    args = {k: a for k, a in v.timm_args.items() if k != "fc_norm"}
    wrong = timm_vit.VisionTransformer(**args)
    wrong.load_pretrained(str(npz_dir / f"{v.name}.npz"))
    with np.load(npz_dir / f"{v.name}.npz") as npz:
        oracle = flax_oracle.forward_variant(npz, v, pixels, approximate_gelu=False)
    with torch.no_grad():
        assert np.abs(wrong.double().eval()(torch.from_numpy(pixels)).numpy() - oracle).max() > 1e-3


# ----------------------------------------------------------------------------------------------------------------------
# Positions: resampling with Google's algorithm, cls-slot conventions
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["vitjax_token", "bv_tok_params", "bv_gap_params"])
def test_image_size_resamples_like_scipy_zoom(name: str, pixels: np.ndarray):
    from scipy import ndimage

    v = Variant(f"{name}_6x6", BY_NAME[name].naming, BY_NAME[name].pool, BY_NAME[name].pos,
                prefix=BY_NAME[name].prefix, grid=6)
    params = make_params(v, seed=7)
    key = v.prefix + ("Transformer/posembed_input/pos_embedding" if v.pos == "posembed_input" else "pos_embedding")
    model, processor, info = convert_npz(params, image_size=IMG)
    slot = int(v.pool == "tok" and v.pos == "posembed_input")
    table = params[key].astype(np.float64)
    grid = ndimage.zoom(table[0, slot:].reshape(6, 6, D), (4 / 6, 4 / 6, 1), order=1)  # vit_jax interpolate_posembed
    expected = np.concatenate([table[:, :slot], grid.reshape(1, 16, D)], axis=1)
    ours = model.vit.pos_embed.detach().double().numpy()
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-6)
    assert info["resampled_from"] == (6, 6) and model.config.image_size == IMG and processor.size["height"] == IMG
    # and the model at the new size is the Flax model with the zoomed table
    zoomed = dict(params, **{key: expected})
    reference = flax_oracle.forward_variant(zoomed, v, pixels)
    np.testing.assert_allclose(_logits(model, pixels), reference, rtol=0, atol=1e-5)


@pytest.mark.parametrize("size", [(IMG, IMG * 3 // 2), "32x48"])
def test_non_square_image_size_resamples_each_axis_like_scipy_zoom(size):
    """--image-size HxW: the 6x6 table becomes 4x6 with zoom factors per axis; the model is the Flax model with it."""
    from scipy import ndimage

    v = Variant("vitjax_token_6x6", BY_NAME["vitjax_token"].naming, "tok", "posembed_input",
                prefix=BY_NAME["vitjax_token"].prefix, grid=6)
    params = make_params(v, seed=11)
    key = v.prefix + "Transformer/posembed_input/pos_embedding"
    model, processor, info = convert_npz(params, image_size=size)
    table = params[key].astype(np.float64)
    grid = ndimage.zoom(table[0, 1:].reshape(6, 6, D), (4 / 6, 6 / 6, 1), order=1)
    expected = np.concatenate([table[:, :1], grid.reshape(1, 24, D)], axis=1)
    np.testing.assert_allclose(model.vit.pos_embed.detach().double().numpy(), expected, rtol=0, atol=1e-6)
    assert model.config.image_hw == (32, 48) and processor.size == {"height": 32, "width": 48}
    assert info["resampled_from"] == (6, 6)
    x = np.random.default_rng(3).standard_normal((2, 3, 32, 48))
    reference = flax_oracle.forward_variant(dict(params, **{key: expected}), v, x)
    np.testing.assert_allclose(_logits(model, x), reference, rtol=0, atol=1e-5)


def test_cls_slot_table_is_kept_exact_for_old_big_vision(pixels: np.ndarray):
    """An s^2+1 table under big_vision names is a cls slot (bv fix_old_checkpoints), never resampled away."""
    v = BY_NAME["bv_old_pos_tok"]
    model, _, info = convert_npz(make_params(v))
    assert info["cls_slot"] and model.config.no_embed_class is False
    assert tuple(model.vit.pos_embed.shape) == (1, 17, D)


def test_big_vision_tok_has_no_cls_slot():
    model, _, info = convert_npz(make_params(BY_NAME["bv_tok_params"]))
    assert not info["cls_slot"] and model.config.no_embed_class is True and model.config.class_token


# ----------------------------------------------------------------------------------------------------------------------
# Refusals: exit non-zero, name the key / feature, write nothing
# ----------------------------------------------------------------------------------------------------------------------


def _broken(kind: str) -> tuple[dict, str]:
    params = make_params(BY_NAME["vitjax_token"])
    if kind == "unknown key":
        params["Transformer/encoderblock_1/MlpBlock_3/Dense_2/kernel"] = np.ones((4, 4), np.float32)
        return params, "Transformer/encoderblock_1/MlpBlock_3/Dense_2/kernel"
    if kind == "missing key":
        del params["Transformer/encoderblock_2/LayerNorm_2/bias"]
        return params, "Transformer/encoderblock_2/LayerNorm_2/bias"
    if kind == "missing qkv part":
        del params["Transformer/encoderblock_0/MultiHeadDotProductAttention_1/value/kernel"]
        return params, "Transformer/encoderblock_0/MultiHeadDotProductAttention_1/value/kernel"
    if kind == "wrong shape":
        params["Transformer/encoderblock_1/MlpBlock_3/Dense_1/kernel"] = np.ones((160, 32), np.float32)
        return params, "Transformer/encoderblock_1/MlpBlock_3/Dense_1/kernel"
    if kind == "unknown layout":
        return {f"model/{k}": a for k, a in params.items()}, "unknown layout"
    if kind == "hybrid":
        params["conv_root/kernel"] = np.ones((7, 7, 3, 64), np.float32)
        params["gn_root/scale"] = np.ones((64,), np.float32)
        return params, "conv_root"
    if kind == "bad pos table":
        params["Transformer/posembed_input/pos_embedding"] = np.ones((1, 15, D), np.float32)
        return params, "Transformer/posembed_input/pos_embedding"
    raise AssertionError(kind)


REFUSALS = ["unknown key", "missing key", "missing qkv part", "wrong shape", "unknown layout", "hybrid",
            "bad pos table"]


@pytest.mark.parametrize("kind", REFUSALS)
def test_refusals_name_the_problem_and_write_nothing(kind: str, tmp_path: Path, capsys):
    params, needle = _broken(kind)
    with pytest.raises(ConversionError, match=needle.replace("/", ".")):
        convert_npz(params)
    src, out = write_npz(tmp_path / "bad.npz", params), tmp_path / "out"
    from convert.common import run_cli

    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, [str(src), str(out)])
    assert exit_info.value.code != 0
    assert needle in capsys.readouterr().err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bad.npz"]


def test_pool_override_is_checked():
    params = make_params(BY_NAME["bv_gap_params"])
    with pytest.raises(ConversionError, match="cls"):
        convert_npz(params, pool="tok")
    with pytest.raises(ConversionError, match="MAPHead_0"):
        convert_npz(params, pool="map")
    model, _, info = convert_npz(params, pool="0")
    assert model.config.pooling == "token" and not model.config.class_token and info["pool"] == "0"


def test_cli_two_tower_suffix_in_process(npz_dir: Path, tmp_path: Path):
    """`path.npz:img` selects the image tower of a two-tower file; the txt/ tower is left out, and said so."""
    out = tmp_path / "img_tower"
    assert main([f"{npz_dir / 'bv_img_map.npz'}:img", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["pooling"] == "map"
    assert "outside `img/` ignored" in (out / "README.md").read_text()


def test_two_tower_suffix_and_ambiguous_prefix(tmp_path: Path):
    v = BY_NAME["bv_img_map"]
    params = make_params(v)
    model, _, info = convert_npz(params, subtree="img")
    assert info["prefix"] == "img/" and info["ignored_keys"] == ["b", "t", "txt/Embed_0/embedding", "txt/head/kernel"]
    both = dict(params, **{f"params/{k}": a for k, a in params.items() if k.startswith("img/")})
    with pytest.raises(ConversionError, match="--prefix"):
        convert_npz(both)
    assert convert_npz(both, prefix="params/img")[2]["prefix"] == "params/img/"


# ----------------------------------------------------------------------------------------------------------------------
# CLI end to end (subprocess), with --verify, and loading the folder as remote code
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, extra, reference",
    [
        ("vitjax_token_opt_target", ["--gelu", "exact"], "timm"),  # timm-loadable: verified against timm and numpy
        # bf16 + scan + MAP + Google resampling of the positions: not timm-loadable, verified by the numpy pass
        ("bv_bf16_scan_map", ["--image-size", "48"], "numpy"),
    ],
)
@pytest.mark.slow
def test_cli_verify_writes_loadable_folder(name: str, extra: list[str], reference: str, npz_dir: Path,
                                           tmp_path: Path, pixels: np.ndarray, capsys):
    """`python -m convert.google NPZ OUT --verify` (its entry point, in-process), then the folder loads as remote code
    and computes what the converter's model computes."""
    from transformers import AutoModelForImageClassification

    from convert import google as convert_google

    out = tmp_path / name
    argv = [npz_dir / f"{name}.npz", out, "--verify", *extra]
    code, stdout, stderr = run_cli_captured(convert_google, argv, capsys)
    assert code == 0, stderr
    assert ("| timm 1.x" in stdout) == (reference == "timm") and "| numpy Flax forward" in stdout
    for name_ in ("config.json", "model.safetensors", "preprocessor_config.json", "README.md", "modeling_vit_hf.py"):
        assert (out / name_).is_file()
    card = (out / "README.md").read_text()
    assert "## Parity report" in card and "convert.google" in card
    config = VitHfConfig.from_pretrained(out)  # config.json holds only the non-default fields
    assert config.pos_embed_interpolation == "google" and config.layer_norm_eps == 1e-6
    preprocessor = VitHfImageProcessor.from_pretrained(out)
    assert preprocessor.image_mean == [0.5] * 3 and preprocessor.crop_pct == 1.0

    with unregistered():  # an installed vit_hf would otherwise build the folder with its own classes
        loaded = AutoModelForImageClassification.from_pretrained(out, trust_remote_code=True)
    assert type(loaded).__module__ != "vit_hf.modeling_vit_hf"  # the folder's copy, not this package
    with np.load(npz_dir / f"{name}.npz") as npz:
        model, _, _ = convert_npz(npz, gelu="exact" if "exact" in extra else "tanh",
                                  image_size=int(extra[1]) if "--image-size" in extra else None)
    size = model.config.image_size
    x = np.random.default_rng(5).standard_normal((2, 3, size, size))
    np.testing.assert_allclose(_logits(loaded, x), _logits(model, x), rtol=0, atol=1e-12)


def test_verify_reports_a_wrong_conversion(npz_dir: Path):
    """--verify's check fails on a model that differs from the file (fault injected after conversion)."""
    from convert.google import _convert, verify

    path = npz_dir / "vitjax_token.npz"
    with np.load(path) as npz:
        conv = _convert(npz)
        rows, ok = verify(conv, str(path))
        assert ok and {r["reference"].split()[0] for r in rows} == {"timm", "numpy"}
        assert all(r["max_abs_diff"] < 1e-10 for r in rows if r["dtype"] == "float64")
        with torch.no_grad():
            conv.model.vit.blocks[1].norm2.weight.mul_(1.001)
        rows, ok = verify(conv, str(path))
    assert not ok and all(not r["passed"] for r in rows if r["dtype"] == "float64")


# ----------------------------------------------------------------------------------------------------------------------
# CLI input checks: what is not an .npz, numbers, and a source inside OUT_DIR (exit 2, nothing written)
# ----------------------------------------------------------------------------------------------------------------------


def _run_cli(argv: list, capsys) -> tuple[int, str]:
    from convert.common import run_cli

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, [str(a) for a in argv])
    return exit_info.value.code, capsys.readouterr().err


def _safetensors(path: Path) -> None:
    from safetensors.numpy import save_file

    save_file({"embedding/kernel": np.ones((8, 8, 3, D), np.float32)}, str(path))


NOT_NPZ = {
    "weights.safetensors": (_safetensors, "not an .npz file (it looks like a .safetensors file"),
    "empty.npz": (lambda p: p.write_bytes(b""), "not an .npz file (it is empty)"),
    "single.npy": (lambda p: np.save(p, np.ones(3, np.float32)), "not an .npz file (it is a single .npy array)"),
    "a_pickle.npz": (lambda p: p.write_bytes(b"\x80\x04\x95anything"), "not an .npz file"),
}


@pytest.mark.parametrize("name", sorted(NOT_NPZ))
def test_not_an_npz_is_named_as_such(name: str, tmp_path: Path, capsys):
    write, needle = NOT_NPZ[name]
    src = tmp_path / name
    write(src)
    code, err = _run_cli([src, tmp_path / "out"], capsys)
    assert code == 2 and needle in err and "pickled data" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_cli_takes_a_non_square_image_size(npz_dir: Path, tmp_path: Path, capsys):
    code, err = _run_cli([npz_dir / "vitjax_token.npz", tmp_path / "out", "--image-size", "32x48"], capsys)
    assert code == 0, err
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["image_size"] == [32, 48]
    preprocessor = json.loads((tmp_path / "out" / "preprocessor_config.json").read_text())
    assert preprocessor["size"] == {"height": 32, "width": 48}


@pytest.mark.parametrize("size", ["0", "-16"])
def test_image_size_must_be_positive(size: str, npz_dir: Path, tmp_path: Path, capsys):
    code, err = _run_cli([npz_dir / "vitjax_token.npz", tmp_path / "out", "--image-size", size], capsys)
    assert code == 2 and "argument --image-size: image size" in err and repr(size) in err, err
    assert list(tmp_path.iterdir()) == []


def test_source_inside_out_dir_is_refused(npz_dir: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    src = out / "ckpt.npz"
    src.write_bytes((npz_dir / "vitjax_token.npz").read_bytes())
    code, err = _run_cli([src, out], capsys)
    assert code == 2 and "inside the output folder" in err, err
    assert [p.name for p in out.iterdir()] == ["ckpt.npz"]
    assert src.read_bytes() == (npz_dir / "vitjax_token.npz").read_bytes()


def test_cli_verify_failure_is_one_line_exit_1_and_writes_nothing(npz_dir: Path, tmp_path: Path, capsys,
                                                                  monkeypatch):
    """A conversion --verify finds wrong (fault injected into the built model): exit 1, one line after the parity
    table, nothing written."""
    import convert.google as convert_google

    build = convert_google.build_model

    def off_by_a_little(*args, **kwargs):
        model = build(*args, **kwargs)
        with torch.no_grad():
            model.vit.blocks[1].norm2.weight.mul_(1.001)
        return model

    monkeypatch.setattr(convert_google, "build_model", off_by_a_little)
    code, err = _run_cli([npz_dir / "vitjax_token.npz", tmp_path / "out", "--verify"], capsys)
    assert code == 1 and err.count("\n") == 1, err
    assert err.startswith("error: verification failed, nothing written: vitjax_token.npz: the converted model is "
                          "outside tolerance")
    assert not (tmp_path / "out").exists()
