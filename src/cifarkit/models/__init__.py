"""Model registry; importing this package registers every built-in model."""

from cifarkit.models import backbones, fastnet, seed  # noqa: F401  (register their models)
from cifarkit.models.registry import (
    count_parameters,
    create_model,
    forward_flops,
    get_model_info,
    list_models,
    parameter_roles,
    register_model,
    working_side,
)

__all__ = [
    "count_parameters",
    "create_model",
    "forward_flops",
    "get_model_info",
    "list_models",
    "parameter_roles",
    "register_model",
    "working_side",
]
