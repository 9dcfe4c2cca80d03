"""Test-set evaluation of a run: accuracy (plain and with test-time augmentation),
classification report, confusion matrix and prediction gallery, saved in RUN/eval/."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cifarkit.data.dataset import CIFAR10
from cifarkit.data.batches import to_tensor
from cifarkit.errors import CifarkitError
from cifarkit.features import cached_features
from cifarkit.plots import plot_confusion, plot_gallery
from cifarkit.report.analysis import confused_pairs
from cifarkit.report.metrics import classification_report, classification_report_text, confusion_matrix
from cifarkit.files import atomic_write_bytes, read_json, write_csv, write_json, write_text
from cifarkit.runs import load_model, read_config
from cifarkit.train import pick_device

TTA_MODES = ("none", "flip", "flip_translate")


def _shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Translate by (dy, dx) pixels, filling with the reflected border."""
    p = max(abs(dy), abs(dx))
    padded = nn.functional.pad(x, (p, p, p, p), mode="reflect")
    h, w = x.shape[-2:]
    return padded[..., p - dy:p - dy + h, p - dx:p - dx + w]


def tta_logits(model: nn.Module, x: torch.Tensor, mode: str = "none") -> torch.Tensor:
    """Logits averaged over augmented views of ``x``.

    - none: the plain forward pass.
    - flip: mean of the image and its mirror.
    - flip_translate: half the flip average, plus half the flip average of the
      image shifted one pixel up-left and one pixel down-right (airbench's
      strongest TTA), 6 forward passes.
    """
    if mode not in TTA_MODES:
        raise CifarkitError(f"unknown TTA mode {mode!r}; choose one of {', '.join(TTA_MODES)}")
    if mode == "none":
        return model(x)
    flip_avg = lambda v: 0.5 * (model(v) + model(v.flip(-1)))  # noqa: E731
    if mode == "flip":
        return flip_avg(x)
    shifted = 0.5 * (flip_avg(_shift(x, -1, -1)) + flip_avg(_shift(x, 1, 1)))
    return 0.5 * flip_avg(x) + 0.5 * shifted


@torch.no_grad()
def predict_logits(model: nn.Module, images: np.ndarray, *, tta: str = "none", batch_size: int = 500,
                   device: str = "auto") -> np.ndarray:
    """Logits (N, C) float32 for uint8 images (N, 32, 32, 3), in eval mode, optionally with TTA."""
    dev = pick_device(device)
    model = model.to(dev, memory_format=torch.channels_last).eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = to_tensor(images[start:start + batch_size]).to(dev).contiguous(memory_format=torch.channels_last)
        out.append(tta_logits(model, x, tta).float().cpu())
    return torch.cat(out).numpy()


def predict_proba(model: nn.Module, images: np.ndarray, **kwargs) -> np.ndarray:
    """Class probabilities (N, C): the softmax of :func:`predict_logits` (same arguments)."""
    return torch.softmax(torch.from_numpy(predict_logits(model, images, **kwargs)), dim=1).numpy()


def _test_probs(model: nn.Module, config: dict[str, Any], data: CIFAR10, device: str) -> np.ndarray:
    """Test-set probabilities without TTA; frozen-feature runs read the backbone's features from the cache."""
    if not config.get("frozen_features"):
        return predict_proba(model, data.x_test, device=device)
    features = cached_features(model.backbone, data.x_test, f"{Path(data.source).name}-test",
                               bf16=config.get("bf16", False))
    with torch.no_grad():
        return torch.softmax(model.head(torch.from_numpy(features).float()), dim=1).numpy()


def evaluate(run_dir: str | Path, data: CIFAR10, *, tta: str | None = None, device: str = "auto",
             gallery_size: int = 24, seed: int = 0) -> dict[str, Any]:
    """Evaluate a run's best weights on the test set; write RUN/eval/ and update RUN/metrics.json.

    ``tta`` defaults to the recipe's TTA mode; accuracy without TTA is always reported too.
    """
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    if list(data.classes) != config["classes"]:
        raise CifarkitError(f"the data's classes {list(data.classes)} differ from the run's {config['classes']}")
    tta = tta or config.get("tta", "none")
    model = load_model(run_dir)
    probs = _test_probs(model, config, data, device)
    arrays = {"probs": probs.astype(np.float32), "labels": data.y_test}
    metrics: dict[str, Any] = {"test_acc": float((probs.argmax(1) == data.y_test).mean())}
    if tta != "none":
        probs_tta = predict_proba(model, data.x_test, tta=tta, device=device)
        arrays["probs_tta"] = probs_tta.astype(np.float32)
        metrics.update(test_acc_tta=float((probs_tta.argmax(1) == data.y_test).mean()), tta=tta)
        probs = probs_tta  # the report and figures describe the model as it is best used

    out = run_dir / "eval"
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(out / "predictions.npz", buf.getvalue())
    pred = probs.argmax(1)
    report = classification_report_text(data.y_test, pred, data.classes)
    write_text(out / "classification_report.txt", report)
    write_json(out / "classification_report.json", classification_report(data.y_test, pred, data.classes))
    cm = confusion_matrix(data.y_test, pred, len(data.classes))
    write_csv(out / "confusion_matrix.csv",
              [{"actual": c, **{p: int(v) for p, v in zip(data.classes, row)}} for c, row in zip(data.classes, cm)])
    plot_confusion(cm, data.classes, out / "confusion_matrix.png")
    plot_confusion(cm, data.classes, out / "confusion_matrix_normalized.png", normalize=True)
    pick = np.random.default_rng(seed).choice(len(pred), size=min(gallery_size, len(pred)), replace=False)
    plot_gallery(data.x_test[pick], [data.classes[i] for i in data.y_test[pick]],
                 [data.classes[i] for i in pred[pick]], probs[pick, pred[pick]], out / "gallery.png")

    for pair in confused_pairs(cm, 1):
        metrics["most_confused"] = {"actual": data.classes[pair.actual], "predicted": data.classes[pair.predicted],
                                    "count": pair.count}
    metrics["report"] = report
    summary_path = run_dir / "metrics.json"
    summary = read_json(summary_path) if summary_path.is_file() else {}
    write_json(summary_path, {**summary, **{k: v for k, v in metrics.items() if k != "report"}})
    return metrics
