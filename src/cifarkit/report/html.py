"""Assemble the analyses of one or more runs into a single self-contained HTML page.

Every image is embedded, so the page can be mailed or archived and opened offline; each section also writes its
files to ``RUN/insight/``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cifarkit.data.dataset import CIFAR10
from cifarkit.errors import CifarkitError
from cifarkit.evaluate import evaluate
from cifarkit.files import write_text
from cifarkit.runs import Run, has_evaluation, load_model, load_run, validation_set

from . import markup
from .options import ReportOptions
from .sections import RUN_SECTIONS, RunContext, comparison_section, curves_section, describe_predictions


def build_report(
    run_dirs: Sequence[str | Path],
    out_path: str | Path,
    *,
    data: CIFAR10 | None = None,
    use_model: bool = True,
    device: str = "auto",
    options: ReportOptions = ReportOptions(),
) -> Path:
    """Write the HTML report comparing ``run_dirs`` to ``out_path`` and return its path.

    Runs are rendered from what :func:`cifarkit.evaluate.evaluate` wrote (a run without it is evaluated on
    ``data`` first). ``data`` also gives the test images and validation splits the further analyses need;
    ``use_model=False`` loads no model (no Grad-CAM, robustness or temperature scaling).
    """
    if not run_dirs:
        raise CifarkitError("no run directories given; pass at least one RUN")
    runs = [_load(Path(d), data, device) for d in run_dirs]
    parts = [comparison_section(runs), curves_section(runs)]
    with_model = use_model and data is not None
    for i, run in enumerate(runs, start=1):
        context = RunContext(
            run=run,
            prefix=f"run{i}",
            images=data.x_test if data is not None else None,
            model=load_model(run.path) if with_model else None,
            validation=_validation(data, run) if with_model else None,
            options=options,
            device=device,
        )
        parts.append(_run_section(context))
    links = [("comparison", "Comparison"), ("curves", "Curves")]
    nav = markup.link_list([*links, *((f"run{i}", run.name) for i, run in enumerate(runs, start=1))])
    out = Path(out_path)
    write_text(out, markup.page("cifarkit report", nav + "".join(parts)))
    return out


def _load(path: Path, data: CIFAR10 | None, device: str) -> Run:
    """The run at ``path``, evaluated on ``data`` first when it has no evaluation yet; checked against ``data``."""
    if data is not None and path.is_dir() and not has_evaluation(path):
        evaluate(path, data, device=device)
    run = load_run(path)
    evaluation = run.evaluation
    if evaluation.probs.shape[1] != len(run.config["classes"]):
        raise CifarkitError(
            f"{evaluation.path}: predictions have {evaluation.probs.shape[1]} classes, the run "
            f"{len(run.config['classes'])}; evaluate it again: `cifarkit evaluate {path}`"
        )
    missing = [name for name in run.config["classes"] if name not in evaluation.metrics["classification_report"]]
    if missing:
        raise CifarkitError(
            f"{evaluation.path / 'metrics.json'}: the classification report lacks the run's classes "
            f"{', '.join(map(str, missing))}; evaluate it again: `cifarkit evaluate {path}`"
        )
    _check_records(run)
    if data is not None and not np.array_equal(evaluation.labels, data.y_test):
        raise CifarkitError(
            f"{evaluation.path}: the labels evaluated do not match the test set of the given data "
            f"({data.source}); pass the data the run was evaluated on, or evaluate it on this data: "
            f"`cifarkit evaluate {path} --data {data.source}`"
        )
    return run


def _check_records(run: Run) -> None:
    """The run's history.json and metrics.json hold what the report shows; a one-line error naming the file if not."""
    fix = "restore it from a copy, or train the run again into a new --out"

    def number(value: object, optional: bool = True) -> bool:
        if value is None:
            return optional
        return isinstance(value, int | float) and not isinstance(value, bool)

    curves = ("train_loss", "train_acc", "val_loss", "val_acc")
    if not all(
        isinstance(row, dict) and number(row.get("epoch"), False) and all(number(row.get(k)) for k in curves)
        for row in run.history
    ):
        raise CifarkitError(
            f"{run.path / 'history.json'} is not a list of epochs with epoch, {', '.join(curves)}; {fix}"
        )
    metrics = run.metrics
    wrong = [key for key in ("params", "train_seconds", "best_val_acc") if not number(metrics.get(key))]
    if wrong or isinstance(metrics.get("params"), float):
        raise CifarkitError(f"{run.path / 'metrics.json'}: {', '.join(wrong) or 'params'} must be numbers; {fix}")


def _validation(data: CIFAR10, run: Run) -> tuple[np.ndarray, np.ndarray] | None:
    """The run's held-out validation images and labels, or None when it trained without a validation split."""
    images, labels = validation_set(data, run.config)
    return (images, labels) if len(labels) else None


def _run_section(context: RunContext) -> str:
    """All per-run sections of one run, under a heading with the run's model and path."""
    run = context.run
    intro = markup.paragraph(
        f"Model {run.config.get('model', '?')}, recipe {run.config.get('name', '?')}, "
        f"directory {run.path}. {describe_predictions(run)} "
        f"Further files in {run.insight_dir}."
    )
    body = intro + "".join(section(context) for section in RUN_SECTIONS)
    return markup.section(context.prefix, f"Run {run.name}", body, css_class="run")
