"""The champion against the baselines (tasks/evaluation/baselines.py and the
gate in tasks/register.py), the renamed quality budget, and distillation from
the strongest teacher: real scikit-learn and onnxruntime, no mocks."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from conftest import REPO_ROOT
from test_boosted import PARAMS
from test_select import params as select_params

from tasks.contracts.reports import BOOSTED_BASELINE, TRIVIAL, Baseline, Selection
from tasks.core.errors import DistilleryError
from tasks.core.params import SelectParams, apply_renamed_keys, load_params
from tasks.evaluation.baselines import boosted_baseline, trivial_baseline
from tasks.evaluation.card import baseline_rows
from tasks.evaluation.metrics import task_metrics
from tasks.ml.boosting import boosted_predict, fit_boosted
from tasks.register import gate_failures

SELECT = select_params(precisions=("fp32", "int8"))  # min_gain_over_trivial 0.05, floors off


def scored(task: str, x: np.ndarray, y: np.ndarray) -> tuple[dict, Baseline]:
    """A boosted model fitted on the first 60% of the rows, scored on the last 20%
    (the 20% between is its validation split), and the trivial baseline there."""
    n = len(y)
    train, val, test = slice(0, int(0.6 * n)), slice(int(0.6 * n), int(0.8 * n)), slice(int(0.8 * n), n)
    model = fit_boosted((x[train], y[train]), (x[val], y[val]), task, PARAMS)
    outputs = boosted_predict(model, x[test], task)
    classes = [] if task == "regression" else [str(c) for c in range(int(y.max()) + 1)]
    if not classes:
        outputs = outputs.ravel()
    scores = task_metrics(task, outputs, y[test], classes, probabilities=bool(classes))
    return scores, trivial_baseline(task, y[train], y[test], classes)


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_a_table_without_signal_is_refused_naming_the_trivial_baseline(task):
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (1500, 6)).astype(np.float32)
    y = rng.normal(0, 1, 1500) if task == "regression" else rng.integers(0, 2 if task == "binary" else 4, 1500)
    scores, trivial = scored(task, x, y)
    failures = gate_failures(scores, SELECT, None, task, {TRIVIAL: trivial})
    assert len(failures) == 1, failures
    assert "does not beat the trivial baseline" in failures[0] and trivial.model in failures[0]
    assert "select.min_gain_over_trivial 0.05" in failures[0]


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_a_table_with_signal_clears_the_trivial_baseline_without_a_floor(task):
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (1500, 6)).astype(np.float32)
    signal = x[:, 0] + x[:, 1] * x[:, 2] + rng.normal(0, 0.5, 1500)
    y = signal if task == "regression" else np.digitize(signal, [0.0] if task == "binary" else [-1.0, 0.0, 1.0])
    scores, trivial = scored(task, x, y)
    assert gate_failures(scores, SELECT, None, task, {TRIVIAL: trivial}) == []
    assert scores["quality"] > trivial.quality + 0.3


def test_the_trivial_classifier_baseline_is_the_best_guess_for_macro_f1():
    """On two balanced classes the majority class scores macro-F1 1/3 and a
    random guess 1/2: the baseline is the guess, averaged over seeds."""
    rng = np.random.default_rng(2)
    train, test = rng.integers(0, 2, 2000), rng.integers(0, 2, 1000)
    baseline = trivial_baseline("binary", train, test, ["a", "b"])
    assert baseline.quality == pytest.approx(0.5, abs=0.03)
    assert "stratified" in baseline.model or "uniform" in baseline.model
    skewed = trivial_baseline("binary", np.r_[np.zeros(950), np.ones(50)].astype(int), np.zeros(100, int), ["a", "b"])
    assert skewed.model == "DummyClassifier(strategy='most_frequent')" and skewed.metrics["accuracy"] == 1.0


def test_the_trivial_regression_baseline_is_the_training_mean():
    baseline = trivial_baseline("regression", np.array([1.0, 3.0]), np.array([1.0, 3.0]), [])
    assert baseline.model == "DummyRegressor(strategy='mean')" and baseline.quality == pytest.approx(0.0)
    assert baseline.metrics["rmse"] == pytest.approx(1.0)


def test_the_gate_keeps_the_champion_within_the_budget_of_the_boosted_baseline():
    boosted = boosted_baseline("multiclass", {"boosted.fp32": {"quality": 0.90, "macro_f1": 0.90, "accuracy": 0.9}})
    assert boosted == Baseline(BOOSTED_BASELINE, "boosted.fp32", 0.90, {"macro_f1": 0.90, "accuracy": 0.9})
    assert boosted_baseline("multiclass", {"teacher.fp32": {"quality": 0.9}}) is None
    trivial = Baseline(TRIVIAL, "DummyClassifier(strategy='uniform')", 0.33, {})
    failures = gate_failures({"macro_f1": 0.85}, SELECT, None, "multiclass", {TRIVIAL: trivial, "boosted": boosted})
    assert failures == [
        "macro_f1 0.8500 is 0.0500 below the boosted baseline, boosted.fp32 (0.9000), more than "
        "select.max_quality_drop 0.01 of it (at least 0.8910)"
    ]
    assert gate_failures({"macro_f1": 0.895}, SELECT, None, "multiclass", {TRIVIAL: trivial, "boosted": boosted}) == []


def test_absolute_floors_are_off_by_default_and_still_available():
    params = load_params(REPO_ROOT / "params.yaml").select
    assert params.min_macro_f1 is None and params.min_r2 is None and params.min_gain_over_trivial > 0
    floored = SelectParams(**{**SELECT.__dict__, "min_r2": 0.5})
    assert gate_failures({"quality": 0.4, "r2": 0.4}, floored, None, "regression") == [
        "r2 0.4000 < select.min_r2 0.5 (short by 0.1000)"
    ]
    assert gate_failures({"quality": 0.4, "r2": 0.4}, SELECT, None, "regression") == []


def test_the_old_budget_key_is_accepted_for_one_release_naming_the_new_one(tmp_path):
    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    raw["select"]["max_f1_drop"] = 0.05  # `dvc exp run -S select.max_f1_drop=0.05` adds it beside the new key
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    said: list[str] = []
    moved = apply_renamed_keys(yaml.safe_load(path.read_text()), str(path), said.append)
    assert moved["select"]["max_quality_drop"] == 0.05 and "max_f1_drop" not in moved["select"]
    assert len(said) == 1 and "'select.max_f1_drop' is now 'select.max_quality_drop'" in said[0]
    assert "this release only" in said[0]
    assert load_params(path).select.max_quality_drop == 0.05  # the loader applies it (and says so on stderr)
    raw["select"]["max_r2_drop"] = 0.2
    with pytest.raises(DistilleryError, match="both old names of 'select.max_quality_drop'"):
        apply_renamed_keys(raw, "params.yaml", said.append)


def test_the_card_and_the_report_show_the_champion_beside_both_baselines():
    row = {"quality": 0.88, "macro_f1": 0.88, "accuracy": 0.9, "size_bytes": 1, "latency_ms_b256_t1": 1.0}
    selection = Selection(
        champion="student.int8",
        reference="teacher.fp32",
        best="boosted.fp32",
        max_quality_drop=0.03,
        speed_key="latency_ms_b256_t1",
        task="multiclass",
        candidates={"student.int8": row, "teacher.fp32": row, "boosted.fp32": {**row, "quality": 0.9}},
        baselines={
            TRIVIAL: Baseline(TRIVIAL, "DummyClassifier(strategy='uniform')", 0.3, {"macro_f1": 0.3, "accuracy": 0.33}),
            BOOSTED_BASELINE: Baseline(BOOSTED_BASELINE, "boosted.fp32", 0.9, {"macro_f1": 0.9, "accuracy": 0.91}),
        },
    )
    rows = baseline_rows(selection)
    assert [r["model"] for r in rows] == [
        "champion: student.int8",
        "trivial baseline: DummyClassifier(strategy='uniform')",
        "boosted baseline: boosted.fp32",
    ]
    assert [r["vs champion (macro-F1)"] for r in rows] == [0.0, -0.58, 0.02]
    from tasks.evaluation.page import _baselines_table

    html = _baselines_table(selection)
    assert "DummyClassifier(strategy=&#x27;uniform&#x27;)" in html or "DummyClassifier(strategy='uniform')" in html
    assert "boosted baseline: boosted.fp32" in html
