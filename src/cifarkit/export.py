"""Export a run as one self-contained model file: uint8 images in, class probabilities out.

Scaling, the run's test-time augmentation, the network and the softmax are inside; the metadata holds the class
names and the run's identity, so the file alone can be served. ``onnx`` (opset :data:`OPSET`, dynamic batch) runs
in any ONNX runtime; ``torch-export`` (``RUN/model.pt2``) is a ``torch.export`` program whose metadata names the
PyTorch that wrote it, since PyTorch promises no compatibility across versions. Exports are float32 whatever the
run trained in, so a parity check against PyTorch on real test images can hold them to float rounding before the
file is written. ONNX and onnxruntime (``cifarkit[serve]``) are imported only where needed.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cifarkit import __version__
from cifarkit.data.dataset import CIFAR10
from cifarkit.errors import CifarkitError
from cifarkit.files import atomic_write_bytes, read_json
from cifarkit.inference import check_model, check_outputs, check_tta, predict_proba, tta_logits
from cifarkit.runs import load_model, read_config, weights_digest

FORMATS = ("onnx", "torch-export")
OPSET = 18
"""The torch.export-based exporter's own opset; onnxruntime runs it on CPU from version 1.14 on."""
PARITY_TOLERANCE = 1e-4
"""Largest absolute difference of probabilities a float32 export may show against PyTorch."""
METADATA_FILE = "cifarkit.json"
"""Extra file of a torch.export program holding the metadata."""
DEFAULT_FILES = {"onnx": "model.onnx", "torch-export": "model.pt2"}


class ProbabilityModel(nn.Module):
    """A run's network with its TTA and softmax inside: uint8 RGB (N, 32, 32, 3) in, probabilities (N, C) out."""

    def __init__(self, model: nn.Module, tta: str = "none") -> None:
        super().__init__()
        check_tta(tta)
        self.model, self.tta = model, tta
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # The permuted view is channels-last in memory, the layout the CPU convolutions want.
        x = images.permute(0, 3, 1, 2).float() / 255
        return torch.softmax(tta_logits(self.model, x, self.tta).float(), dim=1)


def run_metadata(run_dir: str | Path, tta: str) -> dict[str, str]:
    """What an exported file says about itself (all values are strings, as ONNX metadata requires)."""
    config = read_config(run_dir)
    metrics_path = Path(run_dir) / "metrics.json"
    metrics = (
        read_json(metrics_path, dict, "restore it from a copy, or train the run again into a new --out")
        if metrics_path.is_file()
        else {}
    )
    return {
        "classes": json.dumps(config["classes"]),
        "run": Path(run_dir).resolve().name,
        "recipe": config.get("name", ""),
        "cifarkit_version": __version__,
        "tta": tta,
        "weights_sha256": weights_digest(run_dir),
        "parameters": str(metrics.get("params", "")),
        "input": "uint8 RGB images, shape (N, 32, 32, 3)",
        "output": "float32 class probabilities, shape (N, len(classes))",
    }


def check_exportable(run_dir: str | Path) -> None:
    """Everything about a run that an export needs (its files, finite outputs per class), checked before the data."""
    config = read_config(run_dir)
    run_metadata(run_dir, config.get("tta", "none"))
    check_model(load_model(run_dir), run_dir, config["classes"])


def export_model(
    run_dir: str | Path, fmt: str, images: np.ndarray, *, out: str | Path | None = None, tta: str | None = None
) -> tuple[Path, Parity]:
    """Export a run's best weights as ``fmt`` (onnx or torch-export), checked against PyTorch on ``images``.

    The file is written (default RUN/model.onnx or RUN/model.pt2) only if the probabilities agree to
    :data:`PARITY_TOLERANCE`. ``tta`` defaults to the run's recipe.
    """
    check_format(fmt)
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (32, 32, 3) or not len(images):
        raise CifarkitError(
            f"the export is checked on uint8 images of shape (N, 32, 32, 3), N >= 1; got {images.dtype} {images.shape}"
        )
    config = read_config(run_dir)
    tta = tta or config.get("tta", "none")
    model = ProbabilityModel(load_model(run_dir), tta)
    metadata = run_metadata(run_dir, tta)
    # PyTorch's own answers first: a model that does not fit its classes, or diverged, is refused before the
    # (slow) export, and nothing is written.
    reference = predict_proba(model.model, images, tta=tta, device="cpu")
    check_outputs(reference, run_dir, config["classes"], on=f" on the {len(images):,} check images")
    data = _to_onnx(model, metadata) if fmt == "onnx" else _to_program(model, metadata)
    predict = onnx_predictor(data) if fmt == "onnx" else program_predictor(data)
    parity = check_parity(predict, reference, images)
    if not parity.passed:
        raise CifarkitError(
            f"the {fmt} export differs from PyTorch by up to {parity.max_abs_diff:.2e} in probability "
            f"(tolerance {PARITY_TOLERANCE:g}; NaN: not finite where PyTorch is); not written. Please report "
            "this with the run's model name"
        )
    path = Path(out) if out else Path(run_dir) / DEFAULT_FILES[fmt]
    atomic_write_bytes(path, data)
    return path, parity


