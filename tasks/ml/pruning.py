"""Pruning for the project's models (tasks.ml.models.CNN and MLP).

Two kinds, with different pay-offs:

- Unstructured (`prune_unstructured`): zero the smallest-magnitude weights. The
  tensors keep their shapes, so the exported ONNX stays dense and runs no
  faster; it only compresses better (zip, gzip) and is the starting point for
  sparse kernels. Use it to study accuracy against sparsity.
- Structured (`prune_structured`): drop whole conv channels and hidden units.
  The result is a physically smaller model of the same class whose spec has
  the new widths, so it saves, loads, exports and runs faster like any other.

Both return a new model and leave the one passed in untouched. Follow either
with `fine_tune` to recover accuracy.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Literal, Optional

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from tasks.contracts.processed import ProcessedMeta
from tasks.core.params import AugmentParams, FitParams
from tasks.core.progress import progress
from tasks.ml.models import CNN, MLP, CNNSpec, MLPSpec, Model, build_model, predict_logits
from tasks.ml.training import FitResult, LossFn, fit

Scope = Literal["layer", "global"]
# How structured pruning ranks a layer's units: by the batch norm scale after it
# (Liu et al. 2017, "Network Slimming": with batch norm, a filter's own norm is
# normalised away, its gamma is what sets its output), or by its weights' norm.
Rank = Literal["bn_scale", "weight_norm"]
Norm = Literal["l1", "l2"]


def _check_amount(amount: float) -> float:
    if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not 0 <= amount < 1:
        raise ValueError(f"amount must be a fraction in [0, 1), got {amount!r}")
    return float(amount)


def _weight_layers(model: nn.Module) -> list[nn.Module]:
    """Conv and Linear layers in forward order: the ones whose weights pruning touches."""
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


# --------------------------------------------------------------------------- unstructured


def prune_unstructured(model: Model, amount: float, scope: Scope = "layer") -> Model:
    """A copy of `model` with the `amount` fraction of smallest-|w| conv/linear
    weights set to exactly 0 (biases and batch norm are left alone).

    `layer`: each layer loses `amount` of its own weights. `global`: one
    threshold over all layers, so layers with many small weights (usually the
    big dense ones) lose more. The zeros are baked in (no masks or hooks
    remain), so the copy saves and exports like a dense model."""
    amount = _check_amount(amount)
    if scope not in ("layer", "global"):
        raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
    pruned = copy.deepcopy(model)
    targets = [(layer, "weight") for layer in _weight_layers(pruned)]
    if scope == "global":
        torch_prune.global_unstructured(targets, pruning_method=torch_prune.L1Unstructured, amount=amount)
    else:
        for layer, name in targets:
            torch_prune.l1_unstructured(layer, name, amount=amount)
    for layer, name in targets:
        torch_prune.remove(layer, name)
    return pruned


def sparsity(model: nn.Module) -> float:
    """Fraction of conv/linear weights that are exactly 0."""
    weights = [layer.weight for layer in _weight_layers(model)]
    total = sum(w.numel() for w in weights)
    zeros = sum(int((w == 0).sum()) for w in weights)
    return zeros / total if total else 0.0


def count_nonzero_parameters(model: nn.Module) -> int:
    """Parameters (all of them, biases and batch norm included) that are not 0."""
    return sum(int((p != 0).sum()) for p in model.parameters())


# --------------------------------------------------------------------------- structured


def _keep(weight: torch.Tensor, amount: float, norm: Norm, scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Indices (ascending) of the ceil((1 - amount) * n) output units of `weight`
    (dim 0) that matter most: by |scale| (the batch norm's gamma after the
    layer) when given, else by the L1 or L2 norm of their weights. Ascending
    order, not rank order, keeps the surviving units in their original places,
    so amount=0 is the identity."""
    n = weight.shape[0]
    k = max(1, math.ceil((1 - amount) * n))
    if scale is not None:
        scores = scale.detach().abs()
    else:
        scores = weight.detach().reshape(n, -1).norm(p=1 if norm == "l1" else 2, dim=1)
    # Stable sort: ties go to the earlier unit, so the result never depends on the platform.
    order = torch.sort(-scores, stable=True).indices
    return order[:k].sort().values


