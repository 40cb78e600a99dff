"""tasks/contracts/encoder.py: the knn and iterative imputers in numpy equal
scikit-learn's, and the fitted encoder survives JSON (the form it travels in,
in data/processed/meta.json and in every table model's ONNX metadata)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
from sklearn.experimental import enable_iterative_imputer  # noqa: F401  makes IterativeImputer importable
from sklearn.impute import IterativeImputer, KNNImputer

from tasks.contracts.encoder import Imputer, TableEncoder
from tasks.core.config import parse
from tasks.data.encoding import fit_encoder, fit_imputer

COLUMNS = ("a", "b", "c", "d", "e")


def gappy(n: int, seed: int, all_nan_row: int | None = 3) -> np.ndarray:
    """Correlated columns (so the iterative imputer has something to learn),
    ~15% of values missing, and one row with nothing at all."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, 2))
    x = np.column_stack(
        [
            base[:, 0],
            base[:, 1],
            base[:, 0] * 2 + base[:, 1],
            rng.normal(size=n) * 3 + 1,
            base[:, 0] - base[:, 1] + rng.normal(scale=0.1, size=n),
        ]
    )
    x[rng.random(x.shape) < 0.15] = np.nan
    if all_nan_row is not None:
        x[all_nan_row] = np.nan
    return x


def missing_fraction(x: np.ndarray) -> float:
    return float(np.isnan(x).mean())


def sklearn_imputer(method: str, k: int, seed: int):
    if method == "knn":
        return KNNImputer(n_neighbors=k, keep_empty_features=True)
    return IterativeImputer(random_state=seed, max_iter=10, keep_empty_features=True)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("method, k", [("knn", 1), ("knn", 3), ("knn", 5), ("iterative", 0)])
def test_the_imputer_equals_scikit_learns(method, k, seed):
    train, test = gappy(120, seed), gappy(40, seed + 100, all_nan_row=7)
    assert 0.12 < missing_fraction(train[np.isfinite(train).any(axis=1)]) < 0.2
    assert np.isnan(train[3]).all() and np.isnan(test[7]).all()
    ours = fit_imputer(train.copy(), COLUMNS, method, knn_neighbors=k or 5, seed=seed)
    assert ours.method == method
    reference = sklearn_imputer(method, k, seed)
    expected_train = reference.fit_transform(train.copy())  # what scikit-learn gives for the rows it fitted on
    expected_test = reference.transform(test.copy())

    got_test = ours.impute(test, COLUMNS)
    got_train = ours.impute(train, COLUMNS)
    assert not np.isnan(got_test).any() and not np.isnan(got_train).any()
    np.testing.assert_allclose(got_test, expected_test, rtol=0, atol=1e-9)
    np.testing.assert_allclose(got_train, expected_train, rtol=0, atol=1e-9)
    # Observed values are never changed.
    np.testing.assert_array_equal(got_test[~np.isnan(test)], test[~np.isnan(test)])


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # 10 rounds, as in fit_imputer
@pytest.mark.parametrize("method", ["knn", "iterative"])
def test_a_column_never_observed_is_kept_as_scikit_learn_keeps_it(method):
    # A column with no value at all (in training and at serving) stays, as 0,
    # so the model's width never changes. (For a value that does arrive in such
    # a column, scikit-learn's KNNImputer writes 0 while this imputer, like
    # scikit-learn's IterativeImputer and SimpleImputer, keeps the value.)
    train, test = gappy(80, 5), gappy(30, 6)
    train[:, 2] = np.nan
    test[:, 2] = np.nan
    ours = fit_imputer(train.copy(), COLUMNS, method, knn_neighbors=3, seed=0)
    reference = sklearn_imputer(method, 3, 0)
    expected_train = reference.fit_transform(train.copy())
    got = ours.impute(test, COLUMNS)
    assert got.shape == test.shape and (got[:, 2] == 0).all()
    np.testing.assert_allclose(got, reference.transform(test.copy()), rtol=0, atol=1e-9)
    np.testing.assert_allclose(ours.impute(train, COLUMNS), expected_train, rtol=0, atol=1e-9)


def test_the_imputer_does_not_change_its_input():
    train = gappy(50, 9)
    before = train.copy()
    for method in ("knn", "iterative"):
        imputer = fit_imputer(train, COLUMNS, method, knn_neighbors=3, seed=0)
        imputer.impute(train, COLUMNS)
        np.testing.assert_array_equal(train, before)  # NaN-aware equality


# --------------------------------------------------------------------------- JSON


def frame(x: np.ndarray, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    color = rng.choice(["red", "green", "blue"], len(x)).astype(object)
    color[rng.random(len(x)) < 0.1] = None
    rows = pd.DataFrame(x, columns=list(COLUMNS))
    rows["color"] = color
    return rows


TYPES = {**{c: "numeric" for c in COLUMNS}, "color": "categorical"}


@pytest.mark.parametrize("impute", ["median", "mean", "most_frequent", "knn", "iterative"])
def test_the_encoder_round_trips_through_json_and_encodes_identically(impute):
    train, test = frame(gappy(100, 0), 0), frame(gappy(30, 1, all_nan_row=2), 1)
    encoder = fit_encoder(train, TYPES, impute, knn_neighbors=4, seed=3)
    text = json.dumps(dataclasses.asdict(encoder))
    back = parse(TableEncoder, json.loads(text), "encoder.json")
    assert isinstance(back, TableEncoder) and isinstance(back.imputer, Imputer)
    assert back == encoder
    assert back.feature_names == encoder.feature_names and back.width == encoder.width
    for rows in (test, train):
        before, after = encoder.encode(rows), back.encode(rows)
        assert after.dtype == np.float32 and after.shape == (len(rows), encoder.width)
        assert not np.isnan(after).any()
        np.testing.assert_array_equal(after, before)
