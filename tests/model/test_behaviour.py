"""Behaviour tests on trained models (Made-With-ML's model tests): invariance,
minimum functionality per class, and directional expectations for regression.
Small models trained here in seconds, on the bundled data."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from tasks.contracts.processed import X, Y
from tasks.core.params import load_params
from tasks.data.gate import gate, load_suite
from tasks.evaluation.metrics import class_logits, softmax
from tasks.ingest import ingest
from tasks.ml.checks import check_fit_params
from tasks.ml.fitting import train_teacher
from tasks.ml.models import predict_logits
from tasks.preprocess import preprocess

REPO_ROOT = Path(__file__).resolve().parents[2]


def trained(source: str, task: str, **train_overrides):
    """Ingest, gate, preprocess and train a teacher on `source`, in memory."""
    params = load_params(REPO_ROOT / "params.yaml")
    params = dataclasses.replace(
        params, task=dataclasses.replace(params.task, type=task), data=dataclasses.replace(params.data, source=source)
    )
    result = gate(ingest(params.data), task, params.validate, load_suite(REPO_ROOT / f"expectations/{source}.json"))
    assert result.outcome.success
    splits, meta = preprocess(result.valid, params.preprocess, task)
    assert meta.task == task
    train_params = dataclasses.replace(params.train, **train_overrides)
    check_fit_params(train_params, "train", task)  # as the train stage does
    model, _ = train_teacher(
        (splits["train"][X], splits["train"][Y]), (splits["val"][X], splits["val"][Y]), meta, train_params, quiet=True
    )
    return model, splits, meta


@pytest.fixture(scope="module")
def digits():
    return trained("digits", "multiclass", max_epochs=25)


@pytest.fixture(scope="module")
def diabetes():
    return trained("diabetes", "regression", max_epochs=60)


def predicted_classes(model, x: np.ndarray) -> np.ndarray:
    return softmax(class_logits(predict_logits(model, x))).argmax(axis=1)


def test_small_pixel_noise_does_not_flip_predictions(digits) -> None:
    model, splits, meta = digits
    x = splits["test"][X]
    rng = np.random.default_rng(0)
    noisy = np.clip(x + rng.normal(0, 0.3, x.shape), 0, meta.pixel_max).astype(np.float32)
    agreement = (predicted_classes(model, x) == predicted_classes(model, noisy)).mean()
    assert agreement >= 0.97


def test_every_class_meets_a_minimum_recall(digits) -> None:
    """Minimum functionality: no class, the rare one included, is left behind."""
    model, splits, meta = digits
    y, predicted = splits["test"][Y], predicted_classes(model, splits["test"][X])
    for c, name in enumerate(meta.classes):
        recall = (predicted[y == c] == c).mean()
        assert recall >= 0.6, f"class {name}: recall {recall:.2f}"


def test_a_blank_image_is_not_confidently_a_digit(digits) -> None:
    model, _, _ = digits
    probabilities = softmax(class_logits(predict_logits(model, np.zeros((1, 1, 8, 8), np.float32))))
    assert probabilities.max() < 0.99


def test_regression_follows_the_known_direction_of_bmi(diabetes) -> None:
    """Directional expectation: in the diabetes data a higher BMI means faster
    progression; raising BMI alone should raise the prediction on average."""
    model, splits, meta = diabetes
    x = splits["test"][X].copy()
    bmi = meta.feature_names.index("bmi")
    higher = x.copy()
    higher[:, bmi] += 5.0  # +5 kg/m^2
    change = predict_logits(model, higher).ravel() - predict_logits(model, x).ravel()
    assert change.mean() > 0
    assert (change > 0).mean() >= 0.8


def test_regression_beats_predicting_the_mean(diabetes) -> None:
    model, splits, _ = diabetes
    y = splits["test"][Y]
    predicted = predict_logits(model, splits["test"][X]).ravel()
    assert np.mean((predicted - y) ** 2) < np.mean((y.mean() - y) ** 2)
