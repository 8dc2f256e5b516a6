"""`--dataset_name owner/name` from a Hub endpoint: a data set written by the real writer (`DatasetDict.push_to_hub`,
parquet shards under `data/` through LFS) to the loopback Hub (tests/hub_server.py), then trained on by id, map-style
and streaming (Range GETs, no Arrow copy of the train split), and the streamed run's folder loaded with remote code
where vit_hf is not installed."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import REPO, SMALL, TESTS, TOKEN, TOKENS, child_env, run_train
from hub_server import HubServer
from isolated import last_json_line, run_isolated

pytestmark = pytest.mark.slow  # a pushed data set and three interpreters per test
REPO_ID = "tester/digits"
SPLITS = {"train": 30, "validation": 12}


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    with HubServer(tokens=TOKENS) as server:
        yield server


def hub_env(hub: HubServer, home: Path) -> dict[str, str]:
    # HF_ENDPOINT is read when huggingface_hub is imported: children get it from the start
    return {"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": TOKEN, "HF_HUB_OFFLINE": "0",
            "HF_DATASETS_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(home)}


@pytest.fixture(scope="module")
def pushed(hub, tmp_path_factory) -> str:
    """Real digits pushed with `DatasetDict.push_to_hub` (small shards: several parquet files per split)."""
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(TESTS)!r})
        from datasets import DatasetDict
        from helpers import digits_dataset
        splits = DatasetDict(train=digits_dataset({SPLITS['train']}, 0),
                             validation=digits_dataset({SPLITS['validation']}, 1000))
        splits.push_to_hub({REPO_ID!r}, max_shard_size="3KB")
    """)
    env = child_env(**hub_env(hub, tmp_path_factory.mktemp("push_home")))
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-4000:]
    repo = hub.repos[f"datasets/{REPO_ID}"]
    files = sorted(repo.commits[repo.refs["main"]].files)
    assert "README.md" in files and sum(f.startswith("data/train-") for f in files) >= 2, files
    assert all(repo.commits[repo.refs["main"]].files[f].sha256 for f in files if f.endswith(".parquet"))  # LFS
    return REPO_ID


def train_from_hub(hub, tmp_path: Path, *extra: str) -> dict:
    out = tmp_path / "out"
    run_train([*SMALL, "--dataset_name", REPO_ID, "--output_dir", str(out), "--max_train_steps", "3",
               "--per_device_train_batch_size", "4", "--cache_dir", str(tmp_path / "cache"), *extra],
              **hub_env(hub, tmp_path / "home"))
    return json.loads((out / "all_results.json").read_text())


def test_hub_dataset_by_id_map_style(hub, pushed, tmp_path):
    results = train_from_hub(hub, tmp_path)
    assert results["data_source"] == REPO_ID and results["completed_steps"] == 3
    assert results["train_samples"] == SPLITS["train"] and results["eval_samples"] == SPLITS["validation"]
    assert results["labels"] == ["zero", "one", "two"]
    assert any("train" in p.name for p in (tmp_path / "cache").rglob("*.arrow"))  # map-style: prepared, as it should


def test_hub_dataset_by_id_streaming(hub, pushed, tmp_path):
    hub.clear_log()
    results = train_from_hub(hub, tmp_path, "--streaming", "--shuffle_buffer_size", "8")
    assert results["train_samples"] == "streamed" and results["eval_samples"] == SPLITS["validation"]
    assert results["completed_steps"] == 3 and results["labels"] == ["zero", "one", "two"]
    streamed = {r.path for r in hub.requests if r.method == "GET" and r.status == 206 and "/data/train-" in r.path}
    assert streamed, "the train parquet files were not read with Range GETs"
    arrow = [p.name for p in (tmp_path / "cache").rglob("*.arrow")]
    assert arrow and all("validation" in name for name in arrow), arrow
    code = f"""
        import json
        from transformers import AutoModelForImageClassification
        model = AutoModelForImageClassification.from_pretrained({str(tmp_path / "out")!r}, trust_remote_code=True)
        print(json.dumps([type(model).__module__.split(".")[0], model.config.id2label]))
    """
    module, id2label = last_json_line(run_isolated(code, cwd=tmp_path))
    assert module == "transformers_modules" and id2label == {"0": "zero", "1": "one", "2": "two"}
