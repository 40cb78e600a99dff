"""The gate on bad input: each case checks the verdict, the message, and that no
row was lost (rows_in == rows_valid + rows_quarantined)."""

from __future__ import annotations

import dataclasses
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks.core.errors import DistilleryError
from tasks.core.params import Params, load_params
from tasks.data.gate import GateResult, failure_message, gate, load_suite
from tasks.ingest import ingest

REPO = Path(__file__).resolve().parents[2]
DECLARED = {"age": "numeric", "salary": "numeric", "dept": "categorical", "score": "numeric"}


def clean_frame(n: int = 240, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "age": rng.integers(20, 65, n).astype(str),
            "salary": [f"{v} $" for v in rng.integers(30_000, 90_000, n)],  # numbers with a currency
            "dept": rng.choice(["HR", "hr ", "Human Resources", "Sales", "Engineering"], n),
            "score": rng.normal(size=n).round(6).astype(str),
            "outcome": rng.choice(["yes", "no", "maybe"], n, p=[0.5, 0.3, 0.2]),
        }
    )


def csv_params(path: Path, declared: dict[str, str] | None = None, classes=None) -> Params:
    base = load_params(REPO / "params.yaml")
    data = replace(base.data, source="csv", path=str(path), target="outcome", columns=declared or {}, classes=classes)
    validate = replace(base.validate, synonyms={"dept": {"Human Resources": "HR"}})
    return replace(base, data=data, validate=validate)


def run_gate(
    frame: pd.DataFrame | None, tmp_path: Path, declared=DECLARED, classes=None, raw: bytes | None = None
) -> GateResult:
    path = tmp_path / "data.csv"
    if raw is not None:
        path.write_bytes(raw)
    else:
        frame.to_csv(path, index=False)
    params = csv_params(path, declared, classes)
    result = gate(ingest(params.data), params.task.type, params.validate, load_suite(REPO / "expectations/csv.json"))
    summary = result.summary
    assert summary["rows_in"] == summary["rows_valid"] + summary["rows_quarantined"]
    assert sorted([*result.valid.table["row_id"], *result.quarantined.table["row_id"]]) == list(
        range(summary["rows_in"])
    )
    return result


def failed_names(result: GateResult) -> set[str]:
    return {r["expectation"] for r in result.outcome.failed}


def test_clean_file_passes_with_units_stripped_and_variants_merged(tmp_path: Path) -> None:
    result = run_gate(clean_frame(), tmp_path)
    assert result.outcome.success
    assert result.summary["rows_quarantined"] == 0
    assert result.valid.table["salary"].dtype.kind == "f"  # "65000 $" became 65000.0
    assert set(result.valid.table["dept"].unique()) == {"HR", "Sales", "Engineering"}
    salary = result.report["representation"]["columns"]["salary"]
    assert salary["with_units"] == 240 and salary["units"] == ["$"]
    variants = result.report["representation"]["columns"]["dept"]["variants"]
    assert {"canonical": "HR", "variants": ["HR", "Human Resources", "hr "], "rows": variants[0]["rows"]} in variants


def test_empty_file_is_refused_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(DistilleryError, match=r"data\.csv: the file is empty"):
        run_gate(None, tmp_path, raw=b"")


def test_header_only_fails_the_row_count(tmp_path: Path) -> None:
    result = run_gate(clean_frame().iloc[:0], tmp_path)
    assert not result.outcome.success
    assert "expect_table_row_count_to_be_between" in failed_names(result)
    assert result.summary["rows_in"] == 0


def test_missing_column_fails_naming_it(tmp_path: Path) -> None:
    result = run_gate(clean_frame().drop(columns=["score"]), tmp_path)
    assert "expect_table_columns_to_match_set" in failed_names(result)
    assert "score" in failure_message(result.outcome, Path("expectations/csv.json"))
    assert result.summary["rows_valid"] == 240


def test_unexpected_extra_column_fails_naming_it(tmp_path: Path) -> None:
    frame = clean_frame().assign(surprise="x")
    result = run_gate(frame, tmp_path)
    assert "expect_table_columns_to_match_set" in failed_names(result)
    assert "surprise" in failure_message(result.outcome, Path("expectations/csv.json"))


