"""The report of a hyperparameter study (``cifarkit report STUDY``): its trials and Optuna's own plots.

One self-contained HTML page: the best trial, a table of every trial, and the figures of :data:`FIGURES`, also
written to ``STUDY/insight/`` as CSV and PNG.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from cifarkit.files import write_csv, write_text
from cifarkit.plots import save_png

from . import markup

# (section id, title, function of optuna.visualization.matplotlib, completed trials it needs)
FIGURES: list[tuple[str, str, str, int]] = [
    ("history", "Optimisation history", "plot_optimization_history", 1),
    ("epochs", "Validation accuracy per epoch (pruned trials stop early)", "plot_intermediate_values", 1),
    ("importance", "Parameter importances (fANOVA)", "plot_param_importances", 2),
    ("parallel", "Parallel coordinates", "plot_parallel_coordinate", 2),
]


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One row per trial: number, state, validation accuracy (the best; a pruned trial's last), epochs run,
    seconds and parameters."""
    names = sorted({name for trial in study.trials for name in trial.params})
    return [
        {
            "trial": t.number,
            "state": t.state.name.lower(),
            "val_acc": t.value,
            "epochs": len(t.intermediate_values),
            "seconds": round(t.duration.total_seconds(), 1) if t.duration else None,
            **{name: t.params.get(name) for name in names},
        }
        for t in study.trials
    ]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _figure(study: optuna.Study, function: str, path: Path) -> str:
    """Optuna's matplotlib plot ``function`` of the study as an embedded PNG, also written to ``path``."""
    import matplotlib
    import matplotlib.pyplot as plt

    plot: Callable[..., Any] = getattr(optuna.visualization.matplotlib, function)
    with warnings.catch_warnings(), matplotlib.rc_context():  # Optuna sets its own style globally: keep it here
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        axes = plot(study)
    figure = axes.flat[0].figure if hasattr(axes, "flat") else axes.figure
    try:
        return markup.image(save_png(figure, path), function)
    finally:
        plt.close(figure)


def _summary(study: optuna.Study, complete: list[FrozenTrial]) -> str:
    settings = study.user_attrs.get("cifarkit", {})
    counts = {state.name.lower(): len(study.get_trials(deepcopy=False, states=(state,))) for state in TrialState}
    lines = [
        f"recipe {settings.get('recipe', '?')}; {len(study.trials)} trials: "
        + ", ".join(f"{n} {state}" for state, n in counts.items() if n)
    ]
    if complete:
        best = study.best_trial
        lines.append(
            f"best: trial {best.number}, validation accuracy {best.value:.4f}, "
            + ", ".join(f"{k} = {_cell(v)}" for k, v in best.params.items())
        )
    return "".join(markup.paragraph(line) for line in lines)


def study_report(study: optuna.Study, study_dir: str | Path, out_path: str | Path) -> Path:
    """Write the HTML report of ``study`` (whose trials live in ``study_dir``) to ``out_path``; returns it."""
    insight = Path(study_dir) / "insight"
    rows = trial_rows(study)
    write_csv(insight / "trials.csv", rows)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    table = markup.table(list(rows[0]) if rows else ["trial"], [[_cell(v) for v in row.values()] for row in rows])
    parts = [markup.section("summary", "Summary", _summary(study, complete)), markup.section("trials", "Trials", table)]
    for section_id, title, function, needs in FIGURES:
        if len(complete) < needs:
            body = markup.note(f"needs {needs} completed trials")
        else:
            body = _figure(study, function, insight / f"{section_id}.png")
        parts.append(markup.section(section_id, title, body))
    links = [("summary", "Summary"), ("trials", "Trials")]
    nav = markup.link_list([*links, *((section_id, title.split(" (")[0]) for section_id, title, *_ in FIGURES)])
    out = Path(out_path)
    write_text(out, markup.page(f"cifarkit study {study.study_name}", nav + "".join(parts)))
    return out
