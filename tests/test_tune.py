"""cifarkit tune: search spaces checked up front; tiny studies that prune, resume, share PostgreSQL and report."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from cifarkit.errors import CifarkitError
from cifarkit.recipes import get_recipe
from cifarkit.tune import BEST_CONFIG, load_space, load_study, parse_space, tune
from cli_runner import run_cli
from conftest import synthetic_cifar

TESTS = Path(__file__).parent
REPO = TESTS.parent
BASE = get_recipe("seed_cnn3").replace(bf16=False)


# --- search spaces ------------------------------------------------------------------------------------------


def test_space_holds_fixed_values_ranges_and_choices():
    fast = get_recipe("fast90")
    space = parse_space(
        {
            "epochs": 2,
            "lr": {"low": 1e-4, "high": 1e-2, "log": True},
            "batch_size": {"choices": [500, 1000]},
            "translate": {"low": 0, "high": 2},
            "label_smoothing": {"low": 0.0, "high": 0.2, "step": 0.1},
            "model_kwargs": {"bn_momentum": {"low": 0, "high": 0.8}, "whiten_kernel": {"low": 1, "high": 3}},
        },
        fast,
    )
    assert space.fixed == {"epochs": 2}
    dists = space.params
    assert isinstance(dists["lr"], optuna.distributions.FloatDistribution) and dists["lr"].log
    assert dists["batch_size"].choices == (500, 1000)
    assert isinstance(dists["translate"], optuna.distributions.IntDistribution)  # an int field: whole numbers
    assert dists["label_smoothing"].step == pytest.approx(0.1)
    # Keys of model_kwargs take their type from the range: 0.8 makes a float, whole ends an integer.
    assert isinstance(dists["model_kwargs.bn_momentum"], optuna.distributions.FloatDistribution)
    assert isinstance(dists["model_kwargs.whiten_kernel"], optuna.distributions.IntDistribution)
    recipe = space.recipe(
        fast,
        {
            "lr": 0.003,
            "batch_size": 500,
            "translate": 1,
            "label_smoothing": 0.1,
            "model_kwargs.bn_momentum": 0.5,
            "model_kwargs.whiten_kernel": 3,
        },
    )
    assert (recipe.epochs, recipe.lr, recipe.batch_size, recipe.translate) == (2, 0.003, 500, 1)
    assert recipe.model_kwargs == {**fast.model_kwargs, "bn_momentum": 0.5, "whiten_kernel": 3}


@pytest.mark.parametrize(
    "table, message",
    [
        ({"lrr": {"low": 0.1, "high": 1.0}}, "unknown recipe field 'lrr'"),
        ({"lr": {"low": 0.1, "high": 0.1}}, "lr: low (0.1) must be below high (0.1)"),
        ({"lr": {"low": 0.0, "high": 0.1, "log": True}}, "lr: a log scale needs low > 0"),
        ({"lr": {"choices": []}}, "lr: choices must be a non-empty list"),
        ({"lr": {"low": 0.1, "hihg": 1.0}}, "lr: unknown key(s) hihg"),
        (
            {"lr": {"low": 0.1, "high": 1.0, "step": 0.1, "log": True}},
            "step must be a number > 0, and cannot be combined",
        ),
        ({"epochs": {"low": 1, "high": 2.5}}, "epochs is an integer field"),
        ({"optimizer": {"low": 0, "high": 1}}, "optimizer is not numeric: search it with choices"),
        ({"optimizer": {"choices": ["adamw", "rmsprop"]}}, "optimizer = 'rmsprop' is not a valid trial"),
        ({"label_smoothing": {"low": 0.0, "high": 1.5}}, "label_smoothing = 1.5 is not a valid trial"),
        ({"epochs": 3}, "nothing to search"),
        ({"val_fraction": 0.0, "lr": {"low": 0.001, "high": 0.01}}, "val_fraction must be > 0"),
        ({"model_kwargs": 3}, "model_kwargs is a table of keys: [model_kwargs]"),
        ({"model_kwargs": {"dropout": {"low": 0.1, "high": 0.5}}}, "model_kwargs.dropout = 0.1 is not a valid trial"),
    ],
)
def test_bad_space_is_a_clear_error(table, message):
    with pytest.raises(CifarkitError) as error:
        parse_space(table, BASE)
    assert message in str(error.value)


def test_shipped_spaces_fit_their_recipes():
    spaces = sorted((REPO / "examples" / "spaces").glob("*.toml"))
    assert spaces
    for path in spaces:
        assert load_space(path, get_recipe(path.stem)).params


def test_tune_help_shows_an_example_and_bad_space_is_one_line(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "tune", "--help")
    assert code == 0 and "lr = {low = 1e-4, high = 1e-2, log = true}" in out
    space = tmp_path / "space.toml"
    space.write_text("lr = {low = 1.0, high = 0.1}\n")
    code, _, err = run_cli(capsys, "tune", "--recipe", "seed_cnn3", "--space", str(space), "--trials", "2")
    assert code == 2 and err.strip() == f"cifarkit: error: search space {space}: lr: low (1.0) must be below high (0.1)"


# --- a tiny study with a pruned trial, shared by the tests below ---------------------------------------------


@pytest.fixture(scope="module")
def pruned_study(tmp_path_factory) -> Path:
    """Two trials of 3 epochs: a good learning rate, then a hopeless one that the median pruner stops."""
    out = tmp_path_factory.mktemp("study") / "study"
    storage = f"sqlite:///{out.parent / 'optuna.db'}"
    space = parse_space({"epochs": 3, "lr": {"low": 1e-7, "high": 1e-2, "log": True}}, BASE)
    first = optuna.create_study(storage=storage, study_name="tiny", direction="maximize")
    first.enqueue_trial({"lr": 3e-3})
    first.enqueue_trial({"lr": 1e-7})
    tune(
        BASE,
        space,
        synthetic_cifar(),
        out,
        n_trials=2,
        storage=storage,
        study_name="tiny",
        progress=False,
        pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=2),
    )
    return out


def test_trials_are_run_directories_and_the_bad_one_is_pruned(pruned_study):
    study = load_study(pruned_study)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.PRUNED]
    good, bad = (pruned_study / "trials" / f"{n:04d}" for n in (0, 1))
    assert json.loads((good / "metrics.json").read_text())["epochs_run"] == 3
    # The pruned trial stopped after epoch 2 of 3 and is a finished run directory all the same.
    history = json.loads((bad / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2]
    assert json.loads((bad / "metrics.json").read_text())["epochs_run"] == 2
    assert {"best.safetensors", "curves.png", "resume.pt"} <= {p.name for p in bad.iterdir()}
    assert study.trials[1].intermediate_values == {r["epoch"]: r["val_acc"] for r in history}
    assert study.best_trial.number == 0 and study.best_value == max(study.trials[0].intermediate_values.values())
    assert study.trials[0].user_attrs["run_dir"] == "trials/0000"


def test_best_config_is_accepted_by_train(pruned_study, tmp_path, capsys, cli_data):
    best = json.loads((pruned_study / BEST_CONFIG).read_text())
    assert best == {"epochs": 3, "lr": 3e-3, "bf16": False}  # only what differs from seed_cnn3
    code, _, err = run_cli(
        capsys,
        "train",
        "--recipe",
        "seed_cnn3",
        "--config",
        str(pruned_study / BEST_CONFIG),
        "--epochs",
        "1",
        "--subset",
        "100",
        "--no-eval",
        "--out",
        str(tmp_path / "run"),
    )
    assert code == 0, err
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (config["lr"], config["bf16"]) == (3e-3, False)


def test_a_different_space_does_not_resume_the_study(pruned_study, tiny_data):
    other = parse_space({"epochs": 3, "lr": {"low": 1e-6, "high": 1e-2, "log": True}}, BASE)
    with pytest.raises(CifarkitError, match="was started with a different space"):
        tune(
            BASE,
            other,
            tiny_data,
            pruned_study,
            n_trials=3,
            storage=f"sqlite:///{pruned_study.parent / 'optuna.db'}",
            study_name="tiny",
            progress=False,
        )


def test_study_report(pruned_study, tmp_path, capsys):
    code, out, err = run_cli(capsys, "report", str(pruned_study), "-o", str(tmp_path / "study.html"))
    assert code == 0, err
    page = (tmp_path / "study.html").read_text()
    assert all(f'id="{s}"' in page for s in ("summary", "trials", "history", "epochs", "parallel"))
    # One completed trial: its history and epochs; importances and parallel coordinates need two.
    assert "pruned" in page and page.count("data:image/png;base64") == 2 and "needs 2 completed trials" in page
    rows = (pruned_study / "insight" / "trials.csv").read_text().splitlines()
    assert rows[0] == "trial,state,val_acc,epochs,seconds,lr" and rows[2].startswith("1,pruned,")


# --- workers in other processes: killed and resumed, or sharing PostgreSQL ------------------------------------

WORKER = """
import json, os, signal, sys, time
sys.path.insert(0, {tests!r})
import torch
torch.set_num_threads(1)
from conftest import synthetic_cifar
import cifarkit.tune.study as study_module
from cifarkit.recipes import get_recipe
from cifarkit.tracking import Callback
from cifarkit.tune import parse_space, tune

