"""The converters' `--push-to-hub`, end to end, against the loopback Hub: a converted model is published
and loads by repo id as remote code.

The converter CLIs run through their entry points in this process, whose huggingface_hub is pointed at the loopback
Hub (`helpers.point_client_at`), online, over LFS rather than Xet; the one with the Hub down runs as a real process
with `HF_ENDPOINT` set, the variable a user sets (read when huggingface_hub is imported). The consumer is a fresh
interpreter that cannot import `vit_hf` (`tests/isolated.py`): it loads each repo by id with the Auto classes and
`pipeline`, as remote code, and the local OUT folder the converter wrote, and the two must agree.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (
    HUB_FILES,
    TOKEN,
    TOKENS,
    consumer_env,
    go_online,
    make_image,
    point_client_at,
    repo_files,
    run_cli_captured,
    snapshot,
)
from hub_server import HubServer
from huggingface_hub import HfApi, ModelCard
from isolated import last_json_line, run_isolated
from npz_factory import BY_NAME, make_params, write_npz
from timm_variants import VARIANTS, make_timm, save_state

from convert import google as convert_google
from convert.common import run_cli
from vit_hf.hub import check_hub_folder

REPO = Path(__file__).resolve().parent.parent
SELF_CHECK = "mapping self-check against timm built from the inferred arguments (activation gelu, eps 1e-06 assumed)"


@pytest.fixture(scope="module")
def hub() -> Iterator[HubServer]:
    with HubServer(tokens=TOKENS) as server:
        yield server


@pytest.fixture(autouse=True)
def online_client(monkeypatch) -> None:
    go_online(monkeypatch)


def convert_cli(module: str, args: list, env: dict) -> subprocess.Popen:
    """Start `python -m convert.<module> args...` from the repository root (one thread: tiny models)."""
    return subprocess.Popen(
        [sys.executable, "-m", f"convert.{module}", *map(str, args)],
        cwd=REPO, env=dict(env, OMP_NUM_THREADS="1"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def finish(proc: subprocess.Popen, timeout: int = 300) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


# Loads, by repo id at `revision`, with the Auto classes and the pipeline, and the local folder the converter wrote.
CONSUMER = """
import json, PIL.Image, torch
from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline
image = PIL.Image.open({image!r})
out = {{}}
for repo, revision, folder in {targets!r}:
    result = {{}}
    for where, kw in (("hub", dict(revision=revision)), ("local", {{}})):
        source = repo if where == "hub" else folder
        model = AutoModelForImageClassification.from_pretrained(source, trust_remote_code=True, **kw).eval()
        processor = AutoImageProcessor.from_pretrained(source, trust_remote_code=True, **kw)
        with torch.no_grad():
            logits = model(**processor(image, return_tensors="pt")).logits[0].tolist()
        result[where] = dict(logits=logits, modules=[type(model).__module__, type(processor).__module__])
    classifier = pipeline("image-classification", model=repo, revision=revision, trust_remote_code=True)
    scores = {{p["label"]: p["score"] for p in classifier(image, top_k=model.config.num_labels)}}
    result["pipeline"] = [scores[model.config.id2label[i]] for i in range(model.config.num_labels)]
    result["pipeline_module"] = type(classifier.model).__module__
    out[repo] = result
print(json.dumps(out))
"""


@pytest.mark.slow
def test_converted_models_push_and_load_by_repo_id(hub, tmp_path, monkeypatch, capsys):
    """`convert.timm ... --verify --push-to-hub` and `convert.google ... --push-to-hub` (their entry points, in this
    process, pointed at the loopback Hub), then a consumer process loads both repos by id (Auto classes and pipeline,
    remote code) and gets the local folders' logits; the cards parse."""
    from convert import timm as convert_timm

    timm_src = save_state(make_timm(VARIANTS[0], seed=11).state_dict(), tmp_path / "timm_ckpt", "safetensors")
    npz_src = write_npz(tmp_path / "google.npz", make_params(BY_NAME["vitjax_token"], seed=12))
    point_client_at(monkeypatch, hub, tmp_path / "pusher_cache")
    jobs = {
        "tester/vit-from-timm": (tmp_path / "out_timm", convert_timm, [
            timm_src, tmp_path / "out_timm", "--num-heads", "4", "--verify",
            "--push-to-hub", "tester/vit-from-timm", "--hub-token", TOKEN]),
        "tester/vit-from-google": (tmp_path / "out_google", convert_google, [
            npz_src, tmp_path / "out_google", "--verify", "--push-to-hub", "tester/vit-from-google",
            "--hub-token", TOKEN]),
    }
    targets = []
    for repo, (out, module, argv) in jobs.items():
        code, stdout, stderr = run_cli_captured(module, argv, capsys)
        assert code == 0, stderr
        pushed = re.search(rf"pushed \S+ to {re.escape(repo)} at ([0-9a-f]{{40}})", stdout)
        assert pushed, stdout
        targets.append((repo, pushed.group(1), str(out)))

    _, image_path = make_image(tmp_path)
    proc = run_isolated(CONSUMER.format(image=str(image_path), targets=targets), cwd=tmp_path,
                        env=consumer_env(hub, tmp_path / "consumer_home"))
    loaded = last_json_line(proc)
    api = HfApi(endpoint=hub.endpoint, token=TOKEN)
    for repo, sha, out in targets:
        result = loaded[repo]
        for module in result["hub"]["modules"] + result["local"]["modules"] + [result["pipeline_module"]]:
            assert module.startswith("transformers_modules."), module  # the remote-code path, not this package
        local = np.array(result["local"]["logits"])
        np.testing.assert_allclose(result["hub"]["logits"], local, rtol=0, atol=1e-6)
        np.testing.assert_allclose(result["pipeline"], torch.tensor(local).softmax(-1).numpy(), rtol=0, atol=1e-6)

        # the repo holds the hub files, byte for byte the local folder's (the card differs only in its pin)
        assert repo_files(hub, repo, sha) == HUB_FILES
        local_files = snapshot(Path(out))
        for name in HUB_FILES - {"README.md", ".gitattributes"}:
            with open(api.hf_hub_download(repo, name, revision=sha, cache_dir=tmp_path / "cache"), "rb") as f:
                assert f.read() == local_files[name], (repo, name)

        # the card: front matter parses (and passed the Hub's own YAML check), the body holds the parity report
        card = ModelCard.load(api.hf_hub_download(repo, "README.md", cache_dir=tmp_path / "cache"))
        assert card.data.library_name == "transformers" and card.data.pipeline_tag == "image-classification"
        assert "custom_code" in card.data.tags and card.data.license
        assert f'repo = "{repo}"' in card.text and f'revision = "{sha}"' in card.text
        assert "## Parity report" in card.text
        rows = [ln for ln in card.text.splitlines() if ln.startswith("| ") and "| float64 |" in ln]
        assert rows, card.text
        for row in rows:  # every float64 row's max abs diff is at float64 rounding level
            assert float(row.split("|")[4]) < 1e-9, row
        if repo.endswith("timm"):  # architecture inferred, not named: the rows say they are a self-check
            assert all(SELF_CHECK in row for row in rows)
        else:  # the independent float64 numpy pass of the Flax model
            assert any("numpy Flax forward" in row for row in rows)


