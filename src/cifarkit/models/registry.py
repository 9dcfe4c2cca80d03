"""A registry of models by name, in the timm style.

Every registered builder returns an ``nn.Module`` that takes a float batch of
images in [0, 1], shape (N, 3, H, W) (32x32 for CIFAR-10), and returns logits
(N, num_classes). Normalisation and any resizing a model needs live *inside*
the model, so training, evaluation, prediction and export never need to know
which model they hold.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from cifarkit.errors import CifarkitError

ModelBuilder = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelInfo:
    name: str
    builder: ModelBuilder
    description: str
    pretrained: bool = False  # the builder loads pretrained weights unless given pretrained=False


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(
    name: str, description: str = "", pretrained: bool = False
) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator: register ``builder(num_classes=10, **kwargs) -> nn.Module`` under ``name``.

    ``pretrained``: the builder loads pretrained weights by default and accepts ``pretrained=False``.
    """

    def wrap(builder: ModelBuilder) -> ModelBuilder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        summary = description or (builder.__doc__ or "").strip().split("\n")[0]
        _REGISTRY[name] = ModelInfo(name, builder, summary, pretrained)
        return builder

    return wrap


def get_model_info(name: str) -> ModelInfo:
    """The registry entry of ``name``; an unknown name is a :class:`CifarkitError` listing the known ones."""
    if name not in _REGISTRY:
        raise CifarkitError(
            f"unknown model {name!r}; known models: {', '.join(sorted(_REGISTRY))} (see `cifarkit models`)"
        )
    return _REGISTRY[name]


def create_model(name: str, num_classes: int = 10, *, pretrained: bool = True, **kwargs) -> nn.Module:
    """Build the model registered as ``name``.

    ``pretrained=False`` skips loading pretrained weights (and so needs no
    weights package): for models whose every weight is about to come from a
    checkpoint, or that are only counted or summarised.
    """
    info = get_model_info(name)
    if info.pretrained and not pretrained:
        kwargs["pretrained"] = False
    return info.builder(num_classes=num_classes, **kwargs)


def list_models() -> list[ModelInfo]:
    """All registered models, sorted by name."""
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def working_side(model: nn.Module, side: int = 32) -> int:
    """The side in pixels ``model`` computes at when given ``side``-pixel images.

    A transfer model's backbone resizes its input to its ``input_size``
    (160 px in ``lite0_finetune``); every other model works at the images' side.
    """
    return getattr(getattr(model, "backbone", None), "input_size", None) or side


def forward_flops(model: nn.Module, side: int = 32) -> int:
    """FLOPs of one forward pass of ``model`` on one ``side``-pixel image (a multiply-add counts 2), as torch counts.

    Counted by :class:`torch.utils.flop_counter.FlopCounterMode`: convolutions
    and matrix products, the work that decides a model's cost.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.eval()(torch.zeros(1, 3, side, side))
    return counter.get_total_flops()


def parameter_roles(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """The model's parameters by role (``parameter_roles()``: filters / norm / head, backbone / head...), or one role.

    Recipes scale the learning rate per role (``lr_scale``); a model without
    roles has one, ``all``.
    """
    return model.parameter_roles() if hasattr(model, "parameter_roles") else {"all": list(model.parameters())}
