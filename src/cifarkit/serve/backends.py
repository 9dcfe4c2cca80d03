"""What the server runs: a run's model as a function from uint8 images to probabilities, and its identity.

``torch`` serves the run's best weights in its precision where that is native here (float32 otherwise);
``onnx`` its exported ONNX file in onnxruntime, refused when stale. Both apply the recipe's test-time
augmentation, so the served model is the one whose test accuracy the run reports.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cifarkit import __version__
from cifarkit.errors import CifarkitError
from cifarkit.export import DEFAULT_FILES, ProbabilityModel, onnx_metadata, onnx_predictor
from cifarkit.files import read_json
from cifarkit.inference import check_outputs
from cifarkit.runs import load_model, native_run_bf16, read_config, weights_digest
from cifarkit.runtime import autocast, pick_device, precision_name

BACKENDS = ("torch", "onnx")
INPUT_SIZE = 32
PROBE = np.stack([np.zeros((32, 32, 3), np.uint8), np.full((32, 32, 3), 128, np.uint8)])
"""The images every model is tried on when it is loaded: black and grey."""


@dataclass(frozen=True)
class Classifier:
    """A model ready to serve: ``predict`` maps uint8 (N, 32, 32, 3) RGB to float32 probabilities (N, C)."""

    predict: Callable[[np.ndarray], np.ndarray]
    classes: list[str]
    info: dict[str, Any]
    """Run name, recipe, cifarkit version, parameters, test accuracy, TTA, backend, precision, device."""

    @property
    def identity(self) -> dict[str, Any]:
        """What every prediction response names: which model answered."""
        return {key: self.info[key] for key in ("run", "recipe", "cifarkit_version")}


def load_classifier(
    run_dir: str | Path,
    *,
    backend: str = "torch",
    device: str = "auto",
    tta: str | None = None,
    model_file: str | Path | None = None,
) -> Classifier:
    """The run in ``run_dir`` ready to serve with ``backend``; ``tta`` defaults to the recipe's (or the ONNX file's)."""
    check_backend(backend, device, model_file)
    config = read_config(run_dir)
    metrics = recorded_metrics(run_dir)
    if backend == "torch":
        predict, details = _torch_backend(run_dir, config, device, tta or config.get("tta", "none"))
    else:
        predict, details = _onnx_backend(run_dir, Path(model_file or Path(run_dir) / DEFAULT_FILES["onnx"]), tta)
    # One forward pass now: a model whose outputs do not fit the run's classes, or are not finite, is refused
    # here, not answered with HTTP 500 (or NaN) on every request.
    check_outputs(predict(PROBE), run_dir, config["classes"], on=" on a plain black or grey image")
    info = {
        "run": Path(run_dir).resolve().name,
        "recipe": config.get("name", ""),
        "cifarkit_version": metrics.get("cifarkit_version", __version__),
        "classes": list(config["classes"]),
        "input_size": [INPUT_SIZE, INPUT_SIZE],
        "parameters": metrics.get("params"),
        "test_acc": metrics.get("test_acc"),
        "test_acc_tta": metrics.get("test_acc_tta"),
        "backend": backend,
        **details,
    }
    return Classifier(predict, list(config["classes"]), info)


def recorded_metrics(run_dir: str | Path) -> dict[str, Any]:
    """What the run's records say of it: RUN/metrics.json, with the test accuracies `cifarkit evaluate` wrote to
    RUN/eval/metrics.json (the run's own test set) where there are any. A damaged file is a one-line error."""
    run_dir = Path(run_dir)
    metrics: dict[str, Any] = {}
    path = run_dir / "metrics.json"
    if path.is_file():
        metrics = read_json(path, dict, "restore it from a copy, or train the run again into a new --out")
    evaluated = run_dir / "eval" / "metrics.json"
    if evaluated.is_file():
        record = read_json(evaluated, dict, f"evaluate the run again: `cifarkit evaluate {run_dir}`")
        metrics = {
            **{k: v for k, v in metrics.items() if not k.startswith("test_acc")},
            **{k: v for k, v in record.items() if k.startswith("test_acc")},
        }
    kinds = {"params": (int, "whole number"), "test_acc": (int | float, "number"), "cifarkit_version": (str, "string")}
    kinds["test_acc_tta"] = kinds["test_acc"]
    for key, (kind, name) in kinds.items():
        value = metrics.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, kind) or (kind is not str and not math.isfinite(value))
        ):
            where = evaluated if key.startswith("test_acc") and evaluated.is_file() else path
            raise CifarkitError(f"{where}: {key} is {value!r}, not a {name}; restore the file from a copy")
    return metrics


def check_backend(backend: str, device: str, model_file: str | Path | None) -> None:
    """Refuse a backend, device and model file that do not go together, before anything is loaded."""
    if backend not in BACKENDS:
        raise CifarkitError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "onnx" and device not in ("auto", "cpu"):
        raise CifarkitError(f"--backend onnx runs on the CPU; drop --device {device} or use --backend torch")
    if model_file is not None and backend != "onnx":
        raise CifarkitError(
            f"--model-file {model_file} is the ONNX file of --backend onnx; add --backend onnx, or drop --model-file "
            "(--backend torch serves the run's own weights)"
        )
    if model_file is not None and Path(model_file).is_dir():
        raise CifarkitError(f"--model-file {model_file} is a directory; name the ONNX file `cifarkit export` wrote")


def _torch_backend(
    run_dir: str | Path, config: dict[str, Any], device: str, tta: str
) -> tuple[Callable[[np.ndarray], np.ndarray], dict[str, Any]]:
    dev = pick_device(device)
    bf16 = native_run_bf16(config, dev)
    model = ProbabilityModel(load_model(run_dir), tta).to(dev, memory_format=torch.channels_last)

    @torch.inference_mode()
    def predict(images: np.ndarray) -> np.ndarray:
        with autocast(dev, bf16):
            return model(torch.from_numpy(images).to(dev)).float().cpu().numpy()

    return predict, {"tta": tta, "precision": precision_name(bf16), "device": str(dev)}


def _onnx_backend(
    run_dir: str | Path, path: Path, tta: str | None
) -> tuple[Callable[[np.ndarray], np.ndarray], dict[str, Any]]:
    metadata = onnx_metadata(path)
    if "weights_sha256" not in metadata or "classes" not in metadata:
        raise CifarkitError(
            f"{path} carries no cifarkit metadata, so `cifarkit export` did not write it; export the run: "
            f"cifarkit export {run_dir} --format onnx"
        )
    if metadata.get("weights_sha256") != weights_digest(run_dir):
        raise CifarkitError(
            f"{path} was not exported from the current weights of {run_dir}; export it again: "
            f"cifarkit export {run_dir} --format onnx"
        )
    if tta and tta != metadata.get("tta"):
        raise CifarkitError(
            f"{path} was exported with TTA {metadata.get('tta')!r}, not {tta!r}; export it again "
            f"with --tta {tta}, or serve it without --tta"
        )
    # As many threads as PyTorch would use (the CLI's --threads sets both).
    predict = onnx_predictor(path, threads=torch.get_num_threads())
    details = {"tta": metadata.get("tta", "none"), "precision": metadata.get("precision", "float32")}
    return predict, {**details, "device": "cpu (onnxruntime)"}
