"""convert.timm and convert.to_timm against real timm models.

Every variant: a tiny timm VisionTransformer with every tensor randomised is saved the way users get it, converted by
the CLI with --verify, loaded back with `AutoModelForImageClassification.from_pretrained(..., trust_remote_code=True)`
and compared with the in-memory timm model in float64 (atol 1e-10); then exported back to timm bit for bit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch

pytest.importorskip("timm")  # timm is in the dev extra; without it there is no reference to convert from

import timm  # noqa: E402
from helpers import run_cli_captured  # noqa: E402
from images import assert_same_pixels  # noqa: E402
from timm.layers import resample_abs_pos_embed  # noqa: E402
from timm.models.vision_transformer import VisionTransformer  # noqa: E402
from timm_variants import (  # noqa: E402
    BASE_KWARGS,
    VARIANTS,
    C,
    D,
    H,
    K,
    M,
    Variant,
    make_timm,
    randomize_,
    save_state,
)
from transformers import AutoModelForImageClassification  # noqa: E402

from convert import timm as convert_timm  # noqa: E402
from convert import to_timm  # noqa: E402
from convert.common import ConversionError  # noqa: E402
from vit_hf import resample_position_embedding  # noqa: E402
from vit_hf.registration import unregistered  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
ATOL64 = 1e-10

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny matrices run faster on one thread


def subprocess_env() -> dict[str, str]:
    # os.environ carries conftest's offline flags and private HF_HOME into the child
    return dict(os.environ, OMP_NUM_THREADS="1")


def run_module(module: str, *args, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m module args...` as a real process from the repository root."""
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_cli_inprocess(module, argv: list, capsys) -> tuple[int, str]:
    """`run_cli_captured` without stdout: (exit code, stderr)."""
    code, _, err = run_cli_captured(module, argv, capsys)
    return code, err


def pixels(hw: tuple[int, int], seed: int = 1, batch: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, C, *hw, generator=g, dtype=torch.float64)


