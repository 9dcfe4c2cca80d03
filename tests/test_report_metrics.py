"""Prediction metrics and analyses (shared by evaluate and the report) against values computed by hand."""

import numpy as np
import pytest

from cifarkit import analysis

# 3 classes, 8 images; confusion matrix (rows actual) = [[2, 2, 0], [0, 2, 0], [1, 0, 1]]
LABELS = np.array([0, 0, 0, 0, 1, 1, 2, 2])
PREDS = np.array([0, 0, 1, 1, 1, 1, 2, 0])
NAMES = ("a", "b", "c")


def test_predicted_classes_is_row_argmax():
    probs = np.eye(3)[PREDS] * 0.6 + 0.4 / 3
    assert analysis.predicted_classes(probs).tolist() == PREDS.tolist()


def test_confusion_matrix_rows_are_actual_classes():
    cm = analysis.confusion_matrix(LABELS, PREDS, 3)
    assert cm.tolist() == [[2, 2, 0], [0, 2, 0], [1, 0, 1]]


def test_confusion_matrix_keeps_classes_that_never_occur():
    assert analysis.confusion_matrix(np.array([0, 1]), np.array([0, 0]), 4).shape == (4, 4)


def test_normalize_rows_gives_recall_and_leaves_empty_rows_zero():
    cm = np.array([[2, 2, 0], [0, 0, 0], [1, 0, 3]])
    assert np.allclose(analysis.normalize_rows(cm), [[0.5, 0.5, 0], [0, 0, 0], [0.25, 0, 0.75]])


def test_classification_report_matches_hand_computed_values():
    report = analysis.classification_report(LABELS, PREDS, NAMES)
    # precision = diagonal / column sum, recall = diagonal / row sum
    expected = {
        "a": (2 / 3, 2 / 4, 4 / 7, 4),
        "b": (2 / 4, 2 / 2, 2 / 3, 2),
        "c": (1 / 1, 1 / 2, 2 / 3, 2),
    }
    for name, (precision, recall, f1, support) in expected.items():
        row = report[name]
        assert row["precision"] == pytest.approx(precision)
        assert row["recall"] == pytest.approx(recall)
        assert row["f1-score"] == pytest.approx(f1)
        assert row["support"] == support
    assert report["accuracy"] == pytest.approx(5 / 8)
    assert report["macro avg"]["f1-score"] == pytest.approx((4 / 7 + 2 / 3 + 2 / 3) / 3)
    assert analysis.accuracy(LABELS, PREDS) == pytest.approx(5 / 8)


def test_classification_report_text_names_every_class():
    text = analysis.classification_report_text(LABELS, PREDS, NAMES)
    assert all(name in text.split() for name in NAMES)


def test_confused_pairs_are_ordered_off_diagonal_cells_largest_first():
    cm = np.array([[9, 2, 0], [0, 7, 0], [5, 2, 8]])
    pairs = analysis.confused_pairs(cm, k=10)
    # ties (2 and 2) go by (actual, predicted); the diagonal and zero cells never appear
    assert pairs == [(2, 0, 5), (0, 1, 2), (2, 1, 2)]
    assert analysis.confused_pairs(cm, k=1) == [(2, 0, 5)]
    assert analysis.confused_pairs(np.diag([3, 4]), k=5) == []


def test_top_losses_are_the_lowest_true_class_probabilities():
    probs = np.array(
        [
            [0.9, 0.1],  # right, loss -log 0.9
            [0.2, 0.8],  # label 0: wrong, loss -log 0.2
            [0.6, 0.4],  # label 1: wrong, loss -log 0.4
            [0.05, 0.95],  # label 0: confidently wrong, loss -log 0.05
        ]
    )
    labels = np.array([0, 0, 1, 0])
    top = analysis.top_losses(probs, labels, k=3, classes=("cat", "dog"))
    assert [p.index for p in top] == [3, 1, 2] and top[0].source == "test[3]"
    assert top[0].loss == pytest.approx(-np.log(0.05))
    assert (top[0].actual, top[0].predicted, top[0].probability) == ("cat", "dog", pytest.approx(0.95))
    assert not top[0].correct and top[2].top == (("cat", pytest.approx(0.6)),)
    assert analysis.prediction_rows(top[:1]) == [
        {
            "index": 3,
            "actual": "cat",
            "predicted": "dog",
            "probability": pytest.approx(0.95),
            "loss": pytest.approx(-np.log(0.05)),
        }
    ]


def test_ranked_lists_the_most_probable_classes_first():
    assert analysis.ranked(np.array([0.2, 0.5, 0.3]), NAMES, 2) == (("b", 0.5), ("c", 0.3))
    assert analysis.Prediction("x.png", analysis.ranked(np.array([0.2, 0.5, 0.3]), NAMES, 1)).to_dict() == {
        "image": "x.png",
        "predictions": [{"class": "b", "probability": 0.5}],
    }


def test_random_predictions_are_distinct_and_reproducible():
    probs = np.random.default_rng(0).dirichlet(np.ones(10), size=50)
    labels = np.arange(50) % 10
    names = [str(c) for c in range(10)]
    first = analysis.random_predictions(probs, labels, k=12, seed=3, classes=names)
    assert len({p.index for p in first}) == 12
    assert first == analysis.random_predictions(probs, labels, k=12, seed=3, classes=names)
    assert first != analysis.random_predictions(probs, labels, k=12, seed=4, classes=names)


def test_sample_by_correctness_splits_right_and_wrong():
    probs = np.eye(3)[PREDS]
    right, wrong = analysis.sample_by_correctness(probs, LABELS, k=10, seed=0)
    assert sorted(right.tolist()) == [0, 1, 4, 5, 6]
    assert sorted(wrong.tolist()) == [2, 3, 7]
