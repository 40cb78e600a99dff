"""The server as a plain ASGI application.

Why not FastAPI routes: on two cores a FastAPI route with a pydantic body spends
more time in the framework (dependency solving, validation, jsonable_encoder, a
thread-pool hop) than onnxruntime spends on a small model. Here a request costs
a dict lookup to route, one orjson parse, numpy checks and one shared
onnxruntime run per micro-batch. FastAPI still provides the Swagger UI at /docs.

The endpoints are the route table, ROUTES below: each route's method, path,
handler, what it reads and answers (types from deploy.protocol) and every
status it can answer. The router is built from it, and so is the OpenAPI
document at /openapi.json (deploy.openapi); tests/serve/test_openapi.py
provokes each status of each route (on servers on loopback; a bug's 500
inside the application) and checks every answer against that document.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import itertools
import logging
import os
import re
import signal
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata as importlib_metadata
from pathlib import Path
from time import perf_counter
from typing import Any, Awaitable, Callable, Mapping

import orjson
from prometheus_client import CONTENT_TYPE_LATEST

from deploy import protocol
from deploy.batching import Admission, Batcher, Deadlines, Overloaded
from deploy.images import IMAGE_MEDIA, MULTIPART, OCTET_STREAM, PICTURE_MEDIA, decode_pictures, pictures_of, policy_of
from deploy.metrics import Metrics
from deploy.openapi import openapi_document
from deploy.predlog import Entry, PredictionLog
from deploy.protocol import (
    ErrorBody,
    InferRequest,
    InferResponse,
    Live,
    ModelMetadata,
    ModelParameters,
    ModelStatistics,
    ModelStats,
    Picture,
    PictureForm,
    PredictRequest,
    PredictResponse,
    Readiness,
    ReloadResult,
    RepositoryModel,
    RequestError,
    ServerMetadata,
)
from deploy.reload import ModelManager
from deploy.settings import ServeSettings
from tasks.core.task import task_of

log = logging.getLogger("deploy.app")

JSON = b"application/json"
DOCS_ASSETS = {"swagger-ui-bundle.js": b"text/javascript", "swagger-ui.css": b"text/css", "favicon.png": b"image/png"}
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
EXTENSIONS = ["binary_tensor_data", "model_repository", "statistics"]
HEADERS_WANTED = frozenset(
    (b"content-type", b"content-length", b"authorization", b"x-request-id", b"inference-header-content-length")
)


# --------------------------------------------------------------------------- the route table


@dataclasses.dataclass(frozen=True)
class Outcome:
    """A way a request can end other than 200: its status, what it means (the
    document's words), its body, and the headers that always come with it."""

    status: int
    description: str
    body: Any = ErrorBody
    headers: tuple[str, ...] = ()


BAD_JSON = Outcome(400, "the body is not JSON (or is empty)")
BAD_MULTIPART = Outcome(400, "a multipart/form-data body without its boundary, or cut short; field names the part")
BAD_BINARY_HEADER = Outcome(400, "Inference-Header-Content-Length is not a byte count within the body")
BAD_NAME = Outcome(400, "a model name or version holds a path separator ('/' or '\\', escaped or not)")
UNAUTHORIZED = Outcome(
    401, "missing or wrong bearer token (DISTILLERY_SERVE_TOKEN is set)", headers=("WWW-Authenticate",)
)
UNKNOWN_MODEL = Outcome(404, "this server serves another model, or another version of it")
UNKNOWN_FILE = Outcome(404, "no such file")
WRONG_METHOD = Outcome(405, "the path takes another method; Allow names it", headers=("Allow",))
SLOW_HEADERS = Outcome(
    408, "the headers did not arrive within DISTILLERY_SERVE_HEADER_TIMEOUT_S; the connection is closed"
)
SLOW_BODY = Outcome(408, "the body did not arrive within DISTILLERY_SERVE_REQUEST_TIMEOUT_S; the connection is closed")
RELOAD_REFUSED = Outcome(
    409, "the candidate failed a check and is not served; the served model is unchanged", ReloadResult
)
TOO_LARGE = Outcome(413, "the body is larger than DISTILLERY_SERVE_MAX_BODY_BYTES; the connection is closed")
WRONG_MEDIA = Outcome(415, "the Content-Type is not one of the request body's")
NO_IMAGE_POLICY = Outcome(
    415,
    "picture files for a model that takes JSON rows (a table model, or an image model trained on pixel "
    "arrays: no preprocessing.image in its metadata)",
)
TOO_MANY_PIXELS = Outcome(
    413, "the pictures hold more pixels than DISTILLERY_SERVE_MAX_IMAGE_PIXELS (a decompression bomb); field names it"
)
UNREADABLE_PICTURE = Outcome(
    422,
    "a picture file does not decode (empty, cut short, not a picture); field names it: body, parts[i] or inputs[0].data[i]",
)
INVALID = Outcome(
    422, "a field is missing, mistyped, of the wrong shape, not finite, or over DISTILLERY_SERVE_MAX_ROWS"
)
INTERNAL = Outcome(500, "a bug: the server log has the details under the answer's X-Request-ID")
TOO_MANY_CONNECTIONS = Outcome(
    503,
    "too many open connections (DISTILLERY_SERVE_MAX_CONNECTIONS): refused before it "
    "was read; retry after Retry-After seconds",
    headers=("Retry-After",),
)
OVERLOADED = Outcome(
    503,
    "at capacity (DISTILLERY_SERVE_MAX_CONCURRENCY requests in progress, DISTILLERY_SERVE_MAX_QUEUE "
    "waiting); retry after Retry-After seconds",
    headers=("Retry-After",),
)
NOT_READY = Outcome(503, "not ready: no model loaded, or draining (shutting down)", Readiness)
TIMEOUT = Outcome(504, "the request took longer than DISTILLERY_SERVE_REQUEST_TIMEOUT_S")

# What any route may answer, whatever its handler does: the router's 405, the
# connection guard's 408 and 503 (deploy.connections), and a bug's 500.
EVERY_ROUTE = (WRONG_METHOD, SLOW_HEADERS, INTERNAL, TOO_MANY_CONNECTIONS)
VERSIONED = "/v2/models/{name}/versions/{version}"  # where a versioned route is served too


@dataclasses.dataclass(frozen=True)
class Route:
    """One row of the route table."""

    method: str
    path: str  # {name}-like segments are path parameters, filled in Request.params
    handler: str  # the ServingApp method that answers
    tag: str  # its group in the document
    summary: str
    ok: Any  # the 200 body: a type from deploy.protocol (JSON), or {media type: type}
    errors: tuple[Outcome, ...] = ()  # what the handler answers besides 200 (see `outcomes` for the rest)
    request: Any = None  # the body it reads: a type (JSON), or {media type: type}
    auth: bool = True  # needs the bearer token, when one is set
    versioned: bool = False  # /v2/models/{name}/... is served at /v2/models/{name}/versions/{version}/... too
    choices: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)  # a parameter's values
    description: str = ""

    @property
    def paths(self) -> tuple[str, ...]:
        if not self.versioned:
            return (self.path,)
        return self.path, self.path.replace("/v2/models/{name}", VERSIONED, 1)

    @property
    def outcomes(self) -> tuple[Outcome, ...]:
        """Every status but 200 this route can answer."""
        extra = (UNAUTHORIZED,) * self.auth + EVERY_ROUTE
        if self.path.startswith("/v2/") and "{" in self.path:  # the raw path is checked before routing
            extra = (BAD_NAME, *extra)
        return (*self.errors, *extra)

    @property
    def statuses(self) -> set[int]:
        return {200} | {outcome.status for outcome in self.outcomes}


