"""Hostile input to predict, export, serve and report: every refusal is exit status 2 and one error line.

Each refused command is checked the same way (:func:`refused`): exit status 2,
stderr ending in one ``cifarkit: error:`` line (or argparse's ``cifarkit
COMMAND: error:`` line after its usage), no traceback, and no file created or
changed in the run or the working directory. Where a check must come before
the data or the model is loaded, loading them fails the test.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import zipfile
from pathlib import Path

import numpy as np
import pytest
import uvicorn
from PIL import Image
from safetensors.torch import load_file, save_file

import cifarkit.cli
import cifarkit.serve.server
from cifarkit.errors import CifarkitError
from cifarkit.evaluate import evaluate
from cifarkit.export import Parity, check_parity, export_model
from cifarkit.recipes import get_recipe
from cifarkit.report.options import ReportOptions
from cifarkit.runs import load_evaluation
from cifarkit.serve.server import listen
from cifarkit.serve.settings import ServeSettings
from cifarkit.train import train
from cli_runner import run_cli

# --- one tiny trained and evaluated run, and damaged copies of it ----------------------------------------------------


@pytest.fixture(scope="module")
def data():
    from conftest import synthetic_cifar

    return synthetic_cifar()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data) -> Path:
    run = train(
        get_recipe("seed_cnn3").replace(epochs=1, bf16=False),
        data,
        tmp_path_factory.mktemp("runs") / "tiny",
        subset=200,
        progress=False,
    )
    evaluate(run, data)
    assert (run / "eval" / "predictions.npz").is_file()
    return run


@pytest.fixture
def run(trained, tmp_path, monkeypatch, data) -> Path:
    """A copy of the trained run to damage; the working directory is an empty folder beside it; the CLI's data
    is the synthetic set."""
    copy = Path(shutil.copytree(trained, tmp_path / "run"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setattr(cifarkit.cli, "_data", lambda args: data)
    monkeypatch.delenv("CIFARKIT_API_KEY", raising=False)
    return copy


def no_data(monkeypatch) -> None:
    """The command must refuse before it loads any data."""

    def refuse(args):
        raise AssertionError("the data was loaded before the refusal")

    monkeypatch.setattr(cifarkit.cli, "_data", refuse)


def diverged(run: Path) -> Path:
    """The run's best weights with a NaN in them, as a diverged run leaves them."""
    weights = load_file(run / "best.safetensors")
    name = next(k for k in weights if k.endswith("weight"))
    weights[name] = weights[name].clone()
    weights[name].view(-1)[0] = float("nan")
    save_file(weights, run / "best.safetensors")
    return run


def nine_classes(run: Path) -> Path:
    """config.json lists 9 classes; the weights still give 10 outputs."""
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "classes": config["classes"][:9]}))
    return run


def snapshot(*folders: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p): (p.stat().st_mtime_ns, p.stat().st_size) for folder in folders for p in folder.rglob("*") if p.is_file()
    }


def refused(capsys, run: Path, *argv: str, match: str = "") -> str:
    """Run the CLI; it must exit 2 with one error line naming ``match``, and leave every file as it was."""
    folders = (run, Path.cwd())
    before = snapshot(*folders)
    code, out, err = run_cli(capsys, *argv)
    lines = err.strip().splitlines()
    assert code == 2, (code, out, err)
    assert "Traceback" not in err and lines, err
    assert lines[-1].startswith("cifarkit: error: ") or re.match(r"cifarkit \w+: error: argument ", lines[-1]), err
    assert sum(": error:" in line for line in lines) == 1, err
    assert match in lines[-1], err
    assert snapshot(*folders) == before, "a refused command created or changed files"
    return lines[-1]


# --- serve ----------------------------------------------------------------------------------------------------------


@pytest.fixture
def no_serving(monkeypatch):
    """Serving would block the test: the server must never start."""

    def refuse(self, sockets=None):
        raise AssertionError("the server started")

    monkeypatch.setattr(uvicorn.Server, "run", refuse)


