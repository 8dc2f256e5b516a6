"""`python -m convert SOURCE OUT_DIR`: the front door, against the loopback Hub (tests/hub_server.py).

Repos are written by the real writer (`timm.models.save_for_hf`) and pushed with `HfApi.upload_folder`; the oracle is
timm's own Hub loader (`timm.create_model("hf-hub:<repo>", pretrained=True)`) reading the same repo, in float64.
The converter runs in-process (its huggingface_hub pointed at the loopback Hub) except for the end-to-end check, which
runs the real CLI and loads its output in an interpreter without this package.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("timm")  # timm is in the dev extra: the writer and the oracle of timm repos

import timm  # noqa: E402
from helpers import TOKEN, TOKENS, consumer_env, point_client_at, publish_folder  # noqa: E402
from hub_server import HubServer  # noqa: E402
from huggingface_hub import HfApi, ModelCard  # noqa: E402
from images import assert_same_pixels  # noqa: E402
from isolated import last_json_line, run_isolated  # noqa: E402
from timm.models import save_for_hf  # noqa: E402
from timm_variants import randomize_  # noqa: E402

import convert.__main__ as front_door  # noqa: E402
from convert.common import run_cli  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
TINY = "tester/vit_tiny_patch16_224.augreg_in21k_ft_in1k"  # timm >= 1.0.31 writer: model_args; both weight files
CLIP = "tester/vit_xsmall_patch16_clip_224.tinyclip_yfcc15m"  # as timm 0.9.x wrote it: no model_args; .bin only
LABELS = ["ant", "bee", "cat", "dog", "eel"]
HF_VIT = "tester/vit-tiny-transformers"  # transformers format, both weight files (as many 4.x-era repos)


def _write_tiny(folder: Path) -> None:
    model = timm.create_model(TINY.split("/")[1], pretrained=False, depth=2, embed_dim=48, num_heads=3, img_size=32,
                              num_classes=len(LABELS))
    save_for_hf(randomize_(model, seed=1), folder, model_config={"label_names": LABELS}, safe_serialization="both")


def _write_clip(folder: Path) -> None:
    model = timm.create_model(CLIP.split("/")[1], pretrained=False)
    save_for_hf(randomize_(model, seed=2), folder, safe_serialization=False)
    config = json.loads((folder / "config.json").read_text())
    del config["model_args"]  # repos pushed before timm 0.9.16 carry none: the architecture name decides
    (folder / "config.json").write_text(json.dumps(config))


def _write_transformers(folder: Path) -> None:
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, image_size=32,
                       patch_size=8, num_labels=3)
    torch.manual_seed(3)
    model = ViTForImageClassification(config)
    model.save_pretrained(folder, safe_serialization=False)  # pytorch_model.bin
    model.save_pretrained(folder)  # model.safetensors next to it
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("timm_repos")
    with HubServer(tokens=TOKENS) as server, pytest.MonkeyPatch.context() as mp:
        point_client_at(mp, server, root / "pusher_cache")
        api = HfApi(endpoint=server.endpoint, token=TOKEN)
        server.commits = {}
        for repo, write in ((TINY, _write_tiny), (CLIP, _write_clip)):
            write(root / repo.split("/")[1])
            server.commits[repo] = publish_folder(api, root / repo.split("/")[1], repo)
        save_for_hf(timm.create_model("swin_tiny_patch4_window7_224", embed_dim=24, depths=(1, 1, 1, 1),
                                      num_heads=(1, 1, 1, 1)), root / "swin", safe_serialization=True)
        publish_folder(api, root / "swin", "tester/swin-tiny")
        api.create_repo("tester/private-vit", private=True)
        publish_folder(api, root / TINY.split("/")[1], "tester/private-vit")
        _write_transformers(root / "hf_vit")
        server.commits[HF_VIT] = publish_folder(api, root / "hf_vit", HF_VIT)
        bob = HfApi(endpoint=server.endpoint, token="hf_bob_write")
        publish_folder(bob, root / TINY.split("/")[1], "bob/gated-vit")
        server.set_gated("bob/gated-vit")
        yield server


@pytest.fixture
def online(hub, monkeypatch, tmp_path):
    point_client_at(monkeypatch, hub, tmp_path / "cache")
    return hub


def convert(argv: list, capsys) -> tuple[int, str, str]:
    """`python -m convert ...` in-process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        run_cli(front_door.main, [str(a) for a in argv])
    captured = capsys.readouterr()
    return exc.value.code, captured.out, captured.err


