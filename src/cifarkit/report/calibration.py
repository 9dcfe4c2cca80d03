"""Calibration: does a 90 % confident prediction turn out right 90 % of the time?

* :func:`expected_calibration_error` -- ECE with equal-width confidence bins
  (Naeini et al. 2015; Guo et al. 2017): bin b holds the predictions whose
  confidence (max probability) lies in ((b-1)/M, b/M];
  ``ECE = sum_b |B_b| / N * |acc(B_b) - conf(B_b)|``.
* :func:`fit_temperature` -- temperature scaling (Guo et al. 2017): one scalar
  T > 0 divides the logits; it is fitted on *validation* logits by minimising
  the negative log-likelihood with L-BFGS over log T (so T stays positive).
  It changes confidences, never the arg-max, so accuracy is unchanged.

Probabilities can be turned back into valid logits with :func:`logits_from_probs`
(log p differs from the logits by a per-row constant, which softmax ignores).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ReliabilityBins:
    """Per-bin statistics of equal-width confidence bins; empty bins have count 0 and NaN means."""

    edges: np.ndarray       # (M + 1,) from 0 to 1
    counts: np.ndarray      # (M,) predictions per bin
    accuracy: np.ndarray    # (M,) fraction correct per bin
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


def logits_from_probs(probs: np.ndarray) -> np.ndarray:
    """log p, clipped away from 0: logits up to a per-row constant, fine for softmax and temperature scaling."""
    return np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1.0))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Softmax of ``logits / temperature`` along the class axis."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean cross-entropy of ``softmax(logits / temperature)`` against the labels."""
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64) / temperature
    return float(F.cross_entropy(z, torch.as_tensor(np.asarray(labels), dtype=torch.int64)))


def fit_temperature(logits: np.ndarray, labels: np.ndarray, max_iter: int = 100) -> float:
    """The temperature T minimising the NLL of ``softmax(logits / T)``; fit it on validation logits."""
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return float(log_t.detach().exp())
