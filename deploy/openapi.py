"""The OpenAPI document (/openapi.json) and its Swagger UI (/docs).

The request handlers read bodies with orjson and check them by hand (deploy.
protocol), which is what makes the server fast; the pydantic models here exist
to describe those same bodies to humans and client generators.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, Field
from pydantic.json_schema import models_json_schema

from tasks.contracts.onnx import IMAGE_INPUT, LOGITS, PREDICTION, PROBABILITIES, TABLE_INPUT


class Error(BaseModel):
    error: str = Field(description="what is wrong, and what to do")
    field: Optional[str] = Field(description="the JSON path (or header) at fault, e.g. inputs[0].shape; null if none")


class TensorInput(BaseModel):
    name: str = Field(description=f"the model's input: '{IMAGE_INPUT}' (images) or '{TABLE_INPUT}' (tables)",
                      examples=[IMAGE_INPUT])
    shape: list[int] = Field(description="actual sizes, batch first; no -1", examples=[[1, 1, 8, 8]])
    datatype: Literal["FP32"]
    data: Optional[list[Any]] = Field(None, description="row-major values, flat or nested to match shape")
    parameters: Optional[dict[str, Any]] = Field(None, description="binary_data_size: bytes of this tensor after the JSON header")


class RequestedOutput(BaseModel):
    name: Literal[LOGITS, PROBABILITIES, PREDICTION] = Field(  # type: ignore[valid-type]
        description="classifiers and multilabel: logits, probabilities; regression: prediction")
    parameters: Optional[dict[str, Any]] = Field(None, description="binary_data: true for raw little-endian FP32 bytes")


class InferRequest(BaseModel):
    id: Optional[str] = Field(None, description="echoed in the response")
    parameters: Optional[dict[str, Any]] = Field(None, description="binary_data_output: true for binary outputs")
    inputs: list[TensorInput] = Field(description="exactly one tensor")
    outputs: Optional[list[RequestedOutput]] = Field(None, description="default: every output")


class TensorOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: Literal["FP32"]
    data: Optional[list[float]] = Field(None, description="row-major, flat")
    parameters: Optional[dict[str, Any]] = None


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: Optional[str] = None
    outputs: list[TensorOutput]


class PredictRequest(BaseModel):
    rows: list[Union[list[Any], dict[str, Any]]] = Field(
        description="images: raw pixels per row, nested like the input shape ([1, 8, 8] or [8, 8]) or flat (64); "
        "tables: one object {column: value} per row, null for a missing value",
        examples=[[[0, 0, 5, 13, 9, 1, 0, 0] * 8]],
    )


class Prediction(BaseModel):
    """One row's answer; which fields it has depends on the model's task."""

    class_: Optional[str] = Field(None, alias="class", description="binary, multiclass: the most probable class")
    probability: Optional[float] = Field(None, description="binary, multiclass: that class's probability")
    probabilities: Optional[dict[str, float]] = Field(None, description="every class's (or label's) probability")
    labels: Optional[list[str]] = Field(None, description="multilabel: the labels at or over the model's threshold")
    value: Optional[float] = Field(None, description="regression: the predicted value, in the target's units")


class PredictResponse(BaseModel):
    model_name: str
    model_version: str
    task: Literal["binary", "multiclass", "multilabel", "regression"]
    request_id: str
    predictions: list[Prediction]


class TensorMetadata(BaseModel):
    name: str
    datatype: Literal["FP32"]
    shape: list[int] = Field(description="-1 is the batch dimension")


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, Any] = Field(description="task, answer (the output holding it), classes, threshold "
                                       "(multilabel), sha256, source, kind, git_commit, data_hash, loaded_at")


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class Health(BaseModel):
    live: Optional[bool] = None
    ready: Optional[bool] = None
    reason: Optional[str] = None


class ReloadResult(BaseModel):
    status: Literal["loaded", "unchanged", "refused"]
    model_name: str
    model_version: str
    error: Optional[str] = None


MODELS = [Error, InferRequest, InferResponse, PredictRequest, PredictResponse, ModelMetadata, ServerMetadata, Health, ReloadResult]
ERRORS = {
    "400": "malformed JSON",
    "401": "missing or wrong bearer token (when DISTILLERY_SERVE_TOKEN is set)",
    "404": "unknown model name or version",
    "413": "body larger than DISTILLERY_SERVE_MAX_BODY_BYTES",
    "415": "not application/json",
    "422": "a field is missing, mistyped, of the wrong shape, not finite, or over DISTILLERY_SERVE_MAX_ROWS",
    "503": "at capacity (Retry-After), or not ready",
    "504": "took longer than DISTILLERY_SERVE_REQUEST_TIMEOUT_S",
}


def _ref(model: type[BaseModel]) -> dict:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _operation(summary: str, response: type[BaseModel] | None, request: type[BaseModel] | None = None, errors: tuple = (), tag: str = "inference", media: str = "application/json", auth: bool = True) -> dict:
    op: dict[str, Any] = {"summary": summary, "tags": [tag], "responses": {}}
    if response is not None:
        op["responses"]["200"] = {"description": "OK", "content": {media: {"schema": _ref(response)}}}
    else:
        op["responses"]["200"] = {"description": "OK", "content": {media: {"schema": {"type": "string"}}}}
    if request is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(request)}}}
    for code in errors:
        op["responses"][code] = {"description": ERRORS[code], "content": {"application/json": {"schema": _ref(Error)}}}
    if not auth:
        op["security"] = []
    return op


def openapi_document(version: str, title: str = "Distillery model server") -> dict:
    _, defs = models_json_schema([(m, "validation") for m in MODELS], ref_template="#/components/schemas/{model}")
    infer_errors = ("400", "401", "404", "413", "415", "422", "503", "504")
    name = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}, "description": "the served model's name"}
    version_param = {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}}
    paths = {
        "/predict": {
            "post": _operation(
                "Predict rows: raw pixels or table rows in; per row the class, its probability and every class's",
                PredictResponse,
                PredictRequest,
                ("400", "401", "413", "415", "422", "503", "504"),
            )
        },
        "/v2/models/{name}/infer": {
            "post": {**_operation("Open Inference Protocol (KServe v2) inference", InferResponse, InferRequest, infer_errors), "parameters": [name]}
        },
        "/v2/models/{name}/versions/{version}/infer": {
            "post": {**_operation("Inference on a given version (must be the one served)", InferResponse, InferRequest, infer_errors), "parameters": [name, version_param]}
        },
        "/v2/models/{name}": {"get": {**_operation("Model metadata: input and output tensors", ModelMetadata, errors=("401", "404"), tag="metadata"), "parameters": [name]}},
        "/v2/models/{name}/ready": {"get": {**_operation("Model readiness", Health, errors=("401", "404", "503"), tag="health"), "parameters": [name]}},
        "/v2": {"get": _operation("Server metadata", ServerMetadata, errors=("401",), tag="metadata")},
        "/v2/health/live": {"get": _operation("Liveness (no token needed)", Health, tag="health", auth=False)},
        "/v2/health/ready": {"get": _operation("Readiness: 503 while loading or draining (no token needed)", Health, errors=("503",), tag="health", auth=False)},
        "/v2/repository/models/{name}/load": {
            "post": {
                **_operation("Reload now: check the source (file or registry alias) and swap in a new model if it passes", ReloadResult, errors=("401", "404"), tag="admin"),
                "parameters": [name],
            }
        },
        "/v2/repository/index": {"post": _operation("Model repository index (Triton): the served model, its version and state", None, errors=("401",), tag="admin")},
        "/v2/models/{name}/stats": {"get": {**_operation("Inference statistics (Triton's statistics extension)", None, errors=("401", "404"), tag="metadata"), "parameters": [name]}},
        "/metrics": {"get": _operation("Prometheus metrics", None, errors=("401",), tag="admin", media="text/plain")},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": "Serves the Distillery champion with onnxruntime. See docs/serving.md."},
        "paths": paths,
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "when DISTILLERY_SERVE_TOKEN is set"}},
        },
        "security": [{"bearer": []}],
    }
