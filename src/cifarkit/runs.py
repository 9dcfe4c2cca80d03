"""The run directory: what training and evaluation leave behind, written atomically, read back with clear errors.

    RUN/config.json            resolved recipe + data provenance: source and fingerprints (repeat the run from it)
    RUN/history.json|.csv, metrics.json, curves.png    per-epoch figures, the training summary and its curves
    RUN/best.safetensors       weights of the epoch with the best validation accuracy (last.safetensors: the last)
    RUN/resume.pt              everything needed to continue (weights, optimiser, history)
    RUN/.cifarkit.lock         locked (flock) by the command writing the run; empty
    RUN/eval/                  `cifarkit evaluate` on the run's own test set (eval-NAME-HASH/ on others):
                               predictions.npz, metrics.json, and the same for people (*.txt, *.csv, *.png)
    RUN/insight/, model.onnx   written by `cifarkit report`, `cifarkit export`

Only these commands write into a run, each only its own files; every reader here raises a one-line
:class:`CifarkitError` naming the file and a fix.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import re
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from cifarkit.data.batches import balanced_subset, stratified_split
from cifarkit.data.dataset import CIFAR10
from cifarkit.errors import CifarkitError
from cifarkit.files import atomic_write_bytes, check_writable, exclusive, read_json
from cifarkit.models import create_model, get_model_info
from cifarkit.runtime import native_bf16, pick_device

RETRAIN = "train the run again into a new --out"


# --- weights and training state --------------------------------------------------------------------------------------


def save_weights(state: dict[str, torch.Tensor], path: Path) -> None:
    """A state dict as safetensors (contiguous copies: safetensors stores plain row-major tensors)."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    atomic_write_bytes(path, save(tensors))


def save_torch(obj: Any, path: Path) -> None:
    """Training state (optimiser etc.) with torch.save, atomically; read back with :func:`load_torch`."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_torch(path: Path) -> Any:
    """Training state saved by :func:`save_torch`, loaded with ``weights_only=True``: no code in it ever runs."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        reason = "it holds objects other than tensors and plain data, which are refused as unsafe"
    except (RuntimeError, EOFError, ValueError):
        reason = "it is truncated or not a PyTorch checkpoint"
    raise CifarkitError(f"{path} cannot be resumed: {reason}; {RETRAIN} (its weights files are not affected)")


# --- what belongs to a run ------------------------------------------------------------------------------------------

CHECKPOINT_FILES = ("resume.pt", "best.safetensors", "last.safetensors")


def is_run_directory(folder: Path) -> bool:
    """Whether ``folder`` holds a cifarkit run: a checkpoint or weights file, or a config.json `train` wrote."""
    if any((folder / name).is_file() for name in CHECKPOINT_FILES):
        return True
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "model" in config and "classes" in config


def run_directory_of(path: str | Path) -> Path | None:
    """The run directory that ``path`` is or lies in, if any (the nearest one above it)."""
    path = Path(path).resolve()  # `RUN/eval/..` and links to a run are the run
    return next((folder for folder in (path, *path.parents) if is_run_directory(folder)), None)


def check_output_file(path: str | Path, flag: str, *, run: str | Path | None = None, own: tuple[str, ...] = ()) -> Path:
    """An output file a command may write, refused before any work when it would damage a run or cannot be written.

    An output in a run directory is refused, except directly in ``run`` with a name ending in one of ``own`` (the
    exporter's suffixes).
    """
    path = Path(path)
    if path.is_dir():
        raise CifarkitError(f"{flag} {path} is a directory; name the file to write, e.g. {path / 'out'}")
    holder = run_directory_of(path.resolve().parent)
    if holder is not None:
        allowed = (
            run is not None
            and holder == Path(run).resolve()
            and path.resolve().parent == holder
            and path.name.endswith(own)
            and path.name not in CHECKPOINT_FILES
        )
        if not allowed:
            raise CifarkitError(
                f"{flag} {path} lies in the run directory {holder}, whose files belong to the run; "
                f"write it outside, e.g. {flag} {path.name}"
            )
    return check_writable(path, flag)


def locked(run_dir: str | Path) -> AbstractContextManager[Path]:
    """Hold the run directory's lock while writing into it: a second command writing the same run is refused."""
    busy = f"{run_dir} is being written by another cifarkit command; wait for it to finish, or choose another run"
    return exclusive(run_dir, busy)


