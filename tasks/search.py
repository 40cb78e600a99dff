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
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from tasks.contracts.processed import ProcessedMeta
from tasks.core import paths
from tasks.core.cluster import connect_dask
from tasks.core.cluster import dask_address as configured_dask_address
from tasks.core.errors import DistilleryError, run_cli
from tasks.core.io import write_json
from tasks.core.params import SearchParams, SearchSpace, TrainParams, load_params
from tasks.core.report import markdown_table, write_summary
from tasks.core.task import task_of

SECTIONS = ("search", "train")
SEARCH_DIR, BEST_PARAMS = paths.SEARCH_DIR, paths.BEST_PARAMS
INT_KEYS = {"batch_size", "hidden", "max_epochs", "patience"}
# Where trials run: a Dask scheduler's address (tcp://host:8786); unset = threads in this process.
# An environment setting, not a param: where the trials run does not change their results.


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


def score_trial(train: tuple, val: tuple, meta: ProcessedMeta, params: TrainParams, threads: int) -> float:
    """Train one trial's teacher and score it on the validation split: the
    unit of work, module-level so a Dask worker can run it."""
    import torch

    from tasks.evaluation.metrics import task_metrics
    from tasks.ml.fitting import train_teacher
    from tasks.ml.models import predict_logits

    torch.set_num_threads(threads)
    model, _ = train_teacher(train, val, meta, params, quiet=True)
    return task_metrics(meta.task, predict_logits(model, val[0]), val[1], list(meta.classes))["quality"]


@contextmanager
def executor(dask_address: str | None, parallel: int, train: tuple, val: tuple) -> Iterator[tuple]:
    """(submit, gather, data): processes here, or the Dask cluster at
    `dask_address` (the data sent to every worker once). Processes, not
    threads: torch's random generator is per process, and trials sharing one
    would draw each other's numbers, so a seeded search would not repeat."""
    if not dask_address:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn: a fresh interpreter per worker (forking a process that has run torch can hang)
        with ProcessPoolExecutor(parallel, mp_context=multiprocessing.get_context("spawn")) as pool:
            yield pool.submit, lambda futures: [f.result() for f in futures], (train, val)
        return
    client = connect_dask(dask_address)
    try:
        data = tuple(client.scatter([train, val], broadcast=True))
        yield client.submit, client.gather, data
    finally:
        client.close()


def run_search(
    train: tuple,
    val: tuple,
    meta: ProcessedMeta,
    base: TrainParams,
    params: SearchParams,
    on_trial: Any = None,
    dask_address: str | None = None,
) -> Any:
    """Run the study in waves of `params.parallel` independent trials, in
    processes here or on a Dask cluster (`dask_address`). Trials are asked and
    told in trial order whatever runs them, so a seeded search gives the same
    trials and best values on either. `on_trial(number, values, score)` lets
    the caller log each trial."""
    import optuna

    unknown = [k for k in params.space if k not in {f.name for f in dataclasses.fields(TrainParams)}]
    if unknown:
        raise DistilleryError(f"params.yaml: 'search.space' names {unknown}, which are not train params")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=make_sampler(params))
    remaining = params.trials if params.sampler != "grid" else min(params.trials, _grid_size(params))
    threads = max(1, (os.cpu_count() or 1) // params.parallel)  # parallel trials share the cores
    with executor(dask_address, params.parallel, train, val) as (submit, gather, (train_data, val_data)):
        while remaining:
            wave = [study.ask() for _ in range(min(params.parallel, remaining))]
            values = [{name: suggest(trial, name, space) for name, space in params.space.items()} for trial in wave]
            futures = [
                submit(score_trial, train_data, val_data, meta, trial_params(base, v, params.max_epochs), threads)
                for v in values
            ]
            for trial, trial_values, score in zip(wave, values, gather(futures)):
                study.tell(trial, score)
                if on_trial:
                    on_trial(trial.number, trial_values, score)
            remaining -= len(wave)
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
    import mlflow

    from tasks.contracts.processed import load_split, read_meta
    from tasks.core.tracking import mlflow_run
    from tasks.ml.checks import check_fit_params

    meta = read_meta()
    check_fit_params(params.train, "train", meta.task)
    train, val = load_split("train"), load_split("val")
    dask_address = configured_dask_address()
    with mlflow_run(
        params.mlflow,
        "search",
        {"sampler": params.search.sampler, "task": meta.task, "executor": dask_address or "processes"},
    ) as parent:

        def log_trial(number: int, values: dict, score: float) -> None:
            client = mlflow.MlflowClient()
            child = client.create_run(
                parent.info.experiment_id,
                run_name=f"trial-{number}",
                tags={"mlflow.parentRunId": parent.info.run_id, "stage": "search"},
            )
            for key, value in values.items():
                client.log_param(child.info.run_id, key, value)
            client.log_metric(child.info.run_id, "val_quality", score)
            client.set_terminated(child.info.run_id)

        study = run_search(train, val, meta, params.train, params.search, log_trial, dask_address)
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
        f"{len(rows)} {params.search.sampler} trials, {params.search.parallel} in parallel "
        f"({'on the Dask cluster at ' + dask_address if dask_address else 'local processes'}). Best validation quality "
        f"({task_of(meta.task).quality_label}) {study.best_value:.4f} with {best}, written to `{BEST_PARAMS}` for the train stage.\n\n"
        + markdown_table(sorted(rows, key=lambda r: -r["val_quality"])[:10]),
    )


if __name__ == "__main__":
    run_cli(main)
