"""The shared stack on 127.0.0.1: PostgreSQL, an S3 store (moto's server), an
MLflow tracking server on PostgreSQL with its artifacts on S3, and a Prefect
server on PostgreSQL. Every service is owned by the project: started, checked
and stopped here, with all its state under one folder, so `down` then `up`
keeps runs, registry, flow runs and the DVC cache.

    python -m stack up | down | status      (make stack / make stack-down)

`up` writes `.stack.env` (tracking URI, Prefect API, S3 endpoint, the test
credentials) and configures the DVC remote `stack` in `.dvc/config.local`
(never committed). Settings, all optional: DISTILLERY_STACK_DIR (state,
default .stack/), DISTILLERY_STACK_<POSTGRES|S3|MLFLOW|PREFECT>_PORT.

S3 persistence: moto keeps objects in memory, so `down` saves every bucket's
objects under `<state>/s3/objects/` and `up` uploads them into the fresh moto
before anything else uses it. A stack that is killed instead of stopped
loses what S3 received since the last `down` (PostgreSQL loses nothing).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from tasks.core.errors import DistilleryError

ROOT = Path(__file__).resolve().parents[1]
ENV_FILE = ROOT / ".stack.env"
HOST = "127.0.0.1"
USER, PASSWORD = "distillery", "distillery"  # test credentials, on loopback only
AWS_KEY, AWS_SECRET, AWS_REGION = "distillery", "distillery-secret", "us-east-1"
MLFLOW_BUCKET, DVC_BUCKET = "mlflow-artifacts", "dvc-cache"
DATABASES = ("mlflow", "prefect")
DEFAULT_PORTS = {"postgres": 5433, "s3": 9000, "mlflow": 5000, "prefect": 4200}
DVC_REMOTE = "stack"
READY_TIMEOUT_S = 180


@dataclass(frozen=True)
class Stack:
    state: Path
    ports: dict[str, int]

    @classmethod
    def from_env(cls) -> "Stack":
        state = Path(os.environ.get("DISTILLERY_STACK_DIR", ROOT / ".stack")).resolve()
        ports = {}
        for name, default in DEFAULT_PORTS.items():
            key = f"DISTILLERY_STACK_{name.upper()}_PORT"
            try:
                ports[name] = int(os.environ.get(key, default))
            except ValueError as err:
                raise DistilleryError(f"{key}={os.environ[key]!r} is not a port number") from err
        return cls(state, ports)

    # ------------------------------------------------------------------ addresses
    def postgres_uri(self, database: str, driver: str = "postgresql") -> str:
        return f"{driver}://{USER}:{PASSWORD}@{HOST}:{self.ports['postgres']}/{database}"

    @property
    def s3_url(self) -> str:
        return f"http://{HOST}:{self.ports['s3']}"

    @property
    def mlflow_url(self) -> str:
        return f"http://{HOST}:{self.ports['mlflow']}"

    @property
    def prefect_api(self) -> str:
        return f"http://{HOST}:{self.ports['prefect']}/api"

    def urls(self) -> dict[str, str]:
        return {
            "postgres": f"postgresql://{HOST}:{self.ports['postgres']}",
            "s3": self.s3_url,
            "mlflow": self.mlflow_url,
            "prefect": self.prefect_api,
        }

    def client_env(self) -> dict[str, str]:
        """What a client of the stack needs: written to .stack.env."""
        return {
            "MLFLOW_TRACKING_URI": self.mlflow_url,
            "PREFECT_API_URL": self.prefect_api,
            "MLFLOW_S3_ENDPOINT_URL": self.s3_url,
            "AWS_ENDPOINT_URL_S3": self.s3_url,
            "AWS_ACCESS_KEY_ID": AWS_KEY,
            "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
            "AWS_DEFAULT_REGION": AWS_REGION,
        }

    def path(self, *parts: str) -> Path:
        return self.state.joinpath(*parts)


# --------------------------------------------------------------------------- processes


def port_open(port: int, host: str = HOST) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _pid(stack: Stack, name: str) -> Optional[int]:
    try:
        pid = int(stack.path("run", f"{name}.pid").read_text())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def _spawn(stack: Stack, name: str, argv: list[str], env: dict[str, str]) -> None:
    stack.path("run").mkdir(parents=True, exist_ok=True)
    stack.path("logs").mkdir(parents=True, exist_ok=True)
    with open(stack.path("logs", f"{name}.log"), "ab") as log:
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **env},
            start_new_session=True,
            cwd=stack.state,
        )
    stack.path("run", f"{name}.pid").write_text(str(proc.pid))


def _wait(name: str, url: str, ready: Callable[[], bool], stack: Stack, pid: Optional[int] = None) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if ready():
            return
        if pid is not None:
            try:
                os.kill(pid, 0)
            except OSError:
                break
        time.sleep(0.3)
    log = stack.path("logs", f"{name}.log")
    tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
    raise DistilleryError(f"{name} did not come up at {url} within {READY_TIMEOUT_S}s; its log, {log}:\n{tail}")


def _http_ok(url: str) -> Callable[[], bool]:
    def ready() -> bool:
        import httpx

        try:
            return httpx.get(url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    return ready


def _stop(stack: Stack, name: str) -> bool:
    pid = _pid(stack, name)
    if pid is None:
        return False
    try:
        os.killpg(pid, signal.SIGTERM)
    except OSError:
        pass
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except OSError:
            break
        time.sleep(0.2)
    else:
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
    stack.path("run", f"{name}.pid").unlink(missing_ok=True)
    return True


def _check_port(stack: Stack, name: str) -> None:
    port = stack.ports[name]
    if port_open(port):
        variable = f"DISTILLERY_STACK_{name.upper()}_PORT"
        raise DistilleryError(
            f"port {port} on {HOST} ({name}) is already taken by another process: stop it, "
            f"or choose another port with {variable}=<port>; nothing was started in its place"
        )


# --------------------------------------------------------------------------- postgres


def _pg_bin(tool: str) -> str:
    found = shutil.which(tool)
    if found:
        return found
    candidates = sorted(
        Path("/usr/lib/postgresql").glob(f"*/bin/{tool}"),
        key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0,
    )
    if not candidates:
        raise DistilleryError(
            f"PostgreSQL's {tool} not found: install the server (Debian: "
            f"apt-get install postgresql) or put its bin/ folder on PATH"
        )
    return str(candidates[-1])


def _as_postgres_user() -> list[str]:
    """PostgreSQL refuses to run as root: under root, run it as the `postgres` system user."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def _start_postgres(stack: Stack) -> None:
    data = stack.path("postgres")
    prefix = _as_postgres_user()
    if not (data / "PG_VERSION").exists():
        data.mkdir(parents=True, exist_ok=True)
        pwfile = stack.path("run", "pgpass")
        pwfile.parent.mkdir(parents=True, exist_ok=True)
        pwfile.write_text(PASSWORD + "\n")
        if prefix:
            shutil.chown(data, "postgres")
            shutil.chown(pwfile, "postgres")
        _run(
            [
                *prefix,
                _pg_bin("initdb"),
                "-D",
                str(data),
                "-U",
                USER,
                "--pwfile",
                str(pwfile),
                "--auth-host=scram-sha-256",
                "--auth-local=trust",
                "-E",
                "UTF8",
            ],
            "initdb",
        )
        pwfile.unlink()
    sockets = stack.path("run")
    if prefix:
        shutil.chown(sockets, "postgres")
    log = stack.path("logs", "postgres.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    log.touch()
    if prefix:
        shutil.chown(log, "postgres")
    options = f"-p {stack.ports['postgres']} -k {sockets} -c listen_addresses={HOST}"
    _run(
        [*prefix, _pg_bin("pg_ctl"), "-D", str(data), "-o", options, "-l", str(log), "-w", "-t", "60", "start"],
        "pg_ctl start",
        log,
    )


def _create_databases(stack: Stack) -> None:
    import psycopg2

    conn = psycopg2.connect(stack.postgres_uri("postgres"), connect_timeout=10)
    conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
    try:
        with conn.cursor() as cur:
            for database in DATABASES:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
                if cur.fetchone() is None:
                    cur.execute(f'CREATE DATABASE "{database}"')
    finally:
        conn.close()


def _stop_postgres(stack: Stack) -> bool:
    data = stack.path("postgres")
    if not (data / "postmaster.pid").exists():
        return False
    _run([*_as_postgres_user(), _pg_bin("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"], "pg_ctl stop")
    return True


def _postgres_up(stack: Stack) -> bool:
    return (stack.path("postgres", "postmaster.pid")).exists() and port_open(stack.ports["postgres"])


def _run(argv: list[str], what: str, log: Optional[Path] = None, cwd: Optional[Path] = None) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, cwd=cwd)
    if done.returncode != 0:
        extra = log.read_text(errors="replace")[-1500:] if log and log.exists() else ""
        raise DistilleryError(f"{what} failed ({' '.join(argv)}):\n{done.stdout[-1500:]}{done.stderr[-1500:]}{extra}")


# --------------------------------------------------------------------------- s3


def _s3_client(stack: Stack):
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=stack.s3_url,
        aws_access_key_id=AWS_KEY,
        aws_secret_access_key=AWS_SECRET,
        region_name=AWS_REGION,
    )


