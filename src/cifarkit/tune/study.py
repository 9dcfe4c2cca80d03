"""Optuna studies over a recipe: every trial a normal run directory, bad trials pruned, resumable, parallel.

A study lives in a directory::

    STUDY/study.json           recipe, search space, study name and storage (password hidden)
    STUDY/study.db             the Optuna storage when no other is given (SQLite)
    STUDY/trials/NNNN/         one run directory per trial, NNNN = the trial's number
    STUDY/best_config.json     the best trial's recipe changes: `cifarkit train --recipe R --config` takes it
    STUDY/final-NNNN/          with --final: trial NNNN retrained on all training images, evaluated once

The study itself (trials, parameters, per-epoch validation accuracy, states)
is kept by Optuna in a SQL database: a SQLite file by default, so a killed
study resumes where it stopped when the same command runs again; or any
SQLAlchemy URL, such as PostgreSQL, that many workers on many machines share
(each runs the same command with the same ``--storage`` and ``--study``).
Trials are selected on validation accuracy only; the test set is used once,
by :func:`retrain_best`.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from cifarkit.data.dataset import CIFAR10
from cifarkit.errors import CifarkitError
from cifarkit.evaluate import evaluate
from cifarkit.files import read_json, write_json
from cifarkit.recipes import RECIPES, Recipe
from cifarkit.tracking import Callback, track
from cifarkit.train import check_split, train

from .space import SearchSpace

STUDY_FILE = "study.json"
BEST_CONFIG = "best_config.json"
PRUNERS = ("median", "halving", "none")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
HEARTBEAT_SECONDS = 60  # a worker silent for two heartbeats (killed) has its running trial marked failed


class Pruning(Callback):
    """Reports each epoch's validation accuracy to the trial; asks training to stop once Optuna prunes it."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial, self.pruned = trial, False

    def on_epoch_end(self, row: dict[str, Any]) -> bool:
        self.trial.report(row["val_acc"], step=row["epoch"])
        self.pruned = self.trial.should_prune()
        return self.pruned


def make_pruner(pruner: str | optuna.pruners.BasePruner) -> optuna.pruners.BasePruner:
    """The Optuna pruner named ``pruner`` (an Optuna pruner is returned as it is).

    ``median`` stops a trial whose accuracy is below the median of earlier
    trials at the same epoch (from the sixth trial on); ``halving`` is
    asynchronous successive halving (only the best part of the trials goes on
    at each rung); ``none`` never prunes.
    """
    if isinstance(pruner, optuna.pruners.BasePruner):
        return pruner
    if pruner == "median":
        return optuna.pruners.MedianPruner()
    if pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    if pruner == "none":
        return optuna.pruners.NopPruner()
    raise CifarkitError(f"unknown pruner {pruner!r}; choose one of {', '.join(PRUNERS)}")


def _storage(url: str) -> optuna.storages.RDBStorage:
    """The SQL storage at ``url``, with heartbeats so a killed worker's trial is marked failed, not running."""
    import sqlalchemy.exc

    try:
        for attempt in range(3):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_SECONDS)
            except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
                if attempt == 2:
                    raise
                time.sleep(1)  # workers started together raced to create the tables: the others' exist now
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as e:
        raise CifarkitError(
            f"cannot open the study storage {_hide_password(url)} ({str(e).splitlines()[0]}); "
            "check --storage (a SQLAlchemy URL such as postgresql://user@host/db; "
            "PostgreSQL needs pip install 'cifarkit[tune]')"
        ) from None


def _storage_url(study_dir: Path, storage: str | None) -> str:
    """``storage``, or the study directory's own SQLite file."""
    return storage or f"sqlite:///{(study_dir / 'study.db').resolve()}"


def _hide_password(url: str) -> str:
    """``url`` as it may be shown and recorded: any password replaced by ***."""
    import sqlalchemy.engine
    import sqlalchemy.exc

    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:  # not a URL at all: never echo it, it may hold a secret
        return "(not a SQLAlchemy URL)"


def _check_same(saved: dict[str, Any], current: dict[str, Any], where: str) -> None:
    """Refuse to mix two studies: the saved settings must be the current ones."""
    changed = sorted(k for k in current if saved.get(k) != current[k])
    if changed:
        raise CifarkitError(
            f"{where} was started with a different {', '.join(changed)}; run the same command "
            "to resume it, or choose another --out / --study"
        )


def open_study(
    out: Path,
    identity: dict[str, Any],
    storage: str | None,
    study_name: str | None,
    pruner: str | optuna.pruners.BasePruner,
) -> optuna.Study:
    """The study in ``out`` (created, or loaded to resume), checked to be the same search as ``identity``."""
    if out.exists() and not out.is_dir():
        raise CifarkitError(f"--out {out} is a file; name a directory for the study")
    if out.is_dir() and any(out.iterdir()) and not (out / STUDY_FILE).is_file():
        raise CifarkitError(f"--out {out} holds other files, not a study; name a new or empty directory")
    out.mkdir(parents=True, exist_ok=True)
    url, name = _storage_url(out, storage), study_name or out.name
    record = {"study": name, "storage": storage and _hide_password(storage), **identity}
    if (out / STUDY_FILE).is_file():
        _check_same(read_json(out / STUDY_FILE), record, f"the study in {out}")
    # TPE after 5 random trials (Optuna's 10 would leave a study of 12-20 trials mostly random); the constant
    # liar keeps workers that run at once from proposing the same point.
    sampler = optuna.samplers.TPESampler(n_startup_trials=5, constant_liar=True)
    study = optuna.create_study(
        storage=_storage(url),
        study_name=name,
        direction="maximize",
        pruner=make_pruner(pruner),
        sampler=sampler,
        load_if_exists=True,
    )
    if "cifarkit" not in study.user_attrs:  # first worker: the database records what this study searches
        try:
            study.set_user_attr("cifarkit", identity)
        except optuna.exceptions.StorageInternalError:  # another worker recorded it at the same moment
            time.sleep(1)
    _check_same(study.user_attrs["cifarkit"], identity, f"study {name!r} in {_hide_password(url)}")
    write_json(out / STUDY_FILE, record)
    return study


