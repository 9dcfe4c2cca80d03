"""The report's sections: each renders one analysis of a run and returns its HTML.

What `cifarkit evaluate` wrote into ``RUN/eval/`` is rendered, never recomputed; further analyses start from the
same predictions and write into ``RUN/insight/``. A section that lacks an input (test images, a model, validation
data) says so in a note instead of failing, so evaluated run directories alone always make a report.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from cifarkit.analysis import (
    ReliabilityBins,
    confused_pairs,
    describe,
    prediction_rows,
    reliability_bins,
    sample_by_correctness,
    top_losses,
)
from cifarkit.data.batches import to_tensor
from cifarkit.files import write_csv, write_json
from cifarkit.inference import predict_logits
from cifarkit.plots import (
    figure_png,
    gradcam_grid,
    prediction_grid,
    reliability_diagrams,
    robustness_curves,
    save_png,
    training_curves,
)
from cifarkit.runs import Run, native_run_bf16

from . import markup
from .calibration import fit_temperature, logits_from_probs, negative_log_likelihood, softmax
from .corruptions import PARAMETERS, SEVERITIES
from .gradcam import find_target_layer, grad_cam
from .options import ReportOptions
from .robustness import accuracy_by_severity, evaluate_corruptions, mean_corruption_accuracy


@dataclass(frozen=True)
class RunContext:
    """Everything a per-run section may use. ``images`` are the test images in the order of the run's labels."""

    run: Run
    prefix: str
    images: np.ndarray | None
    model: nn.Module | None
    validation: tuple[np.ndarray, np.ndarray] | None
    options: ReportOptions
    device: str = "auto"

    @property
    def classes(self) -> list[str]:
        return self.run.config["classes"]

    @property
    def probs(self) -> np.ndarray:
        """The test probabilities every section describes: those evaluate analysed (with the run's TTA)."""
        return self.run.evaluation.analysed

    @property
    def labels(self) -> np.ndarray:
        return self.run.evaluation.labels

    def id(self, name: str) -> str:
        """A page-unique HTML id for this run's section ``name``."""
        return f"{self.prefix}-{name}"


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f} %"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


def describe_predictions(run: Run) -> str:
    """Which predictions the run's sections show: with or without TTA, how many test images, from where."""
    evaluation, data = run.evaluation, run.evaluation.metrics["test_data"]
    how = "without test-time augmentation" if evaluation.tta == "none" else f"with TTA ({evaluation.tta})"
    return f"Test predictions {how} of {data['images']} images from {data['source']}, evaluated in {evaluation.path}."


# --- comparison of all runs -------------------------------------------------------------------------------------


def comparison_section(runs: Sequence[Run]) -> str:
    """The table of model, size, training time and accuracies, one row per run, with the test data they came from."""
    header = (
        "run",
        "model",
        "parameters",
        "epochs",
        "training time",
        "best val acc",
        "test acc",
        "test acc (TTA)",
        "test images",
        "test data",
    )
    rows = [
        (
            run.name,
            run.config.get("model", "?"),
            f"{run.metrics['params']:,}" if "params" in run.metrics else "—",
            run.metrics.get("epochs_run", run.config.get("epochs", "—")),
            _duration(run.metrics.get("train_seconds")),
            _percent(run.metrics.get("best_val_acc")),
            _percent(run.evaluation.metrics["test_acc"]),
            _percent(run.evaluation.metrics.get("test_acc_tta")),
            f"{run.evaluation.metrics['test_data']['images']:,}",
            run.evaluation.metrics["test_data"]["source"],
        )
        for run in runs
    ]
    return markup.section("comparison", "Comparison", markup.table(header, rows))


def curves_section(runs: Sequence[Run]) -> str:
    """Training and validation curves of all runs overlaid; each run also gets its own ``insight/curves.png``."""
    for run in runs:
        save_png(training_curves({run.name: run.history}), run.insight_dir / "curves.png")
    png = figure_png(training_curves({run.name: run.history for run in runs}))
    return markup.section("curves", "Training curves", markup.image(png, "training and validation curves"))


# --- per run: what evaluate computed -------------------------------------------------------------------------------


def classification_table(report: dict[str, Any], classes: Sequence[str]) -> str:
    """sklearn's classification report (a dict, as evaluate wrote it) as a table: a row per class, then averages."""
    rows = [
        (key, *(f"{report[key][s]:.4f}" for s in ("precision", "recall", "f1-score")), int(report[key]["support"]))
        for key in (*classes, "macro avg", "weighted avg")
    ]
    return markup.table(("class", "precision", "recall", "F1", "support"), rows)


def classification_section(ctx: RunContext) -> str:
    """sklearn's classification report (precision, recall, F1, support per class), as evaluate wrote it."""
    report = ctx.run.evaluation.metrics["classification_report"]
    body = markup.paragraph(f"Test accuracy: {_percent(report['accuracy'])} on {len(ctx.labels)} images.")
    body += classification_table(report, ctx.classes)
    return markup.section(ctx.id("classification"), "Classification report", body, level=3)


