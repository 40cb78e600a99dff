"""One server per task type (binary, multiclass, multilabel, regression), each on
a model made by the real export path (a torch model -> tasks.onnx.export.export_onnx
-> set_metadata with the task's ArtifactMetadata): /predict answers the task's
way, v2 infer returns the task's outputs, the model metadata names them, and
the prediction log holds each answered row in the task's columns and each
refused request as one row with its status and error."""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest

from tasks.contracts import predlog
from tasks.contracts.onnx import answer_output, output_names
from tasks.onnx.export import set_metadata
from tasks.onnx.runtime import read_metadata

from .serve_helpers import ENCODER, image_model, onnx_outputs, pixels, read_log, table_model

TASKS = ("binary", "multiclass", "multilabel", "regression")
TABLE_ROWS = [
    {"bill": 39.1, "mass": 3750, "island": "Torgersen", "sex": "MALE"},
    {"bill": None, "mass": 5200.5, "island": "Biscoe", "sex": None},
    {"bill": 52.0, "mass": 3100, "island": "Dream", "sex": "FEMALE"},
    {"bill": 45.5, "mass": 4400, "island": "Dream", "sex": "MALE"},
]
IMAGES = pixels(6, seed=7)


def _multilabel_model(path):
    """Four labels, and a threshold (in the metadata) that splits this test's
    probabilities: some labels in, some out, and not the labels at 0.5."""
    image_model(path, seed=5, n_classes=4, task="multilabel", classes=["w", "x", "y", "z"])
    probs = np.sort(np.unique(onnx_outputs(path, IMAGES)["probabilities"]))
    middle = len(probs) // 2
    threshold = float((probs[middle - 1] + probs[middle]) / 2)
    set_metadata(path, read_metadata(path).replace(threshold=threshold))
    return path


@pytest.fixture(scope="module")
def task_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("task-models")
    return {
        # A sigmoid head (one logit) over table rows: the graph gives both classes.
        "binary": table_model(folder / "binary.onnx", seed=6, task="binary", classes=("no", "yes"), n_outputs=1),
        "multiclass": image_model(folder / "multiclass.onnx", seed=4),
        "multilabel": _multilabel_model(folder / "multilabel.onnx"),
        "regression": table_model(
            folder / "regression.onnx", seed=7, task="regression", classes=(), n_outputs=1, target_units=(100.0, 10.0)
        ),
    }


@pytest.fixture(scope="module", params=TASKS)
def case(request, serve_module, task_models):
    task = request.param
    path = task_models[task]
    metadata = read_metadata(path)
    assert metadata.task == task
    server = serve_module(path, log_flush_interval_s=0.05)
    table = metadata.kind == "tabular"
    rows = TABLE_ROWS if table else IMAGES.tolist()
    x = ENCODER.encode(pd.DataFrame(TABLE_ROWS)) if table else IMAGES
    return {
        "task": task,
        "path": path,
        "metadata": metadata,
        "server": server,
        "rows": rows,
        "x": x,
        "input": metadata.input_spec.name,
        "expected": onnx_outputs(path, x),
    }


def _logged(server, request_id: str, n: int, timeout: float = 10) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        found = sorted(
            (r for r in read_log(server.log_dir) if r[predlog.REQUEST_ID] == request_id), key=lambda r: r[predlog.ROW]
        )
        if len(found) >= n or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_predict_answers_the_tasks_way(case):
    task, metadata, expected = case["task"], case["metadata"], case["expected"]
    r = case["server"].predict(case["rows"])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["task"] == task
    predictions = body["predictions"]
    assert len(predictions) == len(case["rows"])
    table = metadata.preprocessing.encoder is not None  # a table row's answer flags its unseen categories
    assert all(("unseen" in p) == table for p in predictions)
    predictions = [{k: v for k, v in p.items() if k != "unseen"} for p in predictions]
    classes = list(metadata.classes)
    if task == "regression":
        want = expected["prediction"][:, 0]
        assert 80 < want.min() and want.max() < 120  # scaled back to target units inside the graph
        for p, value in zip(predictions, want):
            assert set(p) == {"value"} and "class" not in p
            assert isinstance(p["value"], float) and p["value"] == pytest.approx(float(value), rel=1e-6)
        return
    probs = expected["probabilities"]
    for p, want in zip(predictions, probs):
        assert list(p["probabilities"]) == classes
        np.testing.assert_allclose(list(p["probabilities"].values()), want, rtol=1e-6, atol=1e-7)
    if task == "multilabel":
        threshold = metadata.threshold
        for p, want in zip(predictions, probs):
            assert set(p) == {"labels", "probabilities"}
            assert p["labels"] == [c for c, q in zip(classes, want) if q >= threshold]
            # The labels follow the server's own probabilities too, in label order.
            assert p["labels"] == [c for c in classes if p["probabilities"][c] >= threshold]
        # The threshold is the metadata's: these rows have labels in and out, and 0.5 would give others.
        assert any(p["labels"] for p in predictions) and any(len(p["labels"]) < len(classes) for p in predictions)
        assert any(p["labels"] != [c for c, q in zip(classes, want) if q >= 0.5] for p, want in zip(predictions, probs))
        return
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-5)
    for p, want in zip(predictions, probs):
        assert set(p) == {"class", "probability", "probabilities"}
        assert p["class"] == classes[int(want.argmax())]
        assert p["probability"] == pytest.approx(float(want.max()), rel=1e-6)


