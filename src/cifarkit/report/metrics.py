"""Classification metrics of a set of test-set predictions.

Thin, explicitly-shaped wrappers around scikit-learn: every class gets a row and a
column even when it never occurs, so matrices from different runs line up.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn import metrics as skm


def predicted_classes(probs: np.ndarray) -> np.ndarray:
    """The arg-max class of each row of probabilities (or logits), int64 (N,)."""
    return np.asarray(probs).argmax(axis=1).astype(np.int64)


def accuracy(labels: np.ndarray, preds: np.ndarray) -> float:
    """Fraction of predictions equal to the labels."""
    return float(np.mean(np.asarray(labels) == np.asarray(preds)))


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts (K, K) int64: row = actual class, column = predicted class."""
    return skm.confusion_matrix(labels, preds, labels=np.arange(num_classes)).astype(np.int64)


def normalize_rows(cm: np.ndarray) -> np.ndarray:
    """Row-normalised confusion matrix: each row sums to 1 (per-class recall on the diagonal); empty rows stay 0."""
    totals = cm.sum(axis=1, keepdims=True)
    return np.divide(cm, totals, out=np.zeros(cm.shape, dtype=np.float64), where=totals > 0)


def classification_report(labels: np.ndarray, preds: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """Per-class precision, recall, F1 and support plus accuracy and macro/weighted averages (sklearn's dict)."""
    return skm.classification_report(
        labels, preds, labels=np.arange(len(class_names)), target_names=list(class_names),
        output_dict=True, zero_division=0,
    )


def classification_report_text(labels: np.ndarray, preds: np.ndarray, class_names: Sequence[str]) -> str:
    """The same report as sklearn's fixed-width text table."""
    return skm.classification_report(
        labels, preds, labels=np.arange(len(class_names)), target_names=list(class_names),
        digits=4, zero_division=0,
    )
