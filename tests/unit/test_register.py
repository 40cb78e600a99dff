"""tasks/select.py register_champion: a real MLflow registry in a temp folder."""

from __future__ import annotations

import mlflow
import onnx
import pytest
import torch
from mlflow import MlflowClient

from tasks.config import MlflowParams, SelectParams
from tasks.core import sha256_file
from tasks.models import CNN
from tasks.onnx_utils import export_onnx, set_metadata
from tasks.select import CHAMPION_ALIAS, register_champion

from conftest import tiny_spec

SELECT = SelectParams(max_f1_drop=0.01, precisions=("int8",), speed_key="latency_ms_b256", registered_model="tiny")


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """A throwaway sqlite registry; MLflow's artifact folder lands in tmp_path too."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    yield MlflowParams(tracking_uri="sqlite:///never-used.db", experiment="unit")
    if mlflow.active_run():
        mlflow.end_run()


def onnx_file(path, seed: int):
    torch.manual_seed(seed)
    export_onnx(CNN(tiny_spec()).eval(), (1, 8, 8), path, opset=17)
    set_metadata(path, {"git_commit": "abc123", "data_hash": f"hash{seed}"})
    return path


def test_register_creates_versions_and_moves_the_champion_alias(registry, tmp_path):
    first = onnx_file(tmp_path / "first.onnx", seed=0)
    second = onnx_file(tmp_path / "second.onnx", seed=1)

    v1 = register_champion(first, "student.int8", {"git_commit": "abc123", "data_hash": "hash0"}, SELECT, registry)
    v2 = register_champion(second, "teacher.int8", {"git_commit": "abc123", "data_hash": "hash1"}, SELECT, registry)
    assert (v1, v2) == ("1", "2")
    assert (tmp_path / "mlruns").is_dir()  # MLflow artifacts stay under the temp cwd

    assert mlflow.get_tracking_uri().endswith("mlflow.db") and "never-used" not in mlflow.get_tracking_uri()
    client = MlflowClient()
    champion = client.get_model_version_by_alias("tiny", CHAMPION_ALIAS)
    assert str(champion.version) == "2"
    assert champion.tags["candidate"] == "teacher.int8"
    assert champion.tags["sha256"] == sha256_file(second)
    assert champion.tags["data_hash"] == "hash1"
    assert champion.tags["git_commit"] == "abc123"
    assert client.get_model_version("tiny", "1").tags["sha256"] == sha256_file(first)

    # What the registry serves is the file that was promoted.
    served = mlflow.onnx.load_model(f"models:/tiny@{CHAMPION_ALIAS}")
    assert served.graph.SerializeToString() == onnx.load(str(second)).graph.SerializeToString()
    run = client.get_run(champion.run_id)
    assert run.data.tags["stage"] == "select"
