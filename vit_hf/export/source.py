"""Find and load the model to export: a hub-ready vit_hf folder, or a Hub repo id (at `--revision`).

The model is loaded with vit_hf's own classes (not the folder's copied code), in float32 and eval mode, with SDPA
attention: it exports as plain MatMul/Softmax at opset 18 and as ONNX's fused `Attention` operator from opset 23.
Every way the input can be wrong is an `ExportError` with one line naming it; nothing is guessed (a weights file
with missing or extra keys is refused rather than filled with fresh random values).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..cli import hub_revision, no_transformers_bars, parse_hub_ref
from .common import ExportError

MODEL_TYPE = "vit_hf"
HUB_FILES = ["config.json", "model.safetensors", "preprocessor_config.json", "*.py"]
MAKE_ONE = "a hub-ready folder as `python -m convert` or `vit_hf.train` write it"
# a vit_hf.train checkpoint (`step_N` / `epoch_N`) keeps its hub-ready model in this subfolder
TRAIN_MODEL_SUBDIR = "hf_model"


@dataclass
class Source:
    """The loaded model and processor, and where they came from (folder; repo id and commit for a Hub id)."""

    model: torch.nn.Module
    processor: object
    folder: Path
    repo_id: str | None = None
    commit: str | None = None


def _read_config(folder: Path, name: str) -> dict:
    path = folder / "config.json"
    if not path.is_file() and (folder / TRAIN_MODEL_SUBDIR / "config.json").is_file():
        raise ExportError(f"{name} is a vit_hf.train checkpoint (for --resume_from_checkpoint), not a model folder: "
                          f"export its model, {folder / TRAIN_MODEL_SUBDIR}")
    if not path.is_file():
        raise ExportError(f"{name} has no config.json: not a model folder ({MAKE_ONE})")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExportError(f"{name}: config.json is not valid JSON ({e})") from None
    if not isinstance(config, dict) or config.get("model_type") != MODEL_TYPE:
        kind = config.get("model_type") if isinstance(config, dict) else None
        what = f"a {kind!r} model" if kind else "no model_type"
        raise ExportError(
            f"{name} holds {what}, not a {MODEL_TYPE} one: convert it first (`python -m convert {name} MODEL_DIR`), "
            f"then export MODEL_DIR"
        )
    return config


def _few(items, limit: int = 6) -> str:
    items = sorted(map(str, items))
    return ", ".join(items[:limit]) + (f", ... and {len(items) - limit} more" if len(items) > limit else "")


def _load_model(folder: Path, name: str) -> torch.nn.Module:
    from vit_hf import VitHfConfig, VitHfForImageClassification

    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise ExportError(f"{name} has no model.safetensors: {MAKE_ONE} is needed")
    try:
        config = VitHfConfig.from_pretrained(folder)
    except (ValueError, TypeError, KeyError) as e:
        detail = " ".join(str(e).split())
        raise ExportError(f"{name}: config.json is not a valid {MODEL_TYPE} config ({detail})") from None
    from transformers.utils import logging as hf_logging

    # a progress bar per load is noise, and the loading report (missing / unexpected keys) is refused below in one
    # line instead
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with no_transformers_bars():
            model, info = VitHfForImageClassification.from_pretrained(
                folder, config=config, dtype=torch.float32, attn_implementation="sdpa", output_loading_info=True
            )
    except Exception as e:  # safetensors, torch and transformers each raise their own types for a damaged file
        detail = " ".join(str(e).split())[:200]
        raise ExportError(f"{name}: model.safetensors cannot be loaded ({type(e).__name__}: {detail})") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    problems = {k: v for k, v in info.items() if k != "error_msgs" and v} | {"errors": info.get("error_msgs")}
    problems = {k: v for k, v in problems.items() if v}
    if problems:
        listed = "; ".join(f"{k.replace('_', ' ')}: {_few(v)}" for k, v in problems.items())
        raise ExportError(f"{name}: model.safetensors does not match config.json ({listed})")
    return model.eval()


def _load_processor(folder: Path, name: str):
    from vit_hf import VitHfImageProcessor

    if not (folder / "preprocessor_config.json").is_file():
        raise ExportError(f"{name} has no preprocessor_config.json: the export would not say how to prepare input")
    try:
        return VitHfImageProcessor.from_pretrained(folder)
    except Exception as e:  # transformers raises OSError / ValueError / TypeError for a bad processor file
        raise ExportError(f"{name}: preprocessor_config.json cannot be loaded ({' '.join(str(e).split())})") from None


def load_folder(folder: Path, name: str | None = None) -> tuple[torch.nn.Module, object]:
    """Model and processor of a hub-ready vit_hf folder (`name` is how messages call it)."""
    name = name or str(folder)
    if not folder.is_dir():
        raise ExportError(f"{name} is a file: pass the model folder that holds it")
    _read_config(folder, name)
    processor = _load_processor(folder, name)
    if getattr(processor, "max_num_patches", None):  # checked before the weights are read
        raise ExportError(f"{name} is a NaFlex model (its processor emits patches, pixel_attention_mask and "
                          f"spatial_shapes); the ONNX graph takes fixed-size NCHW pixel_values only: not exported")
    return _load_model(folder, name), processor


def _hub_message(e: Exception, repo_id: str, revision: str | None) -> str:
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    at = f"{repo_id}@{revision}" if revision else repo_id
    if isinstance(e, GatedRepoError):
        return f"{repo_id} is gated: accept its terms on the Hub, then log in (HF_TOKEN or `hf auth login`)"
    if isinstance(e, RepositoryNotFoundError):
        return (f"{repo_id}: no such model repo on the Hub, or it is private and no valid token was given (HF_TOKEN or "
                f"`hf auth login`); nor a local folder {repo_id}")
    if isinstance(e, RevisionNotFoundError):
        return f"{repo_id}: revision {revision!r} does not exist"
    if isinstance(e, LocalEntryNotFoundError):
        return f"{at}: not in the local cache and the Hub cannot be reached (offline, HF_HUB_OFFLINE=1 or no network)"
    if isinstance(e, HfHubHTTPError):
        return f"{at}: the Hub answered {' '.join(str(e).split())[:200]}"
    return f"{at}: download failed ({type(e).__name__}: {' '.join(str(e).split())[:200]})"


def _download(repo_id: str, revision: str | None) -> Path:
    """config.json first (a repo of another kind is refused before its weights are fetched), then the rest."""
    from huggingface_hub import hf_hub_download, snapshot_download

    try:
        config = Path(hf_hub_download(repo_id, "config.json", revision=revision))
        # the snapshot folder is named after the commit: the rest comes from the same commit, whatever the branch does
        _read_config(config.parent, f"{repo_id}@{config.parent.name}")
        return Path(snapshot_download(repo_id, revision=config.parent.name, allow_patterns=HUB_FILES))
    except ExportError:
        raise
    except Exception as e:  # huggingface_hub's error types and network failures, each named in one line
        raise ExportError(_hub_message(e, repo_id, revision)) from None


def load_source(model_dir: str, revision: str | None = None) -> Source:
    """A local folder when `model_dir` exists, else a Hub reference (`owner/name` or `owner/name@rev`, the same
    parser as `python -m convert`) downloaded at its revision or `revision`."""
    path = Path(model_dir)
    if path.exists():
        if revision is not None:
            raise ExportError(f"--revision is for a Hub repo id, but {model_dir} is a local folder: drop --revision")
        model, processor = load_folder(path)
        return Source(model, processor, path)
    if parse_hub_ref(model_dir) is None:
        raise ExportError(f"{model_dir}: no such folder (MODEL_DIR is {MAKE_ONE}, or a Hub repo id owner/name"
                          f"[@revision])")
    try:
        repo_id, revision = hub_revision(model_dir, revision)
    except ValueError as e:
        raise ExportError(str(e)) from None
    folder = _download(repo_id, revision)
    model, processor = load_folder(folder, f"{repo_id}@{folder.name}")
    return Source(model, processor, folder, repo_id=repo_id, commit=folder.name)
