"""tasks/data/quality.py: the four data-quality dimensions, each checked against a
hand computation or an independent reference (numpy, scipy, pandas)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from tasks.data import quality

# --------------------------------------------------------------------------- representation


def test_parse_numbers_reads_plain_numbers_units_currency_and_text():
    raw = {
        "42": (42.0, "number", None),
        "1,234": (1234.0, "number", None),
        "1,234.5": (1234.5, "number", None),
        " 7 ": (7.0, "number", None),
        "-3e2": (-300.0, "number", None),
        "2.5E-1": (0.25, "number", None),
        "$80000": (80000.0, "unit", "$"),
        "65000 $": (65000.0, "unit", "$"),
        "70,000 €": (70000.0, "unit", "€"),
        "12.5 kg": (12.5, "unit", "kg"),
        "-5 kg": (-5.0, "unit", "kg"),
        "Thirty": (None, "text", None),
        "twelve kg": (None, "text", None),
    }
    values = pd.Series(list(raw) + [None])
    parsed = quality.parse_numbers(values)
    assert list(parsed.columns) == ["number", "kind", "unit"]
    for i, (text, (number, kind, unit)) in enumerate(raw.items()):
        row = parsed.iloc[i]
        assert row["kind"] == kind, text
        if number is None:
            assert np.isnan(row["number"]), text
        else:
            assert row["number"] == pytest.approx(number), text
        assert pd.isna(row["unit"]) if unit is None else row["unit"] == unit, text
    missing = parsed.iloc[-1]
    assert missing["kind"] == "missing" and np.isnan(missing["number"]) and pd.isna(missing["unit"])


def test_parse_numbers_aligns_with_a_non_default_index_and_repeats():
    # Repeated spellings are parsed once, then spread back to every row.
    values = pd.Series(["12 kg", None, "3", "12 kg", "x", "3"], index=[50, 7, 31, 2, 99, 8])
    parsed = quality.parse_numbers(values)
    assert list(parsed.index) == [50, 7, 31, 2, 99, 8]
    assert parsed["kind"].to_dict() == {50: "unit", 7: "missing", 31: "number", 2: "unit", 99: "text", 8: "number"}
    assert parsed.loc[[50, 2], "number"].tolist() == [12.0, 12.0]
    assert parsed.loc[[31, 8], "number"].tolist() == [3.0, 3.0]
    assert parsed.loc[[50, 2], "unit"].tolist() == ["kg", "kg"]


def test_parse_numbers_of_an_all_missing_or_empty_column():
    parsed = quality.parse_numbers(pd.Series([None, None], dtype=object, index=[3, 4]))
    assert parsed["kind"].tolist() == ["missing", "missing"] and list(parsed.index) == [3, 4]
    assert parsed["number"].isna().all()
    assert len(quality.parse_numbers(pd.Series([], dtype=object))) == 0


@pytest.mark.parametrize(
    "values, expected",
    [
        (pd.Series([1.5, 2.0, None]), "numeric"),
        (pd.Series(["1", "2,000", "3 kg", None]), "numeric"),
        (pd.Series(["1", "2", "Thirty"]), "mixed"),
        (pd.Series(["red", "blue", "red", None]), "categorical"),
        (pd.Series([f"free comment number {chr(65 + i)}" for i in range(30)]), "text"),
        (pd.Series([None, None], dtype=object), "empty"),
        (pd.Series(["Y", "n", None, " yes", "No", "TRUE", "f", "T", "0", "1"]), "boolean"),
        (pd.Series([1.0, 0.0, None]), "boolean"),
        (pd.Series(["2021-03-04", "2021-03-05 10:30", None]), "datetime"),
        (pd.Series(["04/03/2021", "13/03/2021"]), "datetime"),
        (pd.Series(["2006", "2007", "2008"]), "numeric"),  # years as plain numbers stay numbers
        (pd.Series(["Jan", "Feb", "Mar", "Monday"]), "categorical"),  # month and day names alone are no dates
    ],
)
def test_observed_type(values, expected):
    assert quality.observed_type(values) == expected
    if not pd.api.types.is_numeric_dtype(values):
        assert quality.observed_type(values, quality.parse_numbers(values)) == expected


@pytest.mark.parametrize(
    "values, expected",
    [
        (["2021-03-04", "2021-12-31T23:59:00+02:00", "2020-02-29"], "ISO8601"),
        (["03/04/2021", "12/31/2021"], "%m/%d/%Y"),  # month first, as pandas reads 03/04 ...
        (["03/04/2021", "31/12/2021"], "%d/%m/%Y"),  # ... unless a day over 12 says otherwise
        (["11/11/07", "11/16/07"], "%m/%d/%y"),  # penguins-raw's Date Egg
        (["04 Mar 2021", "5 Apr 2020"], "%d %b %Y"),
        (["2021-03-04"] * 96 + ["unknown"] * 4, "ISO8601"),  # a few words: row issues, still a date column
        (["2021-03-04"] * 90 + ["unknown"] * 10, None),
        (["1Fam", "2Story", "1.5Fin"], None),
        (["2006", "2007"], None),
    ],
)
def test_date_format_finds_the_spelling_that_reads_the_column(values, expected):
    assert quality.date_format(pd.Series(values)) == expected


# --------------------------------------------------------------------------- categories

DEPT = pd.Series(["HR", "hr", " HR ", "Human Resources", "Sales", "sales", None, "Engineering", "HR"])


def test_fold_ignores_case_and_whitespace():
    assert quality.fold(" Human  Resources\t") == "human resources"
    assert quality.fold("HR") == quality.fold(" hr ") == "hr"
    assert quality.fold("Sales") != quality.fold("Sale s")


def test_category_variants_group_case_whitespace_and_synonyms():
    groups = quality.category_variants(DEPT, {"human resources": "HR"})
    by_canonical = {g["canonical"]: g for g in groups}
    assert set(by_canonical) == {"HR", "Sales"}  # Engineering has one spelling: not a group
    assert by_canonical["HR"]["variants"] == sorted(["HR", "hr", " HR ", "Human Resources"])
    assert by_canonical["HR"]["rows"] == 5
    assert by_canonical["Sales"]["variants"] == ["Sales", "sales"] and by_canonical["Sales"]["rows"] == 2


def test_without_the_synonym_a_different_word_is_its_own_category():
    groups = {g["canonical"]: g["variants"] for g in quality.category_variants(DEPT)}
    assert "Human Resources" not in groups["HR"]


def test_normalise_categories_applies_synonyms_and_counts_changes():
    new, changed = quality.normalise_categories(DEPT, {"Human Resources": "HR"})
    assert list(new.index) == list(DEPT.index)
    assert new[:6].tolist() == ["HR", "HR", "HR", "HR", "Sales", "Sales"]
    assert pd.isna(new[6]) and new[7] == "Engineering" and new[8] == "HR"
    # hr, " HR ", Human Resources, sales: four values were rewritten.
    assert changed == 4


def test_normalise_categories_leaves_clean_values_alone():
    clean = pd.Series(["a", "b", None, "a"])
    new, changed = quality.normalise_categories(clean)
    assert changed == 0
    assert new.tolist()[:2] == ["a", "b"] and pd.isna(new[2])


def test_near_duplicate_values_finds_a_typo():
    values = pd.Series(["Engineering"] * 3 + ["Enginering", "Sales", "Marketing"])
    pairs = quality.near_duplicate_values(values, 0.9)
    assert len(pairs) == 1
    (pair,) = pairs
    assert {pair["a"], pair["b"]} == {"Engineering", "Enginering"}
    # Reference: difflib's own ratio, 2*M/T = 2*10/21.
    assert pair["ratio"] == pytest.approx(20 / 21, abs=1e-4)


def test_near_duplicate_values_threshold_is_respected():
    values = pd.Series(["Engineering", "Enginering"])
    assert quality.near_duplicate_values(values, 0.96) == []


def test_values_equal_after_folding_are_variants_not_typos():
    values = pd.Series(["Engineering", "engineering", " ENGINEERING ", "Sales"])
    assert quality.near_duplicate_values(values, 0.5) == []


def test_near_duplicate_values_keeps_only_the_most_frequent_distinct_values():
    values = pd.Series(["Engineering"] * 3 + ["Sales"] * 2 + ["Enginering"])
    assert quality.near_duplicate_values(values, 0.9, max_distinct=2) == []
    assert len(quality.near_duplicate_values(values, 0.9, max_distinct=3)) == 1


# --------------------------------------------------------------------------- outliers

TEN = pd.Series([1, 2, 3, 4, 5, 6, 7, 8, 9, 30], dtype=float)


def test_iqr_outliers_match_tukey_fences_by_hand():
    # Sorted ten values, linear quantiles: q1 at position 2.25 -> 3.25, q3 at 6.75 -> 7.75;
    # IQR 4.5; fences at k = 1.5: [-3.5, 14.5], at k = 5: [-19.25, 30.25].
    assert quality.outliers(TEN, "iqr", 1.5).tolist() == [False] * 9 + [True]
    assert not quality.outliers(TEN, "iqr", 5.0).any()


def test_iqr_outliers_match_numpy_percentiles_on_random_data():
    rng = np.random.default_rng(3)
    x = pd.Series(np.concatenate([rng.normal(0, 1, 200), [8.0, -9.0]]), index=np.arange(202) + 1000)
    q1, q3 = np.percentile(x, [25, 75])
    expected = (x < q1 - 1.5 * (q3 - q1)) | (x > q3 + 1.5 * (q3 - q1))
    mask = quality.outliers(x, "iqr", 1.5)
    assert list(mask.index) == list(x.index)
    assert mask.tolist() == expected.tolist() and mask.loc[[1200, 1201]].all()


def test_robust_z_outliers_by_hand():
    # median 5.5; |x - median| sorted: .5 .5 1.5 1.5 2.5 2.5 3.5 3.5 4.5 24.5 -> MAD 2.5.
    # z = 0.6745 * |x - 5.5| / 2.5: 30 -> 6.61, 1 -> 1.21, 2 and 9 -> 0.94.
    assert quality.outliers(TEN, "robust_z", 3.5).tolist() == [False] * 9 + [True]
    assert quality.outliers(TEN, "robust_z", 1.2).tolist() == [True] + [False] * 8 + [True]
    assert not quality.outliers(TEN, "robust_z", 7.0).any()


def test_missing_values_are_never_outliers():
    x = pd.Series([1, 2, None, 3, 4, 5, 6, 7, 8, 9, 30, None], dtype=float)
    mask = quality.outliers(x, "iqr", 1.5)
    assert mask.dtype == bool and mask.sum() == 1 and mask[10]


@pytest.mark.parametrize("method", ["iqr", "robust_z"])
def test_too_few_values_give_no_outliers(method):
    x = pd.Series([1.0, 2.0, None, 1e9, None])  # three present values
    assert not quality.outliers(x, method, 1.5).any()


def test_robust_z_with_zero_mad_gives_no_outliers():
    assert not quality.outliers(pd.Series([5.0] * 6 + [100.0]), "robust_z", 3.5).any()


# --------------------------------------------------------------------------- completeness


def test_completeness_counts_and_fractions():
    df = pd.DataFrame({"a": [1.0, None, 3.0, None], "b": ["x", "y", None, "z"], "c": [1, 2, 3, 4]})
    result = quality.completeness(df)
    assert result["columns"] == {
        "a": {"missing": 2, "fraction": 0.5},
        "b": {"missing": 1, "fraction": 0.25},
        "c": {"missing": 0, "fraction": 0.0},
    }
    assert result["rows_with_missing"] == 3 and result["rows_with_missing_fraction"] == 0.75
    assert "c" not in result["mechanism"]  # nothing missing, nothing to explain


def _random_frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "group": rng.choice(["a", "b"], n),
            "x": rng.normal(size=n),
            "y": rng.normal(size=n),
        }
    )


def test_missingness_that_depends_on_a_category_is_not_mcar():
    df = _random_frame(1000, seed=1)
    rng = np.random.default_rng(2)
    df.loc[(df["group"] == "b") & (rng.random(len(df)) < 0.5), "y"] = np.nan
    mechanism = quality.completeness(df)["mechanism"]["y"]
    assert "not MCAR" in mechanism["hint"]
    found = {a["column"]: a for a in mechanism["associated_with"]}
    assert "group" in found and found["group"]["test"] == "chi2" and found["group"]["p_value"] < 0.01


def test_missingness_that_depends_on_a_number_is_not_mcar():
    df = _random_frame(1000, seed=3)
    df.loc[df["x"] > 0.5, "y"] = np.nan
    mechanism = quality.completeness(df)["mechanism"]["y"]
    assert [a["column"] for a in mechanism["associated_with"]] == ["x"]
    assert mechanism["associated_with"][0]["test"] == "mann-whitney"


def test_random_missingness_is_not_flagged():
    df = _random_frame(1000, seed=4)
    rng = np.random.default_rng(5)
    df.loc[rng.random(len(df)) < 0.2, "y"] = np.nan
    mechanism = quality.completeness(df)["mechanism"]["y"]
    assert mechanism["associated_with"] == []
    assert "consistent with MCAR" in mechanism["hint"]


# --------------------------------------------------------------------------- uniqueness


def test_duplicate_rows_marks_repeats_after_the_first():
    df = pd.DataFrame({"id": [1, 2, 3, 4], "a": [1, 2, 1, 1], "b": ["x", "y", "x", "z"]})
    assert quality.duplicate_rows(df).tolist() == [False] * 4  # ids differ
    assert quality.duplicate_rows(df, ["a", "b"]).tolist() == [False, False, True, False]
    assert quality.duplicate_rows(df, ["a"]).tolist() == [False, False, True, True]
    assert quality.duplicate_rows(df.iloc[:0]).tolist() == []


def test_near_duplicate_rows_round_numbers_and_fold_text_but_skip_exact_duplicates():
    df = pd.DataFrame(
        {
            "a": [1.0, 1.001, 1.0, 1.0, 2.0, 1.04],
            "b": ["Blue", " blue", "Blue", "BLUE ", "blue", "blue"],
        },
        index=[10, 11, 12, 13, 14, 15],
    )
    near = quality.near_duplicate_rows(df, decimals=2)
    # 11 and 13 equal row 10 once rounded and folded; 12 is an exact copy (not "near");
    # 14 and 15 differ in the number beyond rounding.
    assert near.to_dict() == {10: False, 11: True, 12: False, 13: True, 14: False, 15: False}
    assert quality.duplicate_rows(df).to_dict()[12]
    # With one decimal 1.04 rounds to 1.0 as well.
    assert quality.near_duplicate_rows(df, decimals=1)[15]


def _smooth_images(n: int, side: int, seed: int) -> np.ndarray:
    """Integer-valued images (0..200), so brightening by an integer is exact."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 200, size=(n, side, side)).astype(np.float32)


