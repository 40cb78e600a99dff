"""tasks/ml/losses.py: every loss against a hand (numpy) computation or a reference
implementation, the focal/CE and one-hot/sparse identities, option checks and
the task registry."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import log_loss, mean_pinball_loss

from tasks.ml.distillation import distillation_loss
from tasks.ml.losses import (
    LOSS_TASKS,
    TASK_TYPES,
    bce_loss,
    ce_loss,
    ce_onehot_loss,
    check_loss_task,
    focal_loss,
    huber_loss,
    kl_div_loss,
    log_cosh_loss,
    loss_options,
    mae_loss,
    make_loss,
    mse_loss,
    poisson_loss,
    quantile_loss,
)

RNG = np.random.default_rng(0)
# Regression: 12 predictions/targets; errors span small (< 1) and large (> 1) values.
PRED = RNG.normal(0, 2, 12)
TARGET = RNG.normal(0, 2, 12)
# Classification: 10 samples, 4 classes.
LOGITS = RNG.normal(0, 2, (10, 4))
LABELS = np.array([0, 1, 2, 3, 0, 1, 2, 3, 3, 1])
CLASS_WEIGHTS = np.array([0.5, 1.0, 2.0, 4.0])


def t(a) -> torch.Tensor:
    return torch.tensor(np.asarray(a), dtype=torch.float64)


def value(x: torch.Tensor) -> float:
    return float(x.item())


def np_log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def np_sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-z))


# --------------------------------------------------------------------------- regression


def test_mse_and_mae_match_hand_computation():
    d = PRED - TARGET
    assert value(mse_loss(t(PRED), t(TARGET))) == pytest.approx(np.mean(d**2), rel=1e-12)
    assert value(mae_loss(t(PRED), t(TARGET))) == pytest.approx(np.mean(np.abs(d)), rel=1e-12)


def test_huber_is_quadratic_inside_delta_and_linear_outside():
    delta = 0.7
    d = np.abs(PRED - TARGET)
    assert (d < delta).any() and (d > delta).any()  # both branches are exercised
    expected = np.where(d <= delta, 0.5 * d**2, delta * (d - 0.5 * delta)).mean()
    assert value(huber_loss(t(PRED), t(TARGET), delta=delta)) == pytest.approx(expected, rel=1e-12)


def test_log_cosh_matches_numpy_and_stays_finite_for_huge_errors():
    expected = np.mean(np.log(np.cosh(PRED - TARGET)))
    assert value(log_cosh_loss(t(PRED), t(TARGET))) == pytest.approx(expected, rel=1e-12)
    # cosh(1000) overflows even float64; log cosh(d) = |d| - log 2 there.
    huge = log_cosh_loss(torch.tensor([1000.0, -1000.0]), torch.zeros(2))
    assert value(huge) == pytest.approx(1000 - math.log(2), rel=1e-6)


@pytest.mark.parametrize("q", [0.1, 0.5, 0.9])
def test_quantile_matches_sklearn_pinball_loss(q):
    expected = mean_pinball_loss(TARGET, PRED, alpha=q)
    assert value(quantile_loss(t(PRED), t(TARGET), q=q)) == pytest.approx(expected, rel=1e-12)


def test_quantile_at_one_half_is_half_the_mae():
    assert value(quantile_loss(t(PRED), t(TARGET), q=0.5)) == pytest.approx(0.5 * np.mean(np.abs(PRED - TARGET)))


def test_poisson_on_log_rates_matches_closed_form():
    counts = RNG.poisson(3.0, 12).astype(float)
    expected = np.mean(np.exp(PRED) - counts * PRED)  # -log P(y | rate e^x) up to log y!
    assert value(poisson_loss(t(PRED), t(counts))) == pytest.approx(expected, rel=1e-12)
    # full adds Stirling's approximation of log y! for counts > 1 (and nothing for 0 or 1).
    stirling = np.where(
        counts > 1, counts * np.log(np.maximum(counts, 1)) - counts + 0.5 * np.log(2 * np.pi * np.maximum(counts, 1)), 0
    )
    full = value(poisson_loss(t(PRED), t(counts), full=True))
    assert full == pytest.approx(expected + stirling.mean(), rel=1e-12)


def test_column_predictions_are_reshaped_not_broadcast():
    # (N, 1) against (N,) would broadcast to (N, N) in plain torch and give a wrong number.
    column = t(PRED).unsqueeze(1)
    assert value(mse_loss(column, t(TARGET))) == pytest.approx(np.mean((PRED - TARGET) ** 2))
    with pytest.raises(ValueError, match="same shape"):
        mse_loss(t(np.zeros((6, 2))), t(TARGET))


# --------------------------------------------------------------------------- classification


def test_bce_matches_sklearn_log_loss_for_binary_column_logits():
    logits, y = PRED, (TARGET > 0).astype(float)
    expected = log_loss(y, np_sigmoid(logits), labels=[0, 1])
    assert value(bce_loss(t(logits).unsqueeze(1), t(y))) == pytest.approx(expected, rel=1e-9)


def test_bce_multilabel_with_per_label_pos_weight_matches_hand_computation():
    y = (RNG.random((10, 4)) > 0.5).astype(float)
    pos_weight = np.array([1.0, 2.0, 0.5, 3.0])
    p = np_sigmoid(LOGITS)
    expected = -np.mean(pos_weight * y * np.log(p) + (1 - y) * np.log(1 - p))
    assert value(bce_loss(t(LOGITS), t(y), pos_weight=list(pos_weight))) == pytest.approx(expected, rel=1e-9)


def test_ce_matches_sklearn_log_loss():
    probs = np.exp(np_log_softmax(LOGITS))
    expected = log_loss(LABELS, probs, labels=[0, 1, 2, 3])
    assert value(ce_loss(t(LOGITS), torch.tensor(LABELS))) == pytest.approx(expected, rel=1e-9)


def test_ce_with_class_weights_is_the_weighted_mean():
    nll = -np_log_softmax(LOGITS)[np.arange(10), LABELS]
    w = CLASS_WEIGHTS[LABELS]
    expected = (w * nll).sum() / w.sum()
    got = ce_loss(t(LOGITS), torch.tensor(LABELS), weight=list(CLASS_WEIGHTS))
    assert value(got) == pytest.approx(expected, rel=1e-12)


def test_ce_label_smoothing_matches_hand_computation():
    eps, k = 0.2, 4
    target = np.full((10, k), eps / k)
    target[np.arange(10), LABELS] += 1 - eps
    expected = -(target * np_log_softmax(LOGITS)).sum(axis=1).mean()
    assert value(ce_loss(t(LOGITS), torch.tensor(LABELS), label_smoothing=eps)) == pytest.approx(expected, rel=1e-12)


def test_ce_onehot_with_soft_targets_matches_hand_computation():
    soft = RNG.dirichlet(np.ones(4), 10)
    expected = -(soft * np_log_softmax(LOGITS)).sum(axis=1).mean()
    assert value(ce_onehot_loss(t(LOGITS), t(soft))) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("weight", [None, list(CLASS_WEIGHTS)])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_ce_onehot_on_one_hot_targets_equals_ce_on_labels(weight, smoothing):
    onehot = np.eye(4)[LABELS]
    sparse = ce_loss(t(LOGITS), torch.tensor(LABELS), weight=weight, label_smoothing=smoothing)
    dense = ce_onehot_loss(t(LOGITS), t(onehot), weight=weight, label_smoothing=smoothing)
    assert value(dense) == pytest.approx(value(sparse), rel=1e-12)


def test_ce_rejects_float_targets_and_points_to_ce_onehot():
    with pytest.raises(ValueError, match="ce_onehot"):
        ce_loss(t(LOGITS), t(LABELS))


# --------------------------------------------------------------------------- focal


def test_sigmoid_focal_with_gamma_zero_is_bce():
    y = (RNG.random((10, 4)) > 0.5).astype(float)
    focal = focal_loss(t(LOGITS), t(y), gamma=0.0)
    assert value(focal) == pytest.approx(value(F.binary_cross_entropy_with_logits(t(LOGITS), t(y))), rel=1e-12)


def test_sigmoid_focal_with_gamma_zero_and_alpha_is_alpha_weighted_bce():
    y = (RNG.random((10, 4)) > 0.5).astype(float)
    alpha = 0.25
    alpha_t = np.where(y == 1, alpha, 1 - alpha)
    expected = F.binary_cross_entropy_with_logits(t(LOGITS), t(y), weight=t(alpha_t))
    assert value(focal_loss(t(LOGITS), t(y), gamma=0.0, alpha=alpha)) == pytest.approx(value(expected), rel=1e-12)


def test_softmax_focal_with_gamma_zero_is_ce():
    focal = focal_loss(t(LOGITS), torch.tensor(LABELS), gamma=0.0)
    assert value(focal) == pytest.approx(value(F.cross_entropy(t(LOGITS), torch.tensor(LABELS))), rel=1e-12)


def test_softmax_focal_with_gamma_zero_and_class_alpha_is_weighted_ce_per_sample():
    per_sample = F.cross_entropy(t(LOGITS), torch.tensor(LABELS), weight=t(CLASS_WEIGHTS), reduction="none")
    focal = focal_loss(t(LOGITS), torch.tensor(LABELS), gamma=0.0, alpha=list(CLASS_WEIGHTS))
    assert value(focal) == pytest.approx(value(per_sample.mean()), rel=1e-12)


def test_softmax_focal_matches_the_paper_formula():
    gamma = 2.0
    p_t = np.exp(np_log_softmax(LOGITS))[np.arange(10), LABELS]
    expected = np.mean(CLASS_WEIGHTS[LABELS] * -((1 - p_t) ** gamma) * np.log(p_t))
    got = focal_loss(t(LOGITS), torch.tensor(LABELS), gamma=gamma, alpha=list(CLASS_WEIGHTS))
    assert value(got) == pytest.approx(expected, rel=1e-12)


def test_sigmoid_focal_matches_the_paper_formula_with_per_label_alpha():
    gamma, alpha = 1.5, np.array([0.25, 0.5, 0.75, 0.9])
    y = (RNG.random((10, 4)) > 0.5).astype(float)
    p = np_sigmoid(LOGITS)
    p_t = np.where(y == 1, p, 1 - p)
    alpha_t = np.where(y == 1, alpha, 1 - alpha)
    expected = np.mean(-alpha_t * (1 - p_t) ** gamma * np.log(p_t))
    assert value(focal_loss(t(LOGITS), t(y), gamma=gamma, alpha=list(alpha))) == pytest.approx(expected, rel=1e-12)


def test_focal_down_weights_easy_examples_more_than_hard_ones():
    # one easy (p_t ~ 0.98) and one hard (p_t ~ 0.12) binary example
    logits, y = torch.tensor([4.0, -2.0]), torch.tensor([1.0, 1.0])
    ce = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
    focal = torch.stack([focal_loss(logits[i : i + 1], y[i : i + 1], gamma=2.0) for i in range(2)])
    ratio = focal / ce
    assert ratio[0] < 0.001 and ratio[1] > 0.7


def test_binary_single_logit_with_integer_labels_takes_the_sigmoid_form():
    # int labels with a (N, 1) head: must not be read as 1-class softmax (always 0).
    logits, y = t(PRED).unsqueeze(1), torch.tensor((TARGET > 0).astype(np.int64))
    expected = F.binary_cross_entropy_with_logits(t(PRED), y.double())
    assert value(focal_loss(logits, y, gamma=0.0)) == pytest.approx(value(expected), rel=1e-12)


# --------------------------------------------------------------------------- kl


def test_kl_is_zero_when_the_distributions_match():
    probs = torch.softmax(t(LOGITS), dim=1)
    assert value(kl_div_loss(t(LOGITS), probs)) == pytest.approx(0.0, abs=1e-12)
    assert value(kl_div_loss(t(LOGITS), t(LOGITS), temperature=3.0, targets_are_logits=True)) == pytest.approx(
        0.0, abs=1e-12
    )


def test_kl_matches_hand_computation_with_temperature_and_zero_probabilities():
    temperature = 2.0
    p = RNG.dirichlet(np.ones(4), 10)
    p[0] = [0.0, 0.5, 0.5, 0.0]  # 0 log 0 = 0, not nan
    log_q = np_log_softmax(LOGITS / temperature)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * (np.log(p) - log_q), 0.0)
    expected = temperature**2 * terms.sum(axis=1).mean()
    assert value(kl_div_loss(t(LOGITS), t(p), temperature=temperature)) == pytest.approx(expected, rel=1e-12)


def test_kl_on_teacher_logits_equals_the_distill_stage_soft_term():
    teacher = RNG.normal(0, 2, (10, 4))
    soft_only = distillation_loss(t(LOGITS), t(teacher), torch.tensor(LABELS), temperature=4.0, alpha=1.0)
    ours = kl_div_loss(t(LOGITS), t(teacher), temperature=4.0, targets_are_logits=True)
    assert value(ours) == pytest.approx(value(soft_only), rel=1e-12)


# --------------------------------------------------------------------------- make_loss, options, registry


def test_make_loss_binds_options():
    loss_fn = make_loss("huber", delta=0.3)
    assert value(loss_fn(t(PRED), t(TARGET))) == pytest.approx(value(huber_loss(t(PRED), t(TARGET), delta=0.3)))
    assert value(loss_fn(t(PRED), t(TARGET))) != pytest.approx(value(huber_loss(t(PRED), t(TARGET))))


def test_make_loss_turns_yaml_lists_into_tensors_that_follow_the_dtype():
    loss_fn = make_loss("ce", task="multiclass", weight=[0.5, 1.0, 2.0, 4.0])
    expected = ce_loss(t(LOGITS), torch.tensor(LABELS), weight=list(CLASS_WEIGHTS))
    assert value(loss_fn(t(LOGITS), torch.tensor(LABELS))) == pytest.approx(value(expected), rel=1e-12)
    assert loss_fn(t(LOGITS).float(), torch.tensor(LABELS)).dtype == torch.float32


@pytest.mark.parametrize(
    "name, options, option",
    [
        ("huber", {"delta": 0.0}, "delta"),
        ("quantile", {"q": 0.0}, "q"),
        ("quantile", {"q": 1.0}, "q"),
        ("quantile", {"q": 1.5}, "q"),
        ("focal", {"gamma": -1.0}, "gamma"),
        ("focal", {"alpha": -0.5}, "alpha"),
        ("ce", {"label_smoothing": 1.0}, "label_smoothing"),
        ("ce", {"weight": [1.0, -1.0]}, "weight"),
        ("ce", {"weight": [0.0, 0.0]}, "weight"),
        ("ce_onehot", {"weight": 2.0}, "weight"),
        ("bce", {"pos_weight": 0.0}, "pos_weight"),
        ("kl_div", {"temperature": 0.0}, "temperature"),
        ("kl_div", {"targets_are_logits": "yes"}, "targets_are_logits"),
        ("poisson", {"full": 1}, "full"),
        ("huber", {"delta": float("nan")}, "delta"),
        ("huber", {"delta": True}, "delta"),
    ],
)
def test_bad_option_values_raise_naming_the_option(name, options, option):
    with pytest.raises(ValueError, match=f"'{name}'.*'{option}'"):
        make_loss(name, **options)


def test_the_loss_functions_check_options_when_called_directly_too():
    with pytest.raises(ValueError, match="'gamma'"):
        focal_loss(t(LOGITS), torch.tensor(LABELS), gamma=-0.5)
    with pytest.raises(ValueError, match="'q'"):
        quantile_loss(t(PRED), t(TARGET), q=1.2)


def test_unknown_loss_and_unknown_option_raise():
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        make_loss("hinge")
    with pytest.raises(ValueError, match="'mse'.*unknown option 'delta'"):
        make_loss("mse", delta=1.0)


def test_focal_alpha_above_one_is_rejected_for_sigmoid_targets():
    with pytest.raises(ValueError, match="'alpha'"):
        make_loss("focal", task="binary", alpha=2.0)
    make_loss("focal", task="multiclass", alpha=[1.0, 2.0, 3.0])  # a class weight may exceed 1
    with pytest.raises(ValueError, match="'alpha'"):
        focal_loss(t(LOGITS), t(np.zeros((10, 4))), alpha=2.0)


def test_per_class_options_of_the_wrong_length_raise_at_call():
    loss_fn = make_loss("ce", weight=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="'weight' has 3 values.*4"):
        loss_fn(t(LOGITS), torch.tensor(LABELS))


@pytest.mark.parametrize(
    "name, task",
    [
        ("mse", "multiclass"),
        ("ce", "regression"),
        ("bce", "multiclass"),
        ("ce", "multilabel"),
        ("kl_div", "regression"),
    ],
)
def test_registry_rejects_losses_that_do_not_fit_the_task(name, task):
    with pytest.raises(ValueError, match=f"'{name}' does not fit a {task}"):
        check_loss_task(name, task)
    with pytest.raises(ValueError, match="does not fit"):
        make_loss(name, task=task)


def test_registry_accepts_the_fitting_combinations_and_rejects_unknown_tasks():
    for name, tasks in LOSS_TASKS.items():
        assert tasks and tasks <= set(TASK_TYPES), name
        for task in tasks:
            check_loss_task(name, task)
    with pytest.raises(ValueError, match="task type"):
        check_loss_task("mse", "ranking")
    assert LOSS_TASKS["bce"] == {"binary", "multilabel"}
    assert LOSS_TASKS["mse"] == {"regression"}


def test_loss_options_lists_each_loss_options_with_defaults():
    assert loss_options("focal") == {"gamma": 2.0, "alpha": None}
    assert loss_options("mse") == {}


SAMPLE_INPUTS = {
    "regression": (lambda: (torch.randn(8, requires_grad=True), torch.randn(8))),
    "poisson": (lambda: (torch.randn(8, requires_grad=True), torch.poisson(torch.full((8,), 2.0)))),
    "bce": (lambda: (torch.randn(8, 3, requires_grad=True), (torch.rand(8, 3) > 0.5).float())),
    "labels": (lambda: (torch.randn(8, 3, requires_grad=True), torch.randint(0, 3, (8,)))),
    "probs": (lambda: (torch.randn(8, 3, requires_grad=True), torch.softmax(torch.randn(8, 3), 1))),
}
INPUT_KIND = {
    "mse": "regression",
    "mae": "regression",
    "huber": "regression",
    "log_cosh": "regression",
    "quantile": "regression",
    "poisson": "poisson",
    "bce": "bce",
    "ce": "labels",
    "ce_onehot": "probs",
    "focal": "labels",
    "kl_div": "probs",
}


@pytest.mark.parametrize("name", sorted(LOSS_TASKS))
def test_every_loss_gives_a_finite_scalar_with_a_gradient(name):
    torch.manual_seed(0)
    outputs, targets = SAMPLE_INPUTS[INPUT_KIND[name]]()
    loss = make_loss(name)(outputs, targets)
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert outputs.grad is not None and torch.isfinite(outputs.grad).all() and outputs.grad.abs().sum() > 0
