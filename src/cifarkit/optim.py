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
from cifarkit.muon import Muon
from cifarkit.recipes import Recipe


class OptimizerChain:
    """Several optimisers stepped as one, e.g. Muon for conv filters and SGD for the rest.

    Exposes the little the training loop needs: ``param_groups`` (all of
    them, for the schedule), ``zero_grad``, ``step`` and state for checkpoints.
    """

    def __init__(self, *optimizers: torch.optim.Optimizer):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [g for opt in self.optimizers for g in opt.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def state_dict(self) -> dict:
        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state: dict) -> None:
        for opt, s in zip(self.optimizers, state["optimizers"], strict=True):
            opt.load_state_dict(s)


def _make(name: str, groups: list[dict], recipe: Recipe) -> torch.optim.Optimizer:
    if name == "adamax":  # Keras' epsilon, so the notebook recipes train as they did there
        return torch.optim.Adamax(groups, lr=recipe.lr, eps=1e-7)
    if name == "adam":
        return torch.optim.Adam(groups, lr=recipe.lr)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=recipe.lr)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum, nesterov=recipe.nesterov)
    raise CifarkitError(f"unknown optimizer {name!r}; choose adamax, adam, adamw or sgd")


def build_optimizer(model: nn.Module, recipe: Recipe) -> OptimizerChain:
    """The recipe's optimiser over the model's trainable parameters.

    Models may sort their parameters into roles (``parameter_roles()``: e.g.
    filters / norm / head, or backbone / head). Each role trains at
    ``lr * lr_scale[role]``, with weight decay ``weight_decay / lr_scale[role]``
    so that the decay per step (lr x decay) is the same in every role. With
    ``muon_lr > 0`` the ``filters`` role trains with Muon instead.
    """
    roles = model.parameter_roles() if hasattr(model, "parameter_roles") else {"all": list(model.parameters())}
    unknown = set(recipe.lr_scale) - set(roles)
    if unknown:
        raise CifarkitError(f"lr_scale names roles {sorted(unknown)} that {recipe.model} lacks; it has {sorted(roles)}")
    groups, muon_params = [], []
    for role, params in roles.items():
        params = [p for p in params if p.requires_grad]
        if not params:
            continue
        if role == "filters" and recipe.muon_lr > 0:
            muon_params += params
            continue
        scale = recipe.lr_scale.get(role, 1.0)
        groups.append({"params": params, "role": role, "lr": recipe.lr * scale,
                       "weight_decay": recipe.weight_decay / scale if scale else 0.0})
    optimizers = [_make(recipe.optimizer, groups, recipe)] if groups else []
    if muon_params:
        optimizers.append(Muon([{"params": muon_params, "role": "filters"}], lr=recipe.muon_lr,
                               momentum=recipe.muon_momentum, nesterov=True, ns_steps=3, normalize_weights=True))
    for opt in optimizers:
        for group in opt.param_groups:
            group["initial_lr"] = group["lr"]
    return OptimizerChain(*optimizers)


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
