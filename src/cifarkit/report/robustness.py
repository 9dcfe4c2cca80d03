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

from cifarkit.analysis import accuracy
from cifarkit.inference import predict_logits

from .corruptions import CORRUPTIONS, SEVERITIES, corrupt


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
    device: str = "auto",
    bf16: bool = False,
) -> list[RobustnessRow]:
    """Clean accuracy, then accuracy for each corruption at each severity, of a model in eval mode.

    Plain forward passes (no TTA) on ``device``, under bfloat16 autocast when ``bf16``.
    """

    def score(images: np.ndarray) -> float:
        logits = predict_logits(model, images, batch_size=batch_size, device=device, bf16=bf16)
        return accuracy(y, logits.argmax(axis=1))

    rows = [RobustnessRow("none", 0, score(x_uint8))]
    for name in corruptions:
        rows.extend(RobustnessRow(name, s, score(corrupt(x_uint8, name, s, seed))) for s in severities)
    return rows


def accuracy_by_severity(rows: Sequence[RobustnessRow]) -> dict[str, dict[int, float]]:
    """``{corruption: {severity: accuracy}}`` of the corrupted rows (the clean row excluded), in row order."""
    table: dict[str, dict[int, float]] = {}
    for r in rows:
        if r.severity > 0:
            table.setdefault(r.corruption, {})[r.severity] = r.accuracy
    return table


def mean_corruption_accuracy(rows: Sequence[RobustnessRow]) -> dict[str, float]:
    """Mean accuracy over severities for each corruption (the clean row excluded)."""
    return {name: float(np.mean(list(acc.values()))) for name, acc in accuracy_by_severity(rows).items()}
