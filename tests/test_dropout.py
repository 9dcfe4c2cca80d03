"""cifarkit's Dropout: nn.Dropout's behaviour with a mask that is cheaper to draw on the CPU."""

import pytest
import torch
from torch import nn

from cifarkit.models.dropout import Dropout


@pytest.mark.parametrize("p", [0.2, 0.25, 0.5])
def test_drops_with_probability_p_and_keeps_the_expected_value(p):
    """Dropped count ~ Binomial(n, p'), p' = round(p * 65536) / 65536: over n = 10^6 elements its sd is at most
    5e-4, so 5 sd (2.5e-3) is missed by chance with probability < 1e-6; the kept elements are scaled by exactly
    1 / (1 - p'), so their mean is the input's."""
    torch.manual_seed(0)
    y = Dropout(p)(torch.ones(1000, 1000))
    used = round(p * 65536) / 65536
    assert abs(used - p) <= 1 / 65536
    assert abs((y == 0).double().mean().item() - p) < 2.5e-3
    assert torch.equal(y[y != 0], torch.full_like(y[y != 0], 1 / (1 - used)))


def test_mask_follows_the_seed_and_the_gradient_is_the_mask():
    x = torch.rand(8, 16, 6, 6).contiguous(memory_format=torch.channels_last).requires_grad_()
    torch.manual_seed(3)
    y = Dropout(0.25)(x)
    torch.manual_seed(3)
    assert torch.equal(Dropout(0.25)(x), y)
    assert not torch.equal(Dropout(0.25)(x), y)  # the next draw is another mask
    assert y.is_contiguous(memory_format=torch.channels_last)  # x's layout, so the next conv needs no copy
    y.sum().backward()
    assert torch.allclose(x.grad, (y / x).detach(), rtol=1e-5)


def test_off_in_eval_mode_at_the_edges_and_in_bfloat16():
    x = torch.rand(4, 10)
    assert Dropout(0.5).eval()(x) is x
    assert torch.equal(Dropout(0.0)(x), x)
    assert torch.equal(Dropout(1.0)(x), torch.zeros_like(x))
    assert Dropout(0.5)(x.bfloat16()).dtype == torch.bfloat16
    assert isinstance(Dropout(0.5), nn.Dropout)  # what code that looks for dropout layers finds