# --- configuration and model -----------------------------------------------------------------------------------------


def read_config(run_dir: str | Path) -> dict[str, Any]:
    """The resolved configuration of a run; a clear error when ``run_dir`` is not a run or its config is damaged."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise CifarkitError(
            f"{run_dir} is not a cifarkit run directory (no config.json); pass the --out of `cifarkit train`"
        )
    fix = f"restore it from a copy, or {RETRAIN}"
    config = read_json(path, dict, fix)
    missing = [key for key in ("model", "classes") if key not in config]
    if missing:
        raise CifarkitError(f"{path} lacks {', '.join(missing)}, so it was not written by `cifarkit train`; {fix}")
    classes = config["classes"]
    if not (
        isinstance(classes, list)
        and len(classes) >= 2
        and all(isinstance(c, str) and c for c in classes)
        and len(set(classes)) == len(classes)
    ):
        raise CifarkitError(f"{path}: classes must be a list of two or more distinct names, got {classes!r}; {fix}")
    if not isinstance(config["model"], str):
        raise CifarkitError(f"{path}: model must be a model name, got {config['model']!r}; {fix}")
    return config


def native_run_bf16(config: dict[str, Any], device: torch.device | str) -> bool:
    """Whether a trained run's model runs under bfloat16 autocast on ``device`` (evaluated, predicting, served...).

    Only where it trained in bf16 and bf16 is native on ``device``: emulated bfloat16 is far slower and no more
    accurate, so a run trained on one machine is used at full speed on another.
    """
    return bool(config.get("bf16", False)) and native_bf16(pick_device(str(device)))


def build_model(config: dict[str, Any], *, pretrained: bool = True) -> nn.Module:
    """The untrained model a run's configuration describes (``pretrained=False``: no ImageNet weights package)."""
    return create_model(config["model"], pretrained=pretrained, **config.get("model_kwargs", {}))


def _missing_weights(run_dir: Path, weights: Path) -> str:
    """What to do about a missing weights file: without a checkpoint no epoch finished, and ``--resume`` starts
    afresh; with one the file was removed, and resuming would not rewrite it."""
    if (run_dir / "resume.pt").is_file():
        return f"{weights} is missing although the run has a checkpoint; restore the file from a copy, or {RETRAIN}"
    return (
        f"{weights} is missing: the run never finished an epoch, so there are no weights to load; train it "
        f"again: `cifarkit train --resume --out {run_dir}` starts it afresh with its recorded recipe and data"
    )


def load_model(run_dir: str | Path, which: str = "best") -> nn.Module:
    """The trained model of a run (``best`` or ``last`` weights), in eval mode on the CPU, no weights package needed."""
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    config_path, name = run_dir / "config.json", config["model"]
    try:
        get_model_info(name)
    except CifarkitError:
        raise CifarkitError(
            f"{config_path} names model {name!r}, which this cifarkit does not have (see `cifarkit "
            "models`); load the run with the cifarkit version that trained it"
        ) from None
    weights = run_dir / f"{which}.safetensors"
    if not weights.is_file():
        raise CifarkitError(_missing_weights(run_dir, weights))
    try:
        model = build_model(config, pretrained=False)
    except (TypeError, ValueError, CifarkitError) as exc:
        raise CifarkitError(
            f"{config_path}: model {name} cannot be built with model_kwargs "
            f"{config.get('model_kwargs', {})} ({exc}); correct them there, or {RETRAIN}"
        ) from None
    try:
        state = load_file(weights)
    except (SafetensorError, OSError) as exc:
        raise CifarkitError(f"{weights} is damaged ({exc}); restore it from a copy, or {RETRAIN}") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1].strip()
        raise CifarkitError(
            f"{weights} does not fit the {name} model of {config_path} ({reason}); "
            f"put the run's own weights back, or {RETRAIN}"
        ) from None
    return model.eval()


def weights_digest(run_dir: str | Path) -> str:
    """SHA-256 of the run's best weights file: whether an export or a teacher's cache still matches the run."""
    path = Path(run_dir) / "best.safetensors"
    if not path.is_file():
        raise CifarkitError(f"{path} is missing: the run has not finished an epoch yet; train (or --resume) it first")
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- the data a run trained and validated on -------------------------------------------------------------------------


