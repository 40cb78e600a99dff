"""A table model: rows come as objects {column: value}, are encoded by the very
encoder training fitted (tasks.contracts.encoder.TableEncoder.encode, carried in
the model's metadata), and bad cells are named."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from .serve_helpers import ENCODER, onnx_outputs, read_log

ROWS = [
    {"bill": 39.1, "mass": 3750, "island": "Torgersen", "sex": "MALE", "comments": "ignored"},
    {"bill": None, "mass": 5200.5, "island": "Biscoe", "sex": None},  # gaps are imputed, as in training
    {"bill": 47, "mass": 4100, "island": "Atlantis", "sex": "FEMALE"},  # unseen category: all zeros
]


@pytest.fixture(scope="module")
def server(serve_module, models):
    return serve_module(models["table"], log_flush_interval_s=0.05)


def test_metadata_describes_the_table_input(server):
    meta = server.client.get("/v2/models/distillery").json()
    assert meta["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 7]}]
    assert meta["parameters"]["kind"] == "table"
    assert meta["parameters"]["columns"] == {
        "numeric": ["bill", "mass"],
        "booleans": [],
        "dates": {},
        "categorical": {"island": ["Biscoe", "Dream", "Torgersen"], "sex": ["FEMALE", "MALE"]},
    }
    assert meta["parameters"]["input_spec"]["features"] == list(ENCODER.feature_names)


def test_rows_are_encoded_as_in_training(server, models):
    r = server.predict(ROWS)
    assert r.status_code == 200, r.text
    x = ENCODER.encode(pd.DataFrame(ROWS))
    assert x[1, 0] == 44.0  # the missing bill is the train median
    assert x[2, 2:5].tolist() == [0, 0, 0]  # Atlantis: no island
    assert [p["unseen"] for p in r.json()["predictions"]] == [[], [], ["island"]]  # answered, and flagged
    expected = onnx_outputs(models["table"], x)["probabilities"]
    classes = ["Adelie", "Chinstrap", "Gentoo"]
    for prediction, want in zip(r.json()["predictions"], expected):
        assert prediction["class"] == classes[int(want.argmax())]
        np.testing.assert_allclose([prediction["probabilities"][c] for c in classes], want, rtol=1e-6, atol=1e-7)


def test_v2_infer_takes_encoded_features(server, models):
    x = ENCODER.encode(pd.DataFrame(ROWS))
    body = {"inputs": [{"name": "features", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    r = server.client.post("/v2/models/distillery/infer", json=body)
    assert r.status_code == 200, r.text
    probs = next(o for o in r.json()["outputs"] if o["name"] == "probabilities")
    np.testing.assert_allclose(
        np.asarray(probs["data"], np.float32).reshape(3, 3),
        onnx_outputs(models["table"], x)["probabilities"],
        rtol=1e-6,
    )


@pytest.mark.parametrize(
    "row, field",
    [
        ({"mass": 3750, "island": "Dream", "sex": "MALE"}, "rows[0].bill"),
        ({"bill": "forty", "mass": 3750, "island": "Dream", "sex": "MALE"}, "rows[0].bill"),
        ({"bill": True, "mass": 3750, "island": "Dream", "sex": "MALE"}, "rows[0].bill"),
        ({"bill": 40, "mass": 3750, "island": ["Dream"], "sex": "MALE"}, "rows[0].island"),
        ({"bill": 40, "mass": 3750, "sex": "MALE"}, "rows[0].island"),
        ([40, 3750, "Dream", "MALE"], "rows[0]"),
    ],
)
def test_bad_cells_are_named(server, row, field):
    r = server.predict([row])
    assert r.status_code == 422 and r.json()["field"] == field, r.text


def test_nan_in_a_numeric_column_is_refused(server):
    body = b'{"rows": [{"bill": NaN, "mass": 1, "island": "Dream", "sex": "MALE"}]}'
    r = server.client.post("/predict", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["field"] == "rows[0].bill"


def test_the_prediction_log_keeps_table_rows_as_sent(server):
    r = server.predict(ROWS[:1], headers={"X-Request-ID": "table-row-1"})
    assert r.status_code == 200
    import json
    import time

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        logged = [row for row in read_log(server.log_dir) if row["request_id"] == "table-row-1"]
        if logged:
            break
        time.sleep(0.05)
    assert len(logged) == 1
    assert json.loads(logged[0]["inputs"]) == ROWS[0]
    assert logged[0]["predicted"] == r.json()["predictions"][0]["class"]
    assert json.loads(logged[0]["unseen"]) == []


def test_a_model_without_the_gates_corrections_reads_cells_as_sent(server):
    """An older model (no encoder.reading): numbers must be JSON numbers, as before."""
    assert ENCODER.reading is None
    r = server.predict([{"bill": "44", "mass": 3750, "island": "Dream", "sex": "MALE"}])
    assert r.status_code == 422 and r.json()["field"] == "rows[0].bill", r.text
    r = server.predict([{"bill": 44, "mass": 3750, "island": "Dream", "sex": "NA"}])  # "NA": a category, unseen
    assert r.status_code == 200, r.text