def check_format(fmt: str) -> None:
    """Refuse an export format cifarkit does not write; the one it no longer writes, naming its replacement."""
    if fmt == "torchscript":
        raise CifarkitError(
            "the torchscript format is gone (TorchScript is deprecated in PyTorch); "
            "use --format torch-export, a torch.export program (RUN/model.pt2)"
        )
    if fmt not in FORMATS:
        raise CifarkitError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")


def _example_input() -> torch.Tensor:
    # Batch 2: torch.export treats sizes 0 and 1 as constants, which would pin the batch dimension.
    return torch.zeros(2, 32, 32, 3, dtype=torch.uint8)


def _to_onnx(model: ProbabilityModel, metadata: dict[str, str]) -> bytes:
    import onnx

    batch = torch.export.Dim("batch")
    with torch.no_grad(), _quiet_exporter():
        program = torch.onnx.export(
            model,
            (_example_input(),),
            dynamo=True,
            opset_version=OPSET,
            verbose=False,
            input_names=["images"],
            output_names=["probabilities"],
            dynamic_shapes={"images": {0: batch}},
        )
    proto = program.model_proto
    onnx.helper.set_model_props(proto, metadata)
    onnx.checker.check_model(proto, full_check=True)
    return proto.SerializeToString()


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Hide the exporter's notes that concern neither the model nor the user (torchvision ops it skips, its own
    deprecations); errors still show."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        logger.setLevel(level)


def _to_program(model: ProbabilityModel, metadata: dict[str, str]) -> bytes:
    """The model as a saved torch.export program, its batch dimension dynamic, its metadata an extra file."""
    with torch.no_grad():
        program = torch.export.export(
            model, (_example_input(),), dynamic_shapes={"images": {0: torch.export.Dim("batch")}}
        )
    buf = io.BytesIO()
    extra = {METADATA_FILE: json.dumps({**metadata, "torch_version": torch.__version__})}
    with warnings.catch_warnings():
        # Channels-last conv weights are not "contiguous" to the saver, which then warns that it saves their whole
        # storage, and that this "may cause issues" off the CPU; these are CPU tensors, saved whole with their strides.
        warnings.filterwarnings("ignore", "No complete tensor found", UserWarning)
        torch.export.save(program, buf, extra_files=extra)
    return buf.getvalue()


