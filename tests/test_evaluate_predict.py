import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cifarkit.errors import CifarkitError
from cifarkit.evaluate import evaluate, tta_logits
from cifarkit.predict import image_to_array, predict
from cifarkit.recipes import get_recipe
from cifarkit.train import train


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from conftest import synthetic_cifar

    data = synthetic_cifar()
    run = train(get_recipe("seed_cnn3").replace(epochs=5, lr=0.003, tta="flip"), data,
                tmp_path_factory.mktemp("runs") / "run", progress=False)
    return run, data


def test_evaluate_writes_reports_and_metrics(trained_run):
    run, data = trained_run
    metrics = evaluate(run, data)
    files = {p.name for p in (run / "eval").iterdir()}
    assert {"predictions.npz", "classification_report.txt", "classification_report.json", "confusion_matrix.csv",
            "confusion_matrix.png", "confusion_matrix_normalized.png", "gallery.png"} <= files
    preds = np.load(run / "eval" / "predictions.npz")
    assert preds["probs"].shape == (100, 10) and np.allclose(preds["probs"].sum(1), 1, atol=1e-5)
    assert metrics["test_acc"] == pytest.approx((preds["probs"].argmax(1) == data.y_test).mean())
    assert metrics["test_acc"] > 0.5 and "test_acc_tta" in metrics and metrics["tta"] == "flip"
    report = json.loads((run / "eval" / "classification_report.json").read_text())
    assert set(data.classes) <= set(report) and "macro avg" in report and "weighted avg" in report
    assert report["cat"]["support"] == 10
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["test_acc"] == metrics["test_acc"] and summary["params"] == 1_084_234
    cm = (run / "eval" / "confusion_matrix.csv").read_text().splitlines()
    assert cm[0] == "actual," + ",".join(data.classes) and len(cm) == 11


def test_evaluate_rejects_non_run(tmp_path, tiny_data):
    with pytest.raises(CifarkitError, match="not a cifarkit run directory"):
        evaluate(tmp_path, tiny_data)


class FlipSymmetric(nn.Module):
    """A model that sees an image and its mirror alike."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 10, 3, padding=1)

    def forward(self, x):
        return (self.conv(x) + self.conv(x.flip(-1)).flip(-1)).mean((2, 3))


def test_tta_shapes_and_flip_symmetry():
    torch.manual_seed(0)
    model, x = FlipSymmetric().eval(), torch.rand(4, 3, 32, 32)
    plain = tta_logits(model, x, "none")
    assert tta_logits(model, x, "flip").shape == (4, 10) == tta_logits(model, x, "flip_translate").shape
    assert torch.allclose(tta_logits(model, x, "flip"), plain, atol=1e-6)
    asym = nn.Sequential(nn.Conv2d(3, 10, 3, padding=1), nn.Flatten(), nn.Linear(10 * 32 * 32, 10)).eval()
    assert not torch.allclose(tta_logits(asym, x, "flip"), asym(x))
    with pytest.raises(CifarkitError, match="TTA mode"):
        tta_logits(model, x, "rotate")


def test_image_to_array_handles_modes_and_sizes(tmp_path):
    Image.new("L", (100, 60), 128).save(tmp_path / "gray.jpg")
    rgba = Image.new("RGBA", (40, 40), (255, 0, 0, 0))
    rgba.save(tmp_path / "clear.png")
    Image.new("RGB", (32, 32), (10, 20, 30)).save(tmp_path / "x.bmp")
    gray = image_to_array(tmp_path / "gray.jpg")
    assert gray.shape == (32, 32, 3) and gray.dtype == np.uint8 and abs(int(gray[16, 16, 0]) - 128) <= 2
    assert (image_to_array(tmp_path / "clear.png") == 255).all()  # transparent -> white
    assert image_to_array(tmp_path / "x.bmp")[0, 0].tolist() == [10, 20, 30]


def test_predict_reports_bad_files_and_still_predicts_others(trained_run, tmp_path):
    run, data = trained_run
    Image.fromarray(data.x_test[0]).save(tmp_path / "good.png")
    Image.fromarray(data.x_test[0]).resize((320, 200)).convert("RGBA").save(tmp_path / "big.png")
    (tmp_path / "notes.txt").write_text("not an image")
    results = predict(run, [tmp_path / "good.png", tmp_path / "notes.txt", tmp_path / "big.png",
                            tmp_path / "missing.jpg"], top_k=3)
    assert [r.error is None for r in results] == [True, False, True, False]
    assert "not a readable image" in results[1].error and "no such file" in results[3].error
    top = results[0].top
    assert len(top) == 3 and top[0][1] >= top[1][1] >= top[2][1] and all(0 <= p <= 1 for _, p in top)
    assert results[0].to_dict()["predictions"][0]["class"] == top[0][0]
    with pytest.raises(CifarkitError, match="top-k"):
        predict(run, [tmp_path / "good.png"], top_k=11)
