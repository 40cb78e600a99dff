"""Serving reads a raw row as the gate read the training rows (issue 23): the
corrections it applied travel in the model's metadata (TableEncoder.reading)
and the server replays them with the same functions (tasks.contracts.encoder).
Every raw row training kept gets 200 and the offline model's answer; a row the
gate would have quarantined is a 422 naming its cell."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks.contracts.dataset import ROW_ID
from tasks.core.params import load_params

from .serve_helpers import PENGUINS, onnx_outputs, table_model

N = 60
PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"


def raw_table() -> pd.DataFrame:
    """A messy loans-like table as a user's CSV reads: numbers as text, with
    units and gaps spelt as words; categories in several cases and spacings."""
    rng = np.random.default_rng(0)
    income = rng.integers(20, 120, N) * 1000
    spelt = [
        str(v) if k == 0 else f"{v:,} $" if k == 1 else "n/a" if k == 2 else "NA"
        for v, k in zip(income, rng.integers(0, 4, N))
    ]
    home = rng.choice(["MORTGAGE", " mortgage ", "RENT", "rent", "OWN", "own home", "?"], N)
    member = rng.choice(["Y", "N", "yes", "no"], N)
    return pd.DataFrame(
        {
            ROW_ID: np.arange(N),
            "income": pd.Series(spelt, dtype=object),
            "home": pd.Series(home, dtype=object),
            "member": pd.Series(member, dtype=object),
            "grade": rng.choice(["a", "b"], N),
        }
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The gate's corrections and the encoder fitted after them, as the pipeline does."""
    from tasks.data.correct import DUPLICATE_OF, FEATURE_TYPES, correct_table
    from tasks.data.encoding import fit_encoder

    validate = dataclasses.replace(load_params(PARAMS).validate, synonyms={"home": {"own home": "OWN"}})
    raw = raw_table()
    declared = {"income": "numeric", "home": "categorical", "member": "boolean"}
    corrected = correct_table(raw, "grade", declared, "binary", validate)
    kept = ~corrected.table[ROW_ID].isin(list(corrected.row_issues))
    # Exact duplicates once folded are the only rows quarantined: the gate read every cell.
    assert all(why.startswith(DUPLICATE_OF) for reasons in corrected.row_issues.values() for why in reasons)
    types = {c: t for c, t in corrected.column_types.items() if t in FEATURE_TYPES}
    encoder = fit_encoder(corrected.table[kept], types, "median", reading=corrected.reading)
    assert set(encoder.categorical["home"]) == {"MORTGAGE", "RENT", "OWN"}  # folded and mapped by the gate
    model = table_model(tmp_path_factory.mktemp("reading") / "reading.onnx", encoder=encoder)
    return raw[kept.to_numpy()], corrected.table[kept], encoder, model


@pytest.fixture(scope="module")
def server(serve_module, trained):
    return serve_module(trained[3])


def as_json(frame: pd.DataFrame) -> list[dict]:
    return [{c: (None if pd.isna(v) else v) for c, v in row.items()} for row in frame.to_dict("records")]


def test_every_row_training_kept_gets_the_offline_answer(server, trained):
    raw, typed, encoder, model = trained
    assert len(raw) >= N // 2  # the gate quarantined exact duplicates only (once folded), no reading of a cell
    features = ["income", "home", "member"]
    r = server.predict(as_json(raw[features]))
    assert r.status_code == 200, r.text
    want = onnx_outputs(model, encoder.encode(typed))["probabilities"]
    got = [[p["probabilities"][c] for c in PENGUINS] for p in r.json()["predictions"]]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_spellings_training_folded_answer_alike(server):
    rows = [
        {"income": 65000, "home": "MORTGAGE", "member": "Y"},
        {"income": "65000", "home": " mortgage ", "member": "yes"},
        {"income": "65,000 $", "home": "Mortgage", "member": True},
        {"income": None, "home": "own home", "member": "n/a"},
        {"income": "n/a", "home": "OWN", "member": None},
    ]
    r = server.predict(rows)
    assert r.status_code == 200, r.text
    answers = [p["probabilities"] for p in r.json()["predictions"]]
    assert answers[0] == answers[1] == answers[2]
    assert answers[3] == answers[4]


