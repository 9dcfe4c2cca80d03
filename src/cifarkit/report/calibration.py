"""Temperature scaling: making a model's confidences match how often it is right.

How miscalibrated a model is (the expected calibration error and its
reliability bins) is measured in :mod:`cifarkit.analysis`; this module fixes
it. :func:`fit_temperature` -- temperature scaling (Guo et al. 2017): one
scalar T > 0 divides the logits; it is fitted on *validation* logits by
minimising the negative log-likelihood with L-BFGS over log T (so T stays
positive). It changes confidences, never the arg-max, so accuracy is unchanged.

Probabilities can be turned back into valid logits with :func:`logits_from_probs`
(log p differs from the logits by a per-row constant, which softmax ignores).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


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
