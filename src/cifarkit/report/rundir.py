"""Reading what training and evaluation left in a run directory.

Layout (written by ``cifarkit train`` / evaluation):

* ``config.json``   {"name" (the recipe), "model", "epochs", ...}
* ``history.json``  per-epoch dicts {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"}
* ``metrics.json``  {"params", "best_val_acc", "train_seconds", "epochs_run", "test_acc", "test_acc_tta"?}
* ``eval/predictions.npz``  probs (N, 10) test softmax, labels (N,), optionally probs_tta

Accuracies are fractions in [0, 1]. The report writes its own files to ``insight/``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cifarkit.errors import CifarkitError


@dataclass(frozen=True)
class Run:
    """A finished, evaluated run: its records and its test-set predictions."""

    path: Path
    config: dict[str, Any]
    history: list[dict[str, Any]]
    metrics: dict[str, Any]
    probs: np.ndarray
    labels: np.ndarray
    probs_tta: np.ndarray | None

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def insight_dir(self) -> Path:
        """Where the report writes this run's figures and tables."""
        return self.path / "insight"


def load_run(path: str | Path) -> Run:
    """Read a run directory; a missing or malformed file raises :class:`CifarkitError` saying what to do."""
    path = Path(path)
    if not path.is_dir():
        raise CifarkitError(f"run directory {path} does not exist; pass the directory `cifarkit train` created")
    probs, labels, probs_tta = _load_predictions(path / "eval" / "predictions.npz")
    return Run(
        path=path,
        config=_load_json(path / "config.json", "train the run first"),
        history=_load_json(path / "history.json", "train the run first"),
        metrics=_load_json(path / "metrics.json", "train and evaluate the run first"),
        probs=probs,
        labels=labels,
        probs_tta=probs_tta,
    )


def _load_json(file: Path, fix: str) -> Any:
    """Parse one JSON record of the run."""
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CifarkitError(f"{file} is missing; {fix}") from None
    except json.JSONDecodeError as exc:
        raise CifarkitError(f"{file} is not valid JSON ({exc}); re-run the step that wrote it") from None


def _load_predictions(file: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """probs, labels and optional probs_tta, checked for consistent shapes."""
    if not file.is_file():
        raise CifarkitError(f"{file} is missing; evaluate the run on the test set first")
    with np.load(file) as npz:
        if "probs" not in npz or "labels" not in npz:
            raise CifarkitError(f"{file} lacks 'probs' or 'labels'; re-run the evaluation")
        probs, labels = npz["probs"], npz["labels"].astype(np.int64)
        probs_tta = npz["probs_tta"] if "probs_tta" in npz else None
    if probs.ndim != 2 or len(probs) != len(labels):
        raise CifarkitError(f"{file}: probs {probs.shape} do not match labels {labels.shape}; re-run the evaluation")
    return probs, labels, probs_tta
