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

from flows.common import check_prefect_server
from tasks.core.errors import DistilleryError, run_cli
from tasks.core.params import load_params

MONITOR_DEPLOYMENT = "monitor"
LOCAL_API = "http://127.0.0.1:4200/api"


def _schedule(cron: str, key: str, params_file: Path):
    from prefect.schedules import Cron

    try:
        return Cron(cron, timezone="UTC")
    except ValueError as err:
        raise DistilleryError(f"{params_file}: 'monitor.{key}': {cron!r} is not a cron expression ({err})") from err


def build_deployments(root: str | Path = ".", params: str = "params.yaml", source: str | None = None) -> list:
    """The two RunnerDeployments, their schedules and parameters from `root`/`params`.

    `source` (work-pool mode): where a worker gets the code, a folder or a git
    URL (flow.from_source: the deployment's pull step is set_working_directory
    or git_clone), and the flows run in that folder (root "."). Without it the
    deployments are served from this process (`serve`), on `root`."""
    from prefect import Flow
    from prefect.deployments.runner import EntrypointType

    from flows.monitor import monitor
    from flows.pipeline import pipeline

    root = Path(root).resolve()
    params_file = root / params
    cfg = load_params(params_file).monitor
    flow_name, name = cfg.retrain_deployment.split("/", 1)
    if flow_name != pipeline.name or not name:
        raise DistilleryError(
            f"{params_file}: 'monitor.retrain_deployment' is {cfg.retrain_deployment!r}, but the "
            f"retraining flow is '{pipeline.name}': use '{pipeline.name}/<deployment name>'"
        )
    common: dict = {"concurrency_limit": 1}
    where = "."
    if source is None:
        common["entrypoint_type"] = EntrypointType.MODULE_PATH
        where = str(root)
    else:
        pipeline = Flow.from_source(source, "flows/pipeline.py:pipeline")
        monitor = Flow.from_source(source, "flows/monitor.py:monitor")
    return [
        pipeline.to_deployment(
            name=name,
            schedules=[_schedule(cfg.retrain_cron, "retrain_cron", params_file)],
            parameters={"root": where},
            description="Retraining: every stage of dvc.yaml that is stale; select's gates decide whether "
            "the champion alias moves. Scheduled, and triggered by the monitor on drift.",
            tags=["distillery", "retrain"],
            **common,
        ),
        monitor.to_deployment(
            name=MONITOR_DEPLOYMENT,
            schedules=[_schedule(cfg.monitor_cron, "monitor_cron", params_file)],
            parameters={"root": where, "params": params},
            description="Production monitoring: drift, operations and live quality of the prediction log, to "
            "MLflow; triggers retraining on drift.",
            tags=["distillery", "monitor"],
            **common,
        ),
    ]


def deploy_to_pool(deployments: list, pool: str) -> None:
    """Register `deployments` on the process work pool `pool` (created if
    missing); `prefect worker start --pool <pool>` then runs them."""
    from prefect import deploy, get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            found = client.read_work_pool(pool)
            if found.type != "process":
                raise DistilleryError(
                    f"work pool '{pool}' is of type '{found.type}', not 'process': choose another name with --pool"
                )
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
    deploy(*deployments, work_pool_name=pool, build=False, push=False, print_next_steps_message=False)


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


def main() -> None:
    from prefect import serve

    parser = argparse.ArgumentParser(description="Register the retraining and monitoring deployments.")
    parser.add_argument("--root", default=".", help="the project folder the flows run in (default: here)")
    parser.add_argument("--params", default="params.yaml", help="params file, relative to --root")
    parser.add_argument(
        "--pool",
        help="register on this process work pool (created if missing) and exit; "
        "`prefect worker start --pool <pool>` runs them. Default: serve from here",
    )
    parser.add_argument(
        "--source", help="with --pool: where workers get the code, a folder or a git URL (default: --root)"
    )
    args = parser.parse_args()
    if args.source and not args.pool:
        raise DistilleryError("--source needs --pool: served deployments run this process's code")
    url = check_api()
    source = (args.source or str(Path(args.root).resolve())) if args.pool else None
    deployments = build_deployments(args.root, args.params, source)
    names = ", ".join(f"{d.flow_name}/{d.name}" for d in deployments)
    if args.pool:
        deploy_to_pool(deployments, args.pool)
        print(
            f"registered {names} on work pool '{args.pool}' at {url}, code from {source}; "
            f"start a worker: prefect worker start --pool {args.pool}"
        )
        return
    print(f"serving {names} against {url}")
    serve(*deployments)


if __name__ == "__main__":
    run_cli(main)
