"""Fixtures the e2e modules share; the shared helpers are in e2e_helpers.py
(a module of its own: three conftest.py files share that name, so none is
imported by name)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from e2e_helpers import copy_project, make_project, run, set_params
from filelock import FileLock

from flows.warm import warm_interpreter


@pytest.fixture(scope="module")
def harness():
    """A temporary Prefect server for the flows a module runs in-process."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session", autouse=True)
def warm_stages():
    """One warm interpreter per test worker (flows/warm.py) for the stages of every command and flow
    the e2e modules run: a stage starts without its seconds of imports, as under `make run`'s flow,
    and the flows share it instead of starting their own. A command given an environment without
    it (test_flow_failures.py's bare-PATH `dvc repro`) runs its stages in fresh interpreters."""
    with warm_interpreter() as env, pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        yield


# The projects that have run once, as a user's does after `make run`: built once per test session
# (the first worker that needs one builds it while the others wait), then copied by each module
# that uses it. One full run of the DAG per data source, not one per module.
WARM = {
    "digits": {},
    # evaluate.slice_column: the per-island slices test_flow's penguins test reads.
    "penguins": {"data": {"source": "penguins"}, "evaluate": {"slice_column": "Island"}},
}


def _warm(factory: pytest.TempPathFactory, worker_id: str, name: str) -> Path:
    shared = factory.getbasetemp() if worker_id == "master" else factory.getbasetemp().parent
    root, log, failed = (shared / f"warm-{name}{suffix}" for suffix in ("", ".log", ".failed"))
    with FileLock(str(shared / f"warm-{name}.lock")):
        if failed.exists():
            pytest.fail(f"building the warm {name} project failed in another worker:\n{failed.read_text()}")
        if not log.exists():
            make_project(root)
            for section, values in WARM[name].items():
                set_params(root, section, **values)
            done = run([sys.executable, "-m", "flows.run"], root, ok=False)
            if done.returncode != 0:
                failed.write_text(f"make run exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
                pytest.fail(failed.read_text())
            log.write_text(done.stdout)  # outside the project: its git status stays a user's
    return root


@pytest.fixture(scope="session")
def warm_digits(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Path:
    """The default project (bundled digits, tiny settings) after one `make run`: read it, don't write it."""
    return _warm(tmp_path_factory, worker_id, "digits")


@pytest.fixture(scope="session")
def warm_penguins(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Path:
    """The project on the bundled penguins table after one `make run`: read it, don't write it."""
    return _warm(tmp_path_factory, worker_id, "penguins")


@pytest.fixture(scope="module")
def digits_project(warm_digits: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This module's own copy of the warm digits project, its registry included."""
    return copy_project(warm_digits, tmp_path_factory.mktemp("digits") / "project")
