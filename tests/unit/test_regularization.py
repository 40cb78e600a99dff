"""tasks/ml/regularization.py: penalties equal hand computations, normalisation
layers are left out, the activation penalty adds what the hooks saw, and the
constraints hold after they are applied."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tasks.ml.regularization import (
    ActivationRegularizer,
    apply_constraint,
    check_constraint_options,
    penalized_parameters,
    weight_penalty,
)


def small_mlp() -> nn.Sequential:
    """Linear(3,2) -> BatchNorm1d -> ReLU -> Linear(2,1), with weights set by hand."""
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2), nn.ReLU(), nn.Linear(2, 1))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]]))
        model[0].bias.copy_(torch.tensor([0.5, -0.5]))
        model[1].weight.fill_(10.0)  # large, so including it would show
        model[1].bias.fill_(-7.0)
        model[3].weight.copy_(torch.tensor([[2.0, -1.0]]))
        model[3].bias.copy_(torch.tensor([4.0]))
    return model


# hand sums over the Linear layers only
W_ABS, W_SQ = (1 + 2 + 0.5 + 0 + 3 + 1) + (2 + 1), (1 + 4 + 0.25 + 0 + 9 + 1) + (4 + 1)
B_ABS, B_SQ = (0.5 + 0.5) + 4, (0.25 + 0.25) + 16


@pytest.mark.parametrize(
    "target, l1, l2, expected",
    [
        ("weights", 0.1, 0.0, 0.1 * W_ABS),
        ("weights", 0.0, 0.01, 0.01 * W_SQ),
        ("weights", 0.1, 0.01, 0.1 * W_ABS + 0.01 * W_SQ),  # elastic net
        ("biases", 0.1, 0.01, 0.1 * B_ABS + 0.01 * B_SQ),
        ("both", 0.1, 0.01, 0.1 * (W_ABS + B_ABS) + 0.01 * (W_SQ + B_SQ)),
    ],
)
def test_weight_penalty_matches_hand_computation_without_batchnorm(target, l1, l2, expected):
    assert weight_penalty(small_mlp(), l1=l1, l2=l2, target=target).item() == pytest.approx(expected)


def test_penalized_parameters_skip_normalisation_layers():
    model = small_mlp()
    chosen = {id(p) for p in penalized_parameters(model, "both")}
    assert chosen == {id(model[0].weight), id(model[0].bias), id(model[3].weight), id(model[3].bias)}
    model.append(nn.LayerNorm(1))
    assert len(penalized_parameters(model, "both")) == 4


def test_weight_penalty_gradient_is_l1_sign_plus_twice_l2_w():
    model = small_mlp()
    weight_penalty(model, l1=0.1, l2=0.01).backward()
    w = model[0].weight.detach()
    assert torch.allclose(model[0].weight.grad, 0.1 * torch.sign(w) + 0.02 * w)
    assert model[0].bias.grad is None and model[1].weight.grad is None


def test_zero_penalty_is_zero_and_bad_options_raise():
    assert weight_penalty(small_mlp()).item() == 0.0
    with pytest.raises(ValueError, match="'l1'"):
        weight_penalty(small_mlp(), l1=-0.1)
    with pytest.raises(ValueError, match="'target'"):
        weight_penalty(small_mlp(), l2=0.1, target="kernels")


# --------------------------------------------------------------------------- activation penalty


def relu_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3), nn.ReLU())


def test_activation_penalty_equals_hand_computation_per_sample():
    model, x = relu_net(), torch.randn(6, 4)
    h1 = torch.relu(model[0](x))
    h2 = torch.relu(model[2](h1))
    expected = sum(0.01 * h.abs().sum() + 0.001 * (h**2).sum() for h in (h1, h2)) / 6
    with ActivationRegularizer(l1=0.01, l2=0.001).attach(model) as reg:
        model(x)
        penalty = reg.penalty()
    assert penalty.item() == pytest.approx(expected.item(), rel=1e-6)
    assert penalty.requires_grad


def test_activation_penalty_resets_each_step_and_ignores_eval_and_detached_passes():
    model, x = relu_net(), torch.randn(6, 4)
    reg = ActivationRegularizer(l1=0.01).attach(model)
    model(x)
    first = reg.penalty().item()
    assert first > 0
    assert reg.penalty().item() == 0.0  # reset by the previous call
    model(x)
    model(x)  # two forwards before one penalty accumulate (gradient accumulation)
    assert reg.penalty().item() == pytest.approx(2 * first, rel=1e-6)
    model.eval()
    model(x)
    assert reg.penalty().item() == 0.0
    model.train()
    reg.detach()
    model(x)
    assert reg.penalty().item() == 0.0


def test_activation_regularizer_hooks_the_chosen_layer_types_only():
    model, x = relu_net(), torch.randn(6, 4)
    z1 = model[0](x)  # before attaching: calling the layers would fire the hooks
    expected = 0.5 * ((z1**2).sum() + (model[2](torch.relu(z1)) ** 2).sum()) / 6
    reg = ActivationRegularizer(l2=0.5, layer_types=(nn.Linear,)).attach(model)
    model(x)
    assert reg.penalty().item() == pytest.approx(expected.item(), rel=1e-6)


def test_activation_regularizer_refuses_a_model_without_the_layers():
    with pytest.raises(ValueError, match="no Tanh layer"):
        ActivationRegularizer(l1=0.1, layer_types=(nn.Tanh,)).attach(relu_net())


# --------------------------------------------------------------------------- constraints


def unit_norms(weight: torch.Tensor) -> torch.Tensor:
    return weight.detach().flatten(1).norm(dim=1)


def model_with_conv() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(12, 4))
    with torch.no_grad():
        model[0].weight.mul_(20)  # filters with norms well above 1
        model[3].weight.mul_(5)
        model[3].weight[0] = 0.01  # one short unit that must not change
        model[1].weight.fill_(-5.0)
    return model


def test_max_norm_caps_each_units_incoming_norm_and_leaves_short_units_alone():
    model = model_with_conv()
    short_row = model[3].weight[0].detach().clone()
    bias, bn = model[3].bias.detach().clone(), model[1].weight.detach().clone()
    assert unit_norms(model[0].weight).min() > 1 and unit_norms(model[3].weight)[1:].min() > 1
    assert apply_constraint(model, "max_norm", max_value=1.0) == 2
    for layer in (model[0], model[3]):
        assert (unit_norms(layer.weight) <= 1.0 + 1e-6).all()
    assert unit_norms(model[3].weight)[1:] == pytest.approx([1.0] * 3, rel=1e-6)
    assert torch.equal(model[3].weight[0], short_row)
    assert torch.equal(model[3].bias, bias) and torch.equal(model[1].weight, bn)  # biases and BN untouched


def test_max_norm_keeps_each_units_direction():
    model = model_with_conv()
    before = model[0].weight.detach().clone()
    apply_constraint(model, "max_norm", max_value=0.5)
    cosine = torch.nn.functional.cosine_similarity(before.flatten(1), model[0].weight.detach().flatten(1), dim=1)
    assert cosine == pytest.approx([1.0] * 3, abs=1e-6)


def test_min_max_norm_moves_norms_into_the_range():
    model = model_with_conv()
    apply_constraint(model, "min_max_norm", min_value=0.5, max_value=2.0)
    norms = torch.cat([unit_norms(model[0].weight), unit_norms(model[3].weight)])
    assert (norms >= 0.5 - 1e-6).all() and (norms <= 2.0 + 1e-6).all()
    assert unit_norms(model[3].weight)[0].item() == pytest.approx(0.5, rel=1e-6)  # the short one grew


def test_min_max_norm_with_a_rate_moves_part_of_the_way():
    layer = nn.Linear(2, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[3.0, 4.0], [0.0, 0.0]]))  # norms 5 and 0
    apply_constraint(layer, "min_max_norm", min_value=0.0, max_value=1.0, rate=0.5)
    assert unit_norms(layer.weight).tolist() == pytest.approx([0.5 * 1 + 0.5 * 5, 0.0])  # 3; zero row stays 0


def test_non_negative_zeroes_negative_weights_only():
    model = model_with_conv()
    positive = model[3].weight.detach().clamp(min=0)
    apply_constraint(model, "non_negative")
    assert (model[0].weight >= 0).all() and (model[3].weight >= 0).all()
    assert torch.equal(model[3].weight, positive)
    assert (model[1].weight == -5).all()  # BatchNorm scale is not a Linear/Conv weight


def test_none_changes_nothing():
    model = model_with_conv()
    before = [p.detach().clone() for p in model.parameters()]
    assert apply_constraint(model, "none") == 0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize(
    "kind, options, match",
    [
        ("unit_norm", {}, "unknown constraint"),
        ("max_norm", {"max_value": 0.0}, "'max_value'"),
        ("max_norm", {"min_value": 1.0}, "unknown option 'min_value'"),
        ("min_max_norm", {"min_value": 2.0, "max_value": 1.0}, "min_value <= max_value"),
        ("min_max_norm", {"rate": 0.0}, "'rate'"),
        ("min_max_norm", {"rate": 1.5}, "'rate'"),
        ("non_negative", {"max_value": 1.0}, "unknown option"),
    ],
)
def test_bad_constraint_options_raise(kind, options, match):
    with pytest.raises(ValueError, match=match):
        check_constraint_options(kind, **options)
    with pytest.raises(ValueError, match=match):
        apply_constraint(model_with_conv(), kind, **options)
