"""tasks/register.py: register, promote, the baseline lookup, the evaluation gate, the
stage's order of writes and its atomic versions: a real MLflow registry in a temp folder."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml
from conftest import REPO_ROOT, image_meta, params_section, tiny_spec
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

import tasks.register as register_stage
import tasks.select as select
from tasks.contracts import reports
from tasks.contracts.processed import X, Y, save_split, write_meta
from tasks.contracts.registry import CHAMPION_ALIAS, SHA256_TAG, onnx_files
from tasks.contracts.reports import EvaluationReport
from tasks.core import paths
from tasks.core.errors import DistilleryError
from tasks.core.io import read_json, write_json
from tasks.core.params import MlflowParams, SelectParams
from tasks.core.provenance import sha256_file
from tasks.export import artifact_metadata, export_candidate
from tasks.ml.models import CNN
from tasks.onnx.export import export_onnx, set_metadata
from tasks.onnx.runtime import read_metadata
from tasks.register import Champion, current_champion, gate_failures, promote, register

SELECT = SelectParams(
    max_quality_drop=0.01,
    precisions=("int8",),
    speed_key="latency_ms_b256_t1",
    registered_model="tiny",
    min_gain_over_trivial=0.05,
    min_macro_f1=0.9,
    min_r2=0.3,
    max_ece=0.1,
    max_drop_vs_champion=0.02,
    max_size_bytes=None,
    max_latency_ms=None,
    promote=True,
)
SCORES = {"macro_f1": 0.95, "ece": 0.02, "accuracy": 0.96}
META = image_meta(classes=("0", "1", "2"))


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """A throwaway sqlite registry; MLflow's artifact folder lands in tmp_path too."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)  # not the previous test's registry, which mlflow would otherwise keep using
    yield MlflowParams(tracking_uri="sqlite:///never-used.db", experiment="unit")
    if mlflow.active_run():
        mlflow.end_run()


def onnx_file(path, seed: int, meta=META):
    """A tiny CNN's ONNX file that says what export would say about it (data_hash per seed)."""
    torch.manual_seed(seed)
    metadata = artifact_metadata(dataclasses.replace(meta, data_hash=f"hash{seed}"), 0.5)
    export_onnx(
        CNN(tiny_spec(n_classes=len(meta.classes))).eval(), meta.input_shape, path, 17, metadata.input_spec.name
    )
    set_metadata(path, metadata.replace(git_commit="abc123", candidate=path.stem, precision="int8"))
    return path


def test_register_creates_versions_and_promote_moves_the_champion_alias(registry, tmp_path):
    first = onnx_file(tmp_path / "first.onnx", seed=0)
    second = onnx_file(tmp_path / "second.onnx", seed=1)

    v1 = register(first, "student.int8", SCORES, META, "tiny", registry, True, pixels(2, 0))
    v2 = register(second, "teacher.int8", SCORES, META, "tiny", registry, True, pixels(2, 0))
    assert (v1, v2) == ("1", "2")
    assert (tmp_path / "mlruns").is_dir()  # MLflow artifacts stay under the temp cwd

    assert mlflow.get_tracking_uri().endswith("mlflow.db") and "never-used" not in mlflow.get_tracking_uri()
    client = MlflowClient()
    with pytest.raises(MlflowException):  # register never touches the alias
        client.get_model_version_by_alias("tiny", CHAMPION_ALIAS)
    promote("tiny", v2)
    champion = client.get_model_version_by_alias("tiny", CHAMPION_ALIAS)
    assert str(champion.version) == "2"
    assert champion.tags["candidate"] == "teacher.int8"
    assert champion.tags[SHA256_TAG] == sha256_file(second)
    assert champion.tags["data_hash"] == "hash1"
    assert champion.tags["git_commit"] == "abc123"
    assert champion.tags["task"] == META.task
    assert champion.tags["gate"] == "passed"
    assert client.get_model_version("tiny", "1").tags[SHA256_TAG] == sha256_file(first)

    # What the registry serves is the file that was promoted.
    folder = Path(mlflow.artifacts.download_artifacts(f"models:/tiny@{CHAMPION_ALIAS}"))
    [served] = onnx_files(folder)
    assert served.read_bytes() == second.read_bytes()
    run = client.get_run(champion.run_id)
    assert run.data.tags["stage"] == "register"