def test_v2_infer_returns_the_tasks_outputs(case):
    task, x, expected = case["task"], case["x"], case["expected"]
    r = case["server"].infer(x, input_name=case["input"])
    assert r.status_code == 200, r.text
    outputs = {o["name"]: o for o in r.json()["outputs"]}
    names = ["prediction"] if task == "regression" else ["logits", "probabilities"]
    assert list(outputs) == names == list(output_names(task))
    width = 1 if task == "regression" else len(case["metadata"].classes)
    for name in names:
        assert outputs[name]["datatype"] == "FP32" and outputs[name]["shape"] == [len(x), width]
        got = np.asarray(outputs[name]["data"], np.float32).reshape(len(x), width)
        np.testing.assert_allclose(got, expected[name], rtol=1e-6, atol=1e-6)


def test_model_metadata_gives_the_task_and_its_outputs(case):
    task, metadata = case["task"], case["metadata"]
    meta = case["server"].client.get("/v2/models/distillery").json()
    width = 1 if task == "regression" else len(metadata.classes)
    if task == "regression":
        assert meta["outputs"] == [{"name": "prediction", "datatype": "FP32", "shape": [-1, 1]}]
    else:
        assert meta["outputs"] == [
            {"name": "logits", "datatype": "FP32", "shape": [-1, width]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, width]},
        ]
    params = meta["parameters"]
    assert params["task"] == task
    assert params["answer"] == answer_output(task) == ("prediction" if task == "regression" else "probabilities")
    assert params["classes"] == list(metadata.classes)
    assert meta["inputs"][0]["name"] == case["input"]
    if task == "multilabel":
        assert params["threshold"] == metadata.threshold != 0.5
    else:
        assert "threshold" not in params


def test_each_answered_row_is_logged_in_the_tasks_columns(case):
    task, server, classes = case["task"], case["server"], list(case["metadata"].classes)
    request_id = f"task-{task}"
    r = server.predict(case["rows"], headers={"X-Request-ID": request_id})
    assert r.status_code == 200, r.text
    predictions = r.json()["predictions"]
    infer_id = f"task-{task}-infer"
    assert server.infer(case["x"], input_name=case["input"], headers={"X-Request-ID": infer_id}).status_code == 200
    logged = _logged(server, request_id, len(predictions))
    inferred = _logged(server, infer_id, len(case["x"]))
    assert [row[predlog.ROW] for row in logged] == list(range(len(predictions)))
    assert [row[predlog.ROW] for row in inferred] == list(range(len(case["x"])))
    version = r.json()["model_version"]
    for row, p in zip(logged, predictions):
        assert row[predlog.STATUS] == 200 and pd.isna(row[predlog.ERROR])
        assert row[predlog.ENDPOINT] == "predict" and row[predlog.MODEL_VERSION] == version
        if task == "regression":
            assert row[predlog.VALUE] == pytest.approx(p["value"], rel=1e-9)
            assert all(pd.isna(row[c]) for c in (predlog.PREDICTED, predlog.PROBABILITY, predlog.PROBABILITIES))
            continue
        assert pd.isna(row[predlog.VALUE])
        assert json.loads(row[predlog.PROBABILITIES]) == pytest.approx(
            [p["probabilities"][c] for c in classes], rel=1e-6
        )
        if task == "multilabel":
            assert json.loads(row[predlog.PREDICTED]) == p["labels"]  # the JSON list of labels
            assert pd.isna(row[predlog.PROBABILITY])
        else:
            assert row[predlog.PREDICTED] == p["class"]
            assert row[predlog.PROBABILITY] == pytest.approx(p["probability"], rel=1e-6)
    if case["metadata"].kind == "tabular":
        assert [json.loads(row[predlog.INPUTS]) for row in logged] == case["rows"]  # as sent
    # v2 infer rows: the same columns, from the same outputs.
    for row, want in zip(inferred, case["expected"][answer_output(task)]):
        assert row[predlog.ENDPOINT] == "infer" and row[predlog.STATUS] == 200
        if task == "regression":
            assert row[predlog.VALUE] == pytest.approx(float(want[0]), rel=1e-6) and pd.isna(row[predlog.PREDICTED])
        elif task == "multilabel":
            threshold = case["metadata"].threshold
            assert json.loads(row[predlog.PREDICTED]) == [c for c, q in zip(classes, want) if q >= threshold]
        else:
            assert row[predlog.PREDICTED] == classes[int(want.argmax())]


@pytest.mark.parametrize("body, status", [(b'{"rows": [', 400), (b'{"rows": [{"no": "such columns"}, 7]}', 422)])
def test_a_malformed_predict_is_refused_and_logged_as_one_row(case, body, status):
    server = case["server"]
    request_id = f"bad-{case['task']}-{status}"
    r = server.client.post(
        "/predict", content=body, headers={"Content-Type": "application/json", "X-Request-ID": request_id}
    )
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error
    (row,) = _logged(server, request_id, 1)
    time.sleep(0.2)  # and no second row comes later
    assert len(_logged(server, request_id, 2, timeout=0)) == 1
    assert row[predlog.STATUS] == status and row[predlog.ERROR] == error
    assert row[predlog.ENDPOINT] == "predict" and row[predlog.ROW] == 0 and row[predlog.MODEL_NAME] == "distillery"
    assert all(
        pd.isna(row[c])
        for c in (predlog.INPUTS, predlog.PREDICTED, predlog.PROBABILITY, predlog.PROBABILITIES, predlog.VALUE)
    )
