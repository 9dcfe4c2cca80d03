"""Optimisers and learning-rate schedules, built by name from a recipe.

Schedules are pure functions of the step, so a resumed run lands on exactly
the learning rate it would have had: no scheduler state to save.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from cifarkit.errors import CifarkitError


def build_optimizer(
    params, name: str, lr: float, *, weight_decay: float = 0.0, momentum: float = 0.9, nesterov: bool = False
) -> torch.optim.Optimizer:
    """The optimiser ``name`` over ``params`` (a module's parameters or param groups).

    Adamax uses Keras' epsilon (1e-7) so the notebook recipes train as they did there.
    """
    if name == "adamax":
        return torch.optim.Adamax(params, lr=lr, eps=1e-7, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    raise CifarkitError(f"unknown optimizer {name!r}; choose adamax, adam, adamw or sgd")


def lr_multiplier(schedule: str, total_steps: int, warmup_steps: int = 0) -> Callable[[int], float]:
    """step -> factor on the base learning rate.

    - constant: 1 (after warm-up).
    - linear: linear warm-up from 0, then linear decay to 0 at the last step
      (the triangular schedule of fast CIFAR-10 trainings).
    - cosine: linear warm-up, then half a cosine down to 0.
    """
    if schedule not in ("constant", "linear", "cosine"):
        raise CifarkitError(f"unknown schedule {schedule!r}; choose constant, linear or cosine")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        if schedule == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


class EMA:
    """Exponential moving average of a model's weights (and BatchNorm buffers).

    Evaluating the average of recent weights instead of the last ones smooths
    out the noise of the final steps: a cheap gain for short runs.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].lerp_(v, 1.0 - self.decay)
            else:
                self.shadow[k].copy_(v)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.shadow = {k: v.clone() for k, v in state.items()}