def _start_s3(stack: Stack) -> None:
    # moto's server with signatures checked (stack/s3server.py), so wrong credentials fail here as on S3
    _spawn(
        stack,
        "s3",
        [sys.executable, "-m", "stack.s3server", "-H", HOST, "-p", str(stack.ports["s3"])],
        {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))},
    )
    _wait("s3", stack.s3_url, _http_ok(f"{stack.s3_url}/moto-api/"), stack, _pid(stack, "s3"))
    client = _s3_client(stack)
    saved = stack.path("s3", "objects")
    buckets = {MLFLOW_BUCKET, DVC_BUCKET} | ({p.name for p in saved.iterdir()} if saved.is_dir() else set())
    for bucket in sorted(buckets):
        client.create_bucket(Bucket=bucket)
        folder = saved / bucket
        for path in sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []:
            # One PUT per object (up to 5 GB): nothing depends on multipart upload ids.
            client.put_object(Bucket=bucket, Key=path.relative_to(folder).as_posix(), Body=path.read_bytes())


def _save_s3(stack: Stack) -> None:
    """moto keeps objects in memory: write every bucket's objects to
    <state>/s3/objects/<bucket>/<key>, which _start_s3 uploads again."""
    client = _s3_client(stack)
    saved, fresh = stack.path("s3", "objects"), stack.path("s3", "objects.new")
    shutil.rmtree(fresh, ignore_errors=True)
    for bucket in client.list_buckets().get("Buckets", []):
        folder = fresh / bucket["Name"]
        folder.mkdir(parents=True)
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket["Name"]):
            for item in page.get("Contents", []):
                target = folder / item["Key"]
                target.parent.mkdir(parents=True, exist_ok=True)
                client.download_file(bucket["Name"], item["Key"], str(target))
    shutil.rmtree(saved, ignore_errors=True)
    fresh.rename(saved)  # the old copy goes only once the new one is complete


