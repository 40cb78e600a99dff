"""The training loop every stage shares: seeded, device-aware, early-stopped.

It reads top to bottom: seed, batches, loss, step, validate, keep the best.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn
from torch.utils.data import DistributedSampler

from tasks.core.errors import DistilleryError
from tasks.core.params import AugmentParams, FitParams
from tasks.core.task import task_of
from tasks.ml.augment import augmenter

# loss_fn(logits, *targets) -> scalar; targets are the batch's tensors after x (after the
# outputs `online` computes on the batch's view, when there is such a function).
LossFn = Callable[..., torch.Tensor]
Online = Callable[[torch.Tensor], torch.Tensor]
EpochLogger = Callable[[dict[str, float], int], None]


def pick_device() -> torch.device:
    """CUDA when present (this process's GPU under torchrun), else the CPU."""
    from tasks.ml.distributed import device

    return device()


def seed_everything(seed: int) -> None:
    """Same seed, same weights: on the CPU runs are bit-for-bit repeatable."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    # warn_only: a few CUDA kernels have no deterministic version; the CPU ones all do. The flag itself,
    # not torch.use_deterministic_algorithms: that also sets torch.compile's flag, importing
    # torch._inductor (~2 s per training stage), and nothing here compiles.
    torch._C._set_deterministic_algorithms(True, warn_only=True)


def balanced_class_weights(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    """n / (k * count_c): a rare class weighs as much in the loss as a common one."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    weights = len(labels) / (n_classes * np.maximum(counts, 1.0))
    return torch.tensor(weights, dtype=torch.float32)


def class_weights(labels: np.ndarray, n_classes: int, scheme: str) -> Optional[torch.Tensor]:
    """Loss weights from the train split's frequencies: per class,
    `balanced` = n / (k * count_c); for multilabel (2-D labels) the per-label
    positive weight negatives / positives. `sqrt_inverse` takes the square root,
    a gentler push for the rare ones; `none` = no weights. Regression: none."""
    if scheme == "none" or labels.dtype.kind == "f" and labels.ndim == 1:
        return None
    if labels.ndim == 2:
        positives = labels.sum(axis=0)
        weights = torch.tensor((len(labels) - positives) / np.maximum(positives, 1.0), dtype=torch.float32)
    else:
        weights = balanced_class_weights(labels, n_classes)
    return weights.sqrt() if scheme == "sqrt_inverse" else weights


SINGLE_LOGIT_LOSSES = ("bce", "focal")  # a binary task with these has one sigmoid output
PROBABILITY_TARGET_LOSSES = ("ce_onehot", "kl_div")  # they take a distribution per row, not a label


def loss_name(task: str, params: FitParams) -> str:
    return task_of(task).default_loss if params.loss == "auto" else params.loss


def n_outputs(task: str, params: FitParams, n_classes: int) -> int:
    """The model's output width: one value for regression and for a sigmoid
    binary head, else one per class (or label)."""
    if task_of(task).regression:
        return 1
    return 1 if task_of(task).binary and loss_name(task, params) in SINGLE_LOGIT_LOSSES else n_classes


def task_loss(task: str, params: FitParams, weights: Optional[torch.Tensor]) -> LossFn:
    """The configured loss for `task` (the course default when `auto`), with the
    class weights where the loss takes them."""
    from tasks.ml.losses import make_loss

    name = loss_name(task, params)
    options = dict(params.loss_options)
    if weights is not None:
        if name in ("ce", "ce_onehot"):
            options.setdefault("weight", weights)
        elif name == "focal" and task_of(task).multiclass:
            options.setdefault("alpha", weights)
        elif name == "bce" and task_of(task).binary:
            options.setdefault("pos_weight", weights[1:] / weights[:1])  # positives vs negatives
        elif name == "bce" and task_of(task).multilabel:
            options.setdefault("pos_weight", weights)  # per label: negatives / positives
    loss = make_loss(name, task, **options)
    if name in PROBABILITY_TARGET_LOSSES:  # integer labels become one-hot rows
        return lambda logits, y: loss(logits, torch.nn.functional.one_hot(y.long(), logits.shape[1]).to(logits.dtype))
    if task_of(task).binary and name in SINGLE_LOGIT_LOSSES:
        return lambda logits, y: loss(logits, y.to(logits.dtype).view(-1, 1))
    if not task_of(task).single_label:
        return lambda outputs, y: loss(outputs, y.to(outputs.dtype))
    return loss


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


def _set_trainable(model: nn.Module, frozen: tuple[str, ...], trainable: bool) -> None:
    for name, parameter in model.named_parameters():
        if any(name.startswith(prefix) for prefix in frozen):
            parameter.requires_grad_(trainable)


def make_stopper(params: FitParams):
    from tasks.ml.stopping import CorrelationStopping, EarlyStopping

    if params.stopping == "correlation":
        return CorrelationStopping(
            window=params.correlation_window, threshold=params.correlation_threshold, patience=params.patience
        )
    return EarlyStopping(monitor="val_loss", mode="min", patience=params.patience, min_delta=params.min_delta)


@dataclass
class _Loop:
    """What one training run holds between batches: the set-up `fit` makes once,
    then `step` per batch and `epoch` per pass, read top to bottom."""

    model: nn.Module
    net: nn.Module  # the model, or its DDP wrapper under torchrun
    train: tuple[torch.Tensor, ...]
    val: tuple[torch.Tensor, ...]
    loss_fn: LossFn
    params: FitParams
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    activity: Any  # ActivationRegularizer or None
    device: torch.device
    amp: bool
    world: int
    rank: int
    batch_size: int  # per process: the global batch stays params.batch_size
    generator: torch.Generator
    desc: str
    augment: Any = None  # tasks.ml.augment.Augmenter, or None: the batch is used as it is
    online: Optional[Online] = None  # targets computed on each batch's (augmented) view: a frozen teacher

    def order(self, epoch: int) -> torch.Tensor:
        """This epoch's sample order: a seeded shuffle, or this process's share under DDP."""
        if self.world > 1:
            sampler = DistributedSampler(
                range(len(self.train[0])), num_replicas=self.world, rank=self.rank, seed=self.params.seed
            )
            sampler.set_epoch(epoch)
            return torch.tensor(list(sampler), device=self.device)
        return torch.randperm(len(self.train[0]), generator=self.generator).to(self.device)

    def step(self, batch: list[torch.Tensor], epoch: int) -> float:
        """One batch: data loss + weight and activity penalties, backward, clipping,
        optimizer step, weight constraint. Returns the data loss summed over the batch."""
        from tasks.ml.optim import clip_gradients
        from tasks.ml.regularization import apply_constraint, weight_penalty

        params = self.params
        x, targets, mix = batch[0], batch[1:], None
        if self.augment is not None:
            x, mix = self.augment(x)
        computed = []
        if self.online is not None:
            with torch.no_grad(), torch.autocast(device_type=self.device.type, enabled=self.amp):
                computed = [self.online(x).float()]
        with torch.autocast(device_type=self.device.type, enabled=self.amp):
            outputs = self.net(x)
            loss = self.loss_fn(outputs, *computed, *targets)
            if mix is not None:
                # A blended picture answers to both its sources' targets, weighed by the blend.
                # Targets computed on the blend itself (the online teacher's) are already its own.
                other = self.loss_fn(outputs, *computed, *(t[mix.perm] for t in targets))
                loss = mix.lam * loss + (1 - mix.lam) * other
        if not torch.isfinite(loss):
            raise DistilleryError(
                f"{self.desc}: the loss became {loss.item()} at epoch {epoch}; lower the learning rate "
                "(params.yaml 'lr') or check the data. No model was written."
            )
        total = loss
        if params.l1 or params.l2:
            total = total + weight_penalty(self.model, params.l1, params.l2, params.penalty_target)
        if self.activity is not None:
            total = total + self.activity.penalty()
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.scaler.unscale_(self.optimizer)
        clip_gradients(self.model.parameters(), params.clip, params.clip_value)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        apply_constraint(self.model, params.constraint, **params.constraint_options)
        return loss.item() * len(batch[0])  # .item() syncs with the GPU; fine at this size

    def epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the train split, then the validation loss (no penalties)."""
        from tasks.ml import distributed

        self.model.train()
        order = self.order(epoch)
        running = 0.0
        for start in range(0, len(order), self.batch_size):
            running += self.step([t[order[start : start + self.batch_size]] for t in self.train], epoch)
        seen_loss, seen = distributed.all_sum(running, len(order))
        distributed.sync_buffers(self.model)  # one set of batch-norm statistics: the same val loss on every rank
        return {
            "train_loss": seen_loss / seen,
            "val_loss": _epoch_loss(self.model, self.val, self.loss_fn, self.params.batch_size),
            "lr": self.optimizer.param_groups[0]["lr"],
        }


def _make_loop(
    model: nn.Module,
    train: tuple[torch.Tensor, ...],
    val: tuple[torch.Tensor, ...],
    loss_fn: LossFn,
    params: FitParams,
    desc: str,
    augment: Optional[AugmentParams] = None,
    online: Optional[Online] = None,
) -> _Loop:
    from tasks.ml import distributed
    from tasks.ml.optim import make_optimizer
    from tasks.ml.regularization import ActivationRegularizer

    device = next(model.parameters()).device
    # Frozen parameters get no gradient, and optimizers skip a parameter without one,
    # so unfreezing later is just requires_grad (schedules keep one param group).
    optimizer = make_optimizer(params.optimizer, model.parameters(), params.lr, **params.optimizer_options)
    activity = (
        ActivationRegularizer(params.activity_l1, params.activity_l2).attach(model)
        if params.activity_l1 or params.activity_l2
        else None
    )
    # Mixed precision where it pays: CUDA. The CPU path stays fp32 and bit-for-bit repeatable.
    amp = device.type == "cuda"
    # Under torchrun: a DDP replica per process, each on its share of every epoch
    # (tasks/ml/distributed.py). Only rank 0 reports.
    world, rank = distributed.world_size(), distributed.rank()
    net: nn.Module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return _Loop(
        model=model,
        net=net,
        train=tuple(t.to(device) for t in train),
        val=tuple(t.to(device) for t in val),
        loss_fn=loss_fn,
        params=params,
        optimizer=optimizer,
        scaler=torch.amp.GradScaler("cuda", enabled=amp),
        activity=activity,
        device=device,
        amp=amp,
        world=world,
        rank=rank,
        batch_size=-(-params.batch_size // world),
        generator=torch.Generator().manual_seed(params.seed),
        desc=desc,
        # Seeded apart from the shuffle (and per rank under DDP), so each stream repeats on its own.
        augment=augmenter(augment, train[0], seed=params.seed * 1_000 + 1 + rank),
        online=online,
    )


def fit(
    model: nn.Module,
    train: tuple[torch.Tensor, ...],
    val: tuple[torch.Tensor, ...],
    loss_fn: LossFn,
    params: FitParams,
    on_epoch: Optional[EpochLogger] = None,
    desc: str = "train",
    quiet: bool = False,
    frozen: tuple[str, ...] = (),
    unfreeze_after: int = 0,
    tensorboard_dir: Optional[str] = None,
    augment: Optional[AugmentParams] = None,
    online: Optional[Online] = None,
) -> FitResult:
    """Train on `train`, stop on the validation loss (patience or the correlation
    criterion) and restore the best weights. `train` and `val` are (x, *targets).

    Per batch (`_Loop.step`): data loss + weight and activity penalties,
    backward, clipping, optimizer step, weight constraint. Per epoch
    (`_Loop.epoch`): validation loss (no penalties), learning-rate schedule,
    stopping rule, then the callbacks (on_epoch, TensorBoard, the bar).

    `augment`: each train batch is augmented first (tasks/ml/augment.py;
    pictures only). `online(x)`: targets computed on that very view and passed
    to loss_fn before the batch's own (function-matching distillation)."""
    from tasks.core.progress import progress
    from tasks.ml import distributed
    from tasks.ml.optim import make_scheduler, step_scheduler

    _set_trainable(model, frozen, False)
    loop = _make_loop(model, train, val, loss_fn, params, desc, augment, online)
    schedule_options = dict(params.schedule_options)
    if params.schedule == "cosine":
        schedule_options.setdefault("t_max", params.max_epochs)
    scheduler = make_scheduler(params.schedule, loop.optimizer, **schedule_options)
    stopper = make_stopper(params)
    if loop.rank != 0:
        quiet, on_epoch, tensorboard_dir = True, None, None
    writer = None
    if tensorboard_dir:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(tensorboard_dir)

    history: list[dict[str, float]] = []
    bar = progress(range(1, params.max_epochs + 1), desc, "epoch", quiet=quiet)
    try:
        for epoch in bar:
            if frozen and unfreeze_after and epoch == unfreeze_after + 1:
                _set_trainable(model, frozen, True)
            row = loop.epoch(epoch)
            step_scheduler(scheduler, row["val_loss"])
            stop = distributed.from_main(stopper.update(row, model))
            if getattr(stopper, "correlation", None) is not None:
                row["train_val_correlation"] = float(stopper.correlation)
            history.append(row)
            if on_epoch:
                on_epoch(row, epoch)
            if writer:
                for key, value in row.items():
                    writer.add_scalar(f"{desc}/{key}", value, epoch)
            bar.set_postfix(train=f"{row['train_loss']:.4f}", val=f"{row['val_loss']:.4f}")
            if stop:
                # Said on the bar and on its own line: a bar left at 38% reads like a hang.
                bar.set_description(f"{desc}: early stop")
                bar.refresh()
                if not quiet:
                    bar.write(
                        f"{desc}: early stopping ended training at epoch {epoch} of {params.max_epochs} "
                        f"(best epoch {stopper.best_epoch})"
                    )
                break
    finally:
        bar.close()
        if loop.activity is not None:
            loop.activity.detach()
        if writer:
            writer.close()
    stopper.restore(model)
    model.eval()
    return FitResult(
        best_epoch=stopper.best_epoch, best_val_loss=stopper.best, epochs_run=len(history), history=history
    )