@pytest.mark.parametrize("side", [8, 28])
def test_difference_hash_is_stable_and_discriminates(side):
    a, b = _smooth_images(2, side, seed=side)
    brighter = a + 10.0
    scaled = a * 1.2
    hashes = quality.difference_hash(np.stack([a, a.copy(), brighter, scaled, b]))
    assert hashes.dtype == np.uint64 and hashes.shape == (5,)
    assert hashes[0] == hashes[1] == hashes[2] == hashes[3]
    assert hashes[4] != hashes[0]


def test_difference_hash_of_gradients():
    # Brighter to the right: every adjacent pair increases, all 64 bits set. Darker
    # to the right: none set. (28x28: every block column covers different pixels.)
    ramp = np.tile(np.arange(28, dtype=np.float32), (28, 1))
    hashes = quality.difference_hash(np.stack([ramp, ramp[:, ::-1]]))
    assert int(hashes[0]) == 2**64 - 1
    assert int(hashes[1]) == 0
    small = np.tile(np.arange(8, dtype=np.float32)[::-1], (8, 1))
    assert int(quality.difference_hash(small[None])[0]) == 0


def test_image_duplicates_counts_exact_and_near_copies():
    a, b, c = _smooth_images(3, 8, seed=7)
    images = np.stack([a, a.copy(), b, a + 5.0, c])
    found = quality.image_duplicates(images)
    assert found["duplicate_images"] == 1 and found["near_duplicate_images"] == 1
    assert found["exact_mask"].tolist() == [False, True, False, False, False]
    assert found["near_mask"].tolist() == [False, False, False, True, False]


