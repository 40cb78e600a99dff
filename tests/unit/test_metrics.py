"""tasks/evaluation/metrics.py: softmax, expected calibration error, classification metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from tasks.evaluation.metrics import classification_metrics, expected_calibration_error, softmax


def test_softmax_rows_sum_to_one_and_match_torch():
    logits = np.random.default_rng(0).normal(0, 5, (7, 4))
    probs = softmax(logits)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(probs, torch.softmax(torch.tensor(logits), dim=1).numpy(), rtol=1e-10)


def test_softmax_is_stable_for_large_logits():
    probs = softmax(np.array([[1000.0, 999.0, -1000.0], [-5000.0, -5000.0, -5000.0]]))
    assert np.isfinite(probs).all()
    np.testing.assert_allclose(probs[1], [1 / 3] * 3)
    np.testing.assert_allclose(probs[0, :2], [1 / (1 + np.exp(-1)), np.exp(-1) / (1 + np.exp(-1))])


def test_ece_matches_a_hand_computation():
    probs = np.array(
        [
            [0.9, 0.1],  # confidence 0.9, correct  -> bin (0.8, 1.0]
            [0.7, 0.3],  # confidence 0.7, wrong    -> bin (0.6, 0.8]
            [0.3, 0.7],  # confidence 0.7, correct  -> bin (0.6, 0.8]
            [0.55, 0.45],  # confidence 0.55, correct -> bin (0.4, 0.6]
        ]
    )
    labels = np.array([0, 1, 1, 0])
    # Per bin: share of rows * |accuracy - mean confidence|.
    by_hand = 1 / 4 * abs(1.0 - 0.9) + 2 / 4 * abs(0.5 - 0.7) + 1 / 4 * abs(1.0 - 0.55)
    assert expected_calibration_error(probs, labels, n_bins=5) == pytest.approx(by_hand, rel=1e-12)


def test_ece_puts_full_confidence_in_the_last_bin():
    probs = np.array([[1.0, 0.0], [1.0, 0.0]])
    labels = np.array([0, 1])  # half right at full confidence: gap 0.5
    assert expected_calibration_error(probs, labels, n_bins=10) == pytest.approx(0.5)


def test_ece_is_zero_when_confidence_equals_accuracy():
    # Four rows at confidence 0.75, three of them right.
    probs = np.array([[0.75, 0.25]] * 4)
    labels = np.array([0, 0, 0, 1])
    assert expected_calibration_error(probs, labels, n_bins=15) == pytest.approx(0.0, abs=1e-12)


def test_classification_metrics_agree_with_sklearn():
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3])
    predicted = np.array([0, 0, 1, 1, 1, 2, 2, 0, 2, 0])  # class 3 never predicted
    probs = np.full((len(labels), 5), 0.05)
    probs[np.arange(len(labels)), predicted] = 0.8
    classes = ["a", "b", "c", "d", "e"]  # "e" never occurs at all

    scores = classification_metrics(probs, labels, classes, n_bins=5)

    assert scores["accuracy"] == pytest.approx(7 / 10)
    expected_f1 = f1_score(labels, predicted, labels=list(range(5)), average="macro", zero_division=0)
    assert scores["macro_f1"] == pytest.approx(expected_f1)
    assert scores["ece"] == pytest.approx(expected_calibration_error(probs, labels, 5))
    matrix = np.array(scores["confusion_matrix"])
    assert matrix.shape == (5, 5) and matrix.sum() == len(labels)
    assert matrix[2, 0] == 1 and matrix[3, 0] == 1 and np.trace(matrix) == 7
    assert set(classes) <= set(scores["per_class"])
    assert scores["per_class"]["b"]["recall"] == pytest.approx(1.0)
    assert scores["per_class"]["a"]["precision"] == pytest.approx(2 / 4)


def test_macro_f1_weighs_a_rare_class_like_a_common_one():
    labels = np.array([0] * 18 + [1] * 2)
    predicted = np.zeros(20, dtype=int)  # always the common class
    probs = np.eye(2)[predicted]
    scores = classification_metrics(probs, labels, ["common", "rare"])
    assert scores["accuracy"] == pytest.approx(0.9)
    assert scores["macro_f1"] < 0.5  # the rare class's F1 of 0 drags it down
