"""How the flow fails and recovers, on a copy of the warm digits project
(tests/e2e/conftest.py): a run with nothing stale starts no flow, a failed gate
names its expectation, a transient failure is retried and a bad-input one is
not, a SIGKILL leaves no lock to clean, and the stages find their interpreter
without an activated venv."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import yaml

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def project(digits_project: Path) -> Path:
    return digits_project


def _up_to_date(project: Path) -> None:
    """`dvc repro`: whatever the tests before left stale runs, so a test starts from a clean status."""
    subprocess.run(
        [sys.executable, "-m", "dvc", "repro"],
        cwd=project,
        check=True,
        capture_output=True,
        env={**os.environ, "DISTILLERY_PYTHON": sys.executable},
    )


def _run_flow(root: Path) -> list[dict]:
    from flows.pipeline import pipeline

    return pipeline(root=str(root))


def test_make_run_on_an_up_to_date_project_starts_no_flow(project: Path) -> None:
    """`make run` (python -m flows.run) when dvc status is clean: done in a
    couple of seconds, no Prefect server; one stale output, and the flow runs."""

    def make_run() -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "flows.run"],
            cwd=project,
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "DISTILLERY_PYTHON": sys.executable},
        )

    _up_to_date(project)
    done = make_run()
    assert done.returncode == 0, done.stderr[-2000:]
    assert "pipeline done: ran ['register', 'report'] (always run" in done.stdout
    assert "skipped 11 up-to-date stage(s)" in done.stdout and "no Prefect flow run" in done.stdout
    assert "Starting temporary server" not in done.stdout + done.stderr
    assert "To track the changes with git" not in done.stdout
    (project / "reports/summaries/select.md").unlink()
    done = make_run()
    assert done.returncode == 0, done.stderr[-2000:]
    assert "pipeline done: ran ['select', 'register', 'report']" in done.stdout
    assert (project / "reports/summaries/select.md").exists()
    # The console ends with what a user needs next, and DVC's git hints are said once, not per stage.
    last = "\n".join(done.stdout.splitlines()[-15:])
    champion = yaml.safe_load((project / "reports/selection.json").read_text())["champion"]
    assert f"champion: {champion}: macro-F1 " in last and "models/champion.onnx" in last and "make serve" in last
    from mlflow import MlflowClient

    held = MlflowClient(f"sqlite:///{project / 'mlflow.db'}").get_model_version_by_alias(
        "distillery-digits", "champion"
    )
    assert f"registry: distillery-digits version {held.version}, alias @champion" in last  # asked of the registry
    assert "To track the changes with git" not in done.stdout
    assert done.stdout.count("git add dvc.lock") == 1


def test_failed_gate_stops_the_flow_naming_the_expectation(project: Path, harness) -> None:
    from flows.pipeline import StageFailed

    strict = json_suite_with_min_count(project, 10_000)
    params_file = project / "params.yaml"
    original = params_file.read_text()
    params = yaml.safe_load(original)
    params["validate"]["suite"] = str(strict.relative_to(project))
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        with pytest.raises(StageFailed) as failure:
            _run_flow(project)
    finally:
        params_file.write_text(original)
    assert failure.value.stage == "validate"
    assert failure.value.exit_code == 2 and not failure.value.transient
    assert "expect_column_value_counts_to_be_at_least" in str(failure.value)
    report = yaml.safe_load((project / "reports/validation.json").read_text())
    assert report["success"] is False


def json_suite_with_min_count(project: Path, min_count: int) -> Path:
    import json

    source = yaml.safe_load((project / "params.yaml").read_text())["data"]["source"]
    suite = json.loads((project / f"expectations/{source}.json").read_text())
    for expectation in suite["expectations"]:
        if expectation["type"] == "expect_column_value_counts_to_be_at_least":
            expectation["kwargs"]["min_count"] = min_count
    path = project / "expectations/strict.json"
    path.write_text(json.dumps(suite))
    return path


def _failing_once(tmp_path: Path, stage: str, code: int) -> tuple[Path, Path]:
    """An interpreter for the stage commands (bin/python runs $DISTILLERY_PYTHON)
    that exits `code` the first time `stage` runs, then runs it for real; and
    the file counting the stage's attempts."""
    attempts = tmp_path / f"{stage}-attempts"
    wrapper = tmp_path / f"python-failing-{stage}-once"
    wrapper.write_text(f"""#!/bin/sh
if [ "$2" = "tasks.{stage}" ]; then
    echo attempt >> "{attempts}"
    if [ "$(wc -l < "{attempts}")" -eq 1 ]; then echo "injected failure" >&2; exit {code}; fi
fi
exec "{sys.executable}" "$@"
""")
    wrapper.chmod(0o755)
    return wrapper, attempts


