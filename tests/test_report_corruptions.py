"""Corruptions change images by their documented amounts; robustness feeds the corrupted images to the model."""

import numpy as np
import pytest
import torch
from torch import nn

from cifarkit.report.corruptions import CORRUPTIONS, PARAMETERS, SEVERITIES, corrupt
from cifarkit.report.robustness import RobustnessRow, evaluate_corruptions, mean_corruption_accuracy


def _natural(n: int = 6, seed: int = 0) -> np.ndarray:
    """Smooth random images with texture, values in [40, 175] so no documented shift clips at 0 or 255."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(60, 155, size=(n, 4, 4, 3))
    smooth = np.kron(coarse, np.ones((1, 8, 8, 1)))
    return np.clip(smooth + rng.normal(0, 12, smooth.shape), 40, 175).astype(np.uint8)


def _damage(images: np.ndarray, name: str, severity: int) -> float:
    return float(np.abs(corrupt(images, name, severity, seed=1).astype(float) - images).mean())


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_corruption_keeps_shape_and_dtype_and_is_deterministic(name):
    images = _natural()
    out = corrupt(images, name, 3, seed=7)
    assert out.shape == images.shape and out.dtype == np.uint8
    assert np.array_equal(out, corrupt(images, name, 3, seed=7))
    assert not np.array_equal(out, images)


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_damage_grows_with_severity(name):
    images = _natural()
    damage = [_damage(images, name, s) for s in SEVERITIES]
    assert all(a < b for a, b in zip(damage, damage[1:])), damage


def test_the_table_has_five_severities_per_corruption():
    assert SEVERITIES == (1, 2, 3, 4, 5)
    assert all(len(values) == 5 for values in PARAMETERS.values())


@pytest.mark.parametrize("severity", SEVERITIES)
def test_brightness_shifts_the_mean_by_the_documented_delta(severity):
    images = _natural()
    shift = corrupt(images, "brightness", severity).astype(float) - images
    assert shift.mean() == pytest.approx(PARAMETERS["brightness"][severity - 1] * 255, abs=0.51)


@pytest.mark.parametrize("severity", SEVERITIES)
def test_noise_has_the_documented_std_and_zero_mean(severity):
    gray = np.full((8, 32, 32, 3), 128, dtype=np.uint8)
    noise = corrupt(gray, "gaussian_noise", severity, seed=0).astype(float) - 128
    std = PARAMETERS["gaussian_noise"][severity - 1] * 255
    assert noise.std() == pytest.approx(std, rel=0.03)
    assert abs(noise.mean()) < 0.3


def test_noise_differs_between_seeds():
    images = _natural()
    first, second = (corrupt(images, "gaussian_noise", 1, seed=seed) for seed in (0, 1))
    assert not np.array_equal(first, second)


@pytest.mark.parametrize("severity", SEVERITIES)
def test_contrast_scales_deviations_by_the_documented_factor_and_keeps_the_mean(severity):
    images = _natural()
    out = corrupt(images, "contrast", severity).astype(float)
    factor = PARAMETERS["contrast"][severity - 1]
    for before, after in zip(images.astype(float), out):
        assert after.std() == pytest.approx(factor * before.std(), abs=0.35)
        assert after.mean() == pytest.approx(before.mean(), abs=0.3)


@pytest.mark.parametrize("name", ["gaussian_blur", "jpeg"])
def test_blur_and_jpeg_keep_the_mean(name):
    images = _natural()
    for severity in SEVERITIES:
        assert corrupt(images, name, severity).mean() == pytest.approx(images.mean(), abs=1.5)


def test_blur_of_a_constant_image_is_the_same_image():
    flat = np.full((2, 32, 32, 3), 90, dtype=np.uint8)
    assert np.array_equal(corrupt(flat, "gaussian_blur", 5), flat)


def test_blur_spreads_a_point_like_the_documented_sigma():
    point = np.zeros((1, 33, 33, 3), dtype=np.uint8)
    point[0, 16, 16] = 255
    sigma = PARAMETERS["gaussian_blur"][4]
    blurred = corrupt(point, "gaussian_blur", 5)[0, 16, :, 0].astype(float)
    # a separable Gaussian's centre is 255 / (2 pi sigma^2) (discrete kernel: within rounding and truncation)
    assert blurred[16] == pytest.approx(255 / (2 * np.pi * sigma**2), rel=0.06)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "fog", "severity": 1}, "unknown corruption"),
        ({"name": "jpeg", "severity": 6}, "severity"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        corrupt(_natural(1), **kwargs)


def test_float_or_channel_first_images_are_refused():
    with pytest.raises(ValueError, match="uint8"):
        corrupt(np.zeros((1, 32, 32, 3), dtype=np.float32), "jpeg", 1)
    with pytest.raises(ValueError, match="uint8"):
        corrupt(np.zeros((1, 3, 32, 32), dtype=np.uint8), "jpeg", 1)


class MeanThreshold(nn.Module):
    """Class 1 if the image mean is above 0.5, else class 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = (x.mean(dim=(1, 2, 3)) - 0.5) * 100
        return torch.stack([torch.zeros_like(score), score], dim=1)


def test_evaluate_corruptions_scores_the_corrupted_images():
    images = np.full((10, 8, 8, 3), 110, dtype=np.uint8)  # mean 0.431: class 0
    labels = np.zeros(10, dtype=np.int64)
    rows = evaluate_corruptions(MeanThreshold(), images, labels, corruptions=("brightness", "contrast"), batch_size=4)
    assert rows[0] == RobustnessRow("none", 0, 1.0)
    by_key = {(r.corruption, r.severity): r.accuracy for r in rows}
    # +0.05 keeps the mean below 0.5; +0.10 and more push it over
    assert [by_key["brightness", s] for s in SEVERITIES] == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert [by_key["contrast", s] for s in SEVERITIES] == [1.0] * 5
    assert mean_corruption_accuracy(rows) == {"brightness": 0.2, "contrast": 1.0}