def split_indices(
    labels: np.ndarray, val_fraction: float, seed: int, subset: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Indices into the training images of a run's (train, validation) split."""
    pool = balanced_subset(labels, subset, seed) if subset is not None else np.arange(len(labels))
    keep, held = stratified_split(labels[pool], val_fraction, seed)
    return pool[keep], pool[held]


def validation_set(data: CIFAR10, config: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The uint8 images and labels a run held out for validation (model selection, calibration)."""
    _, val_idx = split_indices(data.y_train, config["val_fraction"], config["seed"], config.get("subset"))
    return data.x_train[val_idx], data.y_train[val_idx]


# --- evaluation ------------------------------------------------------------------------------------------------------

EVAL_FILES = ("predictions.npz", "metrics.json", "confusion_matrix.png", "gallery.png")
EVAL_METRICS_KEYS = ("test_acc", "tta", "test_data", "confusion_matrix", "classification_report")


@dataclass(frozen=True)
class Evaluation:
    """What `cifarkit evaluate` wrote into ``RUN/eval/``: test-set predictions and the metrics computed from them.

    ``probs`` from the plain forward pass, ``probs_tta`` with TTA (or None); the metrics describe :attr:`analysed`.
    """

    path: Path
    labels: np.ndarray
    probs: np.ndarray
    probs_tta: np.ndarray | None
    metrics: dict[str, Any]

    @property
    def tta(self) -> str:
        return self.metrics["tta"]

    @property
    def analysed(self) -> np.ndarray:
        return self.probs if self.probs_tta is None else self.probs_tta

    @property
    def confusion_matrix(self) -> np.ndarray:
        return np.asarray(self.metrics["confusion_matrix"], dtype=np.int64)


def save_predictions(
    eval_dir: Path, labels: np.ndarray, probs: np.ndarray, probs_tta: np.ndarray | None, tta: str
) -> None:
    """Write ``predictions.npz``: labels, plain probabilities, and with TTA its probabilities and mode."""
    arrays = {"labels": labels.astype(np.int64), "probs": probs.astype(np.float32), "tta": np.array(tta)}
    if probs_tta is not None:
        arrays["probs_tta"] = probs_tta.astype(np.float32)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(eval_dir / "predictions.npz", buf.getvalue())


def eval_dir(run_dir: str | Path, config: dict[str, Any], data: CIFAR10) -> Path:
    """Where `cifarkit evaluate` writes an evaluation of the run on ``data``'s test set.

    RUN/eval/ for the run's own test set (the fingerprint its config.json records); any other gets its own
    RUN/eval-NAME-HASH/, so it never replaces the run's results.
    """
    recorded = config.get("data_fingerprints", {}).get("test")
    if recorded is not None:
        own = recorded == data.test_fingerprint
    else:  # older runs recorded the source alone; one without any provenance has nothing to tell them apart
        own = config.get("data_source", data.source) == data.source
    if own:
        return Path(run_dir) / "eval"
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(data.source).name or "data").strip("._") or "data"
    return Path(run_dir) / f"eval-{name[:40]}-{data.test_fingerprint[:8]}"


def has_evaluation(run_dir: str | Path) -> bool:
    """Whether `cifarkit evaluate` has written everything the report renders into ``RUN/eval/``."""
    return all((Path(run_dir) / "eval" / name).is_file() for name in EVAL_FILES)


def load_evaluation(run_dir: str | Path) -> Evaluation:
    """Read ``RUN/eval/``, checked for consistent shapes and types; a missing, stale or damaged evaluation is a
    one-line :class:`CifarkitError` saying to run `cifarkit evaluate` (again)."""
    import zipfile

    eval_dir = Path(run_dir) / "eval"
    fix = f"evaluate the run first: `cifarkit evaluate {run_dir}` (or give the report --data)"
    again = f"evaluate the run again: `cifarkit evaluate {run_dir}` rewrites {eval_dir}"
    file, metrics_file = eval_dir / "predictions.npz", eval_dir / "metrics.json"
    if not has_evaluation(run_dir):
        raise CifarkitError(f"{eval_dir} holds no complete evaluation ({', '.join(EVAL_FILES)}); {fix}")
    try:
        with np.load(file, allow_pickle=False) as npz:
            labels, probs = npz["labels"], npz["probs"]
            probs_tta = npz["probs_tta"] if "probs_tta" in npz else None
    except Exception as exc:  # truncated, random or crafted bytes fail in many ways (BadZipFile, zlib.error,
        # ValueError, MemoryError, ...), and every one of them means the same thing: the file is damaged
        if isinstance(exc, zipfile.BadZipFile) or "pickle" in str(exc):  # numpy's pickle hint would mislead
            reason = "it is not a complete NumPy .npz archive"
        elif isinstance(exc, KeyError):
            reason = "it lacks the labels or probs array"
        else:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CifarkitError(f"{file} is damaged ({reason}); {again}") from None

    def real(value: Any, low: float = -np.inf, high: float = np.inf) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool) and low <= value <= high

    problem = None
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        problem = f"labels are {labels.dtype} {labels.shape}, not a row of class numbers"
    elif probs.ndim != 2 or len(probs) != len(labels) or probs.shape[1] < 1:
        problem = f"probs {probs.shape} do not match labels {labels.shape}"
    elif probs_tta is not None and probs_tta.shape != probs.shape:
        problem = f"probs_tta {probs_tta.shape} do not match probs {probs.shape}"
    elif not all(
        np.issubdtype(p.dtype, np.floating) and np.isfinite(p).all() for p in (probs, probs_tta) if p is not None
    ):
        problem = "the probabilities are not all finite numbers"
    elif len(labels) and not 0 <= labels.min() <= labels.max() < probs.shape[1]:
        problem = f"labels run from {labels.min()} to {labels.max()}, outside the {probs.shape[1]} classes"
    if problem:
        raise CifarkitError(f"{file}: {problem}; {again}")
    labels = labels.astype(np.int64)
    metrics = read_json(metrics_file, dict, again)
    missing = [key for key in EVAL_METRICS_KEYS if key not in metrics]
    if missing:
        raise CifarkitError(f"{metrics_file} lacks {', '.join(missing)} (an older cifarkit wrote it); {again}")
    n_classes, data, report = probs.shape[1], metrics["test_data"], metrics["classification_report"]
    try:
        cm = np.asarray(metrics["confusion_matrix"], dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        cm = None
    if not real(metrics["test_acc"], 0, 1) or not real(metrics.get("test_acc_tta", 0), 0, 1):
        problem = "test_acc and test_acc_tta must be numbers from 0 to 1"
    elif not isinstance(metrics["tta"], str):
        problem = f"tta is {metrics['tta']!r}, not the name of a TTA mode"
    elif not (isinstance(data, dict) and isinstance(data.get("source"), str) and data.get("images") == len(labels)):
        problem = f"test_data is {data!r}, not {{source, images: {len(labels)}}} as in {file.name}"
    elif cm is None or cm.shape != (n_classes, n_classes):
        problem = f"confusion_matrix is not a {n_classes}x{n_classes} table of counts"
    elif not (
        isinstance(report, dict)
        and real(report.get("accuracy"), 0, 1)
        and all(
            isinstance(row, dict) and all(real(row.get(k)) for k in ("precision", "recall", "f1-score", "support"))
            for key, row in report.items()
            if key != "accuracy"
        )
    ):
        problem = "classification_report is not a table of precision, recall, f1-score and support per class"
    if problem:
        raise CifarkitError(f"{metrics_file}: {problem}; {again}")
    return Evaluation(eval_dir, labels, probs, probs_tta, metrics)


# --- a whole run -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """A trained and evaluated run: its records and its evaluation."""

    path: Path
    config: dict[str, Any]
    history: list[dict[str, Any]]
    metrics: dict[str, Any]
    evaluation: Evaluation

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def insight_dir(self) -> Path:
        """Where the report writes this run's figures and tables."""
        return self.path / "insight"


def load_run(path: str | Path) -> Run:
    """Read a run directory; a missing or malformed file raises :class:`CifarkitError` saying what to do."""
    path = Path(path)
    if not path.is_dir():
        raise CifarkitError(f"run directory {path} does not exist; pass the directory `cifarkit train` created")
    fix = f"train the run first, or {RETRAIN}"
    return Run(
        path=path,
        config=read_config(path),
        history=read_json(path / "history.json", list, fix),
        metrics=read_json(path / "metrics.json", dict, fix),
        evaluation=load_evaluation(path),
    )
