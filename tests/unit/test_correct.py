"""tasks/data/correct.py: the corrections params.yaml allows on a small messy table
built here, and the image path on synthetic images."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import params_section

from tasks.contracts.dataset import LABEL, ROW_ID
from tasks.data.correct import correct_images, correct_table
from tasks.data.sources import ImageData
from tasks.ingest import image_table

SYNONYMS = {"outcome": {"Y": "yes"}, "dept": {"Human Resources": "HR"}}
DECLARED = {"sample": "id", "weight": "numeric", "dept": "categorical"}


def validate_params(**overrides):
    base = dict(synonyms=SYNONYMS, coerce_numeric=True, normalise_categories=True, drop_duplicates=True)
    return params_section("validate", **{**base, **overrides})


def messy() -> pd.DataFrame:
    """Row 5 repeats row 1 except for its sample id; rows 2, 4 and 6 hold missing
    tokens (row 6 in the target); row 3 holds a word in a numeric column; rows 0
    and 4 carry units."""
    return pd.DataFrame(
        {
            ROW_ID: np.arange(8, dtype=np.int64),
            "sample": [f"s{i}" for i in range(8)],
            "weight": ["12.5 kg", "13", " NA", "Thirty", "14 kg", "13", "15", "16"],
            "dept": ["HR", "hr", " HR ", "Human Resources", "?", "hr", "HR", "HR"],
            "outcome": ["yes", "Y", "no", "yes", "no", "Y", ".", "NO "],
        }
    )


def correct(raw=None, declared=DECLARED, task="binary", **overrides):
    raw = messy() if raw is None else raw
    return correct_table(raw, "outcome", dict(declared), task, validate_params(**overrides))


def test_nothing_is_dropped_and_the_input_is_not_modified():
    raw = messy()
    result = correct(raw)
    pd.testing.assert_frame_equal(raw, messy())
    assert result.table[ROW_ID].tolist() == list(range(8))


def test_missing_tokens_become_missing_and_are_counted():
    result = correct()
    assert result.report["corrections"]["missing_tokens"] == {"weight": 1, "dept": 1, "outcome": 1}
    table = result.table
    assert np.isnan(table.loc[2, "weight"])  # " NA": tokens match after stripping
    assert pd.isna(table.loc[4, "dept"]) and pd.isna(table.loc[6, LABEL])
    completeness = result.report["completeness"]["columns"]
    # weight: " NA" and "Thirty" (row 3, not a number) are both missing after correction.
    assert completeness["weight"] == {"missing": 2, "fraction": 2 / 8}
    assert completeness["dept"]["missing"] == 1 and completeness[LABEL]["missing"] == 1


def test_units_are_stripped_when_coerce_numeric_is_on():
    result = correct()
    weight = result.table["weight"]
    assert weight.dtype.kind == "f"
    assert weight[[0, 1, 4, 5, 6, 7]].tolist() == [12.5, 13.0, 14.0, 13.0, 15.0, 16.0]
    entry = result.report["representation"]["columns"]["weight"]
    assert entry["with_units"] == 2 and entry["units"] == ["kg"] and entry["numbers"] == 4
    assert entry["range"] == [12.5, 16.0]
    assert result.report["corrections"]["coerced_numeric"] == {"weight": 2}
    assert 0 not in result.row_issues and 4 not in result.row_issues


def test_a_unit_is_a_row_issue_when_coerce_numeric_is_off():
    result = correct(coerce_numeric=False)
    assert "weight: '12.5 kg' is not a number" in result.row_issues[0]
    assert "weight: '14 kg' is not a number" in result.row_issues[4]
    assert np.isnan(result.table.loc[0, "weight"]) and np.isnan(result.table.loc[4, "weight"])
    assert result.report["corrections"]["coerced_numeric"] == {}


def test_a_word_in_a_numeric_column_is_a_row_issue_naming_column_and_value():
    result = correct()
    assert result.row_issues[3] == ["weight: 'Thirty' is not a number"]
    assert np.isnan(result.table.loc[3, "weight"])
    entry = result.report["representation"]["columns"]["weight"]
    assert entry["not_numbers"] == 1 and entry["examples_not_numbers"] == ["Thirty"]
    assert entry["observed"] == "mixed" and entry["declared"] == "numeric"


def test_an_undeclared_mostly_numeric_column_is_inferred_numeric():
    result = correct(declared={"sample": "id", "dept": "categorical"})
    assert result.column_types["weight"] == "numeric"
    assert result.row_issues[3] == ["weight: 'Thirty' is not a number"]


def test_categories_are_normalised_with_synonyms():
    result = correct()
    assert result.table["dept"].dropna().tolist() == ["HR"] * 7
    # hr (rows 1 and 5), " HR ", Human Resources.
    assert result.report["corrections"]["categories_normalised"]["dept"] == 4
    renamed = result.report["representation"]["columns"]["dept"]["renamed"]
    assert renamed == {"hr": "HR", " HR ": "HR", "Human Resources": "HR"}


def test_duplicates_are_flagged_with_the_row_they_repeat_ignoring_id_columns():
    result = correct()
    assert result.row_issues[5] == ["duplicate of row 1"]
    assert [r for r, why in result.row_issues.items() if any("duplicate" in w for w in why)] == [5]
    assert result.report["uniqueness"]["duplicate_rows"] == 1
    assert result.report["corrections"]["duplicates_quarantined"] == 1


def test_duplicates_are_reported_but_not_flagged_without_drop_duplicates():
    result = correct(drop_duplicates=False)
    assert 5 not in result.row_issues
    assert not any("duplicate" in w for why in result.row_issues.values() for w in why)
    assert result.report["uniqueness"]["duplicate_rows"] == 1
    assert result.report["corrections"]["duplicates_quarantined"] == 0


def test_a_column_that_is_not_an_id_makes_rows_differ():
    result = correct(declared={**DECLARED, "sample": "categorical"})
    assert result.report["uniqueness"]["duplicate_rows"] == 0
    assert 5 not in result.row_issues


def test_the_target_is_normalised_and_renamed_to_label():
    result = correct()
    assert "outcome" not in result.table.columns and LABEL in result.table.columns
    labels = result.table[LABEL]
    assert labels.dropna().tolist() == ["yes", "yes", "no", "yes", "no", "yes", "no"]
    assert result.report["corrections"]["categories_normalised"]["outcome"] == 3  # Y, Y, "NO "
    assert result.report["balance"]["counts"] == {"yes": 4, "no": 3}
    assert "outcome" in result.report["representation"]["columns"]
    assert result.report["representation"]["columns"]["outcome"]["declared"] == "target"


def test_a_missing_label_is_a_row_issue():
    result = correct()
    assert result.row_issues[6] == ["outcome: label missing"]
    assert set(result.row_issues) == {3, 5, 6}


def test_the_report_covers_the_four_dimensions_and_the_corrections():
    report = correct().report
    assert {"representation", "completeness", "uniqueness", "balance", "corrections"} <= set(report)
    assert report["kind"] == "tabular" and report["rows"] == 8
    assert set(report["representation"]["columns"]) == {"sample", "weight", "dept", "outcome"}
    assert ROW_ID not in report["completeness"]["columns"]


def test_an_outlier_is_counted_with_its_row_id():
    raw = pd.DataFrame(
        {
            ROW_ID: np.arange(100, 110),
            "weight": [str(v) for v in [1, 2, 3, 4, 5, 6, 7, 8, 9, 300]],
            "outcome": ["a", "b"] * 5,
        }
    )
    result = correct(raw, declared={"weight": "numeric"}, outlier_method="iqr", outlier_threshold=1.5)
    entry = result.report["representation"]["columns"]["weight"]
    assert entry["outliers"] == 1 and entry["outlier_rows"] == [109]
    assert result.row_issues == {}  # an outlier is reported, not quarantined


# --------------------------------------------------------------------------- images


def image_data() -> ImageData:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 17, size=(6, 8, 8)).astype(np.float32)
    images[4] = images[1]  # an exact duplicate
    labels = np.array([0, 1, 0, 1, 1, 0], dtype=np.int64)
    return ImageData(images=images, labels=labels, classes=("zero", "one"), pixel_max=16.0)


@pytest.mark.parametrize("drop", [True, False])
def test_correct_images_finds_the_exact_duplicate(drop):
    data = image_data()
    result = correct_images(image_table(data), data.images, validate_params(drop_duplicates=drop))
    report = result.report
    assert report["kind"] == "image" and report["rows"] == 6
    assert report["uniqueness"]["duplicate_rows"] == 1
    assert result.row_issues == ({4: ["duplicate image"]} if drop else {})
    assert report["corrections"]["duplicates_quarantined"] == (1 if drop else 0)
    assert report["representation"]["shapes"] == {"8x8x1": 6}
    assert report["representation"]["value_range"] == [float(data.images.min()), float(data.images.max())]
    assert report["balance"]["counts"] == {"one": 3, "zero": 3}
    assert report["completeness"] == {"images_with_missing_pixels": 0, "missing_pixels": 0}


def test_correct_images_counts_missing_pixels():
    data = image_data()
    data.images[2, 0, :3] = np.nan
    result = correct_images(image_table(data), data.images, validate_params())
    assert result.report["completeness"] == {"images_with_missing_pixels": 1, "missing_pixels": 3}


def housing_like(n: int = 200) -> pd.DataFrame:
    """A table like the ones users bring: category codes that start with digits
    (building type, house style), ids (a row counter, a key named PID), a column
    that is nearly all gaps, and a price with a currency."""
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            ROW_ID: np.arange(n, dtype=np.int64),
            "Order": np.arange(1, n + 1).astype(str),  # 1..n: a row counter
            "PID": rng.choice(np.arange(526_300_000, 526_400_000), n, replace=False).astype(str),
            "Bldg.Type": rng.choice(
                ["1Fam", "2fmCon", "Duplex", "TwnhsE", "Twnhs"], n, p=[0.8, 0.05, 0.05, 0.05, 0.05]
            ),
            "House.Style": rng.choice(["1Story", "2Story", "1.5Fin", "SLvl", "SFoyer", "2.5Unf"], n),
            "Pool.QC": [None] * (n - 1) + ["Ex"],  # 99.5% empty
            "Lot.Area": [f"{v} $" for v in rng.integers(5_000, 20_000, n)],
            "Yr.Sold": rng.choice(["2006", "2007", "2008"], n),
            "label": rng.choice(["cheap", "dear"], n),
        }
    )


def test_codes_ids_and_gaps_are_typed_as_an_analyst_would_and_no_row_is_quarantined_for_them():
    result = correct_table(housing_like(), "label", {}, "binary", validate_params())
    types = result.column_types
    assert types["Bldg.Type"] == "categorical" and types["House.Style"] == "categorical"  # codes, not units
    assert types["Order"] == "id" and types["PID"] == "id"  # a counter and a key: never features
    assert types["Pool.QC"] == "ignore"  # reported, ignored, not fatal
    assert types["Lot.Area"] == "numeric"  # a real unit: one currency, many values
    assert types["Yr.Sold"] == "numeric"
    assert not result.row_issues  # no townhouse is "not a number"
    why = result.report["representation"]["columns"]
    assert "unique" in why["PID"]["why"] and "missing" in why["Pool.QC"]["why"]
    assert why["Bldg.Type"]["why"] and why["Lot.Area"]["why"]


def test_unique_floats_and_declared_types_are_not_taken_for_ids():
    table = housing_like()
    table["score"] = np.random.default_rng(1).normal(size=len(table)).astype(str)  # unique measurements
    result = correct_table(table, "label", {"Order": "numeric"}, "binary", validate_params())
    assert result.column_types["score"] == "numeric"
    assert result.column_types["Order"] == "numeric"  # declared types win
    assert result.report["representation"]["columns"]["Order"]["why"] == "declared in data.columns"


def dated(n: int = 60) -> pd.DataFrame:
    """Dates in two spellings (ISO with times, day first), yes/no columns in every
    spelling users write, with gaps, and a target."""
    rng = np.random.default_rng(2)
    days = pd.Timestamp("2021-01-01") + pd.to_timedelta(rng.integers(0, 700, n), unit="D")
    return pd.DataFrame(
        {
            ROW_ID: np.arange(n, dtype=np.int64),
            "signed_up": (days + pd.to_timedelta(rng.integers(0, 24, n), unit="h")).strftime("%Y-%m-%d %H:%M"),
            "last_visit": days.strftime("%d/%m/%Y").where(rng.random(n) > 0.1, "NA"),  # unique dates, gaps
            "member": rng.choice(["Y", "N", "y", " n "], n),
            "active": rng.choice(["true", "False", "TRUE", "f", "T", "NA"], n),
            "paid": rng.choice(["1", "0"], n),
            "opt_in": rng.choice(["yes", "No", "YES", "no"], n),
            "label": rng.choice(["a", "b"], n),
        }
    )


def test_dates_and_booleans_in_any_spelling_are_typed_read_and_explained():
    result = correct_table(dated(), "label", {}, "binary", validate_params())
    types = result.column_types
    assert types == {
        "signed_up": "datetime",
        "last_visit": "datetime",  # unique values: a date, not an id
        "member": "boolean",
        "active": "boolean",
        "paid": "boolean",
        "opt_in": "boolean",
    }
    assert result.date_formats == {"signed_up": "ISO8601", "last_visit": "%d/%m/%Y"}
    assert not result.row_issues  # every value was read
    table, raw = result.table, dated()
    assert pd.api.types.is_datetime64_any_dtype(table["last_visit"])
    day_first = pd.to_datetime(raw["last_visit"].replace("NA", None), format="%d/%m/%Y", utc=True)
    pd.testing.assert_series_equal(table["last_visit"], day_first, check_dtype=False)  # gaps stay gaps
    yes = raw["member"].str.strip().str.lower() == "y"
    assert table["member"].tolist() == yes.astype(float).tolist()
    assert table["active"].isna().sum() == (raw["active"] == "NA").sum()
    assert set(table["opt_in"]) == {0.0, 1.0} and set(table["paid"]) == {0.0, 1.0}
    why = result.report["representation"]["columns"]
    assert "dates (%d/%m/%Y)" in why["last_visit"]["why"] and why["last_visit"]["format"] == "%d/%m/%Y"
    assert "yes or no" in why["member"]["why"]


def test_a_value_a_date_or_boolean_column_cannot_read_is_a_row_issue_naming_it():
    raw = dated()
    raw.loc[4, "signed_up"] = "yesterday"
    raw.loc[5, "member"] = "maybe"
    result = correct_table(raw, "label", {"member": "boolean", "signed_up": "datetime"}, "binary", validate_params())
    assert result.row_issues == {4: ["signed_up: 'yesterday' is not a date"], 5: ["member: 'maybe' is not yes or no"]}
    assert result.date_formats["signed_up"] == "ISO8601"
