"""Fitting the table encoder (tasks.contracts.encoder) on the train split."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tasks.contracts.encoder import (
    ImputeMethod,
    Imputer,
    IterativeStep,
    TableEncoder,
    encode_matrix,
)


def fit_encoder(
    train: pd.DataFrame, column_types: dict[str, str], impute: ImputeMethod, knn_neighbors: int = 5, seed: int = 0
) -> TableEncoder:
    """Everything `TableEncoder.encode` needs, learnt from the train split: the
    numeric columns and their imputer, and each categorical column's categories."""
    numeric = tuple(c for c, t in column_types.items() if t == "numeric")
    categorical = {
        c: tuple(sorted(train[c].dropna().astype(str).unique().tolist()))
        for c, t in column_types.items()
        if t == "categorical"
    }
    x = train[list(numeric)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    return TableEncoder(
        numeric=numeric, categorical=categorical, imputer=fit_imputer(x, numeric, impute, knn_neighbors, seed)
    )


def _statistic(column: np.ndarray, method: str) -> float:
    values = column[~np.isnan(column)]
    if values.size == 0:
        return 0.0  # an empty column: nothing to learn, and the model sees a constant
    if method == "median":
        return float(np.median(values))
    if method == "most_frequent":
        return float(pd.Series(values).mode().iloc[0])
    return float(values.mean())  # mean, and the fallback of knn and iterative (as scikit-learn's)


def fit_imputer(
    x: np.ndarray, columns: tuple[str, ...], method: ImputeMethod, knn_neighbors: int = 5, seed: int = 0
) -> Imputer:
    simple = method if method in ("median", "most_frequent") else "mean"
    fill = {c: _statistic(x[:, i], simple) for i, c in enumerate(columns)}
    if method == "knn" and columns:
        return Imputer(method, fill, neighbors=knn_neighbors, donors=encode_matrix(x))
    if method == "iterative" and columns:
        return _fit_iterative(x, fill, seed)
    return Imputer(method, fill)


def _fit_iterative(x: np.ndarray, fill: dict[str, float], seed: int) -> Imputer:
    """scikit-learn's IterativeImputer (BayesianRidge, mean start, 10 rounds),
    kept as its linear steps."""
    from sklearn.experimental import enable_iterative_imputer  # noqa: F401  makes IterativeImputer importable
    from sklearn.impute import IterativeImputer

    # keep_empty_features: an all-missing column stays (as 0), so the widths never change.
    imputer = IterativeImputer(random_state=seed, max_iter=10, keep_empty_features=True)
    imputer.fit(np.array(x, dtype=np.float64))  # a writable copy: with an all-missing column sklearn writes into X
    steps = tuple(
        IterativeStep(
            feature=int(t.feat_idx),
            predictors=tuple(int(i) for i in t.neighbor_feat_idx),
            coef=tuple(float(c) for c in t.estimator.coef_),
            intercept=float(t.estimator.intercept_),
        )
        for t in imputer.imputation_sequence_
    )
    start = {c: float(v) for c, v in zip(fill, imputer.initial_imputer_.statistics_)}
    width = x.shape[1]
    low = tuple(float(v) for v in np.broadcast_to(imputer._min_value, width))
    high = tuple(float(v) for v in np.broadcast_to(imputer._max_value, width))
    return Imputer("iterative", start, steps=steps, low=low, high=high)
