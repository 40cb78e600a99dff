"""The bearer token, and settings read strictly from the environment."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.settings import ServeSettings, load_settings
from tasks.core.errors import DistilleryError

from .serve_helpers import pixels

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def server(serve_module, models):
    return serve_module(models["image"], token=TOKEN)


@pytest.mark.parametrize(
    "method, path",
    [
        ("POST", "/predict"),
        ("POST", "/v2/models/distillery/infer"),
        ("GET", "/v2/models/distillery"),
        ("GET", "/v2"),
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
        ("GET", "/docs"),
        ("POST", "/v2/repository/models/distillery/load"),
    ],
)
def test_every_endpoint_but_health_needs_the_token(server, method, path):
    r = server.client.request(method, path, json={"rows": pixels(1).tolist()})
    assert r.status_code == 401 and r.json()["field"] == "Authorization"
    assert r.headers["www-authenticate"].startswith("Bearer")
    r = server.client.request(
        method, path, json={"rows": pixels(1).tolist()}, headers={"Authorization": "Bearer wrong"}
    )
    assert r.status_code == 401


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/no/such/path"),
        ("DELETE", "/predict"),
        ("GET", "/v2/models/x/y/z"),
        ("POST", "/v2/health/live/../../predict"),
    ],
)
def test_unknown_paths_and_methods_answer_401_before_404_or_405(server, method, path):
    r = server.client.request(method, path)
    assert r.status_code == 401 and r.json()["field"] == "Authorization"
    r = server.client.request(method, path, headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code in (404, 405)


@pytest.mark.parametrize("header", [f"bearer {TOKEN}", f"BEARER {TOKEN}", f"Bearer  {TOKEN}"])
def test_the_bearer_scheme_is_case_insensitive(server, header):
    assert server.predict(pixels(1).tolist(), headers={"Authorization": header}).status_code == 200


@pytest.mark.parametrize("header", [f"Basic {TOKEN}", TOKEN, f"Bearer{TOKEN}", "Bearer", f"Bearer {TOKEN}x"])
def test_other_schemes_and_mangled_tokens_are_refused(server, header):
    assert server.predict(pixels(1).tolist(), headers={"Authorization": header}).status_code == 401


def test_health_needs_no_token(server):
    assert server.client.get("/v2/health/live").status_code == 200
    assert server.client.get("/v2/health/ready").status_code == 200


def test_the_token_opens_the_door(server):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert server.predict(pixels(1).tolist(), headers=auth).status_code == 200
    assert server.client.get("/metrics", headers=auth).status_code == 200
    assert server.client.get("/openapi.json", headers=auth).json()["security"] == [{"bearer": []}]


def test_defaults_bind_loopback_and_follow_the_champion_alias(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outside a project: the generic name
    settings = load_settings({})
    assert settings == ServeSettings()
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.model == "models:/distillery@champion" and settings.registry
    assert settings.log_dir == "logs/predictions" and not settings.token


def test_in_a_project_the_default_follows_that_datasets_champion(tmp_path, monkeypatch):
    """One registered model per dataset: the server follows the one the project's params name."""
    import yaml

    params = yaml.safe_load((Path(__file__).resolve().parents[2] / "params.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    params["data"].update(source="csv", path="/home/me/My Credit.csv", target="default")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert load_settings({}).model == "models:/distillery-my-credit@champion"
    params["select"]["registered_model"] = "fraud"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert load_settings({}).model == "models:/fraud@champion"
    assert load_settings({"DISTILLERY_SERVE_MODEL": "models:/x/3"}).model == "models:/x/3"


@pytest.mark.parametrize(
    "env, named",
    [
        ({"DISTILLERY_SERVE_PORT": "eighty"}, "DISTILLERY_SERVE_PORT='eighty': must be an integer"),
        ({"DISTILLERY_SERVE_PORT": "70000"}, "DISTILLERY_SERVE_PORT='70000': must be between 1 and 65535"),
        ({"DISTILLERY_SERVE_MAX_WAIT_MS": "-1"}, "DISTILLERY_SERVE_MAX_WAIT_MS='-1': must be >= 0"),
        (
            {"DISTILLERY_SERVE_REQUEST_TIMEOUT_S": "nan"},
            "DISTILLERY_SERVE_REQUEST_TIMEOUT_S='nan': must be a finite number",
        ),
        ({"DISTILLERY_SERVE_ACCESS_LOG": "maybe"}, "DISTILLERY_SERVE_ACCESS_LOG='maybe': must be true or false"),
        ({"DISTILLERY_SERVE_PROT": "8000"}, "unknown setting DISTILLERY_SERVE_PROT"),
        (
            {"DISTILLERY_SERVE_TOKEN": "a", "DISTILLERY_SERVE_TOKEN_FILE": "/x"},
            "TOKEN and DISTILLERY_SERVE_TOKEN_FILE are both set",
        ),
    ],
)
def test_bad_settings_are_named(env, named):
    with pytest.raises(DistilleryError, match=named.replace("(", r"\(").replace("[", r"\[")):
        load_settings(env)


def _run(env: dict, cwd) -> subprocess.CompletedProcess:
    import os

    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DISTILLERY_SERVE_", "MLFLOW_"))}
    return subprocess.run(
        [sys.executable, "-m", "deploy.server"],
        env={**clean, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_server_exits_2_on_a_bad_setting_or_model_without_a_traceback(tmp_path, models, empty_registry):
    out = _run({"DISTILLERY_SERVE_PORT": "x"}, tmp_path)
    assert out.returncode == 2 and "DISTILLERY_SERVE_PORT='x'" in out.stderr and "Traceback" not in out.stderr
    out = _run({"DISTILLERY_SERVE_MODEL": str(tmp_path / "missing.onnx")}, tmp_path)
    assert out.returncode == 2 and "missing.onnx: model file not found" in out.stderr
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    out = _run({"DISTILLERY_SERVE_MODEL": str(tmp_path / "junk.onnx")}, tmp_path)
    assert out.returncode == 2 and "onnxruntime cannot load it" in out.stderr and "Traceback" not in out.stderr
    # The default source, in a folder where no pipeline has run: say so, and create no empty mlflow.db.
    out = _run({}, tmp_path)
    assert out.returncode == 2 and "nothing is registered yet. Run `make run` first" in out.stderr
    assert "MLFLOW_TRACKING_URI=sqlite:///mlflow.db" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "mlflow.db").exists()
    # A registry with nothing registered in it: the same advice.
    shutil.copyfile(empty_registry, tmp_path / "mlflow.db")
    out = _run({}, tmp_path)
    assert out.returncode == 2 and "models:/distillery@champion: cannot resolve the alias" in out.stderr
    assert "run `make run` first" in out.stderr and "Traceback" not in out.stderr
    (tmp_path / "mlflow.db").unlink()
    out = _run({"DISTILLERY_SERVE_MODEL": "models:/x@"}, tmp_path)
    assert out.returncode == 2 and "models:/<name>@<alias>" in out.stderr
    (tmp_path / "file").write_text("")
    out = _run(
        {"DISTILLERY_SERVE_MODEL": str(models["image"]), "DISTILLERY_SERVE_LOG_DIR": str(tmp_path / "file" / "logs")},
        tmp_path,
    )
    assert out.returncode == 2 and "DISTILLERY_SERVE_LOG_DIR=" in out.stderr and "Traceback" not in out.stderr


def test_help_lists_every_setting(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "deploy.server", "--help"], capture_output=True, text=True, cwd=tmp_path, timeout=60
    )
    assert out.returncode == 0
    for name in (
        "DISTILLERY_SERVE_PORT",
        "DISTILLERY_SERVE_MAX_BATCH",
        "DISTILLERY_SERVE_TOKEN",
        "MLFLOW_TRACKING_URI",
    ):
        assert name in out.stdout