_BODY_IN = (BAD_JSON, SLOW_BODY, TOO_LARGE, WRONG_MEDIA, INVALID, OVERLOADED, TIMEOUT)
_PICTURES_IN = (BAD_MULTIPART, TOO_MANY_PIXELS, NO_IMAGE_POLICY, UNREADABLE_PICTURE)
_PREDICT = {
    "application/json": PredictRequest,
    **{media: bytes for media in IMAGE_MEDIA + (OCTET_STREAM,)},
    MULTIPART: PictureForm,
}
_PREDICT_NOTE = (
    "A model trained on a folder of pictures (parameters.image in GET /v2/models/{name}) takes picture files "
    "too, decoded by the policy training used: one picture as the body (its image/* type, or "
    "application/octet-stream: the format is read from the bytes), or multipart/form-data with one picture per "
    "part (a row each, answered in order). Any other model answers 415 to them."
)
_BINARY = {"application/json": InferRequest, "application/octet-stream": bytes}
_BINARY_NOTE = (
    "With the binary tensor extension, the body is application/octet-stream: a JSON header of "
    "Inference-Header-Content-Length bytes, then the tensors; outputs asked for as binary come back "
    "the same way, with that header. A model trained on a folder of pictures takes a BYTES input of shape [n] "
    "too: picture files, base64 strings in JSON, or length-prefixed in the binary part (as tritonclient sends them)."
)

