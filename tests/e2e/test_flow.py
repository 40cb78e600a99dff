"""The whole Prefect flow on tiny settings: `make run` on a fresh git + DVC copy of
the repo (the warm projects of tests/e2e/conftest.py), then, on copies of them,
the flow run again in-process: it skips what is up to date and reruns exactly
what an edit made stale."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from e2e_helpers import make_project

from tasks.contracts.onnx import IMAGE_INPUT, PROBABILITIES, TABLE_INPUT
from tasks.contracts.processed import read_meta
from tasks.core.provenance import sha256_file

pytestmark = pytest.mark.e2e

# The flow's order (flows.common.stage_order; `dvc repro` may order independent stages otherwise).
STAGES = [
    "ingest",
    "validate",
    "preprocess",
    "search",
    "boost",
    "train",
    "distill",
    "prune",
    "export",
    "evaluate",
    "select",
    "register",
    "report",
]


@pytest.fixture(scope="module")
def project(digits_project: Path) -> Path:
    return digits_project


def _run_flow(root: Path) -> list[dict]:
    from flows.pipeline import pipeline

    return pipeline(root=str(root))


def test_flow_end_to_end_then_skips_and_reruns_only_what_changed(
    project: Path, warm_digits: Path, harness, monkeypatch
) -> None:
    import mlflow
    import onnxruntime as ort
    from dvc.repo import Repo
    from mlflow import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # `make run` on the fresh project (the warm build, python -m flows.run) ran every stage, in order.
    log = warm_digits.with_suffix(".log").read_text()
    assert f"pipeline done: ran {STAGES}; skipped 0 up-to-date stage(s)" in log
    # The long stages show how far they are, and with what (tasks/core/progress.py), in the flow's console.
    for bar in (
        "label errors: out-of-fold CNN, 1 epoch(s) per fold: 100%",
        "teacher: 100%",
        "student: 100%",
        "prune: unstructured sweep: 100%",
        "evaluate: scoring the candidates: 100%",
        "evaluate: curves and plots: 100%",
    ):
        assert bar in log, bar

    # The champion is the fastest candidate (every precision competes; the budget is open here),
    # an ONNX that onnxruntime loads and that predicts.
    metrics = yaml.safe_load((project / "reports/selection.json").read_text())
    key = metrics["speed_key"]
    assert metrics["champion"] == min(metrics["candidates"], key=lambda n: metrics["candidates"][n][key])
    champion = project / "models/champion.onnx"
    assert champion.stat().st_size < (project / "models/onnx/teacher.fp32.onnx").stat().st_size
    with np.load(project / "data/processed/test.npz") as test:
        x = test["x"][:5]
    session = ort.InferenceSession(str(champion), providers=["CPUExecutionProvider"])
    probabilities = session.run([PROBABILITIES], {IMAGE_INPUT: x})[0]
    assert probabilities.shape == (5, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-3)

    # MLflow holds the registered version under the alias, tagged with its provenance.
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    version = client.get_model_version_by_alias("distillery-digits", "champion")
    assert version.tags["candidate"] == metrics["champion"]
    assert len(version.tags["git_commit"]) == 40
    data_meta = yaml.safe_load((project / "data/processed/meta.json").read_text())
    assert version.tags["data_hash"] == data_meta["data_hash"]
    assert version.description.startswith(f"# Model card: distillery-digits version {version.version}")
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")  # restored after the test (conftest)
    info = mlflow.models.get_model_info(f"models:/distillery-digits/{version.version}")
    assert info.signature is not None and info.saved_input_example_info is not None

    # One MLflow run for the pipeline run, FINISHED, with every stage's run nested under it.
    experiment = client.get_experiment_by_name("distillery")
    (parent,) = client.search_runs([experiment.experiment_id], "tags.stage = 'pipeline'")
    assert parent.info.status == "FINISHED" and parent.data.tags["stages_ran"] == ",".join(STAGES)
    nested = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    # search is disabled here; select only chooses among evaluate's figures, which evaluate tracked
    assert {r.data.tags["stage"] for r in nested} == set(STAGES) - {"search", "select", "report"}
    assert all(r.data.tags.get("task") or r.data.tags["stage"] == "ingest" for r in nested)
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"index.html", "model_card.md"}

    # DVC agrees nothing is stale but register and report, which always ask the registry; a second flow
    # run skips every other stage, and register finds the same file already registered: no new version.
    with contextlib.chdir(project), Repo(str(project)) as repo:  # DVC names stages relative to the cwd
        assert repo.status() == {"register": ["always changed"], "report": ["always changed"]}
    second = _run_flow(project)
    assert [r["stage"] for r in second if r["ran"]] == ["register", "report"]
    assert [str(v.version) for v in client.search_model_versions("name='distillery-digits'")] == [str(version.version)]

    # Editing any module a stage imports makes exactly the stages that import it stale.
    assert stale_after_editing(project, "tasks/core/provenance.py") == set(STAGES)  # hash_arrays: every stage
    assert stale_after_editing(project, "tasks/core/paths.py") == set(STAGES)
    assert stale_after_editing(project, "tasks/ml/losses.py") == {
        "search",
        "boost",
        "train",
        "distill",
        "prune",
        "export",
        "register",
        "report",
    }
    assert stale_after_editing(project, "tasks/evaluation/plots.py") == set(STAGES[3:])
    # boost and distill run ONNX graphs (tasks/onnx): the boosted model's, the boosted teacher's.
    assert stale_after_editing(project, "tasks/onnx/quantize.py") == {
        "boost",
        "distill",
        "export",
        "evaluate",
        "select",
        "register",
        "report",
    }

    # Changing an evaluate param reruns evaluate and what follows it, nothing before.
    params_file = project / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    params["evaluate"]["latency_rounds"] = 3
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    third = _run_flow(project)
    assert [r["stage"] for r in third if r["ran"]] == ["evaluate", "select", "register", "report"]
    # The same file wins again or another does: a new version only for another file.
    again = yaml.safe_load((project / "reports/selection.json").read_text())
    now = client.get_model_version_by_alias("distillery-digits", "champion")
    assert (now.version == version.version) == (again["champion"] == metrics["champion"])
    assert now.tags["sha256"] == sha256_file(project / "models/champion.onnx")


def stale_after_editing(project: Path, module: str) -> set[str]:
    """Append a comment line to `module`; the stages `dvc status` then calls stale."""
    import contextlib

    from dvc.repo import Repo

    path = project / module
    original = path.read_text()
    path.write_text(original + "# an edit\n")
    try:
        # DVC names stages relative to the working directory: look from inside the project.
        with contextlib.chdir(project), Repo(str(project)) as repo:
            return set(repo.status())
    finally:
        path.write_text(original)


def test_a_missing_data_path_is_exit_2_naming_the_key_before_any_stage(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p", path="data/raw/missing.csv")
    done = subprocess.run(
        [sys.executable, "-m", "flows.pipeline"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "DISTILLERY_PYTHON": sys.executable},
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "'data.path' is 'data/raw/missing.csv'" in done.stderr and "does not exist" in done.stderr
    assert "Retry" not in done.stdout + done.stderr and "Running stage" not in done.stdout


def test_stage_cli_rejects_bad_params_with_exit_2(project: Path) -> None:
    """A stage run by hand exits 2 on bad params, naming key and file, with no traceback."""
    params_file = project / "params.yaml"
    original = params_file.read_text()
    params_file.write_text(original.replace("train:", "train:\n  lrr: 0.1", 1))
    try:
        done = subprocess.run([sys.executable, "-m", "tasks.train"], cwd=project, capture_output=True, text=True)
    finally:
        params_file.write_text(original)
    assert done.returncode == 2
    assert "train.lrr" in done.stderr and "params.yaml" in done.stderr and "did you mean 'lr'" in done.stderr
    assert "Traceback" not in done.stderr


def test_penguins_run_through_the_gate_to_a_registered_champion(warm_penguins: Path) -> None:
    """The messy tabular path: corrections on, quality report written, champion registered."""
    import onnxruntime as ort
    from mlflow import MlflowClient

    root = warm_penguins  # read only: `make run` on the bundled penguins, per-island slices on
    assert f"pipeline done: ran {STAGES}; skipped 0" in root.with_suffix(".log").read_text()

    quality = yaml.safe_load((root / "reports/data_quality.json").read_text())
    assert quality["balance"]["counts"] == {"Adelie": 152, "Gentoo": 124, "Chinstrap": 68}
    assert quality["balance"]["imbalance_ratio"] == pytest.approx(152 / 68)
    assert quality["completeness"]["columns"]["Sex"]["missing"] == 11
    assert quality["uniqueness"]["duplicate_rows"] == 0
    assert quality["representation"]["columns"]["Species"]["renamed"]["Gentoo penguin (Pygoscelis papua)"] == "Gentoo"
    validation = yaml.safe_load((root / "reports/validation.json").read_text())
    assert validation["rows_in"] == validation["rows_valid"] + validation["rows_quarantined"] == 344
    assert (root / "reports/data_docs/index.html").exists()
    assert (root / "reports/quality/missingness.png").stat().st_size > 0

    slices = yaml.safe_load((root / "reports/evaluation.json").read_text())["slices"]
    islands = slices["candidates"]["teacher.fp32"]
    assert slices["column"] == "Island" and set(islands) <= {"Biscoe", "Dream", "Torgersen"}
    test_rows = len(np.load(root / "data/processed/test.npz")["y"])
    assert sum(v["rows"] for v in islands.values()) == test_rows

    # Raw rows -> the shared encoder -> the champion: the serving path, end to end.
    meta = read_meta(root / "data/processed")
    rows = __import__("pandas").read_parquet(root / "data/validated/table.parquet").head(4)
    session = ort.InferenceSession(str(root / "models/champion.onnx"), providers=["CPUExecutionProvider"])
    probabilities = session.run([PROBABILITIES], {TABLE_INPUT: meta.encoder.encode(rows)})[0]
    assert probabilities.shape == (4, 3)
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    tags = client.get_model_version_by_alias("distillery-penguins", "champion").tags
    assert tags["data_hash"] == meta.data_hash and tags["task"] == "multiclass"
