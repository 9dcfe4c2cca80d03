"""Optuna studies over a recipe: every trial a normal run directory, bad trials pruned, resumable, parallel.

A study lives in a directory::

    STUDY/study.json           recipe, search space, study name and storage (password hidden)
    STUDY/study.db             the Optuna storage when no other is given (SQLite)
    STUDY/trials/NNNN/         one run directory per trial, NNNN = the trial's number
    STUDY/best_config.json     the best trial's recipe changes: `cifarkit train --recipe R --config` takes it
    STUDY/final-NNNN/          with --final: trial NNNN retrained on all training images, evaluated once

Optuna keeps the study in a SQL database (SQLite by default; any SQLAlchemy URL that many workers share), so the
same command resumes it or adds a worker. Trials are selected on validation accuracy; the test set is used once,
by :func:`retrain_best`.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from cifarkit.data.dataset import CIFAR10
from cifarkit.errors import CifarkitError
from cifarkit.evaluate import evaluate
from cifarkit.files import check_writable, read_json, write_json
from cifarkit.recipes import RECIPES, Recipe, validate
from cifarkit.runs import run_directory_of
from cifarkit.tracking import Callback, track
from cifarkit.train import check_split, train

from .space import SearchSpace

STUDY_FILE = "study.json"
BEST_CONFIG = "best_config.json"
PRUNERS = ("median", "halving", "none")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
MAX_FAILURES_IN_A_ROW = 10  # a worker whose trials fail this often in a row stops: see StopAfterFailures
# Workers started together race to create the database's tables and the study's record; the loser waits for the
# winner's transaction, in short steps (2 s at most, as one wait of 1 s twice did, but most races end in the first).
RACE_TRIES, RACE_WAIT_S = 11, 0.2
HEARTBEAT_SECONDS = 60  # a worker silent for two heartbeats (killed) has its running trial marked failed
CONNECT_TIMEOUT_SECONDS = 10  # an unreachable database server is an error this soon, not after the OS gives up
STORAGE_HINT = (
    "--storage takes a SQLAlchemy URL such as postgresql://user@host/db (PostgreSQL needs "
    "pip install 'cifarkit[tune]'); leave it out for a SQLite file in the study directory"
)


class StopAfterFailures:
    """An Optuna study callback: stop this worker after ``limit`` failed trials in a row (they do not count)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.in_a_row = limit, 0

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.in_a_row = self.in_a_row + 1 if trial.state == TrialState.FAIL else 0
        if self.in_a_row >= self.limit:
            optuna.logging.get_logger("optuna").warning(
                f"stopping: the last {self.limit} trials failed (each one's reason is logged above); "
                "narrow the search space to values the recipe accepts"
            )
            study.stop()


class Pruning(Callback):
    """Reports each epoch's validation accuracy to the trial; asks training to stop once Optuna prunes it."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial, self.pruned = trial, False

    def on_epoch_end(self, row: dict[str, Any]) -> bool:
        self.trial.report(row["val_acc"], step=row["epoch"])
        self.pruned = self.trial.should_prune()
        return self.pruned


def make_pruner(pruner: str | optuna.pruners.BasePruner) -> optuna.pruners.BasePruner:
    """The Optuna pruner named ``pruner``: ``median``, ``halving`` (successive halving) or ``none``; an Optuna pruner
    is returned as it is."""
    if isinstance(pruner, optuna.pruners.BasePruner):
        return pruner
    pruners = {"median": "MedianPruner", "halving": "SuccessiveHalvingPruner", "none": "NopPruner"}
    if pruner in pruners:
        return getattr(optuna.pruners, pruners[pruner])()
    raise CifarkitError(f"unknown pruner {pruner!r}; choose one of {', '.join(PRUNERS)}")


def _storage(url: str) -> optuna.storages.RDBStorage:
    """The SQL storage at ``url``, with heartbeats so a killed worker's trial is marked failed, not running."""
    import sqlalchemy.exc

    try:
        for attempt in range(RACE_TRIES):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_SECONDS)
            except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
                if attempt == RACE_TRIES - 1:
                    raise
                time.sleep(RACE_WAIT_S)  # workers started together raced to create the tables: the others' soon exist
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as e:
        raise CifarkitError(
            f"cannot open the study storage {_hide_password(url)} ({str(e).splitlines()[0]}); "
            "check --storage (a SQLAlchemy URL such as postgresql://user@host/db; "
            "PostgreSQL needs pip install 'cifarkit[tune]')"
        ) from None