@pytest.mark.parametrize(
    "cell, field",
    [
        ({"income": "lots"}, "rows[0].income"),  # the gate quarantined words in a number column
        ({"income": "inf"}, "rows[0].income"),
        ({"income": True}, "rows[0].income"),
        ({"member": "maybe"}, "rows[0].member"),
        ({"home": ["RENT"]}, "rows[0].home"),
    ],
)
def test_a_cell_the_gate_would_have_quarantined_is_named(server, cell, field):
    r = server.predict([{"income": 50000, "home": "RENT", "member": "N", **cell}])
    assert r.status_code == 422 and r.json()["field"] == field, r.text


def test_an_unseen_category_is_answered_flagged_logged_and_counted_by_the_monitor(serve_module, trained):
    """ "Atlantis" is answered (all zeros, as training encodes it), and the answer,
    the prediction log and the monitor's feature/<name>/unseen_fraction say so;
    a spelling training folded (" mortgage ") is not unseen."""
    from tasks.contracts import predlog
    from tasks.core.params import load_params
    from tasks.monitor import windows
    from tasks.monitor.reference import Reference

    server = serve_module(trained[3], log_flush_interval_s=0.05)
    rows = [
        {"income": 50000, "home": " mortgage ", "member": "Y"},
        {"income": 50000, "home": "Atlantis", "member": "Y"},
        {"income": 50000, "home": None, "member": "Y"},
        {"income": 50000, "home": "RENT", "member": "N"},
    ]
    r = server.predict(rows, headers={"X-Request-ID": "unseen-1"})
    assert r.status_code == 200, r.text
    assert [p["unseen"] for p in r.json()["predictions"]] == [[], ["home"], [], []]
    deadline = time.monotonic() + 10
    logged = pd.DataFrame()
    while time.monotonic() < deadline and len(logged) < len(rows):
        logged = predlog.read_rows(server.log_dir)
        logged = logged[logged[predlog.REQUEST_ID] == "unseen-1"]  # the module's servers share a log folder
        time.sleep(0.05)
    assert [json.loads(u) for u in logged[predlog.UNSEEN]] == [[], ["home"], [], []]
    reference = Reference(
        "tabular",
        "multiclass",
        {"income": np.full(10, 50000.0)},
        {"home": np.array(["MORTGAGE", "RENT", "OWN"] * 3, dtype=object)},
        list(PENGUINS),
        {c: 1 for c in PENGUINS},
        "labels",
        9,
    )
    (window,) = windows.analyse(logged, reference, load_params(PARAMS).monitor)
    (home,) = [f for f in window["features"] if f["feature"] == "home"]
    assert home["unseen_fraction"] == 0.25  # Atlantis alone: not " mortgage ", nor the gap


def test_the_monitor_compares_the_logged_rows_as_training_read_them(trained):
    """Spellings and units the gate folded in training are not drift: the monitor reads the logged raw
    rows with the model's reading (TableEncoder.read, the server's) before comparing them."""
    from tasks.core.params import load_params
    from tasks.monitor import windows
    from tasks.monitor.reference import Reference

    inputs = pd.DataFrame(
        {
            "income": pd.Series(["65,000 $", "65000", 65000.0, "n/a"], dtype=object),
            "home": [" mortgage ", "Mortgage", "RENT", "own home"],
        }  # "member" never sent: it stays missing
    )
    reference = Reference(
        "tabular",
        "binary",
        {"income": np.full(12, 65000.0)},
        {"home": np.array(["MORTGAGE", "RENT", "OWN"] * 4, dtype=object)},
        ["a", "b"],
        {"a": 6, "b": 6},
        "labels",
        12,
        encoder=trained[2],
    )
    params = load_params(PARAMS).monitor
    income, home = windows.feature_drift(reference, inputs, params)
    assert income["missing_fraction"] == 0.25  # "n/a" alone
    assert home["unseen_fraction"] == 0.0  # every spelling is one training kept
    raw_income, raw_home = windows.feature_drift(dataclasses.replace(reference, encoder=None), inputs, params)
    assert raw_income["missing_fraction"] == 0.5 and raw_home["unseen_fraction"] == 0.75  # what raw values say
