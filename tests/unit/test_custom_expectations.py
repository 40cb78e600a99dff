"""expectations/custom.py through tasks.data.gate.run_suite (a real GX checkpoint),
and tasks.data.gate.gate end to end on a small table with the real csv suite."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from conftest import REPO_ROOT, repo_params

from tasks.contracts.dataset import LABEL, ROW_ID, Dataset, DatasetMeta
from tasks.data.gate import failure_message, gate, load_suite, run_suite
from tasks.data.quality import fold

CSV_SUITE = REPO_ROOT / "expectations" / "csv.json"


@pytest.fixture(scope="module", autouse=True)
def no_gx_analytics():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GX_ANALYTICS_ENABLED", "false")
        yield


def expect(kind: str, **kwargs) -> dict:
    return {"type": kind, "kwargs": kwargs, "severity": "critical"}


def run_one(table: pd.DataFrame, expectation: dict, parameters: dict | None = None) -> dict:
    outcome = run_suite(table, {"name": "one", "expectations": [expectation]}, parameters or {})
    (result,) = outcome.results
    assert result["exception"] is None, result["exception"]
    assert outcome.success == result["success"]
    return result


def labelled(counts: dict[str, int]) -> pd.DataFrame:
    labels = [name for name, n in counts.items() for _ in range(n)]
    return pd.DataFrame({ROW_ID: np.arange(len(labels)), LABEL: labels})


# Six a, three b, one z: z is a stray label when the classes are a and b.
LABELS = labelled({"a": 6, "b": 3, "z": 1})


# --------------------------------------------------------------------------- value counts


@pytest.mark.parametrize("min_count, success", [(1, True), (2, False)])
def test_value_counts_without_value_set_count_every_distinct_value(min_count, success):
    result = run_one(LABELS, expect("expect_column_value_counts_to_be_at_least", column=LABEL, min_count=min_count))
    assert result["observed_value"] == 1  # z
    assert result["success"] is success


def test_value_counts_with_value_set_ignore_a_stray_label():
    result = run_one(
        LABELS, expect("expect_column_value_counts_to_be_at_least", column=LABEL, min_count=3, value_set=["a", "b"])
    )
    assert result["success"] and result["observed_value"] == 3  # b


def test_a_declared_class_with_no_rows_counts_as_zero():
    result = run_one(
        LABELS,
        expect("expect_column_value_counts_to_be_at_least", column=LABEL, min_count=1, value_set=["a", "b", "c"]),
    )
    assert not result["success"] and result["observed_value"] == 0


def test_value_set_can_be_a_suite_parameter():
    expectation = expect(
        "expect_column_value_counts_to_be_at_least", column=LABEL, min_count=4, value_set={"$PARAMETER": "classes"}
    )
    assert run_one(LABELS, expectation, {"classes": ["a"]})["observed_value"] == 6
    assert not run_one(LABELS, expectation, {"classes": ["a", "b"]})["success"]


# --------------------------------------------------------------------------- balance


@pytest.mark.parametrize("max_ratio, success", [(6, True), (5.9, False)])
def test_imbalance_ratio(max_ratio, success):
    result = run_one(LABELS, expect("expect_column_imbalance_ratio_to_be_at_most", column=LABEL, max_ratio=max_ratio))
    assert result["observed_value"] == 6.0  # 6 a / 1 z
    assert result["success"] is success


def test_normalized_entropy():
    entropy = -(0.6 * math.log(0.6) + 0.3 * math.log(0.3) + 0.1 * math.log(0.1)) / math.log(3)  # ~0.817
    passing = run_one(LABELS, expect("expect_column_normalized_entropy_to_be_at_least", column=LABEL, min_value=0.8))
    assert passing["success"] and passing["observed_value"] == pytest.approx(entropy)
    failing = run_one(LABELS, expect("expect_column_normalized_entropy_to_be_at_least", column=LABEL, min_value=0.82))
    assert not failing["success"] and failing["observed_value"] == pytest.approx(entropy)


def test_one_class_has_zero_entropy_and_fails():
    result = run_one(
        labelled({"a": 10}), expect("expect_column_normalized_entropy_to_be_at_least", column=LABEL, min_value=0.1)
    )
    assert not result["success"] and result["observed_value"] == 0.0


# --------------------------------------------------------------------------- near-duplicates


def rows_with_near_copies() -> pd.DataFrame:
    """Ten rows; row 1 is row 0 with the number off in the 3rd decimal and the text
    in other case; row 2 repeats row 0 exactly. Every row_id differs."""
    return pd.DataFrame(
        {
            ROW_ID: np.arange(10),
            "x": [1.0, 1.001, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0],
            "s": ["Blue", "BLUE ", "Blue", "c", "d", "e", "f", "g", "h", "i"],
        }
    )


def test_near_duplicate_fraction_ignoring_the_id_column():
    kind = "expect_table_near_duplicate_fraction_to_be_at_most"
    table = rows_with_near_copies()
    passing = run_one(table, expect(kind, max_fraction=0.2, ignore_columns=[ROW_ID]))
    assert passing["success"] and passing["observed_value"] == pytest.approx(2 / 10)  # one near, one exact
    failing = run_one(table, expect(kind, max_fraction=0.19, ignore_columns=[ROW_ID]))
    assert not failing["success"] and failing["observed_value"] == pytest.approx(0.2)


def test_near_duplicate_fraction_counts_nothing_when_ids_are_compared():
    result = run_one(
        rows_with_near_copies(), expect("expect_table_near_duplicate_fraction_to_be_at_most", max_fraction=0.0)
    )
    assert result["success"] and result["observed_value"] == 0.0


def test_near_duplicate_decimals_decide_what_is_near():
    table = rows_with_near_copies()
    table.loc[1, "x"] = 1.04
    kind = "expect_table_near_duplicate_fraction_to_be_at_most"
    two = run_one(table, expect(kind, max_fraction=1.0, decimals=2, ignore_columns=[ROW_ID]))
    one = run_one(table, expect(kind, max_fraction=1.0, decimals=1, ignore_columns=[ROW_ID]))
    assert two["observed_value"] == pytest.approx(1 / 10)  # only the exact copy
    assert one["observed_value"] == pytest.approx(2 / 10)  # 1.04 rounds to 1.0


# --------------------------------------------------------------------------- missing fraction


def test_columns_missing_fraction_names_the_worst_column():
    table = pd.DataFrame(
        {
            ROW_ID: np.arange(8),
            "a": [1.0, None, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0],
            "b": [None, None, None, "x", "y", "z", "w", None],
        }
    )
    kind = "expect_table_columns_missing_fraction_to_be_at_most"
    passing = run_one(table, expect(kind, max_fraction=0.5))
    assert passing["success"] and passing["observed_value"] == {"column": "b", "fraction": 0.5}
    failing = run_one(table, expect(kind, max_fraction=0.4))
    assert not failing["success"] and failing["observed_value"] == {"column": "b", "fraction": 0.5}
    ignored = run_one(table, expect(kind, max_fraction=0.2, ignore_columns=["b"]))
    assert ignored["success"] and ignored["observed_value"] == {"column": "a", "fraction": 1 / 8}


def test_an_all_empty_column_fails():
    table = pd.DataFrame({ROW_ID: np.arange(5), "a": np.arange(5.0), "empty": [None] * 5})
    result = run_one(table, expect("expect_table_columns_missing_fraction_to_be_at_most", max_fraction=0.99))
    assert not result["success"] and result["observed_value"] == {"column": "empty", "fraction": 1.0}


# --------------------------------------------------------------------------- the gate, end to end


def tabular_dataset(counts: dict[str, int], seed: int = 0) -> Dataset:
    """A raw table as ingest reads a CSV: every cell text, salaries with a currency,
    department spelled several ways."""
    rng = np.random.default_rng(seed)
    labels = [name for name, n in counts.items() for _ in range(n)]
    n = len(labels)
    table = pd.DataFrame(
        {
            ROW_ID: np.arange(n, dtype=np.int64),
            "age": rng.integers(20, 65, n).astype(str),
            "salary": [f"{v} $" for v in rng.integers(30_000, 90_000, n)],
            "dept": rng.choice(["HR", "hr ", "Sales", "Engineering"], n),
            "outcome": rng.permutation(labels),
        }
    )
    # What ingest writes for a CSV with nothing declared (data.columns {}, data.classes null).
    meta = DatasetMeta(
        source="csv",
        kind="tabular",
        rows=n,
        data_hash="test",
        classes=None,
        origin="unused.csv",
        target="outcome",
        declared_types={},
        declared_columns=(),
    )
    return Dataset(table=table, arrays={}, meta=meta)


def run_gate(dataset: Dataset):
    """The gate as the validate stage runs it, with the repo's task type and validate params."""
    params = repo_params()
    return gate(dataset, params.task.type, params.validate, load_suite(CSV_SUITE))


