"""A model to serve without a trained run: any function from images to probabilities, as a Classifier."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from cifarkit.data import CLASSES
from cifarkit.serve.backends import Classifier


def stand_in_classifier(predict: Callable[[np.ndarray], np.ndarray], run: str = "stand-in") -> Classifier:
    """``predict`` served as run ``run`` over the CIFAR-10 classes; its identity says it is no real model."""
    info = {
        "run": run,
        "recipe": "none",
        "cifarkit_version": "0",
        "classes": list(CLASSES),
        "input_size": [32, 32],
        "parameters": None,
        "test_acc": None,
        "test_acc_tta": None,
        "tta": "none",
        "backend": "test",
        "precision": "float32",
        "device": "cpu",
    }
    return Classifier(predict, list(CLASSES), info)
