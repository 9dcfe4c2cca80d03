"""A registry of models by name, in the timm style.

Every registered builder returns an ``nn.Module`` that takes a float batch of
images in [0, 1], shape (N, 3, H, W) (32x32 for CIFAR-10), and returns logits
(N, num_classes). Normalisation and any resizing a model needs live *inside*
the model, so training, evaluation, prediction and export never need to know
which model they hold.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

ModelBuilder = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelInfo:
    name: str
    builder: ModelBuilder
    description: str


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(name: str, description: str = "") -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator: register ``builder(num_classes=10, **kwargs) -> nn.Module`` under ``name``."""

    def wrap(builder: ModelBuilder) -> ModelBuilder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        summary = description or (builder.__doc__ or "").strip().split("\n")[0]
        _REGISTRY[name] = ModelInfo(name, builder, summary)
        return builder

    return wrap


def create_model(name: str, num_classes: int = 10, **kwargs) -> nn.Module:
    """Build the model registered as ``name``; unknown names list the known ones."""
    if name not in _REGISTRY:
        known = ", ".join(sorted(_REGISTRY))
        raise KeyError(f"unknown model {name!r}; known models: {known} (see `cifarkit models`)")
    return _REGISTRY[name].builder(num_classes=num_classes, **kwargs)


def list_models() -> list[ModelInfo]:
    """All registered models, sorted by name."""
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
