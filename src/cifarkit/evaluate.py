"""Test-set evaluation of a run, done once: predictions, metrics and figures in RUN/eval/.

The test set is predicted with the run's best weights (in its precision where native here), without and with
test-time augmentation; the predictions, metrics and figures are written (layout in :mod:`cifarkit.runs`) for
the report to render instead of computing its own.
"""

from __future__ import annotations

import math
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cifarkit import distributed
from cifarkit.analysis import (
    accuracy,
    classification_report,
    classification_report_text,
    confused_pairs,
    confusion_matrix,
    normalize_rows,
    predicted_classes,
    prediction_rows,
    random_predictions,
)
from cifarkit.data.dataset import CIFAR10
from cifarkit.errors import CifarkitError
from cifarkit.features import cached_features
from cifarkit.files import write_csv, write_json, write_text
from cifarkit.inference import check_model, check_tta, predict_proba
from cifarkit.plots import confusion_matrices, prediction_grid, save_png
from cifarkit.runs import eval_dir, load_model, locked, native_run_bf16, read_config, save_predictions
from cifarkit.runtime import autocast, pick_device


@torch.no_grad()
def _plain_probs(model: nn.Module, config: dict[str, Any], data: CIFAR10, device: str, bf16: bool) -> np.ndarray:
    """Test-set probabilities without TTA; frozen-feature runs read the backbone's features (in ``bf16``) cached."""
    if not config.get("frozen_features"):
        return _shared_probs(model, data.x_test, device=device, bf16=bf16)
    dev = pick_device(device)
    model = model.to(dev)
    features = cached_features(model.backbone, data.x_test, f"{Path(data.source).name}-test", bf16=bf16)
    with autocast(dev, bf16):
        logits = model.head(torch.from_numpy(features).to(dev).float()).float()
    return torch.softmax(logits, dim=1).cpu().numpy()


def _shared_probs(model: nn.Module, images: np.ndarray, **kwargs) -> np.ndarray:
    """:func:`predict_proba`, each process of a distributed launch predicting its share, gathered on all of them."""
    return distributed.gather_rows(predict_proba(model, images[distributed.shard(len(images))], **kwargs), len(images))


def _finite(value: Any) -> Any:
    """``value`` with every NaN or infinity (nested in dicts and lists too) replaced by None: JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _write_figures_and_tables(
    out: Path, data: CIFAR10, analysed: np.ndarray, cm: np.ndarray, report: str, gallery_size: int, seed: int
) -> None:
    """The people-readable files of RUN/eval/: report text, confusion matrices, a gallery of predictions."""
    classes = list(data.classes)
    write_text(out / "classification_report.txt", report)
    for name, values in (("confusion_matrix", cm), ("confusion_matrix_normalized", normalize_rows(cm))):
        write_csv(
            out / f"{name}.csv", [{"actual": c, **dict(zip(classes, row.tolist()))} for c, row in zip(classes, values)]
        )
    save_png(confusion_matrices(cm, classes), out / "confusion_matrix.png")
    gallery = random_predictions(analysed, data.y_test, gallery_size, seed, classes)
    write_csv(out / "gallery.csv", prediction_rows(gallery))
    save_png(prediction_grid(data.x_test, gallery), out / "gallery.png")


def evaluate(
    run_dir: str | Path,
    data: CIFAR10,
    *,
    tta: str | None = None,
    device: str = "auto",
    gallery_size: int = 24,
    seed: int = 0,
) -> dict[str, Any]:
    """Evaluate a run's best weights on ``data``'s test set, into RUN/eval/ or, on other data, RUN/eval-NAME/.

    ``tta`` defaults to the recipe's (accuracy without it is measured too); the report, confusion matrix and gallery
    describe the TTA predictions, the model as best used. Returns the metrics.json record with the report's text
    (``report``) and the folder (``eval_dir``). Under torchrun each process predicts its share; rank 0 writes.
    """
    run_dir = Path(run_dir)
    device = str(distributed.setup(device))  # several processes (torchrun) share the work; rank 0 writes
    config = distributed.on_main(lambda: read_config(run_dir))
    classes = list(data.classes)
    if classes != config["classes"]:
        raise CifarkitError(
            f"the data's classes {classes} differ from the run's {config['classes']}; "
            "evaluate on the data set the run was trained for"
        )
    if len(data.y_test) == 0:
        raise CifarkitError(f"{data.source} has no test images; pass a data set with a test split")
    tta = tta or config.get("tta", "none")
    check_tta(tta)
    with ExitStack() as stack:
        distributed.on_main(lambda: stack.enter_context(locked(run_dir)))  # before the work: one writer at a time
        model = check_model(distributed.on_main(lambda: load_model(run_dir)), run_dir, classes)
        bf16 = native_run_bf16(config, device)
        probs = _plain_probs(model, config, data, device, bf16)
        probs_tta = _shared_probs(model, data.x_test, tta=tta, device=device, bf16=bf16) if tta != "none" else None
        record, analysed, cm = _record(data, probs, probs_tta, tta)
        report = classification_report_text(data.y_test, predicted_classes(analysed), classes)
        out = eval_dir(run_dir, config, data)
        if distributed.is_main():
            (out / "metrics.json").unlink(missing_ok=True)  # written last: the evaluation is complete once it exists
            save_predictions(out, data.y_test, probs, probs_tta, tta)
            write_json(out / "classification_report.json", record["classification_report"])
            _write_figures_and_tables(out, data, analysed, cm, report, gallery_size, seed)
            write_json(out / "metrics.json", _finite(record))
    return {**record, "report": report, "eval_dir": out}


def _record(
    data: CIFAR10, probs: np.ndarray, probs_tta: np.ndarray | None, tta: str
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """The metrics record, the probabilities it analyses (with TTA where there is one) and their confusion matrix."""
    classes = list(data.classes)
    analysed = probs if probs_tta is None else probs_tta
    preds = predicted_classes(analysed)
    cm = confusion_matrix(data.y_test, preds, len(classes))
    record: dict[str, Any] = {
        "test_acc": accuracy(data.y_test, predicted_classes(probs)),
        **({"test_acc_tta": accuracy(data.y_test, preds)} if probs_tta is not None else {}),
        "tta": tta,
        "analysed": "probs" if probs_tta is None else "probs_tta",
        "test_data": {"source": data.source, "images": len(data.y_test), "fingerprint": data.test_fingerprint},
        "confusion_matrix": cm.tolist(),
        "classification_report": classification_report(data.y_test, preds, classes),
    }
    for pair in confused_pairs(cm, 1):
        record["most_confused"] = {
            "actual": classes[pair.actual],
            "predicted": classes[pair.predicted],
            "count": pair.count,
        }
    return record, analysed, cm