def test_the_registered_pyfunc_answers_what_predict_answers(registry, tmp_path):
    """mlflow.pyfunc and `mlflow models serve` (its scoring app, here in-process)
    take the rows /predict takes and give its answers; a bad row is a 400 naming it."""

    from fastapi.testclient import TestClient
    from mlflow.pyfunc import scoring_server

    from deploy.model import build_model
    from deploy.protocol import parse_predict, predictions

    path = onnx_file(tmp_path / "first.onnx", seed=0)
    version = register(path, "student.int8", SCORES, META, "tiny", registry, True, pixels(2, 0))
    info = mlflow.models.get_model_info(f"models:/tiny/{version}")
    assert info.signature.inputs.to_dict() == [
        {"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": (-1, 64)}}
    ]
    assert info.saved_input_example_info["type"] == "ndarray"

    rows = np.random.default_rng(3).integers(0, 17, (3, 64)).tolist()  # integers, flat: the README's kind of row
    served = build_model(path.read_bytes(), name="x", version="1", source="test", threads=1, folder=tmp_path)
    expected = predictions(served, served.run(parse_predict({"rows": rows}, served, 10).x)[served.answer])
    pyfunc = mlflow.pyfunc.load_model(f"models:/tiny/{version}")
    got = pyfunc.predict(np.asarray(rows, np.float32))
    assert [g["class"] for g in got] == [e["class"] for e in expected]
    assert [g["probability"] for g in got] == pytest.approx([float(e["probability"]) for e in expected], abs=1e-6)

    client = TestClient(scoring_server.init(pyfunc))
    answer = client.post("/invocations", json={"inputs": rows})
    assert answer.status_code == 200, answer.text
    assert [p["class"] for p in answer.json()["predictions"]] == [e["class"] for e in expected]
    bad = client.post("/invocations", json={"inputs": [[0] * 63]})
    assert bad.status_code == 400 and "64" in bad.text, bad.text


def test_a_version_that_fails_the_gate_is_registered_without_the_alias(registry, tmp_path):
    first = onnx_file(tmp_path / "first.onnx", seed=0)
    second = onnx_file(tmp_path / "second.onnx", seed=1)
    promote("tiny", register(first, "student.int8", SCORES, META, "tiny", registry, True, pixels(2, 0)))
    v2 = register(second, "teacher.int8", {**SCORES, "macro_f1": 0.5}, META, "tiny", registry, False, pixels(2, 0))
    client = MlflowClient()
    assert str(client.get_model_version_by_alias("tiny", CHAMPION_ALIAS).version) == "1"
    assert client.get_model_version("tiny", v2).tags["gate"] == "failed"
    assert client.get_model_version("tiny", v2).tags["quality"] == "0.500000"


def test_current_champion_quality_is_measured_on_the_given_split(registry, tmp_path):
    from tasks.contracts.onnx import PROBABILITIES
    from tasks.evaluation.metrics import classification_metrics
    from tasks.onnx.runtime import run_batches, session

    classes = list(META.classes)
    path = onnx_file(tmp_path / "first.onnx", seed=0)
    assert current_champion("tiny", np.zeros((2, 1, 8, 8), np.float32), np.zeros(2, int), META) is None  # none yet
    version = register(path, "student.int8", SCORES, META, "tiny", registry, True, pixels(2, 0))
    assert current_champion("tiny", np.zeros((2, 1, 8, 8), np.float32), np.zeros(2, int), META) is None  # no alias
    promote("tiny", version)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 16, (40, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 3, 40)
    expected = classification_metrics(run_batches(session(path), x, output=PROBABILITIES), y, classes)["macro_f1"]
    champion = current_champion("tiny", x, y, META)
    assert champion == Champion(version, sha256_file(path), pytest.approx(expected))
    # Another dataset's classes, or another task: the champion, but no comparable baseline.
    other = current_champion("tiny", x, y, image_meta(classes=("x", "y", "z")))
    assert other == Champion(version, sha256_file(path), None)
    multilabel = current_champion(
        "tiny", x, np.zeros((40, 3), np.float32), image_meta(task="multilabel", classes=META.classes)
    )
    assert multilabel == Champion(version, sha256_file(path), None)


@pytest.mark.parametrize(
    ("scores", "baseline", "expected"),
    [
        ({"macro_f1": 0.95, "ece": 0.02}, None, []),
        ({"macro_f1": 0.85, "ece": 0.02}, None, ["macro_f1 0.8500 < select.min_macro_f1 0.9 (short by 0.0500)"]),
        ({"macro_f1": 0.95, "ece": 0.25}, None, ["ece 0.2500 > select.max_ece 0.1 (over by 0.1500)"]),
        ({"macro_f1": 0.95, "ece": 0.02}, 0.96, []),
        (
            {"macro_f1": 0.92, "ece": 0.02},
            0.96,
            [
                "macro_f1 0.9200 is 0.0400 below the current champion's 0.9600, "
                "more than select.max_drop_vs_champion 0.02"
            ],
        ),
    ],
)
def test_gate_failures_say_which_threshold_and_by_how_much(scores, baseline, expected):
    assert gate_failures(scores, SELECT, baseline) == expected


