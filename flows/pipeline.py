"""The training pipeline as a Prefect flow that drives dvc.yaml.

The stages, their order and their skip decisions all come from DVC: the flow
asks `dvc status` whether a stage is stale and runs it with `dvc repro
--single-item`, so it shares one cache and one dvc.lock with a plain
`dvc repro`. Adding a stage to dvc.yaml puts it here. No ML logic lives here.

Task runner: in-process by default. `--dask-address` (or DISTILLERY_DASK_ADDRESS)
runs the stage tasks on that Dask cluster through prefect-dask's
DaskTaskRunner, and the search stage sends its trials to the same cluster.
Stages still run one at a time, each after the one before: they share one
dvc.lock and one repo lock, and two `dvc repro` at once would fight over them
(dvc#755). The parallel work is inside a stage (the trials), so DVC records
one result per stage and its skip decisions stay exact.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Iterator

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from prefect.settings import PREFECT_API_URL

from flows.common import check_prefect_server, is_stale, release_dead_locks, stage_order, without_git_hints
from flows.report import INDEX, console_summary, write_report
from flows.warm import warm_interpreter
from tasks.core import paths
from tasks.core.errors import EXIT_EXPECTED_FAILURE, DistilleryError, run_cli
from tasks.core.params import MlflowParams, load_params
from tasks.core.report import markdown_table
from tasks.core.tracking import PARENT_RUN_ENV, PIPELINE_RUN_ENV, check_server, parent_run, resolved_at

PYTHON_ENV = "DISTILLERY_PYTHON"  # read by bin/python, the interpreter of dvc.yaml's commands

SUMMARIES = Path("reports/summaries")
OUTPUT_TAIL_LINES = 40


class StageFailed(DistilleryError):
    """A stage exited non-zero. `transient` is False for the project's expected
    failures (exit 2: bad params, bad data, a failed gate): retrying won't help."""

    def __init__(self, stage: str, exit_code: int | None, output: str):
        self.stage, self.exit_code, self.output = stage, exit_code, output
        self.transient = exit_code != EXIT_EXPECTED_FAILURE
        super().__init__(f"stage '{stage}' failed (exit {exit_code}):\n{output}")

    def __reduce__(self):  # it crosses processes on a Dask cluster
        return StageFailed, (self.stage, self.exit_code, self.output)


NANNY_HASH_SEED = "6640"  # what distributed.nanny sets when the worker's environment has none


def _stage_env(
    dask_address: str | None, parent: str | None = None, warm: dict[str, str] | None = None
) -> dict[str, str]:
    from tasks.core.cluster import DASK_ENV

    env = {**os.environ, **(warm or {})}  # warm: bin/python hands the stage to the warm interpreter
    if parent:
        env[PARENT_RUN_ENV] = parent
    if dask_address:  # set here: on a Dask worker, the flow's environment is not this process's
        env[DASK_ENV] = dask_address
        # A nanny fixes the worker's hash seed for dask's own hashing (dask/distributed#8400). A stage is
        # a program of its own, seeded at random as under `make run` (its results cannot depend on it),
        # and so it can run in the warm interpreter, whose seed is its own.
        if env.get("PYTHONHASHSEED") == NANNY_HASH_SEED:
            del env["PYTHONHASHSEED"]
    # dvc.yaml's `bin/python` runs the stages with this interpreter: the one running the flow.
    env[PYTHON_ENV] = sys.executable
    env[PIPELINE_RUN_ENV] = str(flow_run.get_id() or "")
    return env


