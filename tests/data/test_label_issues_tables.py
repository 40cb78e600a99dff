"""Label errors on tables (tasks/data/label_issues.py): the out-of-fold model is
the one that fits the table best, a logistic regression or gradient boosting,
and on a table with 3% of its labels moved, the rows flagged track the rows
moved. Through the validate stage's gate, from a CSV file as a user's."""

from __future__ import annotations

import numpy as np
import pandas as pd
from test_own_table import csv_params, run

from tasks.data.label_issues import BOOSTED, LOGISTIC


def flipped(frame: pd.DataFrame, target: str, fraction: float, seed: int = 0) -> tuple[pd.DataFrame, set[int]]:
    """`fraction` of the rows given another class, seeded; their positions (ingest's row ids)."""
    rng = np.random.default_rng(seed)
    classes = sorted(frame[target].unique())
    rows = rng.choice(len(frame), int(round(fraction * len(frame))), replace=False)
    frame = frame.copy()
    for row in rows:
        others = [c for c in classes if c != frame.at[row, target]]
        frame.at[row, target] = others[rng.integers(len(others))]
    return frame, set(rows.tolist())


def test_three_percent_flips_on_a_table_are_found_and_the_rate_tracks_the_truth(tmp_path):
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer(as_frame=True)
    frame = data.data.assign(diagnosis=data.target.map({0: "malignant", 1: "benign"}))
    noisy, moved = flipped(frame, "diagnosis", 0.03)
    report = run(csv_params(noisy, tmp_path, "diagnosis", "binary")).label_report
    assert set(report["considered"]) == {LOGISTIC, BOOSTED} and report["reliable"], report
    assert report["model"] == max(report["considered"], key=report["considered"].get)
    found = {issue["row_id"] for issue in report["issues"]}
    true_rate = len(moved) / len(frame)
    assert report["flagged_rate"] <= 2 * true_rate and report["estimated_rate"] <= 2 * true_rate, report
    assert len(found & moved) / len(found) >= 0.6 and len(found & moved) / len(moved) >= 0.5


def test_classes_no_line_separates_are_scored_by_gradient_boosting(tmp_path):
    """Four overlapping classes, two clusters each, no label wrong: the boosted model fits them far better
    than the logistic regression, and it is the one whose probabilities the rows are judged by."""
    from sklearn.datasets import make_classification

    x, y = make_classification(
        1500, 10, n_informative=6, n_classes=4, n_clusters_per_class=2, class_sep=1.0, random_state=0
    )
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(10)]).assign(kind=[f"k{v}" for v in y])
    report = run(csv_params(frame, tmp_path, "kind", "multiclass")).label_report
    assert report["model"] == BOOSTED, report["considered"]
    assert report["considered"][BOOSTED] > report["considered"][LOGISTIC] + 0.05, report["considered"]
    assert report["model_quality"] == report["considered"][BOOSTED]