def onnx_predictor(model: bytes | str | Path, threads: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """A function from uint8 images (N, 32, 32, 3) to probabilities, running an exported ONNX model on the CPU."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    source = model if isinstance(model, bytes) else str(model)
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    return lambda images: session.run(None, {"images": np.ascontiguousarray(images, dtype=np.uint8)})[0]


def onnx_metadata(path: str | Path) -> dict[str, str]:
    """The metadata an exported ONNX file carries (see :func:`run_metadata`)."""
    import onnx
    from google.protobuf.message import DecodeError

    if not Path(path).is_file():
        raise CifarkitError(f"{path} does not exist; write it with `cifarkit export RUN --format onnx`")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except DecodeError as e:
        raise CifarkitError(
            f"{path} is not an ONNX model ({e}); write one with `cifarkit export RUN --format onnx`"
        ) from None
    return {p.key: p.value for p in proto.metadata_props}


def program_predictor(model: bytes | str | Path) -> Callable[[np.ndarray], np.ndarray]:
    """A function from uint8 images (N, 32, 32, 3) to probabilities, running a saved torch.export program."""
    module = torch.export.load(io.BytesIO(model) if isinstance(model, bytes) else str(model)).module()

    @torch.no_grad()
    def predict(images: np.ndarray) -> np.ndarray:
        return module(torch.from_numpy(np.ascontiguousarray(images))).numpy()

    return predict


def sample(images: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` of ``images`` drawn at random: a folder source is sorted by class, so the first ``n`` would not do."""
    pick = np.random.default_rng(seed).choice(len(images), size=min(n, len(images)), replace=False)
    return images[np.sort(pick)]


@dataclass(frozen=True)
class Parity:
    """How an exported model's probabilities compare with PyTorch's on the same images."""

    images: int
    max_abs_diff: float
    """NaN when either side has a value that is not finite, or their shapes differ."""
    top1_agreement: float

    @property
    def passed(self) -> bool:
        """Whether the export answers as PyTorch does to :data:`PARITY_TOLERANCE` (never for a NaN difference)."""
        return bool(self.max_abs_diff <= PARITY_TOLERANCE)  # False for NaN

    def __str__(self) -> str:
        return (
            f"parity on {self.images:,} images: max |p - p_torch| = {self.max_abs_diff:.2e}, "
            f"identical top-1 {self.top1_agreement:.2%}"
        )


def check_parity(
    predict: Callable[[np.ndarray], np.ndarray], reference: np.ndarray, images: np.ndarray, batch_size: int = 500
) -> Parity:
    """Compare ``predict`` on ``images`` (in batches of ``batch_size``) with the reference probabilities."""
    probs = np.concatenate([predict(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])
    if probs.shape != reference.shape or not (np.isfinite(probs).all() and np.isfinite(reference).all()):
        return Parity(len(images), float("nan"), 0.0)  # never a pass: NaN compares false with any tolerance
    same = (probs.argmax(1) == reference.argmax(1)).mean()
    return Parity(len(images), float(np.abs(probs - reference).max()), float(same))


@dataclass(frozen=True)
class Int8Report:
    """Accuracy and speed of an int8 ONNX model beside its float32 source."""

    path: Path
    accuracy: float
    float_accuracy: float
    images_per_s: float
    float_images_per_s: float

    def __str__(self) -> str:
        return (
            f"int8: test accuracy {self.accuracy:.4f} (float32 {self.float_accuracy:.4f}), "
            f"{self.images_per_s:,.0f} images/s (float32 {self.float_images_per_s:,.0f}, "
            f"{self.images_per_s / self.float_images_per_s:.2f}x)"
        )


def quantize_int8(
    onnx_path: str | Path,
    data: CIFAR10,
    *,
    calibration_images: int = 500,
    out: str | Path | None = None,
    threads: int | None = None,
) -> Int8Report:
    """Statically quantise an exported ONNX model to int8 (QDQ, per-channel weights) and measure it.

    ``calibration_images`` training images (never test images) set the activation ranges; both models are
    measured on the whole test set. Written beside the float file (``model.int8.onnx``) unless ``out`` is given.
    """
    calibration = sample(data.x_train, calibration_images)
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(np.array_split(calibration, max(1, len(calibration) // 50)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {"images": batch}

    onnx_path = Path(onnx_path)
    out = Path(out) if out else onnx_path.with_suffix(".int8.onnx")
    with tempfile.TemporaryDirectory() as tmp:
        prepared, quantized = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(onnx_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(quantized),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            op_types_to_quantize=["Conv", "MatMul", "Gemm"],  # the arithmetic; the softmax stays float
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
        _copy_metadata(onnx_path, quantized)
        atomic_write_bytes(out, quantized.read_bytes())
    scores = {}
    for name, path in (("float", onnx_path), ("int8", out)):
        predict = onnx_predictor(path, threads)
        start = time.perf_counter()
        probs = np.concatenate([predict(data.x_test[i : i + 500]) for i in range(0, len(data.x_test), 500)])
        scores[name] = (float((probs.argmax(1) == data.y_test).mean()), len(probs) / (time.perf_counter() - start))
    return Int8Report(out, scores["int8"][0], scores["float"][0], scores["int8"][1], scores["float"][1])


def _copy_metadata(source: Path, target: Path) -> None:
    """Carry the class names and run identity over to the quantised model."""
    import onnx

    proto = onnx.load(str(target))
    onnx.helper.set_model_props(proto, {**onnx_metadata(source), "precision": "int8 (QDQ, per-channel weights)"})
    onnx.save(proto, str(target))
