"""Optimizers, learning-rate schedules and gradient clipping, by name from params.yaml.

    optimizer = make_optimizer("adamw", model.parameters(), lr=1e-3, weight_decay=0.01)
    scheduler = make_scheduler("cosine", optimizer, t_max=max_epochs)
    for epoch in ...:
        for batch in ...:
            loss.backward()
            clip_gradients(model.parameters(), "norm", 1.0)
            optimizer.step()
        step_scheduler(scheduler, val_loss)   # once per epoch, after validation

Every schedule here is epoch-based: step it once per epoch, never per batch.
Options are checked before anything is built, and a bad one raises ValueError
naming the optimizer or schedule and the option; `check_optimizer_options` and
`check_scheduler_options` run the same checks for config validation, without a
model.
"""

from __future__ import annotations

import bisect
import math
from typing import Any, Iterable, Mapping, Optional, Union

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, ReduceLROnPlateau

Scheduler = Union[LRScheduler, ReduceLROnPlateau]
_REQUIRED = object()  # marks an option with no sensible default

# Each optimizer's options and their defaults (torch's, except where noted).
OPTIMIZER_OPTIONS: dict[str, dict[str, Any]] = {
    "sgd": {"weight_decay": 0.0},  # plain SGD: momentum is fixed at 0
    "momentum": {"momentum": 0.9, "nesterov": False, "weight_decay": 0.0},  # 0.9: the usual choice
    "adagrad": {"eps": 1e-10, "weight_decay": 0.0},
    "rmsprop": {"alpha": 0.99, "momentum": 0.0, "centered": False, "eps": 1e-8, "weight_decay": 0.0},
    "adam": {"betas": (0.9, 0.999), "eps": 1e-8, "amsgrad": False, "weight_decay": 0.0},
    "adamw": {"betas": (0.9, 0.999), "eps": 1e-8, "amsgrad": False, "weight_decay": 0.01},
}

SCHEDULER_OPTIONS: dict[str, dict[str, Any]] = {
    "none": {},
    "step": {"step_size": 10, "gamma": 0.1},  # lr * gamma every step_size epochs
    "exponential": {"gamma": 0.95},  # lr * gamma every epoch
    "cosine": {"t_max": _REQUIRED, "eta_min": 0.0},  # t_max: usually max_epochs
    "custom": {"table": _REQUIRED},  # {epoch: factor of the base lr}
    "plateau": {"factor": 0.1, "patience": 10, "min_lr": 0.0},  # steps on the validation loss
}


# --------------------------------------------------------------------------- checks


def _fail(kind: str, name: str, option: str, rule: str, value: Any) -> ValueError:
    return ValueError(f"{kind} '{name}': option '{option}' {rule}, got {value!r}")


def _is_number(value: Any) -> bool:
    """A finite int or float; YAML's true/false are not numbers here."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def _number(kind: str, name: str, option: str, value: Any) -> float:
    if not _is_number(value):
        raise _fail(kind, name, option, "must be a finite number", value)
    return float(value)


def _integer(kind: str, name: str, option: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _fail(kind, name, option, f"must be an integer >= {minimum}", value)
    return value


def _merge(kind: str, name: str, table: Mapping[str, Mapping[str, Any]], options: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults overlaid with `options`; unknown names and missing required options raise."""
    if name not in table:
        raise ValueError(f"unknown {kind} {name!r}; choose one of {sorted(table)}")
    defaults = table[name]
    unknown = [key for key in options if key not in defaults]
    if unknown:
        raise ValueError(f"{kind} '{name}': unknown option '{unknown[0]}' (allowed: {sorted(defaults) or 'none'})")
    merged = {**defaults, **options}
    missing = [key for key, value in merged.items() if value is _REQUIRED]
    if missing:
        raise ValueError(f"{kind} '{name}': option '{missing[0]}' is required")
    return merged


