"""Every figure cifarkit draws, with matplotlib's object-oriented API.

Figures are ``matplotlib.figure.Figure`` objects rendered by Agg when saved; pyplot is never imported and no
backend chosen, so no process-wide state, GUI or global figure registry is involved.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from cifarkit.analysis import Prediction, ReliabilityBins, normalize_rows
from cifarkit.files import atomic_write_bytes

_GOOD, _BAD = "#1a7f37", "#cf222e"


def figure_png(fig: Figure) -> bytes:
    """Render a figure to PNG bytes with the Agg renderer, without the matplotlib URL in its metadata."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    return buffer.getvalue()


def save_png(fig: Figure, path: str | Path) -> bytes:
    """Write a figure as PNG atomically and return the bytes, so an HTML page can embed the same image."""
    png = figure_png(fig)
    atomic_write_bytes(path, png)
    return png


class Picture:
    """A PNG image that Jupyter shows where it is returned (``_repr_png_``): a figure drawn here, or a run's file.

    ``figure`` is the matplotlib figure when it was drawn here, None for a file read back.
    """

    def __init__(self, png: bytes, figure: Figure | None = None) -> None:
        self.png, self.figure = png, figure

    @classmethod
    def of(cls, fig: Figure) -> Picture:
        """The figure, rendered once."""
        return cls(figure_png(fig), fig)

    @classmethod
    def read(cls, path: str | Path) -> Picture:
        """A PNG file."""
        return cls(Path(path).read_bytes())

    def save(self, path: str | Path) -> Path:
        """Write the PNG to ``path`` (atomically) and return the path."""
        atomic_write_bytes(path, self.png)
        return Path(path)

    def _repr_png_(self) -> bytes:
        return self.png


