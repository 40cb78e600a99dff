"""The user's data kept outside the project, as most users keep it: an
absolute path with spaces (a CSV) and a relative path with `..` (a Quick
Draw folder). The whole DAG runs (`dvc repro`), the champion is registered
with lineage tags MLflow accepts under the dataset's own registered model,
and `tasks.trace`'s reading of those tags finds the data again."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from e2e_helpers import dvc as _dvc
from e2e_helpers import make_project, set_params

pytestmark = pytest.mark.e2e


def _registered(root: Path, name: str):
    from mlflow import MlflowClient

    from tasks.contracts.registry import lineage_hashes

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    version = client.get_model_version_by_alias(name, "champion")
    return version, lineage_hashes(version.tags)


def test_a_csv_at_an_absolute_path_with_spaces(tmp_path: Path) -> None:
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame.sample(240, random_state=0)
    frame["target"] = frame["target"].map({0: "malignant", 1: "benign"})
    table = tmp_path / "my data" / "Breast Cancer.csv"
    table.parent.mkdir()
    frame.to_csv(table, index=False)
    root = make_project(tmp_path / "project")
    set_params(root, "data", source="csv", path=str(table), target="target")
    _dvc(root, "repro")
    version, hashes = _registered(root, "distillery-breast-cancer")  # one registered model per dataset
    assert hashes[str(table)]  # dvc.lock's md5 of the user's file, under a key MLflow accepted
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    ingest_deps = {d["path"]: d["md5"] for d in lock["stages"]["ingest"]["deps"]}
    assert hashes[str(table)] == ingest_deps[str(table)]
    assert version.tags["sha256"] and version.tags["gate"] == "passed"


def test_a_quickdraw_folder_at_a_relative_path_outside_the_project(tmp_path: Path) -> None:
    from tasks.doodles import make_doodles

    classes = ("circle", "square", "triangle")
    make_doodles(tmp_path / "drawings", count=150, seed=0, classes=classes)
    root = make_project(tmp_path / "project")
    set_params(
        root,
        "data",
        source="quickdraw",
        path="../drawings",
        quickdraw={"classes": list(classes), "samples_per_class": {c: 150 for c in classes}},
    )
    _dvc(root, "repro")
    version, hashes = _registered(root, "distillery-drawings")
    assert hashes["../drawings"]
    # tasks.trace finds a run's data by dvc.lock's md5 of data/processed: the tag holds the lock's.
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    outs = {o["path"]: o["md5"] for o in lock["stages"]["preprocess"]["outs"]}
    assert hashes["data/processed"] == outs["data/processed"]
    # The console summary and trace read the same registry: the version the alias holds.
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from pathlib import Path; from flows.report import console_summary;"
            "print('\\n'.join(console_summary(Path('.').resolve())))",
        ],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert f"registry: distillery-drawings version {version.version}, alias @champion" in done.stdout, done.stderr
