"""Classifier heads on a feature vector (N, in_features) -> logits (N, num_classes).

``linear`` (the linear probe), ``mlp`` (one hidden ReLU layer) and ``notebook``: the teaching notebook's head on
VGG16 features layer for layer, with Keras' initialisation and BatchNormalization defaults, so that it trains like
the notebook's.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from torch import nn

from cifarkit.errors import CifarkitError
from cifarkit.models.dropout import Dropout, dropouts


def keras_init(model: nn.Module) -> nn.Module:
    """Glorot-uniform weights and zero biases, as Keras initialises Conv2D and Dense."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    return model


def linear_head(in_features: int, num_classes: int = 10, dropout: float = 0.0) -> nn.Sequential:
    """Dropout (if any) then a linear layer."""
    return nn.Sequential(*dropouts(dropout), nn.Linear(in_features, num_classes))


def mlp_head(in_features: int, num_classes: int = 10, hidden: int = 512, dropout: float = 0.2) -> nn.Sequential:
    """Linear(hidden) - ReLU - Dropout - Linear(num_classes)."""
    return nn.Sequential(
        nn.Linear(in_features, hidden), nn.ReLU(inplace=True), *dropouts(dropout), nn.Linear(hidden, num_classes)
    )


def notebook_head(in_features: int, num_classes: int = 10) -> nn.Sequential:
    """The notebook's VGG16 transfer head: Dense 256, 128, Dropout 0.3, Dense 64, BatchNormalization, logits."""
    head = nn.Sequential(
        nn.Linear(in_features, 256),
        nn.ReLU(inplace=True),
        nn.Linear(256, 128),
        nn.ReLU(inplace=True),
        Dropout(0.3),
        nn.Linear(128, 64),
        nn.ReLU(inplace=True),
        nn.BatchNorm1d(64, eps=1e-3, momentum=0.01),
        nn.Linear(64, num_classes),
    )
    return keras_init(head)


HEADS: dict[str, Callable[..., nn.Module]] = {"linear": linear_head, "mlp": mlp_head, "notebook": notebook_head}


def create_head(name: str, in_features: int, num_classes: int = 10, **kw) -> nn.Module:
    """Head ``name`` with its options ``kw`` (e.g. ``hidden=1024, dropout=0.3`` for ``mlp``)."""
    if name not in HEADS:
        raise CifarkitError(f"unknown head {name!r}; known heads: {', '.join(HEADS)}")
    builder = HEADS[name]
    options = [p for p in inspect.signature(builder).parameters if p not in ("in_features", "num_classes")]
    unknown = sorted(set(kw) - set(options))
    if unknown:
        raise CifarkitError(
            f"head {name!r} has no option {', '.join(unknown)}; its options: {', '.join(options) or 'none'}"
        )
    return builder(in_features, num_classes, **kw)
