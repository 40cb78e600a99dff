"""A table model with yes/no and date columns (tasks.contracts.encoder): /predict
reads each as training did, names a cell it cannot read, and /metadata says how
to write them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from .serve_helpers import onnx_outputs, table_model

KINDS = {"bill": "numeric", "member": "boolean", "seen": "datetime", "island": "categorical"}
TRAINING = {
    "bill": [40.0, 44.0, 48.0, None],
    "member": ["yes", "no", "Y", None],
    "seen": ["04/03/2021", "25/12/2020", None, "01/07/2022"],
    "island": ["Biscoe", "Dream", "Torgersen", None],
}


def kinds_encoder():
    from tasks.data.encoding import fit_encoder

    return fit_encoder(pd.DataFrame(TRAINING), KINDS, "median", date_formats={"seen": "%d/%m/%Y"})


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return table_model(tmp_path_factory.mktemp("kinds") / "kinds.onnx", encoder=kinds_encoder())


@pytest.fixture(scope="module")
def server(serve_module, model):
    return serve_module(model)


ROWS = [
    {"bill": 39.1, "member": True, "seen": "04/03/2021", "island": "Dream"},
    {"bill": None, "member": " NO ", "seen": None, "island": "Biscoe"},
    {"bill": 47, "member": 1, "seen": "31/01/2023", "island": None},
    {"bill": 41, "member": None, "seen": "15/06/2021", "island": "Torgersen"},
    {"bill": 42, "member": "false", "seen": "15/06/2021", "island": "Torgersen"},
]


def test_metadata_lists_booleans_and_date_formats(server):
    columns = server.client.get("/v2/models/distillery").json()["parameters"]["columns"]
    assert columns["booleans"] == ["member"]
    assert columns["dates"] == {"seen": "%d/%m/%Y"}
    assert columns["numeric"] == ["bill"]


def test_yes_no_and_dates_are_encoded_as_in_training(server, model):
    r = server.predict(ROWS)
    assert r.status_code == 200, r.text
    encoder = kinds_encoder()
    x = encoder.encode(pd.DataFrame(ROWS))
    assert x[0, 1] == 1.0 and x[1, 1] == 0.0 and x[2, 1] == 1.0 and x[4, 1] == 0.0  # member, any spelling
    assert x[2, 2:6].tolist() == [2023, 1, 31, 1]  # seen: year, month, day, weekday
    want = onnx_outputs(model, x)["probabilities"]
    got = [[p["probabilities"][c] for c in ("Adelie", "Chinstrap", "Gentoo")] for p in r.json()["predictions"]]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "cell, field, says",
    [
        ({"member": "maybe"}, "rows[0].member", "yes or no"),
        ({"member": 2}, "rows[0].member", "yes or no"),
        ({"member": [True]}, "rows[0].member", "yes or no"),
        ({"seen": "2021-03-04"}, "rows[0].seen", "%d/%m/%Y"),
        ({"seen": "31/02/2021"}, "rows[0].seen", "%d/%m/%Y"),
        ({"seen": 20210304}, "rows[0].seen", "%d/%m/%Y"),
    ],
)
def test_a_cell_training_could_not_read_is_named(server, cell, field, says):
    r = server.predict([{**ROWS[0], **cell}])
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field and says in r.json()["error"]


def test_a_missing_date_column_is_named(server):
    row = {k: v for k, v in ROWS[0].items() if k != "seen"}
    r = server.predict([row])
    assert r.status_code == 422 and r.json()["field"] == "rows[0].seen"


def test_a_changed_date_format_is_a_contract_change(tmp_path):
    from deploy.model import _column_kinds
    from tasks.data.encoding import fit_encoder

    iso = fit_encoder(pd.DataFrame(TRAINING), KINDS, "median", date_formats={"seen": "ISO8601"})
    kinds = _column_kinds(type("M", (), {"encoder": iso})())  # type: ignore[arg-type]
    assert kinds["member"] == "boolean" and kinds["seen"] == "datetime (ISO8601)"
    assert _column_kinds(type("M", (), {"encoder": kinds_encoder()})())["seen"] == "datetime (%d/%m/%Y)"  # type: ignore[arg-type]
