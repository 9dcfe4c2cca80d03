"""Muon: Newton-Schulz orthogonalisation, the update rule, and that it trains."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from cifarkit.muon import Muon, orthogonalize


def matrix_with_singular_values(rows: int, cols: int, values: torch.Tensor, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    k = min(rows, cols)
    u, _ = torch.linalg.qr(torch.randn(rows, k, generator=g))
    v, _ = torch.linalg.qr(torch.randn(cols, k, generator=g))
    return (u * values) @ v.T


@pytest.mark.parametrize("rows,cols", [(32, 288), (288, 32), (64, 64)])
def test_orthogonalize_equalises_singular_values(rows: int, cols: int) -> None:
    k = min(rows, cols)
    m = matrix_with_singular_values(rows, cols, torch.logspace(0, -1.5, k))  # condition number ~32
    out = orthogonalize(m, steps=5)
    sv = torch.linalg.svdvals(out)
    assert out.shape == m.shape and out.dtype == m.dtype
    assert sv.min() > 0.6 and sv.max() < 1.25
    # Same singular vectors: U^T out V is (near) diagonal and positive.
    u, _, vh = torch.linalg.svd(m, full_matrices=False)
    core = u.T @ out @ vh.T
    assert torch.allclose(core, torch.diag(core.diagonal()), atol=1e-3)
    assert core.diagonal().min() > 0.6


def test_orthogonalize_ignores_scale_and_rejects_vectors() -> None:
    m = torch.randn(16, 40)
    assert torch.allclose(orthogonalize(m), orthogonalize(1000 * m), atol=1e-4)
    with pytest.raises(ValueError):
        orthogonalize(torch.randn(5))


def test_muon_step_matches_rule_for_conv_filter() -> None:
    weight = nn.Parameter(torch.randn(8, 4, 3, 3))
    before = weight.detach().clone()
    grads = [torch.randn(8, 4, 3, 3) for _ in range(2)]
    opt = Muon([weight], lr=0.1, momentum=0.5, nesterov=True, ns_steps=5)
    for g in grads:
        weight.grad = g.clone()
        opt.step()
    buf1 = grads[0]
    buf2 = 0.5 * buf1 + grads[1]
    expected = before
    for g, buf in ((grads[0], buf1), (grads[1], buf2)):
        expected = expected - 0.1 * orthogonalize((g + 0.5 * buf).reshape(8, -1)).view(8, 4, 3, 3)
    assert torch.allclose(weight.detach(), expected, atol=1e-5)


def test_muon_update_has_equal_singular_values_despite_skewed_gradient() -> None:
    weight = nn.Parameter(torch.zeros(16, 64))
    weight.grad = matrix_with_singular_values(16, 64, torch.logspace(0, -1.5, 16), seed=3)
    Muon([weight], lr=1.0, momentum=0.0, nesterov=False).step()
    sv = torch.linalg.svdvals(weight.detach())
    assert sv.max() / sv.min() < 2.0  # the gradient's ratio is ~32


def test_normalize_weights_fixes_filter_norm() -> None:
    weight = nn.Parameter(5 * torch.randn(8, 4, 3, 3))
    weight.grad = torch.randn_like(weight)
    Muon([weight], lr=0.0, normalize_weights=True).step()
    assert weight.detach().norm().item() == pytest.approx(8**0.5, rel=1e-5)


def test_rejects_one_dimensional_parameters() -> None:
    with pytest.raises(ValueError, match=">= 2 dimensions"):
        Muon([nn.Parameter(torch.zeros(3))])


def test_muon_trains_tiny_conv_net() -> None:
    torch.manual_seed(0)
    x = torch.randn(128, 3, 8, 8)
    y = (x[:, 0].mean(dim=(1, 2)) > 0).long() + 2 * (x[:, 1, :4].mean(dim=(1, 2)) > 0).long()
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.GELU(),
        nn.Conv2d(16, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.GELU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 4),
    )
    filters = [p for p in net.parameters() if p.ndim == 4]
    others = [p for p in net.parameters() if p.ndim != 4]
    muon = Muon(filters, lr=0.05, momentum=0.9, normalize_weights=True)
    sgd = torch.optim.SGD(others, lr=0.1, momentum=0.9)
    losses = []
    for _ in range(40):
        loss = F.cross_entropy(net(x), y)
        muon.zero_grad(), sgd.zero_grad()
        loss.backward()
        muon.step(), sgd.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_closure_returns_loss() -> None:
    weight = nn.Parameter(torch.randn(4, 6))

    def closure() -> torch.Tensor:
        weight.grad = None
        loss = (weight**2).sum()
        loss.backward()
        return loss

    expected = (weight.detach() ** 2).sum().item()
    assert Muon([weight], lr=0.01).step(closure).item() == pytest.approx(expected)
    assert (weight.detach() ** 2).sum().item() < expected  # and the step went downhill