def tune(
    base: Recipe,
    space: SearchSpace,
    data: CIFAR10,
    out: str | Path,
    *,
    n_trials: int,
    storage: str | None = None,
    study_name: str | None = None,
    pruner: str | optuna.pruners.BasePruner = "median",
    subset: int | None = None,
    track_with: str | None = None,
    device: str = "auto",
    progress: bool = True,
) -> optuna.Study:
    """Run trials of ``base`` over ``space`` until the study holds ``n_trials`` finished ones; returns the study.

    Finished means completed or pruned; trials that fail (a combination of
    values the recipe refuses) are recorded as failed and do not count. A
    study that already holds ``n_trials`` runs none; several workers sharing
    ``storage`` stop together once it does (each finishes the trial it is
    running). Each trial trains into ``out/trials/NNNN`` on ``data`` (or a
    class-balanced ``subset``), reports validation accuracy after every epoch
    to ``pruner`` (see :func:`make_pruner`), and scores its best validation
    accuracy. ``track_with`` (``tensorboard`` or ``mlflow``) mirrors every
    trial to that tracker. The best configuration so far is written to
    ``out/best_config.json``.
    """
    out = Path(out)
    if n_trials < 1:
        raise CifarkitError(f"--trials must be at least 1, got {n_trials}")
    check_split(data.y_train, space.recipe(base, {}), subset)
    study = open_study(out, {"recipe": base.name, "space": space.table, "subset": subset}, storage, study_name, pruner)

    def objective(trial: optuna.Trial) -> float:
        recipe = space.recipe(base, space.suggest(trial))
        run_dir = out / "trials" / f"{trial.number:04d}"
        trial.set_user_attr("run_dir", run_dir.relative_to(out).as_posix())
        pruning = Pruning(trial)
        with track(track_with, run_dir, f"{study.study_name}/{trial.number:04d}") as trackers:
            train(
                recipe, data, run_dir, subset=subset, progress=progress, device=device, callbacks=[pruning, *trackers]
            )
        metrics = read_json(run_dir / "metrics.json")
        if pruning.pruned:
            raise optuna.TrialPruned(f"pruned after epoch {metrics['epochs_run']}")
        return metrics["best_val_acc"]

    remaining = n_trials - len(study.get_trials(deepcopy=False, states=FINISHED))
    if remaining > 0:
        study.optimize(
            objective,
            n_trials=remaining,
            catch=(CifarkitError,),
            callbacks=[optuna.study.MaxTrialsCallback(n_trials, states=FINISHED)],
        )
    write_best_config(study, base, space, out)
    return study


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial:
    """The completed trial with the highest validation accuracy; an error while none has completed."""
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise CifarkitError(f"study {study.study_name!r} has no completed trial yet; run more trials")
    return study.best_trial


def write_best_config(study: optuna.Study, base: Recipe, space: SearchSpace, out: Path) -> Path | None:
    """``out/best_config.json``: the best trial's recipe as `cifarkit train --recipe NAME --config` reads it.

    It holds the fields that differ from the built-in recipe of that name (all
    fields for a recipe that is not built in); nothing while no trial completed.
    """
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None
    recipe, reference = space.recipe(base, best_trial(study).params), RECIPES.get(base.name)
    changed = {k: v for k, v in recipe.to_dict().items() if reference is None or v != getattr(reference, k)}
    return write_json(out / BEST_CONFIG, changed)


def retrain_best(
    study: optuna.Study,
    base: Recipe,
    space: SearchSpace,
    data: CIFAR10,
    out: str | Path,
    *,
    subset: int | None = None,
    track_with: str | None = None,
    device: str = "auto",
    progress: bool = True,
) -> tuple[Path, dict[str, Any]]:
    """Retrain the best trial's recipe on all training images (no validation split) and evaluate it on the test set.

    Trains into ``out/final-NNNN`` (NNNN = the best trial's number; running
    again resumes or reuses it) and returns that directory and the test metrics.
    """
    best = best_trial(study)
    recipe = space.recipe(base, best.params).replace(val_fraction=0.0)
    run_dir = Path(out) / f"final-{best.number:04d}"
    with track(track_with, run_dir, f"{study.study_name}/final-{best.number:04d}") as trackers:
        train(
            recipe,
            data,
            run_dir,
            subset=subset,
            resume=(run_dir / "resume.pt").is_file(),
            progress=progress,
            device=device,
            callbacks=trackers,
        )
        metrics = evaluate(run_dir, data, device=device)
    return run_dir, metrics


def load_study(study_dir: str | Path, storage: str | None = None) -> optuna.Study:
    """The study a ``cifarkit tune`` directory holds, read from its storage.

    ``storage`` overrides the URL ``study.json`` recorded, e.g. to give the
    password it does not keep.
    """
    study_dir = Path(study_dir)
    if not (study_dir / STUDY_FILE).is_file():
        raise CifarkitError(f"{study_dir} is not a study directory (no {STUDY_FILE}); `cifarkit tune` writes one")
    record = read_json(study_dir / STUDY_FILE)
    url = _storage_url(study_dir, storage or record["storage"])
    return optuna.load_study(study_name=record["study"], storage=_storage(url))
