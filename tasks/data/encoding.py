"""Fitting the table encoder (tasks.contracts.encoder) on the train split."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tasks.contracts.encoder import (
    DateColumn,
    ImputeMethod,
    Imputer,
    IterativeStep,
    Reading,
    TableEncoder,
    as_dates,
    encode_matrix,
    number_block,
    number_columns,
)


def fit_encoder(
    train: pd.DataFrame,
    column_types: dict[str, str],
    impute: ImputeMethod,
    knn_neighbors: int = 5,
    seed: int = 0,
    date_formats: dict[str, str] | None = None,
    reading: Reading | None = None,
) -> TableEncoder:
    """Everything `TableEncoder.encode` needs, learnt from the train split: the
    numeric, yes/no and date columns and their imputer, and each categorical
    column's categories. `date_formats`: each date column's format, as the gate
    read it (ISO 8601 where not given). `reading`: the gate's corrections of raw
    cells, carried so that serving replays them."""
    of_type = {kind: tuple(c for c, t in column_types.items() if t == kind) for kind in set(column_types.values())}
    numeric, booleans = of_type.get("numeric", ()), of_type.get("boolean", ())
    formats = date_formats or {}
    dates = {c: date_column(train[c], formats.get(c, "ISO8601")) for c in of_type.get("datetime", ())}
    categorical = {
        c: tuple(sorted(train[c].dropna().astype(str).unique().tolist())) for c in of_type.get("categorical", ())
    }
    x = number_block(train, numeric, booleans, dates)
    imputer = fit_imputer(x, number_columns(numeric, booleans, dates), impute, knn_neighbors, seed)
    return TableEncoder(
        numeric=numeric, categorical=categorical, imputer=imputer, booleans=booleans, dates=dates, reading=reading
    )


def date_column(values: pd.Series, format: str) -> DateColumn:
    """A date becomes its year, month, day and weekday (skrub's DatetimeEncoder,
    with the weekday: habits follow the week); its hour too when the training
    values carry times of day."""
    dates = as_dates(values, format).dropna()
    timed = bool((dates != dates.dt.normalize()).any())
    return DateColumn(format, ("year", "month", "day", "weekday", *(("hour",) if timed else ())))


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
