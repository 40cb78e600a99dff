"""Settings every test shares."""

import os
import sys

# dvc.yaml's `bin/python` runs stages with this interpreter: the one running the
# tests, also in the temporary project copies that have no .venv of their own.
os.environ.setdefault("DISTILLERY_PYTHON", sys.executable)

# Test files run in parallel (pytest-xdist, `make test`): each worker gets its own
# Prefect home, so the temporary Prefect servers do not share one SQLite file
# (~/.prefect/prefect.db) and lock each other out. Subprocesses inherit it.
if os.environ.get("PYTEST_XDIST_WORKER"):
    import tempfile

    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix=f"prefect-home-{os.environ['PYTEST_XDIST_WORKER']}-")
