"""Correlation-driven stopping (Miseta, Fodor & Vathy-Fogarassy) against
patience-based early stopping, on a deliberately overfitting configuration.

    python -m bench.bench_stopping

Overfitting by construction: a wide CNN, no dropout, a small train split (15%
of the digits train rows) and a high learning rate. Both runs start from the
same seed; each reports the epoch it stopped at, the epoch whose weights it
kept, the epochs it trained, and test macro-F1 and loss of the kept weights.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch

from bench.common import processed_digits, record
from tasks.core.params import load_params
from tasks.evaluation.metrics import class_logits, softmax, task_metrics
from tasks.ml.fitting import train_teacher
from tasks.ml.models import predict_logits


def main() -> None:
    torch.set_num_threads(2)
    params = load_params()
    splits, meta = processed_digits(params)
    rng = np.random.default_rng(0)
    keep = rng.choice(len(splits["train"]["y"]), size=len(splits["train"]["y"]) * 15 // 100, replace=False)
    train = (splits["train"]["x"][keep], splits["train"]["y"][keep])
    val = (splits["val"]["x"], splits["val"]["y"])
    test_x, test_y = splits["test"]["x"], splits["test"]["y"]
    overfitting = dataclasses.replace(
        params.train,
        channels=(64, 128),
        hidden=256,
        dropout=0.0,
        lr=0.005,
        max_epochs=100,
        min_delta=0.0,
        class_weighting="none",
    )
    runs = {
        "patience": dataclasses.replace(overfitting, stopping="patience", patience=10),
        "correlation": dataclasses.replace(
            overfitting, stopping="correlation", patience=2, correlation_window=5, correlation_threshold=0.5
        ),
    }
    results = {}
    for name, run in runs.items():
        start = time.perf_counter()
        model, fit = train_teacher(train, val, meta, run, quiet=True)
        seconds = time.perf_counter() - start
        logits = predict_logits(model, test_x)
        probabilities = softmax(class_logits(logits))
        test_loss = float(-np.log(probabilities[np.arange(len(test_y)), test_y] + 1e-12).mean())
        results[name] = {
            "stopped_at_epoch": fit.epochs_run,
            "kept_epoch": fit.best_epoch,
            "best_val_loss": fit.best_val_loss,
            "test_macro_f1": task_metrics("multiclass", logits, test_y, list(meta.classes))["macro_f1"],
            "test_loss": test_loss,
            "train_seconds": round(seconds, 2),
        }
    results["epochs_saved_by_correlation"] = (
        results["patience"]["stopped_at_epoch"] - results["correlation"]["stopped_at_epoch"]
    )
    results["config"] = {
        "train_rows": len(train[1]),
        "channels": [64, 128],
        "hidden": 256,
        "dropout": 0.0,
        "lr": 0.005,
        "patience": 10,
        "correlation": {"window": 5, "threshold": 0.5, "patience": 2},
    }
    record("stopping", results)
    print(results)


if __name__ == "__main__":
    main()
