"""The HTML report: built from run directories, valid, self-contained, true to the evaluation, rendered by Chromium.

Chromium comes from Debian (``apt-get install -y chromium``); the rendering test
is skipped, saying so, only where no chromium binary is on PATH.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import cifarkit.report.html
from cifarkit.data.dataset import CIFAR10, CLASSES
from cifarkit.errors import CifarkitError
from cifarkit.evaluate import evaluate
from cifarkit.models import create_model
from cifarkit.report.command import add_report_arguments, report_options, run_report
from cifarkit.report.html import build_report
from cifarkit.report.options import ReportOptions
from cifarkit.runs import load_model, load_run, save_weights

RUN_SECTIONS = (
    "classification",
    "confusion",
    "confused-pairs",
    "gallery",
    "top-losses",
    "gradcam",
    "calibration",
    "robustness",
)
OPTIONS = ReportOptions(top_losses=6, gradcam_images=3, robustness_images=24, batch_size=64)


def _data(n_test: int = 40, source: str = "fake") -> CIFAR10:
    """Random images, every class in both splits (so the runs' validation splits hold every class)."""
    rng = np.random.default_rng(0)
    n_train = 60
    images = rng.integers(0, 256, size=(n_train + n_test, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(n_train + n_test) % 10
    return CIFAR10(images[:n_train], labels[:n_train], images[n_train:], labels[n_train:], source=source)


def _write_run(path: Path, model: str, seed: int, tta: str) -> Path:
    """A run directory as training leaves it: config, history, metrics and the weights of a random ``model``."""
    path.mkdir(parents=True)
    epochs = 3
    history = [
        {
            "epoch": e,
            "train_loss": 2.3 - 0.3 * e,
            "train_acc": 0.1 + 0.1 * e,
            "val_loss": 2.3 - 0.2 * e,
            "val_acc": 0.1 + 0.08 * e,
            "lr": 0.1,
            "seconds": 1.5,
        }
        for e in range(1, epochs + 1)
    ]
    config = {
        "name": "fake",
        "model": model,
        "model_kwargs": {},
        "epochs": epochs,
        "tta": tta,
        "bf16": False,
        "val_fraction": 0.2,
        "seed": seed,
        "subset": None,
        "classes": list(CLASSES),
    }
    torch.manual_seed(seed)
    weights = create_model(model).state_dict()
    metrics = {
        "params": sum(v.numel() for v in weights.values()),
        "best_val_acc": 0.34,
        "train_seconds": 4.5,
        "epochs_run": epochs,
    }
    for name, record in (("config.json", config), ("history.json", history), ("metrics.json", metrics)):
        (path / name).write_text(json.dumps(record))
    save_weights(weights, path / "best.safetensors")
    return path


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """One report over two runs, the first evaluated beforehand, the second by the report: (html path, run dirs)."""
    root = tmp_path_factory.mktemp("runs")
    data = _data()
    runs = [_write_run(root / "cnn_a", "seed_cnn3", 0, tta="none"), _write_run(root / "cnn_b", "seed_cnn3", 1, "flip")]
    evaluate(runs[0], data)
    assert not (runs[1] / "eval").exists()
    out = build_report(runs, root / "out" / "report.html", data=data, options=OPTIONS)
    return out, runs


class _BalanceChecker(HTMLParser):
    """Records tag-nesting errors: every non-void start tag needs its own matching end tag."""

    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.ids: list[str] = []
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        self.ids += [attributes["id"]] if "id" in attributes else []
        self.urls += [v for k, v in attrs if k in ("src", "href") and v is not None]
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
        else:
            self.stack.pop()


def _parse(html: str) -> _BalanceChecker:
    checker = _BalanceChecker()
    checker.feed(html)
    checker.close()
    return checker


def test_html_is_balanced_and_has_every_section(report):
    out, runs = report
    html = out.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>")
    parsed = _parse(html)
    assert parsed.errors == [] and parsed.stack == []
    expected = {"comparison", "curves"} | {f"run{i}-{s}" for i in (1, 2) for s in RUN_SECTIONS}
    assert expected <= set(parsed.ids)
    assert len(parsed.ids) == len(set(parsed.ids))


def test_html_is_self_contained(report):
    html = report[0].read_text(encoding="utf-8")
    urls = _parse(html).urls
    assert urls and all(u.startswith(("data:image/png;base64,", "#")) for u in urls)
    assert "http:" not in html and "https:" not in html and "//" not in re.sub(r"data:[^\"]*", "", html)
    for css in re.findall(r"<style>(.*?)</style>", html, flags=re.S):
        assert "url(" not in css and "@import" not in css
    assert "<script" not in html and "<link" not in html


def _section(html: str, section_id: str) -> str:
    return re.search(rf'<section id="{section_id}"[^>]*>(.*?)</section>', html, flags=re.S).group(1)


def _table_cells(html: str) -> list[list[str]]:
    return [re.findall(r"<td>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", html)[1:]]


def test_comparison_table_shows_both_runs_and_tta_only_where_used(report):
    html, runs = report[0].read_text(encoding="utf-8"), report[1]
    cells = _table_cells(_section(html, "comparison"))
    assert [c[0] for c in cells] == ["cnn_a", "cnn_b"]
    assert cells[0][4] == "0m 04s" and cells[0][5] == "34.00 %" and cells[0][8] == "40"
    assert cells[0][7] == "—" and cells[1][7].endswith("%")
    for row, run in zip(cells, runs):
        test_acc = json.loads((run / "eval" / "metrics.json").read_text())["test_acc"]
        assert row[6] == f"{100 * test_acc:.2f} %"


def _embedded_pngs(html: str) -> list[bytes]:
    return [base64.b64decode(data) for data in re.findall(r'src="data:image/png;base64,([^"]+)"', html)]


def test_the_report_shows_what_evaluate_wrote(report):
    html, runs = report[0].read_text(encoding="utf-8"), report[1]
    for i, run in enumerate(runs, start=1):
        record = json.loads((run / "eval" / "metrics.json").read_text())
        with np.load(run / "eval" / "predictions.npz") as npz:
            analysed = npz["probs_tta"] if "probs_tta" in npz else npz["probs"]
            labels = npz["labels"]
        cm = np.zeros((10, 10), dtype=int)
        np.add.at(cm, (labels, analysed.argmax(1)), 1)
        assert record["confusion_matrix"] == cm.tolist()
        accuracy = record.get("test_acc_tta", record["test_acc"])
        assert f"Test accuracy: {100 * accuracy:.2f} % on 40 images." in _section(html, f"run{i}-classification")
        for section, figure in (("confusion", "confusion_matrix.png"), ("gallery", "gallery.png")):
            assert _embedded_pngs(_section(html, f"run{i}-{section}")) == [(run / "eval" / figure).read_bytes()]
        pairs = (run / "insight" / "confused_pairs.csv").read_text().splitlines()[1:]
        actual, predicted, count = pairs[0].split(",")[:3]
        assert int(count) == cm[CLASSES.index(actual), CLASSES.index(predicted)] == (cm - np.diag(np.diag(cm))).max()
    assert "with TTA (flip)" in _section(html, "run2") and "without test-time augmentation" in _section(html, "run1")


def test_each_section_writes_its_files_into_the_run(report):
    _, runs = report
    for run in runs:
        insight = run / "insight"
        expected = [
            "curves.png",
            "confused_pairs.csv",
            "top_losses.csv",
            "top_losses.png",
            "gradcam.json",
            "calibration.json",
            "reliability.png",
            "robustness.csv",
            "robustness.json",
            "robustness.png",
        ]
        assert all((insight / f).stat().st_size > 0 for f in expected), sorted(p.name for p in insight.iterdir())
        assert list(insight.glob("*.tmp")) == []
        calibration = json.loads((insight / "calibration.json").read_text())
        assert calibration["n_bins"] == 15 and calibration["temperature_scaling"]["temperature"] > 0
        robustness = json.loads((insight / "robustness.json").read_text())
        assert len(robustness["rows"]) == 1 + 5 * 5 and robustness["images"] == 24
        layer = json.loads((insight / "gradcam.json").read_text())["layer"]
        assert isinstance(dict(load_model(run).named_modules())[layer], nn.Conv2d)


def test_report_without_data_or_model_notes_what_is_missing(tmp_path):
    run = _write_run(tmp_path / "run", "seed_cnn3", 0, tta="none")
    evaluate(run, _data(12))
    html = build_report([run], tmp_path / "r.html", options=OPTIONS).read_text(encoding="utf-8")
    assert html.count("Needs the model and the test images.") == 2
    assert "Temperature scaling needs the model and validation images." in html
    assert (run / "insight" / "top_losses.csv").exists() and not (run / "insight" / "top_losses.png").exists()


def test_run_dir_problems_are_cifarkit_errors(tmp_path):
    data = _data(12)
    run = _write_run(tmp_path / "run", "seed_cnn3", 0, tta="none")
    with pytest.raises(CifarkitError, match="evaluate the run first"):
        build_report([run], tmp_path / "r.html", options=OPTIONS)  # not evaluated, and no data to do it
    evaluate(run, data)
    other = CIFAR10(data.x_train, data.y_train, data.x_test, (data.y_test + 1) % 10, source="other")
    with pytest.raises(CifarkitError, match="do not match the test set of the given data"):
        build_report([run], tmp_path / "r.html", data=other, options=OPTIONS)
    (run / "eval" / "predictions.npz").unlink()
    with pytest.raises(CifarkitError, match="evaluate the run first"):
        load_run(run)
    with pytest.raises(CifarkitError, match="does not exist"):
        load_run(tmp_path / "nope")


def test_cli_arguments_build_the_report(tmp_path, monkeypatch):
    data = _data(12)
    run = _write_run(tmp_path / "run", "seed_cnn3", 0, tta="none")
    parser = argparse.ArgumentParser()
    add_report_arguments(parser)
    args = parser.parse_args(
        [str(run), "-o", str(tmp_path / "x.html"), "--no-model", "--seed", "3", "--robustness-images", "5"]
    )
    assert report_options(args).seed == 3 and report_options(args).robustness_images == 5

    def refuse(_path):
        raise AssertionError("--no-model must not load a model for the report")

    monkeypatch.setattr(cifarkit.report.html, "load_model", refuse)
    assert run_report(args, data=data) == tmp_path / "x.html"
    assert (tmp_path / "x.html").exists() and (run / "eval" / "metrics.json").exists()


# --- rendering in a real browser ------------------------------------------------------------------------------------

PROBE = """<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push(String(e.message || e.target.outerHTML.slice(0, 80))), true);
window.addEventListener('load', () => {
  const images = [...document.images].map(i => ({alt: i.alt, complete: i.complete, width: i.naturalWidth}));
  const sections = [...document.querySelectorAll('section[id]')].map(
    s => ({id: s.id, height: s.getBoundingClientRect().height}));
  document.body.setAttribute('data-probe', JSON.stringify({images, sections, errors: window.__errors}));
});
</script>"""


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("no chromium on PATH: install it with `apt-get install -y chromium` to test the rendering")


def _headless(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    """Run headless Chromium (no sandbox: CI runs as root) with console messages logged to stderr."""
    command = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-extensions",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=10000",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)


class _ProbeReader(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.probe: dict | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "body" and dict(attrs).get("data-probe"):
            self.probe = json.loads(dict(attrs)["data-probe"])


def test_chromium_renders_every_section_and_decodes_every_image(report, tmp_path):
    browser = _chromium()
    html = report[0].read_text(encoding="utf-8")
    probed = tmp_path / "probed.html"
    probed.write_text(html.replace("<head>", "<head>" + PROBE, 1), encoding="utf-8")

    dumped = _headless(browser, tmp_path / "profile1", "--dump-dom", probed.as_uri())
    reader = _ProbeReader()
    reader.feed(dumped.stdout)
    probe = reader.probe
    assert probe is not None, dumped.stderr[-2000:]
    assert probe["errors"] == []
    assert len(probe["images"]) == html.count("<img ")
    assert [i for i in probe["images"] if not (i["complete"] and i["width"] > 0)] == []
    heights = {s["id"]: s["height"] for s in probe["sections"]}
    expected = ["comparison", "curves"] + [f"run{i}-{s}" for i in (1, 2) for s in RUN_SECTIONS]
    assert all(heights.get(section, 0) > 0 for section in expected), heights
    console = [line for line in dumped.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    assert console == []

    screenshot = tmp_path / "page.png"
    _headless(
        browser, tmp_path / "profile2", f"--screenshot={screenshot}", "--window-size=1280,2000", report[0].as_uri()
    )
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 10_000
