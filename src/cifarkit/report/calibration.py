"""Temperature scaling: making a model's confidences match how often it is right.

:mod:`cifarkit.analysis` measures miscalibration; :func:`fit_temperature` fixes it (Guo et al. 2017): one scalar
T > 0 divides the logits, fitted on *validation* logits by L-BFGS over log T. It never changes the arg-max.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def logits_from_probs(probs: np.ndarray) -> np.ndarray:
    """log p, clipped away from 0: logits up to a per-row constant, fine for softmax and temperature scaling."""
    return np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1.0))


def _float64(logits: np.ndarray) -> torch.Tensor:
    """``logits`` as a float64 tensor: softmax, NLL and the temperature fit all work in double precision."""
    return torch.as_tensor(np.asarray(logits), dtype=torch.float64)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Softmax of ``logits / temperature`` along the class axis, float64: torch's, as the NLL and the fit use."""
    return torch.softmax(_float64(logits) / temperature, dim=1).numpy()


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean cross-entropy of ``softmax(logits / temperature)`` against the labels."""
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    return float(F.cross_entropy(_float64(logits) / temperature, labels))


def fit_temperature(logits: np.ndarray, labels: np.ndarray, max_iter: int = 100) -> float:
    """The temperature T minimising the NLL of ``softmax(logits / T)``; fit it on validation logits."""
    z = _float64(logits)
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
