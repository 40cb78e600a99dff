"""The shared stack for real, on loopback: `python -m stack up` (make stack)
starts PostgreSQL, moto's S3 server, an MLflow server on PostgreSQL with its
artifacts on S3, and a Prefect server on PostgreSQL. A project runs its flow
against them unchanged, its champion is served from the registry and S3, its
DVC outputs go to the S3 remote, and a fresh clone pulls them and reruns
nothing. Stopping and starting the stack keeps it all."""

from __future__ import annotations

import shutil
import socket
import sys
import tempfile
from pathlib import Path

import httpx
import pytest
from e2e_helpers import free_port, make_project, run
from serve.serve_helpers import Server

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
SERVICES = ("POSTGRES", "S3", "MLFLOW", "PREFECT")


def _stack(cwd: Path, env: dict[str, str], command: str, ok: bool = True):
    return run([sys.executable, "-m", "stack", command], cwd, env, ok)


def _dvc(cwd: Path, env: dict[str, str], *args: str) -> str:
    return run([sys.executable, "-m", "dvc", *args], cwd, env).stdout


def _state_dir() -> Path:
    # Under /tmp itself: PostgreSQL runs as the `postgres` user when we are root,
    # and must be able to reach its data folder.
    state = Path(tempfile.mkdtemp(prefix="distillery-stack-", dir="/tmp"))
    state.chmod(0o755)
    return state


@pytest.fixture(scope="module")
def stack_env():
    state = _state_dir()
    env = {"DISTILLERY_STACK_DIR": str(state), **{f"DISTILLERY_STACK_{s}_PORT": str(free_port()) for s in SERVICES}}
    yield env
    _stack(REPO, env, "down", ok=False)
    shutil.rmtree(state, ignore_errors=True)


def _client_env(root: Path) -> dict[str, str]:
    lines = (root / ".stack.env").read_text().splitlines()
    return dict(line.removeprefix("export ").split("=", 1) for line in lines if line.startswith("export "))


@pytest.fixture(scope="module")
def project(digits_project, stack_env) -> tuple[Path, dict[str, str]]:
    root = digits_project  # has run locally once (a local sqlite registry): DVC's run cache holds every stage
    _stack(root, stack_env, "up")
    return root, {**stack_env, **_client_env(root)}


def _champion(client_env: dict[str, str]):
    from mlflow import MlflowClient

    client = MlflowClient(
        tracking_uri=client_env["MLFLOW_TRACKING_URI"], registry_uri=client_env["MLFLOW_TRACKING_URI"]
    )
    return client.get_model_version_by_alias("distillery-digits", "champion")


