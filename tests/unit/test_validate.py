"""tasks/data/gate.py (the validate stage's building blocks): the real digits GX suite through a GX checkpoint, and the
quarantine split."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import REPO_ROOT

from tasks.contracts.dataset import Dataset, DatasetMeta
from tasks.core.errors import DistilleryError
from tasks.data.gate import failure_message, load_suite, merge_reasons, run_suite, split_quarantine, suite_parameters
from tasks.data.sources import ImageData
from tasks.ingest import image_table

DIGITS_SUITE = REPO_ROOT / "expectations" / "digits.json"
CLASSES = ("zero", "one", "two")


@pytest.fixture(scope="module", autouse=True)
def no_gx_analytics():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GX_ANALYTICS_ENABLED", "false")
        yield


@pytest.fixture(scope="module")
def suite() -> dict:
    return load_suite(DIGITS_SUITE)


def make_dataset(counts=(40, 40, 40), seed: int = 0) -> Dataset:
    """Clean 8x8 digits-like data (pixels 0..16), built through ingest's own table."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(counts)), counts).astype(np.int64)
    images = rng.integers(0, 17, size=(len(labels), 8, 8)).astype(np.float32)
    return dataset_from(ImageData(images=images, labels=labels, classes=CLASSES, pixel_max=16.0))


def dataset_from(data: ImageData) -> Dataset:
    meta = DatasetMeta(
        source="digits",
        kind="image",
        rows=len(data.labels),
        data_hash="test",
        classes=tuple(data.classes),
        image_shape=tuple(data.images.shape[1:]),
        pixel_max=data.pixel_max,
    )
    return Dataset(table=image_table(data), arrays={"images": data.images, "labels": data.labels}, meta=meta)


def failed_names(outcome) -> set[str]:
    return {r["expectation"] for r in outcome.failed}


def test_suite_parameters_list_every_class_label():
    meta = DatasetMeta(
        source="digits",
        kind="image",
        rows=0,
        data_hash="test",
        classes=("a", "b", "c", "d"),
        image_shape=(8, 8),
        pixel_max=16.0,
    )
    assert suite_parameters(meta) == {"class_labels": [0, 1, 2, 3]}


def test_clean_data_passes_with_nothing_quarantined(suite):
    dataset = make_dataset()
    outcome = run_suite(dataset.table, suite, suite_parameters(dataset.meta))
    assert outcome.success, failure_message(outcome, DIGITS_SUITE)
    assert outcome.reasons == {}
    assert len(outcome.results) == len(suite["expectations"])
    assert all(r["success"] for r in outcome.results)
    valid, quarantined = split_quarantine(dataset, outcome.reasons)
    assert len(valid.table) == len(dataset.table) and len(quarantined.table) == 0
    np.testing.assert_array_equal(valid.arrays["images"], dataset.arrays["images"])


@pytest.fixture(scope="module")
def dirty(suite):
    """120 clean rows, one relabelled outside the classes and one with a pixel of 99."""
    dataset = make_dataset()
    bad_label_row, bad_pixel_row = 5, 77
    dataset.arrays["images"][bad_pixel_row, 3, 4] = 99.0
    dataset.table = image_table(ImageData(dataset.arrays["images"], dataset.arrays["labels"], CLASSES, pixel_max=16.0))
    # A corrupted label: no class name exists for it, so it is set on the table and array alike.
    dataset.table.loc[bad_label_row, "label"] = 7
    dataset.arrays["labels"][bad_label_row] = 7
    outcome = run_suite(dataset.table, suite, suite_parameters(dataset.meta))
    return dataset, outcome, bad_label_row, bad_pixel_row