def timm_outputs(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits or features when headless, pooled features) of a timm model in float64."""
    model = model.double()
    with torch.no_grad():
        feats = model.forward_features(x)
        return model.forward_head(feats), model.forward_head(feats, pre_logits=True)


def assert_matches_timm(out_dir: Path, reference: torch.nn.Module, hw: tuple[int, int], eps: float = 1e-6) -> None:
    """The saved folder, loaded as remote code, reproduces the timm model in float64."""
    with unregistered():  # an installed vit_hf would otherwise build the folder with its own classes
        model = AutoModelForImageClassification.from_pretrained(out_dir, trust_remote_code=True)
    assert type(model).__module__.startswith("transformers_modules"), "not loaded through the folder's remote code"
    model = model.double().eval()
    x = pixels(hw)
    expected_logits, expected_pooled = timm_outputs(reference, x)
    with torch.no_grad():
        out = model(pixel_values=x)
        pooled = model.vit(pixel_values=x).pooler_output
    torch.testing.assert_close(out.logits, expected_logits, rtol=0, atol=ATOL64)
    torch.testing.assert_close(pooled, expected_pooled, rtol=0, atol=ATOL64)
    assert model.config.layer_norm_eps == eps
    assert model.config.pos_embed_interpolation == "timm"
    assert model.vit.blocks[0].mlp.fc1.out_features == M


def assert_round_trip(out_dir: Path, expected_state: dict[str, torch.Tensor], tmp_path: Path, reference) -> None:
    """vit_hf folder -> timm: same keys, torch.equal tensors, and the JSON kwargs rebuild the timm model."""
    from safetensors.torch import load_file

    target = tmp_path / "back" / "timm.safetensors"
    assert to_timm.main([str(out_dir), str(target)]) == 0
    back = load_file(str(target))
    assert set(back) == set(expected_state)
    for key, value in expected_state.items():
        assert back[key].dtype == value.dtype and torch.equal(back[key], value), key
    kwargs = json.loads(target.with_suffix(".json").read_text())
    rebuilt = VisionTransformer(**kwargs).eval()
    rebuilt.load_state_dict(back, strict=True)
    x = pixels(tuple(reference.patch_embed.img_size), seed=2)
    torch.testing.assert_close(timm_outputs(rebuilt, x)[0], timm_outputs(reference, x)[0], rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------------------------------
# Every variant, through the CLI entry point, remote-code loading and the export back
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS, ids=[v.name for v in VARIANTS])
def test_variant_converts_exactly(variant: Variant, tmp_path: Path, capsys):
    reference = make_timm(variant)
    state = {k: v.clone() for k, v in reference.state_dict().items()}
    src = save_state(state, tmp_path / "ckpt", variant.fmt)
    out = tmp_path / f"vit_{variant.name}"
    code, err = run_cli_inprocess(convert_timm, [str(src), str(out), *variant.flags, "--verify"], capsys)
    assert code == 0, err
    card = (out / "README.md").read_text()
    assert "## Parity report" in card and "float64" in card and src.name in card
    assert_matches_timm(out, reference, variant.image_hw)
    assert_round_trip(out, state, tmp_path, reference)


def test_legacy_deit3_gamma_keys(tmp_path: Path, capsys):
    """DeiT-3's `blocks.i.gamma_1/gamma_2` (pre-LayerScale-module timm) load as ls1/ls2; export uses the new names."""
    variant = Variant("deit3_legacy", dict(init_values=1e-6, no_embed_class=True), ("--num-heads", str(H)))
    reference = make_timm(variant)
    state = reference.state_dict()
    legacy = {k.replace(".ls1.gamma", ".gamma_1").replace(".ls2.gamma", ".gamma_2"): v for k, v in state.items()}
    assert any(".gamma_1" in k for k in legacy)
    src = save_state(legacy, tmp_path / "deit3", "torch")
    out = tmp_path / "vit_deit3"
    code, err = run_cli_inprocess(
        convert_timm, [str(src), str(out), "--num-heads", "4", "--source-image-size", "32", "--verify"], capsys
    )
    assert code == 0, err
    assert "gamma_1/gamma_2" in (out / "README.md").read_text()
    assert_matches_timm(out, reference, (32, 32))
    assert_round_trip(out, state, tmp_path, reference)

    # the same checkpoint at 48x48: a patches-only table is resampled without prefix rows, as timm does
    out48 = tmp_path / "vit_deit3_48"
    argv = [str(src), str(out48), "--num-heads", "4", "--source-image-size", "32", "--image-size", "48", "--verify"]
    code, err = run_cli_inprocess(convert_timm, argv, capsys)
    assert code == 0, err
    pos48 = resample_abs_pos_embed(state["pos_embed"], new_size=[6, 6], old_size=[4, 4], num_prefix_tokens=0)
    at_48 = VisionTransformer(**{**BASE_KWARGS, **variant.timm_kwargs, "img_size": 48}).eval()
    at_48.load_state_dict({**state, "pos_embed": pos48})
    model = AutoModelForImageClassification.from_pretrained(out48, trust_remote_code=True).double().eval()
    torch.testing.assert_close(model.vit.pos_embed.float(), pos48, rtol=0, atol=1e-6)
    x = pixels((48, 48))
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values=x).logits, timm_outputs(at_48, x)[0], rtol=0, atol=1e-6)


def test_representation_layer(tmp_path: Path):
    """timm <= 0.5 `pre_logits.fc` (tanh) is kept; the reference is timm's pooled features, then tanh(Linear), head."""
    reference = make_timm(Variant("rep", dict(num_classes=0)))
    g = torch.Generator().manual_seed(5)
    rep = 48
    state = dict(reference.state_dict())
    state.update(
        {
            "pre_logits.fc.weight": 0.2 * torch.randn(rep, D, generator=g),
            "pre_logits.fc.bias": 0.2 * torch.randn(rep, generator=g),
            "head.weight": 0.2 * torch.randn(K, rep, generator=g),
            "head.bias": 0.2 * torch.randn(K, generator=g),
        }
    )
    model, processor, info = convert_timm.convert_timm_state_dict(state, num_heads=H, verify=True)
    assert model.config.representation_size == rep
    float64 = [r for r in info["parity"] if r["dtype"] == "float64"]
    assert len(float64) == 1 and float64[0]["max_abs_diff"] < 1e-9
    out = tmp_path / "vit_rep"
    from vit_hf.hub import save_hub_folder

    save_hub_folder(model, processor, out)
    x = pixels((32, 32))
    _, features = timm_outputs(reference, x)
    s64 = {k: v.double() for k, v in state.items()}
    expected = torch.nn.functional.linear(
        torch.tanh(torch.nn.functional.linear(features, s64["pre_logits.fc.weight"], s64["pre_logits.fc.bias"])),
        s64["head.weight"],
        s64["head.bias"],
    )
    loaded = AutoModelForImageClassification.from_pretrained(out, trust_remote_code=True).double().eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values=x).logits, expected, rtol=0, atol=ATOL64)
    with pytest.raises(ConversionError, match="representation layer"):
        to_timm.main([str(out), str(tmp_path / "back.safetensors")])
    assert not (tmp_path / "back.safetensors").exists()