ROUTES: tuple[Route, ...] = (
    Route(
        "POST",
        "/predict",
        "predict",
        tag="inference",
        request=_PREDICT,
        ok=PredictResponse,
        errors=_BODY_IN + _PICTURES_IN,
        summary="Predict rows: raw pixels, picture files or table rows in; per row the value, the class and "
        "probabilities, or the labels",
        description=_PREDICT_NOTE,
    ),
    Route(
        "POST",
        "/v2/models/{name}/infer",
        "infer",
        tag="inference",
        versioned=True,
        request=_BINARY,
        ok={"application/json": InferResponse, "application/octet-stream": bytes},
        errors=(BAD_BINARY_HEADER, UNKNOWN_MODEL, *_BODY_IN, TOO_MANY_PIXELS, UNREADABLE_PICTURE),
        summary="Open Inference Protocol (KServe v2) inference",
        description=_BINARY_NOTE,
    ),
    Route(
        "GET",
        "/v2/models/{name}",
        "model_metadata",
        tag="metadata",
        versioned=True,
        ok=ModelMetadata,
        errors=(UNKNOWN_MODEL,),
        summary="Model metadata: input and output tensors, task, classes",
    ),
    Route(
        "GET",
        "/v2/models/{name}/ready",
        "model_ready",
        tag="health",
        versioned=True,
        ok=Readiness,
        errors=(UNKNOWN_MODEL, NOT_READY),
        summary="Model readiness",
    ),
    Route("GET", "/v2", "server_metadata", tag="metadata", ok=ServerMetadata, summary="Server metadata"),
    Route("GET", "/v2/health/live", "live", tag="health", auth=False, ok=Live, summary="Liveness (no token needed)"),
    Route(
        "GET",
        "/v2/health/ready",
        "ready",
        tag="health",
        auth=False,
        ok=Readiness,
        errors=(NOT_READY,),
        summary="Readiness: 503 while not ready or draining (no token needed)",
    ),
    Route(
        "POST",
        "/v2/repository/index",
        "repository_index",
        tag="admin",
        ok=list[RepositoryModel],
        summary="Model repository index (Triton): the served model, its version and state",
    ),
    Route(
        "POST",
        "/v2/repository/models/{name}/load",
        "load",
        tag="admin",
        ok=ReloadResult,
        errors=(UNKNOWN_MODEL, RELOAD_REFUSED, TIMEOUT),
        summary="Reload now: check the source (file or registry alias) and swap in a new model if it passes",
    ),
    Route(
        "GET",
        "/v2/models/stats",
        "model_stats",
        tag="metadata",
        ok=ModelStats,
        summary="Inference statistics of every model (Triton)",
    ),
    Route(
        "GET",
        "/v2/models/{name}/stats",
        "model_stats",
        tag="metadata",
        versioned=True,
        ok=ModelStats,
        errors=(UNKNOWN_MODEL,),
        summary="Inference statistics (Triton's statistics extension)",
    ),
    Route("GET", "/metrics", "render_metrics", tag="admin", ok={"text/plain": str}, summary="Prometheus metrics"),
    Route(
        "GET", "/openapi.json", "openapi", tag="admin", ok={"application/json": dict[str, Any]}, summary="This document"
    ),
    Route("GET", "/docs", "docs", tag="admin", ok={"text/html": str}, summary="Swagger UI over this document"),
    # Swagger UI's own files, served from the fastapi-offline wheel: /docs works offline.
    Route(
        "GET",
        "/docs/{asset}",
        "docs_asset",
        tag="admin",
        auth=False,
        choices={"asset": tuple(DOCS_ASSETS)},
        ok={media.decode(): str if media.startswith(b"text/") else bytes for media in DOCS_ASSETS.values()},
        errors=(UNKNOWN_FILE,),
        summary="Swagger UI's script, style and icon",
    ),
)
# The media types each prediction route reads, and how a 415 says so.
PREDICT_MEDIA = frozenset(media.encode() for media in ("application/json", *PICTURE_MEDIA))
PREDICT_WANTED = f"application/json, a picture ({', '.join(IMAGE_MEDIA)}, or {OCTET_STREAM}) or {MULTIPART}"
INFER_MEDIA = frozenset((JSON, OCTET_STREAM.encode()))
INFER_WANTED = f"application/json (or {OCTET_STREAM} with Inference-Header-Content-Length)"
# Routes whose refusals go to the prediction log, and the endpoint name logged.
LOGGED_ENDPOINTS = {"/predict": "predict", "/v2/models/{name}/infer": "infer"}


class _Node:
    """A path segment in the router; where a path ends, its handlers by method."""

    __slots__ = ("literal", "param", "handlers", "allow", "auth", "label")

    def __init__(self) -> None:
        self.literal: dict[str, _Node] = {}
        self.param: tuple[str, _Node] | None = None
        self.handlers: dict[str, Handler] = {}
        self.allow, self.auth, self.label = "", True, ""


