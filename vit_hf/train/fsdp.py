"""FSDP2 for `vit_hf.train`: `accelerate launch --use_fsdp --fsdp_version 2 ...` shards the model with torch's own
`fully_shard` (each `Block`, then the root) on CPU over gloo and on GPUs alike, and checkpoints it with
`torch.distributed.checkpoint` (DCP).

Why not accelerate's FSDP: accelerate 1.15 enables its FSDP plugin only for GPU distributed types; on CPU,
`--use_fsdp` silently trains plain DDP (measured), and forcing its FSDP mode breaks `save_state`. So whenever FSDP is
asked for (`ACCELERATE_USE_FSDP=true`, which the launcher sets), the Accelerator is built with that switch off (it
prepares the optimizer, loaders and schedule; the model is never handed to it, so it is never wrapped in DDP), and
this module shards, clips, checkpoints and consolidates. One code path on every device, the one the tests run.

Checkpoint layout (inside the same `.tmp-*` -> `step_N` atomic rename as every checkpoint): `fsdp/` is the DCP
folder of the sharded model and optimizer state (one file per rank + metadata); `rank_R.pt` holds rank R's
schedule, RNG states and accelerate's micro-step counter. A run resumes with the number of processes that wrote it
(DCP could reshard, but the data order and the per-rank RNG streams depend on it). The consolidated, hub-ready model
(`hf_model/`, and the final output folder) is gathered to rank 0 with `get_model_state_dict(full_state_dict=True,
cpu_offload=True)`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger("vit_hf.train")

USE_FSDP_ENV = "ACCELERATE_USE_FSDP"  # set by `accelerate launch --use_fsdp`, with the FSDP_* settings below
DCP_SUBDIR = "fsdp"
TRUE = ("1", "true", "yes")


class FsdpError(RuntimeError):
    """FSDP was asked for and cannot be done as asked: the run stops (never a silent fall-back to DDP)."""


def requested() -> bool:
    return os.environ.get(USE_FSDP_ENV, "false").strip().lower() in TRUE


def _env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    return default if value is None else value.strip().lower() in TRUE


@contextlib.contextmanager
def accelerate_fsdp_off():
    """Build the Accelerator with its FSDP switch off, so that on GPUs too it neither shards nor insists on
    preparing the model with the optimizer (we shard ourselves); the switch is restored afterwards."""
    saved = os.environ.get(USE_FSDP_ENV)
    if saved is not None:
        os.environ[USE_FSDP_ENV] = "false"
    try:
        yield
    finally:
        if saved is not None:
            os.environ[USE_FSDP_ENV] = saved


# Each check: (is the run impossible?, the one line that says why and what to do).
def refusal(args, accelerator) -> str | None:
    """Why this FSDP run cannot be done as asked (one line naming the problem and the fix), or None."""
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401
    except ImportError:
        return (f"FSDP (--use_fsdp) needs torch.distributed.fsdp.fully_shard (torch >= 2.6); this is torch "
                f"{torch.__version__}: upgrade torch, or train with DDP (--multi_gpu)")
    checks = [
        (accelerator.mixed_precision == "fp16", "FSDP with --mixed_precision fp16 is not supported (it needs a "
         "sharded gradient scaler): use --mixed_precision bf16 or no"),
        (args.model_ema_decay is not None, "--model_ema_decay is not supported with FSDP (the average would be a "
         "full, unsharded copy on every rank): drop it, or train with DDP (--multi_gpu)"),
        (args.lora_r is not None, "--lora_r is not supported with FSDP (LoRA trains a small fraction of the weights: "
         "DDP holds it comfortably): drop --use_fsdp and launch with --multi_gpu"),
        (_env_flag("FSDP_OFFLOAD_PARAMS", False), "--fsdp_offload_params is not supported by vit_hf.train's FSDP: "
         "drop it"),
        (accelerator.num_processes < 2, f"FSDP (--use_fsdp) shards over processes and this run has "
         f"{accelerator.num_processes}: launch with --num_processes 2 or more, or drop --use_fsdp"),
    ]
    return next((why for impossible, why in checks if impossible), None)


def configure(args, accelerator) -> None:
    """Stop (FsdpError) when this run cannot shard as asked; `--fsdp_activation_checkpointing` turns on the
    trainer's own activation checkpointing (transformers' per-block checkpointing, which FSDP2's hooks run inside)."""
    why = refusal(args, accelerator)
    if why is not None:
        raise FsdpError(why)
    if _env_flag("FSDP_ACTIVATION_CHECKPOINTING", False):
        args.gradient_checkpointing = True
    if os.environ.get("FSDP_VERSION", "2") != "2" and accelerator.is_main_process:
        logger.warning("FSDP_VERSION %s asked for: vit_hf.train shards with FSDP2 (fully_shard)",
                       os.environ["FSDP_VERSION"])


