"""Every task type through the whole DAG, tiny settings, the way the README says:
a project that has run (the warm digits project), then `dvc exp run -S
task.type=...` in it. Each experiment must retrain for its task (task.type
reaches every stage that depends on it), and its champion must be served (the
serve tests' Server helper: the real server on loopback). Two experiments read
the user's data where most users keep it, outside the project: a CSV at an
absolute path with spaces, a Quick Draw folder at `../drawings`; their
champions are registered with lineage tags MLflow accepts."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import yaml
from e2e_helpers import dvc as _dvc
from e2e_helpers import git, run
from serve.serve_helpers import Server

from tasks.contracts.onnx import PREDICTION, PROBABILITIES
from tasks.onnx.runtime import check_artifact

pytestmark = pytest.mark.e2e


@contextlib.contextmanager
def served(model: Path) -> Iterator[Server]:
    """The real server (`python -m deploy.server`) on `model`, on loopback, stopped on exit."""
    workdir = model.parents[1] / "serving"  # its log and prediction log, beside the project's outputs
    workdir.mkdir(exist_ok=True)
    server = Server(workdir, model)
    try:
        yield server.wait_ready()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def project(digits_project: Path) -> Path:
    """A project that has run once on its defaults (digits, multiclass)."""
    assert json.loads((digits_project / "reports/selection.json").read_text())["task"] == "multiclass"
    return digits_project


def _evaluation(root: Path) -> dict:
    return json.loads((root / "reports/evaluation.json").read_text())


def test_multilabel_experiment_retrains_every_stage_for_the_new_task(project: Path) -> None:
    before = (project / "data/processed/meta.json").read_text()
    _dvc(project, "exp", "run", "-S", "task.type=multilabel")
    meta = json.loads((project / "data/processed/meta.json").read_text())
    assert meta["task"] == "multilabel" and meta["classes"] == ["even", "large", "loop"]
    assert (project / "data/processed/meta.json").read_text() != before
    teacher = _evaluation(project)["candidates"]["teacher.fp32"]
    assert {"samples_f1", "hamming_loss", "micro_f1"} <= set(teacher)
    assert set(teacher["per_class"]) >= {"even", "large", "loop", "samples avg"}
    metadata, signature, session = check_artifact(project / "models/champion.onnx")
    assert metadata.task == "multilabel" and signature.outputs[-1] == (PROBABILITIES, (3,))
    with np.load(project / "data/processed/test.npz") as test:
        x = test["x"][:8]
    (probabilities,) = session.run([PROBABILITIES], {signature.input_name: x})
    assert ((probabilities >= 0) & (probabilities <= 1)).all()
    with served(project / "models/champion.onnx") as server:
        answer = server.predict(x[:2].tolist()).json()
    assert answer["task"] == "multilabel"
    for row, probs in zip(answer["predictions"], probabilities[:2]):
        assert row["labels"] == [name for name, p in zip(["even", "large", "loop"], probs) if p >= metadata.threshold]


def test_binary_experiment_on_a_csv_at_an_absolute_path_with_spaces(project: Path, tmp_path: Path) -> None:
    """The user's table kept outside the project, as most users keep it: the champion is registered (and
    promoted, as asked) under the dataset's own model name, with lineage tags MLflow accepts."""
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame.sample(240, random_state=0)
    frame["target"] = frame["target"].map({0: "malignant", 1: "benign"})
    table = tmp_path / "my data" / "Breast Cancer.csv"
    table.parent.mkdir()
    frame.to_csv(table, index=False)
    data = ["-S", "data.source=csv", "-S", f"data.path='{table}'", "-S", "data.target=target"]
    _dvc(project, "exp", "run", "-S", "task.type=binary", *data, "-S", "select.promote=true")
    teacher = _evaluation(project)["candidates"]["teacher.fp32"]
    assert teacher["roc_auc"]["auc"] is not None and "ece_before_scaling" in teacher
    metadata, signature, _ = check_artifact(project / "models/champion.onnx")
    assert metadata.task == "binary" and set(metadata.classes) == {"benign", "malignant"}
    assert signature.outputs[-1] == (PROBABILITIES, (2,))
    version, hashes = _registered(project, "distillery-breast-cancer")  # one registered model per dataset
    assert hashes[str(table)]  # dvc.lock's md5 of the user's file, under a key MLflow accepted
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    ingest_deps = {d["path"]: d["md5"] for d in lock["stages"]["ingest"]["deps"]}
    assert hashes[str(table)] == ingest_deps[str(table)]
    assert version.tags["sha256"] and version.tags["gate"] == "passed"
    git(project, "checkout", "--", "params.yaml")  # the next experiments start from the project's own data settings


