"""The published OpenAPI document (/openapi.json) against the real server.

The document is generated from the route table (deploy.app.ROUTES) and the
formats (deploy.protocol). Here it must list every route of the table and no
other, with the statuses the table gives each; and every route x status pair
is provoked on servers on loopback and its answer (status, Content-Type, the
headers the document requires, the body) checked against the document with
openapi-schema-validator. The one status no request from outside can cause,
500, is caused inside the real application (a handler made to fail) for every
route, and checked the same way.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import pytest
from openapi_schema_validator import OAS31Validator
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from deploy.app import ROUTES, Route, ServingApp
from deploy.server import build_app
from deploy.settings import load_settings

from .serve_helpers import image_model, picture_file, pixels, replace_file, slow_model, table_model, wait_until

TOKEN = "openapi-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_BODY, MAX_ROWS = 4096, 4
HEADER_TIMEOUT_S, REQUEST_TIMEOUT_S = 0.5, 1.0
MAX_CONNECTIONS = 32
TIMEOUT_S = 0.1  # the 504 server's request timeout: a fraction of one request's onnxruntime run there
TABLE_ROWS = [
    {"bill": 39.1, "mass": 3750, "island": "Torgersen", "sex": "MALE"},
    {"bill": None, "mass": 5200.5, "island": "Biscoe", "sex": None},
]
# Statuses no request can cause, by route: (method, path, status) -> why. 500 is a bug's answer;
# test_a_bug_answers_500_on_every_route_as_the_document_says causes it in the application instead.
NOT_PROVOKED = {
    (r.method, p, 500): "only a bug answers 500; provoked in-process below" for r in ROUTES for p in r.paths
}


@dataclass
class Exchange:
    """One request and its answer, by the route (method and path template) it was for."""

    method: str  # the route's method (a 405 was asked with another)
    path: str  # the route's path template, as in the document
    sent: str  # what was sent, for messages
    status: int
    content_type: str
    headers: dict[str, str]
    body: bytes
    request: Any = None  # the JSON body sent, when the answer is 200


@dataclass
class Recorder:
    exchanges: list[Exchange] = field(default_factory=list)

    def http(
        self,
        server,
        route: Route,
        path: str,
        expect: int,
        *,
        concrete: str | None = None,
        method: str | None = None,
        token: bool = True,
        **kw: Any,
    ) -> httpx.Response:
        """Send one request for `route` at its template `path` (to the served model, unless `concrete` says
        otherwise) and keep the answer, which must have status `expect`."""
        method = method or route.method
        concrete = concrete or fill(path, server.version)
        kw["headers"] = {**(AUTH if token else {}), **kw.get("headers", {})}
        r = server.client.request(method, concrete, **kw)
        assert r.status_code == expect, f"{method} {concrete}: {r.status_code} {r.text[:500]}"
        self.exchanges.append(
            Exchange(
                route.method,
                path,
                f"{method} {concrete}",
                r.status_code,
                r.headers.get("content-type", ""),
                {k.lower(): v for k, v in r.headers.items()},
                r.content,
                kw.get("json") if expect == 200 else None,
            )
        )
        return r

    def raw(self, route: Route, path: str, sent: str, answer: bytes, expect: int) -> None:
        status, headers, body = parse_answer(answer)
        assert status == expect, f"{sent}: {answer[:500]!r}"
        self.exchanges.append(
            Exchange(route.method, path, sent, status, headers.get("content-type", ""), headers, body)
        )


def fill(path: str, served: str, **values: str) -> str:
    """A route's path template with its parameters filled in: the model served, at version `served`, unless said."""
    values = {"name": "distillery", "version": served, "asset": "swagger-ui.css", **values}
    return re.sub(r"{(\w+)}", lambda m: values[m.group(1)], path)


def started(server):
    """`server`, ready, with its model's version (a file's: its sha256 prefix) at hand."""
    server.wait_ready()
    server.version = server.client.get("/v2/models/distillery", headers=AUTH).json()["versions"][0]
    return server


