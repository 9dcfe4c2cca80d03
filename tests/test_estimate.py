"""Training compute in airbench94-epochs, and the work a run's time estimate multiplies."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from cifarkit.estimate import FORWARD_SHARE, run_work, training_compute
from cifarkit.models import create_model, forward_flops
from cifarkit.recipes import get_recipe


def counted_by_hand(model: nn.Module, side: int = 32) -> int:
    """2 x multiply-adds of every convolution and linear layer, from the shapes a forward pass produces."""
    total = 0

    def count(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            total += 2 * k * output.numel()
        elif isinstance(module, nn.Linear):
            total += 2 * module.in_features * module.out_features * (output.numel() // module.out_features)

    hooks = [m.register_forward_hook(count) for m in model.modules()]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, side, side))
    for hook in hooks:
        hook.remove()
    return total


@pytest.mark.parametrize("name", ["fastnet_s", "fastnet_xs", "seed_cnn3"])
def test_forward_flops_match_a_count_by_hand(name):
    model = create_model(name, pretrained=False)
    assert forward_flops(model) == counted_by_hand(model)


def test_the_unit_is_airbench94s_network_over_cifar10():
    assert forward_flops(create_model("fastnet_s")) == pytest.approx(0.236e9, rel=0.01)  # airbench94: 0.236 GFLOP
    fast93 = get_recipe("fast93")
    assert training_compute(fast93) == pytest.approx(fast93.epochs * (1 - fast93.val_fraction))


def test_compute_counts_other_models_by_flops_and_smaller_images_by_pixels():
    fast90 = get_recipe("fast90").replace(resize_start=0)  # at 32 px throughout
    ratio = counted_by_hand(create_model(fast90.model)) / counted_by_hand(create_model("fastnet_s"))
    assert training_compute(fast90) == pytest.approx(fast90.epochs * (1 - fast90.val_fraction) * ratio, rel=1e-6)
    full = get_recipe("fast93").replace(epochs=4, val_fraction=0)
    resized = full.replace(resize_start=16, resize_until=0.5)  # epochs 1-2 at 16 and 24 px, then 32
    assert training_compute(resized) == pytest.approx((0.25 + 0.5625 + 1 + 1) / 4 * training_compute(full))


def test_frozen_features_count_one_forward_pass_of_the_backbone():
    recipe = get_recipe("lite0_frozen")
    model = create_model(recipe.model, pretrained=False, **recipe.model_kwargs)
    unit = forward_flops(create_model("fastnet_s"))
    expected = (1 - recipe.val_fraction) * FORWARD_SHARE * forward_flops(model) / unit
    assert training_compute(recipe) == pytest.approx(expected)


def test_run_work_counts_epochs_validation_and_the_test_evaluation_with_its_views():
    recipe = get_recipe("fast93").replace(epochs=3, tta="none")
    assert run_work(recipe, 1000, 100, 500) == pytest.approx(3 * 1000 + (3 * 100 + 500) * FORWARD_SHARE)
    assert run_work(recipe, 1000, 100, 500, from_epoch=2) == pytest.approx(1000 + (100 + 500) * FORWARD_SHARE)
    flips = recipe.replace(tta="flip")  # the plain pass, then the image and its mirror
    assert run_work(flips, 1000, 100, 500) == pytest.approx(3 * 1000 + (3 * 100 + 500 * 3) * FORWARD_SHARE)


def test_recipes_shows_compute_and_gives_it_in_json(capsys):
    from cli_runner import run_cli

    code, out, _ = run_cli(capsys, "recipes", "-v")
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    fast93 = next(row for row in rows if row["name"] == "fast93")
    assert code == 0 and fast93["compute"] == pytest.approx(training_compute(get_recipe("fast93")), abs=1e-3)
    assert "airbench94-epochs" in out and f"{fast93['compute']:.2f} ae" in out
