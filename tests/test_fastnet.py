"""FastNet: registered presets, parameter counts, BatchNorm convention, patch whitening."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from cifarkit.models import count_parameters, create_model, list_models
from cifarkit.models.fastnet import FastNet, FastNetConfig

# (name, widths, all parameters, trainable), each count derived by fastnet_counts below.
PRESETS = [
    ("fastnet_xs", (32, 128, 128), 498_104, 497_240),
    ("fastnet_s", (64, 256, 256), 1_972_792, 1_971_352),
    ("fastnet_m", (128, 384, 384), 4_606_520, 4_604_440),
    ("fastnet_l", (128, 512, 512), 7_852_856, 7_850_264),
]


def fastnet_counts(w1: int, w2: int, w3: int, classes: int = 10) -> tuple[int, int]:
    """(all, trainable) parameters of FastNet with these widths, counted from its layers.

    Whitening: a 2x2 conv from 3 to 24 channels, 288 frozen weights and 24 trainable biases. Three blocks of two
    bias-free 3x3 convs (24 -> w1 -> w1, w1 -> w2 -> w2, w2 -> w3 -> w3), each followed by BatchNorm with a frozen
    scale and a trainable bias per channel. A bias-free linear head w3 -> classes.
    """
    whiten_weights, whiten_bias = 3 * 24 * 2 * 2, 24
    convs = 9 * (24 * w1 + w1 * w1 + w1 * w2 + w2 * w2 + w2 * w3 + w3 * w3)
    bn_channels = 2 * (w1 + w2 + w3)
    total = whiten_weights + whiten_bias + convs + 2 * bn_channels + w3 * classes
    return total, total - whiten_weights - bn_channels


@pytest.mark.parametrize("name,widths,total,trainable", PRESETS)
def test_preset_counts_follow_from_the_layers(name: str, widths: tuple[int, int, int], total: int, trainable: int):
    assert fastnet_counts(*widths) == (total, trainable)


def smooth_images(n: int, seed: int = 0) -> torch.Tensor:
    """Random images in [0, 1] with neighbouring pixels and channels correlated, like photos."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 32, 32, generator=g) * 0.6 + torch.rand(n, 3, 32, 32, generator=g) * 0.4
    return F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)


@pytest.mark.parametrize("name,widths,total,trainable", PRESETS)
def test_preset_builds_counts_and_outputs_logits(name: str, widths: tuple, total: int, trainable: int) -> None:
    model = create_model(name)
    assert count_parameters(model) == total
    assert count_parameters(model, trainable_only=True) == trainable
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_presets_are_listed_and_take_num_classes() -> None:
    names = {info.name for info in list_models()}
    assert {name for name, *_ in PRESETS} <= names
    assert create_model("fastnet_xs", num_classes=7)(torch.rand(2, 3, 32, 32)).shape == (2, 7)


def test_batchnorm_uses_airbench_momentum_convention() -> None:
    bn = next(m for m in FastNet().modules() if isinstance(m, nn.BatchNorm2d))
    # airbench's 0.6 keeps 60% of the old running mean: torch momentum (weight of the new batch) 0.4.
    assert bn.momentum == pytest.approx(0.4)
    assert bn.eps == 1e-12
    assert not bn.weight.requires_grad and bn.bias.requires_grad
    x = torch.randn(8, bn.num_features, 4, 4) + 5.0
    bn.train()
    bn(x)
    assert torch.allclose(bn.running_mean, 0.4 * x.mean(dim=(0, 2, 3)), atol=1e-5)


def test_whitening_makes_patch_covariance_identity() -> None:
    model = FastNet(FastNetConfig(widths=(8, 8, 8)))
    images = smooth_images(100)
    raw = F.unfold(model.normalize(images), 2).transpose(1, 2).reshape(-1, 12)
    # Before: strongly correlated neighbouring pixels, so far from identity.
    assert (torch.cov(raw.T) - torch.eye(12)).abs().max() > 0.5
    model.data_init(images, eps=1e-9)
    with torch.no_grad():
        out = model.whiten(model.normalize(images))
    positive = out[:, :12].permute(0, 2, 3, 1).reshape(-1, 12).double()
    assert torch.allclose(torch.cov(positive.T), torch.eye(12, dtype=torch.float64), atol=1e-3)
    assert positive.mean(0).abs().max() < 1e-3
    # The second half is the exact negative, so GELU(+z) and GELU(-z) together keep z.
    assert torch.allclose(out[:, 12:], -out[:, :12], atol=1e-5)