# ----------------------------------------------------------------------------------------------------------------------
# The real CLI in a subprocess (representative subset)
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_subprocess_round_trip(tmp_path: Path, capsys):
    """`python -m convert.timm ... --verify` as a real process (MAP pooling, a checkpoint wrapped under `model`), then
    `convert.to_timm` back through its entry point in this process (a second interpreter start would test the same
    `run_cli`). Every other variant runs the entry point in-process too."""
    variant = next(v for v in VARIANTS if v.name == "map")
    reference = make_timm(variant, seed=3)
    state = {k: v.clone() for k, v in reference.state_dict().items()}
    src = save_state(state, tmp_path / "ckpt", "torch_model")
    out = tmp_path / "vit_cli_map"
    target = tmp_path / "exported.safetensors"
    proc = run_module("convert.timm", src, out, *variant.flags, "--verify")
    assert proc.returncode == 0, proc.stderr
    assert "float64" in proc.stdout and "max abs diff" in proc.stdout
    code, _, err = run_cli_captured(to_timm, [out, target], capsys)
    assert code == 0, err
    assert_matches_timm(out, reference, variant.image_hw)
    from safetensors.torch import load_file

    back = load_file(str(target))
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)
    rebuilt = VisionTransformer(**json.loads(target.with_suffix(".json").read_text()))
    rebuilt.load_state_dict(back, strict=True)


# ----------------------------------------------------------------------------------------------------------------------
# Refusals: exit 2, a message naming the key / feature / flag, nothing written
# ----------------------------------------------------------------------------------------------------------------------


class NotATensor:
    """A custom class inside a checkpoint: unpickling it would need code execution."""

    def __init__(self):
        self.payload = "anything"


def _token_state() -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in make_timm(VARIANTS[0], seed=7).state_dict().items()}


def _unknown_key(state):
    state["blocks.1.attn.mystery.weight"] = torch.ones(3)
    return state, "blocks.1.attn.mystery.weight"


def _missing_key(state):
    del state["blocks.2.mlp.fc2.bias"]
    return state, "blocks.2.mlp.fc2.bias"


def _wrong_shape(state):
    state["blocks.1.norm2.weight"] = torch.ones(D + 1)
    return state, "blocks.1.norm2.weight"


def _gated_attention(state):
    # a sigmoid gate on the attention output (timm gated_attn): scale_attn_norm, refused here before, now converts
    # (attn_inner_norm, tests/test_families_timm.py)
    return dict(state, **{"blocks.0.attn.gate.weight": torch.zeros(D, D)}), "gated attention"


def _diff_attention(_):
    model = randomize_(VisionTransformer(**BASE_KWARGS, attn_layer="diff"))
    return dict(model.state_dict()), "differential attention"


def _no_heads_flag(state):
    return state, "--num-heads"


def _patches_only_table_ambiguous(_):
    # 16 rows with a class token: a 4x4 table without prefix slots, or a 3x5 grid with the cls slot
    model = randomize_(VisionTransformer(**BASE_KWARGS, no_embed_class=True))
    return dict(model.state_dict()), "--source-image-size"


def _pool_ambiguous(_):
    model = randomize_(VisionTransformer(**BASE_KWARGS, class_token=False, global_pool="avg", fc_norm=False))
    return dict(model.state_dict()), "--global-pool"