out, storage, n_trials, kill_in, barrier = json.loads(sys.argv[1])
real_train = study_module.train


class Kill(Callback):
    def on_epoch_end(self, row):
        os.kill(os.getpid(), signal.SIGKILL)  # as abrupt as a machine going away


def train(recipe, data, run_dir, **kwargs):
    print("ran", run_dir.name, flush=True)
    if run_dir.name == kill_in:
        kwargs["callbacks"] = [*kwargs["callbacks"], Kill()]
    return real_train(recipe, data, run_dir, **kwargs)


study_module.train = train
if barrier:  # start together, as workers launched on several machines at once
    open(os.path.join(barrier, str(os.getpid())), "w").close()
    while len(os.listdir(barrier)) < 2:
        time.sleep(0.01)
base = get_recipe("seed_cnn3").replace(bf16=False, epochs=1)
space = parse_space({{"lr": {{"low": 1e-4, "high": 1e-2, "log": True}}}}, base)
tune(base, space, synthetic_cifar(), out, n_trials=n_trials, storage=storage, subset=100, progress=False)
"""


def start_worker(
    out: Path, storage: str | None, n_trials: int, kill_in: str | None = None, barrier: Path | None = None
) -> subprocess.Popen:
    """A worker process running the same study command; ``kill_in`` (e.g. "0001") dies in that trial."""
    args = json.dumps([str(out), storage, n_trials, kill_in, barrier and str(barrier)])
    return subprocess.Popen(
        [sys.executable, "-c", WORKER.format(tests=str(TESTS)), args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_killed_study_resumes_without_duplicate_trials(tmp_path):
    out = tmp_path / "study"
    worker = start_worker(out, None, 2, kill_in="0001")
    _, err = worker.communicate()
    assert worker.returncode == -9, err  # killed during its second trial
    study = load_study(out)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.RUNNING]

    # The same study again, here in the test's process (one Python with torch fewer to start): what it finds is
    # what any new worker finds, the killed worker's trial still RUNNING in the study's SQLite file.
    base = BASE.replace(epochs=1)
    space = parse_space({"lr": {"low": 1e-4, "high": 1e-2, "log": True}}, base)
    tune(base, space, synthetic_cifar(), out, n_trials=2, subset=100, progress=False)
    trials = load_study(out).trials
    assert [t.number for t in trials] == [0, 1, 2]
    assert [t.state for t in trials].count(TrialState.COMPLETE) == 2  # the killed trial does not count
    assert sorted(p.name for p in (out / "trials").iterdir()) == ["0000", "0001", "0002"]
    assert (out / BEST_CONFIG).is_file()


@pytest.fixture
def postgres_url():
    """A PostgreSQL server: CI's (.ci/run exports its URL), else a throwaway one started by .ci/postgres."""
    if os.environ.get("CIFARKIT_POSTGRES_URL"):
        yield os.environ["CIFARKIT_POSTGRES_URL"]
        return
    folder = tempfile.mkdtemp(prefix="cifarkit-pg-")  # not under pytest's tmp_path: the server's user must enter it
    started = subprocess.run([str(REPO / ".ci" / "postgres"), "start", folder], capture_output=True, text=True)
    if started.returncode:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.skip(f"no PostgreSQL server could be started: {started.stderr.strip()}")
    try:
        yield started.stdout.strip()
    finally:
        subprocess.run([str(REPO / ".ci" / "postgres"), "stop", folder], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def test_two_workers_share_a_postgresql_study(postgres_url, tmp_path):
    storage = postgres_url
    out, barrier = tmp_path / f"study-{os.getpid()}", tmp_path / "barrier"
    barrier.mkdir()
    workers = [start_worker(out, storage, 3, barrier=barrier) for _ in range(2)]
    outputs = [w.communicate() for w in workers]
    if any(w.returncode for w in workers):  # the workers' whole stderr, not pytest's shortened repr
        pytest.fail("\n\n".join(f"worker exit {w.returncode}:\n{err}" for w, (_, err) in zip(workers, outputs)))
    ran = [{line.split()[1] for line in stdout.splitlines() if line.startswith("ran ")} for stdout, _ in outputs]
    assert ran[0] and ran[1] and not ran[0] & ran[1]  # both worked, never on the same trial
    study = load_study(out)  # through the URL the study directory recorded
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers)) and ran[0] | ran[1] == {f"{n:04d}" for n in numbers}
    # Done: 3 finished trials, or 4 when both workers were mid-trial as the third finished.
    assert 3 <= len(study.get_trials(states=(TrialState.COMPLETE,))) <= 4
    assert all(
        t.params["lr"] == json.loads((out / t.user_attrs["run_dir"] / "config.json").read_text())["lr"]
        for t in study.trials
    )


