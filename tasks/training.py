"""The training loop every stage shares: seeded, device-aware, early-stopped.

It reads top to bottom: seed, batches, loss, step, validate, keep the best.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

from tasks.config import FitParams
from tasks.core import DistilleryError

# loss_fn(logits, *targets) -> scalar; targets are the batch's tensors after x.
LossFn = Callable[..., torch.Tensor]
EpochLogger = Callable[[dict[str, float], int], None]


def pick_device() -> torch.device:
    """CUDA when present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    """Same seed, same weights: on the CPU runs are bit-for-bit repeatable."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    # warn_only: a few CUDA kernels have no deterministic version; the CPU ones all do.
    torch.use_deterministic_algorithms(True, warn_only=True)


def balanced_class_weights(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    """n / (k * count_c): a rare class weighs as much in the loss as a common one."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    weights = len(labels) / (n_classes * np.maximum(counts, 1.0))
    return torch.tensor(weights, dtype=torch.float32)


@dataclass
class FitResult:
    best_epoch: int
    best_val_loss: float
    epochs_run: int
    history: list[dict[str, float]] = field(default_factory=list)


def _epoch_loss(model: nn.Module, tensors: tuple[torch.Tensor, ...], loss_fn: LossFn, batch_size: int) -> float:
    model.eval()
    total, n = 0.0, len(tensors[0])
    with torch.no_grad():
        for start in range(0, n, batch_size):
            batch = [t[start : start + batch_size] for t in tensors]
            total += loss_fn(model(batch[0]), *batch[1:]).item() * len(batch[0])
    return total / n


def fit(
    model: nn.Module,
    train: tuple[torch.Tensor, ...],
    val: tuple[torch.Tensor, ...],
    loss_fn: LossFn,
    params: FitParams,
    on_epoch: Optional[EpochLogger] = None,
    desc: str = "train",
    quiet: bool = False,
) -> FitResult:
    """Adam on `train`, early stopping on the validation loss; the best weights
    are restored before returning. `train` and `val` are (x, *targets)."""
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    train = tuple(t.to(device) for t in train)
    val = tuple(t.to(device) for t in val)
    generator = torch.Generator().manual_seed(params.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=params.lr)

    best_loss, best_epoch, best_state, stale = float("inf"), 0, None, 0
    history: list[dict[str, float]] = []
    bar = tqdm(range(1, params.max_epochs + 1), desc=desc, unit="epoch", disable=quiet, mininterval=1.0)
    for epoch in bar:
        model.train()
        order = torch.randperm(len(train[0]), generator=generator).to(device)
        running = 0.0
        for start in range(0, len(order), params.batch_size):
            batch = [t[order[start : start + params.batch_size]] for t in train]
            loss = loss_fn(model(batch[0]), *batch[1:])
            if not torch.isfinite(loss):
                raise DistilleryError(
                    f"{desc}: the loss became {loss.item()} at epoch {epoch}; lower the learning rate "
                    "(params.yaml 'lr') or check the data. No model was written."
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            running += loss.item() * len(batch[0])  # .item() syncs with the GPU; fine at this size
        row = {"train_loss": running / len(order), "val_loss": _epoch_loss(model, val, loss_fn, params.batch_size)}
        history.append(row)
        if on_epoch:
            on_epoch(row, epoch)
        bar.set_postfix(train=f"{row['train_loss']:.4f}", val=f"{row['val_loss']:.4f}")
        if row["val_loss"] < best_loss - params.min_delta:
            best_loss, best_epoch, stale = row["val_loss"], epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
            if stale >= params.patience:
                break
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return FitResult(best_epoch=best_epoch, best_val_loss=best_loss, epochs_run=len(history), history=history)


def predict_logits(model: nn.Module, x: np.ndarray | torch.Tensor, batch_size: int = 1024) -> np.ndarray:
    device = next(model.parameters()).device
    x = torch.as_tensor(x, dtype=torch.float32)
    model.eval()
    outputs = []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            outputs.append(model(x[start : start + batch_size].to(device)).cpu())
    return torch.cat(outputs).numpy()