# --- The select and register stages (their main()) in a temp project ----------------------------------------

EXPORT = params_section("export", opset=17, atol=1e-4, calibration_samples=16, per_channel=True)
EVALUATE = params_section(
    "evaluate", threads=1, latency_threads=(1,), latency_seconds=0.05, latency_rounds=2, ece_bins=5
)


def write_params(**select_changes) -> None:
    """The repo's params.yaml with a lenient gate, registering under 'tiny'; int8
    only, so which file wins does not hang on a latency race between precisions."""
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["select"].update(
        {
            "registered_model": "tiny",
            "max_quality_drop": 1.0,
            "min_gain_over_trivial": -1.0,  # random pixels and labels: no signal to beat guessing with
            "min_macro_f1": 0.0,
            "max_ece": 1.0,
            "max_drop_vs_champion": 1.0,
            "precisions": ["int8"],
            **select_changes,
        }
    )
    paths.PARAMS.write_text(yaml.safe_dump(params, sort_keys=False))


def pixels(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 16, (n, 1, 8, 8)).astype(np.float32)


def labels(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 3, n)


def prepare_candidates(seed: int) -> None:
    """What the stages before select leave: data/processed, models/onnx (export's
    teacher.fp32 and teacher.int8), reports/export.json and reports/evaluation.json."""
    meta = dataclasses.replace(META, data_hash=f"data{seed}")
    write_meta(meta, paths.PROCESSED)
    for i, name in enumerate(("train", "val", "test")):
        save_split(name, {X: pixels(30, 10 * i), Y: labels(30, 10 * i + 1)}, paths.PROCESSED)
    from tasks.contracts.processed import load_split

    torch.manual_seed(seed)
    model = CNN(tiny_spec(n_classes=len(meta.classes))).eval()
    paths.ONNX_DIR.mkdir(parents=True, exist_ok=True)
    train_x, _ = load_split("train")
    figures = export_candidate(
        "teacher",
        model,
        load_split("val"),
        train_x[:16],
        artifact_metadata(meta, EXPORT.label_threshold),
        EXPORT,
        paths.ONNX_DIR,
    )
    write_json(paths.EXPORT_REPORT, {"teacher": figures})

    from tasks.evaluate import candidate_files, evaluate_candidate, measure_latency

    x, y = load_split("test")
    files = candidate_files(paths.ONNX_DIR)
    candidates = {name: evaluate_candidate(path, x, y, meta, EVALUATE) for name, path in files.items()}
    for name, latency in measure_latency(files, x, EVALUATE).items():
        candidates[name].update(latency)
    assert set(candidates) == {"teacher.fp32", "teacher.int8"}
    reports.write(EvaluationReport(task=meta.task, test_rows=len(y), latency_threads=(1,), candidates=candidates))


def versions(name: str = "tiny") -> list[str]:
    return sorted(str(v.version) for v in MlflowClient().search_model_versions(f"name='{name}'"))


def alias_version(name: str = "tiny") -> str | None:
    try:
        return str(MlflowClient().get_model_version_by_alias(name, CHAMPION_ALIAS).version)
    except MlflowException:
        return None


def run_stages() -> str:
    """select, then register, as dvc.yaml runs them; the version the registry holds for the champion."""
    select.main()
    register_stage.main()
    return str(read_json(paths.METRICS, "metrics")["version"])


@pytest.fixture
def project(registry):
    """A temp cwd holding a params.yaml (the registry fixture chdirs there)."""
    write_params()
    prepare_candidates(seed=0)
    return registry


