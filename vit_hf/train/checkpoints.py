"""Checkpoints written whole or not at all: `accelerator.save_state` plus a standalone hub-ready model, in a hidden
folder renamed into place once complete; finding the latest complete one; the test hooks that kill a run."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
from pathlib import Path
from typing import Any

from ..hub import save_hub_folder

logger = logging.getLogger("vit_hf.train")

# Test hooks (not flags: no user should want them). Each makes the process SIGKILL itself at a chosen moment.
KILL_AFTER_STEP_ENV = "VIT_HF_TEST_KILL_AFTER_STEP"  # after optimizer step N (and its checkpoint, if any) completes
KILL_IN_CHECKPOINT_ENV = "VIT_HF_TEST_KILL_IN_CHECKPOINT"  # while writing the checkpoint of step N
NAN_AT_STEP_ENV = "VIT_HF_TEST_NAN_AT_STEP"  # make the loss of optimizer step N non-finite

TRAINER_STATE = "trainer_state.json"
HF_MODEL_SUBDIR = "hf_model"  # a standalone, hub-ready copy of the model inside every checkpoint


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json(path: Path, obj: Any) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.flush()
        os.fsync(f.fileno())


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints in `output_dir` as (completed optimizer steps, path), oldest first. A checkpoint is
    complete when it has its final name (`step_N` / `epoch_N`, given by an atomic rename after everything was
    written) and a `trainer_state.json`; the hidden `.tmp-*` folders of interrupted writes are ignored."""
    out = []
    root = Path(output_dir)
    if not root.is_dir():
        return out
    for path in root.iterdir():
        prefix, _, number = path.name.partition("_")
        if path.is_dir() and prefix in ("step", "epoch") and number.isdigit() and (path / TRAINER_STATE).is_file():
            try:
                steps = int(json.loads((path / TRAINER_STATE).read_text())["completed_steps"])
            except (ValueError, KeyError):
                continue
            out.append((steps, path))
    return sorted(out)


def maybe_kill(env: str, step: int) -> None:
    if os.environ.get(env) == str(step):
        logger.warning("%s=%d: killing this process now (test hook)", env, step)
        logging.shutdown()
        os.kill(os.getpid(), signal.SIGKILL)


def save_checkpoint(accelerator, output_dir: Path, name: str, state: dict, model, processor, card_kwargs,
                    save_state=None) -> Path:
    """`accelerator.save_state` + a standalone hub-ready model (`hf_model/`) + `trainer_state.json`, written into a
    hidden temporary folder and renamed into place once complete (a kill at any point leaves the previous checkpoint
    intact and no half-written `step_N`). Called on every process. `save_state(folder)`, when given, replaces
    `accelerator.save_state` (FSDP: vit_hf.train.fsdp.save_state); `model` is then the plain model on the main process
    (the others' is not used)."""

    final, tmp = output_dir / name, output_dir / f".tmp-{name}"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    (save_state or accelerator.save_state)(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_hub_folder(accelerator.unwrap_model(model), processor, tmp / HF_MODEL_SUBDIR, card_kwargs=card_kwargs)
        maybe_kill(KILL_IN_CHECKPOINT_ENV, state["completed_steps"])
        write_json(tmp / TRAINER_STATE, state)
        _fsync_dir(tmp)
        if final.exists():  # re-running over an old output folder: replace it, never merge
            old = output_dir / f".old-{name}-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(output_dir)
        logger.info("checkpoint saved: %s", final)
    accelerator.wait_for_everyone()
    return final


def resolve_checkpoint(spec: str | None, output_dir: Path) -> Path | None:
    if spec is None:
        return None
    if spec == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            logger.info("--resume_from_checkpoint latest: no complete checkpoint in %s, starting fresh", output_dir)
            return None
        return found[-1][1]
    path = Path(spec)
    if not (path / TRAINER_STATE).is_file():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {TRAINER_STATE})")
    return path