# --------------------------------------------------------------------------- mlflow, prefect


def _start_mlflow(stack: Stack) -> None:
    argv = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        HOST,
        "--port",
        str(stack.ports["mlflow"]),
        "--backend-store-uri",
        stack.postgres_uri("mlflow", "postgresql+psycopg2"),
        "--default-artifact-root",
        f"s3://{MLFLOW_BUCKET}",
        "--no-serve-artifacts",
        "--workers",
        "1",
    ]
    _spawn(stack, "mlflow", argv, stack.client_env())
    _wait("mlflow", stack.mlflow_url, _http_ok(f"{stack.mlflow_url}/health"), stack, _pid(stack, "mlflow"))


def _start_prefect(stack: Stack) -> None:
    prefect_home = stack.path("prefect")
    prefect_home.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "prefect", "server", "start", "--host", HOST, "--port", str(stack.ports["prefect"])]
    env = {
        "PREFECT_HOME": str(prefect_home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_DATABASE_CONNECTION_URL": stack.postgres_uri("prefect", "postgresql+asyncpg"),
        "PREFECT_UI_API_URL": stack.prefect_api,
    }
    _spawn(stack, "prefect", argv, env)
    _wait("prefect", stack.prefect_api, _http_ok(f"{stack.prefect_api}/health"), stack, _pid(stack, "prefect"))


# --------------------------------------------------------------------------- dvc remote, env file


def configure_dvc_remote(stack: Stack, repo: Path = ROOT) -> None:
    """The DVC remote `stack` (default) on the S3 store, every setting in .dvc/config.local."""
    dvc = [sys.executable, "-m", "dvc"]
    url = f"s3://{DVC_BUCKET}/cache"  # one path for every clone, so a colleague pulls what was pushed
    _run([*dvc, "remote", "add", "--local", "--default", "--force", DVC_REMOTE, url], "dvc remote add", cwd=repo)
    for key, value in (
        ("endpointurl", stack.s3_url),
        ("access_key_id", AWS_KEY),
        ("secret_access_key", AWS_SECRET),
        ("region", AWS_REGION),
    ):
        _run([*dvc, "remote", "modify", "--local", DVC_REMOTE, key, value], f"dvc remote modify {key}", cwd=repo)


def write_env_file(stack: Stack, path: Path = ENV_FILE) -> None:
    lines = ["# Written by `make stack`: `. ./.stack.env` points MLflow, Prefect and S3 clients at the stack."]
    lines += [f"export {key}={value}" for key, value in stack.client_env().items()]
    path.write_text("\n".join(lines) + "\n")


# --------------------------------------------------------------------------- commands

SERVICES = ("postgres", "s3", "mlflow", "prefect")
STARTERS = {"postgres": _start_postgres, "s3": _start_s3, "mlflow": _start_mlflow, "prefect": _start_prefect}
# Started side by side, a wave at a time: MLflow and Prefect need PostgreSQL's databases, and nothing
# else waits for another (MLflow reaches S3 only when an artifact moves). Stopped in the reverse order.
WAVES = (("postgres", "s3"), ("mlflow", "prefect"))


def _side_by_side(names: tuple[str, ...], work: Callable[[str], object]) -> dict[str, object]:
    """`work(name)` for each name at once (threads: each waits on a process or a port), the results
    in order; the first failure, in that order, is raised once all are done."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max(1, len(names))) as pool:
        futures = {name: pool.submit(work, name) for name in names}
    return {name: future.result() for name, future in futures.items()}


def running(stack: Stack) -> dict[str, bool]:
    return {
        "postgres": _postgres_up(stack),
        **{name: _pid(stack, name) is not None and port_open(stack.ports[name]) for name in SERVICES[1:]},
    }


def up(stack: Stack, repo: Path = ROOT) -> None:
    stack.state.mkdir(parents=True, exist_ok=True)
    if _as_postgres_user():  # the postgres user must reach its data folder
        stack.state.chmod(0o755)
    state = running(stack)
    for name in SERVICES:  # check every port before starting anything
        if not state[name]:
            _check_port(stack, name)
    for wave in WAVES:
        for name in wave:
            if state[name]:
                print(f"{name}: already up at {stack.urls()[name]}")
        started = tuple(name for name in wave if not state[name])
        _side_by_side(started, lambda name: STARTERS[name](stack))
        for name in started:
            print(f"{name}: up at {stack.urls()[name]}")
        if "postgres" in wave:  # before MLflow and Prefect connect; a no-op when they exist
            _create_databases(stack)
    write_env_file(stack, repo / ENV_FILE.name)
    configure_dvc_remote(stack, repo)
    print(
        f"state in {stack.state}; wrote {repo / ENV_FILE.name} (`. ./.stack.env`) and the DVC remote "
        f"'{DVC_REMOTE}' in .dvc/config.local"
    )


def down(stack: Stack) -> None:
    if running(stack)["s3"]:
        _save_s3(stack)
    for wave in reversed(WAVES):
        stopped = _side_by_side(wave, lambda name: _stop_postgres(stack) if name == "postgres" else _stop(stack, name))
        for name, was_running in stopped.items():
            print(f"{name}: {'stopped' if was_running else 'was not running'}")


def status(stack: Stack) -> dict[str, bool]:
    state = running(stack)
    for name, url in stack.urls().items():
        print(f"{name:9s} {'up  ' if state[name] else 'down'} {url}")
    return state


def main(argv: Optional[list[str]] = None) -> None:
    import argparse

    from tasks.core.errors import run_cli

    parser = argparse.ArgumentParser(prog="python -m stack", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("up", "down", "status"))
    args = parser.parse_args(argv)
    stack = Stack.from_env()

    def command() -> None:
        if args.command == "up":
            up(stack)
        elif args.command == "down":
            down(stack)
        elif not all(status(stack).values()):
            raise SystemExit(1)

    run_cli(command)
