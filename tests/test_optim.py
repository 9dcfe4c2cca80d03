"""Learning-rate schedules, weight EMA and the whitening-bias freeze, against hand-computed values; optimiser
steps against torch's defaults."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from cifarkit import recipes
from cifarkit.errors import CifarkitError
from cifarkit.models.fastnet import FastNet, FastNetConfig
from cifarkit.optim import build_optimizer, lr_multiplier, set_learning_rates, weight_ema
from cifarkit.recipes import get_recipe, validate


@pytest.mark.parametrize(
    "schedule,total,warmup,expected",
    [
        # step: factor. Warm-up climbs (step + 1) / warmup; every schedule is 0 once the run is over.
        ("constant", 100, 0, {0: 1.0, 50: 1.0, 99: 1.0, 100: 0.0}),
        ("constant", 100, 10, {0: 0.1, 4: 0.5, 9: 1.0, 10: 1.0, 99: 1.0, 100: 0.0}),
        ("linear", 100, 0, {0: 1.0, 25: 0.75, 50: 0.5, 99: 0.01, 100: 0.0, 150: 0.0}),
        ("linear", 100, 20, {0: 0.05, 19: 1.0, 20: 1.0, 60: 0.5, 90: 0.125, 100: 0.0}),
        ("cosine", 100, 0, {0: 1.0, 25: 0.5 + 0.25 * math.sqrt(2), 50: 0.5, 75: 0.5 - 0.25 * math.sqrt(2)}),
        ("cosine", 100, 10, {4: 0.5, 10: 1.0, 55: 0.5, 100: 0.0}),
    ],
)
def test_schedules_match_hand_computed_factors(schedule, total, warmup, expected):
    factor = lr_multiplier(schedule, total, warmup)
    assert {step: factor(step) for step in expected} == pytest.approx(expected, abs=1e-12)


def test_unknown_schedule_is_refused():
    with pytest.raises(CifarkitError, match="choose constant, linear or cosine"):
        lr_multiplier("step", 10)


def test_ema_of_one_parameter_by_hand():
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = weight_ema(model, decay=0.9)
    for value in (2.0, 4.0):  # two training "steps", each followed by an update
        with torch.no_grad():
            model.weight.fill_(value)
        ema.update_parameters(model)
    # The first update copies the weights (2.0); the second gives 0.9 * 2.0 + 0.1 * 4.0.
    assert ema.module.weight.item() == pytest.approx(2.2, abs=1e-6)
    assert model.weight.item() == 4.0  # the trained model is left alone

    resumed = weight_ema(model, decay=0.9)
    resumed.load_state_dict(ema.state_dict())
    with torch.no_grad():
        model.weight.fill_(3.0)
    ema.update_parameters(model)
    resumed.update_parameters(model)
    assert resumed.module.weight.item() == ema.module.weight.item() == pytest.approx(0.9 * 2.2 + 0.1 * 3.0, abs=1e-6)


def test_ema_averages_batchnorm_statistics():
    bn = nn.BatchNorm1d(1, momentum=1.0)  # running mean = the last batch's mean
    ema = weight_ema(bn, decay=0.9)
    for mean in (2.0, 4.0):
        bn(torch.tensor([[mean - 1.0], [mean + 1.0]]))
        ema.update_parameters(bn)
    assert ema.module.running_mean.item() == pytest.approx(0.9 * 2.0 + 0.1 * 4.0, abs=1e-6)


def _tiny_fastnet() -> FastNet:
    torch.manual_seed(0)
    model = FastNet(FastNetConfig(widths=(8, 16, 16)))
    model.data_init(torch.rand(16, 3, 32, 32))
    return model


def test_whitening_bias_stops_after_its_epochs_while_the_rest_trains():
    model = _tiny_fastnet()
    recipe = get_recipe("fast90").replace(epochs=4, whiten_bias_epochs=1.5, lr=0.2)
    optimizer = build_optimizer(model, recipe)
    total = 8  # 2 steps per epoch: the bias trains for the first 1.5 * 2 = 3 steps
    lr_at = lr_multiplier(recipe.schedule, total)
    x, y = torch.rand(8, 3, 32, 32), torch.arange(8) % 10
    others = [p for p in model.parameters() if p.requires_grad and p is not model.whiten.bias]
    bias_moved, others_moved = [], []
    for step in range(total):
        set_learning_rates(optimizer, lr_at, step)
        lrs = {g["role"]: g["lr"] / g["initial_lr"] for g in optimizer.param_groups}
        # Its own linear decay to 0 over 3 steps (airbench's), against the others' over 8.
        assert lrs["whiten_bias"] == pytest.approx(max(0.0, 1 - step / 3))
        assert [lrs["norm"], lrs["head"], lrs["filters"]] == pytest.approx([1 - step / 8] * 3)
        before_bias = model.whiten.bias.detach().clone()
        before_others = [p.detach().clone() for p in others]
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        bias_moved.append(not torch.equal(model.whiten.bias, before_bias))
        others_moved.append(all(not torch.equal(p, q) for p, q in zip(others, before_others)))
    assert bias_moved == [True, True, True] + [False] * 5
    assert all(others_moved)  # down to 1/8 of their lr at the last step, but never 0


def test_without_whiten_bias_epochs_the_bias_follows_the_run_schedule():
    optimizer = build_optimizer(_tiny_fastnet(), get_recipe("fast90").replace(epochs=4, whiten_bias_epochs=0))
    set_learning_rates(optimizer, lr_multiplier("linear", 8), 4)
    assert {g["role"]: g["lr"] / g["initial_lr"] for g in optimizer.param_groups}["whiten_bias"] == 0.5


def test_role_settings_the_model_lacks_are_refused_by_validation_before_any_work():
    with pytest.raises(CifarkitError, match="whiten_bias_epochs=0"):
        validate(get_recipe("seed_cnn3").replace(whiten_bias_epochs=3))
    with pytest.raises(CifarkitError, match=r"lr_scale names roles \['head'\] that seed_cnn3 lacks"):
        validate(get_recipe("seed_cnn3").replace(lr_scale={"head": 2}))
    validate(get_recipe("fast93").replace(lr_scale={"head": 2}))  # fastnet has the role


def test_validation_builds_a_model_once_per_arguments_and_draws_no_random_numbers(monkeypatch):
    import cifarkit.models

    built: list[tuple[str, dict]] = []
    create = cifarkit.models.create_model
    monkeypatch.setattr(
        cifarkit.models, "create_model", lambda name, **kw: built.append((name, kw)) or create(name, **kw)
    )
    monkeypatch.setattr(recipes, "_CHECKED_MODELS", {})
    fast = get_recipe("fast90")
    rng = torch.random.get_rng_state()
    for recipe in (fast, fast.replace(lr=0.5, epochs=3), fast.replace(lr_scale={"head": 2})):
        validate(recipe)
    assert built == [("fastnet_xs", {"pretrained": False, **fast.model_kwargs})]  # other fields: no new build
    assert torch.equal(torch.random.get_rng_state(), rng)  # so a run's numbers do not depend on what was checked
    validate(fast.replace(model_kwargs={**fast.model_kwargs, "bn_eps": 1e-3}))  # other arguments: built again
    assert len(built) == 2
    for _ in range(2):  # a refused model is built again, and refused again
        with pytest.raises(CifarkitError, match="break its forward pass"):
            validate(fast.replace(model_kwargs={"whiten_kernel": 0}))
    assert len(built) == 4


@pytest.mark.parametrize("recipe", ["seed_cnn3", "fast90", "lite0_frozen"])
def test_multi_tensor_updates_match_the_per_parameter_loop_bit_for_bit(recipe):
    # Adamax, SGD (with Muon beside it) and AdamW's multi-tensor path: the same numbers as torch's CPU default.
    # Exact equality, not a tolerance: on a CPU both paths run the same elementwise kernels in the same order on
    # each tensor (the multi-tensor call loops over them), so no CPU kind or torch version can round them apart.
    def trained(foreach: bool) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))
        chain = build_optimizer(model, get_recipe(recipe))
        assert all(opt.defaults.get("foreach", True) for opt in chain.optimizers)  # Muon has no such option
        for opt in chain.optimizers:
            for group in opt.param_groups if "foreach" in opt.defaults else ():
                group["foreach"] = foreach
        x, y = torch.rand(16, 3, 8, 8), torch.randint(0, 10, (16,))
        for _ in range(5):
            chain.zero_grad()
            F.cross_entropy(model(x), y).backward()
            chain.step()
        return [p.detach().clone() for p in model.parameters()]

    assert all(torch.equal(a, b) for a, b in zip(trained(True), trained(False), strict=True))
