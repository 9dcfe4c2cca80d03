"""Expected calibration error by hand, and temperature scaling on a miscalibrated toy model."""

import numpy as np
import pytest
import torch
from torch import nn

from cifarkit import analysis
from cifarkit.report import calibration


def _two_class(confidences, correct):
    """Probabilities (N, 2) whose prediction is class 0 with the given confidence, and labels."""
    conf = np.asarray(confidences)
    probs = np.stack([conf, 1 - conf], axis=1)
    labels = np.where(correct, 0, 1)
    return probs, labels


# confidences and whether the prediction is right
CONF = [0.9, 0.9, 0.7, 0.65, 0.55, 0.55]
RIGHT = [True, False, False, True, True, False]


def test_ece_with_five_bins_by_hand():
    probs, labels = _two_class(CONF, RIGHT)
    # (0.8,1]: {0.9 R, 0.9 W} acc .5 conf .9 -> |gap| .4
    # (0.6,0.8]: {0.7 W, 0.65 R} acc .5 conf .675 -> .175
    # (0.4,0.6]: {0.55 R, 0.55 W} acc .5 conf .55 -> .05
    expected = (2 * 0.4 + 2 * 0.175 + 2 * 0.05) / 6
    assert analysis.expected_calibration_error(probs, labels, n_bins=5) == pytest.approx(expected)


def test_ece_with_default_fifteen_bins_by_hand():
    probs, labels = _two_class(CONF, RIGHT)
    # width 1/15: 0.9 in (0.867,0.933], 0.7 in (0.667,0.733], 0.65 in (0.6,0.667], 0.55 in (0.533,0.6]
    expected = (2 * 0.4 + 1 * 0.7 + 1 * 0.35 + 2 * 0.05) / 6
    assert analysis.expected_calibration_error(probs, labels) == pytest.approx(expected)


def test_bin_upper_edges_are_inclusive():
    bins = analysis.reliability_bins(*_two_class([0.6, 0.8, 1.0], [True] * 3), n_bins=5)
    assert bins.counts.tolist() == [0, 0, 1, 1, 1]


def test_ece_is_zero_when_confidence_equals_accuracy():
    probs, labels = _two_class([0.75] * 4, [True, True, True, False])
    assert analysis.expected_calibration_error(probs, labels) == pytest.approx(0.0)


def test_softmax_of_log_probs_recovers_the_probs():
    probs = np.random.default_rng(0).dirichlet(np.ones(10), size=5)
    assert np.allclose(calibration.softmax(calibration.logits_from_probs(probs)), probs)


def _toy_problem(seed, n=3000):
    """Features, labels drawn from a calibrated linear model's softmax, and that model scaled by 5."""
    generator = torch.Generator().manual_seed(seed)
    calibrated = nn.Linear(8, 10)
    with torch.no_grad():
        calibrated.weight.copy_(torch.randn(10, 8, generator=generator) * 0.6)
        calibrated.bias.zero_()
        x = torch.randn(n, 8, generator=generator)
        labels = torch.multinomial(torch.softmax(calibrated(x), 1), 1, generator=generator)[:, 0]
        overconfident_logits = 5 * calibrated(x)
    return overconfident_logits.numpy(), labels.numpy()


def test_temperature_scaling_fixes_logits_scaled_by_five():
    val_logits, val_labels = _toy_problem(seed=0)
    temperature = calibration.fit_temperature(val_logits, val_labels)
    assert 4.0 < temperature < 6.0
    before = calibration.negative_log_likelihood(val_logits, val_labels)
    after = calibration.negative_log_likelihood(val_logits, val_labels, temperature)
    assert after < before - 0.5
    # and it generalises: held-out ECE drops, accuracy (the arg-max) is unchanged
    test_logits, test_labels = _toy_problem(seed=1)
    raw = calibration.softmax(test_logits)
    scaled = calibration.softmax(test_logits, temperature)
    assert analysis.expected_calibration_error(scaled, test_labels) < 0.5 * analysis.expected_calibration_error(
        raw, test_labels
    )
    assert (scaled.argmax(1) == raw.argmax(1)).all()


def test_temperature_of_a_calibrated_model_stays_near_one():
    logits, labels = _toy_problem(seed=2)
    assert 0.85 < calibration.fit_temperature(logits / 5, labels) < 1.15
