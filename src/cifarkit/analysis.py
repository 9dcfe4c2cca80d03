"""What a model's predictions say: metrics, confused classes, calibration and the predictions worth a look.

Pure functions over probabilities (N, K) and labels (N,), shared by :mod:`cifarkit.evaluate`,
:mod:`cifarkit.predict` and the report. Metrics wrap scikit-learn with every class given a row and a column even
when it never occurs, so matrices from different runs line up. Calibration is the expected calibration error over
equal-width confidence bins (Naeini et al. 2015; Guo et al. 2017): ``sum_b |B_b| / N * |acc(B_b) - conf(B_b)|``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np


@dataclass(frozen=True)
class Prediction:
    """The model's answer for one image: its most probable classes and, for a labelled image, how right it is.

    ``source`` names the image (a file, or ``test[17]``); ``top`` holds (class, probability) pairs, most probable
    first; ``error`` says why an image could not be read. ``actual`` and ``loss`` are known for labelled images.
    """

    source: str
    top: tuple[tuple[str, float], ...] = ()
    error: str | None = None
    index: int | None = None
    actual: str | None = None
    loss: float | None = None

    @property
    def predicted(self) -> str:
        return self.top[0][0]

    @property
    def probability(self) -> float:
        return self.top[0][1]

    @property
    def correct(self) -> bool:
        return self.actual == self.predicted

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the image and its ranked classes (with label and loss when known), or its error."""
        if self.error:
            return {"image": self.source, "error": self.error}
        labelled = {"actual": self.actual, "loss": self.loss} if self.actual is not None else {}
        return {"image": self.source, **labelled, "predictions": [{"class": c, "probability": p} for c, p in self.top]}


class ConfusedPair(NamedTuple):
    """``count`` test images of class ``actual`` were predicted as ``predicted``."""

    actual: int
    predicted: int
    count: int


# --- metrics ---------------------------------------------------------------------------------------------------------


def predicted_classes(probs: np.ndarray) -> np.ndarray:
    """The arg-max class of each row of probabilities (or logits), int64 (N,)."""
    return np.asarray(probs).argmax(axis=1).astype(np.int64)


