"""tasks/select.py register, the baseline lookup and the evaluation gate: a real MLflow registry in a temp folder."""

from __future__ import annotations

import mlflow
import onnx
import pytest
import torch
from mlflow import MlflowClient

from tasks.core.params import MlflowParams, SelectParams
from tasks.core.provenance import sha256_file
from tasks.ml.models import CNN
from tasks.onnx.export import export_onnx, set_metadata
import numpy as np

from tasks.select import CHAMPION_ALIAS, current_champion_quality, gate_failures, register

from conftest import tiny_spec

SELECT = SelectParams(max_f1_drop=0.01, precisions=("int8",), speed_key="latency_ms_b256", registered_model="tiny",
                      min_macro_f1=0.9, min_r2=0.3, max_ece=0.1, max_drop_vs_champion=0.02,
                      max_size_bytes=None, max_latency_ms=None)
SCORES = {"macro_f1": 0.95, "ece": 0.02, "accuracy": 0.96}


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

    v1 = register(first, "student.int8", {"git_commit": "abc123", "data_hash": "hash0"}, SCORES, SELECT, registry, True)
    v2 = register(second, "teacher.int8", {"git_commit": "abc123", "data_hash": "hash1"}, SCORES, SELECT, registry, True)
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


def test_a_version_that_fails_the_gate_is_registered_without_the_alias(registry, tmp_path):
    first = onnx_file(tmp_path / "first.onnx", seed=0)
    second = onnx_file(tmp_path / "second.onnx", seed=1)
    register(first, "student.int8", {"data_hash": "h"}, SCORES, SELECT, registry, True)
    v2 = register(second, "teacher.int8", {"data_hash": "h"}, {**SCORES, "macro_f1": 0.5}, SELECT, registry, False)
    client = MlflowClient()
    assert str(client.get_model_version_by_alias("tiny", CHAMPION_ALIAS).version) == "1"
    assert client.get_model_version("tiny", v2).tags["gate"] == "failed"
    assert client.get_model_version("tiny", v2).tags["quality"] == "0.500000"


def test_current_champion_quality_is_measured_on_the_given_split(registry, tmp_path):
    from tasks.evaluation.metrics import classification_metrics
    from tasks.onnx.export import run_batches, session

    classes = [str(i) for i in range(3)]
    path = onnx_file(tmp_path / "first.onnx", seed=0)
    set_metadata(path, {"classes": classes, "input_spec": {"shape": [-1, 1, 8, 8]}})
    assert current_champion_quality(SELECT, np.zeros((2, 1, 8, 8), np.float32), np.zeros(2, int), classes) is None  # none yet
    register(path, "student.int8", {}, SCORES, SELECT, registry, True)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 16, (40, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 3, 40)
    expected = classification_metrics(run_batches(session(path), x), y, classes)["macro_f1"]
    assert current_champion_quality(SELECT, x, y, classes) == pytest.approx(expected)
    # Another dataset's classes: not a comparable baseline.
    assert current_champion_quality(SELECT, x, y, ["x", "y", "z"]) is None


@pytest.mark.parametrize(
    ("scores", "baseline", "expected"),
    [
        ({"macro_f1": 0.95, "ece": 0.02}, None, []),
        ({"macro_f1": 0.85, "ece": 0.02}, None, ["macro_f1 0.8500 < select.min_macro_f1 0.9 (short by 0.0500)"]),
        ({"macro_f1": 0.95, "ece": 0.25}, None, ["ece 0.2500 > select.max_ece 0.1 (over by 0.1500)"]),
        ({"macro_f1": 0.95, "ece": 0.02}, 0.96, []),
        ({"macro_f1": 0.92, "ece": 0.02}, 0.96, ["macro_f1 0.9200 is 0.0400 below the current champion's 0.9600, "
                                                   "more than select.max_drop_vs_champion 0.02"]),
    ],
)
def test_gate_failures_say_which_threshold_and_by_how_much(scores, baseline, expected):
    assert gate_failures(scores, SELECT, baseline) == expected
