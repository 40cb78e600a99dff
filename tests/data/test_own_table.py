"""A table a user brings, from the CSV file through the gate to preprocess:
dates and yes/no columns in any spelling become features that serving can
read from the raw row, a regression target meets a default gate that fits
it, and a rare class the gate lets through is handled by the label-error
check and the split instead of stopping them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.contracts.processed import ROW_IDS, X
from tasks.core.params import Params, load_params
from tasks.data.gate import GateResult, default_suite, gate, load_suite
from tasks.data.sources import read_csv_text
from tasks.ingest import ingest
from tasks.preprocess import preprocess_table

REPO = Path(__file__).resolve().parents[2]
CLASS_CHECKS = {
    "expect_column_values_to_be_in_set",
    "expect_column_value_counts_to_be_at_least",
    "expect_column_imbalance_ratio_to_be_at_most",
    "expect_column_normalized_entropy_to_be_at_least",
}


def csv_params(frame: pd.DataFrame, tmp_path: Path, target: str, task: str, **validate) -> Params:
    path = tmp_path / "mine.csv"
    frame.to_csv(path, index=False)
    base = load_params(REPO / "params.yaml")
    return dataclasses.replace(
        base,
        task=dataclasses.replace(base.task, type=task),
        data=dataclasses.replace(base.data, source="csv", path=str(path), target=target, columns={}),
        validate=dataclasses.replace(base.validate, **validate),
    )


def run(params: Params) -> GateResult:
    """The validate stage's gate with the suite it would pick by default."""
    with_suite = default_suite(params.data.source, params.task.type)
    return gate(ingest(params.data), params.task.type, params.validate, load_suite(REPO / with_suite))


def customers(n: int = 300, seed: int = 0) -> pd.DataFrame:
    """Sign-up dates (ISO, with times), last visits (day first, with gaps), yes/no
    columns spelt four ways, a number, and a target that depends on the dates."""
    rng = np.random.default_rng(seed)
    signed = pd.Timestamp("2020-01-01") + pd.to_timedelta(rng.integers(0, 1000, n), unit="D")
    visit = signed + pd.to_timedelta(rng.integers(1, 300, n), unit="D")
    return pd.DataFrame(
        {
            "signed_up": (signed + pd.to_timedelta(rng.integers(8, 20, n), unit="h")).strftime("%Y-%m-%d %H:%M"),
            "last_visit": pd.Series(visit.strftime("%d/%m/%Y")).where(rng.random(n) > 0.1, ""),
            "newsletter": rng.choice(["Y", "N", "y", "n"], n),
            "mobile": rng.choice(["yes", "No", "TRUE", "false", ""], n),
            "spend": rng.gamma(2.0, 50.0, n).round(2).astype(str),
            "churned": np.where(signed.year.to_numpy() < 2021, "yes", "no"),
        }
    )


def test_dates_and_yes_no_columns_are_features_a_raw_row_encodes_to(tmp_path: Path) -> None:
    params = csv_params(customers(), tmp_path, "churned", "binary")
    result = run(params)
    assert result.outcome.success and result.summary["rows_quarantined"] == 0
    meta = result.valid.meta
    assert {c: meta.column_types[c] for c in ("signed_up", "last_visit", "newsletter", "mobile")} == {
        "signed_up": "datetime",
        "last_visit": "datetime",
        "newsletter": "boolean",
        "mobile": "boolean",
    }
    assert meta.date_formats == {"signed_up": "ISO8601", "last_visit": "%d/%m/%Y"}
    assert set(meta.features) == {"signed_up", "last_visit", "newsletter", "mobile", "spend"}
    splits, processed = preprocess_table(result.valid, params.preprocess, params.task.type)
    encoder = processed.encoder
    assert encoder.booleans == ("newsletter", "mobile") and list(encoder.dates) == ["signed_up", "last_visit"]
    assert "signed_up.year" in processed.feature_names and "last_visit.weekday" in processed.feature_names
    # The rows as the file holds them (text, "" for a gap) encode to what the model trained on.
    raw = read_csv_text(Path(params.data.path), "utf-8").replace("", None)
    test_rows = raw.iloc[splits["test"][ROW_IDS]]
    np.testing.assert_allclose(encoder.encode(test_rows), splits["test"][X], rtol=1e-6)


def house_prices(n: int = 200, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    area = rng.integers(50, 250, n)
    return pd.DataFrame(
        {
            "area": [f"{a} sqft" for a in area],
            "style": rng.choice(["1Story", "2Story", "SLvl"], n),
            "garage": rng.choice(["Y", "N"], n),
            "price": (area * 2500 + rng.normal(0, 20_000, n)).round(0).astype(str),
        }
    )


def test_a_regression_table_passes_the_default_gate_of_its_task_with_no_class_checks(tmp_path: Path) -> None:
    params = csv_params(house_prices(), tmp_path, "price", "regression")
    assert default_suite("csv", "regression").name == "csv.regression.json"
    assert default_suite("csv", "multiclass").name == "csv.json"
    result = run(params)
    assert result.outcome.success, [(r["expectation"], r["observed_value"]) for r in result.outcome.failed]
    on_target = {r["expectation"] for r in result.outcome.results if r["column"] == "label"}
    assert not on_target & CLASS_CHECKS
    assert {"expect_column_values_to_not_be_null", "expect_column_stdev_to_be_between"} <= on_target
    # The classification gate would have refused it: a price is no class.
    classes = gate(ingest(params.data), "regression", params.validate, load_suite(REPO / "expectations/csv.json"))
    assert not classes.outcome.success


def test_the_regression_gate_quarantines_an_infinite_target_and_refuses_a_constant_one(tmp_path: Path) -> None:
    frame = house_prices()
    frame.loc[3, "price"] = "inf"
    result = run(csv_params(frame, tmp_path, "price", "regression"))
    assert result.outcome.success and result.quarantined.table["row_id"].tolist() == [3]
    constant = run(csv_params(house_prices().assign(price="100000"), tmp_path, "price", "regression"))
    assert {(r["expectation"], r["column"]) for r in constant.outcome.failed} == {
        ("expect_column_stdev_to_be_between", "label")
    }


def test_a_rare_class_the_gate_lets_through_is_skipped_by_the_label_check_and_dealt_by_the_split(
    tmp_path: Path,
) -> None:
    frame = customers()
    frame["churned"] = np.where(np.arange(len(frame)) < 2, "maybe", frame["churned"])  # 2 rows: under 5 folds
    params = csv_params(frame, tmp_path, "churned", "multiclass", min_class_rows=2)
    result = run(params)
    assert result.outcome.success
    assert result.label_report["skipped_classes"] == {"maybe": 2}
    splits, processed = preprocess_table(result.valid, params.preprocess, params.task.type)
    maybe = processed.classes.index("maybe")
    assert {name: int((s["y"] == maybe).sum()) for name, s in splits.items()} == {"train": 1, "val": 0, "test": 1}
