"""Test-set evaluation of a run, done once: predictions, metrics and figures in RUN/eval/.

:func:`evaluate` predicts the test set with the run's best weights, in the
precision the run was trained in, without and with test-time augmentation,
and writes the predictions (``probs`` and ``probs_tta``, labelled with the TTA
mode), the metrics computed from them and their figures (layout in
:mod:`cifarkit.runs`). The report renders what it wrote instead of computing
its own. :func:`predict_logits` is the one forward pass over uint8 images that
evaluation, prediction and the report share.
"""

from __future__ import annotations

import math
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
from cifarkit.data.batches import to_tensor
from cifarkit.data.dataset import CIFAR10
from cifarkit.errors import CifarkitError
from cifarkit.features import cached_features
from cifarkit.files import read_json, write_csv, write_json, write_text
from cifarkit.plots import confusion_matrices, prediction_grid, save_png
from cifarkit.runs import load_model, read_config, save_predictions
from cifarkit.runtime import autocast, pick_device

TTA_MODES = ("none", "flip", "flip_translate")
# The keys evaluate owns in RUN/metrics.json: replaced together, so no stale one outlives a re-evaluation.
SUMMARY_KEYS = ("test_acc", "test_acc_tta", "tta", "test_data", "most_confused")


def _shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Translate by (dy, dx) pixels, filling with the reflected border."""
    p = max(abs(dy), abs(dx))
    padded = nn.functional.pad(x, (p, p, p, p), mode="reflect")
    h, w = x.shape[-2:]
    return padded[..., p - dy : p - dy + h, p - dx : p - dx + w]


def _check_tta(mode: str) -> None:
    if mode not in TTA_MODES:
        raise CifarkitError(f"unknown TTA mode {mode!r}; choose one of {', '.join(TTA_MODES)}")


def _tta_views(x: torch.Tensor, mode: str) -> tuple[list[torch.Tensor], list[float]]:
    """The augmented views of ``x`` that a TTA mode averages, with their weights (summing to 1)."""
    _check_tta(mode)
    if mode == "none":
        return [x], [1.0]
    if mode == "flip":
        return [x, x.flip(-1)], [0.5, 0.5]
    shifted = [_shift(x, -1, -1), _shift(x, 1, 1)]
    views = [x, x.flip(-1), shifted[0], shifted[0].flip(-1), shifted[1], shifted[1].flip(-1)]
    return views, [0.25, 0.25, 0.125, 0.125, 0.125, 0.125]


TTA_VIEWS = {mode: len(_tta_views(torch.zeros(1, 3, 4, 4), mode)[0]) for mode in TTA_MODES}


def tta_logits(model: nn.Module, x: torch.Tensor, mode: str = "none") -> torch.Tensor:
    """Logits averaged over augmented views of ``x``, all views in one forward pass.

    - none: the plain forward pass.
    - flip: mean of the image and its mirror.
    - flip_translate: half the flip average, plus half the flip average of the
      image shifted one pixel up-left and one pixel down-right (airbench's
      strongest TTA), 6 views.

    Stacking the views into one batch matters for single images (serving):
    one pass of 6 images costs far less than 6 passes of one.
    """
    views, weights = _tta_views(x, mode)
    if len(views) == 1:
        return model(x)
    logits = model(torch.cat(views)).unflatten(0, (len(views), -1))  # -1: the batch stays dynamic in exports
    return torch.einsum("v,vnc->nc", torch.tensor(weights, dtype=logits.dtype, device=logits.device), logits)


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    images: np.ndarray,
    *,
    tta: str = "none",
    batch_size: int = 500,
    device: str = "auto",
    bf16: bool = False,
) -> np.ndarray:
    """Logits (N, C) float32 for uint8 images (N, H, W, 3), in eval mode, optionally with TTA.

    The model is moved to ``device``. ``bf16`` runs the forward passes under
    bfloat16 autocast: pass the run's ``config["bf16"]`` so that a model is
    tested and used in the precision it was trained in.
    """
    _check_tta(tta)
    dev = pick_device(device)
    model = model.to(dev, memory_format=torch.channels_last).eval()
    step = max(1, batch_size // TTA_VIEWS[tta])  # about batch_size images per forward pass, views included
    out = []
    for start in range(0, len(images), step):
        x = to_tensor(images[start : start + step]).to(dev).contiguous(memory_format=torch.channels_last)
        with autocast(dev, bf16):
            out.append(tta_logits(model, x, tta).float().cpu())
    return torch.cat(out).numpy()


def predict_proba(model: nn.Module, images: np.ndarray, **kwargs) -> np.ndarray:
    """Class probabilities (N, C): the softmax of :func:`predict_logits` (same arguments)."""
    return torch.softmax(torch.from_numpy(predict_logits(model, images, **kwargs)), dim=1).numpy()


@torch.no_grad()
def _plain_probs(model: nn.Module, config: dict[str, Any], data: CIFAR10, device: str) -> np.ndarray:
    """Test-set probabilities without TTA; frozen-feature runs read the backbone's features from the cache.

    Both paths run in the run's precision: the cache is keyed by it, so a bf16
    run reads the bf16 features it was trained on.
    """
    bf16 = config.get("bf16", False)
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


def _update_summary(path: Path, record: dict[str, Any]) -> None:
    """Put the test results into RUN/metrics.json, keeping everything else training wrote there."""
    summary = read_json(path) if path.is_file() else {}
    kept = {k: v for k, v in summary.items() if k not in SUMMARY_KEYS}
    write_json(path, _finite({**kept, **{k: record[k] for k in SUMMARY_KEYS if k in record}}))


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
    """Evaluate a run's best weights on ``data``'s test set; write RUN/eval/ and update RUN/metrics.json.

    ``tta`` defaults to the recipe's TTA mode; accuracy without TTA is always
    measured too. The classification report, confusion matrix and gallery
    describe the TTA predictions when there are any (the model as it is best
    used). RUN/metrics.json keeps what training wrote and records which data
    the test accuracy comes from. Returns the record written to
    RUN/eval/metrics.json, plus the classification report as text (``report``).
    Launched on several processes (torchrun), each predicts its share of the
    test set and every one returns the same record; rank 0 writes the files.
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
    _check_tta(tta)
    model = distributed.on_main(lambda: load_model(run_dir))
    probs = _plain_probs(model, config, data, device)
    probs_tta = (
        _shared_probs(model, data.x_test, tta=tta, device=device, bf16=config.get("bf16", False))
        if tta != "none"
        else None
    )
    analysed = probs if probs_tta is None else probs_tta
    preds = predicted_classes(analysed)
    cm = confusion_matrix(data.y_test, preds, len(classes))
    record: dict[str, Any] = {
        "test_acc": accuracy(data.y_test, predicted_classes(probs)),
        **({"test_acc_tta": accuracy(data.y_test, preds)} if probs_tta is not None else {}),
        "tta": tta,
        "analysed": "probs" if probs_tta is None else "probs_tta",
        "test_data": {"source": data.source, "images": len(data.y_test)},
        "confusion_matrix": cm.tolist(),
        "classification_report": classification_report(data.y_test, preds, classes),
    }
    for pair in confused_pairs(cm, 1):
        record["most_confused"] = {
            "actual": classes[pair.actual],
            "predicted": classes[pair.predicted],
            "count": pair.count,
        }
    report = classification_report_text(data.y_test, preds, classes)
    if not distributed.is_main():
        return {**record, "report": report}

    out = run_dir / "eval"
    (out / "metrics.json").unlink(missing_ok=True)  # written last: the evaluation is complete once it exists
    save_predictions(out, data.y_test, probs, probs_tta, tta)
    write_json(out / "classification_report.json", record["classification_report"])
    _write_figures_and_tables(out, data, analysed, cm, report, gallery_size, seed)
    write_json(out / "metrics.json", record)
    _update_summary(run_dir / "metrics.json", record)
    return {**record, "report": report}