# --- the command line, with --final ------------------------------------------------------------------------


def test_tune_command_with_final(tmp_path, capsys, cli_data):
    space = tmp_path / "space.toml"
    space.write_text("epochs = 1\nbf16 = false\nlr = {low = 1e-3, high = 1e-2, log = true}\n")
    out = tmp_path / "study"
    code, stdout, err = run_cli(
        capsys,
        "tune",
        "--recipe",
        "seed_cnn3",
        "--space",
        str(space),
        "--trials",
        "1",
        "--subset",
        "100",
        "--out",
        str(out),
        "--final",
    )
    assert code == 0, err
    assert "best: trial 0" in stdout and "test accuracy" in stdout
    final = out / "final-0000"
    config = json.loads((final / "config.json").read_text())
    assert config["val_fraction"] == 0.0 and config["lr"] == load_study(out).best_params["lr"]
    record = json.loads((final / "eval" / "metrics.json").read_text())
    with np.load(final / "eval" / "predictions.npz") as npz:  # the final run was evaluated, and says so
        accuracy = (npz["probs"].argmax(1) == npz["labels"]).mean()
    assert record["test_acc"] == pytest.approx(accuracy) and f"test accuracy {record['test_acc']:.4f}" in stdout
    assert json.loads((out / "study.json").read_text())["study"] == "study"
