"""What a champion is measured against, on the same test split: the trivial
baseline (a model that ignores the features: scikit-learn's DummyClassifier or
DummyRegressor, fitted on the train split's labels) and, on tables, the
gradient-boosted candidate.

The gate (tasks/register.py) wants the champion clearly above the trivial
baseline and within the quality budget of the best. A table whose labels do
not depend on its features cannot clear the first: its model scores what
guessing scores.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from tasks.contracts.reports import BOOSTED, BOOSTED_BASELINE, TRIVIAL, Baseline
from tasks.core.task import task_of
from tasks.evaluation.metrics import task_metrics

# A classifier guessing without the features: always the commonest class, or a
# random class drawn by the training frequencies or uniformly. Macro-F1 rewards
# the random guesses (every class gets some right) over the majority, so the
# trivial baseline is the best of the three.
STRATEGIES = ("most_frequent", "stratified", "uniform")
DRAWS = 25  # random guesses are averaged over this many seeds: the baseline is their expected score


def _figures(task: str, scores: dict) -> dict[str, float]:
    return {k: float(scores[k]) for k in task_of(task).headline if k != "ece" and scores.get(k) is not None}


def _guess_scores(
    task: str, strategy: str, train_y: np.ndarray, test_y: np.ndarray, classes: list[str], threshold: float
) -> dict[str, float]:
    """The task's figures of DummyClassifier(strategy), averaged over DRAWS seeds when it draws at random."""
    from sklearn.dummy import DummyClassifier
    from sklearn.metrics import accuracy_score, f1_score

    draws = 1 if strategy == "most_frequent" else DRAWS
    runs = []
    for seed in range(draws):
        dummy = DummyClassifier(strategy=strategy, random_state=seed).fit(np.zeros((len(train_y), 1)), train_y)
        predicted = dummy.predict(np.zeros((len(test_y), 1)))
        if task_of(task).multilabel:  # 0/1 per label, thresholded as they are
            probs = np.asarray(predicted, np.float32)
            scores = task_metrics(task, probs, test_y, classes, probabilities=True, threshold=threshold)
            runs.append({"quality": float(scores["quality"]), **_figures(task, scores)})
            continue
        # One class per row: macro-F1 over every class as evaluate counts it (tasks.evaluation.metrics),
        # without the curves and calibration a guess has no use for.
        f1 = f1_score(test_y, predicted, labels=list(range(len(classes))), average="macro", zero_division=0)
        runs.append({"quality": float(f1), "macro_f1": float(f1), "accuracy": float(accuracy_score(test_y, predicted))})
    return {key: float(np.mean([run[key] for run in runs])) for key in runs[0]}


def trivial_baseline(
    task: str, train_y: np.ndarray, test_y: np.ndarray, classes: list[str], threshold: float = 0.5
) -> Baseline:
    """The best score on `test_y` of a model that never looks at the features:
    the training mean (regression), or the best of the majority class, a
    stratified and a uniform random guess (classifiers)."""
    if task_of(task).regression:
        from sklearn.dummy import DummyRegressor

        dummy = DummyRegressor(strategy="mean").fit(np.zeros((len(train_y), 1)), train_y)
        predicted = dummy.predict(np.zeros((len(test_y), 1)))
        scores = task_metrics(task, predicted, test_y, classes)
        return Baseline(TRIVIAL, "DummyRegressor(strategy='mean')", float(scores["quality"]), _figures(task, scores))
    by_strategy = {s: _guess_scores(task, s, train_y, test_y, classes, threshold) for s in STRATEGIES}
    strategy = max(STRATEGIES, key=lambda s: by_strategy[s]["quality"])
    figures = by_strategy[strategy]
    quality = figures.pop("quality")
    drawn = "" if strategy == "most_frequent" else f", mean of {DRAWS} seeds"
    return Baseline(TRIVIAL, f"DummyClassifier(strategy='{strategy}'{drawn})", quality, figures)


def boosted_baseline(task: str, candidates: dict[str, dict[str, Any]]) -> Optional[Baseline]:
    """The boosted candidate's scores as a baseline, or None where there is none (images)."""
    scores = candidates.get(BOOSTED.name)
    if scores is None:
        return None
    return Baseline(BOOSTED_BASELINE, BOOSTED.name, float(scores["quality"]), _figures(task, scores))
