"""MLflow set-up, done in entry points only (never at import)."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator, Optional

from tasks.core.params import MlflowParams
from tasks.core.provenance import git_commit

# The Prefect flow sets this so every stage's MLflow run can be traced to it.
PIPELINE_RUN_ENV = "DISTILLERY_PIPELINE_RUN"


def configure(cfg: MlflowParams) -> None:
    import mlflow

    mlflow.set_tracking_uri(cfg.resolved_uri())
    mlflow.set_experiment(cfg.experiment)


@contextmanager
def mlflow_run(cfg: MlflowParams, stage: str, tags: Optional[dict[str, str]] = None) -> Iterator[object]:
    import mlflow

    configure(cfg)
    base = {"stage": stage, "git_commit": git_commit(), "pipeline_run": os.environ.get(PIPELINE_RUN_ENV, "")}
    with mlflow.start_run(run_name=stage, tags={**base, **(tags or {})}) as run:
        yield run