def confusion_section(ctx: RunContext) -> str:
    """Confusion matrix as counts and row-normalised, as evaluate drew it (its CSV files are beside it)."""
    png = (ctx.run.evaluation.path / "confusion_matrix.png").read_bytes()
    body = markup.image(png, "confusion matrix: counts and row-normalised")
    return markup.section(ctx.id("confusion"), "Confusion matrix", body, level=3)


def confused_pairs_section(ctx: RunContext) -> str:
    """The most frequent (actual -> predicted) mistakes of evaluate's confusion matrix, with their share."""
    names = ctx.classes
    cm = ctx.run.evaluation.confusion_matrix
    totals = cm.sum(axis=1)
    rows = [
        {
            "actual": names[p.actual],
            "predicted": names[p.predicted],
            "count": p.count,
            "fraction_of_actual": round(p.count / totals[p.actual], 4),
        }
        for p in confused_pairs(cm, ctx.options.confused_pairs)
    ]
    write_csv(ctx.run.insight_dir / "confused_pairs.csv", rows)
    body = (
        markup.table(
            ("actual", "predicted as", "count", "share of actual class"),
            [(r["actual"], r["predicted"], r["count"], _percent(r["fraction_of_actual"])) for r in rows],
        )
        if rows
        else markup.note("No mistakes: every test image is classified correctly.")
    )
    return markup.section(ctx.id("confused-pairs"), "Most confused classes", body, level=3)


def gallery_section(ctx: RunContext) -> str:
    """Random test predictions, as evaluate drew them: image, actual class, predicted class and its probability."""
    body = markup.paragraph("Title: actual class, then predicted class and its probability (green right, red wrong).")
    body += markup.image((ctx.run.evaluation.path / "gallery.png").read_bytes(), "gallery")
    return markup.section(ctx.id("gallery"), "Random test predictions", body, level=3)


# --- per run: further analyses -------------------------------------------------------------------------------------


def top_losses_section(ctx: RunContext) -> str:
    """The test images with the highest loss: the most confidently wrong predictions (CSV, and images if given)."""
    predictions = top_losses(ctx.probs, ctx.labels, ctx.options.top_losses, ctx.classes)
    write_csv(ctx.run.insight_dir / "top_losses.csv", prediction_rows(predictions))
    body = markup.paragraph("Highest loss first: actual class, predicted class and its probability, loss.")
    if ctx.images is None:
        body += markup.note("Test images were not given, so only top_losses.csv was written.")
    else:
        png = save_png(prediction_grid(ctx.images, predictions, show_loss=True), ctx.run.insight_dir / "top_losses.png")
        body += markup.image(png, "top losses")
    return markup.section(ctx.id("top-losses"), "Top losses", body, level=3)


def gradcam_section(ctx: RunContext) -> str:
    """Grad-CAM maps of the predicted class over random correctly and wrongly classified test images."""
    title = "Grad-CAM explanations"
    if ctx.model is None or ctx.images is None:
        return markup.section(ctx.id("gradcam"), title, markup.note("Needs the model and the test images."), level=3)
    layer = find_target_layer(ctx.model, to_tensor(ctx.images[:1]))
    if layer is None:
        body = markup.note("The model has no convolution with a spatial output, so Grad-CAM does not apply.")
        return markup.section(ctx.id("gradcam"), title, body, level=3)
    opts = ctx.options
    samples = sample_by_correctness(ctx.probs, ctx.labels, opts.gradcam_images, opts.seed)
    groups = dict(zip(("correct", "wrong"), samples))
    write_json(ctx.run.insight_dir / "gradcam.json", {"layer": layer, **{k: v.tolist() for k, v in groups.items()}})
    body = markup.paragraph(f"Layer {layer}; heat maps explain the predicted class.")
    for group, indices in groups.items():
        body += markup.paragraph(f"{group.capitalize()} predictions")
        if len(indices) == 0:
            body += markup.note(f"No {group} predictions in the test set.")
            continue
        predictions = describe(ctx.probs, ctx.labels, indices, ctx.classes)
        maps = grad_cam(
            ctx.model,
            to_tensor(ctx.images[indices]),
            target_layer=layer,
            class_idx=torch.as_tensor(ctx.probs[indices].argmax(axis=1)),
        )
        png = save_png(
            gradcam_grid(ctx.images[indices], maps, predictions), ctx.run.insight_dir / f"gradcam_{group}.png"
        )
        body += markup.image(png, f"Grad-CAM on {group} predictions")
    return markup.section(ctx.id("gradcam"), title, body, level=3)


def _bins_record(bins: ReliabilityBins) -> list[dict[str, Any]]:
    """Reliability bins as JSON-ready rows (empty bins get null means)."""
    return [
        {
            "lower": float(lo),
            "upper": float(hi),
            "count": int(n),
            "accuracy": None if n == 0 else float(acc),
            "confidence": None if n == 0 else float(conf),
        }
        for lo, hi, n, acc, conf in zip(bins.edges[:-1], bins.edges[1:], bins.counts, bins.accuracy, bins.confidence)
    ]


