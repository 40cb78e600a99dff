"""Regularisation that is not in the optimizer: weight penalties, activation
penalties and weight constraints.

    loss = loss_fn(model(x), y) + weight_penalty(model, l1=1e-5, l2=1e-4) + activations.penalty()
    loss.backward(); optimizer.step()
    apply_constraint(model, "max_norm", max_value=3.0)

Scales follow Keras, so numbers from the course carry over: an l2 of 1e-4 adds
1e-4 * sum(w^2) (its gradient is 2 * l2 * w: the same as SGD weight_decay =
2 * l2, but unlike AdamW's decoupled decay).
"""

from __future__ import annotations

import math
from typing import Any, Literal, Optional, Sequence

import torch
from torch import Tensor, nn

PenaltyTarget = Literal["weights", "biases", "both"]
CONSTRAINTS = ("none", "max_norm", "min_max_norm", "non_negative")

# Normalisation layers' scale and shift are not "weights" in the penalty's
# sense: shrinking them towards 0 fights the normalisation itself (and their
# running statistics are buffers, which no penalty ever touches).
_NORM_LAYERS: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.RMSNorm,
)
# Layers whose weight has one row per output unit: (out, in) or (out, in/groups, *kernel).
# Transposed convolutions store (in, out, ...) and are left out on purpose.
_UNIT_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _coefficient(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
        raise ValueError(f"option '{name}' must be a number >= 0, got {value!r}")
    return float(value)


# --------------------------------------------------------------------------- weight penalty


def penalized_parameters(model: nn.Module, target: PenaltyTarget = "weights") -> list[Tensor]:
    """The parameters a weight penalty applies to: those of every layer except
    normalisation layers; "weights" are all but the biases (names starting with
    "bias"), "biases" only those, "both" all of them."""
    if target not in ("weights", "biases", "both"):
        raise ValueError(f"option 'target' must be one of weights, biases, both, got {target!r}")
    chosen = []
    for module in model.modules():
        if isinstance(module, _NORM_LAYERS):
            continue
        for name, parameter in module.named_parameters(recurse=False):
            is_bias = name.startswith("bias")
            if target == "both" or (target == "biases") == is_bias:
                chosen.append(parameter)
    return chosen


def weight_penalty(model: nn.Module, l1: float = 0.0, l2: float = 0.0, target: PenaltyTarget = "weights") -> Tensor:
    """l1 * sum|w| + l2 * sum(w^2) over the chosen parameters (both > 0: elastic net).

    L1 drives weights to exactly 0 (sparse, feature-selecting); L2 shrinks them
    all smoothly. Biases are left out by default: they set an offset, not a
    sensitivity, so shrinking them buys no smoothness. Add the result to the
    batch's mean loss: it is a differentiable tensor."""
    l1, l2 = _coefficient("l1", l1), _coefficient("l2", l2)
    parameters = penalized_parameters(model, target)
    total = torch.zeros((), device=parameters[0].device if parameters else None)
    if l1 == 0 and l2 == 0:
        return total
    for parameter in parameters:
        if l1:
            total = total + l1 * parameter.abs().sum()
        if l2:
            total = total + l2 * parameter.pow(2).sum()
    return total


# --------------------------------------------------------------------------- activation penalty


class ActivationRegularizer:
    """Penalise the outputs of chosen layers (Keras' activity_regularizer).

    Forward hooks add l1 * sum|a| + l2 * sum(a^2) of each chosen layer's output,
    divided by the batch size, so the penalty is per sample like the mean loss
    and does not grow with the batch. L1 on ReLU outputs gives sparse
    activations. Only training-mode forwards count, so a validation pass in
    eval mode never leaks into the next training step.

        reg = ActivationRegularizer(l1=1e-5, layer_types=(nn.ReLU,)).attach(model)
        loss = loss_fn(model(x), y) + reg.penalty()   # penalty() resets for the next step
        ...
        reg.detach()

    It is also a context manager that detaches on exit."""

    def __init__(self, l1: float = 0.0, l2: float = 0.0, layer_types: Sequence[type[nn.Module]] = (nn.ReLU,)):
        self.l1 = _coefficient("l1", l1)
        self.l2 = _coefficient("l2", l2)
        self.layer_types = tuple(layer_types)
        if not self.layer_types or not all(isinstance(t, type) and issubclass(t, nn.Module) for t in self.layer_types):
            raise ValueError(f"option 'layer_types' must be nn.Module subclasses, got {layer_types!r}")
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._total: Optional[Tensor] = None

    def attach(self, model: nn.Module) -> "ActivationRegularizer":
        """Hook every layer of the chosen types; raise if there is none, since
        a penalty that silently never fires is worse than an error."""
        self.detach()
        layers = [m for m in model.modules() if isinstance(m, self.layer_types)]
        if not layers:
            names = ", ".join(t.__name__ for t in self.layer_types)
            raise ValueError(f"activation regulariser: the model has no {names} layer to hook")
        self._handles = [layer.register_forward_hook(self._hook) for layer in layers]
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._total = None

    def _hook(self, module: nn.Module, inputs: Any, output: Tensor) -> None:
        if not module.training or (self.l1 == 0 and self.l2 == 0):
            return
        batch = output.shape[0] if output.ndim > 0 else 1
        term = output.new_zeros(())
        if self.l1:
            term = term + self.l1 * output.abs().sum()
        if self.l2:
            term = term + self.l2 * output.pow(2).sum()
        term = term / batch
        self._total = term if self._total is None else self._total + term

    def penalty(self) -> Tensor:
        """The penalty accumulated since the last call (0 if none), then reset."""
        total = self._total if self._total is not None else torch.zeros(())
        self._total = None
        return total

    def __enter__(self) -> "ActivationRegularizer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.detach()


# --------------------------------------------------------------------------- constraints


def _unit_norms(weight: Tensor) -> Tensor:
    """L2 norm of each output unit's incoming weights, shaped to broadcast against `weight`."""
    norms = weight.flatten(1).norm(dim=1)
    return norms.view(-1, *([1] * (weight.ndim - 1)))


def check_constraint_options(kind: str, **options: Any) -> dict[str, float]:
    """Validate a constraint's kind and options; return them with defaults filled in."""
    defaults: dict[str, dict[str, float]] = {
        "none": {},
        "max_norm": {"max_value": 2.0},  # Keras' default; 3-4 are usual with dropout
        "min_max_norm": {"min_value": 0.0, "max_value": 1.0, "rate": 1.0},
        "non_negative": {},
    }
    if kind not in defaults:
        raise ValueError(f"unknown constraint {kind!r}; choose one of {list(CONSTRAINTS)}")
    unknown = [key for key in options if key not in defaults[kind]]
    if unknown:
        allowed = sorted(defaults[kind]) or "none"
        raise ValueError(f"constraint '{kind}': unknown option '{unknown[0]}' (allowed: {allowed})")
    opts = {**defaults[kind], **options}
    for name, value in opts.items():
        _coefficient(name, value)
        opts[name] = float(value)
    if kind == "max_norm" and opts["max_value"] <= 0:
        raise ValueError(f"constraint 'max_norm': option 'max_value' must be > 0, got {opts['max_value']!r}")
    if kind == "min_max_norm":
        if not opts["min_value"] <= opts["max_value"] or opts["max_value"] <= 0:
            raise ValueError(
                f"constraint 'min_max_norm': options need 0 <= min_value <= max_value and max_value > 0, "
                f"got min_value={opts['min_value']!r}, max_value={opts['max_value']!r}"
            )
        if not 0 < opts["rate"] <= 1:
            raise ValueError(f"constraint 'min_max_norm': option 'rate' must lie in (0, 1], got {opts['rate']!r}")
    return opts


@torch.no_grad()
def apply_constraint(model: nn.Module, kind: str, **options: float) -> int:
    """Project Linear/Conv weights back into the constraint set; call it after
    every optimizer.step(). Biases and other layers are left alone, as in Keras'
    kernel_constraint. Returns how many weight tensors it visited.

    max_norm(max_value): each output unit's incoming weight vector (a row of a
    Linear weight, one filter of a conv) is scaled down to L2 norm max_value if
    it is longer (Srebro & Shraibman 2005; with dropout in Srivastava et al.
    2014). Shorter ones are untouched (Keras divides by norm + 1e-7, shrinking
    them by a hair).
    min_max_norm(min_value, max_value, rate): each unit's norm n moves to
    rate * clip(n, min, max) + (1 - rate) * n; rate = 1 lands it in the range
    at once. An all-zero unit has no direction to rescale and stays zero.
    non_negative: weights below 0 become 0 (e.g. monotone models)."""
    opts = check_constraint_options(kind, **options)
    layers = [m for m in model.modules() if isinstance(m, _UNIT_LAYERS)]
    if kind == "none":
        return 0
    for layer in layers:
        weight = layer.weight
        if kind == "non_negative":
            weight.clamp_(min=0.0)
            continue
        norms = _unit_norms(weight)
        if kind == "max_norm":
            target = norms.clamp(max=opts["max_value"])
        else:
            clipped = norms.clamp(min=opts["min_value"], max=opts["max_value"])
            target = opts["rate"] * clipped + (1.0 - opts["rate"]) * norms
        scale = torch.where(norms > 0, target / norms.clamp(min=torch.finfo(norms.dtype).tiny), torch.ones_like(norms))
        weight.mul_(scale)
    return len(layers)
