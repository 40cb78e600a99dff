"""Settings every test shares."""

import os
import sys

# dvc.yaml's `bin/python` runs stages with this interpreter: the one running the
# tests, also in the temporary project copies that have no .venv of their own.
os.environ.setdefault("DISTILLERY_PYTHON", sys.executable)
