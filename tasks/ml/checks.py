"""The training sections' ML options, checked when a stage reads params.yaml:
loss names and options and their fit with the task, optimisers, schedules and
weight constraints. tasks.core.params checks types and ranges without torch;
these checks need the components themselves, so they live beside them."""

from __future__ import annotations

from typing import Any

from tasks.core.errors import DistilleryError
from tasks.core.params import FitParams
from tasks.core.task import TASKS, task_of
from tasks.ml.losses import LOSS_TASKS, check_loss_task, loss_options
from tasks.ml.optim import (
    OPTIMIZER_OPTIONS,
    SCHEDULER_OPTIONS,
    check_optimizer_options,
    check_scheduler_options,
)
from tasks.ml.regularization import CONSTRAINTS, check_constraint_options

# Losses that take no class weights: with them, a weighting scheme would be
# silently ignored, so it is refused instead.
UNWEIGHTED_LOSSES = ("kl_div", "mse", "mae", "huber", "log_cosh", "quantile", "poisson")
# Losses tasks/ml/losses.py implements that the pipeline's models cannot train with yet, and why.
NOT_WIRED = {
    "poisson": "it reads the model's output as a log-rate, but the regression MLP predicts in target units "
    "(output * std + mean inside the graph), so exp() overflows on a target like diabetes'; "
    "use mse, mae, huber, log_cosh or quantile",
}
# Sigmoid focal loss takes alpha (a share for positives), not per-class weights.
SIGMOID_TASKS = tuple(t.name for t in TASKS.values() if t.sigmoid)


def check_fit_params(params: FitParams, section: str, task: str, source: str = "params.yaml") -> None:
    """Raise DistilleryError naming `source` and `<section>.<key>` unless every
    option of `params` is one its component accepts, for task type `task`."""

    def fail(key: str, message: str) -> DistilleryError:
        return DistilleryError(f"{source}: '{section}.{key}': {message}")

    if params.nproc_per_node > 1 and getattr(params, "freeze", ()) and getattr(params, "unfreeze_after", 0):
        raise fail(
            "unfreeze_after",
            "cannot unfreeze during a run with nproc_per_node > 1: DDP fixes which "
            "parameters it averages when training starts (set unfreeze_after: 0)",
        )

    if params.loss != "auto":
        if params.loss not in LOSS_TASKS:
            raise fail("loss", f"unknown loss '{params.loss}' (known: auto, {', '.join(LOSS_TASKS)})")
        try:
            check_loss_task(params.loss, task)
        except ValueError as err:
            raise fail("loss", f"{err} (task.type is '{task}')") from err
        if params.loss in NOT_WIRED:
            raise fail("loss", f"loss '{params.loss}' is not supported for training: {NOT_WIRED[params.loss]}")
        allowed = loss_options(params.loss)
        for option in params.loss_options:
            if option not in allowed:
                raise fail(
                    f"loss_options.{option}", f"not an option of loss '{params.loss}' (options: {sorted(allowed)})"
                )
        weighting = getattr(params, "class_weighting", "none")
        if params.loss in UNWEIGHTED_LOSSES and weighting != "none" and not task_of(task).regression:
            raise fail(
                "class_weighting",
                f"loss '{params.loss}' takes no class weights; set "
                f"{section}.class_weighting: none, or choose ce, ce_onehot, focal or bce",
            )
        if params.loss == "focal" and task in SIGMOID_TASKS and weighting != "none":
            raise fail(
                "class_weighting",
                f"a {task} focal loss weighs positives with loss_options.alpha, not "
                f"class weights; set {section}.class_weighting: none",
            )
    _check(fail, "loss_options", lambda: _loss_option_values(params, task), params.loss_options)
    schedule = dict(params.schedule_options)
    if params.schedule == "cosine":
        schedule.setdefault("t_max", params.max_epochs)
    for name, known, options, check in (
        (
            "optimizer",
            OPTIMIZER_OPTIONS,
            params.optimizer_options,
            lambda: check_optimizer_options(params.optimizer, params.lr, **params.optimizer_options),
        ),
        (
            "schedule",
            SCHEDULER_OPTIONS,
            params.schedule_options,
            lambda: check_scheduler_options(params.schedule, **schedule),
        ),
        (
            "constraint",
            CONSTRAINTS,
            params.constraint_options,
            lambda: check_constraint_options(params.constraint, **params.constraint_options),
        ),
    ):
        # An unknown name is the name's fault; anything else, its options'.
        if getattr(params, name) not in known:
            _check(fail, name, check)
        else:
            _check(fail, f"{name}_options", check, options)


def _loss_option_values(params: FitParams, task: str) -> None:
    from tasks.ml.losses import make_loss
    from tasks.ml.training import loss_name

    make_loss(loss_name(task, params), task, **params.loss_options)


def _check(fail: Any, key: str, check: Any, options: Any = None) -> None:
    """Run `check`; its error names `key`, or `key.<option>` when the message is
    about exactly one of the `options` given (the components all say "option 'x'")."""
    try:
        check()
    except (ValueError, TypeError) as err:
        named = [option for option in (options or {}) if f"option '{option}'" in str(err)]
        raise fail(f"{key}.{named[0]}" if len(named) == 1 else key, str(err)) from err


def check_training_params(params: Any, task: str, source: str = "params.yaml") -> None:
    """Both training sections (the teacher's and the student's), as the flow
    checks them before the first stage."""
    check_fit_params(params.train, "train", task, source)
    check_fit_params(params.distill, "distill", task, source)
