"""Transfer learning through the one training loop: frozen features (cached) and fine-tuning."""

import json
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import cifarkit.features as features
from cifarkit.evaluate import evaluate
from cifarkit.models import create_model
from cifarkit.recipes import get_recipe
from cifarkit.runtime import resolve_bf16
from cifarkit.train import train


@pytest.fixture
def extractions(monkeypatch, tmp_path):
    """Count backbone passes; features go to a fresh cache."""
    monkeypatch.setattr(features, "feature_cache_dir", lambda: tmp_path / "features")
    calls = []
    real = features.extract_features

    def counting(backbone, images, **kw):
        calls.append((backbone.input_size, len(images)))
        return real(backbone, images, **kw)

    monkeypatch.setattr(features, "extract_features", counting)
    return calls


def frozen(**changes):
    kwargs = {"input_size": 32, "head": "linear", "trainable_blocks": 0, "hidden": None, "dropout": None}
    return get_recipe("lite0_frozen").replace(**{"epochs": 2, "patience": 0, "model_kwargs": kwargs, **changes})


def backbone_weights(path):
    return {k: v for k, v in load_file(path).items() if k.startswith("backbone.")}


def test_frozen_features_train_the_head_only_and_reuse_the_cache(tiny_data, tmp_path, extractions):
    run = train(frozen(), tiny_data, tmp_path / "a", progress=False)
    assert extractions == [(32, 300)]  # train + validation images, once
    pretrained = create_model("efficientnet_lite0", input_size=32).state_dict()
    trained = load_file(run / "best.safetensors")
    assert all(torch.equal(pretrained[k], v) for k, v in backbone_weights(run / "best.safetensors").items())
    assert not torch.equal(pretrained["head.0.weight"], trained["head.0.weight"])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["trainable_params"] == 1280 * 10 + 10

    # Another head / learning rate: the same cached features, no backbone pass.
    train(
        frozen(lr=3e-3, model_kwargs={"input_size": 32, "head": "mlp", "hidden": 64, "trainable_blocks": 0}),
        tiny_data,
        tmp_path / "b",
        progress=False,
    )
    assert len(extractions) == 1
    # Test features are cached too: the second evaluation runs no backbone.
    first = evaluate(run, tiny_data)
    assert extractions[-1] == (32, 100)
    assert evaluate(run, tiny_data)["test_acc"] == first["test_acc"] and len(extractions) == 2
    # A new input size, or the other precision than the recipe's `auto` resolves to on this CPU, means new features.
    train(
        frozen(model_kwargs={"input_size": 48, "head": "linear", "trainable_blocks": 0, "hidden": None}),
        tiny_data,
        tmp_path / "c",
        progress=False,
    )
    assert extractions[-1] == (48, 300)
    other = not resolve_bf16("auto", torch.device("cpu"))
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore"
        )  # bf16 where it is only emulated warns that it is slow; the cache key is the point
        train(frozen(bf16=other), tiny_data, tmp_path / "d", progress=False)
    assert extractions[-1] == (32, 300) and len(extractions) == 4


def test_frozen_features_refuse_augmentation(tiny_data, tmp_path, extractions):
    with pytest.raises(Exception, match="flip, translate and cutout off"):
        train(frozen(flip=True), tiny_data, tmp_path / "a", progress=False)


def test_finetuning_changes_the_backbone(tiny_data, tmp_path):
    recipe = get_recipe("lite0_finetune").replace(
        epochs=1, batch_size=32, model_kwargs={"input_size": 32, "head": "linear"}
    )
    run = train(recipe, tiny_data, tmp_path / "ft", subset=100, progress=False)
    pretrained = create_model("efficientnet_lite0", input_size=32).state_dict()
    changed = [k for k, v in backbone_weights(run / "last.safetensors").items() if not torch.equal(pretrained[k], v)]
    assert len(changed) > 100  # conv and BatchNorm weights throughout the network moved


def test_gpu_recipe_runs_anywhere_at_224_px(tiny_data, tmp_path):
    # One step of 16 images at 224 px, forward and backward through the whole network: what running at all takes.
    recipe = get_recipe("lite0_finetune_gpu").replace(epochs=1, batch_size=16, val_fraction=0.0)
    run = train(recipe, tiny_data, tmp_path / "gpu", subset=16, progress=False, device="cpu")
    history = json.loads((run / "history.json").read_text())
    assert json.loads((run / "config.json").read_text())["model_kwargs"]["input_size"] == 224
    assert len(history) == 1 and np.isfinite(history[0]["train_loss"])


@pytest.mark.integration
def test_frozen_features_on_real_images_beat_chance(real_cifar10, tmp_path, extractions):
    data = real_cifar10
    recipe = frozen(epochs=15, model_kwargs={"input_size": 64, "head": "linear", "trainable_blocks": 0, "hidden": None})
    run = train(recipe, data, tmp_path / "run", subset=2000, progress=False)
    # Chance is 10%; ImageNet features of 1,800 images at 64 px gave 71% here.
    best = json.loads((run / "metrics.json").read_text())["best_val_acc"]
    print(f"frozen lite0 @64px, 1,800 real training images: best validation accuracy {best:.3f}")
    assert best > 0.45
    assert np.isfinite(json.loads((run / "history.json").read_text())[-1]["train_loss"])
