"""flows/deployments.py against a real Prefect server on loopback: both
deployments registered with their cron schedules, and a monitor run triggered
through the API and executed by the serving process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
import yaml
from e2e_helpers import PREFECT, REPO
from e2e_helpers import free_port as _free_port
from e2e_helpers import stop as _stop
from e2e_helpers import wait_for as _wait

pytestmark = pytest.mark.e2e


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project whose monitor reads an empty log: the run has nothing to judge, so it is fast."""
    root = tmp_path / "project"
    root.mkdir()
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["mlflow"]["tracking_uri"] = "sqlite:///mlflow.db"
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


@pytest.fixture
def prefect_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k != "MLFLOW_TRACKING_URI"}
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect_home"),
        PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="false",
        PREFECT_RUNNER_POLL_FREQUENCY="1",  # the serving process looks for due runs every second, not 10
        PREFECT_LOGGING_LEVEL="INFO",
    )
    yield env


def test_deployments_are_served_and_the_monitor_runs_through_the_api(
    tmp_path: Path, project: Path, prefect_env
) -> None:
    import httpx
    from prefect import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url = prefect_env["PREFECT_API_URL"]
    port = url.split(":")[2].split("/")[0]
    procs: dict[str, tuple[subprocess.Popen, Path]] = {}
    try:
        server_log = tmp_path / "server.log"
        server = subprocess.Popen(
            [str(PREFECT), "server", "start", "--host", "127.0.0.1", "--port", port],
            env=prefect_env,
            stdout=open(server_log, "w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        procs["prefect server"] = (server, server_log)
        _wait(
            "the Prefect server's /api/health",
            lambda: httpx.get(f"{url}/health", timeout=2).status_code == 200,
            120,
            procs,
        )

        serve_log = tmp_path / "serve.log"
        serve = subprocess.Popen(
            [sys.executable, "-m", "flows.deployments", "--root", str(project)],
            cwd=REPO,
            env=prefect_env,
            stdout=open(serve_log, "w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        procs["flows.deployments"] = (serve, serve_log)

        with temporary_settings({PREFECT_API_URL: url}), get_client(sync_client=True) as client:
            monitor = _wait(
                "the monitor deployment",
                lambda: client.read_deployment_by_name("distillery-monitor/monitor"),
                60,
                procs,
            )
            retrain = client.read_deployment_by_name(
                "distillery-pipeline/retrain"
            )  # monitor.retrain_deployment resolves

            params = yaml.safe_load((project / "params.yaml").read_text())["monitor"]
            for deployment, cron in ((retrain, params["retrain_cron"]), (monitor, params["monitor_cron"])):
                (schedule,) = deployment.schedules
                assert schedule.schedule.cron == cron and schedule.schedule.timezone == "UTC"
                assert schedule.active and not deployment.paused
                assert deployment.parameters["root"] == str(project)
                assert deployment.global_concurrency_limit.limit == 1
            assert retrain.entrypoint == "flows.pipeline.pipeline"

            run = run_deployment("distillery-monitor/monitor", timeout=0, client=client)

            def finished():
                state = client.read_flow_run(run.id).state
                return state if state is not None and state.is_final() else None

            state = _wait("the monitor run to finish", finished, 120, procs)
            assert state.is_completed(), f"{state}\n{serve_log.read_text()[-3000:]}"

            # What the monitor does on drift: start the retrain deployment, once.
            from flows.monitor import trigger_retrain

            first = trigger_retrain("distillery-pipeline/retrain", "a test")
            again = trigger_retrain("distillery-pipeline/retrain", "a test")
            assert first["triggered"] and not again["triggered"] and again["flow_run"] == first["flow_run"]
            assert "already" in again["note"]
            triggered = client.read_flow_run(first["flow_run"])
            assert triggered.deployment_id == retrain.id and "drift" in triggered.tags
        # It ran in the project: its state file is there, with the watermark set.
        assert yaml.safe_load((project / "logs/monitor_state.json").read_text())["watermark"] is not None
    finally:
        for proc, _log in reversed(list(procs.values())):
            _stop(proc)
    assert all(proc.poll() is not None for proc, _ in procs.values())


def test_deploy_without_a_server_says_how_to_start_one(project: Path, prefect_env) -> None:
    env = {**prefect_env, "PREFECT_API_URL": f"http://127.0.0.1:{_free_port()}/api"}
    done = subprocess.run(
        [sys.executable, "-m", "flows.deployments", "--root", str(project)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "no Prefect server answers at PREFECT_API_URL" in done.stderr and "prefect server start" in done.stderr
    assert "Traceback" not in done.stderr
    env.pop("PREFECT_API_URL")
    done = subprocess.run(
        [sys.executable, "-m", "flows.deployments", "--root", str(project)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "PREFECT_API_URL is not set" in done.stderr


def test_a_retrain_deployment_of_another_flow_is_refused(project: Path) -> None:
    from flows.deployments import build_deployments
    from tasks.core.errors import DistilleryError

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["monitor"]["retrain_deployment"] = "some-other-flow/retrain"
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(DistilleryError, match="'monitor.retrain_deployment' is 'some-other-flow/retrain'"):
        build_deployments(project)
    params["monitor"].update(retrain_deployment="distillery-pipeline/retrain", monitor_cron="every hour")
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(DistilleryError, match="'monitor.monitor_cron': 'every hour' is not a cron expression"):
        build_deployments(project)


# The retrain on a process work pool's worker (and a zombie run that would block it)
# is tested in test_loop.py, as part of the whole loop.
