"""The OpenAPI document (/openapi.json), generated from the route table
(deploy.app.ROUTES) and the formats (deploy.protocol); FastAPI's Swagger UI
draws it at /docs.

Nothing in the document is written here: a path is there because a route
is, a status because the route (or every route) can answer it, a field
because a type in deploy.protocol has it. pydantic turns those types into
JSON Schema once, when the document is first asked for; the handlers never
touch pydantic.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Literal, Mapping, Protocol

from pydantic import TypeAdapter


# What the generator reads of the route table (deploy/app.py, ROUTES), stated here so this module
# imports nothing of the server: the table uses the generator, not the other way round.
class Outcome(Protocol):
    @property
    def status(self) -> int: ...
    @property
    def description(self) -> str: ...
    @property
    def body(self) -> Any: ...
    @property
    def headers(self) -> tuple[str, ...]: ...


class Route(Protocol):
    @property
    def method(self) -> str: ...
    @property
    def tag(self) -> str: ...
    @property
    def summary(self) -> str: ...
    @property
    def description(self) -> str: ...
    @property
    def ok(self) -> Any: ...
    @property
    def request(self) -> Any: ...
    @property
    def auth(self) -> bool: ...
    @property
    def choices(self) -> Mapping[str, tuple[str, ...]]: ...

    @property
    def paths(self) -> tuple[str, ...]: ...

    @property
    def outcomes(self) -> tuple[Outcome, ...]: ...


JSON = "application/json"
PARAMETERS = {  # the path parameters' meaning; a route's `choices` add their values
    "name": "the served model's name (GET /v2/repository/index)",
    "version": "the served version (another one is 404)",
}
HEADERS = {
    "Allow": "the methods this path takes",
    "Retry-After": "seconds to wait before trying again",
    "WWW-Authenticate": 'Bearer realm="distillery" (with error="invalid_token" when the token is wrong)',
}


class _Schemas:
    """JSON Schemas for the types met while the document is built, made in one
    pass at the end (so that each named type is one component): `of` hands out
    a dict that is filled in then."""

    def __init__(self) -> None:
        self._wanted: dict[Any, list[dict]] = {}

    def of(self, kind: Any) -> dict:
        holder: dict = {}
        self._wanted.setdefault(kind, []).append(holder)
        return holder

    def components(self) -> dict:
        kinds = list(self._wanted)
        mode: Literal["validation"] = "validation"  # requests and answers alike: what the JSON holds
        adapters = [(i, mode, TypeAdapter(kind)) for i, kind in enumerate(kinds)]
        schemas, definitions = TypeAdapter.json_schemas(adapters, ref_template="#/components/schemas/{model}")
        for i, kind in enumerate(kinds):
            for holder in self._wanted[kind]:
                holder.update(schemas[(i, mode)])
        return definitions.get("$defs", {})


def _content(body: Any, schemas: _Schemas) -> dict:
    media = body if isinstance(body, dict) else {JSON: body}
    return {media_type: {"schema": schemas.of(kind)} for media_type, kind in media.items()}


def _responses(route: Route, schemas: _Schemas) -> dict:
    responses = {"200": {"description": "OK", "content": _content(route.ok, schemas)}}
    by_status: dict[int, list[Outcome]] = {}
    for outcome in route.outcomes:
        by_status.setdefault(outcome.status, []).append(outcome)
    for status, outcomes in sorted(by_status.items()):
        bodies = list(dict.fromkeys(outcome.body for outcome in outcomes))
        schema = schemas.of(bodies[0]) if len(bodies) == 1 else {"anyOf": [schemas.of(body) for body in bodies]}
        texts = [outcome.description for outcome in outcomes]
        response: dict[str, Any] = {
            "description": texts[0] if len(texts) == 1 else "\n".join(f"- {t}" for t in texts),
            "content": {JSON: {"schema": schema}},
        }
        headers = list(dict.fromkeys(h for outcome in outcomes for h in outcome.headers))
        if headers:  # required when every cause of this status sends it
            response["headers"] = {
                h: {
                    "description": HEADERS[h],
                    "schema": {"type": "string"},
                    "required": all(h in outcome.headers for outcome in outcomes),
                }
                for h in headers
            }
        responses[str(status)] = response
    return responses


def _operation(route: Route, path: str, schemas: _Schemas) -> dict:
    operation: dict[str, Any] = {
        "operationId": route.method.lower() + re.sub(r"[^A-Za-z0-9]+", "_", path).rstrip("_"),
        "summary": route.summary,
        "tags": [route.tag],
    }
    if route.description:
        operation["description"] = route.description
    parameters = []
    for name in re.findall(r"{(\w+)}", path):
        schema: dict[str, Any] = {"type": "string"}
        if name in route.choices:
            schema["enum"] = list(route.choices[name])
        parameters.append(
            {
                "name": name,
                "in": "path",
                "required": True,
                "schema": schema,
                **({"description": PARAMETERS[name]} if name in PARAMETERS else {}),
            }
        )
    if parameters:
        operation["parameters"] = parameters
    if route.request is not None:
        operation["requestBody"] = {"required": True, "content": _content(route.request, schemas)}
    operation["responses"] = _responses(route, schemas)
    if not route.auth:
        operation["security"] = []
    return operation


def openapi_document(
    routes: Iterable[Route], version: str, secured: bool, title: str = "Distillery model server"
) -> dict:
    """The document for `routes`; `secured`: a bearer token is needed (but
    where a route says otherwise)."""
    schemas = _Schemas()
    paths: dict[str, dict] = {}
    for route in routes:
        for path in route.paths:
            paths.setdefault(path, {})[route.method.lower()] = _operation(route, path, schemas)
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version,
            "description": "Serves the Distillery champion with onnxruntime. See docs/serving.md.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas.components(),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "when DISTILLERY_SERVE_TOKEN is set"}
            },
        },
    }
    if secured:
        document["security"] = [{"bearer": []}]
    return document
