"""`train.nproc_per_node: 2` for real: the train and distill stages relaunch
themselves under torchrun (2 processes, gloo on this CPU), rank 0 saves a
model that loads, exports and scores like the single-process one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from e2e_helpers import copy_project, make_project, run

from tasks.onnx.runtime import check_artifact

pytestmark = pytest.mark.e2e


def _run(root: Path, *argv: str) -> subprocess.CompletedProcess:
    return run([sys.executable, *argv], root)


def _set(root: Path, **sections: dict) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    for section, values in sections.items():
        params[section].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_two_processes_train_a_model_as_good_as_one(tmp_path_factory, warm_digits):
    root = copy_project(warm_digits, tmp_path_factory.mktemp("ddp") / "project", registry=False)
    # Enough epochs that quality means something (the tiny defaults stop at 3).
    _set(root, train={"max_epochs": 12, "patience": 5}, distill={"max_epochs": 6, "patience": 5})
    _run(root, "-m", "dvc", "repro", "train")
    single = json.loads((root / "reports/train.json").read_text())
    _set(root, train={"nproc_per_node": 2}, distill={"nproc_per_node": 2})
    done = _run(root, "-m", "tasks.train")
    assert done.stderr.count("teacher:") >= 1  # rank 0's progress bar...
    distributed = json.loads((root / "reports/train.json").read_text())
    assert distributed != single  # ...and a run that really happened (another sharding of each epoch)
    assert abs(distributed["val_quality"] - single["val_quality"]) <= 0.02
    _run(root, "-m", "tasks.distill")  # the student too, from the 2-process teacher
    _run(root, "-m", "tasks.export")
    for name in ("teacher", "student"):
        metadata, _, _ = check_artifact(root / f"models/onnx/{name}.fp32.onnx")
        assert metadata.classes == tuple(str(d) for d in range(10))


def test_a_failing_rank_fails_the_stage_naming_the_setting(tmp_path_factory):
    root = make_project(tmp_path_factory.mktemp("ddp_fail"))
    _set(root, train={"nproc_per_node": 2})
    # No processed data yet: every rank fails; torchrun's exit is reported with the key.
    bin_dir = str(Path(sys.executable).parent)
    done = subprocess.run(
        [sys.executable, "-m", "tasks.train"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(root.parent)},
    )
    assert done.returncode == 2
    assert "train: torchrun with train.nproc_per_node=2 processes exited with" in done.stderr
    assert "data/processed" in done.stderr  # the rank's own message comes through
