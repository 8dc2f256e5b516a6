"""Runs that cannot be mixed up: the checks made before any data is read (output dir, paths, Hub access, flags a
NaFlex model refuses), the run fingerprint every checkpoint records and a resume compares before any state is loaded,
and the resume itself.

A fingerprint has sections: the model config (and a NaFlex model's input geometry, `max_num_patches`), the task's
identity (`Task.identity`: label names; SimMIM's mask flags), the data (source, split sizes, a content fingerprint),
the batch geometry (per device x accumulation x processes) and the recipe (optimizer, regularisation, seed,
precision, augmentation). Resuming refuses any difference there, one line each. The schedule's length (epochs,
steps, warm-up) may change: that is logged and allowed, as transformers' Trainer resumes with more epochs."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from . import fsdp
from .checkpoints import HF_MODEL_SUBDIR, TRAINER_STATE, resolve_checkpoint
from .errors import UserError
from .lora import ADAPTER_SUBDIR
from .model import naflex_problem
from .streaming import STREAM_RECORD_KEY
from .tasks import TASKS

logger = logging.getLogger("vit_hf.train")

FINGERPRINT_KEY = "run"
RECIPE = ("learning_rate", "weight_decay", "lr_scheduler_type", "adam_beta1", "adam_beta2", "adam_epsilon",
          "max_grad_norm", "label_smoothing", "mixup", "cutmix", "mixup_switch_prob", "layer_decay", "seed",
          "model_ema_decay", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "crop_pct",
          "train_crop_scale", "train_hflip", "shuffle_buffer_size")
SCHEDULE = ("max_train_steps", "num_train_epochs", "num_warmup_steps")  # safe to change on resume: logged
# config.json fields that say how a model was saved, not what it is
CONFIG_NOISE = ("transformers_version", "architectures", "auto_map", "_name_or_path", "torch_dtype", "dtype",
                "id2label", "label2id", "_attn_implementation_autoset", "attn_implementation")
CONTENT_SAMPLE = 64  # images whose bytes (or file name and size) enter the content fingerprint; labels all do
RESULT_FILES = ("all_results.json", "log_history.json", "training_curves.png", "confusion_matrix.png")


# ----------------------------------------------------------------------------------------------------------------------
# Before any data is read
# ----------------------------------------------------------------------------------------------------------------------


def check_start(args: argparse.Namespace, output_dir: Path) -> Path | None:
    """Refuse (UserError) what can be seen from the flags, the file system and the model's processor config alone
    (a NaFlex model with fixed-size flags); returns the checkpoint to resume (None: a fresh start)."""
    for flag in ("train_dir", "validation_dir"):
        path = getattr(args, flag)
        if path is not None and not Path(path).is_dir():
            raise UserError(f"--{flag} {path}: no such folder (give an image folder with one subfolder per class)")
    held = run_files(output_dir)
    if args.overwrite_output_dir and args.resume_from_checkpoint == "latest":
        raise UserError("--overwrite_output_dir removes the checkpoints --resume_from_checkpoint latest would resume: "
                        "give one of the two")
    if held and args.resume_from_checkpoint is None and not args.overwrite_output_dir:
        raise UserError(f"--output_dir {output_dir} already holds a run ({', '.join(held[:4])}"
                        f"{', ...' if len(held) > 4 else ''}): continue it with --resume_from_checkpoint latest, "
                        f"replace it with --overwrite_output_dir, or choose another --output_dir")
    checkpoint = resolve_checkpoint(args.resume_from_checkpoint, output_dir)
    finished = [n for n in held if not n.startswith(".tmp-")]  # only a torn first checkpoint: a fresh start is fine
    if args.resume_from_checkpoint == "latest" and checkpoint is None and finished:
        raise UserError(f"--resume_from_checkpoint latest: --output_dir {output_dir} holds a run "
                        f"({', '.join(finished[:4])}) but no complete checkpoint to resume: replace it with "
                        f"--overwrite_output_dir, or choose another --output_dir")
    if checkpoint is not None and not fsdp.requested():
        fsdp.check_unsharded(checkpoint)  # an FSDP checkpoint says so before its fingerprint is compared
    if checkpoint is not None and args.overwrite_output_dir and checkpoint.resolve().is_relative_to(output_dir):
        raise UserError(f"--overwrite_output_dir would remove {checkpoint}, the checkpoint to resume: give one of the "
                        f"two")
    why = naflex_problem(args, TASKS[args.task])  # reads the model's preprocessor_config.json, nothing else
    if why:
        raise UserError(why)
    if args.push_to_hub:
        check_hub_access(args.hub_model_id, args.hub_token)
    return checkpoint


def run_files(output_dir: Path) -> list[str]:
    """What of a training run `output_dir` holds: checkpoints (complete or not), results, a saved model."""
    if not output_dir.is_dir():
        return []
    names = sorted(p.name for p in output_dir.iterdir() if _is_run_file(p))
    return sorted(names, key=lambda n: (not n.startswith(("step_", "epoch_")), n))


def _is_run_file(path: Path) -> bool:
    prefix, _, number = path.name.removeprefix(".tmp-").partition("_")
    if path.is_dir():
        return (prefix in ("step", "epoch") and number.isdigit()) or path.name.startswith(".old-")
    return path.name in (*RESULT_FILES, "model.safetensors")


def prepare_output_dir(args: argparse.Namespace, output_dir: Path, accelerator) -> None:
    """Create `output_dir`; with --overwrite_output_dir first remove the old run's checkpoints, results and model, so
    that nothing of it can be resumed or mistaken for this run's. Main process; every process waits."""
    if accelerator.is_main_process:
        if args.overwrite_output_dir and output_dir.is_dir():
            from ..hub import HUB_FILE_NAMES

            removed = [p for p in output_dir.iterdir() if _is_run_file(p) or p.name in HUB_FILE_NAMES
                       or p.name == ADAPTER_SUBDIR]
            for path in removed:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
            if removed:
                logger.info("--overwrite_output_dir: removed the previous run's %s", ", ".join(sorted(
                    p.name for p in removed)))
        output_dir.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()