def test_bad_rows_are_quarantined_with_reasons(dirty):
    dataset, outcome, bad_label_row, bad_pixel_row = dirty
    assert set(outcome.reasons) == {bad_label_row, bad_pixel_row}
    assert outcome.reasons[bad_label_row] == ["expect_column_values_to_be_in_set(label)"]
    assert outcome.reasons[bad_pixel_row] == ["expect_column_values_to_be_between(pixel_max)"]

    valid, quarantined = split_quarantine(dataset, outcome.reasons)
    rows_in = len(dataset.table)
    assert rows_in == len(valid.table) + len(quarantined.table)
    assert sorted(quarantined.table["row_id"]) == sorted([bad_label_row, bad_pixel_row])
    assert not set(valid.table["row_id"]) & set(quarantined.table["row_id"])
    reasons = dict(zip(quarantined.table["row_id"], quarantined.table["reason"]))
    assert "label" in reasons[bad_label_row] and "in_set" in reasons[bad_label_row]
    assert "pixel_max" in reasons[bad_pixel_row] and "between" in reasons[bad_pixel_row]
    assert valid.meta.rows == len(valid.table) and quarantined.meta.rows == 2
    # Everything else in the meta travels unchanged to both parts.
    assert valid.meta == dataset.meta.replace(rows=len(valid.table))
    assert quarantined.meta == dataset.meta.replace(rows=2)


def test_quarantine_split_keeps_arrays_row_aligned_with_tables(dirty):
    dataset, outcome, _, _ = dirty
    for part in split_quarantine(dataset, outcome.reasons):
        images, labels = part.arrays["images"], part.arrays["labels"]
        assert len(images) == len(labels) == len(part.table)
        np.testing.assert_array_equal(part.table["label"], labels)
        np.testing.assert_array_equal(part.table["pixel_max"], images.reshape(len(images), -1).max(axis=1))
        # Each row's pixels are the ones that row had on the way in.
        np.testing.assert_array_equal(images, dataset.arrays["images"][part.table["row_id"].to_numpy()])


def test_one_bad_row_each_stays_within_mostly(dirty):
    _, outcome, _, _ = dirty
    by_check = {(r["expectation"], r["column"]): r for r in outcome.results}
    in_set = by_check[("expect_column_values_to_be_in_set", "label")]
    between = by_check[("expect_column_values_to_be_between", "pixel_max")]
    assert in_set["success"] and in_set["unexpected_count"] == 1  # within `mostly`
    assert between["success"] and between["unexpected_count"] == 1


def test_a_few_bad_rows_do_not_fail_the_gate(dirty):
    # A stray label is not a class: it must not count as a 1-row class in
    # expect_column_value_counts_to_be_at_least (regression).
    _, outcome, _, _ = dirty
    assert outcome.success, failed_names(outcome)


def test_a_missing_column_fails_the_gate_naming_the_expectation(suite):
    dataset = make_dataset()
    table = dataset.table.drop(columns=["n_missing"])
    outcome = run_suite(table, suite, suite_parameters(dataset.meta))
    assert not outcome.success
    assert "expect_table_columns_to_match_ordered_list" in failed_names(outcome)
    message = failure_message(outcome, DIGITS_SUITE)
    assert "expect_table_columns_to_match_ordered_list" in message
    assert str(DIGITS_SUITE) in message


def test_a_collapsed_class_fails_the_gate(suite):
    dataset = make_dataset(counts=(60, 60, 2))
    outcome = run_suite(dataset.table, suite, suite_parameters(dataset.meta))
    assert not outcome.success
    assert failed_names(outcome) == {"expect_column_value_counts_to_be_at_least"}
    (failed,) = outcome.failed
    assert failed["column"] == "label" and failed["observed_value"] == 2
    message = failure_message(outcome, DIGITS_SUITE)
    assert "expect_column_value_counts_to_be_at_least on column 'label'" in message
    assert "has 2 row(s), fewer than the 10 needed" in message  # the class, its rows, the minimum


def test_a_vanished_class_fails_the_gate(suite):
    # A declared class with no rows counts as 0, not as absent (regression).
    dataset = make_dataset(counts=(60, 60, 0))  # meta still lists three classes
    outcome = run_suite(dataset.table, suite, suite_parameters(dataset.meta))
    assert "expect_column_value_counts_to_be_at_least" in failed_names(outcome)
    counts = next(r for r in outcome.failed if r["expectation"] == "expect_column_value_counts_to_be_at_least")
    assert counts["observed_value"] == 0