def test_whitening_eps_caps_gain_of_weak_directions() -> None:
    model = FastNet(FastNetConfig(widths=(8, 8, 8)))
    images = smooth_images(100)
    eps = 1e-2
    model.data_init(images, eps=eps)
    normalized = model.normalize(images)
    patches = F.unfold(normalized, 2).transpose(1, 2).reshape(-1, 12).double()
    eigenvalues = torch.linalg.eigvalsh(torch.cov(patches.T)).flip(0)  # largest first
    with torch.no_grad():
        out = model.whiten(normalized)[:, :12].permute(0, 2, 3, 1).reshape(-1, 12).double()
    # Direction i comes out with variance lambda_i / (lambda_i + eps): eps tames weak directions.
    expected = eigenvalues / (eigenvalues + eps)
    assert torch.allclose(torch.cov(out.T).diag(), expected, atol=1e-3)
    assert expected[0] > 0.95 and expected[-1] < 0.5


def test_whitening_from_chunks_scaled_from_uint8_equals_whitening_from_their_floats() -> None:
    """Training hands data_init its uint8 images scaled a chunk at a time (no float copy of the set)."""
    from cifarkit.data.batches import unit_range

    images = (smooth_images(40) * 255).round().to(torch.uint8)
    from_bytes, from_floats = (FastNet(FastNetConfig(widths=(8, 8, 8))) for _ in range(2))
    from_bytes.data_init(unit_range(chunk) for chunk in images.split(16))
    from_floats.data_init((images.float() / 255).split(16))
    assert torch.equal(from_bytes.whiten.weight, from_floats.whiten.weight)
    assert torch.equal(from_bytes.whiten.bias, from_floats.whiten.bias)


def test_whitening_filters_are_frozen_and_saved() -> None:
    model = FastNet(FastNetConfig(widths=(8, 8, 8)))
    model.data_init(smooth_images(20))
    assert not model.whiten.weight.requires_grad and model.whiten.bias.requires_grad
    clone = FastNet(FastNetConfig(widths=(8, 8, 8)))
    clone.load_state_dict(model.state_dict())
    x = torch.rand(3, 3, 32, 32)
    model.eval(), clone.eval()
    assert torch.equal(model(x), clone(x))


def test_channels_last_and_contiguous_agree() -> None:
    torch.manual_seed(0)
    a = create_model("fastnet_xs", channels_last=True).eval()
    b = create_model("fastnet_xs", channels_last=False).eval()
    b.load_state_dict(a.state_dict())
    assert a.whiten.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.rand(4, 3, 32, 32)
    assert torch.allclose(a(x), b(x), atol=1e-5)


def test_identity_init_passes_input_through() -> None:
    model = FastNet(FastNetConfig(widths=(24, 32, 32)))
    conv = model.blocks[0].conv1
    x = torch.randn(2, 24, 8, 8)
    assert torch.allclose(conv(x)[:, :24], x, atol=1e-6)


def test_parameter_roles_partition_trainable_parameters() -> None:
    model = create_model("fastnet_xs")
    roles = model.parameter_roles()
    assigned = [id(p) for group in roles.values() for p in group]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert sorted(assigned) == sorted(trainable)
    assert all(p.ndim == 4 for p in roles["filters"]) and len(roles["filters"]) == 6
    assert all(p.ndim == 1 for p in roles["norm"])
    assert len(roles["whiten_bias"]) == 1 and roles["whiten_bias"][0] is model.whiten.bias


def test_gradients_reach_every_trainable_parameter() -> None:
    model = create_model("fastnet_xs")
    model.data_init(smooth_images(16))
    F.cross_entropy(model(smooth_images(8, seed=1)), torch.arange(8) % 10).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters() if p.requires_grad)


def test_whitening_stays_float32_under_bf16_autocast() -> None:
    model = create_model("fastnet_xs").eval()
    model.data_init(smooth_images(16))
    seen: list[torch.dtype] = []
    model.whiten.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    x = smooth_images(4, seed=2)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(x)
    assert seen == [torch.float32]
    full = model(x)
    assert (low.float() - full).abs().max() < 0.1 * full.abs().max()