def check_optimizer_options(name: str, lr: float, **options: Any) -> dict[str, Any]:
    """Validate an optimizer's name, lr and options; return the options with defaults filled in."""
    merged = _merge("optimizer", name, OPTIMIZER_OPTIONS, options)
    if _number("optimizer", name, "lr", lr) <= 0:
        raise _fail("optimizer", name, "lr", "must be > 0", lr)
    for option, value in merged.items():
        if option in ("nesterov", "centered", "amsgrad"):
            if not isinstance(value, bool):
                raise _fail("optimizer", name, option, "must be true or false", value)
        elif option == "betas":
            if not isinstance(value, (list, tuple)) or len(value) != 2:
                raise _fail("optimizer", name, option, "must be two numbers [beta1, beta2]", value)
            if not all(0 <= _number("optimizer", name, option, b) < 1 for b in value):
                raise _fail("optimizer", name, option, "must each lie in [0, 1)", value)
            merged[option] = tuple(float(b) for b in value)
        else:
            number = _number("optimizer", name, option, value)
            if option == "weight_decay" and number < 0:
                raise _fail("optimizer", name, option, "must be >= 0", value)
            if option == "eps" and number <= 0:
                raise _fail("optimizer", name, option, "must be > 0", value)
            if option == "alpha" and not 0 < number < 1:
                raise _fail("optimizer", name, option, "(the squared-gradient decay) must lie in (0, 1)", value)
            if option == "momentum" and not (0 < number < 1 if name == "momentum" else 0 <= number < 1):
                bounds = "(0, 1); use 'sgd' for none" if name == "momentum" else "[0, 1)"
                raise _fail("optimizer", name, option, f"must lie in {bounds}", value)
    return merged


def check_scheduler_options(name: str, **options: Any) -> dict[str, Any]:
    """Validate a schedule's name and options; return them with defaults filled in."""
    merged = _merge("scheduler", name, SCHEDULER_OPTIONS, options)
    for option, value in merged.items():
        if option in ("step_size", "t_max"):
            _integer("scheduler", name, option, value, minimum=1)
        elif option == "patience":
            _integer("scheduler", name, option, value, minimum=0)
        elif option == "gamma":
            if not 0 < _number("scheduler", name, option, value) <= 1:
                raise _fail("scheduler", name, option, "(the decay factor) must lie in (0, 1]", value)
        elif option == "factor":
            if not 0 < _number("scheduler", name, option, value) < 1:
                raise _fail("scheduler", name, option, "(the reduction factor) must lie in (0, 1)", value)
        elif option in ("eta_min", "min_lr"):
            if _number("scheduler", name, option, value) < 0:
                raise _fail("scheduler", name, option, "must be >= 0", value)
        elif option == "table":
            merged[option] = PiecewiseConstant(value).table
    return merged


# --------------------------------------------------------------------------- optimizers


def make_optimizer(name: str, parameters: Iterable[Any], lr: float, **options: Any) -> Optimizer:
    """The torch optimizer `name` over `parameters` (tensors or param-group dicts).

    sgd: plain gradient descent. momentum: SGD with heavy-ball (or `nesterov`)
    momentum. adagrad: per-parameter lr shrinking with the summed squared
    gradient (good for sparse features, decays too fast for long runs).
    rmsprop: like adagrad with a moving average (`alpha`); `centered` divides by
    the variance instead of the second moment. adam: rmsprop plus momentum with
    bias correction. adamw: adam with weight decay applied to the weights
    directly instead of through the gradient, so it is not scaled down by the
    adaptive denominator (Loshchilov & Hutter 2019). In the others,
    `weight_decay` is an L2 term added to the gradient."""
    opts = check_optimizer_options(name, lr, **options)
    parameters = list(parameters)
    if not parameters:
        raise ValueError(f"optimizer '{name}': got no parameters to optimize")
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=0.0, weight_decay=opts["weight_decay"])
    if name == "momentum":
        return torch.optim.SGD(parameters, lr=lr, **opts)
    if name == "adagrad":
        return torch.optim.Adagrad(parameters, lr=lr, **opts)
    if name == "rmsprop":
        return torch.optim.RMSprop(parameters, lr=lr, **opts)
    if name == "adam":
        return torch.optim.Adam(parameters, lr=lr, **opts)
    return torch.optim.AdamW(parameters, lr=lr, **opts)


# --------------------------------------------------------------------------- schedules


