"""Weight EMA (`--model_ema_decay`): an exponential moving average of the trained weights, kept in float32 beside the
model, updated after every optimizer step, evaluated beside the raw weights, and the model a run saves.

The decay warms up as timm's `ModelEmaV3(use_warmup=True)` with its defaults (warmup_gamma 1, warmup_power 2/3,
update_after_step 0) when called with `step` = optimizer steps done: the first update copies the weights, update
`s` uses `min(D, 1 - s ** (-2/3))` (0.37 at step 2, 0.9 at step 32, 0.99 at step 1000), so a short run is not
dominated by the initial weights as a fixed 0.9999 would make it."""

from __future__ import annotations

import copy

import torch
from torch import nn

WARMUP_POWER = 2 / 3  # timm ModelEmaV3's default warmup_power; warmup_gamma 1


def ema_decay(decay: float, step: int) -> float:
    """The decay of the update made after optimizer step `step` (1-based)."""
    if step <= 1:
        return 0.0
    return min(decay, 1.0 - step ** -WARMUP_POWER)


class ModelEma:
    """A float32 copy of `model` (unwrapped, same device) and the number of updates made. `state_dict` /
    `load_state_dict` make it a checkpointable object for `accelerator.register_for_checkpointing`: the copy's
    weights and the step travel with `save_state` / `load_state`, so a resumed run continues the same average."""

    def __init__(self, model: nn.Module, decay: float):
        self.module = copy.deepcopy(model).float().eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay, self.step = decay, 0

    def _pairs(self, model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        # parameters and floating buffers, matched by name (the trained model may be wrapped by DDP: unwrap first)
        mine, theirs = self.module.state_dict(), model.state_dict()
        keys = [k for k, v in mine.items() if v.is_floating_point()]
        return [mine[k] for k in keys], [theirs[k].detach().to(mine[k].dtype) for k in keys]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.step += 1
        ema, raw = self._pairs(model)
        torch._foreach_lerp_(ema, raw, 1.0 - ema_decay(self.decay, self.step))

    def state_dict(self) -> dict:
        return {"step": self.step, "decay": self.decay, "weights": self.module.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if state["decay"] != self.decay:
            raise ValueError(f"the checkpoint's EMA decay is {state['decay']}, this run's --model_ema_decay "
                             f"{self.decay}: resume with the same decay")
        self.step = int(state["step"])
        self.module.load_state_dict(state["weights"])