# --------------------------------------------------------------------------- balance


def test_class_balance_matches_hand_computation():
    labels = pd.Series(["a"] * 6 + ["b"] * 3 + ["c"] + [None])
    balance = quality.class_balance(labels)
    assert balance["counts"] == {"a": 6, "b": 3, "c": 1} and balance["classes"] == 3
    assert balance["imbalance_ratio"] == 6.0
    # Gini 1 - (.36 + .09 + .01) = .54, over its maximum 1 - 1/3.
    assert balance["gini"] == pytest.approx(0.54 / (2 / 3))
    expected_entropy = -(0.6 * math.log(0.6) + 0.3 * math.log(0.3) + 0.1 * math.log(0.1)) / math.log(3)
    assert balance["normalized_entropy"] == pytest.approx(expected_entropy)
    assert balance["normalized_entropy"] == pytest.approx(stats.entropy([6, 3, 1], base=3))


def test_perfect_balance_scores_one():
    balance = quality.class_balance(pd.Series(["x", "y", "z", "w"] * 5))
    assert balance["imbalance_ratio"] == 1.0
    assert balance["gini"] == pytest.approx(1.0)
    assert balance["normalized_entropy"] == pytest.approx(1.0)


def test_a_single_class_has_no_diversity():
    balance = quality.class_balance(pd.Series(["only"] * 7))
    assert balance["classes"] == 1 and balance["counts"] == {"only": 7}
    assert balance["imbalance_ratio"] == 1.0
    assert balance["gini"] == 0.0 and balance["normalized_entropy"] == 0.0


def test_no_labels_at_all():
    balance = quality.class_balance(pd.Series([None, None], dtype=object))
    assert balance["classes"] == 0 and balance["imbalance_ratio"] is None
    assert balance["gini"] is None and balance["normalized_entropy"] is None
