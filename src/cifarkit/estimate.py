"""How long a run takes here: its work counted in training images, times the seconds one takes on this machine.

Minutes measured on one machine hold for that machine only (the same CPU kind
has trained at half the speed on another host), so cifarkit measures: a few
steps of the run itself (``cifarkit train``) or of its model (``cifarkit
info``), and multiplies. The work of a run, in training images at full side:
every epoch's images, scaled by the pixels progressive resizing leaves; every
validation; the test evaluation with its TTA views. A forward pass alone costs
about a third of a training step (the backward pass is about twice the forward).
"""

from __future__ import annotations

import functools
import json
import time

from cifarkit.data.augment import progressive_size
from cifarkit.inference import TTA_VIEWS
from cifarkit.recipes import Recipe

FORWARD_SHARE = 1 / 3  # of a training step's cost, per image


def image_side(recipe: Recipe, epoch: int, full: int) -> int:
    """The side of the images trained on in ``epoch``: smaller early on with progressive resizing."""
    return progressive_size(
        epoch, epochs=recipe.epochs, full=full, start=recipe.resize_start, until=recipe.resize_until
    )


def run_work(recipe: Recipe, n_train: int, n_val: int, n_test: int, full: int = 32, from_epoch: int = 0) -> float:
    """The work left from ``from_epoch`` to the end of the test evaluation, in training images at ``full`` side.

    Early stopping can only make it less.
    """
    epochs = range(from_epoch, recipe.epochs)
    training = sum(n_train * (image_side(recipe, e, full) / full) ** 2 for e in epochs)
    test_passes = 1 + (TTA_VIEWS[recipe.tta] if recipe.tta != "none" else 0)  # plain, then with TTA
    evaluation = (len(epochs) * n_val + n_test * test_passes) * FORWARD_SHARE
    return training + evaluation


def minutes(seconds: float) -> str:
    """``about 7 min`` or ``about 40 s``: an estimate, not a reading."""
    return f"about {seconds / 60:.0f} min" if seconds >= 90 else f"about {seconds:.0f} s"


class RunClock:
    """Times a run's first steps and says how long the rest of it will take; again after the thread count changes.

    The first steps after a start (or a change) are not timed: oneDNN picks
    and prepares its kernels then.
    """

    SKIPPED, TIMED = 2, 4

    def __init__(self, recipe: Recipe, n_train: int, n_val: int, n_test: int, full: int) -> None:
        self.recipe, self.sizes, self.full = recipe, (n_train, n_val, n_test), full
        self.restart()

    def restart(self) -> None:
        """Time afresh from the next step on (the thread count changed)."""
        self.steps, self.images, self.since, self.said = 0, 0.0, 0.0, False

    def step(self, epoch: int, batch: int, done: int, side: int) -> str | None:
        """Count a finished step of ``batch`` images at ``side``, ``done`` of ``epoch``'s; a line once timed enough."""
        self.steps += 1
        if self.said or self.steps <= self.SKIPPED:
            self.since = time.perf_counter()
            return None
        scale = (side / self.full) ** 2
        self.images += batch * scale
        if self.steps < self.SKIPPED + self.TIMED:
            return None
        self.said = True
        per_image = (time.perf_counter() - self.since) / self.images
        left = run_work(self.recipe, *self.sizes, full=self.full, from_epoch=epoch) - done * scale
        return f"expected: {minutes(left * per_image)} more for this run (training, validation, test evaluation)"


CIFAR10_TRAIN_IMAGES = 50_000  # the unit's epoch: airbench94 trains on all of them


@functools.cache
def _model_flops(model: str, kwargs: str) -> int:
    from cifarkit.models import create_model, forward_flops

    return forward_flops(create_model(model, pretrained=False, **json.loads(kwargs)))


def training_compute(recipe: Recipe) -> float:
    """A recipe's training compute in airbench94-epochs, the unit that carries across machines.

    1.0 = ``fastnet_s`` (the airbench94 network) forward and backward at 32 px
    over 50,000 images. Other models count by their forward FLOPs, smaller
    images (progressive resizing) by their pixels, a validation split by the
    images it leaves to train on. Frozen-feature recipes count one forward
    pass of the backbone over the training images (a backward costs about
    twice a forward; the head's training is negligible). A teacher's
    forward passes (distillation) are not counted: the recipe does not name
    the teacher.
    """
    unit = _model_flops("fastnet_s", "{}")
    flops = _model_flops(recipe.model, json.dumps(recipe.model_kwargs, sort_keys=True))
    n_train = CIFAR10_TRAIN_IMAGES * (1 - recipe.val_fraction)
    if recipe.frozen_features:
        return n_train * FORWARD_SHARE * flops / (unit * CIFAR10_TRAIN_IMAGES)
    return run_work(recipe, n_train, 0, 0) * flops / (unit * CIFAR10_TRAIN_IMAGES)