def float64_rows(stdout: str) -> list[float]:
    return [float(ln.split("max abs diff ")[1].split(",")[0]) for ln in stdout.splitlines()
            if ln.startswith("parity vs") and "(float64)" in ln]


def timm_oracle(repo: str) -> torch.nn.Module:
    """timm's own reading of the repo: config.json through its parser, weights through its Hub loader."""
    return timm.create_model(f"hf-hub:{repo}", pretrained=True).double().eval()


# ----------------------------------------------------------------------------------------------------------------------
# timm Hub repos
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("repo, pinned", [(TINY, False), (CLIP, True)])
def test_timm_repo_converts_exactly(online, tmp_path, capsys, repo, pinned):
    """With and without model_args, model.safetensors (preferred) and pytorch_model.bin only: logits equal timm's
    own loader of the same repo to 1e-9 in float64; labels, preprocessing and the card come from the repo."""
    from transformers import AutoModelForImageClassification

    commit = online.commits[repo]
    out = tmp_path / "out"
    online.clear_log()
    code, stdout, err = convert([f"{repo}@{commit}" if pinned else repo, out, "--verify"], capsys)
    assert code == 0, err
    rows = float64_rows(stdout)
    assert rows and max(rows) < 1e-9, stdout
    fetched = {r.path.rsplit("/", 1)[-1] for r in online.requests if "/resolve/" in r.path and r.method == "GET"}
    assert fetched == {"config.json", "model.safetensors" if repo == TINY else "pytorch_model.bin"}, fetched

    reference = timm_oracle(repo)
    model = AutoModelForImageClassification.from_pretrained(out, trust_remote_code=True).double().eval()
    h, w = model.config.image_hw
    x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values=x).logits, reference(x), rtol=0, atol=1e-9)
    if repo == TINY:
        assert [model.config.id2label[i] for i in range(len(LABELS))] == LABELS
    else:  # the name decided: CLIP towers are pre-norm with LayerNorm eps 1e-5
        assert model.config.pre_norm and model.config.layer_norm_eps == 1e-5 and model.config.num_labels == 512

    from timm.data import create_transform, resolve_data_config

    from vit_hf import VitHfImageProcessor

    processor = VitHfImageProcessor.from_pretrained(out)
    assert_same_pixels(processor, create_transform(**resolve_data_config({}, model=reference)),
                       [(300, 200), (h, w), (97, 181)])
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == repo and commit in card.text and "## Parity report" in card.text


def test_converted_repo_is_pushed_with_its_lineage(online, tmp_path, capsys):
    """`--push-to-hub` from the front door: the pushed card names the source repo as base_model and its commit."""
    code, stdout, err = convert([TINY, tmp_path / "out", "--push-to-hub", "tester/vit-tiny-vit_hf", "--hub-token",
                                 TOKEN], capsys)
    assert code == 0, err
    assert "pushed" in stdout and "tester/vit-tiny-vit_hf" in stdout
    card = ModelCard.load(HfApi(endpoint=online.endpoint, token=TOKEN).hf_hub_download(
        "tester/vit-tiny-vit_hf", "README.md", cache_dir=tmp_path / "pulled"))
    assert card.data.base_model == TINY and online.commits[TINY] in card.text


def test_offline_reads_the_cache(online, tmp_path, capsys):
    """Once downloaded, `--offline` converts from the cache with no request at all."""
    assert convert([TINY, tmp_path / "first"], capsys)[0] == 0
    online.clear_log()
    code, _, err = convert([TINY, tmp_path / "again", "--offline"], capsys)
    assert code == 0, err
    assert online.requests == []
    assert (tmp_path / "first" / "model.safetensors").read_bytes() == (tmp_path / "again" / "model.safetensors"
                                                                        ).read_bytes()