def check_rows_accounted(dataset: Dataset, result) -> None:
    summary = result.summary
    assert summary["rows_in"] == len(dataset.table)
    assert summary["rows_in"] == summary["rows_valid"] + summary["rows_quarantined"]
    ids = [*result.valid.table[ROW_ID], *result.quarantined.table[ROW_ID]]
    assert sorted(ids) == list(range(len(dataset.table)))


def test_gate_quarantines_bad_rows_and_keeps_every_row_accounted_for():
    dataset = tabular_dataset({"yes": 30, "no": 20, "maybe": 10})
    dataset.table.loc[4, "age"] = "Thirty"
    dataset.table.loc[len(dataset.table)] = [60, *dataset.table.iloc[7, 1:]]  # a copy of row 7
    dataset.meta = dataset.meta.replace(rows=len(dataset.table))
    result = run_gate(dataset)
    assert result.outcome.success, failure_message(result.outcome, CSV_SUITE)
    check_rows_accounted(dataset, result)
    reasons = dict(zip(result.quarantined.table[ROW_ID], result.quarantined.table["reason"]))
    assert reasons == {4: "age: 'Thirty' is not a number", 60: "duplicate of row 7"}
    valid = result.valid.table
    assert valid["salary"].dtype.kind == "f"
    # "HR" and "hr " are one category now, whichever spelling it kept.
    assert valid["dept"].nunique() == 3 and set(valid["dept"].map(fold)) == {"hr", "sales", "engineering"}
    assert set(valid[LABEL]) == {"yes", "no", "maybe"}
    assert result.valid.meta.classes == ("maybe", "no", "yes")
    # The gate types the meta: the task, every column's type, and the model's features.
    assert result.valid.meta.task == repo_params().task.type
    assert result.valid.meta.column_types == {"age": "numeric", "salary": "numeric", "dept": "categorical"}
    assert result.valid.meta.features == ("age", "salary", "dept")
    assert result.valid.meta.rows == len(valid) and result.quarantined.meta.rows == 2