def no_model(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the refusal")

    monkeypatch.setattr(cifarkit.serve.server, "load_classifier", refuse)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "option, value, match",
    [
        ("--port", "-1", "--port"),
        ("--port", "0", "--port"),
        ("--port", "70000", "--port"),
        ("--port", "http", "--port"),
        ("--max-upload-mb", "inf", "--max-upload-mb"),
        ("--max-upload-mb", "nan", "--max-upload-mb"),
        ("--max-upload-mb", "0", "--max-upload-mb"),
        ("--max-upload-mb", "-1", "--max-upload-mb"),
        ("--max-upload-mb", "0.0001", "--max-upload-mb must be a finite number of at least 0.01"),
        ("--max-files", "0", "--max-files"),
        ("--max-files", "-1", "--max-files"),
        ("--max-files", "nan", "--max-files"),
        ("--max-files", "1000000000000", "must not exceed --max-queue"),
        ("--max-pixels", "0", "--max-pixels"),
        ("--max-pixels", "-1", "--max-pixels"),
        ("--max-pixels", "nan", "--max-pixels"),
        ("--max-pixels", "1000000000000", "above Pillow's own limit"),
        ("--max-batch", "0", "--max-batch"),
        ("--max-batch", "-1", "--max-batch"),
        ("--max-batch", "nan", "--max-batch"),
        ("--batch-wait-ms", "-1", "--batch-wait-ms"),
        ("--batch-wait-ms", "nan", "--batch-wait-ms"),
        ("--batch-wait-ms", "inf", "--batch-wait-ms"),
        ("--max-queue", "0", "--max-queue"),
        ("--max-queue", "-1", "--max-queue"),
        ("--max-queue", "nan", "--max-queue"),
        ("--api-key", "", "the API key is empty"),
        ("--api-key", " key-with-a-space ", "printable ASCII without spaces at either end"),
        ("--threads", "0", "--threads"),
        ("--model-file", "model.onnx", "--model-file model.onnx is the ONNX file of --backend onnx"),
    ],
)
def test_serve_refuses_bad_options_before_loading_the_model(run, capsys, monkeypatch, no_serving, option, value, match):
    no_model(monkeypatch)
    refused(capsys, run, "serve", str(run), "--port", str(free_port()), option, value, match=match)


def test_serve_refuses_other_bad_setups_before_loading_the_model(run, tmp_path, capsys, monkeypatch, no_serving):
    no_model(monkeypatch)
    port = str(free_port())
    refused(capsys, run, "serve", str(run), "--backend", "onnx", "--model-file", str(tmp_path), match="is a directory")
    refused(capsys, run, "serve", str(tmp_path / "nope"), "--port", port, match="not a cifarkit run directory")
    monkeypatch.setenv("CIFARKIT_API_KEY", "\tkey")
    refused(capsys, run, "serve", str(run), "--port", port, match="$CIFARKIT_API_KEY")


def test_serve_refuses_a_port_in_use_in_one_line(run, capsys, monkeypatch, no_serving):
    no_model(monkeypatch)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = refused(capsys, run, "serve", str(run), "--port", str(port), match=f"127.0.0.1:{port}")
    assert line == (
        f"cifarkit: error: cannot listen on 127.0.0.1:{port} (Address already in use); choose another --port "
        "(another program, or another cifarkit serve, listens there)"
    )


@pytest.mark.parametrize(
    "host, match",
    [
        ("192.0.2.1", "Cannot assign requested address"),  # TEST-NET-1: never an address of this machine
        ("no-such-host.invalid", "cannot listen on no-such-host.invalid:"),
    ],
)
def test_serve_refuses_an_address_it_cannot_bind(run, capsys, monkeypatch, no_serving, host, match):
    no_model(monkeypatch)
    line = refused(capsys, run, "serve", str(run), "--host", host, "--api-key", "k" * 32, match=match)
    assert "--host" in line


def test_serve_says_an_address_is_not_one_before_asking_for_a_key(run, capsys, monkeypatch, no_serving):
    no_model(monkeypatch)
    line = refused(capsys, run, "serve", str(run), "--host", "999.1.1.1", match="cannot listen on 999.1.1.1:")
    assert "API key" not in line and "--host" in line


def test_serve_binds_before_loading_and_releases_the_port():
    port = free_port()
    sockets = listen("127.0.0.1", port)
    try:
        assert [s.getsockname() for s in sockets] == [("127.0.0.1", port)]
        with pytest.raises(CifarkitError, match="Address already in use"):
            listen("127.0.0.1", port)  # taken before the model loads: a second server cannot share it
    finally:
        for s in sockets:
            s.close()
    for s in listen("127.0.0.1", port):
        s.close()


