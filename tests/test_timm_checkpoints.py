"""timm's own training outputs convert as timm itself loads them (timm.models.load_checkpoint / validate.py).

The checkpoints are written by timm's `CheckpointSaver` (the writer train.py uses: `last.pth.tar`,
`checkpoint-N.pth.tar`, `model_best.pth.tar`, each `{epoch, arch, args: argparse.Namespace, state_dict, state_dict_ema,
optimizer, ...}`), with a real `ModelEmaV3` beside the model and a `DataParallel` wrapper for `module.` prefixes; the
oracle is the timm model (or its EMA copy) that wrote them, in float64. The converters run in-process through their CLI
entry points.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

pytest.importorskip("timm")

from helpers import run_cli_captured  # noqa: E402
from timm.utils import CheckpointSaver  # noqa: E402
from timm.utils.model_ema import ModelEmaV3  # noqa: E402
from timm_variants import IMG, VARIANTS, H, make_timm, randomize_  # noqa: E402

import convert.__main__ as front_door  # noqa: E402
from convert import timm as convert_timm  # noqa: E402
from convert.checkpoints import load_checkpoint  # noqa: E402
from convert.common import ConversionError  # noqa: E402

HEADS = ["--num-heads", str(H)]

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny matrices run faster on one thread


class Marker:
    """A pickled object whose loading would run code: creates the file named by its argument."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def assert_matches_timm(out_dir: Path, reference: torch.nn.Module, hw: tuple[int, int]) -> None:
    """The written folder, loaded as remote code, gives the timm model's logits in float64."""
    from transformers import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(out_dir, trust_remote_code=True).double().eval()
    x = torch.randn(2, 3, *hw, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, reference.double().eval()(x), rtol=0, atol=1e-9)


def train_args() -> argparse.Namespace:
    """What timm's train.py keeps in every checkpoint (a subset of its flags, as an argparse.Namespace)."""
    return argparse.Namespace(model="vit_tiny_patch16_224", lr=1e-3, epochs=2, model_ema=True, model_ema_decay=0.5,
                              img_size=IMG, input_size=None, mean=None, std=None, amp=False, output="", seed=42)


def write_timm_run(folder: Path, wrap: bool = False):
    """Two epochs of a timm run's checkpointing: the model and its EMA (decay 0.5, so the two differ), saved by
    CheckpointSaver. `wrap`: the model is in DataParallel and saved without unwrapping (`module.` keys in both weight
    sets), as a script that passes its own unwrap function does. Returns (model, EMA model) as of the last save."""
    model = make_timm(VARIANTS[0], seed=1)
    ema = ModelEmaV3(model, decay=0.5)
    net = torch.nn.DataParallel(model) if wrap else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    folder.mkdir(parents=True, exist_ok=True)
    saver = CheckpointSaver(net, optimizer, args=train_args(), model_ema=ema, checkpoint_dir=str(folder),
                            recovery_dir=str(folder), max_history=2,
                            **({"unwrap_fn": lambda m: m} if wrap else {}))
    for epoch in range(2):
        randomize_(model, seed=10 + epoch)  # "training"
        ema.update(model)
        saver.save_checkpoint(epoch, metric=float(epoch))
    return model, ema.module


def test_checkpoint_saver_files_convert_as_timm_loads_them(tmp_path, capsys):
    """`last.pth.tar` through the front door: the model's weights by default (timm validate.py without --use-ema),
    the EMA's with --use-ema (also spelt --use_ema); the card notes which; each equals its timm model in float64."""
    model, ema = write_timm_run(tmp_path / "run")
    names = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert {"last.pth.tar", "model_best.pth.tar", "checkpoint-1.pth.tar"} <= set(names), names
    checkpoint = torch.load(tmp_path / "run" / "last.pth.tar", weights_only=False)
    assert isinstance(checkpoint["args"], argparse.Namespace) and "state_dict_ema" in checkpoint

    code, out, err = run_cli_captured(front_door, [tmp_path / "run" / "last.pth.tar", tmp_path / "plain", *HEADS],
                                      capsys)
    assert code == 0, err
    assert "--use-ema converts those" in out
    assert_matches_timm(tmp_path / "plain", model, (IMG, IMG))

    code, out, err = run_cli_captured(front_door, [tmp_path / "run" / "last.pth.tar", tmp_path / "ema", *HEADS,
                                                   "--use_ema"], capsys)
    assert code == 0, err
    assert "EMA weights (`state_dict_ema`)" in (tmp_path / "ema" / "README.md").read_text()
    assert_matches_timm(tmp_path / "ema", ema, (IMG, IMG))
    with torch.no_grad():  # the two really differ: taking the wrong set could not pass both
        assert not torch.allclose(model.head.weight, ema.head.weight)