def check_storage(storage: str | None) -> None:
    """Refuse, before anything is created, a ``--storage`` that cannot hold the study; one line naming the fix.

    The URL must parse, name a dialect whose driver is installed, and answer one connection; a SQLite file is not
    created here (its folder must be writable). None, the study directory's own SQLite file, needs no check.
    """
    if storage is None:
        return
    import sqlalchemy
    import sqlalchemy.exc

    if not storage.strip():
        raise CifarkitError(f"--storage is empty (an unset shell variable?); {STORAGE_HINT}")
    try:
        url = sqlalchemy.engine.make_url(storage)
    except sqlalchemy.exc.ArgumentError:  # never echo it: a URL may hold a password
        raise CifarkitError(
            f"--storage is not a SQLAlchemy URL (dialect://user@host/database); {STORAGE_HINT}"
        ) from None
    shown = url.render_as_string(hide_password=True)
    try:
        url.get_dialect().import_dbapi()
    except sqlalchemy.exc.NoSuchModuleError:
        raise CifarkitError(
            f"--storage {shown}: SQLAlchemy has no database dialect {url.drivername!r}; {STORAGE_HINT}"
        ) from None
    except ImportError as e:
        raise CifarkitError(
            f"--storage {shown}: the driver for {url.drivername} is not installed ({e}); install it. {STORAGE_HINT}"
        ) from None
    sqlite = url.get_backend_name() == "sqlite"
    database = Path(url.database) if sqlite and url.database not in (None, "", ":memory:") else None
    if database is not None and not database.exists():
        if not database.parent.is_dir():
            raise CifarkitError(
                f"--storage {shown}: the folder {database.parent} does not exist (SQLite creates the database "
                "file, not its folder); create it, or name a file in an existing folder"
            )
        check_writable(database, "--storage")
        return  # nothing to connect to yet, and connecting would create the file
    connect_args = {"connect_timeout": CONNECT_TIMEOUT_SECONDS} if url.get_backend_name() == "postgresql" else {}
    try:
        engine = sqlalchemy.create_engine(url, connect_args=connect_args)
    except (sqlalchemy.exc.ArgumentError, TypeError, ValueError) as e:
        raise CifarkitError(f"--storage {shown}: {_first_line(e)}; {STORAGE_HINT}") from None
    try:
        with engine.connect() as connection:
            if sqlite:  # a file that is not a database fails on the first read, not on connect
                connection.exec_driver_sql("SELECT count(*) FROM sqlite_master")
    except sqlalchemy.exc.SQLAlchemyError as e:
        reason = _first_line(getattr(e, "orig", None) or e)
        raise CifarkitError(
            f"cannot connect to the study storage {shown} ({reason}); check that its server runs and the "
            f"database exists. {STORAGE_HINT}"
        ) from None
    finally:
        engine.dispose()


def _first_line(error: BaseException) -> str:
    """The first non-blank line of an error's message (drivers add hints and links below it)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def check_study_dir(out: Path) -> None:
    """Refuse, before anything is created, a study directory that is a file, holds other files, or cannot be written."""
    if out.exists() and not out.is_dir():
        raise CifarkitError(f"--out {out} is a file; name a directory for the study")
    if out.is_dir() and any(out.iterdir()) and not (out / STUDY_FILE).is_file():
        raise CifarkitError(f"--out {out} holds other files, not a study; name a new or empty directory")
    check_writable(out / STUDY_FILE, "--out")
    outer = run_directory_of(out.absolute())
    if outer is not None:
        raise CifarkitError(f"--out {out} lies inside the run directory {outer}; name a directory outside it")


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
    check_study_dir(out)
    check_storage(storage)
    out.mkdir(parents=True, exist_ok=True)
    url, name = _storage_url(out, storage), study_name or out.name
    record = {"study": name, "storage": storage and _hide_password(storage), **identity}
    if (out / STUDY_FILE).is_file():
        _check_same(read_json(out / STUDY_FILE, dict, "restore it, or name a new --out"), record, f"the study in {out}")
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
        except optuna.exceptions.StorageInternalError:  # another worker records it at the same moment
            for _ in range(RACE_TRIES):
                if "cifarkit" in study.user_attrs:
                    break
                time.sleep(RACE_WAIT_S)
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

    Finished means completed or pruned; a trial whose recipe is refused fails (the reason in its ``error``
    attribute) and does not count. Each trial trains into ``out/trials/NNNN``, reports validation accuracy after
    every epoch to ``pruner`` and scores its best; the best configuration is written to ``out/best_config.json``.
    """
    out = Path(out)
    if n_trials < 1:
        raise CifarkitError(f"--trials must be at least 1, got {n_trials}")
    check_split(data.y_train, space.recipe(base, {}), subset)
    study = open_study(out, {"recipe": base.name, "space": space.table, "subset": subset}, storage, study_name, pruner)
    options = dict(track_with=track_with, subset=subset, progress=progress, device=device)

    def objective(trial: optuna.Trial) -> float:
        try:
            recipe = space.recipe(base, space.suggest(trial))  # validated: a recipe cifarkit refuses never trains
        except CifarkitError as e:
            return _failed(trial, e)
        run_dir = out / "trials" / f"{trial.number:04d}"
        trial.set_user_attr("run_dir", run_dir.relative_to(out).as_posix())
        pruning, name = Pruning(trial), f"{study.study_name}/{trial.number:04d}"
        try:
            _train_tracked(recipe, data, run_dir, name=name, callbacks=[pruning], **options)
        except CifarkitError as e:
            return _failed(trial, e)
        metrics = read_json(run_dir / "metrics.json", dict)
        if pruning.pruned:
            raise optuna.TrialPruned(f"pruned after epoch {metrics['epochs_run']}")
        return metrics["best_val_acc"]

    if len(study.get_trials(deepcopy=False, states=FINISHED)) < n_trials:
        # No trial budget: failed trials do not count, so trials run until the study holds n_trials finished
        # ones (counted over every worker), or until this worker has seen too many fail in a row.
        study.optimize(
            objective,
            catch=(CifarkitError,),
            callbacks=[
                optuna.study.MaxTrialsCallback(n_trials, states=FINISHED),
                StopAfterFailures(MAX_FAILURES_IN_A_ROW),
            ],
        )
    write_best_config(study, base, space, out)
    return study