@pytest.mark.parametrize(
    "damage, match",
    [
        (diverged, "not finite (NaN or infinity)"),
        (nine_classes, "config.json lists 9 classes but the weights"),
        (lambda run: (run / "metrics.json").write_text("{"), "metrics.json is not valid JSON"),
        (lambda run: (run / "metrics.json").write_text('{"params": "many"}'), "params is 'many', not a whole number"),
        (lambda run: (run / "eval" / "metrics.json").write_text("[]"), "eval/metrics.json holds a JSON list"),
    ],
)
def test_serve_refuses_a_run_it_cannot_answer_for(run, capsys, no_serving, damage, match):
    damage(run)
    refused(capsys, run, "serve", str(run), "--port", str(free_port()), "--device", "cpu", match=match)


@pytest.mark.parametrize("content", [b"", b"not a model\n"])
def test_serve_refuses_an_onnx_file_cifarkit_did_not_write(run, tmp_path, capsys, no_serving, content):
    (tmp_path / "m.onnx").write_bytes(content)
    argv = (
        "serve",
        str(run),
        "--backend",
        "onnx",
        "--model-file",
        str(tmp_path / "m.onnx"),
        "--port",
        str(free_port()),
    )
    refused(capsys, run, *argv, match="m.onnx")


def test_a_nan_answer_is_a_500_with_a_message_not_a_crash():
    import io

    from fastapi.testclient import TestClient

    from cifarkit.serve.app import create_app
    from stand_in import stand_in_classifier

    classifier = stand_in_classifier(lambda x: np.full((len(x), 10), np.nan, np.float32))
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, "PNG")
    with TestClient(create_app(classifier)) as client:
        response = client.post("/v1/predict", files={"file": ("a.png", png.getvalue())})
    assert response.status_code == 500 and "not finite" in response.json()["detail"]


def test_serve_settings_accept_large_limits_and_refuse_wrong_types():
    ServeSettings(max_upload_mb=1e6, max_files=1000, max_queue=10**9, max_batch=10**9, batch_wait_ms=1e6)
    ServeSettings(batch_wait_ms=0, api_key="a b")  # an inner space travels fine in a header
    for bad in ({"max_batch": 2.5}, {"max_files": True}, {"max_upload_mb": float("nan")}, {"api_key": "clé"}):
        with pytest.raises(CifarkitError):
            ServeSettings(**bad)


# --- export ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "option, value",
    [
        ("--threads", "-1"),
        ("--threads", "0"),
        ("--threads", "nan"),
        ("--check-images", "0"),
        ("--check-images", "-1"),
        ("--check-images", "nan"),
    ],
)
def test_export_refuses_bad_numbers(run, capsys, monkeypatch, option, value):
    no_data(monkeypatch)
    refused(capsys, run, "export", str(run), option, value, match=option)


def test_export_refuses_torchscript_naming_its_replacement(run, capsys, monkeypatch):
    no_data(monkeypatch)
    line = refused(capsys, run, "export", str(run), "--format", "torchscript", match="use --format torch-export")
    assert "torchscript format is gone" in line
    refused(capsys, run, "export", str(run), "--format", "tflite", match="unknown export format 'tflite'")


def test_export_writes_a_torch_export_program_into_the_run(run, capsys):
    code, out, err = run_cli(capsys, "export", str(run), "--format", "torch-export", "--check-images", "20")
    assert code == 0, err
    assert out.startswith(f"wrote {run / 'model.pt2'}\n") and "parity on 20 images" in out
    code, _, err = run_cli(capsys, "export", str(run), "--format", "torch-export", "-o", str(run / "copy.pt2"))
    assert code == 0 and (run / "copy.pt2").is_file(), err  # the exporter's own suffix, beside the run's files


@pytest.mark.parametrize(
    "damage, match",
    [
        (diverged, "the run diverged; train it again with a lower learning rate"),
        (nine_classes, "config.json lists 9 classes but the weights"),
        (lambda run: (run / "metrics.json").write_text("[1, 2]"), "metrics.json holds a JSON list, not a dict"),
    ],
)
def test_export_refuses_a_damaged_or_diverged_run_before_loading_data(run, capsys, monkeypatch, damage, match):
    damage(run)
    no_data(monkeypatch)
    line = refused(capsys, run, "export", str(run), match=match)
    assert str(run) in line


