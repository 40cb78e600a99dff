"""MLflow set-up, done in entry points only (never at import)."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator, Optional

from tasks.core.errors import DistilleryError
from tasks.core.params import MlflowParams
from tasks.core.provenance import git_commit

# The Prefect flow sets this so every stage's MLflow run can be traced to it.
PIPELINE_RUN_ENV = "DISTILLERY_PIPELINE_RUN"


def check_answers(service: str, variable: str, url: str, health: str, hint: str, timeout: float = 10) -> None:
    """One clear error naming a server that does not answer its health
    endpoint, instead of a client's minutes of retries."""
    import httpx

    try:
        httpx.get(health, timeout=timeout).raise_for_status()
    except httpx.HTTPError as err:
        raise DistilleryError(f"no {service} answers at {variable}={url} ({type(err).__name__}: {err}); {hint}") from err


def check_server(uri: str) -> None:
    """The MLflow tracking server, when the URI names one; file and database URIs pass."""
    if uri.startswith(("http://", "https://")):
        check_answers("MLflow tracking server", "MLFLOW_TRACKING_URI", uri, f"{uri.rstrip('/')}/health",
                      "start it (`make stack` starts the project's), or unset MLFLOW_TRACKING_URI to track in mlflow.db")


def configure(cfg: MlflowParams) -> None:
    import mlflow

    check_server(cfg.resolved_uri())
    mlflow.set_tracking_uri(cfg.resolved_uri())
    mlflow.set_experiment(cfg.experiment)


@contextmanager
def mlflow_run(cfg: MlflowParams, stage: str, tags: Optional[dict[str, str]] = None) -> Iterator[object]:
    import mlflow

    configure(cfg)
    base = {"stage": stage, "git_commit": git_commit(), "pipeline_run": os.environ.get(PIPELINE_RUN_ENV, "")}
    with mlflow.start_run(run_name=stage, tags={**base, **(tags or {})}) as run:
        yield run
