"""tasks/ml/optim.py: each optimizer name builds the right torch class with the
given hyperparameters and descends; each schedule gives the lr sequence worked
out by hand; clipping by norm and by value, numerically."""

from __future__ import annotations

import math

import pytest
import torch

from tasks.ml.optim import (
    OPTIMIZER_OPTIONS,
    PiecewiseConstant,
    check_optimizer_options,
    check_scheduler_options,
    clip_gradients,
    make_optimizer,
    make_scheduler,
    step_scheduler,
)


def quadratic_param() -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))


def quadratic(w: torch.Tensor) -> torch.Tensor:
    """f(w) = sum((w - c)^2), minimum 0 at c."""
    return ((w - torch.tensor([0.3, 0.1, -0.4])) ** 2).sum()


# --------------------------------------------------------------------------- optimizers

CASES = [
    ("sgd", {}, torch.optim.SGD, {"momentum": 0.0, "nesterov": False, "weight_decay": 0.0}),
    ("sgd", {"weight_decay": 0.01}, torch.optim.SGD, {"momentum": 0.0, "weight_decay": 0.01}),
    ("momentum", {}, torch.optim.SGD, {"momentum": 0.9, "nesterov": False}),
    ("momentum", {"momentum": 0.8, "nesterov": True}, torch.optim.SGD, {"momentum": 0.8, "nesterov": True}),
    ("adagrad", {"eps": 1e-6}, torch.optim.Adagrad, {"eps": 1e-6}),
    (
        "rmsprop",
        {"alpha": 0.9, "momentum": 0.5, "centered": True},
        torch.optim.RMSprop,
        {"alpha": 0.9, "momentum": 0.5, "centered": True},
    ),
    (
        "adam",
        {"betas": [0.8, 0.99], "eps": 1e-7, "amsgrad": True},
        torch.optim.Adam,
        {"betas": (0.8, 0.99), "eps": 1e-7, "amsgrad": True},
    ),
    ("adam", {}, torch.optim.Adam, {"betas": (0.9, 0.999), "weight_decay": 0.0, "amsgrad": False}),
    ("adamw", {}, torch.optim.AdamW, {"weight_decay": 0.01}),
    ("adamw", {"weight_decay": 0.1}, torch.optim.AdamW, {"weight_decay": 0.1}),
]


@pytest.mark.parametrize("name, options, cls, expected", CASES)
def test_each_name_builds_the_torch_class_with_its_hyperparameters(name, options, cls, expected):
    optimizer = make_optimizer(name, [quadratic_param()], lr=0.05, **options)
    assert type(optimizer) is cls
    group = optimizer.param_groups[0]
    assert group["lr"] == 0.05
    for key, value in expected.items():
        assert group[key] == value, key


@pytest.mark.parametrize("name", sorted(OPTIMIZER_OPTIONS))
def test_one_step_on_a_quadratic_decreases_it(name):
    w = quadratic_param()
    optimizer = make_optimizer(name, [w], lr=0.01)
    before = quadratic(w).item()
    optimizer.zero_grad()
    quadratic(w).backward()
    optimizer.step()
    assert quadratic(w).item() < before


def test_sgd_step_is_lr_times_the_gradient():
    w = quadratic_param()
    start = w.detach().clone()
    optimizer = make_optimizer("sgd", [w], lr=0.1)
    quadratic(w).backward()
    grad = w.grad.clone()
    optimizer.step()
    assert torch.allclose(w.detach(), start - 0.1 * grad)


def test_param_groups_and_generators_are_accepted():
    model = torch.nn.Linear(3, 1)
    assert len(make_optimizer("adam", model.parameters(), lr=1e-3).param_groups[0]["params"]) == 2
    groups = [{"params": [model.weight]}, {"params": [model.bias], "weight_decay": 0.0}]
    assert len(make_optimizer("adamw", groups, lr=1e-3).param_groups) == 2


@pytest.mark.parametrize(
    "name, lr, options, match",
    [
        ("lbfgs", 0.1, {}, "unknown optimizer 'lbfgs'"),
        ("adam", 0.0, {}, "'lr'"),
        ("adam", -1.0, {}, "'lr'"),
        ("sgd", 0.1, {"momentum": 0.9}, "'sgd'.*unknown option 'momentum'"),
        ("momentum", 0.1, {"momentum": 0.0}, "'momentum'.*use 'sgd'"),
        ("momentum", 0.1, {"momentum": 1.0}, "'momentum'"),
        ("momentum", 0.1, {"nesterov": "yes"}, "'nesterov'"),
        ("rmsprop", 0.1, {"alpha": 1.0}, "'alpha'"),
        ("adam", 0.1, {"betas": [0.9]}, "'betas'"),
        ("adam", 0.1, {"betas": [0.9, 1.0]}, "'betas'"),
        ("adam", 0.1, {"eps": 0.0}, "'eps'"),
        ("adamw", 0.1, {"weight_decay": -0.1}, "'weight_decay'"),
    ],
)
def test_bad_optimizer_options_raise_naming_the_option(name, lr, options, match):
    with pytest.raises(ValueError, match=match):
        check_optimizer_options(name, lr, **options)
    with pytest.raises(ValueError, match=match):
        make_optimizer(name, [quadratic_param()], lr, **options)


