"""tasks/search.py: the Optuna search and how its result reaches the train stage."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import image_meta, params_section

from tasks.core.errors import DistilleryError
from tasks.core.io import write_json
from tasks.core.params import SearchParams, SearchSpace
from tasks.search import grid_of, run_search
from tasks.train import with_search_results


def tiny_data(n: int = 60, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = (rng.normal(size=(n, 1, 8, 8)) + y[:, None, None, None] * 2.0).astype(np.float32)
    return (x, y), image_meta(classes=("a", "b"), mean=(1.0,), std=(1.5,))


def search(sampler: str, trials: int, space: dict) -> SearchParams:
    return SearchParams(
        enabled=True, sampler=sampler, trials=trials, parallel=1, max_epochs=2, grid_points=2, seed=0, space=space
    )


def test_grid_spans_ranges_and_keeps_choices() -> None:
    grid = grid_of(
        {
            "lr": SearchSpace(low=1e-3, high=1e-1, log=True),
            "batch_size": SearchSpace(choices=(16, 32)),
            "dropout": SearchSpace(low=0.0, high=0.4),
        },
        points=3,
    )
    assert grid["lr"] == pytest.approx([1e-3, 1e-2, 1e-1])
    assert grid["dropout"] == pytest.approx([0.0, 0.2, 0.4])
    assert grid["batch_size"] == [16, 32]


@pytest.mark.parametrize("sampler", ["grid", "random", "tpe"])
def test_each_sampler_runs_trials_within_the_space(sampler: str) -> None:
    (x, y), meta = tiny_data()
    base = params_section("train", channels=(2,), hidden=4, patience=1)
    space = {"lr": SearchSpace(low=1e-3, high=1e-2, log=True), "batch_size": SearchSpace(choices=(16, 32))}
    seen = []
    study = run_search(
        (x, y),
        (x, y),
        meta,
        base,
        search(sampler, 3, space),
        on_trial=lambda number, values, score: seen.append((values, score)),
    )
    assert len(study.trials) == len(seen) == 3
    for values, score in seen:
        assert 1e-3 <= values["lr"] <= 1e-2 and values["batch_size"] in (16, 32)
        assert isinstance(values["batch_size"], int) and 0.0 <= score <= 1.0
    assert study.best_value == max(score for _, score in seen)


def test_a_space_naming_no_train_param_is_refused() -> None:
    (x, y), meta = tiny_data()
    with pytest.raises(DistilleryError, match=r"search\.space.*\['learning_rate'\]"):
        run_search(
            (x, y),
            (x, y),
            meta,
            params_section("train"),
            search("random", 1, {"learning_rate": SearchSpace(low=0.1, high=1.0)}),
        )


def test_best_params_override_train_params(tmp_path) -> None:
    base = params_section("train")
    best = tmp_path / "best.json"
    write_json(best, {"lr": 0.0123, "batch_size": 32})
    merged = with_search_results(base, best)
    assert (merged.lr, merged.batch_size) == (0.0123, 32)
    assert dataclasses.replace(merged, lr=base.lr, batch_size=base.batch_size) == base
    assert with_search_results(base, tmp_path / "absent.json") == base
    write_json(best, {"not_a_param": 1})
    with pytest.raises(DistilleryError, match="best.json"):
        with_search_results(base, best)
