"""The prediction log: every answered row is there, however the requests come
(the buffer applies backpressure, never drops), and a crash loses at most
one buffer's worth."""

from __future__ import annotations

import json
import signal
import sqlite3
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest

from .serve_helpers import pixels, read_log


def test_every_answered_prediction_is_logged(serve, models):
    server = serve(models["image"], log_flush_interval_s=0.1)
    expected: dict[tuple[str, int], dict] = {}
    version = server.client.get("/v2/models/distillery").json()["versions"][0]
    for i in range(12):
        x = pixels(1 + i % 3, seed=i)
        r = server.predict(x.tolist())
        assert r.status_code == 200
        for row, (p, xi) in enumerate(zip(r.json()["predictions"], x)):
            expected[(r.headers["x-request-id"], row)] = {"endpoint": "predict", "class": p["class"], "x": xi}
    for i in range(4):
        x = pixels(2, seed=100 + i)
        r = server.infer(x, headers={"X-Request-ID": f"infer-{i}"})
        assert r.status_code == 200
        probs = np.asarray(next(o for o in r.json()["outputs"] if o["name"] == "probabilities")["data"]).reshape(2, 3)
        for row in range(2):
            expected[(f"infer-{i}", row)] = {"endpoint": "infer", "class": "abc"[int(probs[row].argmax())], "x": x[row]}
    # Refused requests are no predictions: each is one row with its status and why.
    refused = {}
    for path, body, status in (
        ("/predict", json.dumps({"rows": [[1, 2, 3]]}).encode(), 422),
        ("/predict", b"{", 400),
        ("/v2/models/distillery/infer", b'{"inputs": []}', 422),
    ):
        r = server.client.post(path, content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == status
        refused[r.headers["x-request-id"]] = (path.rsplit("/", 1)[-1], status, r.json()["error"])

    assert server.stop(signal.SIGTERM) == 0
    rows = read_log(server.log_dir)
    logged = {(row["request_id"], row["row"]): row for row in rows if row["status"] == 200}
    assert set(logged) == set(expected)
    errors = {row["request_id"]: row for row in rows if row["status"] != 200}
    assert set(errors) == set(refused) and len(rows) == len(expected) + len(refused)
    for request_id, (endpoint, status, error) in refused.items():
        row = errors[request_id]
        assert (row["endpoint"], row["status"], row["error"], row["row"]) == (endpoint, status, error, 0)
        assert all(pd.isna(row[c]) for c in ("inputs", "predicted", "probability", "probabilities", "value"))
        assert row["model_name"] == "distillery" and row["model_version"] == version
    for key, want in expected.items():
        row = logged[key]
        assert row["endpoint"] == want["endpoint"] and row["predicted"] == want["class"]
        assert pd.isna(row["error"]) and pd.isna(row["value"])
        assert row["model_name"] == "distillery" and row["model_version"] == version
        assert row["latency_ms"] > 0 and row["ts"] > 0
        probabilities = json.loads(row["probabilities"])
        assert len(probabilities) == 3 and abs(sum(probabilities) - 1) < 1e-5
        assert row["probability"] == max(probabilities) or abs(row["probability"] - max(probabilities)) < 1e-6
        summary = json.loads(row["inputs"])  # images are logged as a summary of their pixels
        x = want["x"].astype(np.float64)
        assert summary == pytest.approx({"mean": x.mean(), "std": x.std(), "min": x.min(), "max": x.max()})


def test_a_crash_loses_at_most_one_buffer(serve, models):
    """kill -9 after N answered rows: the store holds at least N - max_buffer."""
    max_buffer = 8
    server = serve(models["image"], log_max_buffer=max_buffer, log_flush_interval_s=60)
    answered = 0
    for i in range(23):
        if server.predict(pixels(1, seed=i).tolist()).status_code == 200:
            answered += 1
    assert answered == 23
    server.proc.kill()  # SIGKILL: no shutdown, no final flush
    server.proc.wait(timeout=10)

    stored = read_log(server.log_dir)
    assert answered - max_buffer <= len(stored) <= answered
    assert len(stored) >= 12
    ids = [row["request_id"] for row in stored]
    assert len(set(ids)) == len(ids)
    (db,) = server.log_dir.glob("predictions-*.db")
    assert sqlite3.connect(db).execute("PRAGMA integrity_check").fetchone() == ("ok",)


@pytest.mark.parametrize(
    "rows, threads", [(150, 1), (600, 8), (10, 8)], ids=["over-the-buffer", "big-concurrent", "small-concurrent"]
)
def test_no_answered_row_is_lost_whatever_the_request_sizes(serve, models, rows, threads):
    """Requests up to MAX_ROWS, one at a time or from 8 threads, against a
    buffer smaller than them: the buffer makes requests wait, it never drops."""
    server = serve(models["image"], log_max_buffer=100, max_rows=600, log_flush_interval_s=0.05)
    requests = 6 if rows > 100 else 40
    x = pixels(rows, seed=rows).tolist()

    def send(i: int) -> tuple[str, int]:
        r = server.predict(x, headers={"X-Request-ID": f"r{rows}-{i}"})
        assert r.status_code == 200, r.text
        return r.headers["x-request-id"], len(r.json()["predictions"])

    with ThreadPoolExecutor(threads) as pool:
        answered = dict(pool.map(send, range(requests * threads)))
    assert server.stop(signal.SIGTERM) == 0
    stored = read_log(server.log_dir)
    per_request = pd.Series([row["request_id"] for row in stored]).value_counts().to_dict()
    assert per_request == answered and sum(answered.values()) == rows * requests * threads
