"""tasks/contracts/encoder.py: the knn and iterative imputers in numpy equal
scikit-learn's, dates and yes/no columns become numbers read alike from the
user's spelling and from the gate's typed table, and the fitted encoder
survives JSON (the form it travels in, in data/processed/meta.json and in
every table model's ONNX metadata)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
from conftest import params_section
from sklearn.experimental import enable_iterative_imputer  # noqa: F401  makes IterativeImputer importable
from sklearn.impute import IterativeImputer, KNNImputer

from tasks.contracts.encoder import Imputer, TableEncoder
from tasks.core.config import parse
from tasks.data.correct import correct_table
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


# --------------------------------------------------------------------------- dates and yes/no


def raw_dated(n: int, seed: int) -> pd.DataFrame:
    """Rows as a user writes them (and as a client sends them): dates with times
    in ISO 8601, dates day first, yes/no in several spellings, gaps in each."""
    rng = np.random.default_rng(seed)
    days = pd.Timestamp("2021-01-01") + pd.to_timedelta(rng.integers(0, 700, n), unit="D")
    hours = pd.to_timedelta(rng.integers(0, 24, n), unit="h")
    rows = pd.DataFrame(
        {
            "x": rng.normal(size=n),
            "signed_up": (days + hours).strftime("%Y-%m-%dT%H:%M").astype(object),
            "visit": days.strftime("%d/%m/%Y").astype(object),
            "member": rng.choice(["Y", "N", "yes", "no ", "TRUE", "f", "1", "0"], n).astype(object),
            "color": rng.choice(["red", "green"], n).astype(object),
        }
    )
    for col in ("signed_up", "visit", "member"):
        rows.loc[rng.random(n) < 0.1, col] = None
    return rows


@pytest.mark.parametrize("impute", ["median", "mean", "most_frequent", "knn", "iterative"])
def test_dates_and_yes_no_become_numbers_read_alike_from_raw_and_typed_rows_and_survive_json(impute):
    raw = raw_dated(120, 0).assign(row_id=np.arange(120), label="a")
    corrected = correct_table(raw, "label", {}, "binary", params_section("validate"))
    types = corrected.column_types
    assert types == {
        "x": "numeric",
        "signed_up": "datetime",
        "visit": "datetime",
        "member": "boolean",
        "color": "categorical",
    }
    typed = corrected.table
    encoder = fit_encoder(typed, types, impute, knn_neighbors=4, seed=3, date_formats=corrected.date_formats)
    assert encoder.booleans == ("member",) and set(encoder.dates) == {"signed_up", "visit"}
    assert encoder.dates["visit"].format == "%d/%m/%Y" and encoder.dates["signed_up"].format == "ISO8601"
    assert encoder.feature_names == (
        "x",
        "member",
        *(f"signed_up.{p}" for p in ("year", "month", "day", "weekday", "hour")),  # times of day: the hour too
        *(f"visit.{p}" for p in ("year", "month", "day", "weekday")),
        "color=green",
        "color=red",
    )
    # Serving reads the user's spelling ("N", "13/04/2021") as training read the typed table.
    from_typed, from_raw = encoder.encode(typed), encoder.encode(raw)
    np.testing.assert_array_equal(from_raw, from_typed)
    assert from_raw.shape == (120, encoder.width) and not np.isnan(from_raw).any()
    row = raw.index[raw["visit"].notna() & raw["member"].notna()][0]
    day, month, year = (int(v) for v in raw.loc[row, "visit"].split("/"))
    visit = from_raw[row, encoder.feature_names.index("visit.year") :][:4]
    assert visit.tolist() == [year, month, day, pd.Timestamp(year, month, day).weekday()]
    member = raw.loc[row, "member"].strip().lower() in ("y", "yes", "true", "1")
    assert from_raw[row, 1] == float(member)
    # The fitted encoder is plain data: JSON and back, and it encodes the same.
    back = parse(TableEncoder, json.loads(json.dumps(dataclasses.asdict(encoder))), "encoder.json")
    assert back == encoder
    np.testing.assert_array_equal(back.encode(raw_dated(30, 1)), encoder.encode(raw_dated(30, 1)))


def test_an_encoder_written_before_dates_and_yes_no_still_reads():
    # Models exported before these fields existed carry no `booleans` or `dates` key.
    old = {"numeric": ["x"], "categorical": {"c": ["a"]}, "imputer": {"method": "median", "fill_values": {"x": 1.0}}}
    encoder = parse(TableEncoder, old, "old.onnx")
    assert encoder.booleans == () and encoder.dates == {} and encoder.feature_names == ("x", "c=a")


def test_the_gates_corrections_travel_with_the_encoder_and_older_encoders_still_parse():
    """TableEncoder.reading: the gate's corrections of raw cells as plain data,
    replayed by TableEncoder.read with the gate's own functions; an encoder
    written before it existed parses with none, and reads cells as sent."""
    from tasks.contracts.encoder import Reading

    reading = Reading(("NA", "n/a"), True, True, {"home": {"own home": "OWN"}})
    train = pd.DataFrame({"income": [1.0, 2.0, None], "home": ["MORTGAGE", "RENT", "OWN"]})
    encoder = fit_encoder(train, {"income": "numeric", "home": "categorical"}, "median", reading=reading)
    as_json = json.loads(json.dumps(dataclasses.asdict(encoder)))
    assert parse(TableEncoder, as_json, "meta") == encoder
    rows = pd.DataFrame(
        {"income": ["65000", " n/a ", "12,000 $", "lots"], "home": [" mortgage", "Own Home", "x", "NA"]}
    )
    read, refused = encoder.read(rows)
    assert read["income"].tolist()[0::2] == [65000.0, 12000.0] and read["income"].isna().tolist()[1::2] == [True] * 2
    assert refused["income"].tolist() == [False, False, False, True]
    assert read["home"].tolist()[:3] == ["MORTGAGE", "OWN", "x"] and read["home"].isna().tolist()[3]
    del as_json["reading"]
    old = parse(TableEncoder, as_json, "meta")
    assert old.reading is None and old.read(rows)[0] is rows


def test_the_gate_records_the_corrections_it_applied_for_the_encoder():
    raw = raw_dated(40, 1).assign(row_id=np.arange(40), label="a")
    validate = params_section("validate", synonyms={"color": {"rouge": "red"}, "label": {"A": "a"}})
    reading = correct_table(raw, "label", {}, "binary", validate).reading
    assert reading is not None and reading.missing_tokens == tuple(validate.missing_tokens)
    assert (reading.coerce_numeric, reading.normalise_categories) == (
        validate.coerce_numeric,
        validate.normalise_categories,
    )
    assert reading.synonyms == {"color": {"rouge": "red"}}  # the target's synonyms are not a feature's