def test_module_prefixed_checkpoint_converts(tmp_path, capsys):
    """DataParallel keys (`module.blocks.0...`) in both state_dict and state_dict_ema, through convert.timm."""
    model, ema = write_timm_run(tmp_path / "run", wrap=True)
    saved = torch.load(tmp_path / "run" / "last.pth.tar", weights_only=False)
    assert all(k.startswith("module.") for k in saved["state_dict"]), list(saved["state_dict"])[:2]
    code, _, err = run_cli_captured(convert_timm, [tmp_path / "run" / "checkpoint-1.pth.tar", tmp_path / "out",
                                                   *HEADS, "--use-ema"], capsys)
    assert code == 0, err
    assert_matches_timm(tmp_path / "out", ema, (IMG, IMG))


def test_ema_only_file_is_taken_as_is(tmp_path, capsys):
    """A checkpoint with EMA weights and no model weights (what is kept of a run for inference): converted without
    --use-ema, noted as EMA."""
    _, ema = write_timm_run(tmp_path / "run")
    checkpoint = torch.load(tmp_path / "run" / "last.pth.tar", weights_only=False)
    del checkpoint["state_dict"], checkpoint["optimizer"]
    torch.save(checkpoint, tmp_path / "ema_only.pth.tar")
    code, out, err = run_cli_captured(front_door, [tmp_path / "ema_only.pth.tar", tmp_path / "out", *HEADS], capsys)
    assert code == 0, err
    assert "the only weights in ema_only.pth.tar (EMA)" in out
    assert_matches_timm(tmp_path / "out", ema, (IMG, IMG))


def test_use_ema_without_ema_weights_is_one_line_and_its_advice_works(tmp_path, capsys):
    model = make_timm(VARIANTS[0], seed=3)
    torch.save({"state_dict": model.state_dict(), "epoch": 0, "args": train_args()}, tmp_path / "no_ema.pth.tar")
    argv = [tmp_path / "no_ema.pth.tar", tmp_path / "out", *HEADS]
    code, _, err = run_cli_captured(front_door, [*argv, "--use-ema"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "holds no EMA weights" in err and "drop --use-ema" in err
    assert not (tmp_path / "out").exists()
    code, _, err = run_cli_captured(front_door, argv, capsys)  # the advice: without --use-ema
    assert code == 0, err
    assert_matches_timm(tmp_path / "out", model, (IMG, IMG))


def test_arbitrary_pickle_is_never_executed_and_the_advice_works(tmp_path, capsys):
    """Only argparse.Namespace is allowed beyond weights_only's own types: a checkpoint whose `args` would run code
    is refused in one line, and the code did not run. The advice (re-save the weights alone) converts."""
    marker = tmp_path / "executed"
    model = make_timm(VARIANTS[0], seed=4)
    torch.save({"state_dict": model.state_dict(), "args": Marker(str(marker))}, tmp_path / "evil.pth.tar")
    code, _, err = run_cli_captured(front_door, [tmp_path / "evil.pth.tar", tmp_path / "out", *HEADS], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "needs code execution" in err and "torch.save(model.state_dict(), 'weights.pth')" in err
    assert not marker.exists() and not (tmp_path / "out").exists()
    # the advice, for a file the user trusts: load it as they would, re-save the weights alone
    torch.save(torch.load(tmp_path / "evil.pth.tar", weights_only=False)["state_dict"], tmp_path / "weights.pth")
    assert marker.exists()  # (that load did run it: which is why the converter never does)
    code, _, err = run_cli_captured(front_door, [tmp_path / "weights.pth", tmp_path / "out", *HEADS], capsys)
    assert code == 0, err
    assert_matches_timm(tmp_path / "out", model, (IMG, IMG))


def test_use_ema_for_another_format_is_refused(tmp_path, capsys):
    """--use-ema means a timm checkpoint: given with a Google npz it is refused by name, before anything is read."""
    from tests.npz_factory import BY_NAME, make_params, write_npz

    src = write_npz(tmp_path / "g.npz", make_params(BY_NAME["vitjax_token"], seed=1))
    code, _, err = run_cli_captured(front_door, [src, tmp_path / "out", "--use-ema"], capsys)
    assert code == 2 and "--use-ema does not apply to a Google .npz" in err, err


def test_load_checkpoint_picks_weights_as_timm_does(tmp_path):
    """The library call: load_checkpoint(path, use_ema) -> (state dict, note), against timm's own load_state_dict
    (use_ema=False / True) on the same CheckpointSaver file."""
    from timm.models import load_state_dict

    write_timm_run(tmp_path / "run", wrap=True)
    path = tmp_path / "run" / "last.pth.tar"
    for use_ema in (False, True):
        ours, _ = load_checkpoint(path, use_ema=use_ema)
        theirs = load_state_dict(str(path), use_ema=use_ema)
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    with pytest.raises(ConversionError, match="no such file"):
        load_checkpoint(tmp_path / "run" / "missing.pth.tar")
