"""A seeded fuzzer: 600 malformed requests, none answered 5xx.

Each request is drawn from one of the case families below (kept here with
the seed, so a failure replays exactly). Every answer must be a 4xx whose
JSON names the field at fault (413 and 408 included), except a body that is
valid by chance, which may get 200. Afterwards the server is the same
process, live and ready."""

from __future__ import annotations

import json
import random
import socket
import time

import pytest

from .serve_helpers import pixels

SEED = 20261202
REQUESTS = 600
MAX_ROWS, MAX_BODY = 8, 20_000
ROW = pixels(1)[0].ravel().astype(int).tolist()  # 64 pixel values, shape [1, 8, 8]
INFER = "/v2/models/distillery/infer"
DATATYPES = ["FP32", "FP16", "FP64", "INT8", "INT32", "INT64", "UINT8", "BYTES", "BOOL", "fp32", "", None, 7]
GARBAGE = ["\x00", "\u0000\u0000", "\ud7ff", "\uffff", "\u202e", "é", "💥", "\x7f", "\\", '"', "\n", "%00", "../"]


def _infer(**tensor) -> dict:
    return {"inputs": [{"name": "pixels", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": ROW, **tensor}]}


def _nested(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


# Each family: rng -> (path, body bytes, extra headers). Bodies are raw bytes so invalid JSON goes as is.
def truncated(rng):
    good = rng.choice([json.dumps({"rows": [ROW, ROW]}), json.dumps(_infer())]).encode()
    return rng.choice(["/predict", INFER]), good[: rng.randrange(len(good))], {}


def invalid_json(rng):
    body = bytes(rng.randrange(256) for _ in range(rng.randint(1, 200)))
    return rng.choice(["/predict", INFER]), rng.choice([body, b"{" + body, b'{"rows": ' + body]), {}


def deep_nesting(rng):
    depth = rng.choice([65, 100, 990, 1000, 1025, 5000, 100_000])
    where = rng.randrange(4)
    if where == 0:
        return "/predict", ('{"rows": ' + _nested(depth) + "}").encode(), {}
    if where == 1:
        return "/predict", ('{"rows": [' + _nested(depth) + "]}").encode(), {}
    if where == 2:
        return (
            INFER,
            (
                '{"inputs": [{"name": "pixels", "shape": [1,1,8,8], "datatype": "FP32", "data": '
                + _nested(depth)
                + "}]}"
            ).encode(),
            {},
        )
    return INFER, ('{"inputs": ' + _nested(depth, "{}") + "}").encode(), {}


def huge_numbers(rng):
    literal = rng.choice(
        [
            "1e400",
            "-1e400",
            "1" + "0" * rng.randint(20, 5000),
            "1e39",
            "-3.5e38",
            "NaN",
            "Infinity",
            "-Infinity",
            "0x10",
            "1_000",
            "+1",
            ".5",
            "5.",
            "1e",
            "--1",
        ]
    )
    values = [str(v) for v in ROW]
    values[rng.randrange(64)] = literal
    if rng.random() < 0.5:
        return "/predict", ('{"rows": [[' + ", ".join(values) + "]]}").encode(), {}
    return (
        INFER,
        (
            '{"inputs": [{"name": "pixels", "shape": [1,1,8,8], "datatype": "FP32", "data": ['
            + ", ".join(values)
            + "]}]}"
        ).encode(),
        {},
    )


def strings_for_numbers(rng):
    value = rng.choice(['"7"', '""', '"NaN"', "null", "true", "{}", "[]", '"\\u0000"'])
    values = [str(v) for v in ROW]
    values[rng.randrange(64)] = value
    if rng.random() < 0.5:
        return "/predict", ('{"rows": [[' + ", ".join(values) + "]]}").encode(), {}
    target = rng.choice(["data", "shape", "name", "datatype"])
    tensor = _infer()["inputs"][0]
    tensor[target] = json.loads(value) if value not in ('"\\u0000"',) else "\u0000"
    return INFER, json.dumps({"inputs": [tensor]}).encode(), {}


def shapes(rng):
    shape = rng.choice(
        [
            [-1, 1, 8, 8],
            [0, 1, 8, 8],
            [1, 1, 8, 8, 1],
            [1, 64],
            [2, 1, 8, 8],
            [10**12, 1, 8, 8],
            [2**63, 1, 8, 8],
            [1, -8, -8, 1],
            [],
            [1],
            [MAX_ROWS + 1, 1, 8, 8],
            [1.5, 1, 8, 8],
            [True, 1, 8, 8],
            [[1], 1, 8, 8],
            [1, 1, 8, 8] * 20,
        ]
    )
    data = rng.choice([ROW, ROW[: rng.randrange(64)], ROW * 2, [], ROW * (MAX_ROWS + 1)])
    return INFER, json.dumps(_infer(shape=shape, data=data)).encode(), {}


def predict_shapes(rng):
    rows = rng.choice(
        [
            [ROW[: rng.randrange(64)]],
            [ROW, ROW[:10]],
            [[ROW]] * 2,
            [ROW] * (MAX_ROWS + 1),
            [],
            [[[v] for v in ROW]],
            [ROW + ROW],
            [{"pixels": ROW}],
            [None],
            ROW,
        ]
    )
    return "/predict", json.dumps({"rows": rows}).encode(), {}


def datatypes(rng):
    body = _infer(datatype=rng.choice(DATATYPES))
    kind = rng.randrange(3)
    if kind == 1:  # duplicate input
        body["inputs"] = body["inputs"] * rng.randint(2, 5)
    elif kind == 2:  # an extra input with another name
        body["inputs"].append({**body["inputs"][0], "name": rng.choice(["extra", "pixels ", "PIXELS", ""])})
    return INFER, json.dumps(body).encode(), {}


def garbage_text(rng):
    junk = "".join(rng.choice(GARBAGE) for _ in range(rng.randint(1, 30)))
    field = rng.choice(["name", "datatype", "id", "key", "output"])
    if field == "key":
        body = {junk: 1, "inputs": _infer()["inputs"]}
    elif field == "output":
        body = {**_infer(), "outputs": [{"name": junk}]}
    else:
        tensor = _infer()["inputs"][0]
        tensor[field] = junk
        body = {"inputs": [tensor]}
    raw = json.dumps(body, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")
    if rng.random() < 0.3:  # invalid UTF-8 spliced in
        cut = rng.randrange(len(raw))
        raw = raw[:cut] + bytes([0xFF, 0xFE, 0xC0, 0x00]) + raw[cut:]
    return rng.choice([INFER, "/predict"]), raw, {}


def binary_headers(rng):
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "pixels",
                    "shape": [1, 1, 8, 8],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": rng.choice([256, 255, 0, -1, 10**9, "256"])},
                }
            ]
        }
    ).encode()
    payload = b"\0" * rng.choice([0, 255, 256, 257, 1024])
    declared = rng.choice(
        [str(len(header)), str(len(header) + 10), "0", "-5", "abc", str(10**20), "", str(len(header) - 3)]
    )
    return (
        INFER,
        header + payload,
        {"Inference-Header-Content-Length": declared, "Content-Type": "application/octet-stream"},
    )


def body_sizes(rng):
    rows = rng.randint(1, 40)
    body = json.dumps({"rows": [ROW] * rows}).encode()
    pad = MAX_BODY - len(body) + rng.choice([-2, -1, 0, 1, 2, 500])  # around the cap, with spaces
    if pad > 0:
        body = body[:-1] + b" " * pad + b"}"
    return "/predict", body, {}


FAMILIES = [
    truncated,
    invalid_json,
    deep_nesting,
    huge_numbers,
    strings_for_numbers,
    shapes,
    predict_shapes,
    datatypes,
    garbage_text,
    binary_headers,
    body_sizes,
]


@pytest.fixture(scope="module")
def server(serve_module, models):
    return serve_module(models["image"], max_rows=MAX_ROWS, max_body_bytes=MAX_BODY)


def _check(answer, what: str) -> int:
    assert answer.status_code < 500, f"{what}: {answer.status_code} {answer.text[:300]}"
    if answer.status_code != 200:
        assert 400 <= answer.status_code < 500, what
        body = answer.json()
        assert body["error"] and "field" in body, f"{what}: {body}"
    return answer.status_code


def test_six_hundred_seeded_malformed_requests_get_no_5xx(server):
    rng = random.Random(SEED)
    pid = server.proc.pid
    seen: dict[str, set[int]] = {}
    for i in range(REQUESTS):
        family = FAMILIES[i % len(FAMILIES)]
        path, body, headers = family(rng)
        headers = {"Content-Type": "application/json", **headers}
        status = _check(server.client.post(path, content=body, headers=headers), f"request {i} ({family.__name__})")
        seen.setdefault(family.__name__, set()).add(status)
    assert server.proc.pid == pid and server.proc.poll() is None
    assert server.client.get("/v2/health/live").status_code == 200
    # Every family was refused at least once (a fuzzer that only sends good bodies tests nothing).
    assert all(any(s >= 400 for s in statuses) for statuses in seen.values()), seen
    assert 413 in seen["body_sizes"] and 200 in seen["body_sizes"]


def test_chunked_bodies_without_a_length_and_a_slow_body(server):
    def chunks(n: int):
        yield b'{"rows": ['
        for _ in range(n):
            yield (json.dumps(ROW) + ", ").encode()
        yield json.dumps(ROW).encode() + b"]}"

    small = server.client.post("/predict", content=chunks(2), headers={"Content-Type": "application/json"})
    assert "content-length" not in small.request.headers and small.status_code == 200
    big = server.client.post("/predict", content=chunks(200), headers={"Content-Type": "application/json"})
    assert big.status_code == 413 and big.json()["field"] == "body"
    # A body that trickles: answered (it arrives within the request timeout), never a 5xx.
    body = json.dumps({"rows": [ROW]}).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
        )
        for start in range(0, len(body), 40):
            sock.sendall(body[start : start + 40])
            time.sleep(0.01)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert server.client.get("/v2/health/ready").status_code == 200
