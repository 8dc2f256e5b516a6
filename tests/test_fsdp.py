"""FSDP2 in `vit_hf.train` (`accelerate launch --use_fsdp --fsdp_version 2`), CPU, gloo, 2 processes, the real digits
the other training tests use: the same weights as DDP with the same seed, really sharded, killed mid-checkpoint and
resumed bit-exactly, the output folder loads without vit_hf; and what it refuses, in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import assert_same_weights, data_args, reset_accelerate, weights
from isolated import last_json_line, run_isolated

from vit_hf import train as train_mod
from vit_hf.train import _testing
from vit_hf.train.fsdp import DCP_SUBDIR

pytest.register_assert_rewrite("scale_out")  # a helper and a plugin (pytest_plugins): rewrite it on first import
from scale_out import COMMON, FSDP, launch  # noqa: E402

# the digits and the DDP run are session fixtures shared with test_multinode (one definition: a plugin module)
pytest_plugins = ("scale_out",)
pytestmark = pytest.mark.slow  # every test launches, or shares, a 2-process FSDP run


@pytest.fixture(scope="module")
def fsdp_run(fsdp_digits, tmp_path_factory) -> Path:
    """FSDP with activation checkpointing (it changes no number: checkpointing recomputes the same forward)."""
    out = tmp_path_factory.mktemp("fsdp") / "out"
    launch(FSDP, [*COMMON, *data_args(fsdp_digits), "--output_dir", str(out), "--gradient_checkpointing"])
    return out


def results(folder: Path) -> dict:
    return json.loads((folder / "all_results.json").read_text())


def grad_norms(folder: Path) -> list[float]:
    return [h["grad_norm"] for h in json.loads((folder / "log_history.json").read_text()) if "grad_norm" in h]


def test_fsdp_shards_and_matches_ddp(fsdp_run, ddp_reference):
    sharded = results(fsdp_run)["fsdp"]
    # each rank holds about half of the parameter elements (reported by the ranks themselves), together all of them
    assert sharded["world_size"] == 2 and len(sharded["local_parameter_elements"]) == 2
    total = sharded["total_parameter_elements"]
    assert total == results(fsdp_run)["total_parameters"] == sum(sharded["local_parameter_elements"])
    assert all(0.4 * total < n < 0.6 * total for n in sharded["local_parameter_elements"])
    assert "fsdp" not in results(ddp_reference)

    # same weights as DDP to 1e-5 wherever the gradient is not identically zero: the key slice of a qkv bias has a
    # zero gradient (a per-query constant in the logits), where Adam amplifies rounding noise; see the logits test
    fsdp_w, ddp_w = weights(fsdp_run), weights(ddp_reference)
    assert fsdp_w.keys() == ddp_w.keys()
    for key, value in fsdp_w.items():
        if key.endswith("attn.qkv.bias"):
            query, _, value_ = value.chunk(3)
            query_ddp, _, value_ddp = ddp_w[key].chunk(3)
            torch.testing.assert_close(torch.cat([query, value_]), torch.cat([query_ddp, value_ddp]), rtol=0,
                                       atol=1e-5, msg=key)
        else:
            torch.testing.assert_close(value, ddp_w[key], rtol=0, atol=1e-5, msg=key)
    # clipping was active (norms above --max_grad_norm 1.0) and the sharded norm is the global one
    norms, norms_ddp = grad_norms(fsdp_run), grad_norms(ddp_reference)
    assert len(norms) == 5 and max(norms) > 1.0
    torch.testing.assert_close(torch.tensor(norms), torch.tensor(norms_ddp), rtol=1e-5, atol=0)
    assert results(fsdp_run)["eval_samples"] == results(fsdp_run)["eval_unique_samples"] == 37


def test_fsdp_outputs_load_without_vit_hf_and_logits_match_ddp(fsdp_run, ddp_reference, fsdp_digits, tmp_path):
    """Both hub folders in a consumer environment (no vit_hf, no accelerate): the eval logits of every validation
    image agree to 1e-4, which covers the qkv bias's key slice the weight comparison leaves out."""
    images = sorted(str(p) for p in (fsdp_digits / "validation").rglob("*.png"))
    code = f"""
        import json, torch, PIL.Image
        from transformers import AutoImageProcessor, AutoModelForImageClassification
        out = {{}}
        for name, folder in (("fsdp", {str(fsdp_run)!r}), ("ddp", {str(ddp_reference)!r})):
            model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
            processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
            batch = processor([PIL.Image.open(p) for p in {images!r}], return_tensors="pt")
            with torch.no_grad():
                out[name] = model(**batch).logits.tolist()
            out[name + "_class"] = type(model).__name__
        print(json.dumps(out))
    """
    out = last_json_line(run_isolated(code, cwd=tmp_path))
    assert out["fsdp_class"] == out["ddp_class"] == "VitHfForImageClassification"
    fsdp_logits, ddp_logits = torch.tensor(out["fsdp"]), torch.tensor(out["ddp"])
    assert fsdp_logits.shape == (37, 3)
    torch.testing.assert_close(fsdp_logits, ddp_logits, rtol=0, atol=1e-4)


