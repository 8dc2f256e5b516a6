"""Publishing to the Hub and loading back from it, over the real HTTP protocol, against a loopback Hub.

The server (`tests/hub_server.py`) runs in a thread of this process. The pushing side runs here too, through the
unmodified huggingface_hub client pointed at it (`endpoint=`, with offline mode and Xet switched off in
`huggingface_hub.constants` for the duration). The consuming side runs in fresh interpreters that cannot import
`vit_hf` (`tests/isolated.py`), with their own HF_ENDPOINT / HF_HOME, as a user's machine would.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import PIL.Image
import pytest
import torch
from helpers import (
    HUB_FILES,
    HUB_LABELS,
    TOKEN,
    TOKENS,
    consumer_env,
    go_online,
    local_logits,
    make_image,
    make_model,
    point_client_at,
    repo_files,
    snapshot,
)
from hub_server import HubServer
from huggingface_hub import HfApi, ModelCard
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError
from huggingface_hub.utils.sha import git_hash
from isolated import last_json_line, run_isolated

from vit_hf import VitHfForImageClassification, VitHfImageProcessor
from vit_hf.hub import REMOTE_FILES, HubFolderError, HubPushError, hub_files, pinned_usage, push_folder, save_hub_folder

# What a training run leaves next to the hub files; none of it may reach the Hub.
DECOYS = ("optimizer.pt", "scheduler.pt", "checkpoints/step_1/model.safetensors", "runs/events.out.tfevents.1",
          ".cache/huggingface/upload.lock", "all_results.json", "unreferenced_plot.png", "train.py")


# -- fixtures and helpers ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hub() -> Iterator[HubServer]:
    with HubServer(tokens=TOKENS) as server:
        yield server


@pytest.fixture(autouse=True)
def online_client(monkeypatch) -> None:
    go_online(monkeypatch)


def make_folder(
    path, seed: int, decoys: bool = True, **card_kwargs
) -> tuple[VitHfForImageClassification, VitHfImageProcessor]:
    """A trained-model-style hub folder (eval results in the card) with training leftovers around it."""
    model, processor = make_model(seed)
    card = {"eval_results": {"accuracy": 0.5 + seed / 10}, "datasets": ["fashion_mnist"], **card_kwargs}
    save_hub_folder(model, processor, path, card_kwargs=card)
    for name in DECOYS if decoys else ():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(os.urandom(64))
    return model, processor


# The consumer: load a repo at some revisions with the Auto classes and the pipeline, all as remote code.
CONSUMER = """
import json, sys, warnings, PIL.Image, torch
from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline
warnings.simplefilter("always")
repo, revisions, image_path = {repo!r}, {revisions!r}, {image!r}
image = PIL.Image.open(image_path)
out = {{}}
for rev in revisions:
    kw = dict(trust_remote_code=True, revision=rev)
    model = AutoModelForImageClassification.from_pretrained(repo, **kw).eval()
    processor = AutoImageProcessor.from_pretrained(repo, **kw)
    with torch.no_grad():
        logits = model(**processor(image, return_tensors="pt")).logits[0].tolist()
    preds = pipeline("image-classification", model=repo, **kw)(image, top_k=3)
    out[str(rev)] = dict(logits=logits, modules=[type(model).__module__, type(processor).__module__],
                         scores={{p["label"]: p["score"] for p in preds}})
