"""Accuracy of a model under the common corruptions of :mod:`cifarkit.report.corruptions`.

The result is a flat table, one row per (corruption, severity) plus the clean
accuracy (corruption ``"none"``, severity 0), ready for CSV, JSON or a plot.
The same seed is used at every severity, so the noise pattern only grows.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from torch import nn

from cifarkit.evaluate import predict_logits

from .corruptions import CORRUPTIONS, SEVERITIES, corrupt
from .metrics import accuracy


@dataclass(frozen=True)
class RobustnessRow:
    """Accuracy of the model on the images under one corruption at one severity."""

    corruption: str
    severity: int
    accuracy: float


def evaluate_corruptions(
    model: nn.Module,
    x_uint8: np.ndarray,
    y: np.ndarray,
    *,
    corruptions: Sequence[str] = CORRUPTIONS,
    severities: Sequence[int] = SEVERITIES,
    seed: int = 0,
    batch_size: int = 256,
) -> list[RobustnessRow]:
    """Clean accuracy, then accuracy for each corruption at each severity, of an eval-mode model."""

    def score(images: np.ndarray) -> float:
        return accuracy(y, predict_logits(model, images, batch_size=batch_size).argmax(axis=1))

    rows = [RobustnessRow("none", 0, score(x_uint8))]
    for name in corruptions:
        rows.extend(RobustnessRow(name, s, score(corrupt(x_uint8, name, s, seed))) for s in severities)
    return rows


def mean_corruption_accuracy(rows: Sequence[RobustnessRow]) -> dict[str, float]:
    """Mean accuracy over severities for each corruption (the clean row excluded)."""
    names = dict.fromkeys(r.corruption for r in rows if r.severity > 0)
    return {n: float(np.mean([r.accuracy for r in rows if r.corruption == n])) for n in names}