def check_unsharded(folder: Path) -> None:
    """A run without FSDP cannot resume an FSDP checkpoint (its state is in DCP shards, not accelerate's files)."""
    if (Path(folder) / DCP_SUBDIR).is_dir():
        raise FsdpError(f"{folder} was written by an FSDP run ({DCP_SUBDIR}/): resume it with the same launch "
                        f"(accelerate launch --use_fsdp --num_processes N ...)")


@dataclass
class Sharding:
    """What `shard` did: the mesh, the unsharded class (to rebuild a plain model from the full state dict) and how
    many parameter elements this rank holds."""

    mesh: Any
    plain_class: type
    blocks: int
    local_numel: int
    total_numel: int
    is_main: bool

    def log_line(self, rank: int) -> str:
        return (f"FSDP2: fully_shard on {self.blocks} blocks + the root over {self.mesh.size()} processes; rank {rank} "
                f"holds {self.local_numel:,} of {self.total_numel:,} parameter elements "
                f"({self.local_numel / self.total_numel:.1%})")

    def results(self) -> dict:
        """For all_results.json: every rank's local parameter count (a collective: call on every rank)."""
        from accelerate.utils import gather_object

        return {"fsdp": {"world_size": self.mesh.size(), "total_parameter_elements": self.total_numel,
                         "local_parameter_elements": gather_object([self.local_numel])}}


def shard(model, accelerator) -> Sharding:
    """`fully_shard` every transformer block, then the root; mixed precision bf16 keeps fp32 master weights and
    reduces gradients in fp32 (the FSDP2 counterpart of accelerate's autocast under DDP)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    plain_class = type(model)
    mesh = init_device_mesh(accelerator.device.type, (accelerator.num_processes,))
    bf16 = accelerator.mixed_precision == "bf16"
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if bf16 else None,
                                  reduce_dtype=torch.float32 if bf16 else None)
    reshard = _env_flag("FSDP_RESHARD_AFTER_FORWARD", True)
    model.to(accelerator.device)
    blocks = [m for m in model.modules() if type(m).__name__ in model._no_split_modules]
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard)
    fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard)
    params = list(model.parameters())
    local = sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in params)
    return Sharding(mesh, plain_class, len(blocks), local, sum(p.numel() for p in params), accelerator.is_main_process)


def clip_grad_norm_(model, max_norm: float) -> torch.Tensor:
    """The global gradient norm over all ranks' shards (torch's DTensor-aware clip: the per-shard norms are reduced
    across the mesh), gradients scaled in place when above `max_norm`; returns the norm as a plain tensor."""
    norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], max_norm)
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


def full_model(sharding: Sharding, model):
    """The consolidated model (a plain, unsharded instance with the full weights on CPU) on rank 0, None on the
    others. A collective: every rank must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not sharding.is_main:
        return None
    with torch.device("meta"):  # no weights to initialise (and no draw from the RNG): the full state replaces them
        plain = sharding.plain_class(model.config)
    plain.load_state_dict(full, assign=True)
    return plain.eval()


# ----------------------------------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------------------------------


def _rank_file(folder: Path, rank: int) -> Path:
    return folder / f"rank_{rank}.pt"


def save_state(run, folder: str | Path) -> None:
    """Sharded model + optimizer through DCP, and this rank's schedule, RNG and micro-step counter. Every rank."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    folder = Path(folder)
    model_state, optim_state = get_state_dict(run.model, run.optimizer.optimizer)
    dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(folder / DCP_SUBDIR))
    acc = run.accelerator
    local = {"scheduler": run.scheduler.state_dict(), "accelerate_step": acc.step, "rng": _rng_states()}
    with open(_rank_file(folder, acc.process_index), "wb") as f:
        pickle.dump(local, f)
        f.flush()
        os.fsync(f.fileno())


def load_state(run, folder: Path) -> None:
    """The inverse of `save_state`, on every rank; refuses a checkpoint written without FSDP or by another number
    of processes (the data order and the per-rank RNG streams depend on it)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    acc = run.accelerator
    if not (folder / DCP_SUBDIR).is_dir():
        raise FsdpError(f"{folder} was written without FSDP (no {DCP_SUBDIR}/): resume it with the launch that wrote "
                        f"it, or start a fresh --output_dir")
    if not _rank_file(folder, acc.process_index).is_file() or _rank_file(folder, acc.num_processes).is_file():
        raise FsdpError(f"{folder} was written by another number of processes than this run's "
                        f"{acc.num_processes}: resume with the same --num_processes")
    model_state, optim_state = get_state_dict(run.model, run.optimizer.optimizer)
    state = {"model": model_state, "optimizer": optim_state}
    dcp.load(state, checkpoint_id=str(folder / DCP_SUBDIR))
    set_state_dict(run.model, run.optimizer.optimizer, model_state_dict=state["model"],
                   optim_state_dict=state["optimizer"])
    with open(_rank_file(folder, acc.process_index), "rb") as f:
        local = pickle.load(f)  # noqa: S301 - this run's own checkpoint
    run.scheduler.load_state_dict(local["scheduler"])
    acc.step = local["accelerate_step"]
    _set_rng_states(local["rng"])


def _rng_states() -> dict:
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