def test_a_failed_warning_is_reported_but_does_not_stop_the_gate(suite):
    dataset = make_dataset(counts=(250, 250, 10))  # every class has enough rows, but 25:1 imbalance
    # Plus a row-level warning that most rows fail: reported, never a quarantine reason.
    row_warning = {
        "type": "expect_column_values_to_be_between",
        "kwargs": {"column": "pixel_max", "min_value": 0, "max_value": 15},
        "severity": "warning",
    }
    with_row_warning = {**suite, "expectations": [*suite["expectations"], row_warning]}
    outcome = run_suite(dataset.table, with_row_warning, suite_parameters(dataset.meta))
    assert outcome.success, failure_message(outcome, DIGITS_SUITE)
    warned = {(r["expectation"], r["column"]): r for r in outcome.warnings}
    assert warned[("expect_column_imbalance_ratio_to_be_at_most", "label")]["observed_value"] == pytest.approx(25.0)
    assert warned[("expect_column_values_to_be_between", "pixel_max")]["unexpected_count"] > 0
    assert outcome.reasons == {}  # a warning quarantines nothing


def test_a_class_at_exactly_min_count_passes(suite):
    min_count = next(
        e["kwargs"]["min_count"]
        for e in suite["expectations"]
        if e["type"] == "expect_column_value_counts_to_be_at_least"
    )
    dataset = make_dataset(counts=(60, 60, min_count))
    outcome = run_suite(dataset.table, suite, suite_parameters(dataset.meta))
    assert outcome.success, failure_message(outcome, DIGITS_SUITE)


def test_too_many_bad_rows_fail_the_gate(suite):
    dataset = make_dataset()
    dataset.arrays["images"][:10, 0, 0] = 99.0  # 10 of 120 rows: beyond `mostly`
    table = image_table(ImageData(dataset.arrays["images"], dataset.arrays["labels"], CLASSES, 16.0))
    outcome = run_suite(table, suite, suite_parameters(dataset.meta))
    assert not outcome.success
    assert failed_names(outcome) == {"expect_column_values_to_be_between"}
    assert "10 unexpected rows" in failure_message(outcome, DIGITS_SUITE)
    assert set(outcome.reasons) == set(range(10))


def test_merge_reasons_keeps_every_reason_per_row():
    merged = merge_reasons({1: ["a"], 2: ["b"]}, {2: ["c"], 3: ["d"]}, {})
    assert merged == {1: ["a"], 2: ["b", "c"], 3: ["d"]}


def test_split_quarantine_with_merged_reasons_keeps_every_row(dirty):
    dataset, outcome, bad_label_row, _ = dirty
    extra = {0: ["duplicate image"], bad_label_row: ["label typo"]}
    valid, quarantined = split_quarantine(dataset, merge_reasons(outcome.reasons, extra))
    assert len(valid.table) + len(quarantined.table) == len(dataset.table)
    assert len(quarantined.table) == 3
    reasons = dict(zip(quarantined.table["row_id"], quarantined.table["reason"]))
    assert reasons[0] == "duplicate image"
    assert reasons[bad_label_row] == "expect_column_values_to_be_in_set(label); label typo"


def test_load_suite_names_a_missing_file(tmp_path):
    path = tmp_path / "nope.json"
    with pytest.raises(DistilleryError, match=str(path)):
        load_suite(path)


def test_load_suite_rejects_json_without_expectations(tmp_path):
    path = tmp_path / "suite.json"
    path.write_text(json.dumps({"name": "x", "expectations": {"not": "a list"}}))
    with pytest.raises(DistilleryError) as err:
        load_suite(path)
    assert str(path) in str(err.value) and "expectations" in str(err.value)


def test_run_suite_rejects_an_unknown_expectation_type(suite):
    # A typo in an expectation type must stop the gate, not silently drop the check.
    typo = {"type": "expect_column_values_to_be_inn_set", "kwargs": {"column": "label", "value_set": [0]}}
    broken = {**suite, "expectations": [*suite["expectations"], typo]}
    dataset = make_dataset()
    with pytest.raises(DistilleryError) as err:
        run_suite(dataset.table, broken, suite_parameters(dataset.meta))
    assert "digits" in str(err.value) and "expect_column_values_to_be_inn_set" in str(err.value)


def test_run_suite_rejects_bad_expectation_arguments(suite):
    bad = {"type": "expect_column_values_to_be_between", "kwargs": {"colum": "label", "min_value": 0}}
    dataset = make_dataset()
    with pytest.raises(DistilleryError, match="not valid"):
        run_suite(dataset.table, {**suite, "expectations": [bad]}, suite_parameters(dataset.meta))
