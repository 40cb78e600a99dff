"""Label errors in the gate (tasks/data/label_issues.py): confident learning on
the bundled digits with seeded flips, each action, the gate on the rate, and a
class too small for the folds."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from bench.bench_label_issues import flip_labels
from tasks.contracts.dataset import LABEL, LABELS, REASON, ROW_ID, Dataset
from tasks.core.params import load_params
from tasks.data.gate import gate, load_suite
from tasks.data.label_issues import confident_learning
from tasks.ingest import ingest

REPO = Path(__file__).resolve().parents[2]
PARAMS = load_params(REPO / "params.yaml")


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return ingest(PARAMS.data)


def run(dataset: Dataset, **options):
    validate = replace(PARAMS.validate, label_issues=replace(PARAMS.validate.label_issues, **options))
    result = gate(dataset, "multiclass", validate, load_suite(REPO / "expectations/digits.json"))
    summary = result.summary
    assert summary["rows_in"] == summary["rows_valid"] + summary["rows_quarantined"] == len(dataset.table)
    return result


def test_three_percent_flips_are_found_with_precision_and_recall_over_0_6(digits):
    noisy, flips = flip_labels(digits, 0.03)
    result = run(noisy)
    report = result.label_report
    found = {issue["row_id"] for issue in report["issues"]}
    precision, recall = len(found & flips) / len(found), len(found & flips) / len(flips)
    assert precision >= 0.6 and recall >= 0.6, (precision, recall)
    assert report["action"] == "report" and result.summary["rows_quarantined"] == 0  # reported, nothing moved
    scores = [issue["score"] for issue in report["issues"]]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    flipped_to = dict(zip(noisy.table[ROW_ID], noisy.arrays[LABELS]))
    assert all(issue["given"] == digits.meta.classes[flipped_to[issue["row_id"]]] for issue in report["issues"])
    rate = [r for r in result.outcome.results if r["column"] == "label_issue"]
    assert rate and rate[0]["observed_value"] == pytest.approx(report["flagged_rate"], abs=1e-6)


def test_quarantine_moves_the_suspects_with_their_reason(digits):
    noisy, _ = flip_labels(digits, 0.03)
    result = run(noisy, action="quarantine")
    suspects = {issue["row_id"] for issue in result.label_report["issues"]}
    quarantined = result.quarantined.table
    assert suspects and set(quarantined[ROW_ID]) == suspects
    assert quarantined[REASON].str.startswith("label_issue: given ").all()
    assert not suspects & set(result.valid.table[ROW_ID])
    assert len(result.valid.arrays[LABELS]) == len(result.valid.table)  # arrays stay row-aligned


def test_relabel_gives_the_suggestion_to_suspects_scored_above_the_bar(digits):
    noisy, _ = flip_labels(digits, 0.03)
    result = run(noisy, action="relabel", relabel_above=0.5)
    issues = result.label_report["issues"]
    above = {i["row_id"]: i["suggested"] for i in issues if i["score"] >= 0.5}
    assert above and result.label_report["relabelled"] == len(above) < len(issues)
    labels = dict(zip(result.valid.table[ROW_ID], result.valid.arrays[LABELS]))
    assert all(digits.meta.classes[labels[r]] == s for r, s in above.items())
    assert all(result.valid.table.set_index(ROW_ID).loc[r, LABEL] == labels[r] for r in above)


def test_the_rate_gate_warns_by_default_and_stops_the_flow_when_critical(digits):
    noisy, _ = flip_labels(digits, 0.10)
    warned = run(noisy, max_rate=0.01)
    assert warned.outcome.success
    assert any(r["column"] == "label_issue" and not r["success"] for r in warned.outcome.warnings)
    stopped = run(noisy, max_rate=0.01, severity="critical")
    assert not stopped.outcome.success
    assert [r["expectation"] for r in stopped.outcome.failed] == ["expect_column_mean_to_be_between"]


def test_a_class_with_fewer_rows_than_folds_is_named_and_skipped(digits):
    keep = np.ones(len(digits.table), bool)
    threes = np.flatnonzero(digits.arrays[LABELS] == 3)
    keep[threes[3:]] = False  # three rows of class 3 remain: fewer than 5 folds
    few = Dataset(
        table=digits.table[keep].reset_index(drop=True),
        arrays={k: v[keep] for k, v in digits.arrays.items()},
        meta=digits.meta,
    )
    suite = load_suite(REPO / "expectations/digits.json")
    suite["expectations"] = [e for e in suite["expectations"] if "count" not in e["type"]]  # 3 rows pass the gate
    validate = PARAMS.validate
    report = gate(few, "multiclass", validate, suite).label_report
    assert report["skipped_classes"] == {"3": 3}
    assert report["checked_rows"] == keep.sum() - 3 and report["skipped_reason"] is None


def test_confident_learning_on_a_clean_separable_problem_flags_nothing():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    probabilities = np.full((300, 3), 0.05)
    probabilities[np.arange(300), y] = 0.9
    suspect, _, _, rate = confident_learning(probabilities, y)
    assert not suspect.any() and rate == 0.0
    y_noisy = y.copy()
    y_noisy[:9] = (y[:9] + 1) % 3  # the model still says the true class: these are the errors
    suspect, suggested, score, rate = confident_learning(probabilities, y_noisy)
    assert set(np.flatnonzero(suspect)) == set(range(9)) and (suggested[:9] == y[:9]).all()
    assert rate == pytest.approx(9 / 300, abs=0.01) and (score[:9] > 0.8).all()


def test_pictures_are_scored_by_a_small_cnn_and_the_report_says_how_well_it_fits(digits):
    noisy, flips = flip_labels(digits, 0.03)
    report = run(noisy).label_report
    assert report["model"] == "small CNN" and report["reliable"] and report["unreliable_reason"] is None
    # Against the given labels, 3% of them wrong (and a rare digit 3 in macro-F1): the model fits the rest.
    assert 0.8 <= report["model_quality"] <= 0.99
    assert "small CNN" in report["method"]


def test_a_model_too_weak_for_the_data_is_reported_unreliable_and_neither_gated_nor_acted_on(digits):
    noisy, _ = flip_labels(digits, 0.10)
    result = run(noisy, action="quarantine", max_rate=0.01, severity="critical", min_model_quality=0.999)
    report = result.label_report
    assert not report["reliable"] and report["suspects"] > 0
    assert "min_model_quality 0.999" in report["unreliable_reason"] and "small CNN" in report["unreliable_reason"]
    assert report["quarantined"] == 0 and result.summary["rows_quarantined"] == 0  # nothing moved on its word
    assert result.outcome.success  # the critical rate check is not run on an unreliable estimate
    assert not [r for r in result.outcome.results if r["column"] == "label_issue"]


@pytest.mark.slow  # 5 folds of a CNN on 5,300 pictures of 28x28
def test_on_harder_pictures_the_flips_are_found_and_the_rate_is_estimated_within_two_fold():
    """digits28 drawn with stronger jitter (bench.common.HARD_DIGITS28), where a
    linear model on pixels flags hard pictures, not errors."""
    from bench.common import HARD_DIGITS28

    hard = replace(PARAMS.data.digits28, **HARD_DIGITS28)  # the set bench_label_issues reports as digits28-hard
    dataset = ingest(replace(PARAMS.data, source="digits28", digits28=hard))
    noisy, flips = flip_labels(dataset, 0.03)
    validate = replace(PARAMS.validate, label_issues=replace(PARAMS.validate.label_issues, min_model_quality=0.0))
    report = gate(noisy, "multiclass", validate, load_suite(REPO / "expectations/digits28.json")).label_report
    found = {issue["row_id"] for issue in report["issues"]}
    precision, recall = len(found & flips) / len(found), len(found & flips) / len(flips)
    assert precision >= 0.6 and recall >= 0.6, (precision, recall)
    assert 0.5 <= report["estimated_rate"] / 0.03 <= 2.0, report["estimated_rate"]