def test_transformers_repo_through_the_front_door(online, tmp_path, capsys):
    """A transformers-format repo id goes to convert.transformers with the snapshot: one weights format fetched,
    logits equal the source class's to 1e-9 in float64, the card names the repo and its commit."""
    from transformers import AutoModelForImageClassification, ViTForImageClassification

    out = tmp_path / "out"
    online.clear_log()
    code, stdout, err = convert([HF_VIT, out, "--verify"], capsys)
    assert code == 0, err
    fetched = {r.path.rsplit("/", 1)[-1] for r in online.requests if "/resolve/" in r.path and r.method == "GET"}
    assert "model.safetensors" in fetched and "pytorch_model.bin" not in fetched, fetched
    with pytest.MonkeyPatch.context() as mp:
        point_client_at(mp, online, tmp_path / "oracle_cache")
        source = ViTForImageClassification.from_pretrained(HF_VIT).double().eval()
    model = AutoModelForImageClassification.from_pretrained(out, trust_remote_code=True).double().eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values=x).logits, source(pixel_values=x).logits, rtol=0, atol=1e-9)
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == HF_VIT and online.commits[HF_VIT] in card.text


@pytest.mark.parametrize("case, argv, expected", [
    ("unknown repo", ["tester/no-such-vit"], "tester/no-such-vit: no such model repo"),
    ("gated repo", ["bob/gated-vit"], "bob/gated-vit is gated: accept its terms"),
    ("unknown revision", [f"{TINY}@no-such-branch"], "revision 'no-such-branch' does not exist"),
    ("offline, not cached", [TINY, "--offline"], "--offline was given: the files are not in the local cache"),
    ("not a repo id", ["no/such/path.safetensors"], "no such file or folder, and not a Hub repo id"),
    ("not a plain ViT", ["tester/swin-tiny"], "swin is not a plain ViT"),
])
def test_hub_refusals_are_one_line(online, tmp_path, capsys, case, argv, expected):
    out = tmp_path / "out"
    online.clear_log()
    code, stdout, err = convert([argv[0], out, *argv[1:]], capsys)
    assert code == 2, (case, err)
    assert err.count("\n") == 1 and err.startswith("error: ") and expected in err, (case, err)
    assert "Traceback" not in err and not out.exists()
    weights = [r.path for r in online.requests if r.path.endswith((".safetensors", ".bin"))]
    assert weights == [], weights  # every refusal comes before any weights are fetched


def test_private_repo_needs_the_token(online, tmp_path, capsys, monkeypatch):
    """HF_TOKEN is what opens a private repo; without it the Hub hides the repo, and the line says both causes."""
    code, _, err = convert(["tester/private-vit", tmp_path / "with_token"], capsys)
    assert code == 0, err
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr("huggingface_hub.constants.HF_TOKEN_PATH", str(tmp_path / "no_token"))
    code, _, err = convert(["tester/private-vit", tmp_path / "without"], capsys)
    assert code == 2 and "no such model repo" in err and "private and no valid token" in err, err
    assert not (tmp_path / "without").exists()