class PiecewiseConstant:
    """lr factor as a step function of the epoch: {0: 1.0, 10: 0.1, 20: 0.01}
    trains epochs 0-9 at the base lr, 10-19 at a tenth, 20 on at a hundredth.

    Epochs count from 0 (the number finished before this one), as in torch's
    LambdaLR and Keras' LearningRateScheduler. Before the first key the factor
    is 1. A class rather than a lambda so the schedule can be pickled."""

    def __init__(self, table: Mapping[int, float]):
        where = "scheduler 'custom': option 'table'"
        if not isinstance(table, Mapping) or not table:
            raise ValueError(f"{where} must be a non-empty mapping {{epoch: factor}}, got {table!r}")
        for epoch, factor in table.items():
            if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
                raise ValueError(f"{where} keys must be epochs (integers >= 0), got {epoch!r}")
            if not (_is_number(factor) and factor > 0):
                raise ValueError(f"{where} factors must be numbers > 0, got {factor!r} at epoch {epoch}")
        self.table = {int(e): float(table[e]) for e in sorted(table)}
        self._epochs = list(self.table)

    def __call__(self, epoch: int) -> float:
        i = bisect.bisect_right(self._epochs, epoch) - 1
        return self.table[self._epochs[i]] if i >= 0 else 1.0

    def __repr__(self) -> str:
        return f"PiecewiseConstant({self.table})"


def _constant(epoch: int) -> float:
    return 1.0


def make_scheduler(name: str, optimizer: Optimizer, **options: Any) -> Scheduler:
    """An epoch-based lr schedule for `optimizer`; step it with `step_scheduler`.

    none: constant lr (a real scheduler, so the loop has no special case).
    step: lr * gamma^(epoch // step_size). exponential: lr * gamma^epoch.
    cosine: eta_min + (lr - eta_min) (1 + cos(pi epoch / t_max)) / 2 - set t_max
    to max_epochs; past t_max torch's formula climbs back up. custom: base lr
    times a piecewise-constant table (see PiecewiseConstant). plateau:
    ReduceLROnPlateau on the validation loss: lr * factor after `patience`
    epochs without improvement, never below min_lr."""
    opts = check_scheduler_options(name, **options)
    lr_scheduler = torch.optim.lr_scheduler
    if name == "none":
        return LambdaLR(optimizer, _constant)
    if name == "step":
        return lr_scheduler.StepLR(optimizer, step_size=opts["step_size"], gamma=opts["gamma"])
    if name == "exponential":
        return lr_scheduler.ExponentialLR(optimizer, gamma=opts["gamma"])
    if name == "cosine":
        return lr_scheduler.CosineAnnealingLR(optimizer, T_max=opts["t_max"], eta_min=opts["eta_min"])
    if name == "custom":
        return LambdaLR(optimizer, PiecewiseConstant(opts["table"]))
    return ReduceLROnPlateau(
        optimizer, mode="min", factor=opts["factor"], patience=opts["patience"], min_lr=opts["min_lr"]
    )


def step_scheduler(scheduler: Scheduler, val_loss: Optional[float] = None) -> float:
    """Advance the schedule by one epoch; return the lr for the next epoch.

    ReduceLROnPlateau is the one schedule that needs the metric (its step()
    without one is an error). The others ignore `val_loss`: handing it to their
    step() would be read as an epoch number by torch's deprecated step(epoch)."""
    if isinstance(scheduler, ReduceLROnPlateau):
        if val_loss is None:
            raise ValueError("the 'plateau' schedule steps on the validation loss; pass val_loss")
        scheduler.step(float(val_loss))
    else:
        scheduler.step()
    return float(scheduler.optimizer.param_groups[0]["lr"])


# --------------------------------------------------------------------------- clipping

CLIP_MODES = ("none", "norm", "value")


def clip_gradients(parameters: Iterable[Tensor], mode: str = "none", max_value: Optional[float] = None) -> Tensor:
    """Clip gradients in place, between backward() and optimizer.step().

    norm: rescale all gradients together so their global L2 norm is at most
    `max_value`; the direction is kept, only the step shrinks. value: clamp
    each element to [-max_value, max_value]; cheaper, but it changes the
    direction. none: leave them.

    Returns the global L2 norm *before* clipping, in every mode, because that is
    the number worth logging (spikes announce divergence). It is a 0-dim tensor:
    call .item() only when logging, as it waits for the GPU."""
    if mode not in CLIP_MODES:
        raise ValueError(f"gradient clipping mode must be one of {list(CLIP_MODES)}, got {mode!r}")
    if mode != "none" and not (_is_number(max_value) and max_value > 0):
        raise ValueError(f"gradient clipping '{mode}': option 'max_value' must be a number > 0, got {max_value!r}")
    params = [p for p in parameters if p.grad is not None]  # a generator can be read only once
    if not params:
        return torch.zeros(())
    if mode == "norm":
        return torch.nn.utils.clip_grad_norm_(params, max_value)
    norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    if mode == "value":
        torch.nn.utils.clip_grad_value_(params, max_value)
    return norm