def _following_norms(model: nn.Module) -> dict[int, nn.Module]:
    """id(weight layer) -> the batch norm right after it, where there is one."""
    modules = [m for m in model.modules() if not list(m.children())]
    return {
        id(layer): after
        for layer, after in zip(modules, modules[1:])
        if isinstance(layer, (nn.Conv2d, nn.Linear)) and isinstance(after, nn.modules.batchnorm._BatchNorm)
    }


def _slice_layer(
    old: nn.Module, new: nn.Module, out_keep: Optional[torch.Tensor], in_keep: Optional[torch.Tensor]
) -> None:
    """Copy the kept rows (outputs) and columns (inputs) of a Conv2d/Linear."""
    weight = old.weight.detach()
    if out_keep is not None:
        weight = weight[out_keep]
    if in_keep is not None:
        weight = weight[:, in_keep]
    new.weight.copy_(weight)
    if old.bias is not None:
        new.bias.copy_(old.bias.detach() if out_keep is None else old.bias.detach()[out_keep])


def _slice_norm(
    old: nn.modules.batchnorm._BatchNorm, new: nn.modules.batchnorm._BatchNorm, keep: Optional[torch.Tensor]
) -> None:
    """A batch norm's affine parameters and running statistics for the kept channels."""
    for name in ("weight", "bias", "running_mean", "running_var"):
        source = getattr(old, name)
        if source is not None:
            getattr(new, name).copy_(source.detach() if keep is None else source.detach()[keep])
    if old.num_batches_tracked is not None:
        new.num_batches_tracked.copy_(old.num_batches_tracked)


def _sizes_and_keeps(
    model: Model, amount: float, norm: Norm, rank: Rank = "weight_norm"
) -> tuple[CNNSpec | MLPSpec, list[Optional[torch.Tensor]]]:
    """The pruned spec, and per weight layer (forward order) the output units it keeps
    (None = all: the final classifier is never pruned)."""
    layers = _weight_layers(model)
    hidden = layers[:-1]  # every layer but the output layer has prunable outputs
    norms = _following_norms(model) if rank == "bn_scale" else {}
    keeps: list[Optional[torch.Tensor]] = [
        _keep(layer.weight, amount, norm, norms[id(layer)].weight if id(layer) in norms else None) for layer in hidden
    ] + [None]
    widths = tuple(len(k) for k in keeps[:-1])
    if isinstance(model, CNN):
        n_conv = len(model.spec.channels)
        spec = dataclasses.replace(model.spec, channels=widths[:n_conv], hidden=widths[n_conv])
    else:
        spec = dataclasses.replace(model.spec, layers=widths)
    return spec, keeps


