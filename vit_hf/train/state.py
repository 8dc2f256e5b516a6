"""What a run holds: the `Run` that set-up builds once and every phase (and the task) reads, and the `TrainState` that
changes as training goes (the part a checkpoint's `trainer_state.json` records)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TrainState:
    """Counters and logs that change as training goes."""

    completed_steps: int = 0
    epoch: int = 0
    skip_batches: int = 0  # batches of `epoch` already trained before a resume
    history: list[dict] = field(default_factory=list)
    train_skipped: set[int] = field(default_factory=set)
    last_checkpoint: Path | None = None
    eval_metrics: dict | None = None  # of the weights the run saves (the EMA ones with --model_ema_decay)
    eval_raw: dict | None = None  # with --model_ema_decay: of the trained (raw) weights
    train_images: int = 0
    train_seconds: float = 0.0

    def record(self, epoch: int, batches_in_epoch: int, batches_per_epoch: int) -> dict:
        return {"completed_steps": self.completed_steps, "epoch": epoch, "batches_in_epoch": batches_in_epoch,
                "batches_per_epoch": batches_per_epoch, "log_history": self.history,
                "train_skipped_indices": sorted(self.train_skipped)}


@dataclass
class Run:
    """What `loop.set_up` builds once and every phase reads."""

    args: argparse.Namespace
    task: Any  # a vit_hf.train.task.Task
    accelerator: Any
    output_dir: Path
    data: Any  # what the task's `load_data` returned
    model: Any
    processor: Any
    optimizer: Any
    scheduler: Any
    train_dl: Any
    eval_dl: Any  # None: no evaluation
    sampler: Any
    train_transform: Any
    seed: int
    max_train_steps: int
    num_epochs: int
    card_base: dict
    fingerprint: dict = field(default_factory=dict)  # what every checkpoint records of this run (vit_hf.train.runs)
    progress: Any = None
    state: TrainState = field(default_factory=TrainState)
    window: dict = field(default_factory=dict)  # loss/images since the last log line
    pending: Any = None  # [non-finite losses, summed loss] of the optimizer step being accumulated
    nan_at_step: int | None = None  # test hook: make this optimizer step's loss non-finite
    ema: Any = None  # vit_hf.train.ema.ModelEma with --model_ema_decay
    fsdp: Any = None  # vit_hf.train.fsdp.Sharding when FSDP was asked for (the model is then sharded by us)