@pytest.mark.parametrize("code", [1, 2], ids=["transient-retried", "expected-not-retried"])
def test_a_transient_stage_failure_is_retried_and_an_exit_2_is_not(
    project: Path, harness, monkeypatch, tmp_path, code
) -> None:
    import flows.pipeline as pipeline_module
    from flows.pipeline import StageFailed

    _up_to_date(project)
    wrapper, attempts = _failing_once(tmp_path, "select", code)
    real_env = pipeline_module._stage_env
    monkeypatch.setattr(pipeline_module, "_stage_env", lambda *a: {**real_env(*a), "DISTILLERY_PYTHON": str(wrapper)})
    params_file = project / "params.yaml"
    original = params_file.read_text()
    params = yaml.safe_load(original)
    params["select"]["max_quality_drop"] = 1e9 + code  # select is stale, nothing else (and not in DVC's run cache)
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        if code == 1:
            results = _run_flow(project)
            assert [r["stage"] for r in results if r["ran"]] == ["select", "register", "report"]
            assert attempts.read_text().count("attempt") == 2  # failed once, retried, done
        else:
            with pytest.raises(StageFailed) as failure:
                _run_flow(project)
            assert failure.value.exit_code == 2 and not failure.value.transient
            assert attempts.read_text().count("attempt") == 1  # a bad-input failure is not retried
            assert "injected failure" in failure.value.output
    finally:
        params_file.write_text(original)


@pytest.mark.parametrize("driver", [["-m", "dvc", "repro"], ["-m", "flows.run"]], ids=["dvc-repro", "make-run"])
def test_kill_9_during_a_stage_then_the_same_driver_recovers_with_no_lock_cleanup(project: Path, driver) -> None:
    """SIGKILL to the whole driver (dvc, the flow, its stage, Prefect's server) in
    the middle of a stage (evaluate's timing loop, the longest of the last
    stages); the next run needs no manual lock removal, reruns what the kill
    left unfinished, and ends with dvc status clean."""
    import signal
    import time

    env = {**os.environ, "DISTILLERY_PYTHON": sys.executable}
    params_file = project / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    params["evaluate"]["latency_seconds"] = 5 + len(driver)  # evaluate and what follows are stale, and slow
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    log = project / f"killed-{driver[1]}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, *driver],
            cwd=project,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 300
    while "evaluate: timing" not in log.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)
    time.sleep(2)  # well inside the timing loop
    # Prefect's temporary server runs in a session of its own, out of the group's reach: killed by pid.
    descendants = psutil.Process(proc.pid).children(recursive=True)
    os.killpg(proc.pid, signal.SIGKILL)
    for child in descendants:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    proc.wait()
    assert "Running stage 'select'" not in log.read_text()  # the kill landed in evaluate
    # The rerun needs only to evaluate again, not for long: a shorter budget than the killed run's, still stale.
    params["evaluate"]["latency_seconds"] = 0.1 + 0.01 * len(driver)
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    done = subprocess.run([sys.executable, *driver], cwd=project, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Running stage 'evaluate'" in done.stdout and "busy" not in done.stdout + done.stderr
    status = subprocess.run(
        [sys.executable, "-m", "dvc", "status"], cwd=project, env=env, capture_output=True, text=True, timeout=120
    )
    assert status.stdout.split() == ["register:", "always", "changed", "report:", "always", "changed"], (
        status.stdout
    )  # it asks the registry


def test_dvc_repro_needs_no_activated_venv(project: Path) -> None:
    """`.venv/bin/dvc repro` with a bare PATH: the stages still find the project's
    interpreter (bin/python), not the system python3 that lacks the dependencies."""
    venv = project / ".venv"
    if not venv.exists():
        venv.symlink_to(Path(sys.executable).parents[1])
    params_file = project / "params.yaml"
    original = params_file.read_text()
    params = yaml.safe_load(original)
    params["evaluate"]["latency_rounds"] = 4
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        done = subprocess.run(
            [str(venv / "bin" / "dvc"), "repro", "evaluate"],
            cwd=project,
            capture_output=True,
            text=True,
            env={"PATH": "/usr/bin:/bin", "HOME": str(project.parent)},
            timeout=600,
        )
    finally:
        params_file.write_text(original)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Running stage 'evaluate'" in done.stdout
