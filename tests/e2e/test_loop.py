"""The closed loop, whole, on loopback with the real parts: a Prefect server, a
process work pool and its worker (`make deploy` / `make worker`), the model
server following `models:/distillery-penguins@champion`, and the monitor.

Shifted traffic and late labels for it go in; the monitor logs the drift to
MLflow, turns the labels into the production snapshot and triggers the retrain
on the worker; the retrain learns from the snapshot and passes the gate; the
alias moves; the server hot-reloads under load with no failed request. Then a
retrain whose candidate fails the gate leaves the alias and the served version
alone."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest
import yaml
from e2e_helpers import PREFECT, copy_project
from e2e_helpers import free_port as _free_port
from e2e_helpers import stop as _stop
from e2e_helpers import wait_for as _wait
from serve.serve_helpers import Load, Server

pytestmark = pytest.mark.e2e

WINDOW_S = 15.0  # monitor.window_minutes 0.25: the test waits for one window to close, not an hour
FEATURES = [
    "Island",
    "Clutch Completion",
    "Culmen Length (mm)",
    "Culmen Depth (mm)",
    "Flipper Length (mm)",
    "Body Mass (g)",
    "Sex",
    "Delta 15 N (o/oo)",
    "Delta 13 C (o/oo)",
]


def penguin_rows(species: str) -> list[dict]:
    """The bundled penguins of one species, as a client sends them (NaN as null)."""
    from importlib.resources import files

    raw = pd.read_csv(Path(str(files("palmerpenguins") / "data" / "penguins-raw.csv")))
    rows = raw[raw["Species"].str.startswith(species)][FEATURES]
    return [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
        for row in rows.to_dict("records")
    ]


def _set_params(project: Path, section: str, **values: object) -> None:
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params[section].update(values)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def test_drift_and_late_labels_retrain_on_a_worker_and_the_server_swaps_with_no_failed_request(
    tmp_path: Path, warm_penguins: Path
) -> None:
    from mlflow import MlflowClient
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.states import Pending, Running

    from flows.monitor import trigger_retrain
    from tasks.contracts import production as snap

    # A project that has trained (its outputs in DVC's cache), but with an empty registry: the first
    # retrain on the worker registers version 1.
    project = copy_project(warm_penguins, tmp_path / "project", registry=False)
    _set_params(project, "monitor", window_minutes=WINDOW_S / 60, min_rows=30)
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect_home"),
        PREFECT_API_URL=url,
        PREFECT_UI_ENABLED="false",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_WORKER_QUERY_SECONDS="1",
        PATH=f"{Path(sys.executable).parent}:/usr/bin:/bin",
    )
    tracking = f"sqlite:///{project}/mlflow.db"
    registry = MlflowClient(tracking_uri=tracking, registry_uri=tracking)
    procs: dict[str, tuple[subprocess.Popen, Path]] = {}
    server = None
    try:
        # 1. A Prefect server, the deployments on a process pool, a worker; the model server.
        log = tmp_path / "prefect-server.log"
        procs["prefect server"] = (
            subprocess.Popen(
                [str(PREFECT), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                env=env,
                stdout=open(log, "w"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            ),
            log,
        )
        _wait("the Prefect server", lambda: httpx.get(f"{url}/health", timeout=2).status_code == 200, 120, procs)
        done = subprocess.run(
            [sys.executable, "-m", "flows.deployments", "--root", str(project), "--pool", "team"],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "on work pool 'team'" in done.stdout
        log = tmp_path / "worker.log"
        procs["prefect worker"] = (
            subprocess.Popen(
                [str(PREFECT), "worker", "start", "--pool", "team", "--type", "process"],
                cwd=tmp_path,
                env=env,
                stdout=open(log, "w"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            ),
            log,
        )

        with temporary_settings({PREFECT_API_URL: url}), get_client(sync_client=True) as client:
            retrain = client.read_deployment_by_name("distillery-pipeline/retrain")
            assert retrain.work_pool_name == "team"
            assert retrain.pull_steps == [
                {"prefect.deployments.steps.set_working_directory": {"directory": str(project.resolve())}}
            ]

            def finished(run_id):
                state = client.read_flow_run(run_id).state
                return state if state is not None and state.is_final() else None

            # A zombie (a run whose process died, holding the concurrency slot) blocks while
            # fresh; once stale it is marked crashed and the first training goes ahead on the worker.
            zombie = client.create_flow_run_from_deployment(retrain.id, state=Pending())
            client.set_flow_run_state(zombie.id, Running())
            blocked = trigger_retrain("distillery-pipeline/retrain", "first model", stale_after_s=3600)
            assert not blocked["triggered"] and "already running" in blocked["note"]
            time.sleep(2)
            first = trigger_retrain("distillery-pipeline/retrain", "first model", stale_after_s=1)
            assert first["triggered"] and "marking 1 stale run(s) crashed" in first["note"]
            assert client.read_flow_run(zombie.id).state.is_crashed()
            state = _wait("the first training on the worker", lambda: finished(first["flow_run"]), 600, procs)
            assert state.is_completed(), f"{state}\n{log.read_text()[-3000:]}"
            assert str(registry.get_model_version_by_alias("distillery-penguins", "champion").version) == "1"

            server = Server(
                tmp_path,
                "models:/distillery-penguins@champion",
                tracking_uri=tracking,
                log_dir=project / "logs/predictions",
                poll_interval_s=1,
            ).wait_ready(120)

            # 2. Shifted traffic (only Gentoo, heavier and longer-winged than any seen), and late labels for it.
            shifted = penguin_rows("Gentoo")
            for row in shifted:
                row["Body Mass (g)"] = row["Body Mass (g)"] and row["Body Mass (g)"] + 400
                row["Flipper Length (mm)"] = row["Flipper Length (mm)"] and row["Flipper Length (mm)"] + 5
            for i, row in enumerate(shifted):
                r = server.client.post("/predict", json={"rows": [row]}, headers={"X-Request-ID": f"shift-{i}"})
                assert r.status_code == 200 and r.json()["model_version"] == "1", r.text
            sent = time.time()
            feedback = project / "logs/feedback"
            feedback.mkdir(parents=True)
            pd.DataFrame(
                {"request_id": [f"shift-{i}" for i in range(len(shifted))], "row": 0, "label": "Gentoo"}
            ).to_csv(feedback / "labels.csv", index=False)

            # 3. Once the window is complete, the monitor judges it, builds the snapshot, triggers the retrain.
            time.sleep(max(0.0, (sent // WINDOW_S + 1) * WINDOW_S - time.time()) + 0.5)
            done = subprocess.run(
                [sys.executable, "-m", "flows.monitor", "--root", str(project)],
                cwd=project,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
            assert re.search(r"; [12] drifted; retraining: started distillery-pipeline/retrain", done.stdout), (
                done.stdout
            )
            built = snap.read_snapshot(project / "data/production")
            assert len(built.rows) == len(shifted) and built.quarantine.empty
            (drift_run,) = registry.search_runs(
                [registry.get_experiment_by_name("distillery-production").experiment_id]
            )
            assert drift_run.info.status == "FINISHED"
            # The shifted rows can straddle a window boundary: the window holding most of them signals.
            signals = [m.value for m in registry.get_metric_history(drift_run.info.run_id, "drift/retrain_signal")]
            assert 1.0 in signals, signals

            runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[retrain.id])))
            (triggered,) = [
                r for r in runs if "drift" in r.tags and r.id != zombie.id and str(r.id) != first["flow_run"]
            ]

            # 4. The retrain runs on the worker while clients keep asking; the alias moves; the server swaps.
            calm = [penguin_rows("Adelie")[0]]
            with Load(server, threads=2, pause_s=0.01, rows=calm) as load:
                state = _wait("the retrain on the worker", lambda: finished(triggered.id), 600, procs)
                assert state.is_completed(), f"{state}\n{log.read_text()[-3000:]}"
                champion = registry.get_model_version_by_alias("distillery-penguins", "champion")
                assert str(champion.version) == "2"
                load.wait_for_version("2")
                time.sleep(1)
            assert not load.failures(), load.failures()[:5]
            assert load.versions() == {"1", "2"}, load.versions()
            for thread in (0, 1):  # each client saw version 1, then only version 2: one swap, for good
                seen = [v for i, _, v in load.results if i == thread]
                assert seen[0] == "1" and seen[-1] == "2" and "1" not in seen[seen.index("2") :], seen

            # The new version learnt from the production rows, and says which snapshot.
            assert champion.tags["production_snapshot"] == built.sha256
            kept = int(champion.tags["production_rows"])
            assert 0 < kept <= len(shifted)
            assert (
                f"**{len(shifted)}** are labelled production rows"
                in (project / "reports/summaries/ingest.md").read_text()
            )

            # 5. The negative: a candidate that fails the gate is registered, but nothing moves.
            _set_params(project, "select", min_macro_f1=1.5)
            failing = trigger_retrain("distillery-pipeline/retrain", "a gate that cannot pass")
            assert failing["triggered"]
            with Load(server, threads=2, pause_s=0.01, rows=calm) as load:
                state = _wait("the failing retrain", lambda: finished(failing["flow_run"]), 600, procs)
                time.sleep(3)  # three of the server's alias polls
            assert state.is_failed() and "gate" in (state.message or "") + log.read_text()[-5000:]
            assert str(registry.get_model_version_by_alias("distillery-penguins", "champion").version) == "2"
            (rejected,) = registry.search_model_versions("name='distillery-penguins' and tag.gate='failed'")
            assert str(rejected.version) == "3"
            assert not load.failures(), load.failures()[:5]
            assert load.versions() == {"2"}
    finally:
        if server is not None:
            server.stop()
        for proc, _log in reversed(list(procs.values())):
            _stop(proc)
