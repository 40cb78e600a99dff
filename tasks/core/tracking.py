"""MLflow set-up, done in entry points only (never at import)."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
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
        boto3.session.Session().client("s3", endpoint_url=endpoint,
                                       config=Config(retries={"max_attempts": 1}, connect_timeout=5)).list_buckets()
    except ClientError as err:
        code = err.response.get("Error", {}).get("Code", "")
        if code in CREDENTIAL_ERRORS:
            raise DistilleryError(
                f"the S3 artifact store at {S3_ENDPOINT_ENV}={endpoint} refused the credentials "
                f"(AWS_ACCESS_KEY_ID={key or '(unset)'}): {code}; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                "to a key it knows (`. ./.stack.env` after `make stack` sets the stack's)") from err
        raise DistilleryError(f"the S3 artifact store at {S3_ENDPOINT_ENV}={endpoint} answered {code}: {err}") from err
    except BotoCoreError as err:  # no endpoint there, or no credentials at all
        raise DistilleryError(f"the S3 artifact store at {S3_ENDPOINT_ENV}={endpoint} cannot be used "
                              f"({type(err).__name__}: {err}); start it (`make stack`) or unset {S3_ENDPOINT_ENV}") from err


SQLITE = "sqlite:///"


def sqlite_path(uri: str) -> Optional[Path]:
    """The database file of a `sqlite:///` tracking URI (relative to the working
    directory unless absolute); None for any other URI."""
    return Path(uri[len(SQLITE):]) if uri.startswith(SQLITE) else None


def check_server(uri: str) -> None:
    """The MLflow tracking server, when the URI names one, and its S3 artifact
    store; file and database URIs pass."""
    if uri.startswith(("http://", "https://")):
        check_answers("MLflow tracking server", "MLFLOW_TRACKING_URI", uri, f"{uri.rstrip('/')}/health",
                      "start it (`make stack` starts the project's), or unset MLFLOW_TRACKING_URI to track in mlflow.db")
        check_artifact_store()


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