def _push_refused(hub, tmp_path, capsys, argv: list, fragment: str) -> None:
    """A push that cannot succeed is refused before anything is converted: exit 2, one line, OUT not written, no
    upload request."""
    tmp_path.mkdir(exist_ok=True)
    src = write_npz(tmp_path / "google.npz", make_params(BY_NAME["vitjax_token"], seed=13))
    out = tmp_path / "out"
    hub.clear_log()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(convert_google.main, [str(src), str(out), *argv])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert err.count("\n") == 1 and err.startswith("error: --push-to-hub ") and fragment in err, err
    assert not out.exists()
    assert [r for r in hub.requests if r.method != "GET"] == []  # at most whoami was asked


def test_push_without_token_is_refused_before_converting(hub, tmp_path, monkeypatch, capsys):
    """No token anywhere: refused before the conversion, naming the converters' flag and the login command."""
    import huggingface_hub.constants as constants

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no_token"))
    monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)  # where it would have gone
    _push_refused(hub, tmp_path, capsys, ["--push-to-hub", "tester/no-token"], "no Hub token: pass --hub-token")
    assert hub.requests == []


def test_push_with_a_rejected_token_or_to_a_foreign_namespace_is_refused_first(hub, tmp_path, monkeypatch, capsys):
    """A token the Hub rejects (401), or a namespace the token's user cannot write to: refused at the start; the
    advice printed (the user's own namespace) then pushes."""
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)
    _push_refused(hub, tmp_path / "a", capsys, ["--push-to-hub", "tester/x", "--hub-token", "hf_not_a_token"],
                  "rejected the Hub token (401)")
    _push_refused(hub, tmp_path / "b", capsys, ["--push-to-hub", "bob/x", "--hub-token", TOKEN],
                  "user 'tester' cannot write to the namespace 'bob': push to tester/x")
    src = write_npz(tmp_path / "google.npz", make_params(BY_NAME["vitjax_token"], seed=13))
    with pytest.raises(SystemExit) as exit_info:  # the advice
        run_cli(convert_google.main, [str(src), str(tmp_path / "out"), "--push-to-hub", "tester/x", "--hub-token",
                                      TOKEN])
    assert exit_info.value.code == 0, capsys.readouterr().err
    assert "config.json" in HfApi(endpoint=hub.endpoint, token=TOKEN).list_repo_files("tester/x")


@pytest.mark.slow
def test_push_to_a_server_that_is_down_fails_in_one_line_and_keeps_the_folder(tmp_path):
    """The real CLI process with HF_ENDPOINT pointing at a closed port: exit 1, one line, OUT as written."""
    down = HubServer(tokens=TOKENS)
    down.stop()  # bound, then closed: nothing listens there any more
    src = save_state(make_timm(VARIANTS[0], seed=14).state_dict(), tmp_path / "ckpt", "safetensors")
    out = tmp_path / "out"
    env = consumer_env(down, tmp_path / "home")
    code, stdout, stderr = finish(convert_cli("timm", [
        src, out, "--num-heads", "4", "--push-to-hub", "tester/unreachable", "--hub-token", TOKEN], env))
    assert code == 1, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert lines[0].startswith("error: push failed") and f"cannot reach the Hub at {down.endpoint}" in lines[0]
    assert f"wrote {out}" in stdout
    check_hub_folder(out)
    before = snapshot(out)
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} <= set(before)
    assert json.loads(before["config.json"])["auto_map"]["AutoModelForImageClassification"]
