"""Optimisers, learning-rate schedules and weight averaging, built from a recipe.

Schedules are pure functions of the step, so a resumed run lands on exactly
the learning rate it would have had: no scheduler state to save.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from cifarkit.errors import CifarkitError
from cifarkit.models import parameter_roles
from cifarkit.muon import Muon
from cifarkit.recipes import CHOICES, Recipe


class OptimizerChain:
    """Several optimisers stepped as one (e.g. Muon for conv filters, SGD for the rest), as the training loop needs."""

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


def _either(names: tuple[str, ...]) -> str:
    """``a, b or c``."""
    return f"{', '.join(names[:-1])} or {names[-1]}"


def _make(name: str, groups: list[dict], recipe: Recipe) -> torch.optim.Optimizer:
    # foreach: one multi-tensor call per update term instead of a Python loop over the parameters. torch picks it
    # only for CUDA tensors; on a CPU it is the same arithmetic, bit for bit (tests/test_optim.py), in fewer calls
    # (a seed_cnn3 epoch at batch 32 did not change measurably: benchmarks/results/issue26/epoch_time_*).
    if name == "adamax":  # Keras' epsilon, so the notebook recipes train as they did there
        return torch.optim.Adamax(groups, lr=recipe.lr, eps=1e-7, foreach=True)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=recipe.lr, foreach=True)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum, nesterov=recipe.nesterov, foreach=True)
    raise CifarkitError(f"unknown optimizer {name!r}; choose {_either(CHOICES['optimizer'])}")


def build_optimizer(model: nn.Module, recipe: Recipe) -> OptimizerChain:
    """The recipe's optimiser over the model's trainable parameters.

    Each parameter role trains at ``lr * lr_scale[role]`` with weight decay ``weight_decay / lr_scale[role]``, so
    the decay per step is the same in every role; with ``muon_lr > 0`` the ``filters`` train with Muon instead.
    """
    roles = parameter_roles(model)  # lr_scale names only roles the model has: checked by recipes.validate
    groups, muon_params = [], []
    for role, params in roles.items():
        params = [p for p in params if p.requires_grad]
        if not params:
            continue
        if role == "filters" and recipe.muon_lr > 0:
            muon_params += params
            continue
        scale = recipe.lr_scale.get(role, 1.0)
        group = {
            "params": params,
            "role": role,
            "lr": recipe.lr * scale,
            "weight_decay": recipe.weight_decay / scale if scale else 0.0,
        }
        if role == "whiten_bias" and 0 < recipe.whiten_bias_epochs < recipe.epochs:
            group["train_fraction"] = recipe.whiten_bias_epochs / recipe.epochs
        groups.append(group)
    optimizers = [_make(recipe.optimizer, groups, recipe)] if groups else []
    if muon_params:
        optimizers.append(
            Muon(
                [{"params": muon_params, "role": "filters"}],
                lr=recipe.muon_lr,
                momentum=recipe.muon_momentum,
                nesterov=True,
                ns_steps=3,
                normalize_weights=True,
            )
        )
    for opt in optimizers:
        for group in opt.param_groups:
            group["initial_lr"] = group["lr"]
    return OptimizerChain(*optimizers)


def lr_multiplier(schedule: str, total_steps: int, warmup_steps: int = 0) -> Callable[[float], float]:
    """step -> factor on the base learning rate, for steps 0 .. total_steps - 1 (fractional too), 0 from then on.

    After a linear warm-up: ``constant`` 1, ``linear`` decay to 0 (the triangular schedule of fast CIFAR-10
    trainings) or ``cosine``, half a cosine down to 0.
    """
    if schedule not in CHOICES["schedule"]:
        raise CifarkitError(f"unknown schedule {schedule!r}; choose {_either(CHOICES['schedule'])}")

    def factor(step: float) -> float:
        if step >= total_steps:
            return 0.0
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        if schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def set_learning_rates(optimizer: OptimizerChain, lr_at: Callable[[float], float], step: int) -> None:
    """Set every parameter group's lr for ``step``: its ``initial_lr`` times ``lr_at(step)``.

    A group with a ``train_fraction`` f (airbench's whitening bias) runs the whole schedule in the first fraction
    f of the run and then has lr 0, which freezes it (SGD's momentum and weight decay both act through the lr).
    """
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * lr_at(step / group.get("train_fraction", 1.0))


def weight_ema(model: nn.Module, decay: float) -> AveragedModel:
    """An exponential moving average of ``model``'s weights and buffers; call ``update_parameters(model)`` per step.

    It smooths out the noise of the final steps; BatchNorm statistics are averaged too, to match the weights.
    The averaged network is ``.module``.
    """
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