def _temperature_record(ctx: RunContext, test_logits: np.ndarray) -> dict[str, float]:
    """Fit T on the model's validation logits (same TTA and precision as the test predictions); NLL before and after."""
    val_x, val_y = ctx.validation
    val_logits = predict_logits(
        ctx.model,
        val_x,
        tta=ctx.run.evaluation.tta,
        batch_size=ctx.options.batch_size,
        device=ctx.device,
        bf16=native_run_bf16(ctx.run.config, ctx.device),
    )
    temperature = fit_temperature(val_logits, val_y)
    return {
        "temperature": temperature,
        "val_nll_before": negative_log_likelihood(val_logits, val_y),
        "val_nll_after": negative_log_likelihood(val_logits, val_y, temperature),
        "test_nll_after": negative_log_likelihood(test_logits, ctx.labels, temperature),
    }


def calibration_section(ctx: RunContext) -> str:
    """Test-set ECE and reliability diagram; given the model and validation data, also after temperature scaling."""
    n_bins = ctx.options.calibration_bins
    test_logits = logits_from_probs(ctx.probs)
    before = reliability_bins(ctx.probs, ctx.labels, n_bins)
    record: dict[str, Any] = {
        "n_bins": n_bins,
        "ece": before.ece,
        "test_nll": negative_log_likelihood(test_logits, ctx.labels),
        "bins": _bins_record(before),
    }
    panels = {"test, as trained": before}
    rows = [("ECE", _percent(before.ece)), ("test NLL", f"{record['test_nll']:.4f}")]
    if ctx.model is not None and ctx.validation is not None:
        scaled = _temperature_record(ctx, test_logits)
        temperature = scaled["temperature"]
        after = reliability_bins(softmax(test_logits, temperature), ctx.labels, n_bins)
        record["temperature_scaling"] = {**scaled, "ece_after": after.ece, "bins_after": _bins_record(after)}
        panels[f"test, temperature T = {temperature:.3f}"] = after
        rows += [
            ("temperature T (fitted on validation)", f"{temperature:.4f}"),
            ("ECE after scaling", _percent(after.ece)),
            ("test NLL after scaling", f"{scaled['test_nll_after']:.4f}"),
            ("validation NLL before / after", f"{scaled['val_nll_before']:.4f} / {scaled['val_nll_after']:.4f}"),
        ]
    write_json(ctx.run.insight_dir / "calibration.json", record)
    png = save_png(reliability_diagrams(panels), ctx.run.insight_dir / "reliability.png")
    body = markup.table(("metric", "value"), rows) + markup.image(png, "reliability diagram")
    if "temperature_scaling" not in record:
        body += markup.note("Temperature scaling needs the model and validation images.")
    return markup.section(ctx.id("calibration"), f"Calibration ({n_bins} bins)", body, level=3)


def robustness_section(ctx: RunContext) -> str:
    """Accuracy on a random test subset under each corruption and severity: CSV, JSON, table and plot."""
    title = "Robustness to common corruptions"
    if ctx.model is None or ctx.images is None:
        return markup.section(ctx.id("robustness"), title, markup.note("Needs the model and the test images."), level=3)
    opts = ctx.options
    rng = np.random.default_rng(opts.seed)
    subset = np.sort(rng.choice(len(ctx.images), size=min(opts.robustness_images, len(ctx.images)), replace=False))
    rows = evaluate_corruptions(
        ctx.model,
        ctx.images[subset],
        ctx.labels[subset],
        corruptions=opts.corruptions,
        severities=opts.severities,
        seed=opts.seed,
        batch_size=opts.batch_size,
        device=ctx.device,
        bf16=native_run_bf16(ctx.run.config, ctx.device),
    )
    means = mean_corruption_accuracy(rows)
    clean = next(r.accuracy for r in rows if r.severity == 0)
    out = ctx.run.insight_dir
    write_csv(out / "robustness.csv", [asdict(r) for r in rows])
    write_json(
        out / "robustness.json",
        {
            "images": len(subset),
            "seed": opts.seed,
            "rows": [asdict(r) for r in rows],
            "mean_accuracy": means,
            "parameters": {name: dict(zip(map(str, SEVERITIES), PARAMETERS[name])) for name in opts.corruptions},
        },
    )
    by_severity = accuracy_by_severity(rows)
    png = save_png(robustness_curves(by_severity, clean), out / "robustness.png")
    table = markup.table(
        ("corruption", *(f"severity {s}" for s in opts.severities), "mean"),
        [(name, *(_percent(by_severity[name][s]) for s in opts.severities), _percent(means[name])) for name in means],
    )
    body = markup.paragraph(
        f"{len(subset)} random test images, plain forward passes (no TTA); clean accuracy {_percent(clean)}."
    )
    return markup.section(
        ctx.id("robustness"), title, body + table + markup.image(png, "accuracy under corruption"), level=3
    )


RUN_SECTIONS = (
    classification_section,
    confusion_section,
    confused_pairs_section,
    gallery_section,
    top_losses_section,
    gradcam_section,
    calibration_section,
    robustness_section,
)