REFUSALS = {
    "unknown_key": (_unknown_key, ["--num-heads", "4"]),
    "missing_key": (_missing_key, ["--num-heads", "4"]),
    "wrong_shape": (_wrong_shape, ["--num-heads", "4"]),
    "gated_attention": (_gated_attention, ["--num-heads", "4"]),
    "diff_attention": (_diff_attention, ["--num-heads", "4"]),
    "heads_not_inferable": (_no_heads_flag, []),
    "pooling_not_inferable": (_pool_ambiguous, ["--num-heads", "4"]),
    "grid_not_inferable": (_patches_only_table_ambiguous, ["--num-heads", "4"]),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refusal(case: str, tmp_path: Path, capsys):
    make, flags = REFUSALS[case]
    state, needle = make(_token_state())
    src = save_state(state, tmp_path / "bad", "safetensors")
    out = tmp_path / "out"
    code, err = run_cli_inprocess(convert_timm, [str(src), str(out), *flags, "--verify"], capsys)
    assert code == 2
    assert needle in err and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob(".out*")), "something was written"


@pytest.mark.slow
def test_refusal_subprocess_pickle_needing_code(tmp_path: Path):
    """A torch.save file holding a custom object is refused (weights_only); exit 2, nothing written."""
    src = tmp_path / "evil.pth"
    torch.save({"model": _token_state(), "extra": NotATensor()}, src)
    out = tmp_path / "out"
    proc = run_module("convert.timm", src, out, "--num-heads", "4", timeout=120)
    assert proc.returncode == 2
    assert "code execution" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


def _write_old_format_pickle(path: Path) -> None:
    # torch.save's legacy (pre-1.6, non-zip) format cannot be memory-mapped: the loader reads it a second way
    torch.save({"model": _token_state(), "extra": NotATensor()}, path, _use_new_zipfile_serialization=False)


def _write_truncated_torch_file(path: Path) -> None:
    torch.save(_token_state(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _write_integer_parameters(path: Path) -> None:
    state = _token_state()
    state["blocks.1.norm1.weight"] = torch.arange(D, dtype=torch.int32)  # right shape, wrong kind of number
    save_state(state, path.with_suffix(""), "safetensors")


# file name -> (writer, text the one-line error must contain)
UNREADABLE = {
    "old_format.pth": (_write_old_format_pickle, "needs code execution"),
    "truncated.pth": (_write_truncated_torch_file, "cannot be read as a torch.save file"),
    "empty.safetensors": (lambda p: p.write_bytes(b""), "not a readable .safetensors file"),
    "corrupt.safetensors": (lambda p: p.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all"),
                            "not a readable .safetensors file"),
    "integer.safetensors": (_write_integer_parameters, "not floating-point (a float parameter is expected): "
                                                       "blocks.1.norm1.weight (int32)"),
}


@pytest.mark.parametrize("name", sorted(UNREADABLE))
def test_unreadable_sources_are_conversion_errors(name: str, tmp_path: Path, capsys):
    """Every way a source file can be unusable ends in exit 2 and one message naming the file or key, never a
    traceback, and nothing is written."""
    write, needle = UNREADABLE[name]
    src = tmp_path / name
    write(src)
    out = tmp_path / "out"
    code, err = run_cli_inprocess(convert_timm, [src, out, "--num-heads", "4"], capsys)
    assert code == 2, err
    assert needle in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == [name], "something was written"


@pytest.mark.parametrize("where", ["model.safetensors", "checkpoints/ckpt.pth"])
def test_source_inside_out_dir_is_refused(where: str, tmp_path: Path, capsys):
    """Writing OUT_DIR would overwrite (or, replacing the folder, remove) a source that lives in it."""
    out = tmp_path / "out"
    src = out / where
    src.parent.mkdir(parents=True)
    src = save_state(_token_state(), src.with_suffix(""), "safetensors" if src.suffix == ".safetensors" else "torch")
    before = src.read_bytes()
    code, err = run_cli_inprocess(convert_timm, [src, out, "--num-heads", "4"], capsys)
    assert code == 2 and "inside the output folder" in err, err
    assert src.read_bytes() == before
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [where]


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--num-heads", "-4"], "argument --num-heads: '-4' must be a positive integer"),
        (["--num-heads", "0"], "argument --num-heads: '0' must be a positive integer"),
        (["--num-heads", "4", "--image-size", "0"], "argument --image-size: image size '0'"),
        (["--num-heads", "4", "--image-size", "32x0"], "height and width must be positive"),
        (["--num-heads", "4", "--source-image-size", "0"], "argument --source-image-size"),
        (["--num-heads", "4", "--eps", "0"], "argument --eps: '0' must be a positive number"),
    ],
)
def test_cli_numbers_must_be_positive(flags: list[str], needle: str, tmp_path: Path, capsys):
    src = save_state(_token_state(), tmp_path / "ckpt", "safetensors")
    out = tmp_path / "out"
    code, err = run_cli_inprocess(convert_timm, [src, out, *flags], capsys)
    assert code == 2 and needle in err, err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == [src.name]