def test_failed_warnings_do_not_fail_the_gate():
    # 110 to 5: imbalance ratio 22 > 20 and normalised entropy ~0.26 < 0.5, both warnings.
    dataset = tabular_dataset({"common": 110, "rare": 5})
    result = run_gate(dataset)
    check_rows_accounted(dataset, result)
    # Its features are noise, so confident learning also warns of many likely label errors: not this test's subject.
    warned = {r["expectation"]: r for r in result.outcome.warnings if r["column"] != "label_issue"}
    assert set(warned) == {
        "expect_column_imbalance_ratio_to_be_at_most",
        "expect_column_normalized_entropy_to_be_at_least",
    }
    assert warned["expect_column_imbalance_ratio_to_be_at_most"]["observed_value"] == 22.0
    assert result.outcome.failed == [] and result.outcome.success
    assert result.summary["rows_quarantined"] == 0


def test_a_critical_failure_fails_the_gate_but_still_accounts_for_every_row():
    dataset = tabular_dataset({"common": 50, "rare": 4})  # csv.json wants 5 per class
    result = run_gate(dataset)
    check_rows_accounted(dataset, result)
    assert not result.outcome.success
    (failed,) = result.outcome.failed
    assert failed["expectation"] == "expect_column_value_counts_to_be_at_least" and failed["observed_value"] == 4


def test_data_docs_print_each_custom_expectation_as_a_sentence(tmp_path):
    """GX prints an expectation without a renderer as raw `expect_...(**{...})`."""
    from tasks.data.gate import run_suite

    table = pd.DataFrame({"row_id": range(60), "label": ["a"] * 40 + ["b"] * 20, "x": [1.0] * 60})
    suite = {
        "name": "t",
        "expectations": [
            {"type": "expect_column_value_counts_to_be_at_least", "kwargs": {"column": "label", "min_count": 10}},
            {"type": "expect_column_imbalance_ratio_to_be_at_most", "kwargs": {"column": "label", "max_ratio": 5}},
            {
                "type": "expect_column_normalized_entropy_to_be_at_least",
                "kwargs": {"column": "label", "min_value": 0.5},
            },
            {"type": "expect_table_near_duplicate_fraction_to_be_at_most", "kwargs": {"max_fraction": 1.0}},
            {"type": "expect_table_columns_missing_fraction_to_be_at_most", "kwargs": {"max_fraction": 0.5}},
        ],
    }
    run_suite(table, suite, {}, tmp_path)
    (page,) = [p for p in tmp_path.rglob("*.html") if "validations" in p.parts]
    text = page.read_text()
    for sentence in (
        "every class of",
        "must have at least",
        "largest class / smallest class must be at most",
        "class entropy / log(classes) must be at least",
        "may repeat an earlier row",
        "no column may miss more than",
    ):
        assert sentence in text, sentence
    assert "(**" not in text
