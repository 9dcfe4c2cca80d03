"""The notebook's figures as PNG files: sample grid, training curves, confusion matrix, gallery."""
from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display needed, none assumed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cifarkit.files import atomic_write_bytes  # noqa: E402


def save_figure(fig: plt.Figure, path: Path) -> None:
    """Render ``fig`` to PNG and write it atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())


def image_grid(images: np.ndarray, titles: Sequence[str], path: Path, *, cols: int = 8,
               title_colors: Sequence[str] | None = None) -> None:
    """A grid of uint8 (N, 32, 32, 3) images, each with a title."""
    rows = -(-len(images) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.6, rows * 1.8), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < len(images):
            ax.imshow(images[i], interpolation="nearest")
            ax.set_title(titles[i], fontsize=7, color=title_colors[i] if title_colors else "black")
    save_figure(fig, path)


def plot_history(history: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """Training and validation accuracy and loss per epoch (overfitting shows as the curves part)."""
    epochs = [r["epoch"] for r in history]
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key in ((ax_acc, "acc"), (ax_loss, "loss")):
        ax.plot(epochs, [r[f"train_{key}"] for r in history], "o-", label="train")
        ax.plot(epochs, [r[f"val_{key}"] for r in history], "o-", label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy" if key == "acc" else "cross-entropy")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    save_figure(fig, path)


def plot_confusion(cm: np.ndarray, classes: Sequence[str], path: Path, *, normalize: bool = False) -> None:
    """Confusion-matrix heatmap: rows are true classes, columns predictions."""
    values = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1) if normalize else cm
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    im = ax.imshow(values, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    threshold = values.max() / 2
    for i in range(len(classes)):
        for j in range(len(classes)):
            text = f"{values[i, j]:.2f}" if normalize else str(int(values[i, j]))
            ax.text(j, i, text, ha="center", va="center", fontsize=7,
                    color="white" if values[i, j] > threshold else "black")
    ax.set_title("confusion matrix" + (" (row-normalised)" if normalize else ""))
    save_figure(fig, path)


def plot_gallery(images: np.ndarray, actual: Sequence[str], predicted: Sequence[str],
                 probability: Sequence[float], path: Path, cols: int = 6) -> None:
    """The notebook's gallery: each test image titled actual / predicted / probability."""
    titles = [f"actual: {a}\npred: {p}\nprob: {q:.2f}" for a, p, q in zip(actual, predicted, probability)]
    colors = ["green" if a == p else "red" for a, p in zip(actual, predicted)]
    image_grid(images, titles, path, cols=cols, title_colors=colors)