# ----------------------------------------------------------------------------------------------------------------------
# CLIP-style towers: activation and eps cannot be read off the weights
# ----------------------------------------------------------------------------------------------------------------------

# OpenAI CLIP's image tower as timm builds it: pre-norm, QuickGELU, torch's LayerNorm eps 1e-5
CLIP = Variant("clip", dict(pre_norm=True, act_layer="quick_gelu", norm_layer=partial(torch.nn.LayerNorm, eps=1e-5)))
SELF_CHECK = "mapping self-check against timm built from the inferred arguments"


def test_clip_tower_needs_act_and_eps(tmp_path: Path, capsys):
    """Without --model-name, --verify builds timm from the converter's own arguments, so a wrong activation or eps
    would pass it: for a CLIP-style tower (norm_pre.*) both must be given, and the rows say what they check."""
    reference = make_timm(CLIP)
    assert reference.norm_pre.eps == 1e-5 and type(reference.blocks[0].mlp.act).__name__ == "QuickGELU"
    state = {k: v.clone() for k, v in reference.state_dict().items()}
    src = save_state(state, tmp_path / "clip", "safetensors")
    out = tmp_path / "vit_clip"
    for given in ([], ["--act", "quick_gelu"], ["--eps", "1e-5"]):
        code, err = run_cli_inprocess(convert_timm, [src, out, "--num-heads", H, "--verify", *given], capsys)
        assert code == 2, err
        assert "--act quick_gelu|gelu|gelu_tanh" in err and "--eps 1e-5|1e-6" in err and "--model-name" in err
        assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == [src.name]

    argv = [src, out, "--act", "quick_gelu", "--eps", "1e-5", "--num-heads", H, "--verify"]
    code, stdout, err = run_cli_captured(convert_timm, argv, capsys)
    assert code == 0, err
    assert_matches_timm(out, reference, CLIP.image_hw, eps=1e-5)  # the real timm model, float64, 1e-10
    label = f"{SELF_CHECK} (activation quick_gelu, eps 1e-05 assumed)"
    assert label in stdout and label in (out / "README.md").read_text()

    # Why the label: timm's defaults (GELU, 1e-6) given for the same weights pass the self-check just as well,
    # yet the model is not the checkpoint's.
    wrong, _, info = convert_timm.convert_timm_state_dict(state, num_heads=H, act="gelu", eps=1e-6, verify=True)
    assert all(SELF_CHECK in r["reference"] for r in info["parity"])
    assert max(r["max_abs_diff"] for r in info["parity"] if r["dtype"] == "float64") < 1e-9
    x = pixels(CLIP.image_hw)
    with torch.no_grad():
        diff = (wrong.double()(pixel_values=x).logits - timm_outputs(reference, x)[0]).abs().max().item()
    assert diff > 1e-3



# ----------------------------------------------------------------------------------------------------------------------
# --model-name: architecture and preprocessing from timm; head size must agree
# ----------------------------------------------------------------------------------------------------------------------

NAMED = "vit_small_patch16_224.augreg_in21k_ft_in1k"


@pytest.fixture(scope="module")
def named_state() -> dict[str, torch.Tensor]:
    """The named model's state dict with uninitialised values: these tests never run a forward pass (no --verify),
    and skipping the init keeps a 22M-parameter fixture cheap."""
    with torch.device("meta"):
        model = timm.create_model(NAMED, pretrained=False)  # the cfg ships with timm: nothing is downloaded
    return {k: v.detach() for k, v in model.to_empty(device="cpu").state_dict().items()}


