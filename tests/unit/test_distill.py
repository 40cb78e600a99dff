"""tasks/ml/distillation.py: the Hinton distillation loss against a hand computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tasks.ml.distillation import distillation_loss


def np_log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def hand_loss(student: np.ndarray, teacher: np.ndarray, y: np.ndarray, t: float, alpha: float) -> float:
    log_p_student = np_log_softmax(student / t)
    log_p_teacher = np_log_softmax(teacher / t)
    # KL(teacher || student), summed over classes, averaged over the batch.
    kl = (np.exp(log_p_teacher) * (log_p_teacher - log_p_student)).sum(axis=1).mean()
    cross_entropy = -np_log_softmax(student)[np.arange(len(y)), y].mean()
    return alpha * t * t * kl + (1 - alpha) * cross_entropy


@pytest.fixture
def logits():
    rng = np.random.default_rng(0)
    student = rng.normal(0, 3, (6, 4))
    teacher = rng.normal(0, 3, (6, 4))
    y = rng.integers(0, 4, 6)
    return student, teacher, y


@pytest.mark.parametrize(("temperature", "alpha"), [(4.0, 0.7), (1.0, 0.5), (2.5, 1.0), (3.0, 0.0)])
def test_distillation_loss_matches_a_hand_computation(logits, temperature, alpha):
    student, teacher, y = logits
    got = distillation_loss(
        torch.tensor(student), torch.tensor(teacher), torch.tensor(y), temperature=temperature, alpha=alpha
    )
    assert got.item() == pytest.approx(hand_loss(student, teacher, y, temperature, alpha), rel=1e-10)


def test_alpha_zero_is_plain_cross_entropy(logits):
    student, teacher, y = logits
    got = distillation_loss(torch.tensor(student), torch.tensor(teacher), torch.tensor(y), temperature=4.0, alpha=0.0)
    by_hand = -np_log_softmax(student)[np.arange(len(y)), y].mean()
    assert got.item() == pytest.approx(by_hand, rel=1e-10)
    # The teacher does not matter then.
    other = distillation_loss(
        torch.tensor(student), torch.tensor(-teacher), torch.tensor(y), temperature=4.0, alpha=0.0
    )
    assert other.item() == got.item()


def test_the_soft_term_vanishes_when_the_student_matches_the_teacher(logits):
    _, teacher, y = logits
    got = distillation_loss(torch.tensor(teacher), torch.tensor(teacher), torch.tensor(y), temperature=4.0, alpha=1.0)
    assert got.item() == pytest.approx(0.0, abs=1e-12)


def test_the_soft_term_is_scaled_by_t_squared(logits):
    # At alpha=1 the loss is T^2 times the KL of the softened distributions.
    student, teacher, y = logits
    t = 3.0
    p_teacher = torch.softmax(torch.tensor(teacher) / t, dim=1)
    p_student = torch.softmax(torch.tensor(student) / t, dim=1)
    kl = (p_teacher * (p_teacher.log() - p_student.log())).sum(dim=1).mean().item()
    got = distillation_loss(torch.tensor(student), torch.tensor(teacher), torch.tensor(y), temperature=t, alpha=1.0)
    assert kl > 0
    assert got.item() == pytest.approx(t * t * kl, rel=1e-9)


def test_the_loss_has_gradients_for_the_student_only(logits):
    student, teacher, y = logits
    s = torch.tensor(student, requires_grad=True)
    tch = torch.tensor(teacher, requires_grad=False)
    distillation_loss(s, tch, torch.tensor(y), temperature=2.0, alpha=0.5).backward()
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