def log_run_report(root: Path, cfg: MlflowParams, run_id: str, results: list[dict]) -> None:
    """The pipeline's MLflow run holds what the flow saw: each stage's seconds
    (0 when skipped), the run report and the model card."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=resolved_at(cfg.resolved_uri(), root))
    for r in results:
        client.log_metric(run_id, f"seconds.{r['stage']}", r["seconds"] if r["ran"] else 0.0)
    client.set_tag(run_id, "stages_ran", ",".join(r["stage"] for r in results if r["ran"]) or "none")
    for path in (root / INDEX, root / paths.MODEL_CARD):
        if path.exists():
            client.log_artifact(run_id, str(path))


def check_params(root: Path) -> None:
    """Every section of params.yaml, the training options included, before the
    first stage: a bad key stops the run at once (exit 2), naming it."""
    from tasks.ml.checks import check_training_params

    params = load_params(root / paths.PARAMS)
    check_training_params(params, params.task.type, str(root / paths.PARAMS))
    data_path = root / params.data.path
    if not data_path.exists():  # a DVC dep of ingest: DVC would fail on it with exit 255, retried as transient
        raise DistilleryError(
            f"{root / paths.PARAMS}: 'data.path' is {params.data.path!r}, but {data_path} does not exist; point it "
            f"at your data (a folder of .npy files for quickdraw, a file for csv/parquet; data/raw for the bundled sources)"
        )


GIT_HINT = (
    "dvc.lock records this run: `git add dvc.lock && git commit` keeps it as a version "
    "(and `dvc push` sends its data to a remote, if you set one up)"
)


def _retry_if_transient(task, task_run, state) -> bool:  # noqa: ANN001 - Prefect's hook signature
    try:
        state.result()
    except StageFailed as err:
        return err.transient
    except Exception:
        return True
    return False


@contextlib.contextmanager
def _dask_worker_freed() -> Iterator[str]:
    """Where the stage runs. On a Dask worker, the task leaves the worker's
    thread pool while it waits on its `dvc repro` process, so the trials the
    stage sends to the same cluster can use that thread."""
    try:
        from distributed import get_worker, rejoin, secede

        worker = get_worker()
    except (ImportError, ValueError):  # not on a Dask worker
        yield "the flow's process"
        return
    secede()
    try:
        yield f"Dask worker {worker.name}"
    finally:
        rejoin()


@task(retries=2, retry_delay_seconds=3, retry_condition_fn=_retry_if_transient, task_run_name="{stage}")
def run_dvc_stage(
    stage: str,
    root: Path,
    dask_address: str | None = None,
    parent: str | None = None,
    warm: dict[str, str] | None = None,
) -> dict:
    """Run one stage through DVC unless it is up to date; publish its summary.
    `parent`: the pipeline's MLflow run, which the stage's run nests under;
    `warm`: the settings that name a warm interpreter (flows/warm.py) for the stage."""
    with _dask_worker_freed() as where:
        return _run_dvc_stage(stage, root, where, dask_address, parent, warm)


def _run_dvc_stage(
    stage: str, root: Path, where: str, dask_address: str | None, parent: str | None, warm: dict[str, str] | None
) -> dict:
    logger = get_run_logger()
    started = time.perf_counter()
    if not is_stale(root, stage):
        logger.info("%s: up to date, skipped", stage)
        ran = False
    else:
        logger.info("%s: running on %s", stage, where)
        tail: deque[str] = deque(maxlen=OUTPUT_TAIL_LINES)
        process = subprocess.Popen(
            [sys.executable, "-m", "dvc", "repro", "--single-item", stage],
            cwd=root,
            env=_stage_env(dask_address, parent, warm),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert process.stdout is not None
        for line in without_git_hints(process.stdout):
            sys.stdout.write(line)
            tail.append(line.rstrip())
        if process.wait() != 0:
            output = "\n".join(tail)
            code = re.search(r"exited with (-?\d+)", output)
            raise StageFailed(stage, int(code.group(1)) if code else process.returncode, output)
        ran = True
    seconds = time.perf_counter() - started
    summary_file = root / SUMMARIES / f"{stage}.md"
    summary = summary_file.read_text() if summary_file.exists() else "_(no summary written)_"
    status = f"ran in {seconds:.1f} s" if ran else "**skipped**: up to date (`dvc status` clean)"
    create_markdown_artifact(
        key=f"stage-{stage}", markdown=f"## {stage}: {status}\n\n{summary}", description=f"{stage} stage summary"
    )
    return {"stage": stage, "ran": ran, "seconds": round(seconds, 2), "where": where}


@flow(name="distillery-pipeline", log_prints=True)
def pipeline(root: str = ".", dask_address: str | None = None) -> list[dict]:
    """Run every stage of dvc.yaml in order; stale ones run, fresh ones skip.
    `dask_address`: the search stage sends its trials to that Dask cluster."""
    root_path = Path(root).resolve()
    check_params(root_path)
    if dead := release_dead_locks(root_path):
        get_run_logger().warning("released DVC locks held by killed processes %s", dead)
    from tasks.core.provenance import git_commit

    mlflow_cfg = load_params(root_path / paths.PARAMS).mlflow
    with (
        warm_interpreter() as warm,
        parent_run(
            mlflow_cfg,
            root_path,
            f"pipeline {flow_run.get_name() or ''}".strip(),
            {"pipeline_run": str(flow_run.get_id() or ""), "git_commit": git_commit(root_path)},
        ) as parent,
    ):
        futures: list = []
        for stage in stage_order(root_path):  # one at a time, in order: they share dvc.lock (see above)
            futures.append(run_dvc_stage.submit(stage, root_path, dask_address, parent, warm, wait_for=futures[-1:]))
        results = [future.result() for future in futures]
        write_report(root_path, results)
        log_run_report(root_path, mlflow_cfg, parent, results)
    create_markdown_artifact(
        key="pipeline-summary",
        markdown="## Pipeline\n\n" + markdown_table(results),
        description="stages run or skipped",
    )
    return results


def main() -> None:
    import argparse

    from tasks.core.cluster import DASK_ENV, dask_address

    parser = argparse.ArgumentParser(description="Run every stale stage of dvc.yaml, in order.")
    parser.add_argument(
        "--dask-address",
        default=dask_address(),
        help=f"run the stages and the search's trials on this Dask scheduler, e.g. tcp://host:8786 "
        f"(default: ${DASK_ENV}; unset: in this process). The workers must see this folder at "
        "the same path: one machine, or a shared filesystem",
    )
    args = parser.parse_args()
    flow_to_run = pipeline
    if args.dask_address:
        from prefect_dask import DaskTaskRunner

        from tasks.core.cluster import check_scheduler  # named before any stage, not by a stage

        check_scheduler(args.dask_address)
        flow_to_run = pipeline.with_options(task_runner=DaskTaskRunner(address=args.dask_address))
    # A shared server that is down fails here, naming it, before any stage runs.
    if PREFECT_API_URL.value():
        check_prefect_server(PREFECT_API_URL.value())
    check_server(load_params().mlflow.resolved_uri())
    results = flow_to_run(dask_address=args.dask_address)  # the search's trials go to the same cluster
    ran = [r["stage"] for r in results if r["ran"]]
    print()
    if ran:
        print(GIT_HINT)
    print(f"pipeline done: ran {ran or 'nothing'}; skipped {len(results) - len(ran)} up-to-date stage(s)")
    if args.dask_address:
        print(f"stages ran on {', '.join(sorted({r['where'] for r in results}))} of {args.dask_address}")
    print("\n".join(console_summary(Path(".").resolve())))


if __name__ == "__main__":
    run_cli(main)
