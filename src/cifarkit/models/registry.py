"""A registry of models by name, in the timm style.

Every builder returns an ``nn.Module`` from [0, 1] images (N, 3, H, W) to logits (N, num_classes), with any
normalisation and resizing *inside*, so nothing else needs to know which model it holds.
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
    """Build the model registered as ``name``; ``pretrained=False`` loads no pretrained weights (no package needed)."""
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
    """The side in pixels ``model`` computes at when given ``side``-pixel images (a backbone's ``input_size``)."""
    return getattr(getattr(model, "backbone", None), "input_size", None) or side


def forward_flops(model: nn.Module, side: int = 32) -> int:
    """FLOPs of one forward pass of ``model`` on one ``side``-pixel image (a multiply-add counts 2), as torch counts."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.eval()(torch.zeros(1, 3, side, side))
    return counter.get_total_flops()


def parameter_roles(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """The model's parameters by role (filters / norm / head, backbone / head...) for ``lr_scale``, else ``all``."""
    return model.parameter_roles() if hasattr(model, "parameter_roles") else {"all": list(model.parameters())}