def _failed(trial: optuna.Trial, error: CifarkitError) -> float:
    """Record why ``trial`` failed (a one-line log and its ``error`` attribute); NaN makes Optuna mark it failed."""
    trial.set_user_attr("error", str(error))
    optuna.logging.get_logger("optuna").warning(f"Trial {trial.number} failed: {error}")
    return math.nan


def best_trial(
    study: optuna.Study, base: Recipe | None = None, space: SearchSpace | None = None
) -> optuna.trial.FrozenTrial:
    """The completed trial of best validation accuracy (with a valid recipe, given ``base``, ``space``), or an error."""
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not completed:
        raise CifarkitError(f"study {study.study_name!r} has no completed trial yet; run more trials")
    if base is None or space is None:
        return study.best_trial
    reasons = []
    for trial in sorted(completed, key=lambda t: t.value, reverse=True):  # stable: ties go to the earlier trial
        try:
            space.recipe(base, trial.params)
        except CifarkitError as e:
            reasons.append(f"trial {trial.number}: {e}")
            continue
        return trial
    raise CifarkitError(
        f"study {study.study_name!r} has no completed trial whose recipe cifarkit accepts ({reasons[0]}); "
        "run more trials, or start a new study with a space that avoids those values"
    )


def write_best_config(study: optuna.Study, base: Recipe, space: SearchSpace, out: Path) -> Path | None:
    """``out/best_config.json``: the best trial's recipe as `cifarkit train --recipe NAME --config` reads it.

    The fields that differ from the built-in recipe of that name, written only once the recipe `cifarkit train`
    would build from them is valid; without such a trial an earlier file is removed.
    """
    try:
        best = best_trial(study, base, space)
    except CifarkitError:
        (out / BEST_CONFIG).unlink(missing_ok=True)  # it may name a recipe that is refused now
        return None
    recipe, reference = space.recipe(base, best.params), RECIPES.get(base.name)
    changed = {k: v for k, v in recipe.to_dict().items() if reference is None or v != getattr(reference, k)}
    validate((reference or base).replace(**json.loads(json.dumps(changed))))  # as `train --config` will read it
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
    """Retrain the best trial's recipe on all training images into ``out/final-NNNN``, then test it; returns both."""
    best = best_trial(study, base, space)
    recipe = space.recipe(base, best.params).replace(val_fraction=0.0)
    run_dir = Path(out) / f"final-{best.number:04d}"
    name, resume = f"{study.study_name}/final-{best.number:04d}", (run_dir / "resume.pt").is_file()
    options = dict(track_with=track_with, subset=subset, progress=progress, device=device)
    return run_dir, _train_tracked(recipe, data, run_dir, name=name, resume=resume, test=True, **options)


def _train_tracked(
    recipe: Recipe,
    data: CIFAR10,
    run_dir: Path,
    *,
    track_with: str | None,
    name: str,
    subset: int | None,
    progress: bool,
    device: str,
    resume: bool = False,
    callbacks: Sequence[Callback] = (),
    test: bool = False,
) -> dict[str, Any] | None:
    """Train ``recipe`` into ``run_dir``, mirrored to ``track_with`` as ``name``; with ``test``, its test metrics."""
    with track(track_with, run_dir, name) as trackers:
        train(
            recipe,
            data,
            run_dir,
            subset=subset,
            resume=resume,
            progress=progress,
            device=device,
            callbacks=[*callbacks, *trackers],
        )
        return evaluate(run_dir, data, device=device) if test else None


def load_study(study_dir: str | Path, storage: str | None = None) -> optuna.Study:
    """The study a ``cifarkit tune`` directory holds; ``storage`` overrides the URL (which keeps no password)."""
    study_dir = Path(study_dir)
    if not (study_dir / STUDY_FILE).is_file():
        raise CifarkitError(f"{study_dir} is not a study directory (no {STUDY_FILE}); `cifarkit tune` writes one")
    record = read_json(study_dir / STUDY_FILE, dict, "restore it from a copy, or run the study again into a new --out")
    url = _storage_url(study_dir, storage or record["storage"])
    return optuna.load_study(study_name=record["study"], storage=_storage(url))
