"""The `Task` interface: everything that differs between what `vit_hf.train` can train (classification, SimMIM
pretraining). The loop (`loop.py`) calls these methods and nothing else of a task; a task reads the `Run`
(`state.Run`) but never imports the loop.

To add a task: write a module with a `Task` subclass (a `name`, its flags, and the methods below), and add the class
to `TASKS` in `tasks.py`. `--task NAME` then selects it; its own flags are refused with any other task.
"""

from __future__ import annotations

import argparse
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch


class Task(ABC):
    """One training task. An instance is made per run from the parsed arguments (`self.args`)."""

    name: str = ""
    help: str = ""  # one line for `--task`'s help

    def __init__(self, args: argparse.Namespace):
        self.args = args

    # -- flags ----------------------------------------------------------------------------------------------------
    @classmethod
    def add_arguments(cls, group: argparse._ArgumentGroup) -> None:
        """This task's own flags (refused with the other tasks when changed from their defaults); none by default."""
        return None

    @classmethod
    def check_arguments(cls, args: argparse.Namespace) -> str | None:
        """Why these flags do not fit the task (one line naming the flag), or None. Runs at parse time."""
        return None

    @classmethod
    def check_naflex(cls, args: argparse.Namespace, model: str) -> str | None:
        """Why this run cannot train `model`, a NaFlex model (its processor sets `max_num_patches`: each image its own
        grid, patches as input), one line; None when it can. By default a task trains fixed-size images only."""
        return (f"{model}: --task {cls.name} trains fixed-size images only; fine-tune it with --task classification, "
                f"or give a fixed-size model")

    # -- set-up ---------------------------------------------------------------------------------------------------
    @abstractmethod
    def load_data(self, seed: int) -> Any:
        """The data: an object with `train`, `validation` (None: no evaluation), `source`, `notes` (log lines) and
        `labels` (empty for a task without labels). Raise `errors.UserError` (a `data.DataError`) for bad data."""

    @abstractmethod
    def build_model(self, data: Any) -> tuple[Any, Any, str | None, list[str]]:
        """(model, image processor, base model Hub id or None, log lines), through `model.build_model`."""

    @abstractmethod
    def make_loaders(self, data: Any, processor: Any, seed: int) -> tuple[Any, Any, Any, Any]:
        """(train loader, eval loader or None, sampler with `set_epoch`, train transform with `epoch`)."""

    @abstractmethod
    def describe(self, data: Any) -> str:
        """The plan's examples line."""

    def identity(self, data: Any) -> dict[str, Any]:
        """What, beyond the model config, data and recipe, a checkpoint of this task must match to be resumed,
        compared key by key on resume: lists are named (`{"labels": [...]}`), scalars are flags (`{"mask_ratio": 0.6}`
        is said as `--mask_ratio`)."""
        return {}

    # -- training and evaluation ----------------------------------------------------------------------------------
    @abstractmethod
    def loss(self, run: Any, batch: dict) -> torch.Tensor:
        """The scalar training loss of one batch (invalid examples, `batch["valid"]` False, weigh nothing)."""

    @abstractmethod
    def evaluate(self, run: Any, model: Any) -> dict[str, Any]:
        """Metrics of `model` on `run.eval_dl` (called on every process; each example counted once)."""

    @abstractmethod
    def eval_entry(self, metrics: dict, raw: dict | None) -> tuple[dict, str]:
        """(the log-history fields of one evaluation, the log line). `raw`: the raw weights' metrics beside EMA ones."""

    # -- the end --------------------------------------------------------------------------------------------------
    @abstractmethod
    def results(self, run: Any) -> dict[str, Any]:
        """The task's part of `all_results.json` (called on every process: it may gather)."""

    @abstractmethod
    def card(self, run: Any, results: dict, out: Path) -> tuple[dict, dict[str, Path]]:
        """Main process: (model-card fields, {file name: path} of figures written into `out` for the card)."""

    @abstractmethod
    def summary(self, results: dict) -> str:
        """The last log line's headline, e.g. 'eval_accuracy 0.9512'."""
