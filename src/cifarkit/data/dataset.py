"""The in-memory CIFAR-10 data set that every other part of cifarkit consumes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


@dataclass(frozen=True)
class CIFAR10:
    """Decoded CIFAR-10: uint8 images (N, 32, 32, 3) in RGB, int64 labels (N,).

    ``source`` names where the pixels came from (a path or archive), so runs can
    record their data provenance.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: tuple[str, ...] = CLASSES
    source: str = ""

    def class_counts(self, split: str) -> dict[str, int]:
        """Images per class in ``split`` ("train" or "test")."""
        labels = self.y_train if split == "train" else self.y_test
        counts = np.bincount(labels, minlength=len(self.classes))
        return {name: int(n) for name, n in zip(self.classes, counts)}
