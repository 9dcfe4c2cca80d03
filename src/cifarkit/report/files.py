"""Figures as PNG bytes, saved atomically (:mod:`cifarkit.files`) and embedded in the HTML."""
from __future__ import annotations

import io
from pathlib import Path

from matplotlib.figure import Figure

from cifarkit.files import atomic_write_bytes


def figure_png(fig: Figure) -> bytes:
    """Render a figure to PNG bytes with the Agg renderer, without the matplotlib URL in its metadata."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    return buffer.getvalue()


def save_png(fig: Figure, path: Path) -> bytes:
    """Write a figure as PNG atomically and return the bytes, so the HTML can embed the same image."""
    png = figure_png(fig)
    atomic_write_bytes(path, png)
    return png