def test_export_checks_pytorch_outputs_on_the_check_images_before_writing(run, data, tmp_path):
    diverged(run)
    with pytest.raises(CifarkitError, match=r"not finite \(NaN or infinity\) on the 5 check images.*diverged"):
        export_model(run, "torch-export", data.x_test[:5], out=tmp_path / "m.pt2")
    assert not (tmp_path / "m.pt2").exists()
    with pytest.raises(CifarkitError, match="uint8 images of shape"):
        export_model(run, "torch-export", data.x_test[:0])


def test_parity_with_nan_never_passes():
    reference = np.full((4, 10), 0.1, np.float32)
    images = np.zeros((4, 32, 32, 3), np.uint8)
    good = check_parity(lambda x: np.full((len(x), 10), 0.1, np.float32), reference, images)
    assert good.passed and good.max_abs_diff == 0 and good.top1_agreement == 1
    nan = check_parity(lambda x: np.full((len(x), 10), np.nan, np.float32), reference, images)
    assert not nan.passed and np.isnan(nan.max_abs_diff) and "nan" in str(nan)
    assert not check_parity(lambda x: np.full((len(x), 9), 0.1, np.float32), reference, images).passed
    assert not Parity(4, float("nan"), 1.0).passed


def test_export_caps_check_images_at_the_test_set_with_a_note(run, capsys, tmp_path):
    code, out, err = run_cli(
        capsys, "export", str(run), "--format", "torch-export", "-o", str(tmp_path / "m.pt2"), "--check-images", "500"
    )
    assert code == 0, err
    assert "--check-images 500 is more than the 100 test images; checking all of them" in err
    assert "parity on 100 images" in out and (tmp_path / "m.pt2").is_file()


# --- predict --------------------------------------------------------------------------------------------------------


@pytest.fixture
def image(run, data) -> Path:
    path = Path.cwd() / "good.png"
    Image.fromarray(data.x_test[0]).save(path)
    return path


def test_predict_bad_files_are_error_lines_and_exit_2(run, image, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not an image")
    files = [str(image), str(tmp_path / "missing.png"), str(tmp_path / "notes.txt"), str(tmp_path)]
    code, out, err = run_cli(capsys, "predict", str(run), *files)
    assert code == 2 and "Traceback" not in err
    assert out.startswith(f"{image}:\n") and out.count(":\n") == 1  # the good file's predictions, as before
    lines = err.strip().splitlines()
    assert [line.split(": ", 2)[2].split(" ")[0].rstrip(":") for line in lines] == files[1:], err
    assert all(line.startswith("cifarkit: error: ") for line in lines)
    assert "no such file" in lines[0] and "not a readable image" in lines[1] and "is a directory" in lines[2]

    code, out, err = run_cli(capsys, "predict", str(run), str(image), str(tmp_path / "missing.png"), "--json")
    results = json.loads(out)  # stdout stays one JSON document
    assert code == 2 and len(results[0]["predictions"]) == 3 and "no such file" in results[1]["error"]
    assert err == f"cifarkit: error: {results[1]['error']}\n"


@pytest.mark.parametrize("top_k, match", [("0", "--top-k"), ("-1", "--top-k"), ("nan", "--top-k"), ("11", "1 to 10")])
def test_predict_refuses_top_k_out_of_range(run, image, capsys, top_k, match):
    refused(capsys, run, "predict", str(run), str(image), "--top-k", top_k, match=match)


@pytest.mark.parametrize(
    "damage, match", [(diverged, "not finite (NaN or infinity)"), (nine_classes, "lists 9 classes but the weights")]
)
def test_predict_refuses_a_run_whose_outputs_cannot_be_its_classes(run, image, capsys, damage, match):
    damage(run)
    refused(capsys, run, "predict", str(run), str(image), match=match)


# --- report ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "option, value",
    [
        ("--gradcam-images", "-1"),
        ("--gradcam-images", "0"),
        ("--gradcam-images", "nan"),
        ("--robustness-images", "0"),
        ("--robustness-images", "-5"),
        ("--robustness-images", "1e9"),
        ("--seed", "-1"),
        ("--seed", "nan"),
        ("--threads", "0"),
    ],
)
def test_report_refuses_bad_numbers(run, capsys, monkeypatch, option, value):
    no_data(monkeypatch)
    refused(capsys, run, "report", str(run), "-o", "r.html", option, value, match=option)


