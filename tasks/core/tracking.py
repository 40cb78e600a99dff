"""MLflow set-up, done in entry points only (never at import)."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

from tasks.core.errors import DistilleryError
from tasks.core.params import MlflowParams
from tasks.core.provenance import git_commit

# The Prefect flow sets these so every stage's MLflow run can be traced to it:
# the flow run's id, and the MLflow run the stages' runs nest under.
PIPELINE_RUN_ENV = "DISTILLERY_PIPELINE_RUN"
PARENT_RUN_ENV = "DISTILLERY_MLFLOW_PARENT_RUN"


def check_answers(service: str, variable: str, url: str, health: str, hint: str, timeout: float = 10) -> None:
    """One clear error naming a server that does not answer its health
    endpoint, instead of a client's minutes of retries."""
    import httpx

    try:
        httpx.get(health, timeout=timeout).raise_for_status()
    except httpx.HTTPError as err:
        raise DistilleryError(
            f"no {service} answers at {variable}={url} ({type(err).__name__}: {err}); {hint}"
        ) from err


S3_ENDPOINT_ENV = "MLFLOW_S3_ENDPOINT_URL"
# What S3 answers for a key it does not know, a wrong secret, or a key without the right.
CREDENTIAL_ERRORS = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidClientTokenId")


def check_artifact_store() -> None:
    """The S3 artifact store named by MLFLOW_S3_ENDPOINT_URL, when set: it must
    answer and accept the credentials, or one error says which. Without this a
    wrong key surfaces only when the first artifact is uploaded, after a stage
    has trained, as a boto traceback."""
    endpoint = os.environ.get(S3_ENDPOINT_ENV)
    if not endpoint:
        return
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    key = os.environ.get("AWS_ACCESS_KEY_ID", "")
    try:
        # A fresh session: boto3's default one keeps the credentials it first read.
        boto3.session.Session().client(
            "s3", endpoint_url=endpoint, config=Config(retries={"max_attempts": 1}, connect_timeout=5)
        ).list_buckets()
    except ClientError as err:
        code = err.response.get("Error", {}).get("Code", "")
        if code in CREDENTIAL_ERRORS:
            raise DistilleryError(
                f"the S3 artifact store at {S3_ENDPOINT_ENV}={endpoint} refused the credentials "
                f"(AWS_ACCESS_KEY_ID={key or '(unset)'}): {code}; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                "to a key it knows (`. ./.stack.env` after `make stack` sets the stack's)"
            ) from err
        raise DistilleryError(f"the S3 artifact store at {S3_ENDPOINT_ENV}={endpoint} answered {code}: {err}") from err
    except BotoCoreError as err:  # no endpoint there, or no credentials at all
        raise DistilleryError(
            f"the S3 artifact store at {S3_ENDPOINT_ENV}={endpoint} cannot be used "
            f"({type(err).__name__}: {err}); start it (`make stack`) or unset {S3_ENDPOINT_ENV}"
        ) from err


SQLITE = "sqlite:///"


def sqlite_path(uri: str) -> Optional[Path]:
    """The database file of a `sqlite:///` tracking URI (relative to the working
    directory unless absolute); None for any other URI."""
    return Path(uri[len(SQLITE) :]) if uri.startswith(SQLITE) else None


def check_server(uri: str) -> None:
    """The MLflow tracking server, when the URI names one, and its S3 artifact
    store; file and database URIs pass."""
    if uri.startswith(("http://", "https://")):
        check_answers(
            "MLflow tracking server",
            "MLFLOW_TRACKING_URI",
            uri,
            f"{uri.rstrip('/')}/health",
            "start it (`make stack` starts the project's), or unset MLFLOW_TRACKING_URI to track in mlflow.db",
        )
        check_artifact_store()


def configure(cfg: MlflowParams) -> None:
    import mlflow

    # A stage's console says what the stage does: no progress bar per artifact downloaded or uploaded.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    check_server(cfg.resolved_uri())
    mlflow.set_tracking_uri(cfg.resolved_uri())
    mlflow.set_experiment(cfg.experiment)


@contextmanager
def mlflow_run(cfg: MlflowParams, stage: str, tags: Optional[dict[str, str]] = None) -> Iterator[object]:
    import mlflow

    configure(cfg)
    base = {"stage": stage, "git_commit": git_commit(), "pipeline_run": os.environ.get(PIPELINE_RUN_ENV, "")}
    if os.environ.get(PARENT_RUN_ENV):  # nested under the pipeline's run in MLflow's UI
        base["mlflow.parentRunId"] = os.environ[PARENT_RUN_ENV]
    with mlflow.start_run(run_name=stage, tags={**base, **(tags or {})}) as run:
        yield run


def numbers(values: dict[str, Any]) -> dict[str, float]:
    """The entries MLflow can log as metrics: ints and floats, not booleans."""
    return {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def log_stage(
    cfg: MlflowParams,
    stage: str,
    metrics: dict[str, Any],
    tags: Optional[dict[str, str]] = None,
    artifacts: tuple[Path, ...] = (),
) -> None:
    """A stage's run with its numbers, for the stages that train nothing: every
    stage is a run under the pipeline's, so MLflow shows the whole run."""
    import mlflow

    with mlflow_run(cfg, stage, tags):
        mlflow.log_metrics(numbers(metrics))
        for path in artifacts:
            if Path(path).exists():
                mlflow.log_artifact(str(path))


def resolved_at(uri: str, root: Path) -> str:
    """The tracking URI as the stages see it from `root`: a relative sqlite
    path is relative to the project, not to whoever calls."""
    path = sqlite_path(uri)
    return f"{SQLITE}{(root / path).resolve()}" if path is not None and not path.is_absolute() else uri


@contextmanager
def parent_run(cfg: MlflowParams, root: Path, name: str, tags: dict[str, str]) -> Iterator[Optional[str]]:
    """One MLflow run for one pipeline run, its id for the stages to nest under
    (PARENT_RUN_ENV); ended FINISHED, or FAILED when the body raises. Made with
    a client, not mlflow.start_run: the flow's process keeps no active run."""
    from mlflow import MlflowClient

    uri = resolved_at(cfg.resolved_uri(), root)
    check_server(uri)
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(cfg.experiment)
    # Created where a stage (cwd = root) would create it, artifacts in the project's mlruns/.
    experiment_id = (
        experiment.experiment_id
        if experiment
        else client.create_experiment(
            cfg.experiment,
            artifact_location=None if not uri.startswith(SQLITE) else (root / "mlruns").resolve().as_uri(),
        )
    )
    run = client.create_run(experiment_id, run_name=name, tags={"stage": "pipeline", **tags})
    try:
        yield run.info.run_id
    except BaseException:
        client.set_terminated(run.info.run_id, "FAILED")
        raise
    client.set_terminated(run.info.run_id, "FINISHED")
