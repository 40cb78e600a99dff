"""Stage `search`: hyperparameter search for the teacher with Optuna.

Grid, random or Bayesian (TPE). Each trial trains the teacher with the trial's
values on the train split and scores the task's quality (macro-F1, R^2 for regression) on the validation split; every
trial is an MLflow child run. The best values go to reports/search/best_params.json,
which the train stage merges over params.yaml 'train', so the result flows
through `dvc repro` like everything else. Disabled, the stage writes an empty
override and costs nothing.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np

from tasks.core import paths
from tasks.contracts.processed import ProcessedMeta
from tasks.core.errors import DistilleryError, run_cli
from tasks.core.io import write_json
from tasks.core.params import SearchParams, SearchSpace, TrainParams, load_params
from tasks.core.report import markdown_table, write_summary

SECTIONS = ("search", "train")
SEARCH_DIR, BEST_PARAMS = paths.SEARCH_DIR, paths.BEST_PARAMS
INT_KEYS = {"batch_size", "hidden", "max_epochs", "patience"}


def suggest(trial: Any, name: str, space: SearchSpace) -> Any:
    """One value for `name` from its declared space."""
    if space.choices is not None:
        value = trial.suggest_categorical(name, list(space.choices))
    elif name in INT_KEYS:
        value = trial.suggest_int(name, int(space.low), int(space.high), log=space.log)
    else:
        value = trial.suggest_float(name, space.low, space.high, log=space.log)
    return int(value) if name in INT_KEYS else value


def grid_of(space: dict[str, SearchSpace], points: int) -> dict[str, list]:
    """The grid for GridSampler: choices as given, ranges as `points` values
    (log-spaced when `log`)."""
    grid = {}
    for name, s in space.items():
        if s.choices is not None:
            grid[name] = list(s.choices)
        else:
            values = np.geomspace(s.low, s.high, points) if s.log else np.linspace(s.low, s.high, points)
            grid[name] = sorted({int(round(v)) for v in values}) if name in INT_KEYS else [float(v) for v in values]
    return grid


def make_sampler(params: SearchParams) -> Any:
    import optuna

    if params.sampler == "grid":
        return optuna.samplers.GridSampler(grid_of(params.space, params.grid_points), seed=params.seed)
    if params.sampler == "random":
        return optuna.samplers.RandomSampler(seed=params.seed)
    return optuna.samplers.TPESampler(seed=params.seed)


def trial_params(base: TrainParams, values: dict[str, Any], max_epochs: int) -> TrainParams:
    """The train params of a trial: the search's values over params.yaml's, with
    the search's epoch budget. Invalid combinations fail like params.yaml would."""
    return dataclasses.replace(base, **{**values, "max_epochs": max_epochs})


def run_search(train: tuple, val: tuple, meta: ProcessedMeta, base: TrainParams, params: SearchParams,
               on_trial: Any = None) -> Any:
    """Run the study; trials are independent, so `params.parallel` run at once.
    `on_trial(number, values, score)` lets the caller log each trial."""
    import optuna

    from tasks.evaluation.metrics import task_metrics
    from tasks.ml.fitting import train_teacher
    from tasks.ml.training import predict_logits

    unknown = [k for k in params.space if k not in {f.name for f in dataclasses.fields(TrainParams)}]
    if unknown:
        raise DistilleryError(f"params.yaml: 'search.space' names {unknown}, which are not train params")

    def objective(trial: optuna.Trial) -> float:
        values = {name: suggest(trial, name, space) for name, space in params.space.items()}
        model, _ = train_teacher(train, val, meta, trial_params(base, values, params.max_epochs), quiet=True)
        score = task_metrics(meta.task, predict_logits(model, val[0]), val[1], list(meta.classes))["quality"]
        if on_trial:
            on_trial(trial.number, values, score)
        return score

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=make_sampler(params))
    trials = params.trials if params.sampler != "grid" else min(params.trials, _grid_size(params))
    study.optimize(objective, n_trials=trials, n_jobs=params.parallel)
    return study


def _grid_size(params: SearchParams) -> int:
    return int(np.prod([len(v) for v in grid_of(params.space, params.grid_points).values()]))


def plot_parallel(study: Any, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization.matplotlib import plot_parallel_coordinate

    from tasks.core.io import atomic_path

    ax = plot_parallel_coordinate(study)
    fig = ax.figure
    fig.set_size_inches(9, 4.5)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)


def main() -> None:
    params = load_params(paths.PARAMS, SECTIONS)
    SEARCH_DIR.mkdir(parents=True, exist_ok=True)
    if not params.search.enabled:  # before the heavy imports: a disabled stage costs well under a second
        write_json(BEST_PARAMS, {})
        write_summary("search", "Search disabled (`search.enabled: false`): train uses params.yaml as is.")
        return
    import threading

    import mlflow

    from tasks.contracts.processed import load_split, read_meta
    from tasks.core.tracking import mlflow_run
    from tasks.ml.checks import check_fit_params

    meta = read_meta()
    check_fit_params(params.train, "train", meta.task)
    train, val = load_split("train"), load_split("val")
    torch_threads = max(1, (os.cpu_count() or 1) // params.search.parallel)
    import torch

    torch.set_num_threads(torch_threads)  # parallel trials share the cores instead of fighting for them
    lock = threading.Lock()
    with mlflow_run(params.mlflow, "search", {"sampler": params.search.sampler}) as parent:
        def log_trial(number: int, values: dict, score: float) -> None:
            with lock:  # MLflow's fluent API is not thread-safe
                client = mlflow.MlflowClient()
                child = client.create_run(parent.info.experiment_id, run_name=f"trial-{number}",
                                          tags={"mlflow.parentRunId": parent.info.run_id, "stage": "search"})
                for key, value in values.items():
                    client.log_param(child.info.run_id, key, value)
                client.log_metric(child.info.run_id, "val_quality", score)
                client.set_terminated(child.info.run_id)

        study = run_search(train, val, meta, params.train, params.search, log_trial)
        mlflow.log_params({f"best_{k}": v for k, v in study.best_params.items()})
        mlflow.log_metric("best_val_quality", study.best_value)
        plot_parallel(study, SEARCH_DIR / "parallel_coordinates.png")
        mlflow.log_artifact(str(SEARCH_DIR / "parallel_coordinates.png"))
    best = {k: int(v) if k in INT_KEYS else v for k, v in study.best_params.items()}
    write_json(BEST_PARAMS, best)
    rows = [{"trial": t.number, **t.params, "val_quality": t.value} for t in study.trials if t.value is not None]
    write_json(SEARCH_DIR / "trials.json", rows)
    write_summary(
        "search",
        f"{len(rows)} {params.search.sampler} trials, {params.search.parallel} in parallel. Best validation quality (macro-F1; R^2 for regression) "
        f"{study.best_value:.4f} with {best}, written to `{BEST_PARAMS}` for the train stage.\n\n"
        + markdown_table(sorted(rows, key=lambda r: -r["val_quality"])[:10]),
    )


if __name__ == "__main__":
    run_cli(main)
