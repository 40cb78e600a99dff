"""The server as a plain ASGI application.

Why not FastAPI routes: on two cores a FastAPI route with a pydantic body spends
more time in the framework (dependency solving, validation, jsonable_encoder, a
thread-pool hop) than onnxruntime spends on a small model. Here a request costs
a dict lookup to route, one orjson parse, numpy checks and one shared
onnxruntime run per micro-batch. FastAPI still provides the Swagger UI at /docs,
over the OpenAPI document of deploy.openapi.

Endpoints (all but the two health probes need the bearer token when one is set):

  GET  /v2/health/live, /v2/health/ready      probes (ready is 503 while draining)
  GET  /v2                                     server metadata
  GET  /v2/models/{name}[/versions/{v}]        model metadata (tensors, classes)
  GET  /v2/models/{name}[/versions/{v}]/ready  model readiness
  POST /v2/models/{name}[/versions/{v}]/infer  Open Inference Protocol inference
  POST /predict                                {"rows": [...]} -> per row: class, labels or value (by task)
  POST /v2/repository/index                    the model repository: the served model and its state
  POST /v2/repository/models/{name}/load       reload now (also SIGHUP)
  GET  /v2/models[/{name}[/versions/{v}]]/stats  Triton's inference statistics
  GET  /metrics                                Prometheus text format
  GET  /docs, /openapi.json                    API documentation
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import itertools
import logging
import re
import signal
import time
import uuid
from importlib import metadata as importlib_metadata
from pathlib import Path
from time import perf_counter
from typing import Any, Awaitable, Callable

import orjson
from prometheus_client import CONTENT_TYPE_LATEST

from deploy import protocol
from deploy.batching import Admission, Batcher, Overloaded
from deploy.metrics import Metrics
from deploy.openapi import openapi_document
from deploy.predlog import Entry, PredictionLog
from deploy.protocol import RequestError
from deploy.reload import ModelManager
from deploy.settings import ServeSettings
from tasks.core.task import task_of

log = logging.getLogger("deploy.app")

JSON = b"application/json"
DOCS_ASSETS = {"swagger-ui-bundle.js": b"text/javascript", "swagger-ui.css": b"text/css", "favicon.png": b"image/png"}
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
EXTENSIONS = ["binary_tensor_data", "model_repository", "statistics"]
# Route labels whose refusals go to the prediction log, and the endpoint name logged.
LOGGED_ENDPOINTS = {"/predict": "predict", "/v2/models/{name}/infer": "infer"}
HEADERS_WANTED = frozenset((b"content-type", b"content-length", b"authorization", b"x-request-id", b"inference-header-content-length"))


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


Response = tuple  # (status, body bytes, content type bytes, extra headers)
Handler = Callable[[Request], Awaitable[Response]]


class Route:
    __slots__ = ("methods", "handler", "label", "auth")

    def __init__(self, methods: tuple[str, ...], handler: Handler, label: str, auth: bool = True):
        self.methods, self.handler, self.label, self.auth = methods, handler, label, auth


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

    def as_triton(self, name: str, version: str) -> dict:
        def duration(count: int, ns: int) -> dict:
            return {"count": count, "ns": ns}

        return {"name": name, "version": version, "last_inference": self.last_inference_ms,
                "inference_count": self.inference_count, "execution_count": self.execution_count,
                "inference_stats": {"success": duration(self.success_count, self.success_ns),
                                    "fail": duration(self.fail_count, self.fail_ns),
                                    "queue": duration(0, 0), "compute_input": duration(0, 0),
                                    "compute_infer": duration(self.execution_count, self.compute_ns),
                                    "compute_output": duration(0, 0)},
                "batch_stats": []}


class ServingApp:
    def __init__(self, settings: ServeSettings, manager: ModelManager, metrics: Metrics):
        self.settings, self.manager, self.metrics = settings, manager, metrics
        token = settings.bearer_token()
        self._expected_auth = token.encode() if token else None
        self.admission = Admission(settings.max_concurrency, settings.max_queue)
        self.stats = InferenceStats()
        self.batcher = Batcher(settings.max_batch, settings.max_wait_ms / 1000, self._observe_batch)
        self.predlog = PredictionLog(settings.log_dir, settings.log_max_buffer, settings.log_flush_interval_s, metrics.count_log)
        self.draining = False
        self.version = _version()
        self._watcher: asyncio.Task | None = None
        self._openapi: bytes | None = None
        metrics.in_flight.set_function(lambda: self.admission.active)
        metrics.queued.set_function(lambda: self.admission.waiting)
        metrics.ready.set_function(lambda: 1.0 if self.ready_reason() is None else 0.0)
        self._static = {
            "/predict": Route(("POST",), self.predict, "/predict"),
            "/v2/health/live": Route(("GET",), self.live, "/v2/health/live", auth=False),
            "/v2/health/ready": Route(("GET",), self.ready, "/v2/health/ready", auth=False),
            "/v2": Route(("GET",), self.server_metadata, "/v2"),
            "/metrics": Route(("GET",), self.render_metrics, "/metrics"),
            "/openapi.json": Route(("GET",), self.openapi, "/openapi.json"),
            "/docs": Route(("GET",), self.docs, "/docs"),
            # Swagger UI's own files, served from the fastapi-offline wheel: /docs works offline.
            **{f"/docs/{name}": Route(("GET",), self.docs_asset, "/docs/{asset}", auth=False) for name in DOCS_ASSETS},
            "/v2/repository/index": Route(("POST",), self.repository_index, "/v2/repository/index"),
            "/v2/models/stats": Route(("GET",), self.model_stats, "/v2/models/stats"),
        }
        self._model_routes = {
            "": Route(("GET",), self.model_metadata, "/v2/models/{name}"),
            "ready": Route(("GET",), self.model_ready, "/v2/models/{name}/ready"),
            "infer": Route(("POST",), self.infer, "/v2/models/{name}/infer"),
            "stats": Route(("GET",), self.model_stats, "/v2/models/{name}/stats"),
        }
        self._load_route = Route(("POST",), self.load, "/v2/repository/models/{name}/load")
        self._bad_name_route = Route(("GET", "POST"), self.bad_name, "bad_name")

    # ------------------------------------------------------------------ ASGI

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        # websockets are not served: returning without accepting closes them

    def _route(self, path: str, request: Request) -> Route | None:
        route = self._static.get(path)
        if route is not None:
            return route
        parts = path.split("/")
        if len(parts) >= 4 and parts[1] == "v2" and parts[2] == "models" and parts[3]:
            request.params["name"] = parts[3]
            rest = parts[4:]
            if len(rest) >= 2 and rest[0] == "versions" and rest[1]:
                request.params["version"] = rest[1]
                rest = rest[2:]
            if len(rest) <= 1:
                return self._model_routes.get(rest[0] if rest else "")
        if len(parts) == 6 and parts[1:4] == ["v2", "repository", "models"] and parts[5] == "load":
            request.params["name"] = parts[4]
            return self._load_route
        return None

    async def _http(self, scope: dict, receive: Callable, send: Callable) -> None:
        start = perf_counter()
        request = Request(scope, receive, start)
        raw = scope.get("raw_path") or b""
        # uvicorn decodes %2F into "/" in `path`; only the raw path shows a model name that carried one.
        if raw.startswith(b"/v2/") and _ESCAPED_SEPARATOR.search(raw):
            route: Route | None = self._bad_name_route
        else:
            route = self._route(scope["path"], request)
        label = route.label if route is not None else "unmatched"
        try:
            # The token first: without it, no path or method can be probed (only the health probes are open).
            if self._expected_auth is not None and (route is None or route.auth):
                self._check_auth(request)
            if route is None:
                raise RequestError(404, f"no endpoint {scope['path']}; see /docs", "path", reason="not_found")
            if scope["method"] not in route.methods:
                allow = ", ".join(route.methods)
                raise RequestError(405, f"{scope['method']} is not allowed here; use {allow}", "method", headers=[(b"allow", allow.encode())])
            async with asyncio.timeout(self.settings.request_timeout_s):
                status, body, content_type, headers = await route.handler(request)
        except RequestError as err:
            status, body, content_type, headers = err.status, err.body(), JSON, err.headers
            self.metrics.errors.labels(label, err.reason).inc()
            if err.reason != "overloaded":  # counted in /metrics; a log write per refusal would feed the overload
                await self._log_refused(request, label, status, err.message)
        except TimeoutError:
            if request.body_pending:  # the client was still sending; close, the rest of the body is unread
                status, headers, reason = 408, [(b"connection", b"close")], "slow_body"
                message = (f"the body did not arrive within {self.settings.request_timeout_s} s "
                           "(DISTILLERY_SERVE_REQUEST_TIMEOUT_S)")
            else:
                status, headers, reason = 504, [], "timeout"
                message = f"the request took longer than {self.settings.request_timeout_s} s (DISTILLERY_SERVE_REQUEST_TIMEOUT_S)"
            content_type = JSON
            body = orjson.dumps({"error": message, "field": "body" if status == 408 else None})
            self.metrics.errors.labels(label, reason).inc()
            await self._log_refused(request, label, status, message)
        except Exception:  # a bug: answer 500, keep serving, leave a traceback in the log
            log.exception("internal error on %s %s (request id %s)", scope["method"], scope["path"], request.request_id)
            status, content_type, headers = 500, JSON, []
            body = orjson.dumps({"error": f"internal error; the server log has the details under request id {request.request_id}", "field": None})
            self.metrics.errors.labels(label, "internal").inc()
            await self._log_refused(request, label, status, "internal error")
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

    def _check_auth(self, request: Request) -> None:
        sent = request.headers.get(b"authorization")
        if sent is None:
            raise RequestError(401, "missing 'Authorization: Bearer <token>'", "Authorization", "unauthorized", [(b"www-authenticate", b'Bearer realm="distillery"')])
        scheme, _, credentials = sent.strip().partition(b" ")
        # RFC 9110: the auth scheme is case-insensitive ("bearer", "BEARER").
        if scheme.lower() != b"bearer" or not hmac.compare_digest(credentials.strip(), self._expected_auth):
            raise RequestError(401, "wrong bearer token", "Authorization", "unauthorized", [(b"www-authenticate", b'Bearer realm="distillery", error="invalid_token"')])

    async def _read_body(self, request: Request, binary_ok: bool = False) -> bytes:
        content_type = request.headers.get(b"content-type")
        if content_type:  # none at all is read as JSON: Triton's HTTP client sends none
            media = content_type.split(b";", 1)[0].strip().lower()
            if media != JSON and not (binary_ok and media == b"application/octet-stream"):
                wanted = "application/json" + (" (or application/octet-stream with Inference-Header-Content-Length)" if binary_ok else "")
                raise RequestError(415, f"Content-Type {content_type.decode('latin-1')!r} is not supported; send {wanted}", "Content-Type")
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
        return RequestError(413, f"the body is larger than {limit} bytes (DISTILLERY_SERVE_MAX_BODY_BYTES)", "body", "too_large", [(b"connection", b"close")])

    def _model_for(self, request: Request) -> Any:
        model = self.manager.current
        name = request.params.get("name")
        if name is not None and name != model.name:
            raise RequestError(404, f"unknown model {name!r}; this server serves {model.name!r}", "model_name", "not_found")
        version = request.params.get("version")
        if version is not None and version != model.version:
            raise RequestError(404, f"version {version!r} of {model.name!r} is not served; version {model.version!r} is", "model_version", "not_found")
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
        body = await self._read_body(request)
        await self._admit()
        try:
            payload = protocol.parse_json(body)
            model = self.manager.current
            parsed = protocol.parse_predict(payload, model, self.settings.max_rows, b"true" in body or b"false" in body)
            outputs = await self.batcher.submit(model, parsed.x)
        finally:
            self.admission.release()
        answer = outputs[model.answer]
        await self._log(request, "predict", model, parsed.x, parsed.rows, answer)
        return 200, protocol.predict_response(model, answer, request.request_id), JSON, []

    async def infer(self, request: Request) -> Response:
        self._shed_early()
        body = await self._read_body(request, binary_ok=True)
        header_length = request.headers.get(protocol.BINARY_HEADER.encode())
        binary = None
        if header_length is not None:
            if not header_length.isdigit() or int(header_length) > len(body):
                raise RequestError(400, f"Inference-Header-Content-Length is {header_length.decode('latin-1')!r}; the body has {len(body)} bytes", "Inference-Header-Content-Length")
            binary, body = body[int(header_length) :], body[: int(header_length)]
        self._model_for(request)  # 404 before taking a slot
        await self._admit()
        try:
            payload = protocol.parse_json(body)
            model = self._model_for(request)
            parsed = protocol.parse_infer(payload, model, self.settings.max_rows, binary, b"true" in body or b"false" in body)
            outputs = await self.batcher.submit(model, parsed.x)
        finally:
            self.admission.release()
        if parsed.request_id and REQUEST_ID.match(parsed.request_id) and b"x-request-id" not in request.headers:
            request.request_id = parsed.request_id
        await self._log(request, "infer", model, parsed.x, None, outputs[model.answer])
        content, headers = protocol.infer_response(model, parsed, outputs)
        return 200, content, (b"application/octet-stream" if headers else JSON), headers

    async def _log(self, request: Request, endpoint: str, model: Any, x: Any, rows: list | None, answer: Any) -> None:
        # Before the answer is sent: an answered row is in the log's buffer (or the answer waits for room).
        await self.predlog.put(Entry(
            ts=time.time(), request_id=request.request_id, endpoint=endpoint, model_name=model.name,
            model_version=model.version, latency_ms=(perf_counter() - request.start) * 1000, task=model.task,
            classes=model.classes, threshold=model.metadata.threshold, x=x, rows=rows, outputs=answer,
        ))

    async def _log_refused(self, request: Request, label: str, status: int, error: str) -> None:
        """A refused prediction request is logged too, so the monitor sees the error rate."""
        endpoint = LOGGED_ENDPOINTS.get(label)
        model = self.manager.current
        if endpoint is None or model is None:
            return
        await self.predlog.put(Entry(
            ts=time.time(), request_id=request.request_id, endpoint=endpoint, model_name=model.name,
            model_version=model.version, latency_ms=(perf_counter() - request.start) * 1000, status=status,
            error=error,
        ))

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
        return 200, b'{"live":true}', JSON, []

    async def ready(self, request: Request) -> Response:
        reason = self.ready_reason()
        if reason is None:
            return 200, b'{"ready":true}', JSON, []
        return 503, orjson.dumps({"ready": False, "reason": reason}), JSON, []

    async def model_ready(self, request: Request) -> Response:
        self._model_for(request)
        return await self.ready(request)

    async def server_metadata(self, request: Request) -> Response:
        return 200, orjson.dumps({"name": "distillery", "version": self.version, "extensions": EXTENSIONS}), JSON, []

    async def model_metadata(self, request: Request) -> Response:
        model = self._model_for(request)
        sig = model.signature
        meta = model.metadata
        body = {
            "name": model.name,
            "versions": [model.version],
            "platform": "onnxruntime_onnx",
            "inputs": [{"name": sig.input_name, "datatype": "FP32", "shape": [-1, *sig.input_shape]}],
            "outputs": [{"name": name, "datatype": "FP32", "shape": [-1, *shape]} for name, shape in sig.outputs],
            "parameters": {
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
            },
        }
        if task_of(model.task).multilabel:
            body["parameters"]["threshold"] = model.metadata.threshold
        if model.encoder is not None:
            body["parameters"]["columns"] = {"numeric": list(model.encoder.numeric),
                                             "categorical": {c: list(v) for c, v in model.encoder.categorical.items()}}
        return 200, orjson.dumps(body), JSON, []

    def _observe_batch(self, rows: int, seconds: float) -> None:
        self.metrics.observe_batch(rows, seconds)
        self.stats.inference_count += rows
        self.stats.execution_count += 1
        self.stats.compute_ns += int(seconds * 1e9)

    async def bad_name(self, request: Request) -> Response:
        raise RequestError(400, "a model name or version has no path separators ('/' or '\\', escaped or not)",
                           "model_name")

    async def repository_index(self, request: Request) -> Response:
        """Triton's model repository extension: the one model this server serves."""
        model, reason = self.manager.current, self.ready_reason()
        return 200, orjson.dumps([{"name": model.name, "version": model.version,
                                   "state": "UNAVAILABLE" if reason else "READY", "reason": reason or ""}]), JSON, []

    async def model_stats(self, request: Request) -> Response:
        """Triton's statistics extension (GET /v2/models[/{name}[/versions/{v}]]/stats)."""
        model = self._model_for(request) if "name" in request.params else self.manager.current
        return 200, orjson.dumps({"model_stats": [self.stats.as_triton(model.name, model.version)]}), JSON, []

    async def load(self, request: Request) -> Response:
        self._model_for(request)
        result = await self.manager.reload(force=True)
        status = 409 if result.status == "refused" else 200
        return status, orjson.dumps(result.as_dict()), JSON, []

    async def render_metrics(self, request: Request) -> Response:
        return 200, self.metrics.render(), CONTENT_TYPE_LATEST.encode(), []

    async def openapi(self, request: Request) -> Response:
        if self._openapi is None:
            document = openapi_document(self.version)
            if self._expected_auth is None:
                document.pop("security")
            self._openapi = orjson.dumps(document)
        return 200, self._openapi, JSON, []

    async def docs(self, request: Request) -> Response:
        from fastapi.openapi.docs import get_swagger_ui_html

        html = get_swagger_ui_html(openapi_url="/openapi.json", title="Distillery model server",
                                   swagger_js_url="/docs/swagger-ui-bundle.js", swagger_css_url="/docs/swagger-ui.css",
                                   swagger_favicon_url="/docs/favicon.png")
        return 200, bytes(html.body), b"text/html; charset=utf-8", []

    async def docs_asset(self, request: Request) -> Response:
        import fastapi_offline

        name = request.scope["path"].rsplit("/", 1)[-1]  # one of DOCS_ASSETS: the route table admits no other
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
        log.info("serving %s version %s (%s) from %s", model.name, model.version, model.signature.describe(), model.source)

    async def shutdown(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        await self.batcher.close()
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
