"""A seeded fuzzer: 600 malformed requests, none answered 5xx; then 300
malformed picture files to a model that takes them.

Each request is drawn from one of the case families below (kept here with
the seed, so a failure replays exactly). Every answer must be a 4xx whose
JSON names the field at fault (413 and 408 included), except a body that is
valid by chance, which may get 200. Afterwards the server is the same
process, live and ready."""

from __future__ import annotations

import base64
import json
import random
import socket
import time
import zlib

import httpx
import pytest

from .serve_helpers import picture_file, pixels

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


# Picture files, to the model of a folder of pictures (16 x 16 RGB): each family takes a valid file and breaks it.
PICTURE_FORMATS = ["PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"]
PICTURE_TYPES = ["image/png", "image/jpeg", "image/webp", "image/gif", "image/bmp", "image/tiff"]
MAX_PIXELS = 1_000_000


def _a_picture(rng) -> bytes:
    size = (rng.randint(1, 40), rng.randint(1, 40))
    return picture_file(seed=rng.randrange(1000), size=size, fmt=rng.choice(PICTURE_FORMATS))


def _as_body(rng, data: bytes):
    return "/predict", data, {"Content-Type": rng.choice([*PICTURE_TYPES, "application/octet-stream"])}


def truncated_picture(rng):
    data = _a_picture(rng)
    return _as_body(rng, data[: rng.randrange(len(data))])


def not_a_picture(rng):
    data = rng.choice([b"", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"\xff\xd8\xff", b"BM", b"II*\x00", b"RIFF"])
    junk = rng.choice([b"", b"hello, I am text", bytes(rng.randrange(256) for _ in range(rng.randint(1, 300)))])
    return _as_body(rng, data + junk)


def bomb_header(rng):
    """A valid PNG whose header claims another size (its checksum made right): huge, zero, or
    just over or under the pixel limit."""
    data = bytearray(picture_file(seed=rng.randrange(1000)))
    side = rng.choice([0, 1, 999, 1000, 1001, 65535, 100_000, 2**31 - 1, 2**32 - 1])
    data[16:24] = side.to_bytes(4, "big") + rng.choice([side, 1, 1000]).to_bytes(4, "big")
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    return _as_body(rng, bytes(data))


def flipped_bytes(rng):
    data = bytearray(_a_picture(rng))
    for _ in range(rng.randint(1, 8)):
        data[rng.randrange(len(data))] = rng.randrange(256)
    return _as_body(rng, bytes(data))


def garbage_multipart(rng):
    files = [("file", (f"{i}.png", _a_picture(rng), "image/png")) for i in range(rng.randint(0, MAX_ROWS + 1))]
    request = httpx.Request("POST", "http://x/predict", files=files or None, data=None if files else {"a": "b"})
    body, content_type = request.read(), request.headers["Content-Type"]
    boundary = content_type.partition("boundary=")[2].encode()
    how = rng.randrange(8)
    if how == 0:  # another boundary, or none
        content_type = rng.choice(
            [
                "multipart/form-data",
                "multipart/form-data; boundary=",
                content_type + "x",
                content_type.encode() + b"\xff",
            ]
        )
    elif how == 1:  # cut anywhere
        body = body[: rng.randrange(len(body) + 1)]
    elif how == 2:  # a delimiter without its line end, or with junk after it
        body = body.replace(
            b"--" + boundary + b"\r\n", b"--" + boundary + rng.choice([b"", b"junk\r\n", b" \t\r\n"]), 1
        )
    elif how == 3:  # no blank line after a part's headers, or bytes that are not text in them
        body = body.replace(b"\r\n\r\n", rng.choice([b"\r\n", b"\xff\xfe\r\n\r\n", b"; filename*=x\xc3\r\n\r\n"]), 1)
    elif how == 4:  # bytes spliced in
        cut = rng.randrange(len(body) + 1)
        body = body[:cut] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 40))) + body[cut:]
    elif how == 5:  # a quoted boundary, headers in another case, a preamble
        content_type = content_type.replace(f"boundary={boundary.decode()}", f'BOUNDARY="{boundary.decode()}"')
        body = b"preamble\r\n" + body.replace(b"Content-Disposition", b"content-DISPOSITION")
    elif how == 6:  # an empty part, a part without headers
        body = b"--" + boundary + rng.choice([b"\r\n\r\n\r\n", b"\r\n\r\nabc\r\n"]) + body
    else:  # the close delimiter only
        body = b"--" + boundary + b"--\r\n"
    return "/predict", body, {"Content-Type": content_type}


