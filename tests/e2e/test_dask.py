"""The search on a Dask cluster for real: `dask scheduler` and two `dask
worker` processes on loopback; the search stage sends its trials there
(DISTILLERY_DASK_ADDRESS) and logs the same MLflow child runs and best values
as the same seeded search in local processes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from e2e_helpers import BIN, clean_env, copy_project, free_port, run

pytestmark = pytest.mark.e2e


def _run(root: Path, *argv: str, **env: str) -> subprocess.CompletedProcess:
    return run([sys.executable, *argv], root, env)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    logs = tmp_path_factory.mktemp("dask")
    procs = [
        subprocess.Popen(
            [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
            stdout=open(logs / "scheduler.log", "w"),
            stderr=subprocess.STDOUT,
            env=clean_env(),
            start_new_session=True,
        )
    ]
    for i in range(2):
        procs.append(
            subprocess.Popen(
                [
                    str(BIN / "dask"),
                    "worker",
                    address,
                    "--nthreads",
                    "1",
                    "--no-dashboard",
                    "--host",
                    "127.0.0.1",
                    "--name",
                    f"w{i}",
                ],
                stdout=open(logs / f"worker{i}.log", "w"),
                stderr=subprocess.STDOUT,
                env=clean_env(),
                start_new_session=True,
            )
        )
    from distributed import Client

    deadline = time.monotonic() + 60
    while True:
        try:
            with Client(address, timeout="5s") as client:
                if len(client.scheduler_info()["workers"]) == 2:
                    break
        except OSError:
            pass
        assert time.monotonic() < deadline, (logs / "scheduler.log").read_text()[-2000:]
        time.sleep(0.5)
    yield address
    for proc in reversed(procs):
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def _trials(root: Path, executor: str) -> dict[str, tuple[dict, float]]:
    """trial name -> (params, val_quality) of the search run logged with `executor`."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    (parent,) = client.search_runs(
        [client.get_experiment_by_name("distillery").experiment_id],
        f"tags.stage = 'search' and tags.executor = '{executor}'",
    )
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    return {c.info.run_name: (c.data.params, c.data.metrics["val_quality"]) for c in children}


def test_a_search_on_dask_matches_the_same_search_in_local_processes(tmp_path, warm_digits, cluster):
    root = copy_project(warm_digits, tmp_path / "project", registry=False)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["search"].update(enabled=True, sampler="random", trials=4, parallel=2, max_epochs=1)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(root, "-m", "dvc", "repro", "preprocess")
    _run(root, "-m", "tasks.search", DISTILLERY_DASK_ADDRESS=cluster)
    on_dask = json.loads((root / "reports/search/best_params.json").read_text())
    assert "on the Dask cluster at" in (root / "reports/summaries/search.md").read_text()
    _run(root, "-m", "tasks.search")
    on_threads = json.loads((root / "reports/search/best_params.json").read_text())
    dask_trials, thread_trials = _trials(root, cluster), _trials(root, "processes")
    assert len(dask_trials) == 4 and dask_trials == thread_trials
    assert on_dask == on_threads and set(on_dask) == {"lr", "dropout", "batch_size"}


def test_the_flow_runs_its_stages_and_trials_on_the_cluster_through_the_dask_task_runner(
    tmp_path, warm_digits, cluster
):
    root = copy_project(warm_digits, tmp_path / "project", registry=False)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["search"].update(enabled=True, sampler="random", trials=2, parallel=2, max_epochs=1)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    done = _run(root, "-m", "flows.pipeline", "--dask-address", cluster)
    assert f"Connecting to an existing Dask cluster at {cluster}" in done.stdout + done.stderr
    assert "pipeline done: ran ['search', 'train'" in done.stdout  # the search's settings changed
    # Each stage ran on a worker (two workers of one thread: the search stage frees its
    # thread while it waits, so its trials run beside it), and the trials on the cluster.
    assert "stages ran on Dask worker w" in done.stdout and f"of {cluster}" in done.stdout
    assert "on the Dask cluster at" in (root / "reports/summaries/search.md").read_text()
    assert len(_trials(root, cluster)) == 2
    # The export stage's candidates, independent of one another, ran as Dask tasks too.
    assert (
        f"exported in parallel on the Dask cluster at {cluster}" in (root / "reports/summaries/export.md").read_text()
    )
    export = json.loads((root / "reports/export.json").read_text())
    assert {"teacher", "student"} <= set(export) and all(e["int8_kernels"] for e in export.values())
    # DVC recorded every stage: nothing is stale afterwards.
    status = subprocess.run(
        [sys.executable, "-m", "dvc", "status"], cwd=root, env=clean_env(), capture_output=True, text=True, timeout=120
    )
    assert status.stdout.split() == ["register:", "always", "changed", "report:", "always", "changed"], (
        status.stdout
    )  # it asks the registry


def test_an_unreachable_scheduler_is_named(tmp_path, warm_digits):
    root = copy_project(warm_digits, tmp_path / "project", registry=False)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["search"].update(enabled=True, trials=1, max_epochs=1)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(root, "-m", "dvc", "repro", "preprocess")
    dead = f"tcp://127.0.0.1:{free_port()}"
    done = subprocess.run(
        [sys.executable, "-m", "tasks.search"],
        cwd=root,
        capture_output=True,
        text=True,
        env=clean_env(DISTILLERY_DASK_ADDRESS=dead),
        timeout=120,
    )
    assert done.returncode == 2
    assert f"DISTILLERY_DASK_ADDRESS={dead} (or --dask-address): no Dask scheduler answers there" in done.stderr
    flow = subprocess.run(
        [sys.executable, "-m", "flows.pipeline", "--dask-address", dead],
        cwd=root,
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=120,
    )
    assert flow.returncode == 2 and f"{dead} (or --dask-address): no Dask scheduler answers" in flow.stderr
    assert "Running stage" not in flow.stdout