def test_regression_experiment_gives_a_champion_a_v2_client_can_query(project: Path) -> None:
    done = run(
        [sys.executable, "-m", "dvc", "exp", "run", "-S", "task.type=regression", "-S", "data.source=diabetes"], project
    )
    # register logs the pyfunc model without MLflow's advice on our own predict's type hints
    assert "type hints" not in done.stdout + done.stderr, done.stderr[-2000:]
    evaluation = _evaluation(project)
    assert evaluation["task"] == "regression"
    teacher = evaluation["candidates"]["teacher.fp32"]
    assert {"mae", "mape", "mse", "rmse", "r2", "d2", "median_absolute_error", "max_error"} <= set(teacher)
    assert (project / "reports/plots/residuals_teacher.fp32.png").exists()
    # The report stage refreshed the page a user opens: this experiment's champion, not the last run's.
    selection = json.loads((project / "reports/selection.json").read_text())
    quality = selection["candidates"][selection["champion"]]["quality"]
    assert f"R^2<b id=champion-quality>{quality:.4f}</b>" in (project / "reports/index.html").read_text()
    metadata, signature, session = check_artifact(project / "models/champion.onnx")
    assert metadata.task == "regression" and signature.outputs == ((PREDICTION, (1,)),)
    with np.load(project / "data/processed/test.npz") as test:
        x = test["x"][:3].astype(np.float32)
    (expected,) = session.run([PREDICTION], {signature.input_name: x})
    with served(project / "models/champion.onnx") as server:
        described = server.client.get("/v2/models/distillery").json()
        assert described["parameters"]["task"] == "regression"
        assert [o["name"] for o in described["outputs"]] == [PREDICTION]
        reply = server.infer(x, input_name=signature.input_name)
        rows = [dict.fromkeys(metadata.preprocessing.encoder.columns)]  # every column missing: imputed
        predicted = server.predict(rows)
    assert reply.status_code == 200, reply.text
    (output,) = reply.json()["outputs"]
    assert output["name"] == PREDICTION and output["shape"] == [3, 1]
    np.testing.assert_allclose(output["data"], expected.ravel(), rtol=1e-5)
    assert predicted.status_code == 200, predicted.text
    (value,) = predicted.json()["predictions"]
    assert set(value) == {"value", "unseen"} and np.isfinite(value["value"])
    assert value["unseen"] == []  # every column is a number: no category to be unseen


def test_a_quick_draw_folder_of_ten_imbalanced_classes_outside_the_project(project: Path) -> None:
    """10 classes of 28x28 doodles in Quick Draw's own file format, one rare
    class, in a folder beside the project (`../drawings`), through the same DAG:
    ingest reads every class, export's int8 convs run as onnxruntime integer
    kernels, the champion is the fastest qualifying candidate of every precision
    on the Pareto front, served, and registered with lineage tags that
    `tasks.trace` and the console read back."""
    from tasks.doodles import CLASSES, make_doodles

    # 1,300 doodles, one rare class: what the DAG does with ten classes of 28x28, not how well it learns them.
    counts = {name: 40 if name == "star" else 80 + 10 * i for i, name in enumerate(CLASSES)}
    make_doodles(project.parent / "drawings", {name: n + 10 for name, n in counts.items()}, seed=1)
    # task.type too: an earlier experiment in this project leaves its own in params.yaml.
    _dvc(
        project,
        "exp",
        "run",
        "-S",
        "task.type=multiclass",
        "-S",
        "data.source=quickdraw",
        "-S",
        "data.path=../drawings",
        "-S",
        f"data.quickdraw.classes=[{','.join(CLASSES)}]",
        # Hydra syntax, as in the README: replace the mapping (`~` then `+`), not merge into it.
        "-S",
        "~data.quickdraw.samples_per_class",
        "-S",
        "+data.quickdraw.samples_per_class={" + ",".join(f"{k}:{v}" for k, v in counts.items()) + "}",
        "-S",
        "select.promote=true",
    )
    meta = json.loads((project / "data/processed/meta.json").read_text())
    assert meta["classes"] == list(CLASSES) and meta["input_shape"] == [1, 28, 28]
    quality = json.loads((project / "reports/data_quality.json").read_text())
    assert sum(quality["balance"]["counts"].values()) == sum(counts.values())
    export = json.loads((project / "reports/export.json").read_text())
    assert export["teacher"]["int8_kernels"].get("QLinearConv", 0) >= 1
    compression = json.loads((project / "reports/compression.json").read_text())
    rows = {row["name"]: row for row in compression["candidates"]}
    assert {row["precision"] for row in rows.values()} == {"fp32", "int8"}
    key, champion = compression["speed_key"], compression["champion"]
    qualifying = [name for name, row in rows.items() if row["quality"] >= compression["quality_floor"]]
    assert champion == min(qualifying, key=lambda name: rows[name][key])
    assert champion in compression["pareto_front"]
    assert set(_evaluation(project)["candidates"][champion]["per_class"]) >= set(CLASSES)
    with np.load(project / "data/processed/test.npz") as test:
        x = test["x"][:4]
    with served(project / "models/champion.onnx") as server:
        answer = server.predict(x.tolist()).json()
    assert {row["class"] for row in answer["predictions"]} <= set(CLASSES)

    version, hashes = _registered(project, "distillery-drawings")
    assert hashes["../drawings"]
    # tasks.trace finds a run's data by dvc.lock's md5 of data/processed: the tag holds the lock's.
    lock = yaml.safe_load((project / "dvc.lock").read_text())
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
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert f"registry: distillery-drawings version {version.version}, alias @champion" in done.stdout, done.stderr


def _registered(root: Path, name: str):
    from mlflow import MlflowClient

    from tasks.contracts.registry import lineage_hashes

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    version = client.get_model_version_by_alias(name, "champion")
    return version, lineage_hashes(version.tags)
