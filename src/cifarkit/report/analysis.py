"""Which predictions to look at: confused class pairs, top losses and random samples."""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np


class ConfusedPair(NamedTuple):
    """``count`` test images of class ``actual`` were predicted as ``predicted``."""

    actual: int
    predicted: int
    count: int


@dataclass(frozen=True)
class Prediction:
    """One test prediction: image ``index``, its label, the predicted class, its probability and the loss."""

    index: int
    actual: int
    predicted: int
    probability: float
    loss: float

    @property
    def correct(self) -> bool:
        return self.actual == self.predicted


def confused_pairs(cm: np.ndarray, k: int) -> list[ConfusedPair]:
    """The ``k`` largest off-diagonal cells of a confusion matrix (rows = actual), largest first.

    Pairs are ordered (cat -> dog is not dog -> cat) because the two directions
    are usually different mistakes; zero cells are never listed, ties go by
    (actual, predicted).
    """
    off = np.asarray(cm).copy()
    np.fill_diagonal(off, 0)
    actual, predicted = np.nonzero(off)
    order = np.lexsort((predicted, actual, -off[actual, predicted]))[:k]
    return [ConfusedPair(int(actual[i]), int(predicted[i]), int(off[actual[i], predicted[i]])) for i in order]


def losses(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-image cross-entropy -log p(label), with p clipped away from 0 so it stays finite."""
    p_true = np.asarray(probs, dtype=np.float64)[np.arange(len(labels)), labels]
    return -np.log(np.clip(p_true, 1e-12, 1.0))


def describe(probs: np.ndarray, labels: np.ndarray, indices: np.ndarray) -> list[Prediction]:
    """:class:`Prediction` records for the given test indices, in that order."""
    loss = losses(probs, labels)
    return [
        Prediction(int(i), int(labels[i]), int(probs[i].argmax()), float(probs[i].max()), float(loss[i]))
        for i in indices
    ]


def top_losses(probs: np.ndarray, labels: np.ndarray, k: int) -> list[Prediction]:
    """The ``k`` test images with the highest loss, highest first: the most confidently wrong predictions."""
    order = np.argsort(-losses(probs, labels), kind="stable")[:k]
    return describe(probs, labels, order)


def random_predictions(probs: np.ndarray, labels: np.ndarray, k: int, seed: int) -> list[Prediction]:
    """``k`` test predictions drawn uniformly without replacement, reproducible for a seed."""
    rng = np.random.default_rng(seed)
    return describe(probs, labels, rng.choice(len(labels), size=min(k, len(labels)), replace=False))


def sample_by_correctness(probs: np.ndarray, labels: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``k`` random indices of correctly and of wrongly classified images (in that order)."""
    rng = np.random.default_rng(seed)
    correct = np.asarray(probs).argmax(axis=1) == np.asarray(labels)

    def pick(mask: np.ndarray) -> np.ndarray:
        candidates = np.flatnonzero(mask)
        return rng.choice(candidates, size=min(k, len(candidates)), replace=False)

    return pick(correct), pick(~correct)
