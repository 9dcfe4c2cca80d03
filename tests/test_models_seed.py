import pytest
import torch
from torch import nn

from cifarkit.errors import CifarkitError
from cifarkit.models import count_parameters, create_model, list_models


@pytest.mark.parametrize("name, params", [("seed_cnn1", 2_105_066), ("seed_cnn2", 2_105_066), ("seed_cnn3", 1_084_234)])
def test_notebook_parameter_counts(name, params):
    assert count_parameters(create_model(name)) == params


def _layer_shapes(model: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    """(layer kind, output shape without batch) for conv, pool, flatten and dense layers, in order."""
    shapes = []
    kinds = {nn.Conv2d: "conv", nn.MaxPool2d: "pool", nn.Flatten: "flatten", nn.Linear: "dense"}

    def record(kind: str):
        return lambda module, inputs, output: shapes.append((kind, tuple(output.shape[1:])))

    for m in model.modules():
        if type(m) in kinds:
            m.register_forward_hook(record(kinds[type(m)]))
    model.eval()(torch.zeros(2, 3, 32, 32))
    return shapes


def _keras(h, w, c):  # Keras reports NHWC; torch gives NCHW
    return (c, h, w)


def test_seed_cnn3_layer_shapes_match_notebook_summary():
    assert _layer_shapes(create_model("seed_cnn3")) == [
        ("conv", _keras(32, 32, 16)),
        ("conv", _keras(32, 32, 32)),
        ("pool", _keras(16, 16, 32)),
        ("conv", _keras(16, 16, 32)),
        ("conv", _keras(16, 16, 64)),
        ("pool", _keras(8, 8, 64)),
        ("flatten", (4096,)),
        ("dense", (256,)),
        ("dense", (10,)),
    ]


@pytest.mark.parametrize("name", ["seed_cnn1", "seed_cnn2"])
def test_seed_cnn1_2_layer_shapes_match_notebook_summary(name):
    assert _layer_shapes(create_model(name)) == [
        ("conv", _keras(32, 32, 16)),
        ("conv", _keras(32, 32, 32)),
        ("pool", _keras(16, 16, 32)),
        ("flatten", (8192,)),
        ("dense", (256,)),
        ("dense", (10,)),
    ]


def test_notebook_dropout_rates_and_activation():
    rates = lambda m: [d.p for d in m.modules() if isinstance(d, nn.Dropout)]  # noqa: E731
    assert rates(create_model("seed_cnn2")) == [0.2, 0.2, 0.5]
    assert rates(create_model("seed_cnn3")) == [0.25, 0.25, 0.5]
    slopes = {a.negative_slope for a in create_model("seed_cnn3").modules() if isinstance(a, nn.LeakyReLU)}
    assert slopes == {0.1}


def test_keras_initialisation_zero_bias_glorot_range():
    model = create_model("seed_cnn3")
    conv = model[0]
    fan_in, fan_out = 3 * 9, 16 * 9
    limit = (6 / (fan_in + fan_out)) ** 0.5
    assert torch.all(conv.bias == 0)
    assert conv.weight.abs().max() <= limit and conv.weight.abs().max() > 0.8 * limit


def test_unknown_model_is_a_clear_error_naming_known_ones():
    with pytest.raises(CifarkitError, match=r"unknown model 'resnet9000'; known models: .*seed_cnn3"):
        create_model("resnet9000")


def test_registry_lists_seed_models():
    names = [m.name for m in list_models()]
    assert {"seed_cnn1", "seed_cnn2", "seed_cnn3"} <= set(names)
