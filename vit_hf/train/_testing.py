"""Test hooks (environment variables, not flags: no user should want them). Private: the tests import them from
here; nothing in the public API of `vit_hf.train` names them."""

from __future__ import annotations

import errno
import logging
import os
import signal

logger = logging.getLogger("vit_hf.train")

KILL_AFTER_STEP_ENV = "VIT_HF_TEST_KILL_AFTER_STEP"  # SIGKILL after optimizer step N (and its checkpoint) completes
KILL_IN_CHECKPOINT_ENV = "VIT_HF_TEST_KILL_IN_CHECKPOINT"  # SIGKILL while the checkpoint of step N is being written
ENOSPC_IN_CHECKPOINT_ENV = "VIT_HF_TEST_ENOSPC_IN_CHECKPOINT"  # the disk "fills up" while step N's checkpoint is saved
NAN_AT_STEP_ENV = "VIT_HF_TEST_NAN_AT_STEP"  # make the loss of optimizer step N non-finite


def maybe_kill(env: str, step: int) -> None:
    if os.environ.get(env) == str(step):
        logger.warning("%s=%d: killing this process now (test hook)", env, step)
        logging.shutdown()
        os.kill(os.getpid(), signal.SIGKILL)


def maybe_fill_disk(step: int) -> None:
    """Raise the error a full disk gives a write (ENOSPC), as the checkpoint of step `step` is being saved."""
    if os.environ.get(ENOSPC_IN_CHECKPOINT_ENV) == str(step):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def nan_at_step() -> int | None:
    value = os.environ.get(NAN_AT_STEP_ENV)
    return int(value) if value else None