def test_report_refuses_a_file_or_missing_run_before_loading_data(run, capsys, monkeypatch):
    no_data(monkeypatch)
    refused(capsys, run, "report", str(run / "config.json"), "-o", "r.html", match="is a file, not a run directory")
    refused(capsys, run, "report", str(run), str(run.parent / "nope"), "-o", "r.html", match="not a cifarkit run")
    refused(capsys, run, "report", str(run), "-o", "r.html", "--device", "nonsense", match="--device 'nonsense'")


def _truncated(run: Path) -> None:
    path = run / "eval" / "predictions.npz"
    path.write_bytes(path.read_bytes()[:300])


def _random_bytes(run: Path) -> None:
    (run / "eval" / "predictions.npz").write_bytes(np.random.default_rng(0).bytes(4000))


def _bad_crc(run: Path) -> None:
    path = run / "eval" / "predictions.npz"
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("probs.npy")
    data[info.header_offset + 200] ^= 0xFF  # inside probs.npy: its CRC no longer matches
    path.write_bytes(bytes(data))


def _npz(**change):
    def damage(run: Path) -> None:
        path = run / "eval" / "predictions.npz"
        with np.load(path) as npz:
            arrays = {**{k: npz[k] for k in npz.files}, **change}
        np.savez(path, **arrays)

    return damage


def _metrics(**change):
    def damage(run: Path) -> None:
        path = run / "eval" / "metrics.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **change}))

    return damage


@pytest.mark.parametrize(
    "damage, match",
    [
        (_truncated, "predictions.npz is damaged (it is not a complete NumPy .npz archive)"),
        (_random_bytes, "predictions.npz is damaged (it is not a complete NumPy .npz archive)"),
        (_bad_crc, "predictions.npz is damaged"),
        (lambda run: (run / "eval" / "predictions.npz").write_bytes(b""), "predictions.npz is damaged"),
        (_npz(labels=np.full(100, 12)), "outside the 10 classes"),
        (_npz(probs=np.full((100, 10), np.nan, np.float32)), "not all finite"),
        (_npz(probs=np.zeros((5, 10), np.float32)), "do not match labels"),
        (_npz(labels=np.array(["cat"] * 100)), "not a row of class numbers"),
        (lambda run: (run / "eval" / "metrics.json").write_text("{not json"), "eval/metrics.json is not valid JSON"),
        (lambda run: (run / "eval" / "metrics.json").write_text("[]"), "holds a JSON list, not a dict"),
        (_metrics(test_acc="high"), "test_acc and test_acc_tta must be numbers"),
        (_metrics(test_data=[1]), "test_data is [1]"),
        (_metrics(test_data={"source": "x", "images": 7}), "test_data is"),
        (_metrics(confusion_matrix=[[1, 2], [3]]), "confusion_matrix is not a 10x10 table"),
        (_metrics(classification_report={"accuracy": 0.5, "cat": "good"}), "classification_report is not a table"),
        (_metrics(classification_report={"accuracy": 0.5}), "the classification report lacks the run's classes"),
    ],
)
def test_report_refuses_a_damaged_evaluation_saying_to_evaluate_again(run, capsys, monkeypatch, damage, match):
    damage(run)
    no_data(monkeypatch)
    line = refused(capsys, run, "report", str(run), "--no-data", "-o", "r.html", match=match)
    assert f"cifarkit evaluate {run}" in line
    if "classification report lacks" not in match:
        with pytest.raises(CifarkitError, match=re.escape(match)):
            load_evaluation(run)


def test_report_options_are_checked_in_the_api():
    for bad in (
        {"gradcam_images": 0},
        {"robustness_images": -5},
        {"seed": -1},
        {"batch_size": 0},
        {"severities": (9,)},
    ):
        with pytest.raises(CifarkitError):
            ReportOptions(**bad)


def test_report_names_the_test_data_of_each_run(run, capsys, monkeypatch):
    no_data(monkeypatch)
    code, _, err = run_cli(capsys, "report", str(run), "--no-data", "-o", "r.html")
    assert code == 0, err
    html = Path("r.html").read_text(encoding="utf-8")
    comparison = html[html.index('<section id="comparison"') : html.index("</section>")]
    assert "<th>test data</th>" in comparison and "<td>synthetic</td>" in comparison
    assert "of 100 images from synthetic" in html
