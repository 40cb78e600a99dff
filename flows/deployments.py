"""The scheduled deployments, defined in code and served from one process:

- `distillery-pipeline/<name>` (the name from `monitor.retrain_deployment`,
  `retrain` by default): the training pipeline on `monitor.retrain_cron`
  (weekly), and whenever the monitor finds drift;
- `distillery-monitor/monitor`: the monitoring flow on `monitor.monitor_cron`
  (hourly).

Cron expressions are read in UTC. Both deployments take one run at a time
(two pipelines on one repo would fight over dvc.lock). Run it against a
Prefect server, which keeps the schedules, runs and artifacts:

    .venv/bin/prefect server start      # terminal 1, UI on http://127.0.0.1:4200
    make deploy                         # terminal 2: registers both and runs them when due

Stopping this process (Ctrl-C) pauses both schedules; starting it again
resumes them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tasks.core.params import load_params
from tasks.core.errors import DistilleryError, run_cli
from tasks.core.tracking import check_answers

MONITOR_DEPLOYMENT = "monitor"
LOCAL_API = "http://127.0.0.1:4200/api"


def _schedule(cron: str, key: str, params_file: Path):
    from prefect.schedules import Cron

    try:
        return Cron(cron, timezone="UTC")
    except ValueError as err:
        raise DistilleryError(f"{params_file}: 'monitor.{key}': {cron!r} is not a cron expression ({err})") from err


def build_deployments(root: str | Path = ".", params: str = "params.yaml") -> list:
    """The two RunnerDeployments, their schedules and parameters from `root`/`params`."""
    from prefect.deployments.runner import EntrypointType

    from flows.monitor import monitor
    from flows.pipeline import pipeline

    root = Path(root).resolve()
    params_file = root / params
    cfg = load_params(params_file).monitor
    flow_name, name = cfg.retrain_deployment.split("/", 1)
    if flow_name != pipeline.name or not name:
        raise DistilleryError(f"{params_file}: 'monitor.retrain_deployment' is {cfg.retrain_deployment!r}, but the "
                              f"retraining flow is '{pipeline.name}': use '{pipeline.name}/<deployment name>'")
    common = {"concurrency_limit": 1, "entrypoint_type": EntrypointType.MODULE_PATH}
    return [
        pipeline.to_deployment(
            name=name,
            schedules=[_schedule(cfg.retrain_cron, "retrain_cron", params_file)],
            parameters={"root": str(root)},
            description="Retraining: every stage of dvc.yaml that is stale; select's gates decide whether "
                        "the champion alias moves. Scheduled, and triggered by the monitor on drift.",
            tags=["distillery", "retrain"],
            **common,
        ),
        monitor.to_deployment(
            name=MONITOR_DEPLOYMENT,
            schedules=[_schedule(cfg.monitor_cron, "monitor_cron", params_file)],
            parameters={"root": str(root), "params": params},
            description="Production monitoring: drift, operations and live quality of the prediction log, to "
                        "MLflow; triggers retraining on drift.",
            tags=["distillery", "monitor"],
            **common,
        ),
    ]


def check_api() -> str:
    """The Prefect server to register with; a clear error if there is none."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise DistilleryError(
            "PREFECT_API_URL is not set: schedules need a Prefect server that outlives this process. Start one "
            f"with `.venv/bin/prefect server start`, then `make deploy` (it uses PREFECT_API_URL={LOCAL_API})"
        )
    check_prefect_server(url)
    return url


def check_prefect_server(url: str) -> None:
    check_answers("Prefect server", "PREFECT_API_URL", url, f"{url.rstrip('/')}/health",
                  "start one (`make stack` starts the project's, `.venv/bin/prefect server start` a bare one), "
                  "or point PREFECT_API_URL at yours, or unset it to run on a temporary local server")


def main() -> None:
    from prefect import serve

    parser = argparse.ArgumentParser(description="Register and serve the retraining and monitoring deployments.")
    parser.add_argument("--root", default=".", help="the project folder the flows run in (default: here)")
    parser.add_argument("--params", default="params.yaml", help="params file, relative to --root")
    args = parser.parse_args()
    deployments = build_deployments(args.root, args.params)
    url = check_api()
    print(f"serving {', '.join(f'{d.flow_name}/{d.name}' for d in deployments)} against {url}")
    serve(*deployments)


if __name__ == "__main__":
    run_cli(main)