def test_all_nan_column_fails_naming_it(tmp_path: Path) -> None:
    result = run_gate(clean_frame().assign(score="NA"), tmp_path)
    assert "expect_table_columns_missing_fraction_to_be_at_most" in failed_names(result)
    assert "score" in failure_message(result.outcome, Path("expectations/csv.json"))
    assert result.report["completeness"]["columns"]["score"]["fraction"] == 1.0


def test_label_outside_declared_classes_is_quarantined(tmp_path: Path) -> None:
    frame = clean_frame()
    frame.loc[7, "outcome"] = "perhaps"
    result = run_gate(frame, tmp_path, classes=("yes", "no", "maybe"))
    assert result.outcome.success
    quarantined = result.quarantined.table
    assert quarantined["row_id"].tolist() == [7]
    assert "expect_column_values_to_be_in_set(label)" in quarantined["reason"][0]


def test_balance_is_reported_over_every_row_and_over_the_rows_kept(tmp_path: Path) -> None:
    """One foreign label in quarantine makes the balance of every row read look
    far worse (a class of one) than that of the rows kept; both are said."""
    from tasks.data.gate import quality_summary

    frame = clean_frame()
    frame.loc[7, "outcome"] = "perhaps"
    result = run_gate(frame, tmp_path, classes=("yes", "no", "maybe"))
    balance = result.report["balance"]
    assert balance["counts"]["perhaps"] == 1 and "perhaps" not in balance["kept"]["counts"]
    kept = result.valid.table["label"].value_counts()
    assert balance["kept"]["imbalance_ratio"] == pytest.approx(kept.max() / kept.min())
    assert balance["imbalance_ratio"] > 10 * balance["kept"]["imbalance_ratio"]
    assert f"over the rows kept, imbalance ratio {balance['kept']['imbalance_ratio']:.2f}" in quality_summary(
        result.report
    )
    # The gate measures balance on the rows kept: no warning for a class of one that is in quarantine.
    (ratio,) = [r for r in result.outcome.results if r["expectation"] == "expect_column_imbalance_ratio_to_be_at_most"]
    assert ratio["measured_on"] == "rows kept" and ratio["success"]
    assert ratio["observed_value"] == pytest.approx(balance["kept"]["imbalance_ratio"])


def test_text_in_a_numeric_column_is_quarantined_with_the_value(tmp_path: Path) -> None:
    frame = clean_frame()
    frame.loc[3, "age"] = "Thirty"
    result = run_gate(frame, tmp_path)
    assert result.outcome.success
    assert result.quarantined.table["row_id"].tolist() == [3]
    assert "age: 'Thirty' is not a number" in result.quarantined.table["reason"][0]
    assert result.report["representation"]["columns"]["age"]["observed"] == "mixed"


def test_one_row_duplicated_100_times_is_quarantined_99_times(tmp_path: Path) -> None:
    frame = pd.concat([clean_frame(), clean_frame().iloc[[5]].loc[[5] * 100]], ignore_index=True)
    result = run_gate(frame, tmp_path)
    assert result.report["uniqueness"]["duplicate_rows"] == 100
    reasons = result.quarantined.table["reason"]
    assert len(reasons) == 100 and set(reasons) == {"duplicate of row 5"}
    assert result.summary["rows_valid"] == 240
    # Past 5% of rows the near-duplicate expectation warns; a warning never stops the gate.
    assert result.outcome.success
    assert "expect_table_near_duplicate_fraction_to_be_at_most" in {r["expectation"] for r in result.outcome.warnings}


def test_a_class_collapsed_to_one_row_fails_the_class_count(tmp_path: Path) -> None:
    frame = clean_frame()
    maybe = frame.index[frame["outcome"] == "maybe"]
    frame = frame.drop(index=maybe[1:])
    result = run_gate(frame, tmp_path)
    assert "expect_column_value_counts_to_be_at_least" in failed_names(result)
    message = failure_message(result.outcome, Path("expectations/csv.json"), "outcome")
    assert "on column 'label' (the target column 'outcome')" in message
    # The class, its count, the minimum, and the two ways forward.
    assert "class 'maybe' has 1 row(s), fewer than the 5 needed" in message
    assert "declare data.classes without it" in message and "validate.min_class_rows (now 5)" in message
    assert "on column 'label':" in failure_message(
        result.outcome, Path("expectations/csv.json")
    )  # images: no target name