def test_no_parameters_is_an_error():
    with pytest.raises(ValueError, match="no parameters"):
        make_optimizer("adam", [], lr=0.1)


# --------------------------------------------------------------------------- schedules


def lr_sequence(name: str, epochs: int, base_lr: float = 1.0, losses=None, **options) -> list[float]:
    """The lr used in each epoch 0..epochs-1, stepping the schedule once per epoch."""
    w = quadratic_param()
    optimizer = make_optimizer("sgd", [w], lr=base_lr)
    scheduler = make_scheduler(name, optimizer, **options)
    lrs = []
    for epoch in range(epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()  # torch warns if a schedule steps before its optimizer ever did
        step_scheduler(scheduler, None if losses is None else losses[epoch])
    return lrs


def test_none_keeps_the_lr():
    assert lr_sequence("none", 5, base_lr=0.3) == [0.3] * 5


def test_step_schedule():
    expected = [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25]
    assert lr_sequence("step", 8, step_size=3, gamma=0.5) == pytest.approx(expected)


def test_exponential_schedule():
    assert lr_sequence("exponential", 5, base_lr=2.0, gamma=0.9) == pytest.approx([2.0 * 0.9**e for e in range(5)])


def test_cosine_schedule_follows_the_closed_form():
    base, eta_min, t_max = 0.5, 0.01, 6
    expected = [eta_min + (base - eta_min) * (1 + math.cos(math.pi * e / t_max)) / 2 for e in range(t_max + 1)]
    got = lr_sequence("cosine", t_max + 1, base_lr=base, t_max=t_max, eta_min=eta_min)
    assert got == pytest.approx(expected)
    assert got[-1] == pytest.approx(eta_min)


def test_custom_table_multiplies_the_base_lr_from_each_epoch_on():
    got = lr_sequence("custom", 7, base_lr=0.2, table={0: 1.0, 2: 0.1, 5: 0.01})
    assert got == pytest.approx([0.2, 0.2, 0.02, 0.02, 0.02, 0.002, 0.002])


def test_custom_table_factor_is_one_before_its_first_epoch():
    assert lr_sequence("custom", 4, table={2: 0.5}) == pytest.approx([1.0, 1.0, 0.5, 0.5])
    assert PiecewiseConstant({10: 0.1, 0: 1.0, 20: 0.01})(15) == 0.1  # keys need not be sorted


def test_plateau_reduces_after_patience_epochs_without_improvement_and_respects_min_lr():
    losses = [1.0, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9]
    got = lr_sequence("plateau", 10, losses=losses, factor=0.5, patience=2, min_lr=0.3)
    # improved at epochs 0-1; epochs 2, 3, 4 are 3 > patience bad epochs -> halved for
    # epoch 5; 3 more bad epochs (5-7) -> halved again, but floored at min_lr.
    assert got == pytest.approx([1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.3, 0.3])


def test_plateau_does_not_reduce_while_the_loss_improves():
    losses = [1.0 - 0.05 * e for e in range(10)]
    assert lr_sequence("plateau", 10, losses=losses, factor=0.5, patience=0) == [1.0] * 10


def test_step_scheduler_needs_the_loss_for_plateau_and_returns_the_new_lr():
    optimizer = make_optimizer("sgd", [quadratic_param()], lr=1.0)
    with pytest.raises(ValueError, match="val_loss"):
        step_scheduler(make_scheduler("plateau", optimizer), None)
    exponential = make_scheduler("exponential", optimizer, gamma=0.5)
    optimizer.step()
    assert step_scheduler(exponential, 123.0) == pytest.approx(0.5)  # the loss is ignored, not an epoch


@pytest.mark.parametrize(
    "name, options, match",
    [
        ("warmup", {}, "unknown scheduler 'warmup'"),
        ("cosine", {}, "'t_max' is required"),
        ("cosine", {"t_max": 0}, "'t_max'"),
        ("step", {"step_size": 2.5}, "'step_size'"),
        ("step", {"gamma": 0.0}, "'gamma'"),
        ("exponential", {"gamma": 1.5}, "'gamma'"),
        ("plateau", {"factor": 1.0}, "'factor'"),
        ("plateau", {"patience": -1}, "'patience'"),
        ("plateau", {"min_lr": -0.1}, "'min_lr'"),
        ("plateau", {"cooldown": 1}, "unknown option 'cooldown'"),
        ("custom", {}, "'table' is required"),
        ("custom", {"table": {}}, "'table'"),
        ("custom", {"table": {-1: 0.5}}, "'table' keys"),
        ("custom", {"table": {"ten": 0.5}}, "'table' keys"),
        ("custom", {"table": {0: 0.0}}, "'table' factors"),
    ],
)
def test_bad_scheduler_options_raise_naming_the_option(name, options, match):
    with pytest.raises(ValueError, match=match):
        check_scheduler_options(name, **options)
    with pytest.raises(ValueError, match=match):
        make_scheduler(name, make_optimizer("sgd", [quadratic_param()], lr=0.1), **options)


# --------------------------------------------------------------------------- clipping


def params_with_grads() -> list[torch.nn.Parameter]:
    """Gradients [3, 4] and [12]: global L2 norm 13."""
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(1))
    a.grad, b.grad = torch.tensor([3.0, 4.0]), torch.tensor([12.0])
    return [a, b]