def bytes_inputs(rng):
    pictures = [_a_picture(rng) for _ in range(rng.randint(1, 3))]
    encoded = [base64.b64encode(p).decode() for p in pictures]
    tensor: dict = {"name": "pixels", "shape": [len(pictures)], "datatype": "BYTES"}
    how = rng.randrange(6)
    if how == 0:  # not base64, not strings, nested
        tensor["data"] = rng.choice([["!!" + encoded[0]], [1], [None], [encoded], encoded[0], [encoded[0][:-3]]])
    elif how == 1:  # a shape that is not [n]
        tensor["data"] = encoded
        tensor["shape"] = rng.choice([[], [0], [len(pictures), 1], [len(pictures) + 1], [1, 3, 16, 16], [MAX_ROWS + 1]])
    elif how == 2:  # the right shape, base64 of a broken picture
        tensor["data"] = [base64.b64encode(p[: rng.randrange(len(p))]).decode() for p in pictures]
    else:  # the binary extension, with lengths that lie
        part = b"".join(len(p).to_bytes(4, "little") + p for p in pictures)
        if how == 3:
            at = rng.randrange(0, len(part) - 3)
            part = part[:at] + rng.choice([0, 1, 2**31, 2**32 - 1]).to_bytes(4, "little") + part[at + 4 :]
        elif how == 4:
            part = part[: rng.randrange(len(part))]
        declared = rng.choice([len(part), len(part) + 1, len(part) - 1, 0, -1, "x"])
        tensor["parameters"] = {"binary_data_size": declared}
        header = json.dumps({"inputs": [tensor]}).encode()
        headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))}
        return INFER, header + part, headers
    return INFER, json.dumps({"inputs": [tensor]}).encode(), {"Content-Type": "application/json"}


PICTURE_FAMILIES = [
    truncated_picture,
    not_a_picture,
    bomb_header,
    flipped_bytes,
    garbage_multipart,
    bytes_inputs,
]


@pytest.fixture(scope="module")
def server(serve_module, models):
    return serve_module(models["image"], max_rows=MAX_ROWS, max_body_bytes=MAX_BODY)


@pytest.fixture(scope="module")
def picture_server(serve_module, models):
    return serve_module(models["picture"], max_rows=MAX_ROWS, max_body_bytes=MAX_BODY, max_image_pixels=MAX_PIXELS)


def _check(answer, what: str) -> int:
    assert answer.status_code < 500, f"{what}: {answer.status_code} {answer.text[:300]}"
    if answer.status_code != 200:
        assert 400 <= answer.status_code < 500, what
        body = answer.json()
        assert body["error"] and "field" in body, f"{what}: {body}"
    return answer.status_code


def _fuzz(server, families: list, requests: int, seed: int) -> dict[str, set[int]]:
    """`requests` drawn from `families` in turn; each family's statuses. None may be a 5xx,
    every family must be refused at least once (a fuzzer that only sends good bodies tests
    nothing), and the server must be the same process, live, afterwards."""
    rng = random.Random(seed)
    pid = server.proc.pid
    seen: dict[str, set[int]] = {}
    for i in range(requests):
        family = families[i % len(families)]
        path, body, headers = family(rng)
        headers = {"Content-Type": "application/json", **headers}
        status = _check(server.client.post(path, content=body, headers=headers), f"request {i} ({family.__name__})")
        seen.setdefault(family.__name__, set()).add(status)
    assert server.proc.pid == pid and server.proc.poll() is None
    assert server.client.get("/v2/health/live").status_code == 200
    assert all(any(s >= 400 for s in statuses) for statuses in seen.values()), seen
    return seen


def test_six_hundred_seeded_malformed_requests_get_no_5xx(server):
    seen = _fuzz(server, FAMILIES, REQUESTS, SEED)
    assert 413 in seen["body_sizes"] and 200 in seen["body_sizes"]


def test_three_hundred_malformed_picture_files_get_no_5xx(picture_server):
    seen = _fuzz(picture_server, PICTURE_FAMILIES, 300, SEED + 1)
    assert {413, 422} <= seen["bomb_header"], seen  # over the pixel limit, and a header that lies about the data
    assert 400 in seen["garbage_multipart"] and 422 in seen["truncated_picture"], seen


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