class Router:
    """Paths to handlers, built from the route table. A path without
    parameters is one dict lookup; one with them walks its segments, a literal
    segment before a parameter (/v2/models/stats is not model 'stats'), and is
    remembered: clients call a few such paths (a model's infer) over and over,
    and a lookup costs less than the walk."""

    REMEMBERED = 1024  # paths with parameters remembered; then the others are walked each time

    def __init__(self, routes: list[tuple[str, Route, Handler]]):
        self._root, self._static = _Node(), {}
        self._seen: dict[str, tuple[_Node, dict[str, str]]] = {}
        for path, route, handler in routes:
            node = self._root
            for part in path.split("/")[1:]:
                if part.startswith("{"):
                    name = part[1:-1]
                    if node.param is None:
                        node.param = (name, _Node())
                    elif node.param[0] != name:
                        raise ValueError(f"{path}: {{{name}}} where another route has {{{node.param[0]}}}")
                    node = node.param[1]
                else:
                    node = node.literal.setdefault(part, _Node())
            if node.handlers and (node.label, node.auth) != (route.path, route.auth):
                raise ValueError(f"{path}: its methods differ in label or token")
            node.handlers[route.method] = handler
            node.allow, node.auth, node.label = ", ".join(node.handlers), route.auth, route.path
            if "{" not in path:
                self._static[path] = node

    def match(self, path: str, params: dict[str, str]) -> _Node | None:
        """The node for `path`, its parameters put in `params` (empty when called)."""
        node = self._static.get(path)
        if node is not None:
            return node
        seen = self._seen.get(path)
        if seen is not None:
            params.update(seen[1])
            return seen[0]
        if not path.startswith("/"):
            return None
        node = self._find(path, params)
        if node is not None and len(self._seen) < self.REMEMBERED:
            self._seen[path] = (node, dict(params))
        return node

    def _find(self, path: str, params: dict[str, str]) -> _Node | None:
        parts = path.split("/")
        node = self._root
        for part in parts[1:]:  # literal first, no way back: the usual case
            child = node.literal.get(part)
            if child is None:
                param = node.param
                if param is None or not part:
                    break
                params[param[0]] = part
                child = param[1]
            node = child
        else:
            if node.handlers:
                return node
        params.clear()
        return self._walk(self._root, parts, 1, params)  # a dead end: try the parameters a literal hid

    def _walk(self, node: _Node, parts: list[str], i: int, params: dict[str, str]) -> _Node | None:
        if i == len(parts):
            return node if node.handlers else None
        part = parts[i]
        child = node.literal.get(part)
        if child is not None:
            found = self._walk(child, parts, i + 1, params)
            if found is not None:
                return found
        if node.param is not None and part:
            name, child = node.param
            found = self._walk(child, parts, i + 1, params)
            if found is not None:
                params[name] = part
                return found
        return None


def _version() -> str:
    try:
        return importlib_metadata.version("distillery")
    except importlib_metadata.PackageNotFoundError:
        return "0"


_ID_PREFIX = uuid.uuid4().hex[:12]  # this process; the counter numbers its requests
_id_counter = itertools.count(1)


def _new_request_id() -> str:
    """Unique without a syscall per request (uuid4 reads os.urandom)."""
    return f"{_ID_PREFIX}-{next(_id_counter):x}"


class Request:
    __slots__ = ("scope", "receive", "headers", "start", "request_id", "params", "body_pending")

    def __init__(self, scope: dict, receive: Callable, start: float):
        self.scope, self.receive, self.start = scope, receive, start
        self.headers = {k: v for k, v in scope["headers"] if k in HEADERS_WANTED}
        sent = self.headers.get(b"x-request-id")
        sent = sent.decode("latin-1") if sent else ""
        self.request_id = sent if REQUEST_ID.match(sent) else _new_request_id()
        self.params: dict[str, str] = {}
        self.body_pending = False  # True while the body is being read: a timeout then is the client's (408)


def _entry(request: Request, endpoint: str, model: Any, **fields: Any) -> Entry:
    """The prediction log's entry for `request`, answered by (or refused for) `model`, now."""
    return Entry(
        ts=time.time(),
        request_id=request.request_id,
        endpoint=endpoint,
        model_name=model.name,
        model_version=model.version,
        latency_ms=(perf_counter() - request.start) * 1000,
        **fields,
    )


Response = tuple  # (status, body bytes, content type bytes, extra headers)
Handler = Callable[[Request], Awaitable[Response]]


_ESCAPED_SEPARATOR = re.compile(rb"%2f|%5c|\\", re.IGNORECASE)


@dataclasses.dataclass
class InferenceStats:
    """Triton's model statistics, kept since start: requests answered and
    refused (count and total ns), rows inferred, onnxruntime runs."""

    success_count: int = 0
    success_ns: int = 0
    fail_count: int = 0
    fail_ns: int = 0
    inference_count: int = 0
    execution_count: int = 0
    compute_ns: int = 0
    last_inference_ms: int = 0

    def as_triton(self, name: str, version: str) -> ModelStatistics:
        def duration(count: int, ns: int) -> protocol.Duration:
            return {"count": count, "ns": ns}

        return {
            "name": name,
            "version": version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": duration(self.success_count, self.success_ns),
                "fail": duration(self.fail_count, self.fail_ns),
                "queue": duration(0, 0),
                "compute_input": duration(0, 0),
                "compute_infer": duration(self.execution_count, self.compute_ns),
                "compute_output": duration(0, 0),
            },
            "batch_stats": [],
        }


