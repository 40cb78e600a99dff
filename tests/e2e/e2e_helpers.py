"""What the e2e modules share: a fresh project copy, the environment its
commands run in, and the waits and stops of the processes they start. One
definition each; the modules import them from here (tests/e2e/conftest.py
holds the shared fixtures)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
import yaml
from serve.serve_helpers import free_port  # noqa: F401  one free-port helper for every test

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PREFECT = BIN / "prefect"
# `dvc exp run` and the tests' own commits need an identity, as a user's git has.
GIT_IDENTITY = {
    f"GIT_{who}_{what}": value
    for who in ("AUTHOR", "COMMITTER")
    for what, value in (("NAME", "distillery tests"), ("EMAIL", "tests@localhost"))
}
# Settings that point a command at a shared service: a test names the ones it wants.
SERVICE_VARIABLES = ("MLFLOW_", "PREFECT_API", "AWS_", "DISTILLERY_STACK_", "DISTILLERY_DASK_ADDRESS")


def tiny(params: dict) -> dict:
    """Few epochs and few timing repeats: the flow's behaviour, not the model's quality."""
    for section in ("train", "distill"):
        params[section].update(max_epochs=3, patience=2)
    params["evaluate"].update(latency_seconds=0.2, latency_rounds=2)
    params["export"]["calibration_samples"] = 32
    params["prune"].update(fine_tune_epochs=1, unstructured_amounts=[0.5])
    params["validate"]["label_issues"]["image_epochs"] = 1  # the label-error model: tests/data/test_label_issues.py
    # 3 epochs decide nothing about quality: open the selection budget and the gate.
    # The gate's baseline check too: a 3-epoch regression need not beat the mean (tests/unit/test_baselines.py checks it).
    params["select"].update(max_quality_drop=1e9, min_gain_over_trivial=-1e9, max_ece=1.0, max_drop_vs_champion=1e9)
    return params


def make_project(root: Path, **data: object) -> Path:
    """A fresh clone-like copy: the tracked files only, committed in a new git repo."""
    tracked = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout.split()
    for name in tracked:
        # dvc.lock belongs to a run, not to the code: a fresh clone has none.
        if name.startswith("tests/") or name == "dvc.lock" or not (REPO / name).is_file():
            continue
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, root / name)
    set_params(root, "data", **data)
    params_file = root / "params.yaml"
    params_file.write_text(yaml.safe_dump(tiny(yaml.safe_load(params_file.read_text())), sort_keys=False))
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "copy")
    return root


def set_params(root: Path, section: str, **values: object) -> None:
    """Update one section of the project's params.yaml."""
    params_file = root / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    params[section].update(values)
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, env={**os.environ, **GIT_IDENTITY})


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any shared service's settings, the venv's tools
    first on PATH, stage commands on this interpreter; then `extra`."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(SERVICE_VARIABLES)}
    return {
        **base,
        "PATH": f"{BIN}:/usr/sbin:/usr/bin:/bin",
        "DISTILLERY_PYTHON": sys.executable,
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        **GIT_IDENTITY,
        **extra,
    }


def run(
    argv: list[str], cwd: Path, env: dict[str, str] | None = None, ok: bool = True, timeout: int = 900
) -> subprocess.CompletedProcess:
    """Run a command as a user would in `cwd` (clean_env plus `env`); with `ok`,
    fail with the tail of its output unless it exits 0."""
    done = subprocess.run(argv, cwd=cwd, env=clean_env(**(env or {})), capture_output=True, text=True, timeout=timeout)
    if ok:
        assert done.returncode == 0, f"{' '.join(map(str, argv))}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def dvc(root: Path, *args: str) -> str:
    """A DVC command in the project, as the README says to run it; its output."""
    return run([sys.executable, "-m", "dvc", *args], root).stdout


def wait_for(
    what: str, check: Callable[[], object], timeout: float, procs: dict[str, tuple[subprocess.Popen, Path]]
) -> object:
    """Poll `check` until it returns something truthy; fail naming `what`, with the
    processes' output, on timeout or if one of them died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, (proc, log) in procs.items():
            if proc.poll() is not None:
                pytest.fail(f"{name} exited ({proc.returncode}) while waiting for {what}:\n{log.read_text()[-3000:]}")
        try:
            result = check()
        except Exception:  # not up yet
            result = None
        if result:
            return result
        time.sleep(0.5)
    logs = "\n".join(f"--- {name}\n{log.read_text()[-2000:]}" for name, (_, log) in procs.items())
    pytest.fail(f"timed out after {timeout} s waiting for {what}\n{logs}")


def stop(proc: subprocess.Popen) -> None:
    """SIGINT to the process's own group (it was started in a new session), then SIGKILL if it lingers."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    # Children (uvicorn, flow-run subprocesses) share the group: wait for the group to be gone.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)


def copy_project(source: Path, dest: Path, registry: bool = True) -> Path:
    """A copy of a project that has run: its git repository, outputs, dvc.lock, DVC cache and run
    cache, so DVC skips what is unchanged. With `registry`, its MLflow database too (runs, registered
    versions), its absolute artifact paths moved into the copy; without, the copy registers afresh."""
    mlflow_files = () if registry else ("mlflow.db", "mlruns")
    shutil.copytree(source, dest, symlinks=True, ignore=shutil.ignore_patterns(*mlflow_files))
    if registry and (dest / "mlflow.db").exists():
        _relocate(dest / "mlflow.db", str(source.resolve()), str(dest.resolve()))
    return dest


def _relocate(database: Path, old: str, new: str) -> None:
    """Every text value of an SQLite database that holds `old` (a path), with `new` instead:
    MLflow stores absolute artifact locations (experiments, runs, model versions, logged models)."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(database)) as db, db:
        tables = [name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            for column in db.execute(f'PRAGMA table_info("{table}")').fetchall():
                if column[2].upper().startswith(("VARCHAR", "TEXT")):
                    name = column[1]
                    db.execute(
                        f'UPDATE "{table}" SET "{name}" = replace("{name}", ?, ?) WHERE instr("{name}", ?) > 0',
                        (old, new, old),
                    )