def test_squash_crop_mode_processor_matches_timm():
    """CLIP 384 fine-tunes use timm's crop_mode='squash' (resize both sides, then centre crop)."""
    from timm.data import create_transform, resolve_data_config

    name = "vit_base_patch16_clip_384.laion2b_ft_in1k"
    with torch.device("meta"):
        reference = timm.create_model(name, pretrained=False)
    state = {k: v.detach() for k, v in reference.to_empty(device="cpu").state_dict().items()}
    _, processor, _ = convert_timm.convert_timm_state_dict(state, model_name=name)
    data_cfg = resolve_data_config({}, model=reference)
    assert data_cfg["crop_mode"] == "squash" and processor.crop_mode == "squash"
    timm_transform = create_transform(**data_cfg)
    assert_same_pixels(processor, timm_transform, [(500, 300), (384, 384), (181, 397)])


def test_model_name_processor_matches_timm(named_state):
    from timm.data import create_transform, resolve_data_config

    model, processor, info = convert_timm.convert_timm_state_dict(named_state, model_name=NAMED)
    reference = timm.create_model(NAMED, pretrained=False)
    timm_transform = create_transform(**resolve_data_config({}, model=reference))
    assert_same_pixels(processor, timm_transform, [(300, 200), (224, 224), (181, 97), (640, 480)])
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_attention_heads, cfg.num_hidden_layers, cfg.num_labels) == (384, 6, 12, 1000)
    assert cfg.id2label[0].startswith("tench")  # ImageNet names from timm's shipped label files
    assert info["pretrained_cfg"]["hf_hub_id"] == f"timm/{NAMED}"


def test_model_name_with_a_fine_tuned_checkpoint(tmp_path: Path, capsys):
    """A checkpoint fine-tuned to 5 classes at 64 px converts under its base model's name: num_classes and the image
    size come from the weights, the rest from the name, as timm.create_model(name, num_classes=5, img_size=64) builds
    it; --verify checks it against exactly that model (float64 rows at rounding level)."""
    name = "vit_tiny_patch16_224.augreg_in21k_ft_in1k"
    reference = timm.create_model(name, pretrained=False, num_classes=5, img_size=64).eval()
    randomize_(reference, seed=3)
    src = save_state(reference.state_dict(), tmp_path / "finetuned", "safetensors")
    out = tmp_path / "out"
    code, stdout, err = run_cli_captured(convert_timm, [str(src), str(out), "--model-name", name, "--verify"], capsys)
    assert code == 0, err
    assert f"timm {timm.__version__} `{name}`" in stdout
    float64 = [ln for ln in stdout.splitlines() if "(float64)" in ln and "rounding noise" not in ln]
    assert float64 and all(float(ln.split("max abs diff ")[1].split(",")[0]) < 1e-9 for ln in float64), stdout
    model = AutoModelForImageClassification.from_pretrained(out, trust_remote_code=True).double().eval()
    assert (model.config.num_labels, model.config.image_size, model.config.hidden_size) == (5, 64, 192)
    x = pixels((64, 64))
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values=x).logits, reference.double()(x), rtol=0, atol=1e-9)


# ----------------------------------------------------------------------------------------------------------------------
# Position resampling: timm's algorithm, bit for bit
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "old,new,prefix",
    [((4, 4), (6, 6), 1), ((6, 6), (4, 4), 1), ((4, 4), (4, 6), 5), ((4, 6), (6, 4), 0), ((4, 4), (3, 5), 0)],
)
def test_resample_equals_timm(old, new, prefix):
    g = torch.Generator().manual_seed(0)
    table = 0.5 * torch.randn(1, prefix + old[0] * old[1], D, generator=g)
    ours = resample_position_embedding(table, old, new, prefix, algorithm="timm")
    expected = resample_abs_pos_embed(table, new_size=list(new), old_size=list(old), num_prefix_tokens=prefix)
    assert ours.shape == expected.shape == (1, prefix + new[0] * new[1], D)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)


