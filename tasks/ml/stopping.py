"""When to stop training, and which weights to keep.

Both stoppers are fed once per epoch, after validation:

    stopper = EarlyStopping(patience=8)          # or CorrelationStopping(window=5, threshold=0.5)
    for epoch in ...:
        ...
        if stopper.update({"train_loss": t, "val_loss": v}, model):
            break                                  # the best weights are already back in `model`
    stopper.restore(model)                         # also when max_epochs ran out first

Both keep a deep copy of the weights from the epoch with the best validation
score and put them back on stop, so the model that leaves the loop is the best
one seen, not the last (overfitted) one.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Literal, Mapping, Optional

import numpy as np
from torch import nn

Mode = Literal["min", "max"]


class _BestWeights:
    """The best value of one metric so far and, optionally, the weights at that epoch."""

    def __init__(self, mode: Mode, min_delta: float, keep_weights: bool):
        self.mode = mode
        self.min_delta = min_delta
        self.keep_weights = keep_weights
        self.value = math.inf if mode == "min" else -math.inf
        self.epoch = 0  # 0: no improvement seen yet
        self.state: Optional[dict[str, Any]] = None

    def offer(self, value: float, epoch: int, model: nn.Module) -> bool:
        """Record `value` if it beats the best by more than min_delta; NaN never does."""
        better = value < self.value - self.min_delta if self.mode == "min" else value > self.value + self.min_delta
        if better:
            self.value, self.epoch = value, epoch
            if self.keep_weights:
                # deepcopy, not state_dict() alone: that returns references the next step overwrites.
                self.state = copy.deepcopy(model.state_dict())
        return better

    def restore(self, model: nn.Module) -> bool:
        if self.state is None:
            return False
        model.load_state_dict(self.state)
        return True


def _metric(metrics: Mapping[str, float], key: str, who: str) -> float:
    if key not in metrics:
        raise ValueError(f"{who}: metric '{key}' is not among this epoch's metrics {sorted(metrics)}")
    return float(metrics[key])


class EarlyStopping:
    """Stop after `patience` epochs in a row without an improvement of `monitor`
    larger than `min_delta` (Prechelt 1998's "patience" criterion, Keras' EarlyStopping).

    mode "min" for losses, "max" for scores such as accuracy or macro-F1.
    min_delta keeps noise-sized improvements from resetting the count. With
    `restore_best`, the weights of the best epoch are copied at each
    improvement and loaded back when update() says stop, and by restore()."""

    def __init__(
        self,
        monitor: str = "val_loss",
        mode: Mode = "min",
        patience: int = 8,
        min_delta: float = 0.0,
        restore_best: bool = True,
    ):
        if mode not in ("min", "max"):
            raise ValueError(f"early stopping: option 'mode' must be 'min' or 'max', got {mode!r}")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"early stopping: option 'patience' must be an integer >= 1, got {patience!r}")
        if isinstance(min_delta, bool) or not isinstance(min_delta, (int, float)) or not 0 <= min_delta < math.inf:
            raise ValueError(f"early stopping: option 'min_delta' must be a number >= 0, got {min_delta!r}")
        self.monitor = monitor
        self.patience = patience
        self.restore_best = restore_best
        self._best = _BestWeights(mode, float(min_delta), keep_weights=restore_best)
        self.epoch = 0  # epochs seen (1-based count, like fit's)
        self.stale = 0  # epochs since the last improvement
        self.stopped = False

    @property
    def best(self) -> float:
        return self._best.value

    @property
    def best_epoch(self) -> int:
        return self._best.epoch

    def update(self, metrics: Mapping[str, float], model: nn.Module) -> bool:
        """Take one epoch's metrics; True means stop now (best weights restored)."""
        self.epoch += 1
        value = _metric(metrics, self.monitor, "early stopping")
        if self._best.offer(value, self.epoch, model):
            self.stale = 0
        else:
            self.stale += 1
        self.stopped = self.stale >= self.patience
        if self.stopped:
            self.restore(model)
        return self.stopped

    def restore(self, model: nn.Module) -> bool:
        """Load the best epoch's weights into `model`; False if there are none to load."""
        return self._best.restore(model)  # no snapshot is kept without restore_best