def check_hub_access(repo_id: str, token: str | None) -> None:
    """--push_to_hub: a token that the Hub accepts, with write access to `repo_id`'s namespace; checked before
    training (one whoami request), so that a run never learns at its end that it cannot publish."""
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    token = token or get_token()
    api = HfApi()
    if not token:
        raise UserError("--push_to_hub needs a Hub token with write access: pass --hub_token, run `hf auth login`, "
                        "or set HF_TOKEN")
    try:
        who = api.whoami(token=token)
    except OfflineModeIsEnabled:
        raise UserError("--push_to_hub with HF_HUB_OFFLINE=1 set: unset it, or drop --push_to_hub") from None
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        raise UserError(f"--push_to_hub: the Hub at {api.endpoint} rejected the token ({status}): pass a valid write "
                        f"token with --hub_token or run `hf auth login`") from None
    except Exception as err:  # noqa: BLE001 - transport errors come from several libraries
        raise UserError(f"--push_to_hub: cannot reach the Hub at {api.endpoint} ({type(err).__name__}): check the "
                        f"network or HF_ENDPOINT, or drop --push_to_hub") from None
    user, orgs = who["name"], [o["name"] for o in who.get("orgs", [])]
    role = who.get("auth", {}).get("accessToken", {}).get("role")
    if role == "read":
        raise UserError(f"--push_to_hub: the token of {user!r} is read-only: pass a write token with --hub_token")
    namespace = repo_id.split("/")[0] if "/" in repo_id else user
    if namespace not in (user, *orgs):
        raise UserError(f"--hub_model_id {repo_id}: {user!r} cannot write to the namespace {namespace!r} (yours: "
                        f"{', '.join([user, *orgs])}): push to {user}/{repo_id.split('/')[-1]} or ask for access")


def explained_load(build, data, args: argparse.Namespace):
    """`build(data)` (the task's model building) with the loader's many-line errors for a model that cannot be
    found turned into one line."""
    from huggingface_hub.errors import HFValidationError

    try:
        return build(data)
    except (OSError, HFValidationError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"--model_name_or_path {args.model_name_or_path}: {first} (give a local folder, a Hub id, "
                        f"or a size preset: test, tiny, small, base, large, huge)") from err


# ----------------------------------------------------------------------------------------------------------------------
# The fingerprint
# ----------------------------------------------------------------------------------------------------------------------


def _digest(*parts: Any) -> str:
    h = hashlib.blake2b(digest_size=8)
    for part in parts:
        h.update(part if isinstance(part, bytes) else repr(part).encode())
    return h.hexdigest()


