"""tasks/ml/training.py: seeding, the early-stopped loop, class weights, the device;
and the train/distill building blocks built on it (tasks/ml/fitting.py,
tasks/ml/distillation.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import image_meta, params_section, tiny_spec

from tasks.core.errors import DistilleryError
from tasks.core.params import FitParams
from tasks.ml.distillation import distill_student
from tasks.ml.fitting import train_teacher
from tasks.ml.models import CNN, predict_logits
from tasks.ml.training import _epoch_loss, balanced_class_weights, fit, pick_device, seed_everything

META = image_meta()


def fit_params(**overrides) -> FitParams:
    values = dict(
        channels=(4,), hidden=8, dropout=0.2, lr=0.01, batch_size=16, max_epochs=3, patience=5, min_delta=0.0, seed=0
    )
    return params_section("train", **{**values, **overrides})


def toy_data(n: int = 48, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three classes told apart by which third of the image is bright."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.uniform(0, 4, (n, 1, 8, 8)).astype(np.float32)
    for i, label in enumerate(y):
        x[i, 0, :, label * 2 : label * 2 + 3] += 12
    return x, y.astype(np.int64)


def tensors(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.as_tensor(x), torch.as_tensor(y)


def ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y)


def seeded_fit(params: FitParams, seed: int):
    seed_everything(seed)
    model = CNN(tiny_spec(dropout=params.dropout))
    result = fit(model, tensors(*toy_data()), tensors(*toy_data(24, seed=1)), ce, params)
    return model, result


# --------------------------------------------------------------------------- repeatability


def test_same_seed_gives_bit_identical_weights_on_the_cpu():
    params = fit_params()
    first, first_result = seeded_fit(params, seed=3)
    again, again_result = seeded_fit(params, seed=3)
    for key, value in first.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key
    assert first_result.history == again_result.history


def test_a_different_seed_gives_different_weights():
    first, _ = seeded_fit(fit_params(), seed=3)
    other, _ = seeded_fit(fit_params(seed=4), seed=4)
    assert any(not torch.equal(v, other.state_dict()[k]) for k, v in first.state_dict().items())


# --------------------------------------------------------------------------- early stopping


def test_early_stopping_stops_and_restores_the_best_epoch():
    # min_delta so large that no epoch after the first counts as an improvement.
    params = fit_params(max_epochs=20, patience=2, min_delta=1e9)
    model, result = seeded_fit(params, seed=0)
    assert result.epochs_run == 1 + params.patience < params.max_epochs
    assert len(result.history) == result.epochs_run
    assert result.best_epoch == 1
    assert result.best_val_loss == result.history[0]["val_loss"]
    # Training went on (the last epoch is different) but the weights returned are epoch 1's.
    assert result.history[-1]["val_loss"] != result.best_val_loss
    val_loss = _epoch_loss(model, tensors(*toy_data(24, seed=1)), ce, params.batch_size)
    assert val_loss == pytest.approx(result.best_val_loss, rel=1e-6, abs=1e-7)
    assert not model.training


def test_the_best_epoch_is_the_one_with_the_lowest_val_loss():
    params = fit_params(max_epochs=6, patience=10)
    _, result = seeded_fit(params, seed=0)
    losses = [row["val_loss"] for row in result.history]
    assert result.epochs_run == params.max_epochs
    assert result.best_val_loss == min(losses)
    assert result.best_epoch == int(np.argmin(losses)) + 1


def test_fit_learns_a_separable_problem():
    params = fit_params(max_epochs=15, dropout=0.0, lr=0.02)
    model, result = seeded_fit(params, seed=0)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    x, y = toy_data(60, seed=2)
    accuracy = (predict_logits(model, x).argmax(axis=1) == y).mean()
    assert accuracy > 0.8


def test_on_epoch_sees_every_epoch_in_order():
    seen = []
    seed_everything(0)
    result = fit(
        CNN(tiny_spec()),
        tensors(*toy_data()),
        tensors(*toy_data(24, 1)),
        ce,
        fit_params(max_epochs=3),
        on_epoch=lambda row, epoch: seen.append((epoch, row)),
    )
    assert [epoch for epoch, _ in seen] == [1, 2, 3]
    assert [row for _, row in seen] == result.history


# --------------------------------------------------------------------------- failures


def test_a_huge_learning_rate_stops_with_a_plain_message():
    seed_everything(0)
    with pytest.raises(DistilleryError) as err:
        fit(CNN(tiny_spec()), tensors(*toy_data()), tensors(*toy_data(24, 1)), ce, fit_params(lr=1e30, max_epochs=5))
    assert "loss" in str(err.value) and "'lr'" in str(err.value)


def test_a_nan_loss_stops_with_a_plain_message():
    def nan_loss(logits, y):
        return F.cross_entropy(logits, y) * float("nan")

    seed_everything(0)
    with pytest.raises(DistilleryError) as err:
        fit(CNN(tiny_spec()), tensors(*toy_data()), tensors(*toy_data(24, 1)), nan_loss, fit_params(), desc="teacher")
    message = str(err.value)
    assert message.startswith("teacher:")
    assert "loss became nan at epoch 1" in message


# --------------------------------------------------------------------------- helpers


def test_balanced_class_weights_match_the_formula():
    labels = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 2])
    weights = balanced_class_weights(labels, n_classes=3)
    n, k = 10, 3
    expected = [n / (k * 6), n / (k * 3), n / (k * 1)]
    assert weights.dtype == torch.float32
    torch.testing.assert_close(weights, torch.tensor(expected, dtype=torch.float32))
    # Each class then carries the same total weight in the loss.
    totals = np.bincount(labels) * weights.numpy()
    np.testing.assert_allclose(totals, n / k, rtol=1e-6)


def test_balanced_class_weights_stay_finite_for_an_absent_class():
    weights = balanced_class_weights(np.array([0, 0, 1]), n_classes=3)
    assert weights.shape == (3,) and torch.isfinite(weights).all()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")
def test_pick_device_falls_back_to_the_cpu():
    assert pick_device() == torch.device("cpu")


def test_predict_logits_batches_agree_with_one_forward_pass():
    torch.manual_seed(0)
    model = CNN(tiny_spec()).eval()
    x, _ = toy_data(10)
    with torch.no_grad():
        whole = model(torch.as_tensor(x)).numpy()
    np.testing.assert_allclose(predict_logits(model, x, batch_size=3), whole, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- stage functions


def test_train_teacher_builds_the_configured_model():
    params = fit_params(channels=(3,), hidden=5, max_epochs=2, class_weighting="balanced")
    model, result = train_teacher(toy_data(), toy_data(24, 1), META, params)
    assert model.spec.channels == (3,) and model.spec.hidden == 5 and model.spec.n_classes == 3
    assert result.epochs_run == 2
    again, _ = train_teacher(toy_data(), toy_data(24, 1), META, params)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())


def test_distill_student_leaves_the_teacher_untouched():
    torch.manual_seed(0)
    teacher = CNN(tiny_spec(channels=(6,), hidden=12)).eval()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    params = params_section(
        "distill",
        channels=(2,),
        hidden=4,
        dropout=0.2,
        lr=0.01,
        batch_size=16,
        max_epochs=2,
        patience=5,
        min_delta=0.0,
        seed=0,
        temperature=3.0,
        alpha=0.5,
    )
    student, result = distill_student(teacher, toy_data(), toy_data(24, 1), META, params)
    assert student.spec.channels == (2,) and student.spec.hidden == 4
    assert result.epochs_run == 2
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, before[key]), key