def pearson(x: Any, y: Any) -> float:
    """Pearson correlation of two equal-length series.

    0.0 when either is constant (a flat validation loss does not follow the
    training loss); NaN when a value is not finite."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise ValueError(f"pearson needs two 1-D series of the same length >= 2, got {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return math.nan
    da, db = a - a.mean(), b - b.mean()
    denominator = math.sqrt(float((da * da).sum()) * float((db * db).sum()))
    return float((da * db).sum()) / denominator if denominator > 0 else 0.0


class CorrelationStopping:
    """Correlation-Driven Stopping Criterion, CDSC (Miseta, Fodor & Vathy-Fogarassy,
    "Surpassing early stopping", Neurocomputing 567, 2024, 127028).

    While a model still generalises, the training and validation losses fall
    together and their correlation over recent epochs is high. Once it
    overfits, the training loss keeps falling while the validation loss
    flattens or rises, and the correlation collapses (and turns negative).
    Unlike patience-based early stopping, this reacts to the *shape* of the two
    curves, not to how long the validation loss has failed to set a record.

    The rule implemented, at the end of epoch n (n = 1, 2, ...):

    1. append train_loss_n and val_loss_n to the histories; if val_loss_n is the
       lowest so far, keep a deep copy of the weights;
    2. if n < window: continue (no correlation is computed on fewer points, so
       training never stops before epoch `window`);
    3. r_n = Pearson(train_loss[n-window+1 .. n], val_loss[n-window+1 .. n]),
       the rolling correlation over the last `window` epochs (0 if either series
       is constant in the window, NaN if a loss is not finite);
    4. if r_n < threshold (or is NaN) count a strike, else reset the count to 0;
    5. stop when `patience` strikes come in a row, and load the best-validation
       weights back into the model.

    Parameters: `window` (the paper's omega, >= 3: Pearson on two points is
    always +-1), `threshold` (mu, in [-1, 1]) and `patience` (lambda, >= 1).
    patience = 1 is the plain rule "stop when the rolling correlation drops
    below the threshold"; a larger value rides out single noisy epochs. The
    authors' README describes the correlation staying below the threshold for
    `patience` epochs, which is what is done here; their Keras callback
    counts strikes without resetting them.

    Caveat: once both curves flatten into noise, the correlation of the noise is
    near 0 and the criterion stops too, which is intended (nothing left to
    gain), but a noisy, slowly improving run wants a longer window.
    """

    def __init__(
        self,
        window: int = 5,
        threshold: float = 0.5,
        patience: int = 1,
        train_key: str = "train_loss",
        val_key: str = "val_loss",
        restore_best: bool = True,
    ):
        if isinstance(window, bool) or not isinstance(window, int) or window < 3:
            raise ValueError(f"correlation stopping: option 'window' must be an integer >= 3, got {window!r}")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not -1 <= threshold <= 1:
            raise ValueError(f"correlation stopping: option 'threshold' must lie in [-1, 1], got {threshold!r}")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"correlation stopping: option 'patience' must be an integer >= 1, got {patience!r}")
        self.window = window
        self.threshold = float(threshold)
        self.patience = patience
        self.train_key = train_key
        self.val_key = val_key
        self.restore_best = restore_best
        self._best = _BestWeights("min", 0.0, keep_weights=restore_best)
        self.train_losses: list[float] = []
        self.val_losses: list[float] = []
        self.correlations: list[float] = []  # r_n for n = window, window + 1, ...
        self.strikes = 0
        self.stopped = False

    @property
    def epoch(self) -> int:
        return len(self.val_losses)

    @property
    def best(self) -> float:
        return self._best.value

    @property
    def best_epoch(self) -> int:
        return self._best.epoch

    @property
    def correlation(self) -> Optional[float]:
        """The latest rolling correlation (None before `window` epochs): worth logging."""
        return self.correlations[-1] if self.correlations else None

    def update(self, metrics: Mapping[str, float], model: nn.Module) -> bool:
        """Take one epoch's losses; True means stop now (best weights restored)."""
        self.train_losses.append(_metric(metrics, self.train_key, "correlation stopping"))
        self.val_losses.append(_metric(metrics, self.val_key, "correlation stopping"))
        self._best.offer(self.val_losses[-1], self.epoch, model)
        if self.epoch < self.window:
            return False
        r = pearson(self.train_losses[-self.window :], self.val_losses[-self.window :])
        self.correlations.append(r)
        self.strikes = self.strikes + 1 if not r >= self.threshold else 0  # `not >=` counts NaN
        self.stopped = self.strikes >= self.patience
        if self.stopped:
            self.restore(model)
        return self.stopped

    def restore(self, model: nn.Module) -> bool:
        """Load the best-validation weights into `model`; False if there are none to load."""
        return self._best.restore(model)  # no snapshot is kept without restore_best