def content_fingerprint(split, image_column: str, label_column: str | None) -> str | None:
    """A cheap identity of a prepared split: its size, every label, and `CONTENT_SAMPLE` evenly spaced images (their
    bytes, or for files their class folder, name and size): two data sets that differ there differ here."""
    if split is None:
        return None
    if not hasattr(split, "__len__"):
        return "streamed"
    n, h = len(split), hashlib.blake2b(digest_size=8)
    h.update(str(n).encode())
    if label_column is not None and label_column in split.column_names:
        h.update(np.asarray(split[label_column], dtype=np.int64).tobytes())
    rows = sorted({int(i) for i in np.linspace(0, n - 1, min(n, CONTENT_SAMPLE))}) if n else []
    for value in split.select(rows)[image_column] if rows else []:
        if isinstance(value, dict) and value.get("bytes") is not None:
            h.update(hashlib.blake2b(value["bytes"], digest_size=8).digest())
        elif isinstance(value, dict) and value.get("path"):
            path = Path(value["path"])
            size = path.stat().st_size if path.is_file() else -1
            h.update(f"{path.parent.name}/{path.name}:{size}".encode())
        else:
            h.update(repr(value).encode())
    return h.hexdigest()


def model_identity(config) -> dict[str, Any]:
    return {k: v for k, v in sorted(config.to_dict().items()) if k not in CONFIG_NOISE}


def naflex_geometry(processor) -> dict[str, int] | None:
    """A NaFlex processor's input geometry (the patch budget and patch side every image is cut to), None for a
    fixed-size one, whose input size is in the model config."""
    limit = getattr(processor, "max_num_patches", None)
    return {"max_num_patches": int(limit), "patch_size": int(processor.patch_size)} if limit else None


def fingerprint(args: argparse.Namespace, task, data, model, processor, accelerator) -> dict[str, Any]:
    """What this run is, for every checkpoint it writes (JSON-safe)."""
    label_column = getattr(data, "label_column", None)
    source = data.source
    if source and os.path.exists(source):
        source = str(Path(source).resolve())
    return {
        "task": args.task,
        "model": model_identity(model.config),
        "identity": task.identity(data),
        "data": {"source": source,
                 "train": len(data.train) if hasattr(data.train, "__len__") else "streamed",
                 "validation": len(data.validation) if data.validation is not None else None,
                 "train_content": content_fingerprint(data.train, data.image_column, label_column),
                 "validation_content": content_fingerprint(data.validation, data.image_column, label_column)},
        "batch": {"per_device": args.per_device_train_batch_size, "accumulation": args.gradient_accumulation_steps,
                  "processes": accelerator.num_processes},
        "recipe": {**{k: getattr(args, k) for k in RECIPE}, "mixed_precision": accelerator.mixed_precision},
        "schedule": {k: getattr(args, k) for k in SCHEDULE},
        **({"naflex": naflex_geometry(processor)} if naflex_geometry(processor) else {}),  # fixed size: as before
    }


def _naflex_text(geometry: dict | None) -> str:
    if geometry is None:
        return "fixed-size images"
    return f"NaFlex, max_num_patches {geometry['max_num_patches']} of {geometry['patch_size']}px patches"


def _batch_text(b: dict) -> str:
    return f"{b['per_device']} per device x {b['accumulation']} accumulation x {b['processes']} process(es)"


def _data_text(d: dict) -> str:
    return (f"{d['source']} (train {d['train']}, validation {d['validation']}, content "
            f"{d['train_content']}/{d['validation_content']})")


