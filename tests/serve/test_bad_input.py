"""Bad requests get a 4xx whose JSON names the field at fault; none gets a 5xx,
and none takes the server down."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from .serve_helpers import pixels

MAX_ROWS = 8
MAX_BODY = 20_000
ROW = pixels(1)[0].ravel().astype(int).tolist()  # 64 raw pixel values


def infer_body(**tensor) -> dict:
    base = {"name": "pixels", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": ROW}
    return {"inputs": [{**base, **tensor}]}


def without(key: str) -> dict:
    body = infer_body()
    del body["inputs"][0][key]
    return body


def with_value(index: int, literal: str) -> bytes:
    """An infer body whose data[index] is `literal`, written as raw JSON text
    (NaN and Infinity are not JSON, but clients send them)."""
    data = [str(v) for v in ROW]
    data[index] = literal
    return (
        '{"inputs": [{"name": "pixels", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [' + ", ".join(data) + "]}]}"
    ).encode()


def predict_with(row_index: int, value_index: int, literal: str, rows: int = 2) -> bytes:
    rendered = []
    for r in range(rows):
        values = [str(v) for v in ROW]
        if r == row_index:
            values[value_index] = literal
        rendered.append("[" + ", ".join(values) + "]")
    return ('{"rows": [' + ", ".join(rendered) + "]}").encode()


INFER = "/v2/models/distillery/infer"
CASES = {
    # name: (path, body (dict -> JSON, bytes -> as is), content type, status, field)
    "malformed json": ("/predict", b'{"rows": [[1, 2', "application/json", 400, "body"),
    "malformed json (infer)": (INFER, b"{inputs: []}", "application/json", 400, "body"),
    "empty body": ("/predict", b"", "application/json", 400, "body"),
    "text/plain": ("/predict", b'{"rows": []}', "text/plain", 415, "Content-Type"),
    "form encoded": (INFER, b"a=1", "application/x-www-form-urlencoded", 415, "Content-Type"),
    "top level is a list": ("/predict", [ROW], "application/json", 422, "body"),
    "missing rows": ("/predict", {"row": [ROW]}, "application/json", 422, "rows"),
    "rows not a list": ("/predict", {"rows": "pixels"}, "application/json", 422, "rows"),
    "empty batch (predict)": ("/predict", {"rows": []}, "application/json", 422, "rows"),
    "row is an object": ("/predict", {"rows": [{"a": 1}]}, "application/json", 422, "rows[0]"),
    "row too short": ("/predict", {"rows": [ROW, ROW[:63]]}, "application/json", 422, "rows[1]"),
    "row nested wrong": ("/predict", {"rows": [np.zeros((2, 4, 8)).tolist()]}, "application/json", 422, "rows[0]"),
    "string pixel": ("/predict", predict_with(1, 5, '"7"'), "application/json", 422, "rows[1][5]"),
    "bool pixel": ("/predict", predict_with(0, 3, "true"), "application/json", 422, "rows[0][3]"),
    "null pixel": ("/predict", predict_with(1, 0, "null"), "application/json", 422, "rows[1][0]"),
    "NaN pixel": ("/predict", predict_with(0, 9, "NaN"), "application/json", 422, "rows[0][9]"),
    "Infinity pixel": ("/predict", predict_with(1, 9, "-Infinity"), "application/json", 422, "rows[1][9]"),
    "too many rows (predict)": ("/predict", {"rows": [ROW] * (MAX_ROWS + 1)}, "application/json", 422, "rows"),
    "missing inputs": (INFER, {"outputs": []}, "application/json", 422, "inputs"),
    "inputs not a list": (INFER, {"inputs": {"name": "pixels"}}, "application/json", 422, "inputs"),
    "two inputs": (INFER, {"inputs": infer_body()["inputs"] * 2}, "application/json", 422, "inputs"),
    "missing name": (INFER, without("name"), "application/json", 422, "inputs[0].name"),
    "missing shape": (INFER, without("shape"), "application/json", 422, "inputs[0].shape"),
    "missing datatype": (INFER, without("datatype"), "application/json", 422, "inputs[0].datatype"),
    "missing data": (INFER, without("data"), "application/json", 422, "inputs[0].data"),
    "wrong input name": (INFER, infer_body(name="features"), "application/json", 422, "inputs[0].name"),
    "wrong datatype": (INFER, infer_body(datatype="INT32"), "application/json", 422, "inputs[0].datatype"),
    "wrong shape": (INFER, infer_body(shape=[1, 1, 4, 16]), "application/json", 422, "inputs[0].shape"),
    "shape of strings": (INFER, infer_body(shape=["1", 1, 8, 8]), "application/json", 422, "inputs[0].shape"),
    "-1 dimension": (INFER, infer_body(shape=[-1, 1, 8, 8]), "application/json", 422, "inputs[0].shape"),
    "empty batch (infer)": (INFER, infer_body(shape=[0, 1, 8, 8], data=[]), "application/json", 422, "inputs[0].shape"),
    "data size mismatch": (INFER, infer_body(shape=[2, 1, 8, 8]), "application/json", 422, "inputs[0].data"),
    "data not a list": (INFER, infer_body(data="AAAA"), "application/json", 422, "inputs[0].data"),
    "nested data of wrong shape": (
        INFER,
        infer_body(data=np.zeros((1, 1, 8, 7)).tolist()),
        "application/json",
        422,
        "inputs[0].data[0][0][0]",
    ),
    "NaN in data": (INFER, with_value(3, "NaN"), "application/json", 422, "inputs[0].data[3]"),
    "Infinity in data": (INFER, with_value(4, "Infinity"), "application/json", 422, "inputs[0].data[4]"),
    "overflowing number": (INFER, with_value(5, "1e999"), "application/json", 422, "inputs[0].data[5]"),
    "beyond float32": (INFER, with_value(5, "1e39"), "application/json", 422, "inputs[0].data[5]"),
    "huge integer": (INFER, with_value(6, "1" + "0" * 400), "application/json", 422, "inputs[0].data[6]"),
    "string in data": (INFER, with_value(7, '"x"'), "application/json", 422, "inputs[0].data[7]"),
    "bool in data": (INFER, with_value(0, "false"), "application/json", 422, "inputs[0].data[0]"),
    "too many rows (infer)": (
        INFER,
        infer_body(shape=[MAX_ROWS + 1, 1, 8, 8], data=ROW * (MAX_ROWS + 1)),
        "application/json",
        422,
        "inputs[0].shape",
    ),
    "unknown output": (
        INFER,
        {**infer_body(), "outputs": [{"name": "embeddings"}]},
        "application/json",
        422,
        "outputs[0].name",
    ),
    "id not a string": (INFER, {**infer_body(), "id": 7}, "application/json", 422, "id"),
    "binary size mismatch": (INFER, None, "application/octet-stream", 422, "inputs[0].parameters.binary_data_size"),
    "body too large": ("/predict", {"rows": [ROW] * 200}, "application/json", 413, "body"),
}


@pytest.fixture(scope="module")
def server(serve_module, models):
    return serve_module(models["image"], max_rows=MAX_ROWS, max_body_bytes=MAX_BODY)


def _send(server, path, body, content_type):
    headers = {"Content-Type": content_type}
    if body is None:  # binary extension: header says 256 bytes, 255 follow
        header = json.dumps(
            infer_body(data=None)
            | {
                "inputs": [
                    {
                        "name": "pixels",
                        "shape": [1, 1, 8, 8],
                        "datatype": "FP32",
                        "parameters": {"binary_data_size": 256},
                    }
                ]
            }
        ).encode()
        headers["Inference-Header-Content-Length"] = str(len(header))
        return server.client.post(path, content=header + b"\0" * 255, headers=headers)
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return server.client.post(path, content=content, headers=headers)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gets_4xx_naming_the_field(server, case):
    path, body, content_type, status, field = CASES[case]
    r = _send(server, path, body, content_type)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    answer = r.json()
    assert answer["field"] == field, answer
    assert answer["error"]


def test_limits_are_named_in_the_message(server):
    r = _send(server, *CASES["too many rows (predict)"][:3])
    assert "DISTILLERY_SERVE_MAX_ROWS" in r.json()["error"] and str(MAX_ROWS) in r.json()["error"]
    r = _send(server, *CASES["body too large"][:3])
    assert "DISTILLERY_SERVE_MAX_BODY_BYTES" in r.json()["error"]


def test_a_chunked_body_over_the_limit_gets_413(server):
    """No Content-Length to refuse it by: the limit holds while reading."""

    def chunks():
        yield b'{"rows": ['
        for _ in range(120):  # about 25 kB
            yield (json.dumps(ROW) + ", ").encode()
        yield json.dumps(ROW).encode() + b"]}"

    r = server.client.post("/predict", content=chunks(), headers={"Content-Type": "application/json"})
    assert "content-length" not in r.request.headers
    assert r.status_code == 413 and r.json()["field"] == "body"


def test_no_content_type_is_read_as_json(server):
    """Triton's HTTP client sends JSON bodies without a Content-Type."""
    r = server.client.post(INFER, content=json.dumps(infer_body()).encode())
    assert "content-type" not in r.request.headers
    assert r.status_code == 200, r.text