def test_clip_by_norm_rescales_all_gradients_together():
    a, b = params_with_grads()
    norm = clip_gradients([a, b], "norm", 6.5)
    assert norm.item() == pytest.approx(13.0)
    assert torch.allclose(a.grad, torch.tensor([1.5, 2.0]), atol=1e-5)
    assert torch.allclose(b.grad, torch.tensor([6.0]), atol=1e-5)


def test_clip_by_norm_leaves_small_gradients_alone():
    a, b = params_with_grads()
    assert clip_gradients([a, b], "norm", 20.0).item() == pytest.approx(13.0)
    assert torch.equal(a.grad, torch.tensor([3.0, 4.0])) and torch.equal(b.grad, torch.tensor([12.0]))


def test_clip_by_value_clamps_each_element_and_returns_the_norm_before():
    a, b = params_with_grads()
    norm = clip_gradients(iter([a, b]), "value", 3.5)  # a generator is read once, correctly
    assert norm.item() == pytest.approx(13.0)
    assert torch.equal(a.grad, torch.tensor([3.0, 3.5])) and torch.equal(b.grad, torch.tensor([3.5]))


def test_no_clipping_reports_the_norm_and_changes_nothing():
    a, b = params_with_grads()
    no_grad = torch.nn.Parameter(torch.ones(3))  # parameters without a gradient are skipped
    assert clip_gradients([a, b, no_grad], "none").item() == pytest.approx(13.0)
    assert torch.equal(a.grad, torch.tensor([3.0, 4.0]))
    assert clip_gradients([no_grad], "norm", 1.0).item() == 0.0


@pytest.mark.parametrize(
    "mode, max_value, match", [("l2", 1.0, "mode"), ("norm", None, "'max_value'"), ("value", 0.0, "'max_value'")]
)
def test_bad_clipping_arguments_raise(mode, max_value, match):
    with pytest.raises(ValueError, match=match):
        clip_gradients(params_with_grads(), mode, max_value)


# --------------------------------------------------------------------------- together


def test_the_toolbox_composes_into_a_training_loop():
    """The order the lead's loop needs: loss + penalty, backward, clip, step,
    constrain; then per epoch: validate, schedule, stop."""
    from tasks.ml.losses import make_loss
    from tasks.ml.regularization import apply_constraint, weight_penalty
    from tasks.ml.stopping import EarlyStopping

    torch.manual_seed(0)
    x = torch.randn(96, 3)
    y = x @ torch.tensor([1.5, -2.0, 0.5]) + 0.1 * torch.randn(96)
    (x_train, y_train), (x_val, y_val) = (x[:64], y[:64]), (x[64:], y[64:])
    model = torch.nn.Linear(3, 1)
    loss_fn = make_loss("huber", task="regression", delta=1.0)
    optimizer = make_optimizer("adamw", model.parameters(), lr=0.05)
    scheduler = make_scheduler("cosine", optimizer, t_max=40)
    stopper = EarlyStopping(patience=5, min_delta=1e-4)
    first_val = loss_fn(model(x_val), y_val).item()
    for _ in range(40):
        for start in range(0, 64, 16):
            batch_x, batch_y = x_train[start : start + 16], y_train[start : start + 16]
            loss = loss_fn(model(batch_x), batch_y) + weight_penalty(model, l2=1e-4)
            optimizer.zero_grad()
            loss.backward()
            clip_gradients(model.parameters(), "norm", 5.0)
            optimizer.step()
            apply_constraint(model, "max_norm", max_value=2.6)
        with torch.no_grad():
            val = loss_fn(model(x_val), y_val).item()
        step_scheduler(scheduler, val)
        if stopper.update({"val_loss": val}, model):
            break
    stopper.restore(model)
    assert loss_fn(model(x_val), y_val).item() == pytest.approx(stopper.best)
    assert stopper.best < 0.2 * first_val
    assert model.weight.norm().item() <= 2.6 + 1e-5  # the true weights (norm 2.55) fit inside