print(json.dumps(out))
"""


def consume(
    hub, repo, revisions, image_path, hf_home, cwd, offline=False
) -> tuple[dict, subprocess.CompletedProcess]:
    proc = run_isolated(CONSUMER.format(repo=repo, revisions=revisions, image=str(image_path)), cwd=cwd,
                        env=consumer_env(hub, hf_home, offline))
    return last_json_line(proc), proc


def assert_same_predictions(result: dict, expected_logits: list[float], sha_prefix: str | None = None) -> None:
    for module in result["modules"]:
        assert module.startswith("transformers_modules."), module  # proves the remote-code path ran
        if sha_prefix:
            assert sha_prefix in module, (module, sha_prefix)
    np.testing.assert_allclose(result["logits"], expected_logits, rtol=0, atol=1e-5)
    probs = torch.tensor(expected_logits).softmax(-1).tolist()
    np.testing.assert_allclose([result["scores"][name] for name in HUB_LABELS], probs, rtol=0, atol=1e-5)


# -- a) b) d): push twice, load both revisions anywhere, then offline from the cache ------------------------------
@pytest.mark.slow
def test_push_then_load_by_repo_id_online_and_offline(hub, tmp_path):
    image, image_path = make_image(tmp_path)
    repo = "tester/vit-tiny-fashion"
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    first_model, first_proc = make_folder(first_dir, seed=0)
    second_model, second_proc = make_folder(second_dir, seed=1)
    first_logits, second_logits = local_logits(first_model, first_proc, image), local_logits(second_model,
                                                                                             second_proc, image)
    assert not np.allclose(first_logits, second_logits)  # otherwise the revision check below proves nothing

    first_sha = push_folder(first_dir, repo, token=TOKEN, endpoint=hub.endpoint)
    second_sha = push_folder(second_dir, repo, token=TOKEN, endpoint=hub.endpoint)
    assert re.fullmatch(r"[0-9a-f]{40}", first_sha) and re.fullmatch(r"[0-9a-f]{40}", second_sha)
    assert first_sha != second_sha
    commits = [c.commit_id for c in HfApi(endpoint=hub.endpoint, token=TOKEN).list_repo_commits(repo)]
    # initial commit, then (model commit, README pin commit) per push; newest first
    assert len(commits) == 5 and commits[1] == second_sha and commits[3] == first_sha

    hf_home = tmp_path / "consumer_hf_home"
    hub.clear_log()
    online, _ = consume(hub, repo, [None, first_sha], image_path, hf_home, tmp_path)
    assert_same_predictions(online["None"], second_logits)
    assert_same_predictions(online[first_sha], first_logits, sha_prefix=first_sha)
    assert hub.requests, "the online load must have gone to the loopback Hub"

    hub.clear_log()
    offline, proc = consume(hub, repo, [None, first_sha], image_path, hf_home, tmp_path, offline=True)
    assert hub.requests == [], f"offline load made requests: {hub.requests}"
    assert offline == online
    noise = [ln for ln in proc.stderr.splitlines() if re.search(r"warn|missing|not found|couldn't|error", ln, re.I)]
    assert noise == [], proc.stderr


# -- c): exactly the hub files, a valid card pinned to the model commit -------------------------------------------
def test_repo_holds_only_hub_files_and_a_pinned_card(hub, tmp_path):
    folder = tmp_path / "trained"
    make_folder(folder, seed=2)
    before = snapshot(folder)
    repo = "tester/contents"
    hub.clear_log()
    sha = push_folder(folder, repo, token=TOKEN, endpoint=hub.endpoint, commit_message="first model")
    assert snapshot(folder) == before  # the local folder is only read

    for rev in (sha, "main"):
        assert repo_files(hub, repo, rev) == HUB_FILES
    assert not set(DECOYS) & repo_files(hub, repo)

    api = HfApi(endpoint=hub.endpoint, token=TOKEN)
    commits = api.list_repo_commits(repo)
    assert [c.title for c in commits[1:]] == ["first model", "initial commit"]
    main_sha = api.model_info(repo).sha
    assert commits[0].commit_id == main_sha != sha

    card_path = api.hf_hub_download(repo, "README.md", cache_dir=tmp_path / "cache")
    card = ModelCard.load(card_path)
    assert card.data.library_name == "transformers"
    assert card.data.pipeline_tag == "image-classification"
    assert card.data.eval_results and card.data.eval_results[0].metric_value == pytest.approx(0.7)
    assert "model-index" in card.data.to_dict()
    assert pinned_usage(repo, sha) in card.text  # the card's snippet, pinned to the model commit
    # The pinned revision's card only differs in that pin; everything else is byte-identical at both commits.
    at_sha = api.hf_hub_download(repo, "README.md", revision=sha, cache_dir=tmp_path / "cache")
    assert 'revision = "main"' in open(at_sha).read()
    for name in HUB_FILES - {"README.md", ".gitattributes"}:
        with open(api.hf_hub_download(repo, name, revision=sha, cache_dir=tmp_path / "cache"), "rb") as f:
            assert f.read() == before[name], name
    config = json.loads(before["config.json"])
    assert set(config["auto_map"]) >= {"AutoConfig", "AutoModel", "AutoModelForImageClassification"}
    # model.safetensors went through LFS (batch + PUT + verify), the small text files inline in the commit.
    info = api.model_info(repo, files_metadata=True)
    lfs = {s.rfilename for s in info.siblings if s.lfs is not None}
    assert lfs == {"model.safetensors"}
    weights, card_info = api.get_paths_info(repo, ["model.safetensors", "README.md"], revision=sha)
    assert weights.lfs.sha256 == hashlib.sha256(before["model.safetensors"]).hexdigest()
    with open(at_sha, "rb") as f:  # a regular file's oid is its git blob id (huggingface_hub's own hash)
        assert card_info.lfs is None and card_info.blob_id == git_hash(f.read())
    pushed = [(r.method, r.path) for r in hub.requests if r.status == 200]
    assert ("POST", f"/{repo}.git/info/lfs/objects/batch") in pushed
    assert ("POST", f"/{repo}.git/info/lfs/objects/verify") in pushed
    assert sum(m == "PUT" and p.startswith("/lfs-upload/") for m, p in pushed) == 1


def test_converter_style_folder_with_plots(hub, tmp_path):
    """What `python -m convert.* --push_to_hub` publishes: a source/parity card and the plot it references."""
    plot = tmp_path / "parity.png"
    PIL.Image.new("RGB", (8, 8), "white").save(plot)
    model, processor = make_model(seed=3)
    folder = save_hub_folder(
        model, processor, tmp_path / "converted",
        card_kwargs=dict(base_model="timm/vit_tiny_patch16_224.augreg_in21k", source="Converted from timm.",
                         parity="max |Δlogits| = 0 against the source.", plots=["parity.png"]),
        extra_files={"parity.png": plot},
    )
    (folder / "unreferenced_plot.png").write_bytes(plot.read_bytes())
    assert "parity.png" in hub_files(folder) and "unreferenced_plot.png" not in hub_files(folder)
    repo = "tester/vit-converted"
    sha = push_folder(folder, repo, token=TOKEN, endpoint=hub.endpoint)
    assert repo_files(hub, repo, sha) == HUB_FILES | {"parity.png"}
    api = HfApi(endpoint=hub.endpoint, token=TOKEN)
    card = ModelCard.load(api.hf_hub_download(repo, "README.md", cache_dir=tmp_path / "cache"))
    assert card.data.base_model == "timm/vit_tiny_patch16_224.augreg_in21k"
    assert "Parity report" in card.text and f'revision = "{sha}"' in card.text


# -- e): failures name the problem and leave the folder as it was -------------------------------------------------
@pytest.mark.parametrize("case", ["no_token", "bad_token", "other_namespace_new", "other_namespace_existing",
                                  "server_down", "not_a_hub_folder"])
def test_push_failures_are_clear_and_leave_the_folder_intact(hub, tmp_path, monkeypatch, case):
    folder = tmp_path / "model"
    make_folder(folder, seed=4)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    kwargs = dict(token=TOKEN, endpoint=hub.endpoint)
    repo, expected = "tester/failing", None
    if case == "no_token":
        kwargs["token"] = None
        # both spellings: the converters take --hub-token, the training script --hub_token
        expected = r"no Hub token: pass a token \(--hub-token for the converters, --hub_token for training\) or run " \
                   r"`hf auth login`"
    elif case == "bad_token":
        kwargs["token"] = "hf_not_a_real_token"
        expected = r"no valid Hub token: .*rejected.*401.*--hub-token for the converters, --hub_token for training.*" \
                   r"hf auth login"
    elif case.startswith("other_namespace"):
        repo = f"bob/{case}"
        if case.endswith("existing"):  # a public repo of bob's: readable, so the client goes on to commit
            HfApi(endpoint=hub.endpoint, token="hf_bob_write").create_repo(repo)
        expected = rf"no write access to {repo} at {re.escape(hub.endpoint)} \(403\): user 'tester' cannot write " \
                   r"to the namespace 'bob'"
    elif case == "server_down":
        down = HubServer(tokens=TOKENS)
        down.stop()  # bound, then closed: nothing listens on that port any more
        kwargs["endpoint"] = down.endpoint
        expected = rf"cannot reach the Hub at {re.escape(down.endpoint)}"
    elif case == "not_a_hub_folder":
        (folder / "model.safetensors").rename(folder / "model.bak")
        expected = "model.safetensors is missing"
    before = snapshot(folder)
    hub.clear_log()
    error = HubFolderError if case == "not_a_hub_folder" else HubPushError
    with pytest.raises(error, match=expected):
        push_folder(folder, repo, **kwargs)
    assert snapshot(folder) == before
    assert not [r for r in hub.requests if r.path.endswith(("/commit/main", "/objects/batch")) and r.status == 200]
    if case in ("no_token", "not_a_hub_folder"):
        assert hub.requests == []  # refused before anything is sent


# -- f): transformers' own push_to_hub path, then remote-code loading ---------------------------------------------
@pytest.mark.slow
def test_transformers_push_to_hub_loads_back_as_remote_code(hub, tmp_path, monkeypatch):
    _, image_path = make_image(tmp_path)
    repo = "tester/plain-push"
    point_client_at(monkeypatch, hub, tmp_path / "pusher_cache")  # push_to_hub takes no endpoint: the client's own
    model, processor = make_model(seed=5)
    model.push_to_hub(repo.split("/")[1])  # no namespace: the Hub puts it under the token's user
    processor.push_to_hub(repo)
    expected = local_logits(model, processor, PIL.Image.open(image_path))  # what the consumer reads
    assert {"config.json", "model.safetensors", "preprocessor_config.json", *REMOTE_FILES} <= repo_files(hub, repo)

    out, _ = consume(hub, repo, [None], image_path, tmp_path / "consumer_home", tmp_path)
    assert_same_predictions(out["None"], expected)


# -- the server itself: auth on private repos, optimistic concurrency, the CLI ---------------------------------------
def test_private_repos_and_stale_parent_commits(hub, tmp_path):
    folder = tmp_path / "model"
    make_folder(folder, seed=6, decoys=False)
    repo = "tester/private-model"
    sha = push_folder(folder, repo, token=TOKEN, endpoint=hub.endpoint, private=True)
    assert HfApi(endpoint=hub.endpoint, token=TOKEN).model_info(repo).private is True
    with pytest.raises(RepositoryNotFoundError) as anonymous:
        HfApi(endpoint=hub.endpoint, token=False).model_info(repo)
    assert anonymous.value.response.status_code == 401
    with pytest.raises(RepositoryNotFoundError) as stranger:
        HfApi(endpoint=hub.endpoint, token="hf_bob_write").model_info(repo)
    assert stranger.value.response.status_code == 404

    from huggingface_hub import CommitOperationAdd

    api = HfApi(endpoint=hub.endpoint, token=TOKEN)
    with pytest.raises(HfHubHTTPError) as stale:  # `sha` is no longer the head of main (the pin commit is)
        api.create_commit(repo, [CommitOperationAdd("note.txt", b"x")], commit_message="late", parent_commit=sha)
    assert stale.value.response.status_code == 412
    assert "note.txt" not in repo_files(hub, repo)


def test_server_runs_as_a_script(tmp_path):
    proc = subprocess.Popen([sys.executable, os.path.join(os.path.dirname(__file__), "hub_server.py"), "--port", "0",
                             "--root", str(tmp_path / "root"), "--token", "abc=alice"],
                            stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        whoami = HfApi(endpoint=f"http://127.0.0.1:{port}", token="abc").whoami()
        assert whoami["name"] == "alice"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.parametrize("upload_mode", ["lfs", "regular"])
def test_xet_enabled_clients(tmp_path, monkeypatch, upload_mode):
    """A client with Xet on cannot use the LFS path: "regular" mode serves it; "lfs" mode says what to do."""
    pytest.importorskip("hf_xet")  # without it the client never takes the Xet path
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", False)
    folder = tmp_path / "model"
    make_folder(folder, seed=7, decoys=False)
    with HubServer(tokens=TOKENS, upload_mode=upload_mode) as server:
        if upload_mode == "lfs":
            with pytest.raises(HubPushError, match=r"Xet upload .*501.*set HF_HUB_DISABLE_XET=1"):
                push_folder(folder, "tester/inline", token=TOKEN, endpoint=server.endpoint)
            assert [r.status for r in server.requests if "xet-write-token" in r.path] == [501]
            return
        sha = push_folder(folder, "tester/inline", token=TOKEN, endpoint=server.endpoint)
        info = HfApi(endpoint=server.endpoint, token=TOKEN).model_info("tester/inline", revision=sha,
                                                                       files_metadata=True)
        assert {s.rfilename for s in info.siblings} == HUB_FILES
        assert all(s.lfs is None for s in info.siblings)  # everything went inline in the NDJSON commit
        assert not any(r.path.endswith(("/objects/batch", "/xet-write-token/main")) for r in server.requests)


def test_typed_errors_and_yaml_validation(hub, tmp_path):
    """The X-Error-Code answers become the client's typed errors; a broken card front matter is refused."""
    from huggingface_hub.errors import RemoteEntryNotFoundError, RevisionNotFoundError

    api = HfApi(endpoint=hub.endpoint, token=TOKEN)
    repo = api.create_repo("tester/errors").repo_id
    with pytest.raises(RepositoryNotFoundError):
        api.hf_hub_download("tester/does-not-exist", "config.json", cache_dir=tmp_path)
    with pytest.raises(RevisionNotFoundError):
        api.hf_hub_download(repo, ".gitattributes", revision="no-such-branch", cache_dir=tmp_path)
    with pytest.raises(RemoteEntryNotFoundError):
        api.hf_hub_download(repo, "config.json", cache_dir=tmp_path)
    with pytest.raises(HfHubHTTPError) as exists:
        api.create_repo(repo)
    assert exists.value.response.status_code == 409
    assert api.create_repo(repo, exist_ok=True).repo_id == repo

    head = api.model_info(repo).sha
    with pytest.raises(ValueError, match="Invalid metadata in README.md"):
        api.upload_file(path_or_fileobj=b"---\nlicense: [apache\n---\n# card\n", path_in_repo="README.md", repo_id=repo)
    assert api.model_info(repo).sha == head  # nothing was committed
    api.upload_file(path_or_fileobj=b"---\nlicense: apache-2.0\n---\n# card\n", path_in_repo="README.md", repo_id=repo)
    assert api.model_info(repo).card_data.license == "apache-2.0"
