"""Hooks into the training loop, and the run trackers built on them (TensorBoard, MLflow).

Training calls each :class:`Callback` after every epoch and once at the end; one may ask it to stop (how a search
prunes a trial), which finishes the run like early stopping. Trackers are callbacks that mirror a run to
TensorBoard or MLflow (``cifarkit[track]``, imported only when a tracker opens); :func:`track` opens one.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cifarkit.errors import CifarkitError
from cifarkit.files import read_json


class Callback:
    """Hooks of the training loop; override the ones you need (both do nothing here)."""

    def on_epoch_end(self, row: Mapping[str, Any]) -> bool | None:
        """Called after each epoch is checkpointed, with its history row; return True to stop training."""
        return None

    def on_train_end(self, metrics: Mapping[str, Any]) -> None:
        """Called once training has finished or stopped, with the run's ``metrics.json``."""


def epoch_scalars(row: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of a history row worth plotting (losses, accuracies, lr, seconds), without missing ones."""
    return {k: float(v) for k, v in row.items() if k != "epoch" and isinstance(v, (int, float))}


def _final_scalars(run_dir: Path) -> dict[str, float]:
    """Test accuracies from ``RUN/eval/metrics.json`` when the run was evaluated, else nothing."""
    path = run_dir / "eval" / "metrics.json"
    metrics = read_json(path, dict, f"evaluate the run again: `cifarkit evaluate {run_dir}`") if path.is_file() else {}
    return {k: float(v) for k, v in metrics.items() if k.startswith("test_acc") and isinstance(v, (int, float))}


def _figures(run_dir: Path) -> list[Path]:
    """The run's PNG figures: training curves, then the evaluation's."""
    return sorted(run_dir.glob("*.png")) + sorted((run_dir / "eval").glob("*.png"))


def _flat(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as one level of dotted keys (``model_kwargs.dropout``), as trackers store parameters."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


class TensorBoardTracker(Callback):
    """Per-epoch scalars, then the test accuracies and figures, as event files in ``RUN/tensorboard/``.

    The writer opens at the first epoch, so a run refused before training leaves nothing behind.
    """

    def __init__(self, run_dir: Path, name: str) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise CifarkitError("--track tensorboard needs TensorBoard: pip install 'cifarkit[track]'") from None
        self.run_dir, self.summary_writer = run_dir, SummaryWriter
        self.writer, self.step = None, 0

    def on_epoch_end(self, row: Mapping[str, Any]) -> None:
        self.writer = self.writer or self.summary_writer(str(self.run_dir / "tensorboard"))
        self.step = row["epoch"]
        for key, value in epoch_scalars(row).items():
            self.writer.add_scalar(key, value, self.step)
        self.writer.flush()

    def close(self, finished: bool) -> None:
        if self.writer is None:
            return
        import numpy as np
        from PIL import Image

        for key, value in _final_scalars(self.run_dir).items():
            self.writer.add_scalar(key, value, self.step)
        for path in _figures(self.run_dir):
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"))
            self.writer.add_image(
                path.relative_to(self.run_dir).with_suffix("").as_posix(), pixels, self.step, dataformats="HWC"
            )
        self.writer.close()


class MLflowTracker(Callback):
    """A run in the MLflow tracking store named by ``MLFLOW_TRACKING_URI`` (MLflow's default: ./mlflow.db).

    Started at the first epoch with the recipe as parameters; then the metrics, and the run directory as artifacts.
    """

    def __init__(self, run_dir: Path, name: str) -> None:
        try:
            import mlflow
        except ImportError:
            raise CifarkitError("--track mlflow needs MLflow: pip install 'cifarkit[track]'") from None
        self.mlflow, self.run_dir, self.name = mlflow, run_dir, name
        self.run_id: str | None = None
        self.step = 0

    def on_epoch_end(self, row: Mapping[str, Any]) -> None:
        if self.run_id is None:
            self.run_id = self.mlflow.start_run(run_name=self.name).info.run_id
            self.mlflow.log_params(_flat(read_json(self.run_dir / "config.json", dict)))
        self.step = row["epoch"]
        self.mlflow.log_metrics(epoch_scalars(row), step=self.step)

    def on_train_end(self, metrics: Mapping[str, Any]) -> None:
        if self.run_id is None:
            return
        self.mlflow.log_metrics(
            {k: float(metrics[k]) for k in ("best_val_acc", "train_seconds") if metrics.get(k) is not None},
            step=self.step,
        )

    def close(self, finished: bool) -> None:
        if self.run_id is None:
            return
        self.mlflow.log_metrics(_final_scalars(self.run_dir), step=self.step)
        self.mlflow.log_artifacts(str(self.run_dir))
        self.mlflow.end_run("FINISHED" if finished else "KILLED")


TRACKERS = {"tensorboard": TensorBoardTracker, "mlflow": MLflowTracker}


@contextmanager
def track(kind: str | None, run_dir: str | Path, name: str) -> Iterator[list[Callback]]:
    """The callbacks that mirror the run in ``run_dir`` to tracker ``kind`` (none for ``None``) as run ``name``.

    Wrap training and evaluation in it: on leaving, the tracker logs what the run wrote and closes, marking the
    run killed if an exception (or Ctrl-C) ended it.
    """
    if kind is None:
        yield []
        return
    if kind not in TRACKERS:
        raise CifarkitError(f"unknown tracker {kind!r}; choose one of {', '.join(TRACKERS)}")
    tracker = TRACKERS[kind](Path(run_dir), name)
    try:
        yield [tracker]
    except BaseException:
        tracker.close(finished=False)
        raise
    tracker.close(finished=True)
