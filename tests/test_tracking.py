"""The training loop's callbacks, and the TensorBoard and MLflow trackers read back with their own readers."""

from __future__ import annotations

import json

import pytest

from cifarkit.cli import main
from cifarkit.errors import CifarkitError
from cifarkit.evaluate import evaluate
from cifarkit.recipes import get_recipe
from cifarkit.tracking import Callback, track
from cifarkit.train import train

RECIPE = get_recipe("seed_cnn3").replace(epochs=2, lr=0.003, bf16=False)


class Recorder(Callback):
    """Records what the loop hands over; asks to stop after ``stop_after`` epochs."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.rows, self.metrics, self.stop_after = [], None, stop_after

    def on_epoch_end(self, row):
        self.rows.append(dict(row))
        return row["epoch"] == self.stop_after

    def on_train_end(self, metrics):
        self.metrics = dict(metrics)


def test_callbacks_see_every_epoch_and_can_stop_training(tiny_data, tmp_path):
    stopper, watcher = Recorder(stop_after=1), Recorder()
    run = train(RECIPE, tiny_data, tmp_path / "run", subset=100, progress=False, callbacks=[stopper, watcher])
    history = json.loads((run / "history.json").read_text())
    assert stopper.rows == watcher.rows == history and len(history) == 1  # both saw the epoch it stopped at
    metrics = json.loads((run / "metrics.json").read_text())
    assert watcher.metrics == metrics and metrics["epochs_run"] == 1
    assert (run / "curves.png").is_file()
    # A stopped run is a finished, resumable run directory: resuming trains the remaining epoch.
    train(RECIPE, tiny_data, run, subset=100, resume=True, progress=False, callbacks=[watcher])
    assert [r["epoch"] for r in json.loads((run / "history.json").read_text())] == [1, 2]
    assert watcher.rows[-1]["epoch"] == 2 and watcher.metrics["epochs_run"] == 2


def test_train_track_tensorboard_writes_readable_events(cli_data, tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    try:
        main(
            [
                "train",
                "--recipe",
                "seed_cnn3",
                "--epochs",
                "2",
                "--lr",
                "0.003",
                "--set",
                "bf16=false",
                "--subset",
                "100",
                "--out",
                str(run),
                "--track",
                "tensorboard",
            ]
        )
    except SystemExit as e:
        pytest.fail(f"exit {e.code}: {capsys.readouterr().err}")
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0}).Reload()
    history = json.loads((run / "history.json").read_text())
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"):
        scalars = events.Scalars(key)
        assert [s.step for s in scalars] == [1, 2]
        assert [s.value for s in scalars] == pytest.approx([row[key] for row in history], rel=1e-6)
    test_acc = json.loads((run / "eval" / "metrics.json").read_text())["test_acc"]
    assert [s.value for s in events.Scalars("test_acc")] == pytest.approx([test_acc])
    assert "curves" in events.Tags()["images"] and any(t.startswith("eval/") for t in events.Tags()["images"])


def test_track_mlflow_logs_params_metrics_and_the_run_directory(tiny_data, tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # a plain file store, as the issue asks
    run = tmp_path / "run"
    with track("mlflow", run, "tiny") as callbacks:
        train(RECIPE, tiny_data, run, subset=100, progress=False, callbacks=callbacks)
        evaluate(run, tiny_data)
    client = mlflow.MlflowClient()
    (logged,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert logged.info.status == "FINISHED" and logged.info.run_name == "tiny"
    assert logged.data.params["lr"] == "0.003" and logged.data.params["model"] == "seed_cnn3"
    history = json.loads((run / "history.json").read_text())
    val_acc = client.get_metric_history(logged.info.run_id, "val_acc")
    assert [(m.step, m.value) for m in val_acc] == [(r["epoch"], pytest.approx(r["val_acc"])) for r in history]
    test_acc = json.loads((run / "eval" / "metrics.json").read_text())["test_acc"]
    assert logged.data.metrics["test_acc"] == pytest.approx(test_acc)
    artifacts = {a.path for a in client.list_artifacts(logged.info.run_id)}
    assert {"config.json", "history.json", "metrics.json", "best.safetensors", "eval"} <= artifacts


def test_a_run_refused_before_training_leaves_no_tracker_files(tiny_data, tmp_path):
    (tmp_path / "run").write_text("a file, not a run directory")
    with pytest.raises(CifarkitError, match="is a file"):
        with track("tensorboard", tmp_path / "run", "refused") as callbacks:
            train(RECIPE, tiny_data, tmp_path / "run", progress=False, callbacks=callbacks)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_unknown_tracker_is_an_error(tmp_path):
    with pytest.raises(CifarkitError, match="unknown tracker 'wandb'; choose one of tensorboard, mlflow"):
        with track("wandb", tmp_path, "x"):
            pass
