"""tests/conftest.py restores MLflow's global URIs after each test: the second
test here fails if the first one's server address leaks into it (as it once did,
from the stack test to the reload tests in the same xdist worker)."""

import os

import mlflow

DEAD = "http://127.0.0.1:1"


def test_a_test_points_mlflow_at_a_server_it_then_stops():
    mlflow.set_tracking_uri(DEAD)
    mlflow.set_registry_uri(DEAD)
    assert os.environ["MLFLOW_REGISTRY_URI"] == DEAD


def test_the_next_test_does_not_inherit_that_address():
    assert os.environ.get("MLFLOW_TRACKING_URI") != DEAD
    assert os.environ.get("MLFLOW_REGISTRY_URI") != DEAD
    assert mlflow.get_tracking_uri() != DEAD
    assert mlflow.get_registry_uri() != DEAD