class ServingApp:
    def __init__(self, settings: ServeSettings, manager: ModelManager, metrics: Metrics):
        self.settings, self.manager, self.metrics = settings, manager, metrics
        token = settings.bearer_token()
        self._expected_auth = token.encode() if token else None
        self.admission = Admission(settings.max_concurrency, settings.max_queue)
        self.deadlines = Deadlines(settings.request_timeout_s)
        self.stats = InferenceStats()
        self.batcher = Batcher(settings.max_batch, settings.max_wait_ms / 1000, self._observe_batch)
        # Picture files are decoded here, off the event loop; admission bounds the requests decoding at once.
        self._decoder = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="decode")
        self.predlog = PredictionLog(
            settings.log_dir, settings.log_max_buffer, settings.log_flush_interval_s, metrics.count_log
        )
        self.draining = False
        self.version = _version()
        self._watcher: asyncio.Task | None = None
        self._openapi: bytes | None = None
        metrics.in_flight.set_function(lambda: self.admission.active)
        metrics.queued.set_function(lambda: self.admission.waiting)
        metrics.ready.set_function(lambda: 1.0 if self.ready_reason() is None else 0.0)
        self.router = Router([(path, route, getattr(self, route.handler)) for route in ROUTES for path in route.paths])
        # Any /v2/ path whose raw form holds an escaped separator: refused before routing (400).
        self._bad_name = _Node()
        self._bad_name.handlers = {"GET": self.bad_name, "POST": self.bad_name}
        self._bad_name.allow, self._bad_name.label = "GET, POST", "bad_name"

    # ------------------------------------------------------------------ ASGI

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        # websockets are not served: returning without accepting closes them

    async def _http(self, scope: dict, receive: Callable, send: Callable) -> None:
        start = perf_counter()
        request = Request(scope, receive, start)
        raw = scope.get("raw_path") or b""
        # uvicorn decodes %2F into "/" in `path`; only the raw path shows a model name that carried one.
        if raw.startswith(b"/v2/") and _ESCAPED_SEPARATOR.search(raw):
            route: _Node | None = self._bad_name
        else:
            route = self.router.match(scope["path"], request.params)
        label = route.label if route is not None else "unmatched"
        error: RequestError | None = None
        try:
            # The token first: without it, no path or method can be probed (only the health probes are open).
            if self._expected_auth is not None and (route is None or route.auth):
                self._check_auth(request)
            if route is None:
                raise RequestError(404, f"no endpoint {scope['path']}; see /docs", "path", reason="not_found")
            handler = route.handlers.get(scope["method"])
            if handler is None:
                raise RequestError(
                    405,
                    f"{scope['method']} is not allowed here; use {route.allow}",
                    "method",
                    headers=[(b"allow", route.allow.encode())],
                )
            deadline = self.deadlines.start()
            try:
                status, body, content_type, headers = await handler(request)
            except BaseException as exc:
                if self.deadlines.finish(deadline) and isinstance(exc, asyncio.CancelledError):
                    raise TimeoutError from None  # cancelled by its deadline, and by nothing else
                raise
            self.deadlines.finish(deadline)
        except RequestError as err:
            error = err
        except TimeoutError:
            error = self._timed_out(request)
        except Exception:  # a bug: answer 500, keep serving, leave a traceback in the log
            log.exception("internal error on %s %s (request id %s)", scope["method"], scope["path"], request.request_id)
            error = RequestError(
                500,
                f"internal error; the server log has the details under request id {request.request_id}",
                None,
                "internal",
            )
        if error is not None:
            status, body, content_type, headers = error.status, error.body(), JSON, error.headers
            self.metrics.errors.labels(label, error.reason).inc()
            if error.reason != "overloaded":  # counted in /metrics; a log write per refusal would feed the overload
                await self._log_refused(request, label, status, "internal error" if status == 500 else error.message)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", content_type),
                    (b"content-length", str(len(body)).encode()),
                    (b"x-request-id", request.request_id.encode()),
                    *headers,
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
        elapsed = perf_counter() - start
        self.metrics.observe_request(label, status, elapsed)
        if label in LOGGED_ENDPOINTS:
            if status == 200:
                self.stats.success_count += 1
                self.stats.success_ns += int(elapsed * 1e9)
                self.stats.last_inference_ms = int(time.time() * 1000)
            else:
                self.stats.fail_count += 1
                self.stats.fail_ns += int(elapsed * 1e9)

    def _timed_out(self, request: Request) -> RequestError:
        limit = self.settings.request_timeout_s
        if request.body_pending:  # the client was still sending; close, the rest of the body is unread
            return RequestError(
                408,
                f"the body did not arrive within {limit} s (DISTILLERY_SERVE_REQUEST_TIMEOUT_S)",
                "body",
                "slow_body",
                [(b"connection", b"close")],
            )
        return RequestError(
            504, f"the request took longer than {limit} s (DISTILLERY_SERVE_REQUEST_TIMEOUT_S)", None, "timeout"
        )

    def _check_auth(self, request: Request) -> None:
        sent = request.headers.get(b"authorization")
        if sent is None:
            raise RequestError(
                401,
                "missing 'Authorization: Bearer <token>'",
                "Authorization",
                "unauthorized",
                [(b"www-authenticate", b'Bearer realm="distillery"')],
            )
        scheme, _, credentials = sent.strip().partition(b" ")
        # RFC 9110: the auth scheme is case-insensitive ("bearer", "BEARER").
        if scheme.lower() != b"bearer" or not hmac.compare_digest(credentials.strip(), self._expected_auth):
            raise RequestError(
                401,
                "wrong bearer token",
                "Authorization",
                "unauthorized",
                [(b"www-authenticate", b'Bearer realm="distillery", error="invalid_token"')],
            )

    def _media_type(self, request: Request, accepted: frozenset[bytes], wanted: str) -> bytes:
        """The body's media type, one of `accepted` (or a 415 saying to send `wanted`). None at
        all is read as JSON: Triton's HTTP client sends none."""
        content_type = request.headers.get(b"content-type")
        if not content_type:
            return JSON
        media = content_type.split(b";", 1)[0].strip().lower()
        if media not in accepted:
            raise RequestError(
                415, f"Content-Type {content_type.decode('latin-1')!r} is not supported; send {wanted}", "Content-Type"
            )
        return media

    async def _read_body(self, request: Request) -> bytes:
        limit = self.settings.max_body_bytes
        declared = request.headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise self._too_large()  # refused before reading a byte of it
        chunks, size = [], 0
        request.body_pending = True
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                raise RequestError(400, "the client went away before sending the whole body", "body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:  # chunked, or a Content-Length that lied
                raise self._too_large()
            chunks.append(chunk)
            if not message.get("more_body", False):
                request.body_pending = False
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _too_large(self) -> RequestError:
        limit = self.settings.max_body_bytes
        # Connection: close, so the rest of an unread body is not taken for the next request.
        return RequestError(
            413,
            f"the body is larger than {limit} bytes (DISTILLERY_SERVE_MAX_BODY_BYTES)",
            "body",
            "too_large",
            [(b"connection", b"close")],
        )

    def _model_for(self, request: Request) -> Any:
        model = self.manager.current
        name = request.params.get("name")
        if name is not None and name != model.name:
            raise RequestError(
                404, f"unknown model {name!r}; this server serves {model.name!r}", "model_name", "not_found"
            )
        version = request.params.get("version")
        if version is not None and version != model.version:
            raise RequestError(
                404,
                f"version {version!r} of {model.name!r} is not served; version {model.version!r} is",
                "model_version",
                "not_found",
            )
        return model

    # ------------------------------------------------------------------ predictions

    def _overloaded(self, unread_body: bool = False) -> RequestError:
        retry = str(self.settings.retry_after_s)
        headers = [(b"retry-after", retry.encode())] + ([(b"connection", b"close")] if unread_body else [])
        return RequestError(
            503,
            f"at capacity: {self.admission.active} requests in progress and {self.admission.waiting} waiting "
            f"(DISTILLERY_SERVE_MAX_CONCURRENCY, DISTILLERY_SERVE_MAX_QUEUE); retry after {retry} s",
            None,
            "overloaded",
            headers,
        )

    def _shed_early(self) -> None:
        """Refuse before reading or parsing the body when there is no room at
        all: under overload, refusing must cost less than answering."""
        if self.admission.full:
            raise self._overloaded(unread_body=True)

    async def _admit(self) -> None:
        try:
            await self.admission.acquire()
        except Overloaded:
            raise self._overloaded() from None

    async def predict(self, request: Request) -> Response:
        self._shed_early()
        media = self._media_type(request, PREDICT_MEDIA, PREDICT_WANTED)
        body = await self._read_body(request)
        await self._admit()
        try:
            model = self.manager.current
            if media == JSON:
                payload = protocol.parse_json(body)
                parsed = protocol.parse_predict(
                    payload, model, self.settings.max_rows, b"true" in body or b"false" in body
                )
                x, rows, unseen, stored = parsed.x, parsed.rows, parsed.unseen, None
            else:
                policy = policy_of(model)
                content_type = request.headers[b"content-type"]
                pictures = pictures_of(media.decode(), content_type, body, self.settings.max_rows)
                x, stored = await self._decode(pictures, policy)
                rows, unseen = None, None
            outputs = await self.batcher.submit(model, x)
        finally:
            self.admission.release()
        answer = outputs[model.answer]
        await self._log(request, "predict", model, x, rows, answer, unseen, stored)
        return 200, protocol.predict_response(model, answer, request.request_id, unseen), JSON, []

    async def _decode(self, pictures: list[Picture], policy: Any) -> tuple[Any, list]:
        """Decode on the decoder threads: a picture's pixels, not its bytes, set the work
        (a small PNG can hold millions), and Pillow leaves the GIL to the event loop meanwhile."""
        loop = asyncio.get_running_loop()
        decoded = await loop.run_in_executor(
            self._decoder, decode_pictures, pictures, policy, self.settings.max_image_pixels
        )
        return decoded.x, decoded.stored

    async def infer(self, request: Request) -> Response:
        self._shed_early()
        self._media_type(request, INFER_MEDIA, INFER_WANTED)
        body = await self._read_body(request)
        header_length = request.headers.get(protocol.BINARY_HEADER.encode())
        binary = None
        if header_length is not None:
            if not header_length.isdigit() or int(header_length) > len(body):
                raise RequestError(
                    400,
                    f"Inference-Header-Content-Length is {header_length.decode('latin-1')!r}; the body has {len(body)} bytes",
                    "Inference-Header-Content-Length",
                )
            binary, body = body[int(header_length) :], body[: int(header_length)]
        self._model_for(request)  # 404 before taking a slot
        await self._admit()
        try:
            payload = protocol.parse_json(body)
            model = self._model_for(request)
            parsed = protocol.parse_infer(
                payload, model, self.settings.max_rows, binary, b"true" in body or b"false" in body
            )
            if parsed.x is not None:
                x, stored = parsed.x, None
            else:  # a BYTES input: picture files (parse_infer has checked there is one a row)
                x, stored = await self._decode(parsed.pictures or [], policy_of(model))
            outputs = await self.batcher.submit(model, x)
        finally:
            self.admission.release()
        if parsed.request_id and REQUEST_ID.match(parsed.request_id) and b"x-request-id" not in request.headers:
            request.request_id = parsed.request_id
        await self._log(request, "infer", model, x, None, outputs[model.answer], None, stored)
        content, headers = protocol.infer_response(model, parsed, outputs)
        return 200, content, (b"application/octet-stream" if headers else JSON), headers

    async def _log(
        self,
        request: Request,
        endpoint: str,
        model: Any,
        x: Any,
        rows: list | None,
        answer: Any,
        unseen: list[list[str]] | None = None,
        pictures: list | None = None,
    ) -> None:
        # Before the answer is sent: an answered row is in the log's buffer (or the answer waits for room).
        entry = _entry(
            request,
            endpoint,
            model,
            task=model.task,
            classes=model.classes,
            threshold=model.metadata.threshold,
            x=x,
            rows=rows,
            outputs=answer,
            unseen=unseen,
            pictures=pictures,
        )
        if not self.predlog.append(entry):  # the usual case appends without a wait
            await self.predlog.put(entry)

    async def _log_refused(self, request: Request, label: str, status: int, error: str) -> None:
        """A refused prediction request is logged too, so the monitor sees the error rate."""
        endpoint = LOGGED_ENDPOINTS.get(label)
        model = self.manager.current
        if endpoint is None or model is None:
            return
        await self.predlog.put(_entry(request, endpoint, model, status=status, error=error))

    # ------------------------------------------------------------------ health and metadata

    def ready_reason(self) -> str | None:
        if self.draining:
            return "draining: the server is shutting down"
        if self.manager.current is None:
            return "no model loaded"
        if not self.batcher.alive:
            return "not started"
        return None

    async def live(self, request: Request) -> Response:
        return 200, b'{"live":true}', JSON, []  # a Live

    async def ready(self, request: Request) -> Response:
        reason = self.ready_reason()
        if reason is None:
            return 200, b'{"ready":true}', JSON, []  # a Readiness
        body: Readiness = {"ready": False, "reason": reason}
        return 503, orjson.dumps(body), JSON, []

    async def model_ready(self, request: Request) -> Response:
        self._model_for(request)
        return await self.ready(request)

    async def server_metadata(self, request: Request) -> Response:
        body: ServerMetadata = {"name": "distillery", "version": self.version, "extensions": EXTENSIONS}
        return 200, orjson.dumps(body), JSON, []

    async def model_metadata(self, request: Request) -> Response:
        model = self._model_for(request)
        sig = model.signature
        meta = model.metadata
        parameters: ModelParameters = {
            "task": model.task,
            "answer": model.answer,
            "classes": list(model.classes),
            "kind": model.kind,
            "sha256": model.sha256,
            "source": model.source,
            "loaded_at": model.loaded_at,
            "input_spec": dataclasses.asdict(meta.input_spec),
            "git_commit": meta.git_commit,
            "data_hash": meta.data_hash,
            "candidate": meta.candidate,
        }
        if task_of(model.task).multilabel:
            parameters["threshold"] = model.metadata.threshold
        if meta.preprocessing.image is not None:
            parameters["image"] = dataclasses.asdict(meta.preprocessing.image)
        if model.encoder is not None:
            parameters["columns"] = {
                "numeric": list(model.encoder.numeric),
                "booleans": list(model.encoder.booleans),
                "dates": {c: column.format for c, column in model.encoder.dates.items()},
                "categorical": {c: list(v) for c, v in model.encoder.categorical.items()},
            }
        body: ModelMetadata = {
            "name": model.name,
            "versions": [model.version],
            "platform": "onnxruntime_onnx",
            "inputs": [{"name": sig.input_name, "datatype": "FP32", "shape": [-1, *sig.input_shape]}],
            "outputs": [{"name": name, "datatype": "FP32", "shape": [-1, *shape]} for name, shape in sig.outputs],
            "parameters": parameters,
        }
        return 200, orjson.dumps(body), JSON, []

    def _observe_batch(self, rows: int, seconds: float) -> None:
        self.metrics.observe_batch(rows, seconds)
        self.stats.inference_count += rows
        self.stats.execution_count += 1
        self.stats.compute_ns += int(seconds * 1e9)

    async def bad_name(self, request: Request) -> Response:
        raise RequestError(
            400, "a model name or version has no path separators ('/' or '\\', escaped or not)", "model_name"
        )

    async def repository_index(self, request: Request) -> Response:
        """Triton's model repository extension: the one model this server serves."""
        model, reason = self.manager.current, self.ready_reason()
        index: list[RepositoryModel] = [
            {
                "name": model.name,
                "version": model.version,
                "state": "UNAVAILABLE" if reason else "READY",
                "reason": reason or "",
            }
        ]
        return 200, orjson.dumps(index), JSON, []

    async def model_stats(self, request: Request) -> Response:
        """Triton's statistics extension (GET /v2/models[/{name}[/versions/{v}]]/stats)."""
        model = self._model_for(request) if "name" in request.params else self.manager.current
        body: ModelStats = {"model_stats": [self.stats.as_triton(model.name, model.version)]}
        return 200, orjson.dumps(body), JSON, []

    async def load(self, request: Request) -> Response:
        self._model_for(request)
        result = await self.manager.reload(force=True)
        status = 409 if result.status == "refused" else 200
        return status, orjson.dumps(result.as_dict()), JSON, []  # a ReloadResult

    async def render_metrics(self, request: Request) -> Response:
        return 200, self.metrics.render(), CONTENT_TYPE_LATEST.encode(), []

    async def openapi(self, request: Request) -> Response:
        if self._openapi is None:
            self._openapi = orjson.dumps(
                openapi_document(ROUTES, self.version, secured=self._expected_auth is not None)
            )
        return 200, self._openapi, JSON, []

    async def docs(self, request: Request) -> Response:
        from fastapi.openapi.docs import get_swagger_ui_html

        html = get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="Distillery model server",
            swagger_js_url="/docs/swagger-ui-bundle.js",
            swagger_css_url="/docs/swagger-ui.css",
            swagger_favicon_url="/docs/favicon.png",
        )
        return 200, bytes(html.body), b"text/html; charset=utf-8", []

    async def docs_asset(self, request: Request) -> Response:
        import fastapi_offline

        name = request.params["asset"]
        if name not in DOCS_ASSETS:
            raise RequestError(
                404, f"no file {name!r} here; Swagger UI's are {', '.join(DOCS_ASSETS)}", "path", reason="not_found"
            )
        static = Path(fastapi_offline.__file__).parent / "static"
        return 200, (static / name).read_bytes(), DOCS_ASSETS[name], [(b"cache-control", b"max-age=86400")]

    # ------------------------------------------------------------------ lifecycle

    def begin_drain(self) -> None:
        """Readiness turns 503; requests keep being answered until the server stops listening."""
        if not self.draining:
            self.draining = True
            log.info("draining: readiness is now 503; answering in-flight and new requests until shutdown")

    async def startup(self) -> None:
        self.predlog.start()
        self.batcher.start()
        if self.settings.poll_interval_s > 0:
            self._watcher = asyncio.get_running_loop().create_task(self.manager.watch(), name="model-watcher")
        try:  # SIGHUP = reload now (main thread only; a server in a test thread goes without)
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.manager.reload(force=True)))
        except (RuntimeError, ValueError, NotImplementedError):
            pass
        model = self.manager.current
        log.info(
            "serving %s version %s (%s) from %s", model.name, model.version, model.signature.describe(), model.source
        )

    async def shutdown(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        await self.batcher.close()
        self._decoder.shutdown(wait=True)
        self.deadlines.close()
        self.predlog.close()
        log.info("stopped; the prediction log is flushed")

    async def _lifespan(self, receive: Callable, send: Callable) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as err:
                    log.exception("start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(err)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return
