"""Loss functions by name, for params.yaml: `make_loss("focal", gamma=2.0)`.

Every loss takes (model outputs, targets) and returns a scalar tensor, so the
training loop never needs to know which one it runs. Options are checked when
the loss is made, so a bad `params.yaml` fails before the first epoch, with a
ValueError that names the loss and the option.

Conventions, stated once:

* Regression losses take predictions and targets of the same shape; (N, 1)
  against (N,) is reshaped, because letting it broadcast to (N, N) is the
  classic silent bug. Any other mismatch raises.
* Classification losses take raw logits, never probabilities: the log-sum-exp
  inside them is what keeps them finite for confident models.
* Reductions follow the torch function each loss generalises, so that a loss
  with its extra knob turned off equals its torch counterpart exactly:
  `ce` with class weights is the weighted mean sum(w_y * l) / sum(w_y), like
  F.cross_entropy; `ce_onehot` uses the same weighted mean (torch's
  probability-target form divides by N instead), so one-hot targets give the
  same number as `ce`; `focal` is a plain mean of alpha-weighted terms, like
  torchvision's sigmoid_focal_loss; `kl_div` is a sum over classes averaged
  over the batch ("batchmean", the mathematically correct KL).
"""

from __future__ import annotations

import functools
import inspect
import math
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from tasks.core.task import TASK_TYPES, TASKS, task_of

LossFn = Callable[[Tensor, Tensor], Tensor]
# A per-class (or per-label) option: a scalar, a list from YAML, or a tensor.
Weights = Union[float, Sequence[float], Tensor]


# --------------------------------------------------------------------------- option checks


def _fail(loss: str, option: str, rule: str, value: Any) -> ValueError:
    return ValueError(f"loss '{loss}': option '{option}' {rule}, got {value!r}")


