"""Assemble the analyses of one or more runs into a single self-contained HTML page.

:func:`build_report` loads each run directory, runs every section of
:mod:`cifarkit.report.sections` (each also writes its files to ``RUN/insight/``)
and writes one HTML file with all images embedded, so it can be mailed or
archived and opened offline.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from torch import nn

from cifarkit.data.dataset import CIFAR10, CLASSES
from cifarkit.errors import CifarkitError

from . import markup
from cifarkit.files import write_text
from .options import ReportOptions
from .rundir import Run, load_run
from .sections import RUN_SECTIONS, RunContext, comparison_section, curves_section

ModelLoader = Callable[[Path], nn.Module]
ValidationLoader = Callable[[Path], tuple[np.ndarray, np.ndarray]]


def build_report(
    run_dirs: Sequence[str | Path],
    out_path: str | Path,
    *,
    data: CIFAR10 | None = None,
    model_loader: ModelLoader | None = None,
    validation_loader: ValidationLoader | None = None,
    options: ReportOptions = ReportOptions(),
) -> Path:
    """Write the HTML report comparing ``run_dirs`` to ``out_path`` and return its path.

    ``data``: the data set whose test split the runs were evaluated on; without it
    the image sections only write CSV files. ``model_loader(run_dir)`` returns the
    run's eval-mode model (e.g. ``cifarkit.runs.load_model``); without it Grad-CAM,
    robustness and temperature scaling are skipped. ``validation_loader(run_dir)``
    returns the run's held-out validation images (uint8 N,H,W,3) and labels, on
    which the temperature is fitted.
    """
    runs = [load_run(d) for d in run_dirs]
    if not runs:
        raise CifarkitError("no run directories given; pass at least one RUN")
    classes = data.classes if data is not None else CLASSES
    for run in runs:
        _check_predictions(run, data, len(classes))
    parts = [comparison_section(runs), curves_section(runs)]
    for i, run in enumerate(runs, start=1):
        context = RunContext(
            run=run,
            prefix=f"run{i}",
            classes=tuple(classes),
            images=data.x_test if data is not None else None,
            model=model_loader(run.path) if model_loader is not None else None,
            validation=validation_loader(run.path) if validation_loader is not None else None,
            options=options,
        )
        parts.append(_run_section(context))
    nav = markup.link_list([("comparison", "Comparison"), ("curves", "Curves"),
                            *((f"run{i}", run.name) for i, run in enumerate(runs, start=1))])
    out = Path(out_path)
    write_text(out, markup.page("cifarkit report", nav + "".join(parts)))
    return out


def _run_section(context: RunContext) -> str:
    """All per-run sections of one run, under a heading with the run's model and path."""
    run = context.run
    intro = markup.paragraph(f"Model {run.config.get('model', '?')}, recipe {run.config.get('name', '?')}, "
                             f"directory {run.path}; files in {run.insight_dir}.")
    body = intro + "".join(section(context) for section in RUN_SECTIONS)
    return markup.section(context.prefix, f"Run {run.name}", body, css_class="run")


def _check_predictions(run: Run, data: CIFAR10 | None, num_classes: int) -> None:
    """The stored predictions must cover the classes and, when data is given, its test set in order."""
    if run.probs.shape[1] != num_classes:
        raise CifarkitError(f"{run.path}: predictions have {run.probs.shape[1]} classes, expected {num_classes}")
    if data is not None and not np.array_equal(run.labels, data.y_test):
        raise CifarkitError(f"{run.path}: eval/predictions.npz labels do not match the test set of the given data; "
                            "pass the data the run was evaluated on, or re-evaluate the run")
