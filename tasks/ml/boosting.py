"""The gradient-boosted model of a table: scikit-learn's HistGradientBoosting
on the encoded features of the train split (the table encoder's output, the
same matrix the networks take), early stopping on the validation split, seeded.

It is the quality reference on tables (the model a data scientist tries
first) and a candidate like the others once exported to ONNX
(tasks/onnx/boosted.py). Nothing here is pickled: the fitted model lives on
as its ONNX graph.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tasks.core.params import BoostParams
from tasks.core.task import task_of


def fit_boosted(
    train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray], task: str, params: BoostParams
) -> Any:
    """A fitted HistGradientBoosting{Classifier,Regressor} for `task`, its
    thresholds made exact for float32 inputs (`exact_float32_thresholds`)."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    common = dict(
        max_iter=params.max_iter,
        learning_rate=params.learning_rate,
        max_leaf_nodes=params.max_leaf_nodes,
        min_samples_leaf=params.min_samples_leaf,
        l2_regularization=params.l2_regularization,
        early_stopping=True,
        n_iter_no_change=params.n_iter_no_change,
        random_state=params.seed,
    )
    if task_of(task).multilabel:
        raise ValueError("the boosted model takes one target per row (binary, multiclass, regression), not multilabel")
    if task_of(task).regression:
        model: Any = HistGradientBoostingRegressor(**common)
    else:
        model = HistGradientBoostingClassifier(
            **common, class_weight=None if params.class_weight == "none" else params.class_weight
        )
    train_x, train_y = train
    val_x, val_y = val
    # Early stopping watches our validation split (scikit-learn >= 1.6), not a slice of train.
    model.fit(train_x.astype(np.float32), train_y, X_val=val_x.astype(np.float32), y_val=val_y)
    exact_float32_thresholds(model)
    return model


def exact_float32_thresholds(model: Any) -> None:
    """Every split threshold t (a float64 midpoint between two training values)
    replaced by the largest float32 not above it. For a float32 input x,
    `x <= t` and `x <= that float32` agree, so the model's answers do not change,
    and an ONNX tree ensemble (float32 thresholds) takes exactly the same
    branches: rounding t to the nearest float32 instead could send a row down
    the other branch (seen: 3 of 442 diabetes rows off by up to 5.7)."""
    for trees in model._predictors:  # one list of trees per round, one tree per class
        for tree in trees:
            nodes = tree.nodes
            split = ~nodes["is_leaf"].astype(bool)
            t = nodes["num_threshold"][split]
            t32 = t.astype(np.float32)
            t32 = np.where(t32.astype(np.float64) > t, np.nextafter(t32, np.float32(-np.inf)), t32)
            nodes["num_threshold"][split] = t32.astype(np.float64)


def boosted_predict(model: Any, x: np.ndarray, task: str) -> np.ndarray:
    """Probabilities [n, classes], or predictions [n, 1] for regression: what
    the ONNX graph's answer output must reproduce."""
    x = x.astype(np.float32)
    if task_of(task).regression:
        return model.predict(x).reshape(-1, 1)
    return model.predict_proba(x)


def tree_nodes(model: Any) -> int:
    """Split and leaf nodes in all the trees: the boosted model's size, as a network's parameter count."""
    return int(sum(len(tree.nodes) for trees in model._predictors for tree in trees))
