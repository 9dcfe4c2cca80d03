"""Classifier heads on feature vectors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cifarkit.errors import CifarkitError
from cifarkit.models.dropout import Dropout
from cifarkit.models.heads import HEADS, create_head
from cifarkit.models.registry import count_parameters


@pytest.mark.parametrize("name", sorted(HEADS))
@pytest.mark.parametrize("num_classes", [10, 3])
def test_heads_map_features_to_logits(name: str, num_classes: int) -> None:
    head = create_head(name, 1280, num_classes)
    head.train()
    assert head(torch.randn(4, 1280)).shape == (4, num_classes)
    head.eval()
    assert head(torch.randn(1, 1280)).shape == (1, num_classes)


def test_notebook_head_is_the_notebooks_vgg16_head() -> None:
    head = create_head("notebook", 512)
    kinds = [type(m) for m in head]
    assert kinds == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, Dropout, nn.Linear, nn.ReLU, nn.BatchNorm1d, nn.Linear]
    assert [m.out_features for m in head if isinstance(m, nn.Linear)] == [256, 128, 64, 10]
    assert head[4].p == 0.3
    assert (head[7].eps, head[7].momentum) == (1e-3, 0.01)  # Keras BatchNormalization defaults
    # (512*256 + 256) + (256*128 + 128) + (128*64 + 64) + 2*64 (BN scale, shift) + (64*10 + 10). Keras'
    # summary shows 128 more (173,386): it counts BN's moving mean/variance, which are buffers here.
    assert count_parameters(head) == 173_258
    assert count_parameters(create_head("notebook", 1280)) == 369_866
    assert all(torch.count_nonzero(m.bias) == 0 for m in head if isinstance(m, nn.Linear))  # Keras init


def test_mlp_width_and_dropout_are_options() -> None:
    head = create_head("mlp", 100, hidden=32, dropout=0.5)
    assert count_parameters(head) == 100 * 32 + 32 + 32 * 10 + 10
    assert [m.p for m in head if isinstance(m, nn.Dropout)] == [0.5]
    assert not any(isinstance(m, nn.Dropout) for m in create_head("mlp", 100, dropout=0.0))


def test_linear_head_is_a_linear_probe() -> None:
    assert count_parameters(create_head("linear", 1280)) == 1280 * 10 + 10
    assert isinstance(create_head("linear", 1280, dropout=0.2)[0], nn.Dropout)


def test_unknown_head_or_option_is_a_user_error() -> None:
    with pytest.raises(CifarkitError, match="known heads: linear, mlp, notebook"):
        create_head("transformer", 1280)
    with pytest.raises(CifarkitError, match="no option width; its options: hidden, dropout"):
        create_head("mlp", 1280, width=64)
