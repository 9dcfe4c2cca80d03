"""Muon: momentum SGD whose update is orthogonalised by a Newton-Schulz iteration.

For a weight matrix W (a conv filter bank is viewed as out_channels x
(in_channels*kh*kw)), plain momentum would step along the momentum matrix M.
Muon instead steps along an approximation of U V^T, where M = U S V^T is the
SVD: every singular direction of the update gets roughly the same size, so the
few dominant directions of a gradient no longer drown out the rest. It is meant
for the hidden 2-D-or-more weights of a network; biases, norm parameters, the
input layer and the classifier head belong to another optimizer (airbench
trains those with Nesterov SGD).

U V^T is not computed by an SVD (slow, and poorly parallel on CPU and GPU alike)
but by a few steps of the odd quintic polynomial iteration
X <- a X + b (X X^T) X + c (X X^T)^2 X, started from M / ||M||_F. Its
coefficients (a, b, c) = (3.4445, -4.7750, 2.0315), published with Muon by
Keller Jordan, push small singular values up quickly at the price of not
converging exactly: singular values of the result land roughly in [0.7, 1.2]
rather than at exactly 1, which does not hurt training. (Directions much
weaker than the strongest, under ~1/100 of it, are lifted only part of the way.)

Why not ``torch.optim.Muon`` (in recent PyTorch; checked against 2.13): it
raises ``ValueError`` for any parameter that is not exactly 2-D, and the
weights the recipes give Muon are conv filter banks (4-D). It also differs
where the recipes depend on it: it runs the iteration in bfloat16 on every
device (emulated, so slow, on CPUs without native bf16), multiplies ``lr`` by a
shape-dependent factor (``adjust_lr_fn``, which cannot be turned off), and has
decoupled weight decay but not the per-filter weight normalisation of
``normalize_weights`` below. (Its momentum is an exponential moving average
rather than a sum; that only rescales the direction, which the iteration
normalises away.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor
from torch.optim import Optimizer

NS_COEFFICIENTS: tuple[float, float, float] = (3.4445, -4.7750, 2.0315)


def orthogonalize(matrix: Tensor, steps: int = 5, eps: float = 1e-7) -> Tensor:
    """Approximately U V^T for ``matrix`` = U S V^T (2-D), by ``steps`` Newton-Schulz iterations.

    Runs in bfloat16 on CUDA (the iteration tolerates it and it is several times
    faster there) and in float32 elsewhere, where bf16 matmul support varies by
    CPU and the iteration's cost is small next to a training step. The result
    has ``matrix``'s dtype.
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

    Each step, per parameter p with gradient g:

    1. momentum: ``buf = momentum * buf + g``; the direction is
       ``g + momentum * buf`` with Nesterov, else ``buf``;
    2. the direction, reshaped to (p.shape[0], -1), is orthogonalised
       (:func:`orthogonalize`, ``ns_steps`` iterations) and reshaped back;
    3. ``p -= lr * update``; with ``normalize_weights`` (airbench's choice for
       weights followed by BatchNorm, and what the recipes use) p is first
       rescaled to Frobenius norm sqrt(p.shape[0]) (unit RMS per output
       filter). BN makes the loss blind to that scale, so fixing it keeps the
       effective step size equal to ``lr`` instead of shrinking as the weights
       grow, and it takes the place of weight decay.

    The update has Frobenius norm about sqrt(min(rows, cols)) whatever the
    gradient's scale, so ``lr`` is a relative step size (airbench94_muon uses
    0.24 with momentum 0.6, decayed linearly to 0) and does not need re-tuning
    when the loss is summed instead of averaged.
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
            lr=lr,
            momentum=momentum,
            nesterov=nesterov,
            ns_steps=ns_steps,
            normalize_weights=normalize_weights,
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