def _s3_keys(client_env: dict[str, str], bucket: str) -> list[str]:
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=client_env["MLFLOW_S3_ENDPOINT_URL"],
        aws_access_key_id=client_env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=client_env["AWS_SECRET_ACCESS_KEY"],
        region_name=client_env["AWS_DEFAULT_REGION"],
    )
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def test_a_run_restored_from_the_run_cache_registers_on_the_stack_and_is_served_from_it(project, monkeypatch):
    """A project that ran locally first (a local sqlite registry), then `make clean && make run` against the
    stack: DVC restores every training stage from its run cache, and register, which always runs, puts the
    champion on the stack's registry. The console names the version the stack's server holds."""
    root, env = project
    assert (root / "mlflow.db").exists()
    run(["make", "clean"], root, env)
    done = run([sys.executable, "-m", "flows.run"], root, env)
    assert "is cached - skipping run" in done.stdout  # nothing trained again ...
    assert "Running stage 'register'" in done.stdout  # ... but the registry was asked
    # The registry is MLflow's PostgreSQL database, the model files are in the S3 bucket.
    version = _champion(env)
    assert (
        f"registry: distillery-digits version {version.version}, alias @champion ({env['MLFLOW_TRACKING_URI']})"
        in done.stdout
    )
    import psycopg2

    stack_port = env["DISTILLERY_STACK_POSTGRES_PORT"]
    with psycopg2.connect(f"postgresql://distillery:distillery@127.0.0.1:{stack_port}/mlflow") as conn:
        with conn.cursor() as cur:
            cur.execute("SELECT version FROM model_versions WHERE name = 'distillery-digits'")
            assert version.version in {str(v) for (v,) in cur.fetchall()}
    conn.close()
    # The pyfunc model's one artifact: the champion's ONNX file (models/champion.onnx).
    assert any(key.endswith("artifacts/champion.onnx") for key in _s3_keys(env, "mlflow-artifacts"))
    # The flow run is in the Prefect server (on PostgreSQL), completed.
    runs = httpx.post(f"{env['PREFECT_API_URL']}/flow_runs/filter", json={}, timeout=30).json()
    assert any(run["state_type"] == "COMPLETED" for run in runs)
    # The server follows models:/distillery-digits@champion and downloads it from S3.
    for key in ("MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(key, env[key])
    workdir = root / "serving"
    workdir.mkdir()
    server = Server(workdir, "models:/distillery-digits@champion", tracking_uri=env["MLFLOW_TRACKING_URI"])
    try:
        server.wait_ready(timeout=120)
        described = server.client.get("/v2/models/distillery-digits").json()
    finally:
        server.stop()
    assert described["versions"] == [version.version]
    assert described["parameters"]["sha256"] == version.tags["sha256"]


@pytest.fixture
def s3_clients_follow_the_environment():
    """Credentials read from the environment are cached twice in this process: boto3's
    default session keeps the first ones it resolved, and MLflow keeps its client per
    endpoint. Both are dropped around a test that changes them, so the test sees its
    own and the tests after it see theirs."""
    import boto3
    from mlflow.store.artifact.s3_artifact_repo import _cached_get_s3_client

    def forget():
        boto3.DEFAULT_SESSION = None
        _cached_get_s3_client.cache_clear()

    forget()
    yield
    forget()


@pytest.mark.usefixtures("s3_clients_follow_the_environment")
@pytest.mark.parametrize(
    "wrong", [{"AWS_ACCESS_KEY_ID": "nobody"}, {"AWS_SECRET_ACCESS_KEY": "not-the-secret"}], ids=["key", "secret"]
)
def test_wrong_s3_credentials_are_named_before_any_stage_and_by_the_server(project, monkeypatch, wrong):
    root, env = project
    code = "InvalidAccessKeyId" if "AWS_ACCESS_KEY_ID" in wrong else "SignatureDoesNotMatch"
    done = run([sys.executable, "-m", "flows.pipeline"], root, {**env, **wrong}, ok=False)
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"MLFLOW_S3_ENDPOINT_URL={env['MLFLOW_S3_ENDPOINT_URL']} refused the credentials" in done.stderr
    assert code in done.stderr and "stack.env" in done.stderr
    assert "Running stage" not in done.stdout
    # The model server downloading the champion from S3 says the same, not a boto traceback.
    from deploy.model import RegistrySource
    from tasks.core.errors import DistilleryError

    for key in ("MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(key, {**env, **wrong}[key])
    with pytest.raises(DistilleryError, match=f"refused the credentials .*{code}"):
        RegistrySource("models:/distillery-digits@champion", env["MLFLOW_TRACKING_URI"]).load(threads=1)


def test_dvc_push_then_a_fresh_clone_pulls_and_reruns_nothing(project, tmp_path):
    root, env = project
    run(["git", "add", "dvc.lock"], root, env)
    run(["git", "commit", "-qm", "a run"], root, env)
    pushed = _dvc(root, env, "push")
    assert "pushed" in pushed
    assert any(key.startswith("cache/") for key in _s3_keys(env, "dvc-cache"))
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(root), str(clone)], tmp_path, env)
    assert not (clone / ".dvc/config.local").exists()  # credentials are never committed
    _stack(clone, env, "up")  # the stack is up already: this writes the clone's .stack.env and remote only
    _dvc(clone, env, "pull")
    assert _dvc(clone, env, "status").split() == [
        "register:",
        "always",
        "changed",
        "report:",
        "always",
        "changed",
    ]  # every output pulled
    before = _champion(env)
    rerun = run([sys.executable, "-m", "flows.pipeline"], clone, {**env, **_client_env(clone)})
    assert "pipeline done: ran ['register', 'report']" in rerun.stdout  # it asks the registry, which has this very file
    assert _champion(env).version == before.version


def test_stopping_and_starting_the_stack_keeps_registry_artifacts_and_cache(project, monkeypatch):
    root, env = project
    for key, value in _client_env(root).items():  # this process is a client too: registry and S3
        monkeypatch.setenv(key, value)
    before = _champion(env)
    _stack(root, env, "down")
    assert _stack(root, env, "status", ok=False).returncode != 0
    _stack(root, env, "up")
    after = _champion(env)
    assert after.version == before.version
    from deploy.model import RegistrySource

    # The server's own download path checks the file against the version's sha256 tag.
    served = RegistrySource(f"models:/distillery-digits/{after.version}", env["MLFLOW_TRACKING_URI"]).load(threads=1)
    assert served.sha256 == after.tags["sha256"]
    assert "in sync" in _dvc(root, env, "status", "--cloud")  # the restored S3 holds every pushed output


def test_a_taken_port_is_named_and_nothing_starts(tmp_path):
    state = _state_dir()
    try:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            env = {
                "DISTILLERY_STACK_DIR": str(state),
                **{f"DISTILLERY_STACK_{s}_PORT": str(free_port()) for s in SERVICES},
                "DISTILLERY_STACK_MLFLOW_PORT": str(port),
            }
            done = _stack(REPO, env, "up", ok=False)
        assert done.returncode == 2
        assert f"port {port} on 127.0.0.1 (mlflow) is already taken" in done.stderr
        assert "DISTILLERY_STACK_MLFLOW_PORT" in done.stderr
        assert not (state / "postgres").exists()  # checked before anything started
    finally:
        shutil.rmtree(state, ignore_errors=True)


@pytest.mark.parametrize("service", ["prefect", "mlflow"])
def test_a_stack_that_is_down_is_named_before_any_stage_runs(tmp_path, service):
    dead = f"http://127.0.0.1:{free_port()}"
    env = {"PREFECT_API_URL": f"{dead}/api"} if service == "prefect" else {"MLFLOW_TRACKING_URI": dead}
    done = run([sys.executable, "-m", "flows.pipeline"], make_project(tmp_path), env, ok=False)
    assert done.returncode == 2
    variable = "PREFECT_API_URL" if service == "prefect" else "MLFLOW_TRACKING_URI"
    assert f"answers at {variable}={env[variable]}" in done.stderr and "make stack" in done.stderr
    assert "Running stage" not in done.stdout