def _number(loss: str, option: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(loss, option, "must be a finite number", value)
    return float(value)


def _values(loss: str, option: str, value: Any) -> Tensor:
    """A scalar or a 1-D list of finite numbers, as a float tensor (for checking)."""
    if isinstance(value, bool) or isinstance(value, str):
        raise _fail(loss, option, "must be a number or a list of numbers", value)
    try:
        tensor = torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as err:
        raise _fail(loss, option, "must be a number or a list of numbers", value) from err
    if tensor.ndim > 1 or tensor.numel() == 0 or not torch.isfinite(tensor).all():
        raise _fail(loss, option, "must be a finite number or a non-empty flat list of them", value)
    return tensor


def _check_options(loss: str, options: Mapping[str, Any]) -> None:
    """Check each option by its name; the rules are shared by the losses that take it."""
    for option, value in options.items():
        if option in ("delta", "temperature"):
            if _number(loss, option, value) <= 0:
                raise _fail(loss, option, "must be > 0", value)
        elif option == "q":
            if not 0 < _number(loss, option, value) < 1:
                raise _fail(loss, option, "(the quantile) must lie strictly between 0 and 1", value)
        elif option == "gamma":
            if _number(loss, option, value) < 0:
                raise _fail(loss, option, "(the focusing exponent) must be >= 0", value)
        elif option == "label_smoothing":
            if not 0 <= _number(loss, option, value) < 1:
                raise _fail(loss, option, "must lie in [0, 1)", value)
        elif option == "pos_weight":
            if value is not None and not (_values(loss, option, value) > 0).all():
                raise _fail(loss, option, "must be > 0 (one number, or one per label)", value)
        elif option == "weight":
            if value is not None:
                weights = _values(loss, option, value)
                if weights.ndim != 1 or (weights < 0).any() or not (weights > 0).any():
                    raise _fail(loss, option, "must be a list of per-class weights >= 0, not all 0", value)
        elif option == "alpha":
            if value is not None and (_values(loss, option, value) < 0).any():
                raise _fail(loss, option, "must be >= 0 (one number, or one per class)", value)
        elif option in ("full", "targets_are_logits"):
            if not isinstance(value, bool):
                raise _fail(loss, option, "must be true or false", value)
        else:  # pragma: no cover - an option added to a loss without a rule here
            raise TypeError(f"no check for option '{option}'")


_SIGMOID_ALPHA_RULE = "must lie in [0, 1] for binary/multilabel targets (it weighs positives, 1 - alpha negatives)"


def _as_tensor(loss: str, option: str, value: Weights, like: Tensor, n: int) -> Tensor:
    """An option on the outputs' device (it travels as a YAML list), checked
    against `n`, the number of classes or labels: a wrong length is a config
    error, not a shape bug."""
    tensor = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if tensor.ndim == 1 and len(tensor) != n:
        raise ValueError(
            f"loss '{loss}': option '{option}' has {len(tensor)} values but the outputs have {n} classes/labels"
        )
    return tensor


def _align(loss: str, outputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Same shape, or raise. (N, 1) vs (N,) is reshaped rather than broadcast to (N, N)."""
    if outputs.shape != targets.shape:
        if outputs.numel() != targets.numel() or outputs.squeeze(-1).shape != targets.squeeze(-1).shape:
            raise ValueError(
                f"loss '{loss}': outputs {tuple(outputs.shape)} and targets {tuple(targets.shape)} "
                "must have the same shape"
            )
        outputs = outputs.reshape(targets.shape)
    return outputs, targets.to(outputs.dtype)


def _class_indices(loss: str, logits: Tensor, targets: Tensor) -> None:
    if logits.ndim != 2 or targets.ndim != 1 or len(targets) != len(logits):
        raise ValueError(
            f"loss '{loss}': expects logits (N, C) and integer labels (N,), "
            f"got {tuple(logits.shape)} and {tuple(targets.shape)}"
        )
    if targets.is_floating_point() or targets.dtype == torch.bool:
        raise ValueError(f"loss '{loss}': labels must be integers; use 'ce_onehot' for one-hot or soft targets")


# --------------------------------------------------------------------------- regression


def mse_loss(predictions: Tensor, targets: Tensor) -> Tensor:
    """Mean squared error: the Gaussian likelihood; large errors dominate."""
    predictions, targets = _align("mse", predictions, targets)
    return F.mse_loss(predictions, targets)


def mae_loss(predictions: Tensor, targets: Tensor) -> Tensor:
    """Mean absolute error: fits the conditional median, so outliers pull less."""
    predictions, targets = _align("mae", predictions, targets)
    return F.l1_loss(predictions, targets)


def huber_loss(predictions: Tensor, targets: Tensor, *, delta: float = 1.0) -> Tensor:
    """Squared below `delta`, linear above: MSE's smooth minimum, MAE's robustness."""
    _check_options("huber", {"delta": delta})
    predictions, targets = _align("huber", predictions, targets)
    return F.huber_loss(predictions, targets, delta=delta)


def log_cosh_loss(predictions: Tensor, targets: Tensor) -> Tensor:
    """mean(log cosh(pred - target)): ~x^2/2 near 0, ~|x| - log 2 far away; smooth everywhere.

    Written as d + softplus(-2d) - log 2 because cosh overflows float32 at |d| > ~89."""
    predictions, targets = _align("log_cosh", predictions, targets)
    d = predictions - targets
    return (d + F.softplus(-2.0 * d) - math.log(2.0)).mean()


def quantile_loss(predictions: Tensor, targets: Tensor, *, q: float = 0.5) -> Tensor:
    """Pinball loss for quantile q: under-prediction costs q, over-prediction 1 - q,
    so the minimiser is the q-th conditional quantile (q = 0.5: half the MAE)."""
    _check_options("quantile", {"q": q})
    predictions, targets = _align("quantile", predictions, targets)
    d = targets - predictions
    return torch.maximum(q * d, (q - 1.0) * d).mean()


def poisson_loss(predictions: Tensor, targets: Tensor, *, full: bool = False) -> Tensor:
    """Poisson NLL for counts; the model outputs the log-rate, so the rate exp(x)
    is positive without a constraint. Loss = exp(x) - y * x (+ Stirling's log y!
    approximation when `full`, which changes the value, not the gradient)."""
    _check_options("poisson", {"full": full})
    predictions, targets = _align("poisson", predictions, targets)
    return F.poisson_nll_loss(predictions, targets, log_input=True, full=full)


# --------------------------------------------------------------------------- classification


def bce_loss(logits: Tensor, targets: Tensor, *, pos_weight: Optional[Weights] = None) -> Tensor:
    """Binary cross-entropy on logits, for one output (binary) or one per label
    (multilabel). `pos_weight` > 1 makes a missed positive cost more: use
    n_negative / n_positive per label for a rare positive class."""
    _check_options("bce", {"pos_weight": pos_weight})
    logits, targets = _align("bce", logits, targets)
    n_labels = logits.shape[-1] if logits.ndim > 1 else 1
    weight = None if pos_weight is None else _as_tensor("bce", "pos_weight", pos_weight, logits, n_labels)
    return F.binary_cross_entropy_with_logits(logits, targets, pos_weight=weight)


def ce_loss(
    logits: Tensor, targets: Tensor, *, weight: Optional[Weights] = None, label_smoothing: float = 0.0
) -> Tensor:
    """Softmax cross-entropy with integer labels: F.cross_entropy, weighted mean
    when `weight` (one per class) is given, so the loss scale does not depend on
    the weights. Label smoothing spreads that much target mass uniformly, which
    keeps logits from growing without bound (and calibrates better)."""
    _check_options("ce", {"weight": weight, "label_smoothing": label_smoothing})
    _class_indices("ce", logits, targets)
    w = None if weight is None else _as_tensor("ce", "weight", weight, logits, logits.shape[1])
    return F.cross_entropy(logits, targets, weight=w, label_smoothing=label_smoothing)


def ce_onehot_loss(
    logits: Tensor, targets: Tensor, *, weight: Optional[Weights] = None, label_smoothing: float = 0.0
) -> Tensor:
    """Cross-entropy against one-hot or soft targets (N, C), e.g. mixup or a
    teacher's probabilities: -sum_c t_c log softmax(z)_c per sample.

    With `weight`, each sample's term is weighted by sum_c w_c t_c and divided
    by the total of those, exactly like `ce`: one-hot targets give the same
    number as `ce` on their labels (torch's own probability form divides by N)."""
    _check_options("ce_onehot", {"weight": weight, "label_smoothing": label_smoothing})
    if logits.ndim != 2 or targets.shape != logits.shape:
        raise ValueError(
            f"loss 'ce_onehot': expects logits and targets both (N, C), "
            f"got {tuple(logits.shape)} and {tuple(targets.shape)}"
        )
    targets = targets.to(logits.dtype)
    smoothed = targets * (1.0 - label_smoothing) + label_smoothing / logits.shape[1]
    log_p = F.log_softmax(logits, dim=1)
    if weight is None:
        return -(smoothed * log_p).sum(dim=1).mean()
    w = _as_tensor("ce_onehot", "weight", weight, logits, logits.shape[1])
    return -(smoothed * log_p * w).sum() / (targets * w).sum()


def focal_loss(logits: Tensor, targets: Tensor, *, gamma: float = 2.0, alpha: Optional[Weights] = None) -> Tensor:
    """Focal loss (Lin et al. 2017): -alpha_t (1 - p_t)^gamma log p_t. The factor
    (1 - p_t)^gamma shrinks the loss of examples the model already gets right, so
    training concentrates on the hard, often rare-class, ones. gamma = 0 is
    (alpha-weighted) cross-entropy; the paper uses gamma = 2.

    Which form runs is decided by the targets' shape, as in F.cross_entropy:

    * targets shaped like the logits (binary (N,)/(N, 1) or multilabel (N, L),
      0/1 or soft): sigmoid focal loss. `alpha` (one number, or one per label)
      weighs positives and 1 - alpha weighs negatives, so it must lie in [0, 1];
      the paper's detection default is 0.25.
    * integer labels (N,) against logits (N, C): softmax focal loss. `alpha` is
      a per-class weight alpha_y (balanced_class_weights fits); a single number
      just scales the loss.

    The mean is over all terms, unnormalised by alpha, like torchvision's
    sigmoid_focal_loss: with gamma = 0 it equals F.binary_cross_entropy_with_logits
    with weight alpha_t, or F.cross_entropy(weight=alpha, reduction="none").mean().
    """
    _check_options("focal", {"gamma": gamma, "alpha": alpha})
    if logits.ndim == 2 and logits.shape[1] > 1 and targets.shape == logits.shape[:1]:
        _class_indices("focal", logits, targets)
        n_classes = logits.shape[1]
        log_pt = F.log_softmax(logits, dim=1).gather(1, targets.long().unsqueeze(1)).squeeze(1)
        loss = -((1.0 - log_pt.exp()) ** gamma) * log_pt
        if alpha is not None:
            alpha_y = _as_tensor("focal", "alpha", alpha, logits, n_classes).expand(n_classes)[targets]
            loss = alpha_y * loss
        return loss.mean()

    logits, targets = _align("focal", logits, targets)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p = torch.sigmoid(logits)
    p_t = p * targets + (1.0 - p) * (1.0 - targets)
    loss = ce * (1.0 - p_t) ** gamma
    if alpha is not None:
        if (_values("focal", "alpha", alpha) > 1).any():
            raise _fail("focal", "alpha", _SIGMOID_ALPHA_RULE, alpha)
        a = _as_tensor("focal", "alpha", alpha, logits, logits.shape[-1] if logits.ndim > 1 else 1)
        loss = (a * targets + (1.0 - a) * (1.0 - targets)) * loss
    return loss.mean()


def kl_div_loss(
    logits: Tensor, targets: Tensor, *, temperature: float = 1.0, targets_are_logits: bool = False
) -> Tensor:
    """T^2 * KL(p || softmax(logits / T)), summed over classes, averaged over the batch.

    `targets` are probabilities p (rows summing to 1, already softened by the
    caller), or, with `targets_are_logits`, a teacher's logits that are softened
    here as softmax(targets / T). The T^2 factor keeps the gradient scale the
    same whatever T (Hinton et al. 2015), as in tasks.distill. Zero exactly when
    the two distributions match."""
    _check_options("kl_div", {"temperature": temperature, "targets_are_logits": targets_are_logits})
    if logits.ndim != 2 or targets.shape != logits.shape:
        raise ValueError(
            f"loss 'kl_div': expects logits and targets both (N, C), "
            f"got {tuple(logits.shape)} and {tuple(targets.shape)}"
        )
    log_q = F.log_softmax(logits / temperature, dim=1)
    if targets_are_logits:
        log_p = F.log_softmax(targets.to(logits.dtype) / temperature, dim=1)
        kl = F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)
    else:  # kl_div uses xlogy, so a target probability of exactly 0 contributes 0, not nan
        kl = F.kl_div(log_q, targets.to(logits.dtype), reduction="batchmean")
    return temperature**2 * kl


# --------------------------------------------------------------------------- registry

_REGRESSION = frozenset(t.name for t in TASKS.values() if t.regression)
_SINGLE_LABEL = frozenset(t.name for t in TASKS.values() if t.single_label)
_SIGMOID = frozenset(t.name for t in TASKS.values() if t.sigmoid)

# Which task types each loss makes sense for, so config validation can reject
# e.g. `loss: mse` on a classifier. `ce` covers binary with a 2-logit head;
# `bce` covers binary with a 1-logit head.
LOSS_TASKS: dict[str, frozenset[str]] = {
    "mse": _REGRESSION,
    "mae": _REGRESSION,
    "huber": _REGRESSION,
    "log_cosh": _REGRESSION,
    "quantile": _REGRESSION,
    "poisson": _REGRESSION,
    "bce": _SIGMOID,
    "ce": _SINGLE_LABEL,
    "ce_onehot": _SINGLE_LABEL,
    "focal": _SINGLE_LABEL | _SIGMOID,
    "kl_div": _SINGLE_LABEL,
}

_FUNCTIONS: dict[str, Callable[..., Tensor]] = {
    "mse": mse_loss,
    "mae": mae_loss,
    "huber": huber_loss,
    "log_cosh": log_cosh_loss,
    "quantile": quantile_loss,
    "poisson": poisson_loss,
    "bce": bce_loss,
    "ce": ce_loss,
    "ce_onehot": ce_onehot_loss,
    "focal": focal_loss,
    "kl_div": kl_div_loss,
}


def loss_options(name: str) -> dict[str, Any]:
    """The options a loss takes, with their defaults (for docs and config checks)."""
    _known(name)
    parameters = inspect.signature(_FUNCTIONS[name]).parameters.values()
    return {p.name: p.default for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY}


def check_loss_task(name: str, task: str) -> None:
    """Raise ValueError unless loss `name` suits task type `task`."""
    _known(name)
    if task not in TASK_TYPES:
        raise ValueError(f"task type must be one of {list(TASK_TYPES)}, got {task!r}")
    if task not in LOSS_TASKS[name]:
        fits = sorted(n for n, tasks in LOSS_TASKS.items() if task in tasks)
        raise ValueError(f"loss '{name}' does not fit a {task} task; losses that do: {fits}")


def make_loss(name: str, task: Optional[str] = None, **options: Any) -> LossFn:
    """The loss `name` with its options bound: loss_fn(outputs, targets) -> scalar.

    Everything is checked now rather than at the first batch: the name, the
    option names and values, and, when `task` is given, that the loss fits it.
    For `focal` with a binary/multilabel `task`, alpha must also lie in [0, 1]."""
    allowed = loss_options(name)
    unknown = [key for key in options if key not in allowed]
    if unknown:
        raise ValueError(f"loss '{name}': unknown option '{unknown[0]}' (allowed: {sorted(allowed) or 'none'})")
    if task is not None:
        check_loss_task(name, task)
    _check_options(name, options)
    if name == "focal" and task is not None and task_of(task).sigmoid and options.get("alpha") is not None:
        if (_values(name, "alpha", options["alpha"]) > 1).any():
            raise _fail(name, "alpha", _SIGMOID_ALPHA_RULE, options["alpha"])
    # Lists from YAML become tensors once, here, rather than at every batch.
    bound = {k: torch.as_tensor(v) if isinstance(v, (list, tuple)) else v for k, v in options.items()}
    return functools.partial(_FUNCTIONS[name], **bound)


def _known(name: str) -> None:
    if name not in _FUNCTIONS:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(_FUNCTIONS)}")
