"""The one error type a user can fix: a `UserError` stops the run before training with its message as one line
(what is wrong and the flag or step that fixes it) and exit status 2; `--debug` (or VIT_HF_DEBUG=1) shows the
traceback instead."""

from __future__ import annotations

DEBUG_ENV = "VIT_HF_DEBUG"


class UserError(ValueError):
    """Bad input the user can fix (data, paths, flags, a checkpoint of another run); the message is one line."""
