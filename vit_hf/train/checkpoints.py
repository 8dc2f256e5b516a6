"""Checkpoints written whole or not at all: `accelerator.save_state` plus a standalone hub-ready model, in a hidden
folder renamed into place once complete; finding the latest complete one."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from ..hub import save_hub_folder
from ._testing import KILL_IN_CHECKPOINT_ENV, maybe_fill_disk, maybe_kill
from .errors import UserError

logger = logging.getLogger("vit_hf.train")

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


def _is_write_failure(err: BaseException) -> bool:
    """An OSError, or what torch.save / safetensors make of one (a RuntimeError "file write failed", a
    SafetensorError carrying the OS message)."""
    text = str(err).lower()
    return isinstance(err, OSError) or (isinstance(err, RuntimeError) and "write" in text) or (
        type(err).__name__ == "SafetensorError" and ("space" in text or "write" in text))


class CheckpointWriteError(UserError):
    """A checkpoint could not be written (e.g. the disk is full); nothing of it is left, the earlier ones stay."""


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
    try:
        (save_state or accelerator.save_state)(str(tmp))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            maybe_fill_disk(state["completed_steps"])
            save_hub_folder(accelerator.unwrap_model(model), processor, tmp / HF_MODEL_SUBDIR,
                            card_kwargs=card_kwargs)
            maybe_kill(KILL_IN_CHECKPOINT_ENV, state["completed_steps"])
            write_json(tmp / TRAINER_STATE, state)
            _fsync_dir(tmp)
    except Exception as err:  # a full disk, a quota: the half-written folder goes, the previous checkpoint stays
        if not _is_write_failure(err):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        previous = list_checkpoints(output_dir)
        kept = f"{previous[-1][1].name} is intact" if previous else "no earlier checkpoint"
        raise CheckpointWriteError(f"writing checkpoint {name} in {output_dir} failed ({err}); {kept}: free space, "
                                   f"then continue with --resume_from_checkpoint latest") from err
    if accelerator.is_main_process:
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
        found = ", ".join(p.name for _, p in list_checkpoints(path if path.is_dir() else output_dir)) or "none"
        raise UserError(f"--resume_from_checkpoint {spec}: not a complete checkpoint (no {TRAINER_STATE}); pass a "
                        f"step_N / epoch_N folder or 'latest' (complete checkpoints there: {found})")
    return path