def accuracy(labels: np.ndarray, preds: np.ndarray) -> float:
    """Fraction of predictions equal to the labels."""
    return float(np.mean(np.asarray(labels) == np.asarray(preds)))


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts (K, K) int64: row = actual class, column = predicted class."""
    from sklearn import metrics as skm  # imported when used: about 0.9 s for every process that imports training

    return skm.confusion_matrix(labels, preds, labels=np.arange(num_classes)).astype(np.int64)


def normalize_rows(cm: np.ndarray) -> np.ndarray:
    """Row-normalised confusion matrix: each row sums to 1 (per-class recall on the diagonal); empty rows stay 0."""
    totals = cm.sum(axis=1, keepdims=True)
    return np.divide(cm, totals, out=np.zeros(cm.shape, dtype=np.float64), where=totals > 0)


def classification_report(labels: np.ndarray, preds: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """Per-class precision, recall, F1 and support plus accuracy and macro/weighted averages (sklearn's dict)."""
    return _report(labels, preds, class_names, output_dict=True)


def classification_report_text(labels: np.ndarray, preds: np.ndarray, class_names: Sequence[str]) -> str:
    """The same report as sklearn's fixed-width text table."""
    return _report(labels, preds, class_names, digits=4)


def _report(labels: np.ndarray, preds: np.ndarray, class_names: Sequence[str], **how: Any) -> Any:
    from sklearn import metrics as skm

    names = list(class_names)
    return skm.classification_report(
        labels, preds, labels=np.arange(len(names)), target_names=names, zero_division=0, **how
    )


def confused_pairs(cm: np.ndarray, k: int) -> list[ConfusedPair]:
    """The ``k`` largest non-zero off-diagonal cells of a confusion matrix (rows = actual), largest first.

    Pairs are ordered (cat -> dog is not dog -> cat, a different mistake); ties go by (actual, predicted).
    """
    off = np.asarray(cm).copy()
    np.fill_diagonal(off, 0)
    actual, predicted = np.nonzero(off)
    order = np.lexsort((predicted, actual, -off[actual, predicted]))[:k]
    return [ConfusedPair(int(actual[i]), int(predicted[i]), int(off[actual[i], predicted[i]])) for i in order]


# --- single predictions ----------------------------------------------------------------------------------------------


def _top_indices(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest values, largest first; equal values keep their order (a stable sort)."""
    return np.argsort(-np.asarray(values), kind="stable")[:k]


def ranked(probs: np.ndarray, classes: Sequence[str], k: int) -> tuple[tuple[str, float], ...]:
    """The ``k`` most probable (class, probability) pairs of one probability row: the one ranking of classes."""
    return tuple((classes[i], float(probs[i])) for i in _top_indices(probs, k))


def losses(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-image cross-entropy -log p(label), with p clipped away from 0 so it stays finite."""
    p_true = np.asarray(probs, dtype=np.float64)[np.arange(len(labels)), labels]
    return -np.log(np.clip(p_true, 1e-12, 1.0))


def describe(
    probs: np.ndarray, labels: np.ndarray, indices: np.ndarray, classes: Sequence[str], top_k: int = 1
) -> list[Prediction]:
    """:class:`Prediction` records of the labelled test images at ``indices``, in that order."""
    loss = losses(probs, labels)
    return [
        Prediction(
            f"test[{i}]", ranked(probs[i], classes, top_k), index=int(i), actual=classes[labels[i]], loss=float(loss[i])
        )
        for i in indices
    ]


def prediction_rows(predictions: Sequence[Prediction]) -> list[dict[str, Any]]:
    """Test predictions as flat CSV rows: index, actual, predicted, probability, loss."""
    return [
        {"index": p.index, "actual": p.actual, "predicted": p.predicted, "probability": p.probability, "loss": p.loss}
        for p in predictions
    ]


def top_losses(probs: np.ndarray, labels: np.ndarray, k: int, classes: Sequence[str]) -> list[Prediction]:
    """The ``k`` test images with the highest loss, highest first: the most confidently wrong predictions."""
    return describe(probs, labels, _top_indices(losses(probs, labels), k), classes)


def random_predictions(
    probs: np.ndarray, labels: np.ndarray, k: int, seed: int, classes: Sequence[str]
) -> list[Prediction]:
    """``k`` test predictions drawn uniformly without replacement, reproducible for a seed."""
    rng = np.random.default_rng(seed)
    return describe(probs, labels, rng.choice(len(labels), size=min(k, len(labels)), replace=False), classes)


def sample_by_correctness(probs: np.ndarray, labels: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``k`` random indices of correctly and of wrongly classified images (in that order)."""
    rng = np.random.default_rng(seed)
    correct = np.asarray(probs).argmax(axis=1) == np.asarray(labels)

    def pick(mask: np.ndarray) -> np.ndarray:
        candidates = np.flatnonzero(mask)
        return rng.choice(candidates, size=min(k, len(candidates)), replace=False)

    return pick(correct), pick(~correct)


# --- calibration -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReliabilityBins:
    """Per-bin statistics of equal-width confidence bins; empty bins have count 0 and NaN means."""

    edges: np.ndarray  # (M + 1,) from 0 to 1
    counts: np.ndarray  # (M,) predictions per bin
    accuracy: np.ndarray  # (M,) fraction correct per bin
    confidence: np.ndarray  # (M,) mean confidence per bin

    @property
    def ece(self) -> float:
        """Expected calibration error: count-weighted mean |accuracy - confidence| over non-empty bins."""
        filled = self.counts > 0
        gaps = np.abs(self.accuracy[filled] - self.confidence[filled])
        return float(np.sum(self.counts[filled] * gaps) / self.counts.sum())


def reliability_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> ReliabilityBins:
    """Bin predictions by confidence into ``n_bins`` equal-width bins (lower edge open, upper edge closed)."""
    probs = np.asarray(probs, dtype=np.float64)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == np.asarray(labels)).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # right=True puts c in bin b when edges[b] < c <= edges[b + 1]
    bins = np.digitize(confidence, edges[1:-1], right=True)
    counts = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.bincount(bins, weights=correct, minlength=n_bins) / counts
        conf = np.bincount(bins, weights=confidence, minlength=n_bins) / counts
    return ReliabilityBins(edges, counts, acc, conf)


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """ECE of probabilities (N, K) against labels (N,), with ``n_bins`` equal-width confidence bins."""
    return reliability_bins(probs, labels, n_bins).ece