def test_fsdp_killed_in_checkpoint_resumes_bit_exact(fsdp_run, fsdp_digits, tmp_path):
    """SIGKILL while step_4 is written (the DCP shards are on disk, the folder not yet renamed): step_2 stays the
    latest complete checkpoint; the resumed run ends on exactly the uninterrupted run's weights."""
    out = tmp_path / "killed"
    argv = [*COMMON, *data_args(fsdp_digits), "--output_dir", str(out), "--gradient_checkpointing"]
    launch(FSDP, argv, expect=-9, **{_testing.KILL_IN_CHECKPOINT_ENV: "4"})
    assert [p.name for _, p in train_mod.list_checkpoints(out)] == ["step_2"]
    assert (out / ".tmp-step_4" / DCP_SUBDIR).is_dir() and not (out / "all_results.json").exists()
    step_2 = out / "step_2"
    assert {p.name for p in step_2.iterdir()} >= {DCP_SUBDIR, "rank_0.pt", "rank_1.pt", train_mod.HF_MODEL_SUBDIR}
    launch(FSDP, [*argv, "--resume_from_checkpoint", "latest"])
    assert_same_weights(fsdp_run, out)
    assert grad_norms(fsdp_run) == grad_norms(out)  # the log history survives the restart too


def test_fsdp_refusals_are_one_line_and_write_nothing(fsdp_run, fsdp_digits, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    cases = [([], "--num_processes 2 or more"), (["--model_ema_decay", "0.9"], "--model_ema_decay is not supported")]
    for extra, message in cases:
        out = tmp_path / "refused"
        with pytest.raises(SystemExit) as exit_info:
            train_mod.main([*COMMON, *data_args(fsdp_digits), "--output_dir", str(out), *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 2 and len(err) == 1 and message in err[0], err
        assert not out.exists()
        reset_accelerate()
    # a run without FSDP does not resume an FSDP checkpoint as if it were accelerate's
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    with pytest.raises(SystemExit) as exit_info:
        train_mod.main([*COMMON, *data_args(fsdp_digits), "--output_dir", str(tmp_path / "ddp"),
                        "--resume_from_checkpoint", str(fsdp_run / "step_4")])
    assert exit_info.value.code == 2 and "written by an FSDP run" in capsys.readouterr().err


def test_fsdp_mim_pretrains_and_saves_the_consolidated_model(fsdp_digits, tmp_path):
    """`--task mim` under FSDP: sharded like a classifier, and the full model (gathered by every rank) is saved."""
    from transformers import AutoModelForMaskedImageModeling

    out = tmp_path / "mim"
    mim = ["--task", "mim", "--mask_patch_size", "8"]
    launch(FSDP, [*mim, *COMMON, *data_args(fsdp_digits), "--output_dir", str(out)])
    results = json.loads((out / "all_results.json").read_text())
    local = results["fsdp"]["local_parameter_elements"]
    assert len(local) == 2 and max(local) < results["fsdp"]["total_parameter_elements"]
    assert "eval_loss" in results
    model = AutoModelForMaskedImageModeling.from_pretrained(out, trust_remote_code=True)
    assert sum(p.numel() for p in model.parameters()) == results["fsdp"]["total_parameter_elements"]
