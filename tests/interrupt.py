"""A training run killed part-way, for resume tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import cifarkit.train as train_module
from cifarkit.data.dataset import CIFAR10
from cifarkit.recipes import Recipe
from conftest import THREADS


def train_killed_in_epoch(recipe: Recipe, data: CIFAR10, out: Path, epoch: int = 2, threads: int = THREADS) -> None:
    """Train ``recipe`` into ``out`` at ``threads`` until a KeyboardInterrupt at the start of ``epoch`` (0-based)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train_module, "augment", dies_in_epoch(epoch))
        with pytest.raises(KeyboardInterrupt):
            train_module.train(recipe, data, out, progress=False, threads=threads)


def dies_in_epoch(epoch: int) -> Callable[..., Any]:
    """A stand-in for training's ``augment`` (called once as each epoch starts) that is interrupted in ``epoch``."""
    real_augment = train_module.augment

    def dies(images: Any, **kwargs: Any) -> Any:
        if kwargs["epoch"] == epoch:
            raise KeyboardInterrupt
        return real_augment(images, **kwargs)

    return dies