def prune_structured(model: Model, amount: float, norm: Norm = "l1", rank: Rank = "weight_norm") -> Model:
    """A new, physically smaller model of the same class: each conv block keeps the
    ceil((1 - amount) * n) output channels whose filters have the largest L1/L2
    norm (likewise the CNN's dense hidden layer and each MLP hidden layer), and
    every dependent tensor follows: batch norm parameters and running stats, the
    next layer's input channels, and the first dense layer's inputs after
    Flatten (a kept channel keeps all its H*W positions). The input and the
    output layer are never pruned. amount=0 gives identical outputs.

    `rank="weight_norm"` ranks filters by their own weights (Li et al., 2017,
    "Pruning Filters for Efficient ConvNets"). With batch norm after a layer
    that scale is normalised away, so `rank="bn_scale"` ranks by the norm's
    |gamma| instead, which sets the channel's output (Liu et al., 2017,
    "Network Slimming"); layers without one fall back to the weight norm.
    Fine-tune afterwards (`fine_tune`)."""
    amount = _check_amount(amount)
    if norm not in ("l1", "l2"):
        raise ValueError(f"norm must be 'l1' or 'l2', got {norm!r}")
    if not isinstance(model, (CNN, MLP)):
        raise TypeError(f"prune_structured knows tasks.ml.models.CNN and MLP, not {type(model).__name__}")
    device = next(model.parameters()).device
    if rank not in ("bn_scale", "weight_norm"):
        raise ValueError(f"rank must be 'bn_scale' or 'weight_norm', got {rank!r}")
    spec, keeps = _sizes_and_keeps(model, amount, norm, rank)
    pruned = build_model(spec)
    old_layers, new_layers = _weight_layers(model), _weight_layers(pruned)
    # A layer's inputs are the previous layer's kept outputs. After the CNN's Flatten,
    # input index = channel * (H * W) + position, so each kept channel brings its block.
    in_keeps: list[Optional[torch.Tensor]] = [None]
    for previous, layer, keep in zip(old_layers, old_layers[1:], keeps):
        if isinstance(previous, nn.Conv2d) and isinstance(layer, nn.Linear):
            positions = layer.in_features // previous.out_channels
            keep = (keep[:, None] * positions + torch.arange(positions, device=keep.device)).reshape(-1)
        in_keeps.append(keep)
    # Same constructor, same module names: walk both models side by side. Each batch
    # norm follows the weight layer before it.
    new_modules = dict(pruned.named_modules())
    last_keep: Optional[torch.Tensor] = None
    with torch.no_grad():
        for name, old in model.named_modules():
            new = new_modules[name]
            if isinstance(old, (nn.Conv2d, nn.Linear)):
                index = old_layers.index(old)
                assert new is new_layers[index]
                _slice_layer(old, new, keeps[index], in_keeps[index])
                last_keep = keeps[index]
            elif isinstance(old, nn.modules.batchnorm._BatchNorm):
                _slice_norm(old, new, last_keep)
            elif not list(old.children()):  # Normalize's buffers, and anything else with state
                new.load_state_dict(old.state_dict())
    return pruned.to(device).train(model.training)


# --------------------------------------------------------------------------- fine-tuning


def fine_tune(
    model: Model,
    train: tuple[torch.Tensor, ...],
    val: tuple[torch.Tensor, ...],
    loss_fn: LossFn,
    params: FitParams,
    epochs: int,
    keep_zeros: bool = True,
    quiet: bool = True,
    augment: Optional[AugmentParams] = None,
) -> FitResult:
    """Recover accuracy after pruning: `tasks.ml.training.fit` for `epochs` epochs
    (early stopping and best-weight restore as usual), in place.

    `keep_zeros`: weights that are exactly 0 (unstructured pruning) are held at 0
    during training through a fixed mask, otherwise the first optimizer step
    would regrow them and undo the pruning. A structured-pruned model has no
    zeros and trains exactly as plain `fit`."""
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs!r}")
    masked = []
    if keep_zeros:
        for layer in _weight_layers(model):
            mask = layer.weight.detach() != 0
            if not bool(mask.all()):
                torch_prune.custom_from_mask(layer, "weight", mask)
                masked.append(layer)
    try:
        result = fit(
            model,
            train,
            val,
            loss_fn,
            dataclasses.replace(params, max_epochs=epochs),
            desc="fine-tune",
            quiet=quiet,
            augment=augment,
        )
    finally:
        for layer in masked:
            torch_prune.remove(layer, "weight")  # weight = weight_orig * mask, a plain tensor again
    return result


# --------------------------------------------------------------------------- the stage


def unstructured_sweep(
    model: Model, amounts: tuple[float, ...], scope: str, val: tuple[np.ndarray, np.ndarray], meta: ProcessedMeta
) -> list[dict]:
    """Quality, sparsity and compressed size at each amount. The ONNX stays
    dense, so onnxruntime runs it no faster: the gain is only in a compressed
    file (gzip of the weights), which this reports honestly."""
    import gzip

    from tasks.evaluation.metrics import task_metrics

    rows = []
    for amount in progress(amounts, "prune: unstructured sweep", "amount"):
        pruned = prune_unstructured(model, amount, scope)
        weights = b"".join(p.detach().cpu().numpy().tobytes() for p in pruned.parameters())
        scores = task_metrics(meta.task, predict_logits(pruned, val[0]), val[1], list(meta.classes))
        rows.append(
            {
                "amount": amount,
                "sparsity": sparsity(pruned),
                "val_quality": scores["quality"],
                "nonzero_parameters": count_nonzero_parameters(pruned),
                "gzip_bytes": len(gzip.compress(weights, 6)),
                "dense_bytes": len(weights),
            }
        )
    return rows
