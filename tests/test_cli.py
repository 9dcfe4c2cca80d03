import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cifarkit import __version__
from cifarkit.cli import main


def run_cli(capsys, *argv):
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    code = 0
    try:
        main(list(argv))
    except SystemExit as e:
        code = e.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


def test_version_and_help_on_every_command(capsys):
    assert run_cli(capsys, "--version")[1].strip() == f"cifarkit {__version__}"
    for cmd in ["data", "models", "recipes", "train", "evaluate", "predict"]:
        code, out, _ = run_cli(capsys, cmd, "--help")
        assert code == 0 and "usage: cifarkit " + cmd in out


def test_models_lists_parameter_counts(capsys):
    code, out, _ = run_cli(capsys, "models")
    assert code == 0 and "seed_cnn3" in out and "1,084,234" in out and "2,105,066" in out


def test_recipes_marks_default(capsys):
    code, out, _ = run_cli(capsys, "recipes")
    assert code == 0 and all(n in out for n in ["seed_cnn1", "seed_cnn2", "seed_cnn3"]) and "*" in out


def test_bad_input_is_a_clear_error_not_a_traceback(capsys, tmp_path):
    code, _, err = run_cli(capsys, "evaluate", str(tmp_path), "--data", str(tmp_path / "nowhere"))
    assert code == 2 and err.startswith("cifarkit: error:") and "Traceback" not in err
    code, _, err = run_cli(capsys, "train", "--recipe", "nope", "--data", str(tmp_path))
    assert code == 2 and "unknown recipe 'nope'" in err
    code, _, err = run_cli(capsys, "train", "--set", "lr", "--data", str(tmp_path))
    assert code == 2 and "FIELD=VALUE" in err


def test_train_evaluate_predict_end_to_end(tmp_path, capsys, monkeypatch, tiny_data):
    # Feed the CLI the synthetic set through the data API it calls.
    monkeypatch.setattr("cifarkit.cli._data", lambda args: tiny_data)
    config = tmp_path / "cfg.toml"
    config.write_text('lr = 0.003\nflip = true\n')
    run = tmp_path / "run"
    code, out, err = run_cli(capsys, "train", "--recipe", "seed_cnn3", "--epochs", "2", "--config", str(config),
                             "--set", "translate=2", "--out", str(run))
    assert code == 0, err
    assert "test accuracy" in out and "precision" in out
    cfg = json.loads((run / "config.json").read_text())
    assert (cfg["lr"], cfg["flip"], cfg["translate"], cfg["epochs"]) == (0.003, True, 2, 2)

    Image.fromarray(tiny_data.x_test[3]).save(tmp_path / "img.png")
    (tmp_path / "bad.jpg").write_bytes(b"\x00garbage")
    code, out, _ = run_cli(capsys, "predict", str(run), str(tmp_path / "img.png"), str(tmp_path / "bad.jpg"),
                           "--json", "--top-k", "2")
    results = json.loads(out)
    assert code == 1  # one file failed, and the exit status says so
    assert len(results[0]["predictions"]) == 2 and "error" in results[1]

    html = tmp_path / "report.html"
    code, out, err = run_cli(capsys, "report", str(run), "-o", str(html), "--robustness-images", "20",
                             "--gradcam-images", "2")
    assert code == 0, err
    page = html.read_text()
    # temperature scaling ran on the run's own validation split, handed over by the CLI
    assert "temperature T (fitted on validation)" in page and "recipe seed_cnn3" in page
    assert (run / "insight" / "calibration.json").is_file()


def test_console_script_entry_point():
    out = subprocess.run([sys.executable, "-m", "cifarkit.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and __version__ in out.stdout


def test_data_info_and_show(tmp_path, capsys, monkeypatch, tiny_data):
    monkeypatch.setattr("cifarkit.cli._data", lambda args: tiny_data)
    code, out, _ = run_cli(capsys, "data", "info")
    assert code == 0 and "train: images (300, 32, 32, 3) uint8" in out and "test: images (100, 32, 32, 3)" in out
    assert out.count("airplane") == 2 and "30" in out  # 30 training images per class
    png = tmp_path / "grid.png"
    code, out, _ = run_cli(capsys, "data", "show", "-o", str(png), "--count", "8")
    assert code == 0 and Image.open(png).size[0] > 100


def test_data_from_a_missing_path_says_where_to_put_it(tmp_path, capsys):
    code, _, err = run_cli(capsys, "data", "info", "--data", str(tmp_path / "nope"))
    assert code == 2 and "nope" in err and "Traceback" not in err
