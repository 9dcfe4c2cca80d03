"""The Python API (``import cifarkit``): light to import, the CLI's twin in files, numbers and errors, shown inline."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import cifarkit
from cifarkit.cli import main
from cifarkit.errors import CifarkitError
from cli_runner import run_cli
from conftest import synthetic_cifar

PNG = b"\x89PNG\r\n\x1a\n"
# seed_cnn3 for 2 epochs on the synthetic set, one fixed thread: the same run whichever way it is started
TRAIN = dict(epochs=2, seed=3, threads=1)
TRAIN_ARGV = ("train", "--recipe", "seed_cnn3", "--epochs", "2", "--seed", "3", "--threads", "1")


def test_import_cifarkit_is_light():
    """`import cifarkit` takes no torch, matplotlib or scikit-learn, and neither does reaching the API's names."""
    code = (
        "import sys, cifarkit\n"
        "heavy = [m for m in ('torch', 'matplotlib', 'sklearn') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "cifarkit.load_data, cifarkit.Run, cifarkit.show_images, cifarkit.summary, cifarkit.CifarkitError\n"
        "assert 'torch' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    # The whole command, interpreter start included, best of three: other programs may share the CPU.
    seconds = []
    for _ in range(3):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import cifarkit"], check=True)
        seconds.append(time.perf_counter() - start)
    assert min(seconds) < 0.5, seconds


def test_the_names_are_there_and_train_is_both_module_and_call():
    for name in cifarkit.__all__:
        assert getattr(cifarkit, name) is not None and name in dir(cifarkit)
    import cifarkit.train as training

    assert training is cifarkit.train and callable(cifarkit.train) and callable(cifarkit.train.train)
    with pytest.raises(AttributeError):
        cifarkit.no_such_name  # noqa: B018


@pytest.fixture(scope="module")
def twins(tmp_path_factory: pytest.TempPathFactory) -> tuple[cifarkit.Run, Path]:
    """One run trained through the API and through the CLI (its data patched in): the API's Run, the CLI's folder."""
    data = synthetic_cifar()
    root = tmp_path_factory.mktemp("twins")
    run = cifarkit.train("seed_cnn3", data=data, out=root / "api", progress=False, **TRAIN)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("cifarkit.cli._data", lambda args: data)
        try:
            main([*TRAIN_ARGV, "--out", str(root / "cli")])
        except SystemExit as exc:
            assert not exc.code, exc
    return run, root / "cli"


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_api_and_cli_train_the_same_run(twins):
    run, cli = twins
    assert _files(run.path) == _files(cli) and "best.safetensors" in _files(cli)
    rows = json.loads((cli / "history.json").read_text())
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in run.history] == [
        {k: v for k, v in r.items() if k != "seconds"} for r in rows
    ]
    ours, theirs = load_file(run.path / "best.safetensors"), load_file(cli / "best.safetensors")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert run.config == json.loads((cli / "config.json").read_text())
    assert (
        run.evaluation.metrics["confusion_matrix"]
        == json.loads((cli / "eval" / "metrics.json").read_text())["confusion_matrix"]
    )


@pytest.mark.parametrize(
    ("call", "argv"),
    [
        (lambda out: cifarkit.train("nope", data=synthetic_cifar(), out=out), ("train", "--recipe", "nope")),
        (
            lambda out: cifarkit.train("seed_cnn3", data=synthetic_cifar(), out=out, epochs=0),
            ("train", "--recipe", "seed_cnn3", "--epochs", "0"),
        ),
        (
            lambda out: cifarkit.train("seed_cnn3", data=synthetic_cifar(), out=out, subset=5),
            ("train", "--recipe", "seed_cnn3", "--subset", "5"),
        ),
        (lambda out: cifarkit.train(out=out, resume=True), ("train", "--resume")),
    ],
)
def test_refusals_are_the_clis_one_line_errors(call, argv, tmp_path, capsys, cli_data):
    out = tmp_path / "run"
    with pytest.raises(CifarkitError) as refused:
        call(out)
    code, _, err = run_cli(capsys, *argv, "--out", str(out))
    assert code == 2 and err.strip() == f"cifarkit: error: {refused.value}"
    assert "\n" not in str(refused.value) and not out.exists()  # nothing is created for a refused run


def test_opening_something_else_is_the_clis_error(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    for path in (tmp_path / "nothing", tmp_path / "file"):
        with pytest.raises(CifarkitError) as refused:
            cifarkit.Run(path)
        _, _, err = run_cli(capsys, "report", str(path), "--no-data", "-o", str(tmp_path / "r.html"))
        assert err.strip() == f"cifarkit: error: {refused.value}"
    with pytest.raises(CifarkitError, match="--data is empty"):
        cifarkit.load_data("")


def test_results_show_inline(twins, tmp_path):
    run, _ = twins
    for html in (run._repr_html_(), run.history._repr_html_()):
        assert "<table>" in html and "data:image/png;base64," in html
    assert run.history["val_acc"] == [row["val_acc"] for row in run.history] and len(run.history) == 2
    assert run.history.plot()._repr_png_().startswith(PNG)

    evaluation = run.evaluation
    html = evaluation._repr_html_()
    assert "test accuracy" in html and "precision" in html and html.count("<img") == 2
    assert str(evaluation).startswith(evaluation.report) and evaluation.confusion_matrix.sum() == 100
    assert evaluation.plot_confusion_matrix()._repr_png_().startswith(PNG)
    assert evaluation.gallery().save(tmp_path / "g.png").read_bytes().startswith(PNG)

    data = synthetic_cifar()
    Image.fromarray(data.x_test[0]).save(tmp_path / "img.png")
    answers = run.predict(data.x_test[:3], top_k=2)
    assert [p.source for p in answers] == ["images[0]", "images[1]", "images[2]"] and len(answers[0].top) == 2
    assert run.predict(tmp_path / "img.png")[0].top == run.predict(data.x_test[0])[0].top
    assert "<table>" in answers._repr_html_()
    with pytest.raises(CifarkitError, match="uint8 RGB pixels"):
        run.predict(data.x_test[:3].astype("float32"))

    for summary in (cifarkit.summary("seed_cnn3"), run.summary()):
        assert summary.total == 1_084_234 and "1,084,234" in summary._repr_html_() and "1,084,234" in str(summary)
    assert cifarkit.show_images(data, 8)._repr_png_().startswith(PNG)


def test_a_run_reopened_resumes_reports_and_exports(twins, tmp_path, capsys):
    run, _ = twins
    again = cifarkit.train(out=run.path, resume=True, data=synthetic_cifar())  # finished: kept as it is
    assert again.history.rows == run.history.rows and "holds its test evaluation already" in capsys.readouterr().out
    page = cifarkit.Run(run.path).report(tmp_path / "report.html", use_data=False)
    assert page.read_text().count("<section") > 3
    exported = run.export(output=tmp_path / "model.onnx", data=synthetic_cifar(), check_images=20)
    assert exported.path.is_file() and exported.parity.passed and "wrote" in str(exported)
