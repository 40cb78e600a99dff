"""Settings every test shares."""

import os
import sys
from pathlib import Path

import pytest

# dvc.yaml's `bin/python` runs stages with this interpreter: the one running the
# tests, also in the temporary project copies that have no .venv of their own.
os.environ.setdefault("DISTILLERY_PYTHON", sys.executable)

# A temporary Prefect server (every flow run without PREFECT_API_URL starts one) gets 20 s to
# come up by default; two test workers on two cores can take longer. Subprocesses inherit it.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

# One intra-op thread per process when the test files run in parallel: each of the workers' torch and
# BLAS pools, and the stages' they start, would otherwise be sized to the whole machine, and N of them
# oversubscribe it. Subprocesses inherit it; a test that times threads sets them itself.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ.setdefault("OMP_NUM_THREADS", "1")

# Test files run in parallel (pytest-xdist, `make test`): each worker gets its own
# Prefect home, so the temporary Prefect servers do not share one SQLite file
# (~/.prefect/prefect.db) and lock each other out. Subprocesses inherit it.
if os.environ.get("PYTEST_XDIST_WORKER"):
    import tempfile

    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix=f"prefect-home-{os.environ['PYTEST_XDIST_WORKER']}-")


# The longest test files, longest first (measured in `make test` on two cores). pytest-xdist hands out
# whole files in collection order (`--dist loadfile --no-loadscope-reorder`, the Makefile's), so the long
# ones start at once, the two warm projects (tests/e2e/conftest.py) are built side by side (test_task_types
# needs digits, test_loop penguins), and the many short files fill the end evenly. xdist's own order
# (most tests first) started these last, one worker finishing alone.
LONGEST_FIRST = (  # seconds in a run of the suite on two cores (11 min 22 s), the warm builds included where they land
    "e2e/test_task_types.py",  # 181 s, the warm digits build first
    "e2e/test_loop.py",  # 160 s, the warm penguins build first
    "e2e/test_flow_failures.py",  # 165 s
    "e2e/test_stack.py",  # 129 s
    "e2e/test_dask.py",  # 107 s
    "data/test_label_issues.py",  # 73 s
    "serve/test_soak.py",  # 62 s
    "serve/test_reload.py",  # 56 s
    "e2e/test_flow.py",  # 61 s
    "e2e/test_distributed.py",  # 43 s
    "e2e/test_monitor.py",  # 34 s
    "e2e/test_flow_outputs.py",  # 31 s
    "unit/test_register.py",  # 36 s
    "e2e/test_deployments.py",  # 17 s
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    tests = Path(__file__).parent
    if missing := [name for name in LONGEST_FIRST if not (tests / name).is_file()]:
        raise pytest.UsageError(f"tests/conftest.py LONGEST_FIRST names files that are gone: {missing}")
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    # A stable sort: each file's tests stay together and in their own order.
    items.sort(key=lambda item: rank.get(item.path.relative_to(tests).as_posix(), len(rank)))


_MLFLOW_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


def _mlflow_globals():
    # importing mlflow here would cost every test ~2 s: only a test that imported it can have set them
    if "mlflow" not in sys.modules:
        return None
    from mlflow.tracking._model_registry import utils as registry
    from mlflow.tracking._tracking_service import utils as tracking

    return tracking, registry


@pytest.fixture(autouse=True)
def _mlflow_uris_restored():
    """mlflow.set_tracking_uri/set_registry_uri change process globals and export
    MLFLOW_*_URI to every later subprocess: a test that points them at a server it
    then stops would send the next test in the same xdist worker to a dead port."""
    env = {name: os.environ.get(name) for name in _MLFLOW_ENV}
    before = _mlflow_globals()
    uris = (before[0]._tracking_uri, before[1]._registry_uri) if before else (None, None)
    yield
    for name, value in env.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    after = _mlflow_globals()
    if after:
        after[0]._tracking_uri, after[1]._registry_uri = uris
