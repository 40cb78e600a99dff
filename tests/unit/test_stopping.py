"""tasks/ml/stopping.py: early stopping counts patience, honours min_delta and
restores the best weights; the correlation-driven criterion waits for a full
window, lets co-falling losses run, and stops soon after an overfitting
divergence with the best-validation weights back in the model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr

from tasks.ml.stopping import CorrelationStopping, EarlyStopping, pearson


def model() -> torch.nn.Linear:
    return torch.nn.Linear(2, 1)


def mark(net: torch.nn.Linear, epoch: int) -> None:
    """Stamp the weights with the epoch number, so restored weights say where they came from."""
    with torch.no_grad():
        net.weight.fill_(float(epoch))
        net.bias.fill_(float(epoch))


def run(stopper, rows: list[dict[str, float]], net: torch.nn.Linear) -> int | None:
    """Feed rows as epochs 1, 2, ...; the epoch update() said stop at, or None."""
    for epoch, row in enumerate(rows, start=1):
        mark(net, epoch)
        if stopper.update(row, net):
            return epoch
    return None


def val_rows(values: list[float]) -> list[dict[str, float]]:
    return [{"val_loss": v} for v in values]


# --------------------------------------------------------------------------- early stopping


def test_early_stopping_stops_after_patience_epochs_without_improvement():
    net = model()
    stopper = EarlyStopping(patience=3)
    # best at epoch 2; epochs 3, 4, 5 do not improve -> stop at 5, not before
    assert run(stopper, val_rows([1.0, 0.8, 0.9, 0.85, 0.95, 0.1]), net) == 5
    assert stopper.best == 0.8 and stopper.best_epoch == 2 and stopper.stopped


def test_an_improvement_resets_the_patience_count():
    stopper = EarlyStopping(patience=2)
    assert run(stopper, val_rows([1.0, 1.1, 0.9, 1.0, 0.8, 0.85, 0.9]), model()) == 7


def test_min_delta_ignores_noise_sized_improvements():
    losses = [1.0, 0.95, 0.92, 0.91, 0.90]
    assert run(EarlyStopping(patience=3, min_delta=0.1), val_rows(losses), model()) == 4
    assert run(EarlyStopping(patience=3, min_delta=0.0), val_rows(losses), model()) is None


def test_early_stopping_restores_the_best_weights_on_stop():
    net = model()
    run(EarlyStopping(patience=2), val_rows([1.0, 0.5, 0.7, 0.9]), net)
    assert (net.weight == 2).all() and (net.bias == 2).all()


def test_the_snapshot_is_a_deep_copy():
    net, stopper = model(), EarlyStopping(patience=5)
    mark(net, 1)
    stopper.update({"val_loss": 1.0}, net)
    mark(net, 99)  # in-place change after the snapshot must not reach it
    assert stopper.restore(net) and (net.weight == 1).all()


def test_restore_after_the_epoch_budget_runs_out_and_without_restore_best():
    net, stopper = model(), EarlyStopping(patience=10)
    assert run(stopper, val_rows([1.0, 0.2, 0.6]), net) is None
    assert stopper.restore(net) and (net.weight == 2).all()
    net, plain = model(), EarlyStopping(patience=1, restore_best=False)
    assert run(plain, val_rows([1.0, 2.0]), net) == 2
    assert (net.weight == 2).all() and not plain.restore(net)  # last weights kept


def test_max_mode_monitors_a_score():
    net = model()
    rows = [{"val_accuracy": a} for a in (0.5, 0.7, 0.6, 0.65)]
    assert run(EarlyStopping(monitor="val_accuracy", mode="max", patience=2), rows, net) == 4
    assert (net.weight == 2).all()


def test_nan_never_counts_as_an_improvement():
    stopper = EarlyStopping(patience=2)
    assert run(stopper, val_rows([1.0, math.nan, math.nan]), model()) == 3
    assert stopper.best == 1.0


@pytest.mark.parametrize(
    "options, match",
    [
        ({"mode": "auto"}, "'mode'"),
        ({"patience": 0}, "'patience'"),
        ({"patience": 2.5}, "'patience'"),
        ({"min_delta": -0.1}, "'min_delta'"),
    ],
)
def test_early_stopping_rejects_bad_options(options, match):
    with pytest.raises(ValueError, match=match):
        EarlyStopping(**options)


def test_a_missing_metric_is_named():
    with pytest.raises(ValueError, match="'val_f1'.*val_loss"):
        EarlyStopping(monitor="val_f1").update({"val_loss": 1.0}, model())


# --------------------------------------------------------------------------- pearson


def test_pearson_matches_scipy_and_handles_degenerate_windows():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=7), rng.normal(size=7)
    assert pearson(x, y) == pytest.approx(pearsonr(x, y).statistic, rel=1e-12)
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert pearson([1, 2, 3], [5, 5, 5]) == 0.0
    assert math.isnan(pearson([1, 2, math.inf], [1, 2, 3]))
    with pytest.raises(ValueError):
        pearson([1, 2], [1, 2, 3])


# --------------------------------------------------------------------------- correlation stopping


def losses(n: int, diverge_at: int | None = None, noise: float = 0.0, seed: int = 0) -> list[dict[str, float]]:
    """Training loss falls for all n epochs; validation falls with it until
    `diverge_at`, then rises linearly (overfitting)."""
    rng = np.random.default_rng(seed)
    epochs = np.arange(1, n + 1)
    train = np.exp(-epochs / 8) + 0.05
    val = 1.1 * np.exp(-epochs / 12) + 0.1
    if diverge_at is not None:
        val = np.where(epochs <= diverge_at, val, val[diverge_at - 1] + 0.02 * (epochs - diverge_at))
    val = val + noise * rng.standard_normal(n)
    return [{"train_loss": float(a), "val_loss": float(b)} for a, b in zip(train, val)]


def test_correlation_stopping_runs_on_while_both_losses_fall():
    stopper = CorrelationStopping(window=5, threshold=0.5)
    assert run(stopper, losses(60), model()) is None
    assert len(stopper.correlations) == 60 - 5 + 1
    assert min(stopper.correlations) > 0.95


@pytest.mark.parametrize("diverge_at", [6, 10, 20])
@pytest.mark.parametrize("noise", [0.0, 0.005])
def test_correlation_stopping_catches_overfitting_within_a_few_epochs(diverge_at, noise):
    net = model()
    stopper = CorrelationStopping(window=5, threshold=0.5)
    stop = run(stopper, losses(60, diverge_at, noise), net)
    assert stop is not None and diverge_at < stop <= diverge_at + 4
    assert stopper.correlation is not None and stopper.correlation < 0.5
    # the best-validation epoch is the last one before the divergence (noise may shift it by one)
    assert abs(stopper.best_epoch - diverge_at) <= 1
    assert (net.weight == stopper.best_epoch).all() and (net.bias == stopper.best_epoch).all()


def test_correlation_stopping_never_stops_before_a_full_window():
    # anti-correlated from the first epoch: the earliest possible stop is epoch `window`
    rows = [{"train_loss": 1.0 / e, "val_loss": float(e)} for e in range(1, 20)]
    stopper = CorrelationStopping(window=7, threshold=0.5)
    for epoch, row in enumerate(rows[:6], start=1):
        assert stopper.update(row, model()) is False
        assert stopper.correlation is None, epoch
    assert stopper.update(rows[6], model()) is True
    assert stopper.epoch == 7 and stopper.correlation == pytest.approx(
        pearsonr([1 / e for e in range(1, 8)], list(range(1, 8))).statistic
    )


def test_correlation_uses_only_the_last_window_epochs():
    rows = losses(30, diverge_at=10)
    stopper = CorrelationStopping(window=4, threshold=-1.0)  # never stops: watch the values only
    run(stopper, rows, model())
    train = [r["train_loss"] for r in rows]
    val = [r["val_loss"] for r in rows]
    for n in (4, 12, 30):
        expected = pearsonr(train[n - 4 : n], val[n - 4 : n]).statistic
        assert stopper.correlations[n - 4] == pytest.approx(expected, rel=1e-9)


def test_patience_needs_consecutive_epochs_below_the_threshold():
    # rolling correlations (window 3): 1.0, 0.59, 0.43 (one dip), 0.89, 1.0, then -0.66, -1.0
    stopper = CorrelationStopping(window=3, threshold=0.5, patience=2)
    net = model()
    train = [3.0, 2.0, 1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
    val = [3.0, 2.0, 1.0, 1.8, 0.4, 0.3, 0.2, 0.5, 0.9]
    stops = [stopper.update({"train_loss": a, "val_loss": b}, net) for a, b in zip(train, val)]
    below = [r < 0.5 for r in stopper.correlations]
    assert below == [False, False, True, False, False, True, True]
    assert stops == [False] * 8 + [True]


def test_a_non_finite_loss_counts_as_below_the_threshold():
    stopper = CorrelationStopping(window=3, threshold=0.5)
    rows = [
        {"train_loss": 3.0, "val_loss": 3.0},
        {"train_loss": 2.0, "val_loss": 2.0},
        {"train_loss": 1.0, "val_loss": math.nan},
    ]
    assert run(stopper, rows, model()) == 3


def test_correlation_stopping_restores_the_best_validation_weights_on_stop():
    net = model()
    stopper = CorrelationStopping(window=3, threshold=0.5)
    rows = [{"train_loss": t, "val_loss": v} for t, v in [(3.0, 3.0), (2.0, 2.0), (1.0, 1.0), (0.5, 2.0)]]
    assert run(stopper, rows, net) == 4
    assert stopper.best_epoch == 3 and (net.weight == 3).all()


@pytest.mark.parametrize(
    "options, match",
    [
        ({"window": 2}, "'window'"),
        ({"window": 5.0}, "'window'"),
        ({"threshold": 1.5}, "'threshold'"),
        ({"threshold": -2}, "'threshold'"),
        ({"patience": 0}, "'patience'"),
    ],
)
def test_correlation_stopping_rejects_bad_options(options, match):
    with pytest.raises(ValueError, match=match):
        CorrelationStopping(**options)


def test_correlation_stopping_names_a_missing_metric():
    with pytest.raises(ValueError, match="'train_loss'"):
        CorrelationStopping().update({"val_loss": 1.0}, model())