def test_running_the_stages_twice_on_the_same_champion_creates_one_version(project):
    assert run_stages() == "1"
    first = read_json(paths.SELECTION, "selection")
    assert first["champion"] == "teacher.int8"
    assert alias_version() == "1"
    # The headline `dvc metrics show` prints: numbers only, the champion's, against the reference.
    headline = read_json(paths.METRICS, "metrics")
    assert headline["version"] == 1
    assert all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in headline.values()), headline
    champion, reference = first["candidates"]["teacher.int8"], first["candidates"]["teacher.fp32"]
    assert headline["macro_f1"] == round(champion["macro_f1"], 4)
    assert headline["speedup"] == round(reference[first["speed_key"]] / champion[first["speed_key"]], 2)
    assert "version 1" in paths.MODEL_CARD.read_text() and "alias `champion`" in paths.MODEL_CARD.read_text()

    assert run_stages() == "1"  # the same files: the champion already is this one
    assert versions() == ["1"]
    assert alias_version() == "1"
    tags = MlflowClient().get_model_version("tiny", "1").tags
    assert tags[SHA256_TAG] == sha256_file(paths.CHAMPION) == sha256_file(paths.ONNX_DIR / "teacher.int8.onnx")
    x, y = np.zeros((2, 1, 8, 8), np.float32), np.zeros(2, int)
    assert current_champion("tiny", x, y, META).sha256 == tags[SHA256_TAG]


def test_register_alone_registers_what_select_left_on_a_new_registry(project, tmp_path, monkeypatch):
    """DVC restored select from its run cache (or `dvc pull`, or a new MLFLOW_TRACKING_URI): register,
    which always runs, finds the registry empty and registers the champion there."""
    assert run_stages() == "1"
    other = f"sqlite:///{tmp_path / 'other.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", other)
    mlflow.set_tracking_uri(other)
    register_stage.main()  # select is not run again
    assert versions() == ["1"] and alias_version() == "1"
    assert MlflowClient(other).get_model_version("tiny", "1").tags[SHA256_TAG] == sha256_file(paths.CHAMPION)


def test_select_promote_false_registers_a_first_version_without_an_alias(project):
    write_params(promote=False)
    assert run_stages() == "1"
    assert versions() == ["1"]
    assert alias_version() is None  # nothing promoted, not even a first champion
    assert "not promoted" in paths.MODEL_CARD.read_text()
    assert MlflowClient().get_model_version("tiny", "1").tags[SHA256_TAG] == sha256_file(paths.CHAMPION)


def test_dvc_exp_run_promotes_a_first_champion_and_then_only_when_asked(project, monkeypatch):
    from tasks.core.params import EXPERIMENT_ENV

    monkeypatch.setenv(EXPERIMENT_ENV, "abc123")  # what DVC sets on the stages of `dvc exp run`
    write_params(promote=None)
    assert run_stages() == "1"
    assert alias_version() == "1"  # a new dataset's first try: no champion to protect, one to serve
    prepare_candidates(seed=1)  # another model: another file
    assert run_stages() == "2"
    assert alias_version() == "1"  # an experiment does not move an existing champion
    write_params(promote=True)  # `dvc exp run -S select.promote=true`
    assert run_stages() == "2"
    assert alias_version() == "2"


def test_promoting_a_file_registered_earlier_reuses_its_version(project):
    write_params(promote=False)
    run_stages()
    assert versions() == ["1"] and alias_version() is None
    write_params(promote=True)  # the same files, now promoted: no second version of one file
    assert run_stages() == "1"
    assert versions() == ["1"]
    assert alias_version() == "1"


def test_select_promote_false_registers_a_new_file_beside_the_champion(project):
    run_stages()
    assert versions() == ["1"] and alias_version() == "1"
    prepare_candidates(seed=1)  # another model: another file
    write_params(promote=False)
    assert run_stages() == "2"
    assert versions() == ["1", "2"]
    assert alias_version() == "1"  # the champion stays
    assert MlflowClient().get_model_version("tiny", "2").tags[SHA256_TAG] == sha256_file(paths.CHAMPION)
    assert read_metadata(paths.CHAMPION).data_hash == "data1"


def test_the_alias_moves_only_after_the_champion_file_and_the_reports_are_written(project, monkeypatch):
    calls = []
    real_promote = register_stage.promote

    def checked_promote(name, version):
        # Production follows the alias: everything it points at must already be there.
        assert alias_version() is None
        assert sha256_file(paths.CHAMPION) == sha256_file(paths.ONNX_DIR / "teacher.int8.onnx")
        assert read_json(paths.METRICS, "metrics")["version"] == int(version)
        assert f"version {version}" in paths.MODEL_CARD.read_text()
        assert MlflowClient().get_model_version("tiny", version).tags[SHA256_TAG] == sha256_file(paths.CHAMPION)
        calls.append(version)
        real_promote(name, version)

    monkeypatch.setattr(register_stage, "promote", checked_promote)
    run_stages()
    assert calls == ["1"] and alias_version() == "1"


