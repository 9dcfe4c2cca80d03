"""Export: ONNX and torch.export files that answer as the PyTorch model does, and serving the ONNX file."""

from __future__ import annotations

import io
import json

import numpy as np
import onnx
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from safetensors.torch import load_file, save_file

from cifarkit.cli import main
from cifarkit.errors import CifarkitError
from cifarkit.export import (
    METADATA_FILE,
    PARITY_TOLERANCE,
    export_model,
    onnx_metadata,
    onnx_predictor,
    quantize_int8,
)
from cifarkit.inference import predict_proba
from cifarkit.recipes import get_recipe
from cifarkit.runs import load_model, weights_digest
from cifarkit.serve.app import create_app
from cifarkit.serve.backends import load_classifier
from cifarkit.train import train


@pytest.fixture(scope="module")
def data():
    from conftest import synthetic_cifar

    return synthetic_cifar()


@pytest.fixture(scope="module")
def run(tmp_path_factory, data):
    """A FastNet run (whitening, autocast-free stem, global max pool) with the recipe's 6-view TTA."""
    recipe = get_recipe("fast90").replace(epochs=1, bf16=False, batch_size=100, val_fraction=0.1, tta="flip_translate")
    return train(recipe, data, tmp_path_factory.mktemp("runs") / "fast", progress=False)


@pytest.fixture(scope="module")
def onnx_file(run, data):
    path, parity = export_model(run, "onnx", data.x_test)
    assert parity.max_abs_diff < PARITY_TOLERANCE and parity.top1_agreement == 1.0
    return path


def reference(run, images: np.ndarray) -> np.ndarray:
    return predict_proba(load_model(run), images, tta="flip_translate", device="cpu")


def test_onnx_file_is_valid_self_describing_and_batch_dynamic(run, onnx_file, data):
    assert onnx_file == run / "model.onnx"
    model = onnx.load(str(onnx_file))
    onnx.checker.check_model(model, full_check=True)
    [images] = model.graph.input
    dims = images.type.tensor_type.shape.dim
    assert images.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [32, 32, 3]
    meta = onnx_metadata(onnx_file)
    assert json.loads(meta["classes"])[:2] == ["airplane", "automobile"]
    assert meta["run"] == "fast" and meta["recipe"] == "fast90" and meta["tta"] == "flip_translate"
    assert meta["weights_sha256"] == weights_digest(run)
    predict = onnx_predictor(onnx_file)
    for n in (1, 7):
        np.testing.assert_allclose(predict(data.x_test[:n]), reference(run, data.x_test[:n]), atol=PARITY_TOLERANCE)


# The program holds the same ATen operations the model runs eagerly, on the same CPU kernels (nothing is compiled or
# fused), so its probabilities differ from PyTorch's by float32 rounding at most: ~1e-7 for values up to 1 (0 measured,
# torch 2.13 on AVX-512). 1e-5 leaves a hundredfold for another kernel or summation order (another batch size, CPU or
# PyTorch), and is far below what a wrong program moves them by: one with TTA flip or none instead of this run's
# flip_translate differs by up to 0.06 and 0.16 here.
PROGRAM_TOLERANCE = 1e-5


def test_torch_export_program_loads_with_its_metadata_and_matches_pytorch(run, data):
    path, parity = export_model(run, "torch-export", data.x_test)
    assert path == run / "model.pt2" and parity.images == len(data.x_test) and parity.top1_agreement == 1.0
    extra = {METADATA_FILE: ""}
    program = torch.export.load(str(path), extra_files=extra)
    meta = json.loads(extra[METADATA_FILE])
    assert json.loads(meta["classes"]) == list(data.classes) and meta["tta"] == "flip_translate"
    assert (meta["run"], meta["recipe"], meta["weights_sha256"]) == ("fast", "fast90", weights_digest(run))
    assert meta["torch_version"] == torch.__version__
    module = program.module()
    with torch.no_grad():
        for n in (1, 5, len(data.x_test)):  # the batch dimension is dynamic, one image included
            got = module(torch.from_numpy(data.x_test[:n])).numpy()
            assert got.dtype == np.float32 and got.shape == (n, 10)
            np.testing.assert_allclose(got, reference(run, data.x_test[:n]), rtol=0, atol=PROGRAM_TOLERANCE)
        with pytest.raises(RuntimeError, match="dtype"):  # uint8 images, as promised, not floats
            module(torch.zeros(2, 32, 32, 3))


