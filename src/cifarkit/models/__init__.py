"""Model registry; importing this package registers every built-in model."""
from cifarkit.models.registry import count_parameters, create_model, list_models, register_model
from cifarkit.models import seed  # noqa: F401  (registers the notebook CNNs)

__all__ = ["count_parameters", "create_model", "list_models", "register_model"]
