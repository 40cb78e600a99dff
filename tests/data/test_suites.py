"""The GX suites on real data: the bundled digits, and Quick Draw-format files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tasks.core.params import load_params
from tasks.data.gate import load_suite, run_suite, split_quarantine, suite_parameters
from tasks.ingest import ingest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("source", "side", "at_least"), [("digits", 8, 1000), ("digits28", 28, 5000)])
def test_bundled_digits_pass_their_suite_with_nothing_quarantined(source: str, side: int, at_least: int) -> None:
    from dataclasses import replace

    params = replace(load_params(REPO / "params.yaml").data, source=source)
    dataset = ingest(params)
    assert dataset.arrays["images"].shape[1:] == (side, side) and len(dataset.table) >= at_least
    outcome = run_suite(dataset.table, load_suite(REPO / f"expectations/{source}.json"), suite_parameters(dataset.meta))
    assert outcome.success, [r for r in outcome.results if not r["success"]]
    valid, quarantined = split_quarantine(dataset, outcome.reasons)
    assert len(quarantined.table) == 0
    assert len(valid.table) == len(dataset.table) == dataset.meta.rows
    # The default imbalance really is there: one rare class at ~10%, the rest 50-100%.
    counts = np.bincount(dataset.arrays["labels"], minlength=10)
    assert counts.min() <= 0.15 * counts.max()


def test_quickdraw_files_pass_their_suite_and_bad_bitmaps_are_quarantined(tmp_path: Path) -> None:
    from dataclasses import replace

    rng = np.random.default_rng(0)
    for name, n in (("cat", 100), ("dog", 60)):
        np.save(tmp_path / f"{name}.npy", rng.integers(0, 256, size=(n, 784), dtype=np.uint8))
    base = load_params(REPO / "params.yaml").data
    params = replace(
        base,
        source="quickdraw",
        path=str(tmp_path),
        quickdraw=replace(base.quickdraw, classes=("cat", "dog"), samples_per_class={"cat": 80, "dog": 40}),
    )
    dataset = ingest(params)
    suite = load_suite(REPO / "expectations/quickdraw.json")
    outcome = run_suite(dataset.table, suite, suite_parameters(dataset.meta))
    assert outcome.success
    assert dataset.meta.image_shape == (28, 28)

    # One image with a NaN pixel: the gate still passes (mostly), the row is quarantined.
    dataset.arrays["images"][3, 5, 5] = np.nan
    dataset.table.loc[3, "n_missing"] = 1
    outcome = run_suite(dataset.table, suite, suite_parameters(dataset.meta))
    valid, quarantined = split_quarantine(dataset, outcome.reasons)
    assert quarantined.table["row_id"].tolist() == [3]
    assert "n_missing" in quarantined.table["reason"][0]
    assert len(valid.table) + len(quarantined.table) == len(dataset.table)


# Every task type on every bundled source it fits, and a second target of the same table.
BOOTSTRAPPED = [
    ("digits", "multiclass", None),
    ("digits", "multilabel", None),
    ("digits28", "multiclass", None),
    ("breast_cancer", "binary", None),
    ("breast_cancer", "multiclass", None),
    ("diabetes", "regression", None),
    ("penguins", "multiclass", None),
    ("penguins", "regression", "Body Mass (g)"),
]


@pytest.mark.parametrize(("source", "task", "target"), BOOTSTRAPPED)
def test_make_suite_profiles_every_task_and_source_and_the_data_passes_its_suite(source, task, target) -> None:
    import dataclasses

    from tasks.bootstrap_suite import profile_suite
    from tasks.core.task import task_of
    from tasks.data.gate import assess, gate

    base = load_params(REPO / "params.yaml")
    params = dataclasses.replace(
        base,
        task=dataclasses.replace(base.task, type=task),
        data=dataclasses.replace(base.data, source=source, target=target),
    )
    dataset = ingest(params.data)
    suite = profile_suite(dataset, params, f"{source}_{task}")
    on_target = {e["type"] for e in suite["expectations"] if e["kwargs"].get("column") == "label"}
    class_checks = {"expect_column_values_to_be_in_set", "expect_column_value_counts_to_be_at_least"}
    if task_of(task).regression:
        assert not on_target & class_checks and "expect_column_imbalance_ratio_to_be_at_most" not in on_target
        assert {"expect_column_values_to_be_between", "expect_column_stdev_to_be_between"} <= on_target
    else:
        assert class_checks <= on_target
    if source == "digits28":  # 5,000 images: the label-error search alone takes minutes; the suite is the check
        _, typed = assess(dataset, task, params.validate)
        outcome = run_suite(typed.table, suite, {})
    else:
        outcome = gate(dataset, task, params.validate, suite).outcome
    assert outcome.success, [(r["expectation"], r["column"], r["observed_value"]) for r in outcome.failed]
    assert not outcome.warnings