def test_export_errors(run, data, tmp_path):
    with pytest.raises(CifarkitError, match="unknown export format"):
        export_model(run, "tflite", data.x_test)
    with pytest.raises(CifarkitError, match="torchscript format is gone.*use --format torch-export"):
        export_model(run, "torchscript", data.x_test)
    with pytest.raises(CifarkitError, match="not a cifarkit run"):
        export_model(tmp_path, "onnx", data.x_test)
    with pytest.raises(CifarkitError, match="TTA mode"):
        export_model(run, "torch-export", data.x_test, tta="rotate")
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    with pytest.raises(CifarkitError, match="not an ONNX model"):
        onnx_metadata(tmp_path / "junk.onnx")


def test_cli_export_checks_parity_on_real_test_images(run, real_data_path, tmp_path, capsys):
    main(
        [
            "export",
            str(run),
            "--format",
            "onnx",
            "-o",
            str(tmp_path / "m.onnx"),
            "--data",
            real_data_path,
            "--tta",
            "none",
            "--check-images",
            "1000",
        ]
    )
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'm.onnx'}" in out
    assert "parity on 1,000 images" in out and "identical top-1 100.00%" in out
    assert onnx_metadata(tmp_path / "m.onnx")["tta"] == "none"


def png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_serve_onnx_backend_answers_as_torch(run, onnx_file):
    answers = {}
    for backend in ("torch", "onnx"):
        classifier = load_classifier(run, backend=backend, device="cpu")
        assert classifier.info["tta"] == "flip_translate" and classifier.info["backend"] == backend
        with TestClient(create_app(classifier)) as client:
            files = [("file", (f"{i}.png", png(i))) for i in range(3)]
            answers[backend] = client.post("/v1/predict", files=files, data={"top_k": "10"}).json()
    assert answers["onnx"]["model"] == answers["torch"]["model"]
    for torch_result, onnx_result in zip(answers["torch"]["results"], answers["onnx"]["results"]):
        assert [p["class"] for p in onnx_result["predictions"]][0] == torch_result["predictions"][0]["class"]
        got = {p["class"]: p["probability"] for p in onnx_result["predictions"]}
        for p in torch_result["predictions"]:
            assert got[p["class"]] == pytest.approx(p["probability"], abs=PARITY_TOLERANCE)


def test_onnx_backend_refuses_a_stale_or_mismatched_export(run, onnx_file, tmp_path):
    with pytest.raises(CifarkitError, match="exported with TTA 'flip_translate'"):
        load_classifier(run, backend="onnx", tta="none")
    with pytest.raises(CifarkitError, match="does not exist"):
        load_classifier(run, backend="onnx", model_file=tmp_path / "none.onnx")
    with pytest.raises(CifarkitError, match="runs on the CPU"):
        load_classifier(run, backend="onnx", device="cuda")
    weights = run / "best.safetensors"
    original = weights.read_bytes()
    try:
        save_file({k: v + 1 if v.is_floating_point() else v for k, v in load_file(weights).items()}, weights)
        with pytest.raises(CifarkitError, match="not exported from the current weights"):
            load_classifier(run, backend="onnx")
    finally:
        weights.write_bytes(original)


def test_int8_quantisation_reports_accuracy_and_speed(onnx_file, data, tmp_path):
    report = quantize_int8(onnx_file, data, calibration_images=50, out=tmp_path / "m.int8.onnx")
    assert report.path.is_file() and 0 <= report.accuracy <= 1 and 0 <= report.float_accuracy <= 1
    assert report.images_per_s > 0 and report.float_images_per_s > 0
    meta = onnx_metadata(report.path)
    assert meta["run"] == "fast" and meta["precision"].startswith("int8")
    probs = onnx_predictor(report.path)(data.x_test[:4])
    assert probs.shape == (4, 10) and np.allclose(probs.sum(1), 1, atol=1e-3)