def test_a_crash_after_creating_the_version_leaves_no_version_and_no_alias(project, monkeypatch):
    """Atomic registration: the model card fails to write after the version was created; the version is
    deleted again, and nothing half-made is left for a server or a person to find."""

    def fail(*args, **kwargs):
        raise DistilleryError("disk full")

    monkeypatch.setattr(register_stage, "write_text", fail)
    select.main()
    with pytest.raises(DistilleryError, match="disk full"):
        register_stage.main()
    assert versions() == []
    assert alias_version() is None


def test_an_invalid_tag_creates_no_version(project, monkeypatch):
    """The tags travel with the creation: one MLflow refuses fails the creation itself, so no version
    without its provenance ever exists (not even for a moment)."""
    real = register_stage.provenance_tags
    monkeypatch.setattr(register_stage, "provenance_tags", lambda *a: {**real(*a), "bad//key": "x"})
    select.main()
    with pytest.raises(MlflowException):
        register_stage.main()
    assert versions() == []
    assert alias_version() is None


def test_an_incomplete_version_is_never_reused_nor_promoted(project):
    """A version made by hand (or by an older, crashed registration) with none of the provenance tags,
    for the very same file: register ignores it and makes a complete one."""
    from tasks.contracts.registry import REQUIRED_TAGS, complete_versions

    select.main()
    client = MlflowClient()
    client.create_registered_model("tiny")
    client.create_model_version("tiny", "file:///nowhere", tags={SHA256_TAG: sha256_file(paths.CHAMPION)})
    assert versions() == ["1"] and complete_versions(client, "tiny") == []
    register_stage.main()
    assert versions() == ["1", "2"] and alias_version() == "2"
    assert set(REQUIRED_TAGS) <= set(client.get_model_version("tiny", "2").tags)
    assert [str(v.version) for v in complete_versions(client, "tiny", sha256_file(paths.CHAMPION))] == ["2"]


def test_lineage_tags_accept_any_data_path():
    """dvc.lock records the user's data wherever it is; every path gives a key MLflow accepts, and the
    tags give the paths back."""
    from mlflow.utils.validation import _validate_tag_name

    from tasks.contracts.registry import lineage_hashes, lineage_tags

    hashes = {
        "data/processed": "a" * 32,
        "/srv/data/quickdraw": "b" * 32,
        "../elsewhere/credit.csv": "c" * 32,
        "/mnt/other disk/my images": "d" * 32,
        "data/with space.csv": "e" * 32,
        "/x" * 150: "f" * 32,
    }
    tags = lineage_tags(hashes)
    for key in tags:
        _validate_tag_name(key)
        assert len(key) <= 250
    assert tags["dvc/data/processed"] == "a" * 32
    assert lineage_hashes(tags) == hashes
    assert lineage_tags(hashes) == tags  # stable: the same path, the same key


def test_the_registered_model_holds_no_pickle(registry, tmp_path):
    path = onnx_file(tmp_path / "first.onnx", seed=0)
    version = register(path, "student.int8", SCORES, META, "tiny", registry, True, pixels(2, 0))
    folder = Path(mlflow.artifacts.download_artifacts(f"models:/tiny/{version}"))
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix in (".pkl", ".pickle") or p.name == "python_model.pkl"], files
    assert "pyfunc_model.py" in [p.name for p in files]  # logged as code


def test_the_server_reads_a_version_from_its_own_registry_not_mlflows_global_one(registry, tmp_path, monkeypatch):
    """Two registries hold a `tiny` version 1 with different files; the process-wide
    MLflow URIs point at the second. The server's source names the first and must
    serve the first's file (models:/ URIs would resolve against the global one)."""
    from deploy.model import RegistrySource

    ours = onnx_file(tmp_path / "ours.onnx", seed=0)
    assert register(ours, "student.int8", SCORES, META, "tiny", registry, True, pixels(2, 0)) == "1"
    our_uri = mlflow.get_tracking_uri()

    other_uri = f"sqlite:///{tmp_path / 'other.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", other_uri)
    mlflow.set_tracking_uri(other_uri)
    mlflow.set_registry_uri(other_uri)
    other = onnx_file(tmp_path / "other.onnx", seed=1)
    assert register(other, "student.int8", SCORES, META, "tiny", registry, True, pixels(2, 0)) == "1"
    assert sha256_file(ours) != sha256_file(other)

    loaded = RegistrySource("models:/tiny/1", our_uri).load(threads=1)
    assert loaded.sha256 == sha256_file(ours)
