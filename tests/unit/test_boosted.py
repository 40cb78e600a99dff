"""The gradient-boosted candidate of a table (tasks/ml/boosting.py,
tasks/onnx/boosted.py, tasks/boost.py, export_boosted): real scikit-learn,
skl2onnx and onnxruntime. Its graph keeps the artifact contract, answers as
scikit-learn does, and the server loads and serves it like any candidate."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import params_section

from tasks.contracts.encoder import Imputer, TableEncoder
from tasks.contracts.onnx import LOGITS, PREDICTION, PROBABILITIES, output_names
from tasks.contracts.processed import ProcessedMeta
from tasks.contracts.reports import BOOSTED, CandidateId
from tasks.core.params import BoostParams
from tasks.core.task import task_of
from tasks.evaluation.metrics import task_metrics
from tasks.export import artifact_metadata, export_boosted
from tasks.ml.boosting import boosted_predict, exact_float32_thresholds, fit_boosted, tree_nodes
from tasks.onnx.boosted import boosted_to_onnx, max_difference
from tasks.onnx.runtime import check_artifact, run_batches, session

PARAMS = BoostParams(
    enabled=True,
    max_iter=60,
    learning_rate=0.1,
    max_leaf_nodes=15,
    min_samples_leaf=5,
    l2_regularization=0.0,
    class_weight="balanced",
    n_iter_no_change=10,
    seed=0,
    atol=1e-4,
)
ENCODER = TableEncoder(
    numeric=("a", "b", "c"),
    categorical={"color": ("blue", "red")},
    imputer=Imputer("median", {"a": 0.0, "b": 0.0, "c": 0.0}),
)
CLASSES = {"binary": ("no", "yes"), "multiclass": ("x", "y", "z"), "regression": ()}


def table(n: int, seed: int, task: str) -> tuple[np.ndarray, np.ndarray]:
    """Five encoded features (three numbers, a one-hot colour) and a target that depends on them."""
    rng = np.random.default_rng(seed)
    numbers = rng.normal(0, 1, (n, 3))
    red = rng.integers(0, 2, n)
    x = np.column_stack([numbers, 1 - red, red]).astype(np.float32)
    signal = numbers[:, 0] + 0.5 * numbers[:, 1] ** 2 + red + rng.normal(0, 0.3, n)
    if task_of(task).regression:
        return x, (100 * signal + 20).astype(np.float32)
    edges = np.quantile(signal, np.linspace(0, 1, len(CLASSES[task]) + 1)[1:-1])
    return x, np.digitize(signal, edges)


def meta_for(task: str, train_y: np.ndarray) -> ProcessedMeta:
    return ProcessedMeta(
        kind="tabular",
        task=task,
        classes=CLASSES[task],
        input_shape=(5,),
        mean=(0.0,) * 5,
        std=(1.0,) * 5,
        data_hash="cafe",
        resample="none",
        counts={},
        encoder=ENCODER,
        target_mean=float(train_y.mean()) if task_of(task).regression else 0.0,
        target_std=float(train_y.std()) if task_of(task).regression else 1.0,
    )


@pytest.fixture(scope="module", params=["binary", "multiclass", "regression"])
def boosted(request, tmp_path_factory):
    """A fitted boosted model of each table task, its graph, and the exported candidate."""
    task = request.param
    folder = tmp_path_factory.mktemp(f"boosted_{task}")
    train, val = table(600, 1, task), table(200, 2, task)
    model = fit_boosted(train, val, task, PARAMS)
    source = folder / "model.onnx"
    import onnx

    onnx.save(boosted_to_onnx(model, 5, task, 17), str(source))
    meta = meta_for(task, train[1])
    export = params_section("export", temperature_scaling=True)
    figures = export_boosted(
        source, {"tree_nodes": tree_nodes(model)}, val, artifact_metadata(meta, 0.5), export, folder
    )
    return task, model, source, folder / f"{BOOSTED.name}.onnx", figures, val


def test_the_graph_answers_as_scikit_learn_does(boosted):
    task, model, source, _, _, _ = boosted
    x, _ = table(300, 3, task)
    answer = PREDICTION if task_of(task).regression else PROBABILITIES
    got = run_batches(session(source), x, output=answer)
    assert max_difference(boosted_predict(model, x, task), got, task) < 1e-5
    if task_of(task).classes:  # softmax(log p) at T = 1 is p again; the logits are its log
        logits = run_batches(session(source), x, output=LOGITS)
        np.testing.assert_allclose(np.log(np.clip(got, 1e-7, 1)), logits, atol=1e-5)


def test_the_exported_candidate_keeps_the_contract(boosted):
    task, _, _, exported, figures, val = boosted
    metadata, signature, sess = check_artifact(exported)
    assert signature.input_name == "features" and signature.input_shape == (5,)
    assert [o.name for o in sess.get_outputs()] == list(output_names(task))
    assert metadata.candidate == "boosted.fp32" and metadata.precision == "fp32" and metadata.task == task
    assert metadata.preprocessing.encoder == ENCODER and metadata.target_units is None
    scale = (
        float(np.abs(run_batches(sess, val[0], output=output_names(task)[0])).max()) if task_of(task).regression else 1
    )
    assert figures["fp32_max_abs_diff"] <= 1e-4 * max(1.0, scale) and figures["parameters"] > 0
    if task_of(task).classes:
        assert figures["temperature"] > 0  # fitted on the validation split, like every candidate's
    assert CandidateId.parse("boosted.fp32") == BOOSTED and BOOSTED.lineage() == [BOOSTED]


def test_the_server_loads_and_serves_it(boosted):
    """deploy/ serves any file that keeps the contract: raw rows through the encoder, the answer out."""
    from deploy.model import build_model

    task, model, _, exported, _, _ = boosted
    loaded = build_model(
        exported.read_bytes(), name="t", version="1", source=str(exported), threads=1, folder=exported.parent
    )
    rows = pd.DataFrame({"a": [0.5, -1.0], "b": [1.0, None], "c": [0.0, 2.0], "color": ["red", "green"]})
    x = loaded.encoder.encode(rows)
    answer = loaded.run(x)[loaded.answer]
    assert answer.shape == (2, 1 if task_of(task).regression else len(CLASSES[task]))
    if task_of(task).regression:
        np.testing.assert_allclose(answer, boosted_predict(model, x, task), rtol=1e-5)
    else:
        assert (answer.argmax(axis=1) == model.predict(x)).all()


def test_float32_thresholds_take_the_branches_scikit_learn_takes():
    """diabetes' features are small floats: rounding a float64 threshold to the nearest
    float32 sent 3 of 442 rows down the other branch (off by up to 5.7)."""
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True)
    x = x.astype(np.float32)
    model = fit_boosted((x[::2], y[::2]), (x[1::2], y[1::2]), "regression", PARAMS)
    before = model.predict(x)
    exact_float32_thresholds(model)  # idempotent, and the answers on float32 rows do not move
    np.testing.assert_array_equal(model.predict(x), before)
    import onnxruntime as ort

    sess = ort.InferenceSession(boosted_to_onnx(model, x.shape[1], "regression", 17).SerializeToString())
    got = sess.run([PREDICTION], {"features": x})[0]
    assert max_difference(before.reshape(-1, 1), got, "regression") < 1e-5


def test_the_boost_stage_trains_on_tables_and_says_why_not_elsewhere(tmp_path, monkeypatch):
    from tasks import boost
    from tasks.contracts.processed import X, Y, save_split, write_meta
    from tasks.core import paths

    monkeypatch.chdir(tmp_path)
    train, val = table(400, 5, "multiclass"), table(150, 6, "multiclass")
    write_meta(meta_for("multiclass", train[1]), paths.PROCESSED)
    for name, (x, y) in (("train", train), ("val", val)):
        save_split(name, {X: x, Y: y}, paths.PROCESSED)
    _, figures = boost.boost(train, val, meta_for("multiclass", train[1]), PARAMS)
    assert figures["trained"] and figures["onnx_max_abs_diff"] < 1e-5 and figures["val_quality"] > 0.6
    assert paths.BOOSTED_ONNX.exists()
    from conftest import image_meta

    assert "image" in boost.why_not(image_meta(), PARAMS)
    off = boost.why_not(meta_for("binary", train[1]), BoostParams(**{**PARAMS.__dict__, "enabled": False}))
    assert off == "boost.enabled is false"
    assert json.loads(json.dumps(figures)) == figures  # what boosted.json holds


def test_multilabel_is_refused_by_the_boosted_fit():
    x, _ = table(50, 7, "multiclass")
    with pytest.raises(ValueError, match="multilabel"):
        fit_boosted((x, np.zeros((50, 3))), (x, np.zeros((50, 3))), "multilabel", PARAMS)


@pytest.mark.parametrize("task", ["multiclass", "regression"])
def test_the_student_distils_from_the_boosted_model_when_it_beats_the_network(task, tmp_path, monkeypatch):
    """distill.teacher auto: an untrained network loses to the trees on the validation
    split, so the student learns the trees' outputs and ends close to them."""
    import onnx

    from tasks.core import paths
    from tasks.distill import choose_teacher
    from tasks.ml.distillation import distill_student
    from tasks.ml.models import build_model, spec_for

    monkeypatch.chdir(tmp_path)
    train, val = table(600, 11, task), table(200, 12, task)
    meta = meta_for(task, train[1])
    model = fit_boosted(train, val, task, PARAMS)
    paths.BOOSTED.mkdir(parents=True)
    onnx.save(boosted_to_onnx(model, 5, task, 17), str(paths.BOOSTED_ONNX))
    params = params_section("distill", mlp_layers=(16,), batch_size=64)  # the default schedule and loss
    network = build_model(spec_for(meta, params_section("train", mlp_layers=(4,)), len(meta.classes) or 1)).eval()
    teacher, chosen = choose_teacher("auto", network, train, val, meta)
    assert chosen["teacher"] == "boosted" and chosen["boosted_val_quality"] > chosen["network_val_quality"]
    assert isinstance(teacher, tuple) and teacher[0].shape[0] == len(train[1])
    assert choose_teacher("teacher", network, train, val, meta)[1]["teacher"] == "teacher"
    student, _ = distill_student(teacher, train, val, meta, params)
    from tasks.ml.models import predict_logits

    classes = list(meta.classes)
    student_quality = task_metrics(task, predict_logits(student, val[0]), val[1], classes)["quality"]
    assert student_quality > chosen["network_val_quality"]
    assert student_quality > chosen["boosted_val_quality"] - 0.15


def test_distill_teacher_boosted_without_a_boosted_model_is_refused(tmp_path, monkeypatch):
    from tasks.core.errors import DistilleryError
    from tasks.distill import choose_teacher
    from tasks.ml.models import build_model, spec_for

    monkeypatch.chdir(tmp_path)
    train = table(50, 13, "binary")
    meta = meta_for("binary", train[1])
    network = build_model(spec_for(meta, params_section("train", mlp_layers=(4,)), 1)).eval()
    with pytest.raises(DistilleryError, match="distill.teacher' is boosted but there is no boosted model"):
        choose_teacher("boosted", network, train, train, meta)