def differences(saved: dict, current: dict) -> tuple[list[str], list[str]]:
    """(refusals, safe changes), one line each, comparing a checkpoint's fingerprint with this run's."""
    lines = []
    if saved.get("task", current["task"]) != current["task"]:
        lines.append(f"checkpoint task {saved['task']}; this run --task {current['task']}")
    old, new = saved.get("model", {}), current["model"]
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    if changed:
        lines.append(f"checkpoint model {', '.join(f'{k}={old.get(k)}' for k in changed)}; this run "
                     f"{', '.join(f'{k}={new.get(k)}' for k in changed)} (--model_name_or_path, --config_overrides, "
                     f"--image_size, --drop_path_rate)")
    if saved.get("naflex") != current.get("naflex"):
        lines.append(f"checkpoint input {_naflex_text(saved.get('naflex'))}; this run "
                     f"{_naflex_text(current.get('naflex'))} (the model's preprocessor_config.json)")
    mine, theirs = saved.get("identity", {}), current["identity"]
    for key in sorted(mine.keys() & theirs.keys()):  # the task's own: label names, SimMIM's mask flags, ...
        if mine[key] != theirs[key]:
            if isinstance(mine[key], list):
                lines.append(f"checkpoint {key} {', '.join(map(str, mine[key]))}; this run "
                             f"{', '.join(map(str, theirs[key]))}")
            else:
                lines.append(f"checkpoint --{key} {mine[key]}; this run {theirs[key]}")
    if "data" in saved and saved["data"] != current["data"]:
        lines.append(f"checkpoint data {_data_text(saved['data'])}; this run {_data_text(current['data'])}")
    if "batch" in saved and saved["batch"] != current["batch"]:
        lines.append(f"checkpoint batch {_batch_text(saved['batch'])}; this run {_batch_text(current['batch'])}")
    for key, value in saved.get("recipe", {}).items():
        if current["recipe"].get(key) != value:
            flag = f"--{key}" if key != "mixed_precision" else "mixed precision"
            lines.append(f"checkpoint {flag} {value}; this run {current['recipe'].get(key)}")
    safe = [f"{k} {v} -> {current['schedule'][k]}" for k, v in saved.get("schedule", {}).items()
            if current["schedule"].get(k) != v]
    return lines, safe


def _legacy_fingerprint(checkpoint: Path) -> dict:
    """A checkpoint written before fingerprints: its model config and labels from its `hf_model/config.json`."""
    path = checkpoint / HF_MODEL_SUBDIR / "config.json"
    if not path.is_file():
        return {}
    from ..configuration_vit_hf import VitHfConfig

    config = VitHfConfig.from_pretrained(str(path.parent))
    labels = [config.id2label[i] for i in range(config.num_labels)] if config.num_labels else None
    return {"model": model_identity(config), "identity": {"labels": labels} if labels else {}}


def check_resume(checkpoint: Path | None, current: dict) -> dict | None:
    """The checkpoint's trainer state, once its fingerprint matches this run's; UserError with one line per
    difference otherwise. Reads only `trainer_state.json` (and, for an old checkpoint, its model's config.json)."""
    if checkpoint is None:
        return None
    saved = json.loads((checkpoint / TRAINER_STATE).read_text())
    recorded = saved.get(FINGERPRINT_KEY) or _legacy_fingerprint(checkpoint)
    refusals, safe = differences(recorded, current)
    if refusals:
        raise UserError("\n".join([f"cannot resume {checkpoint}: it was written by another run", *refusals,
                                   "resume with the checkpoint's settings, or start afresh with --overwrite_output_dir "
                                   "or another --output_dir"]))
    if safe:
        logger.info("resuming %s with a changed schedule (allowed): %s", checkpoint, "; ".join(safe))
    return saved


def resume(run, checkpoint: Path, saved: dict) -> None:
    """Load the checked checkpoint's state and counters into `run`."""
    batches = len(run.train_dl)
    if saved.get("batches_per_epoch") not in (None, batches):  # a checkpoint without a fingerprint
        raise UserError(f"cannot resume {checkpoint}: it was written with {saved['batches_per_epoch']} batches per "
                        f"epoch, this run has {batches}: resume with the same data, batch size and processes")
    if run.fsdp is not None:
        fsdp.load_state(run, checkpoint)
    else:
        fsdp.check_unsharded(checkpoint)
        run.accelerator.load_state(str(checkpoint))
    state = run.state
    state.completed_steps, state.epoch, state.skip_batches = (saved["completed_steps"], saved["epoch"],
                                                              saved["batches_in_epoch"])
    state.history, state.train_skipped = saved.get("log_history", []), set(saved.get("train_skipped_indices", []))
    state.last_checkpoint = checkpoint
    if STREAM_RECORD_KEY in saved:
        run.train_dl.load_state(saved[STREAM_RECORD_KEY], run.accelerator.process_index,
                                run.accelerator.num_processes, checkpoint)
    if state.skip_batches >= batches:
        state.epoch, state.skip_batches = state.epoch + 1, 0
    logger.info("resumed from %s: step %d, epoch %d, batch %d", checkpoint, state.completed_steps, state.epoch,
                state.skip_batches)
