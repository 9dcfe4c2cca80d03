"""Muon: momentum SGD whose update is orthogonalised by a Newton-Schulz iteration.

For a momentum matrix M = U S V^T (a conv filter bank viewed as out_channels x in_channels*kh*kw), Muon steps
along about U V^T: every singular direction gets roughly the same size, so a gradient's few dominant directions
no longer drown out the rest. U V^T comes from a few steps of Keller Jordan's quintic Newton-Schulz iteration,
not an SVD; singular values land roughly in [0.7, 1.2], which does not hurt training. Biases, norm parameters
and the head belong to another optimizer.

Not ``torch.optim.Muon`` (PyTorch 2.13): it refuses parameters that are not exactly 2-D (the recipes give Muon
4-D conv filters), runs in bfloat16 everywhere (emulated, so slow, on many CPUs), scales ``lr`` by shape, and
lacks ``normalize_weights``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor
from torch.optim import Optimizer

NS_COEFFICIENTS: tuple[float, float, float] = (3.4445, -4.7750, 2.0315)


def orthogonalize(matrix: Tensor, steps: int = 5, eps: float = 1e-7) -> Tensor:
    """Approximately U V^T for ``matrix`` = U S V^T (2-D), by ``steps`` Newton-Schulz iterations.

    In bfloat16 on CUDA (tolerated, and several times faster), float32 elsewhere; returns ``matrix``'s dtype.
    """
    if matrix.ndim != 2:
        raise ValueError(f"orthogonalize needs a 2-D matrix, got shape {tuple(matrix.shape)}")
    a, b, c = NS_COEFFICIENTS
    x = matrix.to(torch.bfloat16 if matrix.is_cuda else torch.float32)
    # Work on the wide orientation so X X^T is the smaller of the two Gram matrices.
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.T
    # Dividing by the Frobenius norm puts every singular value in [0, 1], inside
    # the region where the polynomial iteration converges.
    x = x / (x.norm() + eps)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    if tall:
        x = x.T
    return x.to(matrix.dtype)


class Muon(Optimizer):
    """Muon optimizer for parameters with 2 or more dimensions (linear and conv weights).

    Each step: ``buf = momentum * buf + g`` (Nesterov: direction ``g + momentum * buf``), the direction reshaped
    to (p.shape[0], -1) and orthogonalised, then ``p -= lr * update``. ``normalize_weights`` (airbench's, for
    weights followed by BatchNorm, which is blind to their scale) first rescales p to unit RMS per output filter,
    which keeps the effective step ``lr`` and takes the place of weight decay. The update's size does not depend
    on the gradient's scale, so ``lr`` needs no re-tuning for a summed loss.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        normalize_weights: bool = False,
    ) -> None:
        if lr < 0:
            raise ValueError(f"invalid learning rate {lr}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if ns_steps < 1:
            raise ValueError(f"ns_steps must be at least 1, got {ns_steps}")
        defaults = dict(
            lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps, normalize_weights=normalize_weights
        )
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim < 2:
                    raise ValueError(
                        f"Muon is for weights with >= 2 dimensions; got shape {tuple(p.shape)} "
                        "(give biases and norm parameters to SGD or AdamW)"
                    )

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Take one optimisation step; ``closure`` (optional) re-evaluates and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, group)
        return loss

    def _update(self, p: Tensor, group: dict) -> None:
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p.grad)
        buf = state["momentum_buffer"]
        buf.mul_(group["momentum"]).add_(p.grad)
        direction = p.grad.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf
        update = orthogonalize(direction.reshape(len(p), -1), steps=group["ns_steps"])
        if group["normalize_weights"]:
            p.mul_(len(p) ** 0.5 / (p.norm() + 1e-12))
        p.add_(update.view_as(p), alpha=-group["lr"])
