"""Real CIFAR-10 from $CIFARKIT_DATA (set by .ci/run): train briefly, evaluate on the full test set."""
import json

import pytest

from cifarkit.data import load_cifar10
from cifarkit.evaluate import evaluate
from cifarkit.recipes import get_recipe
from cifarkit.train import train


@pytest.mark.integration
def test_short_training_on_real_images_beats_chance(real_data_path, tmp_path):
    data = load_cifar10(real_data_path)
    assert data.x_train.shape == (50_000, 32, 32, 3) and data.x_test.shape == (10_000, 32, 32, 3)
    recipe = get_recipe("seed_cnn3").replace(epochs=1, lr=0.002, flip=True)
    run = train(recipe, data, tmp_path / "run", subset=4000, progress=False)
    metrics = evaluate(run, data)
    # Chance is 10%; one epoch on 3,600 images reaches about 30% (measured: see the README).
    assert metrics["test_acc"] > 0.22
    assert json.loads((run / "config.json").read_text())["subset"] == 4000
