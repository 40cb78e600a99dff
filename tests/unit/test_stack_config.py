"""stack/services.py settings: ports and state from the environment, and the
.stack.env a client sources. The services themselves: tests/e2e/test_stack.py."""

from __future__ import annotations

import pytest

from stack.services import Stack, write_env_file
from tasks.core.errors import DistilleryError


def test_ports_and_state_come_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DISTILLERY_STACK_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("DISTILLERY_STACK_MLFLOW_PORT", "15000")
    stack = Stack.from_env()
    assert stack.state == (tmp_path / "state").resolve()
    assert stack.ports == {"postgres": 5433, "s3": 9000, "mlflow": 15000, "prefect": 4200}
    assert stack.mlflow_url == "http://127.0.0.1:15000"


def test_a_bad_port_names_the_variable(monkeypatch):
    monkeypatch.setenv("DISTILLERY_STACK_S3_PORT", "nine")
    with pytest.raises(DistilleryError, match="DISTILLERY_STACK_S3_PORT='nine' is not a port number"):
        Stack.from_env()


def test_the_env_file_points_every_client_at_the_stack(tmp_path):
    stack = Stack(tmp_path, {"postgres": 1, "s3": 2, "mlflow": 3, "prefect": 4})
    write_env_file(stack, tmp_path / ".stack.env")
    exported = dict(
        line.removeprefix("export ").split("=", 1)
        for line in (tmp_path / ".stack.env").read_text().splitlines()
        if line.startswith("export ")
    )
    assert exported["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:3"
    assert exported["PREFECT_API_URL"] == "http://127.0.0.1:4/api"
    assert exported["MLFLOW_S3_ENDPOINT_URL"] == exported["AWS_ENDPOINT_URL_S3"] == "http://127.0.0.1:2"
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"} <= set(exported)