def test_network_failure_is_one_line_and_fast(online, tmp_path, capsys, monkeypatch):
    """Nothing listens at the endpoint: one line naming it (no retry warnings, no 20 s of back-off)."""
    import time

    import huggingface_hub.constants as constants

    down = HubServer(tokens=TOKENS)
    down.stop()
    monkeypatch.setattr(constants, "ENDPOINT", down.endpoint)
    start = time.perf_counter()
    code, _, err = convert([TINY, tmp_path / "out"], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert f"cannot reach the Hub at {down.endpoint}" in err and "not in the local cache" in err
    assert time.perf_counter() - start < 5 and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_cli_then_a_consumer_without_vit_hf(hub, tmp_path):
    """The real CLI against the loopback Hub (HF_ENDPOINT, HF_HOME, HF_TOKEN from the environment), then the folder
    loads with AutoModelForImageClassification as remote code where neither vit_hf nor timm is installed."""
    out = tmp_path / "out"
    env = consumer_env(hub, tmp_path / "home")
    proc = subprocess.run([sys.executable, "-m", "convert", TINY, out], cwd=REPO_ROOT,
                          env=dict(env, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    torch.save(x, tmp_path / "x.pt")
    child = run_isolated(f"""
        import json, torch
        from transformers import AutoModelForImageClassification
        model = AutoModelForImageClassification.from_pretrained({str(out)!r}, trust_remote_code=True).eval()
        with torch.no_grad():
            logits = model(pixel_values=torch.load({str(tmp_path / "x.pt")!r})).logits
        print(json.dumps(dict(module=type(model).__module__, logits=logits.tolist(), labels=model.config.id2label)))
        """, cwd=tmp_path, env=consumer_env(hub, tmp_path / "consumer_home"))
    got = last_json_line(child)
    assert got["module"].startswith("transformers_modules.")
    assert list(got["labels"].values()) == LABELS
    with pytest.MonkeyPatch.context() as mp:
        point_client_at(mp, hub, tmp_path / "oracle_cache")
        expected = timm.create_model(f"hf-hub:{TINY}", pretrained=True).eval()(x)
    torch.testing.assert_close(torch.tensor(got["logits"]), expected.detach(), rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------------------
# Local folders and files: what is not a plain ViT, damaged files, the wrong kind of path
# ----------------------------------------------------------------------------------------------------------------------


def _saved(tmp_path: Path, name: str, **kwargs) -> Path:
    folder = tmp_path / name
    save_for_hf(timm.create_model(name, pretrained=False, **kwargs), folder, safe_serialization="both")
    return folder


def _truncated(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("local") / "tiny"
    _write_tiny(folder)
    return folder


def test_not_a_plain_vit_is_refused_by_family(tmp_path, capsys):
    swin = _saved(tmp_path, "swin_tiny_patch4_window7_224", embed_dim=24, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1))
    # (timm's RoPE ViTs, refused here before, convert: tests/test_families_timm.py)
    # (SigLIP2-style NaFlexViTs convert: tests/test_naflex.py; factorized positions do not)
    naflex = _saved(tmp_path, "naflexvit_base_patch16_parfac_gap", embed_dim=32, depth=1, num_heads=2)
    for folder, expected in ((swin, "swin is not a plain ViT"), (naflex, "NaFlexVit features vit_hf cannot represent")):
        code, _, err = convert([folder, tmp_path / "out"], capsys)
        assert code == 2 and err.count("\n") == 1 and expected in err, err
    assert not (tmp_path / "out").exists()


def _transformers_folder(tmp_path: Path) -> Path:
    from transformers import ViTConfig, ViTForImageClassification

    folder = tmp_path / "hf_vit"
    config = ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37, image_size=32,
                       patch_size=8, num_labels=3)
    ViTForImageClassification(config).save_pretrained(folder)
    return folder


def test_wrong_paths_and_damaged_files(tiny_folder, tmp_path, capsys):
    """Each a single line, exit 2, nothing written: damaged weights of every kind, a folder where a file is meant
    and the reverse, a transformers weights file on its own, an existing file as OUT_DIR."""
    import numpy as np

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_bytes((tiny_folder / "config.json").read_bytes())
    _truncated(tiny_folder / "model.safetensors", broken / "model.safetensors")
    bin_only = tmp_path / "bin_only"
    bin_only.mkdir()
    (bin_only / "config.json").write_bytes((tiny_folder / "config.json").read_bytes())
    _truncated(tiny_folder / "pytorch_model.bin", bin_only / "pytorch_model.bin")
    np.savez(tmp_path / "g.npz", a=np.zeros((64, 64), np.float32))
    npz = _truncated(tmp_path / "g.npz", tmp_path / "cut.npz")
    hf = _transformers_folder(tmp_path)
    (tmp_path / "a_file").write_text("x")
    cases = [
        ([broken, "OUT"], "model.safetensors: not a readable .safetensors file"),
        ([bin_only, "OUT"], "pytorch_model.bin: cannot be read as a torch.save file"),
        ([npz, "OUT"], "cut.npz: not a readable .npz file, corrupt or truncated"),
        ([tiny_folder / "config.json", "OUT"], "is a config file: pass the folder that holds it"),
        ([hf / "model.safetensors", "OUT"], "holds a transformers model's weights"),
        ([tiny_folder, tmp_path / "a_file"], "is an existing file: choose a folder path"),
    ]
    for argv, expected in cases:
        out = tmp_path / "out" if argv[1] == "OUT" else argv[1]
        code, _, err = convert([argv[0], out], capsys)
        assert code == 2 and err.count("\n") == 1 and expected in err and "Traceback" not in err, (argv, err)
    assert not (tmp_path / "out").exists()

    from convert import timm as convert_timm  # the per-format CLI, given a folder where a file is meant

    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        run_cli(convert_timm.main, [str(tiny_folder), str(tmp_path / "out"), "--num-heads", "3"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "is a folder: pass the weights file in it" in err

    code, _, err = convert([tiny_folder, tmp_path / "out", "--prefix", "params/", "--model-name", "vit_tiny"], capsys)
    assert code == 2 and "--model-name, --prefix do not apply to a timm repo/folder" in err, err


def test_preprocessing_flags(tiny_folder, tmp_path, capsys):
    """A state-dict file says nothing about preprocessing: one line names the defaults assumed; the flags set it and
    silence the line; over a timm repo's pretrained_cfg the flags win."""
    from vit_hf import VitHfImageProcessor

    weights = tiny_folder / "model.safetensors"
    code, stdout, err = convert([weights, tmp_path / "plain", "--num-heads", "3"], capsys)
    assert code == 0, err
    assumed = [ln for ln in stdout.splitlines() if "assumed" in ln]
    assert len(assumed) == 1 and "--crop-pct" in assumed[0], stdout
    flags = ["--crop-pct", "1.0", "--interpolation", "bilinear", "--mean", "0.1", "0.2", "0.3", "--std", "1", "2", "3"]
    code, stdout, err = convert([weights, tmp_path / "flags", "--num-heads", "3", *flags], capsys)
    assert code == 0 and "assumed" not in stdout, stdout
    p = VitHfImageProcessor.from_pretrained(tmp_path / "flags")
    assert (p.crop_pct, p.resample, list(p.image_mean), list(p.image_std)) == (1.0, 2, [0.1, 0.2, 0.3], [1, 2, 3])
    code, stdout, err = convert([tiny_folder, tmp_path / "repo", "--crop-pct", "1.0"], capsys)
    assert code == 0 and "assumed" not in stdout, stdout
    p = VitHfImageProcessor.from_pretrained(tmp_path / "repo")
    assert p.crop_pct == 1.0 and p.resample == 3  # the flag over the repo's crop_pct 0.9; its bicubic kept


def test_legacy_flat_timm_config(tmp_path, capsys):
    """timm's oldest Hub configs are one flat dict (no `pretrained_cfg`; `labels` for label names): timm's own parser
    reads them, so the architecture, labels and preprocessing come out as timm would build them."""
    from safetensors.torch import save_file

    from vit_hf import VitHfImageProcessor

    folder = tmp_path / "legacy"
    folder.mkdir()
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({
        "architecture": "vit_tiny_patch16_224", "num_classes": 3, "num_features": 192, "labels": ["x", "y", "z"],
        "input_size": [3, 224, 224], "interpolation": "bilinear", "crop_pct": 0.875, "mean": [0.5] * 3,
        "std": [0.5] * 3,
    }))
    code, stdout, err = convert([folder, tmp_path / "out"], capsys)
    assert code == 0, err
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert list(config["id2label"].values()) == ["x", "y", "z"] and config["hidden_size"] == 192
    processor = VitHfImageProcessor.from_pretrained(tmp_path / "out")
    assert (processor.crop_pct, processor.resample) == (0.875, 2)


def test_image_size_not_a_multiple_of_the_patch(tmp_path, capsys):
    """SigLIP so400m/14 at 384 px: timm's patch convolution ignores the 6 pixels past the last whole patch (a 27x27
    grid); the converted model does the same (`crop_remainder`) and equals timm at 384 px in float64."""
    name = "vit_so400m_patch14_siglip_384"
    folder = tmp_path / name
    reference = randomize_(timm.create_model(name, pretrained=False, embed_dim=32, depth=1, num_heads=2,
                                             mlp_ratio=2.0, num_classes=5), seed=3)
    save_for_hf(reference, folder, safe_serialization=True)
    code, stdout, err = convert([folder, tmp_path / "out", "--verify"], capsys)
    assert code == 0, err
    from transformers import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(tmp_path / "out", trust_remote_code=True).double().eval()
    assert model.config.crop_remainder and model.config.image_hw == (384, 384) and model.config.grid_size == (27, 27)
    x = torch.randn(2, 3, 384, 384, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values=x).logits, reference.double().eval()(x), rtol=0, atol=1e-9)


# ----------------------------------------------------------------------------------------------------------------------
# Faults of docs/faults-convert.md: each refused in one line, and what the line advises works
# ----------------------------------------------------------------------------------------------------------------------


def _listing(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_disk_full_while_writing_leaves_out_dir_as_it_was(tiny_folder, tmp_path, capsys, monkeypatch):
    """ENOSPC injected where transformers writes config.json: one line, exit 2, the earlier conversion in OUT_DIR
    byte for byte as it was and still loadable, no temporary folder left beside it."""
    from transformers import AutoModelForImageClassification, PretrainedConfig

    out = tmp_path / "out"
    code, _, err = convert([tiny_folder, out], capsys)
    assert code == 0, err
    before = _listing(out)

    def full_disk(self, path, *args, **kwargs):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(PretrainedConfig, "to_json_file", full_disk)
    code, _, err = convert([tiny_folder, out, "--image-size", "48"], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: cannot write {out} (No space left on device): nothing was written; free space")
    monkeypatch.undo()
    assert _listing(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    AutoModelForImageClassification.from_pretrained(out, trust_remote_code=True)


def _training_checkpoint(folder: Path) -> Path:
    """What vit_hf.train leaves in OUTPUT_DIR/step_N: the accelerate state, trainer_state.json and the model as a
    hub-ready folder in hf_model/ (written here by the same writer, vit_hf.hub.save_hub_folder)."""
    from vit_hf import VitHfConfig, VitHfForImageClassification, VitHfImageProcessor
    from vit_hf.hub import save_hub_folder

    config = VitHfConfig.from_preset("test", num_labels=3)
    save_hub_folder(VitHfForImageClassification(config), VitHfImageProcessor.from_model_config(config),
                    folder / "hf_model")
    (folder / "trainer_state.json").write_text(json.dumps({"completed_steps": 3}))
    torch.save({}, folder / "optimizer.bin")
    return folder


def test_training_checkpoint_folder_points_at_its_model(tmp_path, capsys):
    """A vit_hf.train checkpoint given as SOURCE: one line naming its hf_model folder (already vit_hf); the advice,
    from_pretrained(hf_model, trust_remote_code=True), loads it."""
    from transformers import AutoModelForImageClassification

    step = _training_checkpoint(tmp_path / "run" / "step_3")
    code, _, err = convert([step, tmp_path / "out"], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert f"is a vit_hf.train checkpoint (for --resume_from_checkpoint): its model, {step / 'hf_model'}" in err
    assert not (tmp_path / "out").exists()
    model = AutoModelForImageClassification.from_pretrained(step / "hf_model", trust_remote_code=True)
    assert model.config.num_labels == 3


def test_a_flag_of_another_format_is_dropped_as_advised(tiny_folder, tmp_path, capsys):
    code, _, err = convert([tiny_folder, tmp_path / "out", "--gelu", "exact"], capsys)
    assert code == 2 and err == "error: --gelu does not apply to a timm repo/folder (the SOURCE given): drop it\n"
    code, _, err = convert([tiny_folder, tmp_path / "out"], capsys)
    assert code == 0, err


def test_already_vit_hf_folder_is_refused_with_advice_that_works(tiny_folder, tmp_path, capsys):
    from transformers import AutoModelForImageClassification

    code, _, err = convert([tiny_folder, tmp_path / "done"], capsys)
    assert code == 0, err
    code, _, err = convert([tmp_path / "done", tmp_path / "again"], capsys)
    assert code == 2 and "already a vit_hf model: nothing to convert, load it with from_pretrained(" in err, err
    AutoModelForImageClassification.from_pretrained(tmp_path / "done", trust_remote_code=True)  # the advice


def test_folder_and_file_advice_works(tiny_folder, tmp_path, capsys):
    """A weights folder without config.json: the line names the file to pass, and passing it converts (its heads,
    which a fused qkv does not tell, then asked for by flag). A transformers weights file alone: the line names its
    folder, and converting the folder works."""
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "model.safetensors").write_bytes((tiny_folder / "model.safetensors").read_bytes())
    code, _, err = convert([bare, tmp_path / "out"], capsys)
    assert code == 2 and f"pass the file (e.g. {bare / 'model.safetensors'})" in err, err
    code, _, err = convert([bare / "model.safetensors", tmp_path / "out"], capsys)
    assert code == 2 and "--num-heads" in err, err
    code, _, err = convert([bare / "model.safetensors", tmp_path / "out", "--num-heads", "3"], capsys)
    assert code == 0, err

    hf = _transformers_folder(tmp_path)
    code, _, err = convert([hf / "model.safetensors", tmp_path / "hf_out"], capsys)
    assert code == 2 and f"convert the folder that holds it with its config.json (python -m convert {hf} OUT_DIR)" \
        in err, err
    code, _, err = convert([hf, tmp_path / "hf_out"], capsys)
    assert code == 0, err


KILLED_IN_WRITE = """
import os, signal, sys
from transformers import PretrainedConfig

def killed(self, *args, **kwargs):  # the moment transformers writes config.json into the temporary folder
    os.kill(os.getpid(), signal.SIGKILL)

PretrainedConfig.to_json_file = killed
from convert.__main__ import main
from convert.common import run_cli
run_cli(main, sys.argv[1:])
"""


@pytest.mark.slow
def test_sigkill_while_writing_leaves_out_dir_as_it_was(tiny_folder, tmp_path, capsys):
    """The real CLI SIGKILLed in the middle of writing: OUT_DIR (an earlier conversion) byte for byte as it was and
    loadable; only the hidden temporary sibling remains, and the next run writes OUT_DIR whole."""
    import os

    out = tmp_path / "out"
    code, _, err = convert([tiny_folder, out], capsys)
    assert code == 0, err
    before = _listing(out)
    proc = subprocess.run([sys.executable, "-c", KILLED_IN_WRITE, str(tiny_folder), str(out), "--image-size", "48"],
                          cwd=REPO_ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -9, proc.stderr
    assert _listing(out) == before
    left = [p.name for p in tmp_path.iterdir() if p.name != "out"]
    assert all(name.startswith(".out.tmp-") for name in left), left
    code, _, err = convert([tiny_folder, out, "--image-size", "48"], capsys)
    assert code == 0, err
    assert json.loads((out / "config.json").read_text())["image_size"] in (48, [48, 48])


def test_gated_repo_advice_works(online, tmp_path, capsys):
    """A gated repo: the line says to accept its terms and log in; once the user (the token's, HF_TOKEN) is granted
    access, as accepting the terms does, it converts."""
    code, _, err = convert(["bob/gated-vit", tmp_path / "refused"], capsys)
    assert code == 2 and "bob/gated-vit is gated: accept its terms on the Hub, then log in" in err, err
    online.set_gated("bob/gated-vit", granted=("tester",))
    try:
        code, _, err = convert(["bob/gated-vit", tmp_path / "out"], capsys)
    finally:
        online.set_gated("bob/gated-vit")
    assert code == 0, err
    assert (tmp_path / "out" / "model.safetensors").is_file() and not (tmp_path / "refused").exists()