def test_mangled_bodies_never_get_a_5xx(server):
    """Truncated, bit-flipped and spliced versions of good bodies."""
    good = [json.dumps(infer_body()).encode(), json.dumps({"rows": [ROW, ROW]}).encode()]
    rng = random.Random(0)
    statuses = []
    for i in range(150):
        body = bytearray(rng.choice(good))
        kind = i % 3
        if kind == 0:
            body = body[: rng.randrange(len(body))]
        elif kind == 1:
            for _ in range(rng.randint(1, 4)):
                body[rng.randrange(len(body))] = rng.choice(b'{}[]",:-.eE0123456789 truefalsnNaI')
        else:
            other = rng.choice(good)
            body = body[: rng.randrange(len(body))] + other[rng.randrange(len(other)) :]
        path = INFER if body.startswith(b'{"inputs"') else "/predict"
        statuses.append(
            server.client.post(path, content=bytes(body), headers={"Content-Type": "application/json"}).status_code
        )
    assert all(s < 500 for s in statuses), sorted(set(statuses))
    assert any(400 <= s < 500 for s in statuses)


def test_after_all_that_the_server_is_ready_and_never_answered_5xx(server):
    assert server.client.get("/v2/health/ready").status_code == 200
    assert server.predict([ROW]).status_code == 200
    from prometheus_client.parser import text_string_to_metric_families

    codes = {
        s.labels["code"]
        for f in text_string_to_metric_families(server.client.get("/metrics").text)
        for s in f.samples
        if s.name == "distillery_requests_total"
    }
    assert codes and not any(c.startswith("5") for c in codes), codes
    assert server.proc.poll() is None