def infer_body(x: np.ndarray, input_name: str = "pixels") -> dict:
    return {"inputs": [{"name": input_name, "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}


def ok_request(route: Route) -> dict:
    """The request that gets a 200 from `route` on an image model."""
    if route.handler == "predict":
        return {"json": {"rows": pixels(1).tolist()}}
    if route.handler == "infer":
        return {"json": infer_body(pixels(1))}
    return {}


def other_method(route: Route) -> str:
    return "POST" if route.method == "GET" else "GET"


def parse_answer(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split(" ", 2)[1]), headers, body[: int(headers.get("content-length", len(body)))]


def read_until_closed(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def read_one_answer(sock: socket.socket) -> bytes:
    """One answer on a kept-alive connection (the connection stays open)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    _, headers, _ = parse_answer(data)
    length = int(headers.get("content-length", 0))
    while len(data.partition(b"\r\n\r\n")[2]) < length:
        data += sock.recv(65536)
    return data


def request_head(method: str, path: str, auth: bool = True) -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: x\r\n" + (f"Authorization: Bearer {TOKEN}\r\n" if auth else "")
    ).encode()


def every_path() -> list[tuple[Route, str]]:
    return [(route, path) for route in ROUTES for path in route.paths]


def paths_of(handler: str) -> list[tuple[Route, str]]:
    return [(route, path) for route, path in every_path() if route.handler == handler]


# --------------------------------------------------------------------------- the servers


@pytest.fixture(scope="module")
def main_server(serve_module, models, tmp_path_factory):
    """An image model served from a file the test can replace, with a token and small limits."""
    path = tmp_path_factory.mktemp("openapi") / "model.onnx"
    replace_file(path, models["image"])
    server = serve_module(
        path,
        token=TOKEN,
        max_rows=MAX_ROWS,
        max_body_bytes=MAX_BODY,
        header_timeout_s=HEADER_TIMEOUT_S,
        request_timeout_s=REQUEST_TIMEOUT_S,
        keep_alive_s=30,
        max_connections=MAX_CONNECTIONS,
        drain_grace_s=60,
    )
    server.model_path = path
    return started(server)


@pytest.fixture(scope="module")
def document(main_server) -> dict:
    r = main_server.client.get("/openapi.json", headers=AUTH)
    assert r.status_code == 200
    return r.json()


@pytest.fixture(scope="module")
def task_models(tmp_path_factory) -> dict:
    """One model per kind of /predict answer: a value (regression), a class (binary), labels (multilabel)."""
    folder = tmp_path_factory.mktemp("openapi-tasks")
    return {
        "regression": table_model(
            folder / "regression.onnx", seed=7, task="regression", classes=(), n_outputs=1, target_units=(100.0, 10.0)
        ),
        "binary": table_model(folder / "binary.onnx", seed=6, task="binary", classes=("no", "yes"), n_outputs=1),
        "multilabel": image_model(
            folder / "multilabel.onnx", seed=5, n_classes=4, task="multilabel", classes=["w", "x", "y", "z"]
        ),
    }


@pytest.fixture(scope="module")
def exchanges(document, main_server, serve_module, models, task_models, tmp_path_factory) -> list[Exchange]:
    """Every route x status the servers can be made to answer, asked for (the document is fetched first)."""
    rec = Recorder()
    # Started together, while the main server is being asked: each takes seconds to load.
    slower = slow_model(tmp_path_factory.mktemp("openapi-slow") / "slower.onnx", spread=768 * 4)
    timeouts = serve_module(slower, ready=False, request_timeout_s=TIMEOUT_S)
    overload = serve_module(models["slow"], ready=False, max_concurrency=1, max_queue=0)
    tasks = {task: serve_module(path, ready=False) for task, path in task_models.items()}
    pictures = serve_module(models["picture"], ready=False, max_image_pixels=10_000)

    _ask_every_route(rec, main_server)
    _pictures(rec, started(pictures), main_server)
    _slow_bodies(rec, main_server)
    _slow_headers(rec, main_server)
    _too_many_connections(rec, main_server)
    _refused_reload(rec, main_server, models)
    _not_ready(rec, main_server)
    _timeouts(rec, started(timeouts))
    _overload(rec, started(overload))
    for server in tasks.values():
        _answers_of_a_task(rec, started(server))
    return rec.exchanges


def _ask_every_route(rec: Recorder, server) -> None:
    """What one request can cause: 200, 401, 405, 400, 404, and the refusals of a body."""
    for route, path in every_path():
        rec.http(server, route, path, 200, **ok_request(route))
        if route.auth:
            rec.http(server, route, path, 401, token=False, **ok_request(route))
        rec.http(server, route, path, 405, method=other_method(route))
        params = re.findall(r"{(\w+)}", path)
        if path.startswith("/v2/") and params:  # a separator in the last parameter, escaped
            rec.http(server, route, path, 400, concrete=fill(path, server.version, **{params[-1]: "a%2Fb"}))
        if "version" in params:
            rec.http(server, route, path, 404, concrete=fill(path, "0"), **ok_request(route))
        elif "name" in params:
            rec.http(server, route, path, 404, concrete=fill(path, server.version, name="other"), **ok_request(route))
        elif "asset" in params:
            rec.http(server, route, path, 404, concrete=fill(path, server.version, asset="other.js"))
        if route.request is not None:  # a body is read
            json_type = {"Content-Type": "application/json"}
            rec.http(server, route, path, 400, content=b"{", headers=json_type)
            rec.http(server, route, path, 413, content=b"[" + b"0," * MAX_BODY + b"0]", headers=json_type)
            rec.http(server, route, path, 415, content=b"rows", headers={"Content-Type": "text/plain"})
            too_many = pixels(MAX_ROWS + 1)
            rec.http(
                server,
                route,
                path,
                422,
                json={"rows": too_many.tolist()} if route.handler == "predict" else infer_body(too_many),
            )
        if route.handler == "infer":
            body = json.dumps(infer_body(pixels(2))).encode()
            rec.http(server, route, path, 400, content=body, headers={"Inference-Header-Content-Length": "x"})
            # The binary tensor extension, both ways.
            x = pixels(2)
            header = json.dumps(
                {
                    "inputs": [
                        {
                            "name": "pixels",
                            "shape": [2, 1, 8, 8],
                            "datatype": "FP32",
                            "parameters": {"binary_data_size": x.nbytes},
                        }
                    ],
                    "parameters": {"binary_data_output": True},
                }
            ).encode()
            r = rec.http(
                server,
                route,
                path,
                200,
                content=header + x.astype("<f4").tobytes(),
                headers={
                    "Content-Type": "application/octet-stream",
                    "Inference-Header-Content-Length": str(len(header)),
                },
            )
            assert r.headers["content-type"] == "application/octet-stream"


def _pictures(rec: Recorder, server, json_only) -> None:
    """Picture files, to a model that takes them (`server`) and to one that does not (`json_only`)."""
    import base64
    import io

    from PIL import Image

    png, image_type = picture_file(), {"Content-Type": "image/png"}
    bomb = io.BytesIO()
    Image.new("L", (200, 200)).save(bomb, "PNG")  # 40,000 pixels; the server takes 10,000
    for route, path in paths_of("predict"):
        rec.http(server, route, path, 200, token=False, content=png, headers=image_type)
        rec.http(server, route, path, 200, token=False, files=[("file", ("a.png", png)), ("file", ("b.png", png))])
        rec.http(server, route, path, 413, token=False, content=bomb.getvalue(), headers=image_type)
        rec.http(server, route, path, 422, token=False, content=png[:50], headers=image_type)
        cut = {"Content-Type": "multipart/form-data; boundary=x"}
        rec.http(server, route, path, 400, token=False, content=b"--x\r\n\r\n" + png, headers=cut)
        rec.http(json_only, route, path, 415, content=png, headers=image_type)
    tensor = {"name": "pixels", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(png).decode()]}
    for route, path in paths_of("infer"):
        rec.http(server, route, path, 200, token=False, json={"inputs": [tensor]})
    for route, path in paths_of("model_metadata")[:1]:
        assert "image" in rec.http(server, route, path, 200, token=False).json()["parameters"]


def _slow_bodies(rec: Recorder, server) -> None:
    """408: a body that stops arriving (every route that reads one), all at once."""
    body = json.dumps({"rows": pixels(1).tolist()}).encode()
    socks = []
    for route, path in every_path():
        if route.request is not None:
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=15)
            sock.sendall(
                request_head("POST", fill(path, server.version))
                + b"Content-Type: application/json\r\n"
                + b"Content-Length: %d\r\n\r\n" % len(body)
                + body[:10]
            )
            socks.append((route, path, sock))
    for route, path, sock in socks:
        with sock:
            rec.raw(route, path, f"POST {path} (a stalled body)", read_until_closed(sock), 408)


def _slow_headers(rec: Recorder, server) -> None:
    """408: headers that stop arriving, on every route, all at once (deploy.connections)."""
    socks = []
    for route, path in every_path():
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=15)
        sock.sendall(request_head(route.method, fill(path, server.version)))  # no blank line: the headers never end
        socks.append((route, path, sock))
    for route, path, sock in socks:
        with sock:
            rec.raw(route, path, f"{route.method} {path} (stalled headers)", read_until_closed(sock), 408)


def _too_many_connections(rec: Recorder, server) -> None:
    """503: a request on a connection over DISTILLERY_SERVE_MAX_CONNECTIONS, on every route. The answer
    comes as the connection is accepted; the request, sent at once as clients do, is dropped unread."""
    held = []
    try:
        for _ in range(MAX_CONNECTIONS + 2):  # kept alive after one answer each, until one is refused
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=15)
            held.append(sock)
            sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            if parse_answer(read_one_answer(sock))[0] == 503:
                break
        else:
            raise AssertionError(f"no connection was refused after {len(held)}")
        for route, path in every_path():
            with socket.create_connection(("127.0.0.1", server.port), timeout=15) as sock:
                sock.sendall(request_head(route.method, fill(path, server.version)) + b"\r\n")
                rec.raw(
                    route, path, f"{route.method} {path} (connection {len(held) + 1})", read_until_closed(sock), 503
                )
    finally:
        for sock in held:
            sock.close()
    wait_until(
        lambda: server.client.get("/v2/health/live").status_code == 200, message="the connections were not freed"
    )


def _refused_reload(rec: Recorder, server, models) -> None:
    """409: the file is replaced by a model clients could not call the same way (4 classes)."""
    replace_file(server.model_path, models["four_classes"])
    for route, path in paths_of("load"):
        r = rec.http(server, route, path, 409)
        assert r.json()["status"] == "refused" and "classes differ" in r.json()["error"]


def _not_ready(rec: Recorder, server) -> None:
    """503 from the readiness routes: SIGTERM starts draining (DISTILLERY_SERVE_DRAIN_GRACE_S)."""
    server.proc.send_signal(signal.SIGTERM)
    wait_until(lambda: server.client.get("/v2/health/ready").status_code == 503, message="readiness stayed 200")
    for handler in ("ready", "model_ready"):
        for route, path in paths_of(handler):
            assert rec.http(server, route, path, 503).json()["ready"] is False


def _timeouts(rec: Recorder, server) -> None:
    """504: each onnxruntime run of this model takes longer than the request timeout; so does a reload,
    which loads the file again and runs two rows through it."""
    for handler in ("predict", "infer", "load"):
        for route, path in paths_of(handler):
            kw = (
                {"json": {"rows": pixels(2).tolist()}}
                if handler == "predict"
                else ({"json": infer_body(pixels(2))} if handler == "infer" else {})
            )
            rec.http(server, route, path, 504, token=False, **kw)


def _overload(rec: Recorder, server) -> None:
    """503 with Retry-After: one slot, no queue, and requests at once on every prediction route."""
    asked = [(route, path) for route, path in paths_of("predict") + paths_of("infer") for _ in range(3)]

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(
            base_url=server.url, timeout=60, limits=httpx.Limits(max_connections=len(asked))
        ) as client:
            return await asyncio.gather(
                *(
                    client.request(route.method, fill(path, server.version), **ok_request(route))
                    for route, path in asked
                )
            )

    refused: dict[str, tuple[Route, httpx.Response]] = {}
    for _ in range(5):  # until each route has been refused once
        for (route, path), r in zip(asked, asyncio.run(burst())):
            assert r.status_code in (200, 503), r.text
            if r.status_code == 503:
                refused.setdefault(path, (route, r))
        if len(refused) == len(asked) // 3:
            break
    assert len(refused) == len(asked) // 3, f"not every prediction route was refused: {list(refused)}"
    for path, (route, r) in refused.items():
        rec.exchanges.append(
            Exchange(
                route.method,
                path,
                f"{route.method} {path} (at capacity)",
                503,
                r.headers["content-type"],
                {k.lower(): v for k, v in r.headers.items()},
                r.content,
            )
        )


def _answers_of_a_task(rec: Recorder, server) -> None:
    """200 from /predict, infer and the metadata, for each kind of answer (value, class, labels)."""
    meta = server.client.get("/v2/models/distillery").json()
    table = meta["parameters"]["kind"] == "table"
    x = np.zeros((2, *meta["inputs"][0]["shape"][1:]), np.float32)
    for route, path in paths_of("predict"):
        r = rec.http(server, route, path, 200, token=False, json={"rows": TABLE_ROWS if table else pixels(2).tolist()})
        assert r.json()["task"] == meta["parameters"]["task"]
    for route, path in paths_of("infer")[:1] + paths_of("model_metadata")[:1]:
        rec.http(
            server,
            route,
            path,
            200,
            token=False,
            **({"json": infer_body(x, meta["inputs"][0]["name"])} if route.handler == "infer" else {}),
        )


# --------------------------------------------------------------------------- the checks


def check(document: dict, exchange: Exchange) -> list[str]:
    """What in `exchange` the document does not allow."""
    where = f"{exchange.sent} -> {exchange.status}"
    operation = document["paths"].get(exchange.path, {}).get(exchange.method.lower())
    if operation is None:
        return [f"{where}: no operation {exchange.method} {exchange.path} in the document"]
    response = operation["responses"].get(str(exchange.status))
    if response is None:
        return [f"{where}: the document gives {exchange.path} no {exchange.status}"]
    problems = [
        f"{where}: no {name} header"
        for name, header in response.get("headers", {}).items()
        if header.get("required") and name.lower() not in exchange.headers
    ]
    media = exchange.content_type.split(";")[0].strip()
    if media not in response["content"]:
        return problems + [f"{where}: Content-Type {media!r}, the document says {list(response['content'])}"]
    binary_header = exchange.headers.get("inference-header-content-length")
    if media == "application/json":
        instance = json.loads(exchange.body)
    elif media.startswith("text/"):
        instance = exchange.body.decode()
    elif binary_header is not None:  # the binary tensor extension: a JSON header, then the tensors
        media, instance = "application/json", json.loads(exchange.body[: int(binary_header)])
    else:  # bytes: the document says only that they are bytes
        return problems
    problems += [
        f"{where}: {error.json_path}: {error.message}"
        for error in validator(
            document,
            [
                "paths",
                exchange.path,
                exchange.method.lower(),
                "responses",
                str(exchange.status),
                "content",
                media,
                "schema",
            ],
        ).iter_errors(instance)
    ]
    if exchange.request is not None:
        problems += [
            f"{where}: the request {error.json_path}: {error.message}"
            for error in validator(
                document,
                [
                    "paths",
                    exchange.path,
                    exchange.method.lower(),
                    "requestBody",
                    "content",
                    "application/json",
                    "schema",
                ],
            ).iter_errors(exchange.request)
        ]
    return problems


def validator(document: dict, pointer: list[str]) -> OAS31Validator:
    """An OpenAPI 3.1 schema validator for the schema at `pointer` in `document` (its $refs resolved there)."""
    registry = Registry().with_resource("urn:openapi", DRAFT202012.create_resource(document))
    escaped = "/".join(part.replace("~", "~0").replace("/", "~1") for part in pointer)
    return OAS31Validator({"$ref": f"urn:openapi#/{escaped}"}, registry=registry)


def test_the_document_is_valid_openapi_3_1(document):
    from openapi_spec_validator import validate

    validate(document)
    assert document["openapi"].startswith("3.1") and document["security"] == [{"bearer": []}]


def test_the_document_has_every_route_of_the_table_and_no_other(document):
    table = {(route.method, path) for route, path in every_path()}
    published = {(method.upper(), path) for path, operations in document["paths"].items() for method in operations}
    assert published == table
    for route, path in every_path():
        responses = document["paths"][path][route.method.lower()]["responses"]
        assert set(map(int, responses)) == route.statuses, (route.method, path)
        assert ("security" in document["paths"][path][route.method.lower()]) == (not route.auth)
        if route.request is not None:
            assert document["paths"][path][route.method.lower()]["requestBody"]["required"]


def test_the_document_declares_the_picture_bodies(document):
    """/predict reads JSON rows, a picture (its type, or octet-stream) or a multipart upload; infer a BYTES input."""
    content = document["paths"]["/predict"]["post"]["requestBody"]["content"]
    pictures = ["image/png", "image/jpeg", "image/webp", "image/gif", "image/bmp", "image/tiff"]
    assert set(content) == {"application/json", *pictures, "application/octet-stream", "multipart/form-data"}
    for media in [*pictures, "application/octet-stream"]:
        assert content[media]["schema"] == {"type": "string", "format": "binary"}
    form = document["components"]["schemas"][content["multipart/form-data"]["schema"]["$ref"].rsplit("/", 1)[1]]
    assert form["properties"]["file"]["items"] == {"type": "string", "format": "binary"}
    tensor = document["components"]["schemas"]["TensorInput"]["properties"]["datatype"]
    assert tensor["enum"] == ["FP32", "BYTES"]


def test_every_answer_is_as_the_document_says(document, exchanges):
    problems = [problem for exchange in exchanges for problem in check(document, exchange)]
    assert not problems, "\n".join(problems)


def test_every_status_of_every_route_was_provoked(exchanges):
    declared = {(route.method, path, status) for route, path in every_path() for status in route.statuses}
    provoked = {(e.method, e.path, e.status) for e in exchanges}
    assert provoked <= declared, sorted(provoked - declared)
    missing = declared - provoked - set(NOT_PROVOKED)
    assert not missing, f"declared but never provoked: {sorted(missing)}"
    assert not provoked & set(NOT_PROVOKED), "provoked after all: take it out of NOT_PROVOKED"


def test_each_kind_of_answer_was_checked(exchanges):
    """The /predict answers checked include a value, a class and labels."""
    answers = [json.loads(e.body) for e in exchanges if e.path == "/predict" and e.status == 200]
    kinds = {key for answer in answers for key in answer["predictions"][0] if key in ("value", "class", "labels")}
    assert kinds == {"value", "class", "labels"}


def test_a_bug_answers_500_on_every_route_as_the_document_says(document, models, tmp_path, monkeypatch):
    """In the real application (deploy.server.build_app), each handler made to raise."""

    async def bug(self, request):
        raise RuntimeError("a bug")

    for route in ROUTES:
        monkeypatch.setattr(ServingApp, route.handler, bug)
    settings = load_settings(
        {
            "DISTILLERY_SERVE_MODEL": str(models["image"]),
            "DISTILLERY_SERVE_LOG_DIR": str(tmp_path),
            "DISTILLERY_SERVE_TOKEN": TOKEN,
        }
    )
    app = build_app(settings)
    version = app.manager.current.version

    async def call(method: str, path: str) -> Exchange:
        sent: list[dict] = []

        async def receive() -> dict:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict) -> None:
            sent.append(message)

        headers = [(b"authorization", f"Bearer {TOKEN}".encode())]
        await app(
            {
                "type": "http",
                "method": method,
                "path": path,
                "raw_path": path.encode(),
                "headers": headers,
                "query_string": b"",
            },
            receive,
            send,
        )
        start, body = sent
        answer_headers = {k.decode().lower(): v.decode() for k, v in start["headers"]}
        return Exchange(
            method,
            path,
            f"{method} {path}",
            start["status"],
            answer_headers["content-type"],
            answer_headers,
            body["body"],
        )

    async def every_route() -> list[Exchange]:
        answers = []
        for route, path in every_path():
            exchange = await call(route.method, fill(path, version))
            exchange.path = path
            answers.append(exchange)
        return answers

    answers = asyncio.run(every_route())
    assert [e.status for e in answers] == [500] * len(answers)
    assert {(e.method, e.path, 500) for e in answers} == set(NOT_PROVOKED)
    problems = [problem for exchange in answers for problem in check(document, exchange)]
    assert not problems, "\n".join(problems)
    assert "request id" in json.loads(answers[0].body)["error"]
