"""A training run killed part-way, for resume tests."""

from __future__ import annotations

from pathlib import Path

import pytest

import cifarkit.train as train_module
from cifarkit.data.dataset import CIFAR10
from cifarkit.recipes import Recipe


def train_killed_in_epoch(recipe: Recipe, data: CIFAR10, out: Path, epoch: int = 2) -> None:
    """Train ``recipe`` into ``out`` until a KeyboardInterrupt at the start of ``epoch`` (0-based)."""
    real_epoch = train_module.train_one_epoch

    def dies(*args, **kwargs):
        if args[4] == epoch:  # train_one_epoch's epoch index
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train_module, "train_one_epoch", dies)
        with pytest.raises(KeyboardInterrupt):
            train_module.train(recipe, data, out, progress=False)
