"""cifarkit: train, evaluate, explain and serve CIFAR-10 image classifiers.

One import gives the whole workflow (docs/python-api.md). The names come from :mod:`cifarkit.api` when first used
(``__getattr__`` below), so ``import cifarkit`` imports neither torch nor matplotlib nor scikit-learn.
"""

import sys
import types
from typing import Any

from cifarkit.errors import CifarkitError

__version__ = "0.2.0"

_API = ("EvalResult", "History", "Predictions", "Run", "Summary", "load_data", "show_images", "summary")
__all__ = ["CifarkitError", "__version__", "train", *_API]


class _CallableTrainModule(types.ModuleType):
    """The training module :mod:`cifarkit.train`, which, called, is :func:`cifarkit.api.train`.

    It has to stay the module: Python sets the package attribute ``train`` to the submodule whenever that is
    imported, so a function of that name would not last.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Train a recipe into a run directory, evaluate it, return its Run: see :func:`cifarkit.api.train`."""
        from cifarkit.api import train

        return train(*args, **kwargs)


class _Package(types.ModuleType):
    """This package, making the submodule ``train`` callable as the import system attaches it."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "train" and type(value) is types.ModuleType:
            value.__class__ = _CallableTrainModule  # module __class__ assignment, as Python's reference describes
        super().__setattr__(name, value)


def __getattr__(name: str) -> Any:
    if name == "train":  # importing it attaches it, callable (see _Package)
        import importlib

        return importlib.import_module("cifarkit.train")
    if name in _API:
        from cifarkit import api

        return getattr(api, name)
    raise AttributeError(f"module 'cifarkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


sys.modules[__name__].__class__ = _Package