def test_npy_of_the_wrong_shape_is_refused_naming_the_file(tmp_path: Path) -> None:
    np.save(tmp_path / "cat.npy", np.zeros((10, 28, 28), np.uint8))
    base = load_params(REPO / "params.yaml").data
    data = replace(
        base,
        source="quickdraw",
        path=str(tmp_path),
        quickdraw=replace(base.quickdraw, classes=("cat",), samples_per_class={"cat": 5}),
    )
    with pytest.raises(DistilleryError, match=r"cat\.npy: expected shape \(N, 784\)"):
        ingest(data)


def test_csv_that_is_not_utf8_is_refused_naming_file_and_key(tmp_path: Path) -> None:
    text = clean_frame().to_csv(index=False).replace("Sales", "Ventes é")
    with pytest.raises(DistilleryError, match=r"data\.csv: not valid utf-8.*data\.encoding"):
        run_gate(None, tmp_path, raw=text.encode("latin-1"))


def test_a_missing_label_is_quarantined_not_fatal(tmp_path: Path) -> None:
    frame = clean_frame()
    frame.loc[11, "outcome"] = "NA"
    result = run_gate(frame, tmp_path)
    assert result.outcome.success
    assert result.quarantined.table["row_id"].tolist() == [11]
    assert "outcome: label missing" in result.quarantined.table["reason"][0]


def test_canonical_spellings_do_not_depend_on_row_order(tmp_path: Path) -> None:
    frame = clean_frame()
    forward = run_gate(frame, tmp_path).valid.table.set_index("row_id")["dept"]
    backward = run_gate(frame.iloc[::-1].reset_index(drop=True), tmp_path).valid.table
    backward = backward.assign(row_id=len(frame) - 1 - backward["row_id"]).set_index("row_id")["dept"]
    assert forward.sort_index().tolist() == backward.sort_index().tolist()
    assert set(forward) == {"HR", "Sales", "Engineering"}  # the synonym's target spells its own group


def test_a_large_quarantine_fails_the_gate_naming_the_reasons_even_when_every_expectation_passes(
    tmp_path: Path,
) -> None:
    """The row-loss alarm: a fifth of the rows refused for one column's words is a lost fifth,
    even though each refusal keeps the rule. The message names the count, the column and the value."""
    frame = clean_frame()
    frame.loc[:59, "age"] = "unknown"  # 60 of 240 rows (25%): words in a declared numeric column
    result = run_gate(frame, tmp_path)
    assert result.summary["rows_quarantined"] == 60
    assert "max_quarantined_fraction" in failed_names(result)
    assert not result.outcome.success
    message = failure_message(result.outcome, Path("expectations/csv.json"), "outcome")
    assert "60 of 240 rows (25.0%) were quarantined" in message
    assert "60 rows:" in message and "age" in message and "unknown" in message
    assert "validate.max_quarantined_fraction" in message


def test_a_small_quarantine_and_duplicates_pass_the_row_loss_alarm(tmp_path: Path) -> None:
    frame = clean_frame()
    frame.loc[:5, "age"] = "unknown"  # 6 of 240 rows (2.5%): under the default 5%
    result = run_gate(frame, tmp_path)
    assert result.summary["rows_quarantined"] == 6
    (alarm,) = [r for r in result.outcome.results if r["expectation"] == "max_quarantined_fraction"]
    assert alarm["success"] and alarm["observed_value"] == pytest.approx(6 / 240)
    assert alarm["details"]["top_reasons"][0]["rows"] == 6


def test_validate_min_class_rows_sets_what_a_class_needs(tmp_path: Path) -> None:
    """The second way forward the message offers: a lower minimum lets a rare class through."""
    frame = clean_frame()
    maybe = frame.index[frame["outcome"] == "maybe"]
    frame = frame.drop(index=maybe[3:])  # 3 rows of 'maybe'
    path = tmp_path / "data.csv"
    frame.to_csv(path, index=False)
    params = csv_params(path, DECLARED)
    suite = load_suite(REPO / "expectations/csv.json")
    strict = gate(ingest(params.data), params.task.type, params.validate, suite)
    assert "expect_column_value_counts_to_be_at_least" in failed_names(strict)
    lenient = dataclasses.replace(params.validate, min_class_rows=3)
    assert "expect_column_value_counts_to_be_at_least" not in failed_names(
        gate(ingest(params.data), params.task.type, lenient, suite)
    )
