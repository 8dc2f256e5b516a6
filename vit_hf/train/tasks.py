"""The registry of training tasks: `--task NAME` picks `TASKS[NAME]`. Adding a task is a module with a `task.Task`
subclass plus one entry here; nothing else changes."""

from __future__ import annotations

from .classification import ClassificationTask
from .mim import MimTask
from .task import Task

TASKS: dict[str, type[Task]] = {task.name: task for task in (ClassificationTask, MimTask)}
DEFAULT_TASK = ClassificationTask.name