def test_convert_with_image_size_resamples_like_timm(tmp_path: Path, capsys):
    variant = VARIANTS[3]  # reg4: 5 prefix slots kept apart from the grid
    reference = make_timm(variant, seed=4)
    state = reference.state_dict()
    src = save_state(state, tmp_path / "ckpt", "safetensors")
    out = tmp_path / "vit_48x40"
    code, err = run_cli_inprocess(
        convert_timm, [str(src), str(out), "--num-heads", "4", "--image-size", "48x40", "--verify"], capsys
    )
    assert code == 0, err
    model = AutoModelForImageClassification.from_pretrained(out, trust_remote_code=True).double().eval()
    assert model.config.image_size == [48, 40]
    assert "resampled from a 4x4 grid to 6x5" in (out / "README.md").read_text()
    expected_pos = resample_abs_pos_embed(state["pos_embed"], new_size=[6, 5], old_size=[4, 4], num_prefix_tokens=5)
    torch.testing.assert_close(model.vit.pos_embed.float(), expected_pos, rtol=0, atol=1e-6)
    # timm at the new size with timm's own resampled table
    at_48x40 = VisionTransformer(**{**BASE_KWARGS, **variant.timm_kwargs, "img_size": (48, 40)}).eval()
    at_48x40.load_state_dict({**state, "pos_embed": expected_pos})
    x = pixels((48, 40))
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values=x).logits, timm_outputs(at_48x40, x)[0], rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------------
# timm variants beyond VisionTransformer's defaults: DeiT distilled (VisionTransformerDistilled), SwiGLUPacked MLPs
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, kwargs, model_name", [
    ("deit_tiny_distilled_patch16_224", dict(img_size=32), "deit_tiny_distilled_patch16_224.fb_in1k"),
    ("deit_tiny_distilled_patch16_224", dict(img_size=32, depth=2, num_classes=K), None),
    ("vit_giant_patch14_dinov2", dict(img_size=28, depth=2, embed_dim=48, num_heads=3, num_classes=K), None),
])
def test_distilled_and_gated_mlp_variants(name, kwargs, model_name):
    """DeiT's distillation token + averaged second head, and DINOv2-giant's SwiGLUPacked MLP (fc1 = [gate; up], SiLU,
    read off fc1 being twice fc2's width): logits equal timm's to 1e-9 in float64, by name or inferred."""
    reference = randomize_(timm.create_model(name, pretrained=False, **kwargs), seed=5).eval()
    heads = None if model_name else reference.blocks[0].attn.num_heads
    model, _, info = convert_timm.convert_timm_state_dict(reference.state_dict(), model_name=model_name,
                                                          num_heads=heads, verify=True)
    assert max(r["max_abs_diff"] for r in info["parity"] if r["dtype"] == "float64") < 1e-9
    gated = name.startswith("vit_giant")
    assert (model.config.distilled, model.config.mlp_layer) == (not gated, "glu" if gated else "mlp")
    x = pixels(model.config.image_hw)
    with torch.no_grad():
        torch.testing.assert_close(model.double()(pixel_values=x).logits, reference.double()(x), rtol=0, atol=1e-9)


def test_dynamic_img_size_carries_over():
    """timm's dynamic_img_size (positions resampled to each input's grid at run time) becomes vit_hf's switch: equal
    logits at the stored size (1e-9, float64) and at other sizes, where timm resamples in float32 whatever the model's
    dtype (`resample_abs_pos_embed`: "interpolate needs float32"), hence the float32-level bound there."""
    reference = randomize_(timm.create_model("test_vit", pretrained=False, img_size=32, num_classes=K), seed=6)
    reference = reference.double().eval()
    model, _, _ = convert_timm.convert_timm_state_dict(reference.state_dict(), model_name="test_vit")
    model = model.double().eval()
    assert model.config.dynamic_img_size and reference.dynamic_img_size
    with torch.no_grad():
        for hw, atol in (((32, 32), 1e-9), ((48, 64), 1e-6), ((80, 48), 1e-6)):
            x = pixels(hw)
            torch.testing.assert_close(model(pixel_values=x).logits, reference(x), rtol=0, atol=atol, msg=str(hw))
