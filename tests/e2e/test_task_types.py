"""Every task type through the whole DAG (`dvc repro`) on bundled data, tiny settings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import yaml

from test_flow import make_project

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(
    ("source", "task", "output", "width"),
    [
        ("diabetes", "regression", "prediction", 1),
        ("breast_cancer", "binary", "probabilities", 2),
        ("digits", "multilabel", "probabilities", 3),
    ],
)
def test_task_type_runs_to_a_champion_with_its_metrics(tmp_path: Path, source: str, task: str, output: str,
                                                       width: int) -> None:
    root = make_project(tmp_path, source=source)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["task"]["type"] = task
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    bin_dir = str(Path(sys.executable).parent)
    done = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=root, capture_output=True, text=True,
                          env={"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)}, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    evaluation = json.loads((root / "reports/evaluation.json").read_text())
    assert evaluation["task"] == task
    teacher = evaluation["candidates"]["teacher.fp32"]
    if task == "regression":
        assert {"mae", "mape", "mse", "rmse", "r2", "d2", "median_absolute_error", "max_error"} <= set(teacher)
        assert (root / "reports/plots/residuals_teacher.fp32.png").exists()
    elif task == "multilabel":
        assert {"samples_f1", "hamming_loss", "micro_f1"} <= set(teacher)
        assert set(teacher["per_class"]) >= {"even", "large", "loop", "samples avg"}
    else:
        assert teacher["roc_auc"]["auc"] is not None and "ece_before_scaling" in teacher

    metrics = json.loads((root / "reports/metrics.json").read_text())
    session = ort.InferenceSession(str(root / "models/champion.onnx"), providers=["CPUExecutionProvider"])
    with np.load(root / "data/processed/test.npz") as test:
        x = test["x"][:4]
    (result,) = session.run([output], {session.get_inputs()[0].name: x})
    assert result.shape == (4, width)
    assert metrics["task"] == task