def _grid(images: np.ndarray, titles: Sequence[str], colors: Sequence[str], cols: int) -> Figure:
    """Images in rows of ``cols``, each under its coloured title.

    One mosaic image in one axes, the titles figure text: an axes per image costs several times as much to
    build and draw, and a gallery is drawn at every evaluation.
    """
    cols = min(cols, max(1, len(images)))
    rows = max(1, math.ceil(len(images) / cols))
    height, width = images.shape[1:3] if len(images) else (32, 32)
    gap, head = max(1, width // 8), height * 3 // 8 + 2  # pixels between images, and above each for three lines
    cell_w, cell_h = width + gap, height + head
    mosaic = np.full((rows * cell_h, cols * cell_w, 3), 255, dtype=np.uint8)
    inch = 1.45 / width  # per mosaic pixel: each image 1.45 inches wide, pixels square
    fig = Figure(figsize=(cols * cell_w * inch, rows * cell_h * inch))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    for i, (image, title, color) in enumerate(zip(images, titles, colors)):
        row, col = divmod(i, cols)
        top, left = row * cell_h + head, col * cell_w + gap // 2
        mosaic[top : top + height, left : left + width] = image
        ax.text(left + width / 2, top - 1, title, fontsize=7, color=color, ha="center", va="bottom")
    ax.imshow(mosaic, interpolation="nearest", aspect="auto")
    return fig


def titled_grid(images: np.ndarray, titles: Sequence[str], *, cols: int = 8) -> Figure:
    """A grid of uint8 (N, H, W, 3) images, each under its title."""
    return _grid(images, titles, ["black"] * len(images), cols)


def prediction_grid(images: np.ndarray, predictions: Sequence[Prediction], show_loss: bool = False) -> Figure:
    """Test images (``images[p.index]``) titled actual / predicted and its probability (and loss); green if right."""
    titles = [
        f"{p.actual}\n{p.predicted} {p.probability:.2f}" + (f"\nloss {p.loss:.2f}" if show_loss else "")
        for p in predictions
    ]
    colors = [_GOOD if p.correct else _BAD for p in predictions]
    return _grid(images[[p.index for p in predictions]], titles, colors, cols=8)


def training_curves(histories: Mapping[str, Sequence[Mapping[str, Any]]]) -> Figure:
    """Accuracy and loss per epoch of several runs overlaid: train dashed, validation solid, one colour per run.

    Overfitting shows as the train and validation curves of a run parting.
    """
    fig = Figure(figsize=(11, 4))
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.12, top=0.92, wspace=0.15)  # fixed: drawn after every run
    acc_ax, loss_ax = fig.subplots(1, 2)
    for i, (name, history) in enumerate(histories.items()):
        color = f"C{i % 10}"
        epochs = [row["epoch"] for row in history]
        for ax, key in ((acc_ax, "acc"), (loss_ax, "loss")):
            ax.plot(epochs, [row[f"train_{key}"] for row in history], "--", color=color, label=f"{name} train")
            ax.plot(epochs, [row[f"val_{key}"] for row in history], "-", color=color, label=f"{name} val")
    for ax, title in ((acc_ax, "accuracy"), (loss_ax, "cross-entropy loss")):
        ax.set_title(title, y=1.0)  # where matplotlib would place it, without measuring the axes for it each time
        ax.set(xlabel="epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # a run has no epoch 1.4
        ax.grid(alpha=0.3)
    loss_ax.legend(fontsize=8, loc="upper right")
    return fig


def plot_history(history: Sequence[Mapping[str, Any]], path: str | Path, title: str = "") -> None:
    """Write the training curves of one run (its ``history.json`` rows) as a PNG."""
    save_png(training_curves({title or "run": history}), path)


def confusion_matrices(cm: np.ndarray, class_names: Sequence[str]) -> Figure:
    """Confusion-matrix heat maps side by side: counts, and rows normalised to 1 (recall on the diagonal).

    Margins follow the longest class name (about 5 pixels a character at this size): a layout engine measures
    every one of the 200 cell labels first, which costs half again the drawing, and every evaluation draws this.
    """
    fig = Figure(figsize=(13, 5.5))
    longest = max(map(len, class_names), default=0)
    fig.subplots_adjust(
        left=min(0.3, 0.03 + 0.0042 * longest),
        right=0.955,
        bottom=min(0.4, 0.1 + 0.007 * longest),
        top=0.94,
        wspace=0.1 + 0.025 * min(longest, 40),
    )
    for ax, values, title, fmt in zip(
        fig.subplots(1, 2), (cm, normalize_rows(cm)), ("counts", "row-normalised"), ("{:d}", "{:.2f}")
    ):
        image = ax.imshow(values, cmap="Blues")
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        ticks = np.arange(len(class_names))
        ax.set_xticks(ticks, class_names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(ticks, class_names, fontsize=8)
        ax.set_title(title, y=1.0)  # as in training_curves
        ax.set(xlabel="predicted", ylabel="actual")
        threshold = values.max() / 2 if values.max() > 0 else 1
        for (row, col), value in np.ndenumerate(values):
            color = "white" if value > threshold else "black"
            ax.text(col, row, fmt.format(value), ha="center", va="center", fontsize=6, color=color)
    return fig


def reliability_diagrams(panels: Mapping[str, ReliabilityBins]) -> Figure:
    """One reliability diagram per entry: accuracy per confidence bin against the diagonal of perfect calibration."""
    fig = Figure(figsize=(4.5 * len(panels), 4.5), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, (title, bins) in zip(axes, panels.items()):
        filled = bins.counts > 0
        left, width, acc = bins.edges[:-1][filled], np.diff(bins.edges)[filled], bins.accuracy[filled]
        ax.bar(left, acc, width=width, align="edge", edgecolor="black", color="#4c72b0", label="accuracy")
        gap = bins.confidence[filled] - acc
        ax.bar(left, gap, width=width, bottom=acc, align="edge", color=_BAD, alpha=0.3, label="gap to confidence")
        ax.plot([0, 1], [0, 1], "k--", linewidth=1)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy")
        ax.set_title(f"{title}\nECE = {100 * bins.ece:.2f} %")
        ax.legend(loc="upper left", fontsize=8)
    return fig


def gradcam_grid(images: np.ndarray, maps: np.ndarray, predictions: Sequence[Prediction]) -> Figure:
    """Per image a column: the image on top, its Grad-CAM map over it below, titled actual -> predicted."""
    cols = max(1, len(predictions))
    fig = Figure(figsize=(1.6 * cols, 3.6), layout="constrained")
    axes = np.asarray(fig.subplots(2, cols)).reshape(2, cols)
    for ax in axes.ravel():
        ax.axis("off")
    for col, (image, heat, pred) in enumerate(zip(images, maps, predictions)):
        axes[0, col].imshow(image, interpolation="nearest")
        color = _GOOD if pred.correct else _BAD
        axes[0, col].set_title(f"{pred.actual}\n-> {pred.predicted} {pred.probability:.2f}", fontsize=7, color=color)
        axes[1, col].imshow(image, interpolation="nearest")
        axes[1, col].imshow(heat, cmap="jet", alpha=0.5, vmin=0, vmax=1, interpolation="bilinear")
    return fig


def robustness_curves(accuracy: Mapping[str, Mapping[int, float]], clean: float) -> Figure:
    """Accuracy against severity, one line per corruption (``accuracy[name][severity]``), clean accuracy dashed."""
    fig = Figure(figsize=(6.5, 4.2), layout="constrained")
    ax = fig.subplots()
    for name, by_severity in accuracy.items():
        ax.plot(list(by_severity), list(by_severity.values()), marker="o", label=name)
    ax.axhline(clean, color="black", linestyle="--", linewidth=1, label="clean")
    ax.set(xlabel="severity", ylabel="accuracy", ylim=(0, 1), title="accuracy under corruption")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig
