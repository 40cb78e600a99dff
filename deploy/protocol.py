"""The server's HTTP formats, and the code that reads and writes them.

The formats: every body that crosses HTTP is a type here (a TypedDict, so the
handlers go on building plain dicts and orjson them, with no validation or
model objects per request). deploy.openapi derives /openapi.json from these
types and deploy.app's route table, and tests/serve/test_openapi.py checks
every answer the real server gives against that document.

The code: the Open Inference Protocol (KServe v2) infer request, JSON or with
Triton's binary tensor extension (FP32 tensors, or BYTES picture files that
deploy.images decodes), and the plain /predict rows, in; tensors and answers
out. Every refusal is a RequestError that names the field at
fault, with a JSON path such as `inputs[0].shape` or `rows[3].Island`, and its
body is made by error_body. Nothing a client sends can make these functions
raise anything else.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
from dataclasses import dataclass, field
from typing import Annotated, Any, Callable, Literal, NamedTuple, Union, cast

import numpy as np
import orjson
from pydantic import ConfigDict, Field, GetPydanticSchema, with_config
from typing_extensions import NotRequired, TypedDict  # pydantic reads typing's TypedDict only from Python 3.12

from tasks.contracts.encoder import BOOLEAN_WORDS, TableEncoder, as_dates
from tasks.contracts.image import ImagePolicy
from tasks.contracts.onnx import (
    IMAGE_INPUT,
    LOGITS,
    PREDICTION,
    PROBABILITIES,
    TABLE_INPUT,
    InputSpec,
    predicted_labels,
)
from tasks.core.task import TASKS, TaskType, task_of

BINARY_HEADER = "inference-header-content-length"
NUMPY = orjson.OPT_SERIALIZE_NUMPY


# --------------------------------------------------------------------------- the formats
# Requests are described as the server reads them (it ignores keys it does not know);
# answers exactly: a key the server adds to an answer must be declared here first, or
# the document's check (tests/serve/test_openapi.py) fails.


def _doc(text: str) -> Any:
    return Field(description=text)


_answer = with_config(ConfigDict(extra="forbid"))


def _as(kind: Any) -> Any:
    """A field sent as a plain dict, described as `kind` (a contract's dataclass)."""
    return GetPydanticSchema(lambda _source, handler: handler(kind))


@_answer
class ErrorBody(TypedDict):
    """Every refusal's body, whatever its status (made by error_body)."""

    error: Annotated[str, _doc("what is wrong, and what to do")]
    field: Annotated[Union[str, None], _doc("the JSON path (or header) at fault, e.g. inputs[0].shape; null if none")]


def error_body(message: str, field: str | None) -> bytes:
    """The body of every refusal: the application's, and the connection guard's (deploy.connections)."""
    body: ErrorBody = {"error": message, "field": field}
    return orjson.dumps(body)


class TensorInput(TypedDict):
    name: Annotated[
        str, _doc(f"the model's input: '{IMAGE_INPUT}' (images) or '{TABLE_INPUT}' (tables: the encoded features)")
    ]
    shape: Annotated[
        list[int], Field(min_length=1, description="actual sizes, batch first; no -1; BYTES: [n], one picture a row")
    ]
    datatype: Annotated[
        Literal["FP32", "BYTES"],
        _doc(
            "FP32: pixel values or encoded features; BYTES: picture files (PNG, JPEG, WebP, GIF, BMP, TIFF), "
            "for a model trained on a folder of pictures (parameters.image in the model metadata)"
        ),
    ]
    data: NotRequired[
        Annotated[
            list[Any],
            _doc("FP32: row-major values, flat or nested to match shape; BYTES: one base64 string per picture"),
        ]
    ]
    parameters: NotRequired[
        Annotated[
            dict[str, Any],
            _doc(
                "binary_data_size: bytes of this tensor after the JSON header (BYTES: each picture as a 4-byte "
                "little-endian length, then its bytes, as tritonclient sends them)"
            ),
        ]
    ]


# The contract's output names, as a type (the document lists them; a type checker sees a str).
OutputName: Any = Literal[LOGITS, PROBABILITIES, PREDICTION]


class RequestedOutput(TypedDict):
    name: Annotated[OutputName, _doc("classifiers and multilabel: logits, probabilities; regression: prediction")]
    parameters: NotRequired[Annotated[dict[str, Any], _doc("binary_data: true for raw little-endian FP32 bytes")]]


class InferRequest(TypedDict):
    """An Open Inference Protocol (v2) request: one input tensor."""

    id: NotRequired[Annotated[str, _doc("echoed in the answer")]]
    parameters: NotRequired[Annotated[dict[str, Any], _doc("binary_data_output: true for binary outputs")]]
    inputs: Annotated[list[TensorInput], Field(min_length=1, max_length=1, description="exactly one tensor")]
    outputs: NotRequired[Annotated[list[RequestedOutput], Field(min_length=1, description="default: every output")]]


@_answer
class BinaryTensor(TypedDict):
    binary_data_size: Annotated[int, _doc("this tensor's bytes, after the JSON header and the tensors before it")]


@_answer
class TensorOutput(TypedDict):
    name: str
    datatype: Literal["FP32"]
    shape: list[int]
    data: NotRequired[Annotated[list[float], _doc("row-major, flat (absent when sent as binary)")]]
    parameters: NotRequired[BinaryTensor]


@_answer
class InferResponse(TypedDict):
    model_name: str
    model_version: str
    id: NotRequired[Annotated[str, _doc("the request's id, when it sent one")]]
    outputs: list[TensorOutput]


class PictureForm(TypedDict):
    """A multipart/form-data upload: one picture file per part, any field name."""

    file: Annotated[
        list[bytes],
        _doc("picture files (PNG, JPEG, WebP, GIF, BMP, TIFF); each part is a row, answered in the parts' order"),
    ]


class PredictRequest(TypedDict):
    rows: Annotated[
        list[Union[list[Any], dict[str, Any]]],
        Field(
            min_length=1,
            description="images: raw pixels per row, nested like the input shape ([1, 8, 8] or [8, 8]) or flat (64); "
            "tables: one object {column: value} per row, null for a missing value",
            examples=[[[0, 0, 5, 13, 9, 1, 0, 0] * 8]],
        ),
    ]


UNSEEN_DOC = (
    "table models: the row's categorical columns whose value training never saw (answered as no category; "
    "the prediction log and the monitor's feature/<name>/unseen_fraction count them)"
)


@_answer
class ValuePrediction(TypedDict):
    """One row's answer from a regression model."""

    value: Annotated[float, _doc("the predicted value, in the target's units")]
    unseen: NotRequired[Annotated[list[str], _doc(UNSEEN_DOC)]]


# "class" is a keyword: this one is declared by the functional syntax.
ClassPrediction = TypedDict(
    "ClassPrediction",
    {
        "class": Annotated[str, _doc("the most probable class")],
        "probability": Annotated[float, _doc("that class's probability")],
        "probabilities": Annotated[dict[str, float], _doc("every class's probability, in the model's class order")],
        "unseen": NotRequired[Annotated[list[str], _doc(UNSEEN_DOC)]],
    },
)
_answer(ClassPrediction)
ClassPrediction.__doc__ = "One row's answer from a classifier (binary, multiclass)."


@_answer
class LabelsPrediction(TypedDict):
    """One row's answer from a multilabel model."""

    labels: Annotated[
        list[str], _doc("the labels at or over the model's threshold (parameters.threshold in the model metadata)")
    ]
    probabilities: Annotated[dict[str, float], _doc("every label's probability, in the model's label order")]
    unseen: NotRequired[Annotated[list[str], _doc(UNSEEN_DOC)]]


# A row's answer by Task.answer (tasks.core.task): which tasks give which is decided there.
PREDICTIONS: dict[str, Any] = {"value": ValuePrediction, "class": ClassPrediction, "labels": LabelsPrediction}


def _predict_response(answer: str) -> Any:
    """The /predict answer of the tasks whose rows are answered by `answer` (a
    type made at import, for the document: its tasks are known at run time)."""
    make: Any = TypedDict
    one_of: Any = Literal
    tasks = tuple(name for name, task in TASKS.items() if task.answer == answer)
    listed: Any = list
    rows = listed[PREDICTIONS[answer]]
    fields = {
        "model_name": str,
        "model_version": str,
        "task": one_of[tasks],
        "request_id": str,
        "predictions": Annotated[rows, _doc("one answer per row, in the rows' order")],
    }
    return _answer(make(f"Predict{answer.capitalize()}Response", fields))


# One per kind of answer; which it is, the task says.
PredictResponse: Any = Union[tuple(_predict_response(answer) for answer in PREDICTIONS)]


@_answer
class Live(TypedDict):
    live: Literal[True]


@_answer
class Readiness(TypedDict):
    """Ready (200), or not (503) and why."""

    ready: bool
    reason: NotRequired[Annotated[str, _doc("why not: no model loaded, or draining (shutting down)")]]


@_answer
class ServerMetadata(TypedDict):
    name: str
    version: str
    extensions: list[str]


@_answer
class TensorMetadata(TypedDict):
    name: str
    datatype: Literal["FP32"]
    shape: Annotated[list[int], _doc("-1 is the batch dimension")]


@_answer
class TableColumns(TypedDict):
    numeric: list[str]
    booleans: Annotated[list[str], _doc("yes/no columns: true/false, 0/1 or a word such as yes, no, Y, N")]
    dates: Annotated[dict[str, str], _doc("each date column's format (pd.to_datetime's, e.g. ISO8601 or %d/%m/%Y)")]
    categorical: Annotated[
        dict[str, list[str]], _doc("each column's known categories; another value is encoded as unseen")
    ]


@_answer
class ModelParameters(TypedDict):
    task: TaskType
    answer: Annotated[str, _doc("the output /predict answers from")]
    classes: Annotated[list[str], _doc("class or label names, in output order; empty for regression")]
    kind: Literal["table", "image"]
    sha256: str
    source: Annotated[str, _doc("where the model came from: models:/<name>@<alias> or a file")]
    loaded_at: Annotated[float, _doc("unix time")]
    input_spec: Annotated[dict[str, Any], _as(InputSpec), _doc("the input the model takes (tasks.contracts.onnx)")]
    git_commit: str
    data_hash: str
    candidate: Union[str, None]
    threshold: NotRequired[Annotated[float, _doc("multilabel: a label is predicted at or over this probability")]]
    image: NotRequired[
        Annotated[
            dict[str, Any],
            _as(ImagePolicy),
            _doc(
                "a model trained on a folder of pictures: how a picture file becomes its pixels; such a model "
                "takes picture files too (an image body or multipart on /predict, a BYTES input on infer)"
            ),
        ]
    ]
    columns: NotRequired[Annotated[TableColumns, _doc("tables: the raw columns /predict takes")]]


@_answer
class ModelMetadata(TypedDict):
    name: str
    versions: Annotated[list[str], _doc("the one version served")]
    platform: Literal["onnxruntime_onnx"]
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: ModelParameters


@_answer
class RepositoryModel(TypedDict):
    name: str
    version: str
    state: Literal["READY", "UNAVAILABLE"]
    reason: Annotated[str, _doc("why unavailable; empty when ready")]


@_answer
class ReloadResult(TypedDict):
    """What a reload did (deploy.reload.ReloadResult.as_dict)."""

    status: Literal["loaded", "unchanged", "refused"]
    model_name: Annotated[str, _doc("the model served after it")]
    model_version: str
    error: NotRequired[Annotated[str, _doc("why the candidate was refused, or the source could not be read")]]


@_answer
class Duration(TypedDict):
    count: int
    ns: int


@_answer
class InferStatistics(TypedDict):
    success: Duration
    fail: Duration
    queue: Duration
    compute_input: Duration
    compute_infer: Duration
    compute_output: Duration


@_answer
class ModelStatistics(TypedDict):
    """Triton's statistics of one model, since the server started."""

    name: str
    version: str
    last_inference: Annotated[int, _doc("unix time in ms of the last answered inference; 0 if none")]
    inference_count: Annotated[int, _doc("rows inferred")]
    execution_count: Annotated[int, _doc("onnxruntime runs (a run holds a micro-batch of requests)")]
    inference_stats: InferStatistics
    batch_stats: list[Any]


@_answer
class ModelStats(TypedDict):
    model_stats: list[ModelStatistics]


class RequestError(Exception):
    """A request the server refuses; `status` is 4xx (or 503/504 for load)."""

    def __init__(
        self,
        status: int,
        message: str,
        field: str | None = None,
        reason: str = "bad_request",
        headers: list | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.field, self.reason = status, message, field, reason
        self.headers = headers or []

    def body(self) -> bytes:
        return error_body(self.message, self.field)


def invalid(message: str, field: str | None) -> RequestError:
    return RequestError(422, message, field)


# --------------------------------------------------------------------------- JSON


def parse_json(body: bytes) -> Any:
    if not body:
        raise RequestError(400, "the request has no body; send a JSON object", "body")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as err:
        # NaN, Infinity and numbers too large for a double are not JSON, but common
        # encoders write them; read them here so that validation names their field.
        try:
            return json.loads(body)
        except (ValueError, RecursionError):
            raise RequestError(400, f"malformed JSON: {err}", "body") from None


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"the string {value[:20]!r}"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, float) and not np.isfinite(value):
        return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")
    text = repr(value)
    return text if len(text) <= 24 else text[:20] + "..."


MAX_DEPTH = 32  # lists nested deeper are refused: numpy stops at 64 dimensions, Python's stack near 1,000


def _first_problem(value: Any, path: str, shape: tuple[int, ...] | None, depth: int = 0) -> tuple[str, str] | None:
    """Where `value` stops being a numeric array of `shape` (any shape if None):
    the first non-number, the first list of the wrong length, or lists nested
    deeper than MAX_DEPTH."""
    if isinstance(value, list):
        if depth >= MAX_DEPTH:
            return path, f"lists nested more than {MAX_DEPTH} levels deep"
        if shape is not None and (not shape or len(value) != shape[0]):
            want = "a number" if not shape else f"{shape[0]} values"
            return path, f"expected {want}, got a list of {len(value)}"
        inner = shape[1:] if shape else None
        first_type = None
        for i, item in enumerate(value):
            kind = isinstance(item, list)
            if first_type is None:
                first_type = kind
            elif kind != first_type:
                return f"{path}[{i}]", "mixes lists and numbers at one level (a ragged array)"
            found = _first_problem(item, f"{path}[{i}]", inner, depth + 1)
            if found:
                return found
        if shape is None and first_type:
            lengths = {len(item) for item in value}
            if len(lengths) > 1:
                return path, f"rows of different lengths {sorted(lengths)} (a ragged array)"
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return path, f"expected a number, got {_describe(value)}"
    if shape:
        return path, f"expected a list of {shape[0]} values, got a number"
    if isinstance(value, float) and not np.isfinite(value):
        return path, f"{_describe(value)} is not allowed; values must be finite numbers"
    if not finite32(value):
        return path, f"{_describe(value)} is out of float32 range"
    return None


FLOAT32_MAX = float(np.finfo(np.float32).max)


def finite32(value: int | float) -> bool:
    """True if the JSON number `value` is a finite float32."""
    try:
        return abs(float(value)) <= FLOAT32_MAX  # False for NaN; float() overflows for huge ints
    except OverflowError:
        return False


def _has_bool(value: Any) -> bool:
    if isinstance(value, list):
        return (
            any(_has_bool(v) for v in value)
            if value and isinstance(value[0], list)
            else any(type(v) is bool for v in value)
        )
    return type(value) is bool


def as_float32(data: Any, path: str, shape: tuple[int, ...] | None = None, maybe_bool: bool = True) -> np.ndarray:
    """A float32 array from nested JSON lists, refusing anything that is not a
    finite number (bools, strings, null, NaN, Inf) or not rectangular. `shape`,
    if given, is the nesting expected (flat data is checked by the caller)."""
    try:
        arr = np.asarray(data)  # no dtype: strings, null and bools show up in it
        ok = arr.dtype.kind in "iuf" and not (maybe_bool and _has_bool(data))
        if ok:
            arr = arr.astype(np.float32)  # an overflow becomes inf, caught just below
            ok = bool(np.isfinite(arr).all())
    except (ValueError, TypeError, OverflowError):  # ragged nesting, ints beyond int64
        ok = False
    if ok and (shape is None or arr.shape == shape):
        return arr
    problem = _first_problem(data, path, shape)
    if problem is None:  # numbers only, but not the nesting asked for
        problem = (path, f"has shape {list(np.shape(data))}, expected {list(shape or ())}")
    raise invalid(f"{problem[0]}: {problem[1]}", problem[0])


# --------------------------------------------------------------------------- v2 infer


class Picture(NamedTuple):
    """A picture file in a request: the field a refusal names (body, parts[1],
    inputs[0].data[2]), its bytes, and how a message says where it is."""

    field: str
    data: bytes
    label: str = ""  # e.g. parts[1] (field "file", file "cat.png"); the field if empty

    @property
    def where(self) -> str:
        return self.label or self.field


@dataclass
class ParsedInfer:
    """A checked v2 infer request."""

    x: np.ndarray | None  # None when the input is picture files (`pictures`), decoded by deploy.images
    request_id: str | None
    outputs: list[tuple[str, bool]]  # (name, as binary)
    binary_output: bool = False
    parameters: dict = field(default_factory=dict)
    pictures: list[Picture] | None = None  # a BYTES input: one picture file per row


def _mapping(value: Any, path: str) -> dict:
    if not isinstance(value, dict):
        raise invalid(f"{path} must be a JSON object, got {_describe(value)}", path)
    return value


def _shape(value: Any, path: str) -> tuple[int, ...]:
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(d, int) and not isinstance(d, bool) for d in value)
    ):
        raise invalid(
            f"{path} must be a non-empty list of integers, got {_describe(value) if not isinstance(value, list) else value}",
            path,
        )
    if any(d == -1 for d in value):
        raise invalid(
            f"{path} is {value}: -1 (any size) is for model metadata; a request gives each dimension's actual size",
            path,
        )
    if any(d < 0 for d in value):
        raise invalid(f"{path} is {value}: dimensions cannot be negative", path)
    return tuple(value)


def parse_infer(
    payload: Any, model: Any, max_rows: int, binary: bytes | None = None, maybe_bool: bool = True
) -> ParsedInfer:
    """Check a v2 infer request against `model`; `binary` holds the bytes after
    the JSON header when the binary tensor extension is used."""
    payload = _mapping(payload, "body")
    sig = model.signature
    inputs = payload.get("inputs")
    if inputs is None:
        raise invalid("missing 'inputs': a list with one tensor {name, shape, datatype, data}", "inputs")
    if not isinstance(inputs, list):
        raise invalid(f"inputs must be a list of tensors, got {_describe(inputs)}", "inputs")
    if len(inputs) != 1:
        raise invalid(f"the model takes one input '{sig.input_name}', the request has {len(inputs)}", "inputs")
    tensor = _mapping(inputs[0], "inputs[0]")
    for key in ("name", "shape", "datatype"):
        if key not in tensor:
            raise invalid(f"inputs[0] has no '{key}'", f"inputs[0].{key}")
    if tensor["name"] != sig.input_name:
        raise invalid(
            f"inputs[0].name is {tensor['name']!r}; this model's input is '{sig.input_name}'", "inputs[0].name"
        )
    pictures = tensor["datatype"] == "BYTES" and model.metadata.preprocessing.image is not None
    if tensor["datatype"] != "FP32" and not pictures:
        raise invalid(_datatype_refusal(tensor["datatype"], model), "inputs[0].datatype")
    shape = _shape(tensor["shape"], "inputs[0].shape")
    if shape[1:] != (() if pictures else sig.input_shape):
        takes = "[n] (BYTES: one picture file a row)" if pictures else f"[n, {', '.join(map(str, sig.input_shape))}]"
        raise invalid(f"inputs[0].shape is {list(shape)}; '{sig.input_name}' takes {takes}", "inputs[0].shape")
    rows = shape[0]
    if rows == 0:
        raise invalid("inputs[0].shape has 0 rows: the batch is empty", "inputs[0].shape")
    if rows > max_rows:
        raise invalid(
            f"{rows} rows is more than the limit of {max_rows} per request (DISTILLERY_SERVE_MAX_ROWS)",
            "inputs[0].shape",
        )
    params = tensor.get("parameters") or {}
    if not isinstance(params, dict):
        raise invalid("inputs[0].parameters must be a JSON object", "inputs[0].parameters")
    size = int(np.prod(shape))

    x, files = None, None
    if pictures and "binary_data_size" in params:
        files = _length_prefixed(_binary_part(params["binary_data_size"], binary, None, shape), rows)
    elif pictures:
        files = _base64_pictures(tensor, rows)
    elif "binary_data_size" in params:
        part = _binary_part(params["binary_data_size"], binary, size * 4, shape)
        x = np.frombuffer(part, dtype="<f4").astype(np.float32).reshape(shape)
        if not np.isfinite(x).all():
            index = int(np.flatnonzero(~np.isfinite(x.ravel()))[0])
            raise invalid(
                f"inputs[0] (binary): value {index} is {x.ravel()[index]}; values must be finite", "inputs[0].data"
            )
    else:
        if "data" not in tensor:
            raise invalid("inputs[0] has no 'data'", "inputs[0].data")
        data = tensor["data"]
        if not isinstance(data, list):
            raise invalid(f"inputs[0].data must be a list of numbers, got {_describe(data)}", "inputs[0].data")
        flat = not data or not isinstance(data[0], list)
        x = as_float32(data, "inputs[0].data", None if flat else shape, maybe_bool)
        if x.size != size:
            raise invalid(f"inputs[0].data has {x.size} values; shape {list(shape)} needs {size}", "inputs[0].data")
        x = x.reshape(shape)
    if binary is not None and "binary_data_size" not in params and binary:
        raise invalid("the request carries binary data but no input declares binary_data_size", "inputs[0].parameters")

    request_params = payload.get("parameters") or {}
    if not isinstance(request_params, dict):
        raise invalid("parameters must be a JSON object", "parameters")
    binary_default = request_params.get("binary_data_output", False) is True
    outputs = _requested_outputs(payload.get("outputs"), model, binary_default)
    request_id = payload.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise invalid("id must be a string", "id")
    if x is not None:
        x = np.ascontiguousarray(x)
    return ParsedInfer(x, request_id, outputs, binary_default, request_params, files)


def _binary_part(declared: Any, binary: bytes | None, need: int | None, shape: tuple[int, ...]) -> bytes:
    """The binary part of the one input, `declared` bytes long (and `need`, if known)."""
    path = "inputs[0].parameters.binary_data_size"
    if binary is None:
        raise invalid(f"{path} is set but the request has no binary part (header {BINARY_HEADER} missing)", path)
    if not isinstance(declared, int) or isinstance(declared, bool) or (need is not None and declared != need):
        want = f"shape {list(shape)} of FP32 needs {need} bytes" if need is not None else "a byte count is expected"
        raise invalid(f"{path} is {declared!r}; {want}", path)
    if len(binary) != declared:
        raise invalid(f"{path} is {declared} but the binary part has {len(binary)} bytes", path)
    return binary


def _length_prefixed(part: bytes, rows: int) -> list[Picture]:
    """A BYTES tensor in the binary extension: each element a 4-byte little-endian
    length, then that many bytes (tritonclient's serialize_byte_tensor)."""
    files, pos = [], 0
    for i in range(rows):
        where = f"inputs[0].data[{i}]"
        if pos + 4 > len(part):
            raise invalid(
                f"{where} (binary): the part ends before its 4-byte length; shape says {rows} pictures", where
            )
        n = int.from_bytes(part[pos : pos + 4], "little")
        pos += 4
        if pos + n > len(part):
            raise invalid(f"{where} (binary): its length says {n} bytes, {len(part) - pos} are left", where)
        files.append(Picture(where, part[pos : pos + n]))
        pos += n
    if pos != len(part):
        raise invalid(f"inputs[0] (binary): {len(part) - pos} bytes after the {rows} pictures", "inputs[0].data")
    return files


def _base64_pictures(tensor: dict, rows: int) -> list[Picture]:
    """A BYTES tensor in JSON: one base64 string per picture (JSON strings are text;
    KServe's examples send pictures so)."""
    data = tensor.get("data")
    if not isinstance(data, list) or len(data) != rows:
        got = f"a list of {len(data)}" if isinstance(data, list) else _describe(data)
        raise invalid(
            f"inputs[0].data must be a list of {rows} base64 strings, one picture a row; got {got}", "inputs[0].data"
        )
    files = []
    for i, item in enumerate(data):
        where = f"inputs[0].data[{i}]"
        if not isinstance(item, str):
            raise invalid(f"{where} must be a picture file's bytes as a base64 string, got {_describe(item)}", where)
        try:
            files.append(Picture(where, base64.b64decode(item, validate=True)))
        except (binascii.Error, ValueError) as err:
            raise invalid(
                f"{where} is not base64 ({err}); send each picture file's bytes base64-encoded", where
            ) from None
    return files


def _datatype_refusal(datatype: Any, model: Any) -> str:
    sig = model.signature
    if datatype != "BYTES":
        also = " (or BYTES: picture files)" if model.metadata.preprocessing.image is not None else ""
        return f"inputs[0].datatype is {datatype!r}; '{sig.input_name}' is FP32{also}"
    if model.kind == "table":
        return f"inputs[0].datatype is 'BYTES' (picture files); this table model takes FP32 '{sig.input_name}'"
    return (
        f"inputs[0].datatype is 'BYTES' (picture files); this model takes FP32 '{sig.input_name}', pixel values in "
        "its raw units: it was not trained on a folder of pictures, so it has no decoding policy (preprocessing.image)"
    )


def _requested_outputs(value: Any, model: Any, binary_default: bool) -> list[tuple[str, bool]]:
    if value is None:
        return [(name, binary_default) for name in model.output_names]
    if not isinstance(value, list) or not value:
        raise invalid("outputs must be a non-empty list of {name}", "outputs")
    requested = []
    for i, item in enumerate(value):
        item = _mapping(item, f"outputs[{i}]")
        name = item.get("name")
        if name not in model.output_names:
            raise invalid(
                f"outputs[{i}].name is {name!r}; the model's outputs are {list(model.output_names)}",
                f"outputs[{i}].name",
            )
        params = item.get("parameters") or {}
        if not isinstance(params, dict):
            raise invalid(f"outputs[{i}].parameters must be a JSON object", f"outputs[{i}].parameters")
        requested.append((cast(str, name), params.get("binary_data", binary_default) is True))
    return requested


def infer_response(
    model: Any, request: ParsedInfer, outputs: dict[str, np.ndarray]
) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The v2 response body (an InferResponse, then the binary outputs if any) and
    its extra headers (binary extension)."""
    entries, chunks = [], []
    for name, as_binary in request.outputs:
        value = outputs[name]
        entry: dict[str, Any] = {"name": name, "datatype": "FP32", "shape": list(value.shape)}
        if as_binary:
            chunk = np.ascontiguousarray(value, dtype="<f4").tobytes()
            entry["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        else:
            entry["data"] = value.ravel()
        entries.append(entry)
    body: dict[str, Any] = {"model_name": model.name, "model_version": model.version}
    if request.request_id is not None:
        body["id"] = request.request_id
    body["outputs"] = entries
    header = orjson.dumps(body, option=NUMPY)
    if not chunks:
        return header, []
    return header + b"".join(chunks), [(BINARY_HEADER.encode(), str(len(header)).encode())]


# --------------------------------------------------------------------------- /predict


@dataclass
class ParsedPredict:
    """Checked /predict rows, as the model's input."""

    x: np.ndarray
    rows: list | None  # table rows as sent (for the prediction log)
    unseen: list[list[str]] | None = None  # table rows: per row, the columns with a category training never saw


def _rows(payload: Any, max_rows: int) -> list:
    payload = _mapping(payload, "body")
    if "rows" not in payload:
        raise invalid("missing 'rows': a list of samples to predict", "rows")
    rows = payload["rows"]
    if not isinstance(rows, list):
        raise invalid(f"rows must be a list of samples, got {_describe(rows)}", "rows")
    if not rows:
        raise invalid("rows is empty: send at least one sample", "rows")
    if len(rows) > max_rows:
        raise invalid(
            f"{len(rows)} rows is more than the limit of {max_rows} per request (DISTILLERY_SERVE_MAX_ROWS)", "rows"
        )
    return rows


@functools.lru_cache(maxsize=16)
def _row_layouts(shape: tuple[int, ...]) -> tuple[tuple[tuple[int, ...], ...], str]:
    """The shapes a /predict image row may have, and how to say so."""
    size = int(np.prod(shape))
    accepted = [shape, (size,)]
    if len(shape) == 3 and shape[0] == 1:
        accepted.insert(1, shape[1:])  # one-channel images may leave the channel out
    return tuple(accepted), " or ".join(str(list(s)) for s in accepted)


def parse_predict(payload: Any, model: Any, max_rows: int, maybe_bool: bool = True) -> ParsedPredict:
    rows = _rows(payload, max_rows)
    if model.encoder is not None:
        x, unseen = encode_table(rows, model.encoder)
        return ParsedPredict(x, rows, unseen)
    shape = model.signature.input_shape
    accepted, expected = _row_layouts(shape)
    for i, row in enumerate(rows):  # cheap: finds a row that is not a list before numpy does
        if type(row) is not list:
            raise invalid(f"rows[{i}] must be a list of pixel values ({expected}), got {_describe(row)}", f"rows[{i}]")
    try:
        # Fast path. Overflow in the cast to float32 becomes inf, which isfinite
        # catches; the server turns numpy's warning about it off (deploy.server).
        arr = np.asarray(rows)
        good = arr.dtype.kind in "iuf" and arr.shape[1:] in accepted and not (maybe_bool and _has_bool(rows))
        if good:
            x = arr.astype(np.float32)
            good = bool(np.isfinite(x).all())
    except (ValueError, TypeError, OverflowError):  # ragged rows, ints beyond int64
        good = False
    if not good:  # find the row at fault, and say why
        for i, row in enumerate(rows):
            # np.shape only on numbers-only rectangular rows, at most MAX_DEPTH deep (numpy refuses > 64)
            row_shape = np.shape(row) if _first_problem(row, "", None, 1) is None else None
            if row_shape is None or tuple(row_shape) not in accepted:
                if row_shape is not None:
                    raise invalid(f"rows[{i}] has shape {list(row_shape)}; a row is {expected}", f"rows[{i}]")
                break
        x = as_float32(rows, "rows", None, maybe_bool)  # raises, naming the value
        if tuple(x.shape[1:]) not in accepted:
            raise invalid(f"rows have shape {list(x.shape[1:])}; a row is {expected}", "rows")
    return ParsedPredict(np.ascontiguousarray(x.reshape((len(rows), *shape))), None)


def encode_rows(rows: list, encoder: TableEncoder) -> np.ndarray:
    """Table rows {column: value} -> the model's features (encode_table)."""
    return encode_table(rows, encoder)[0]


def encode_table(rows: list, encoder: TableEncoder) -> tuple[np.ndarray, list[list[str]]]:
    """Table rows {column: value} -> the model's features, through the very
    encoder training used (tasks.contracts.encoder). Each cell is checked
    first, so that a value the encoder would quietly read as a gap is a 422
    naming its row and column instead. A model that carries the gate's
    corrections (encoder.reading) has each cell read as the gate read its
    training rows first ("n/a" a gap, "65000 $" a number, " rent " RENT), and
    only then checked. Also, per row, the categorical columns whose value
    training never saw (answered, as all zeros, and flagged)."""
    import pandas as pd

    check = _cell_checks(encoder)
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise invalid(f"rows[{i}] must be an object {{column: value}}, got {_describe(row)}", f"rows[{i}]")
        for col, ok in check.items():
            if col not in row:
                raise invalid(f"rows[{i}] has no '{col}' (send null for a missing value)", f"rows[{i}].{col}")
            value = row[col]
            if value is None:
                continue
            if encoder.reading is None:
                ok(value, f"rows[{i}].{col}")
            elif isinstance(value, bool) and col not in encoder.booleans or not isinstance(value, (str, int, float)):
                raise invalid(
                    f"rows[{i}].{col} must be a number, a string or null, got {_describe(value)}", f"rows[{i}].{col}"
                )
    frame = pd.DataFrame({col: [row[col] for row in rows] for col in encoder.columns})
    if encoder.reading is not None:
        frame = _read_as_training(frame, encoder, check)
    for col in encoder.numeric:
        frame[col] = pd.to_numeric(frame[col], errors="coerce")
    return np.ascontiguousarray(encoder.encode(frame), dtype=np.float32), encoder.unseen(frame)


def _read_as_training(frame: Any, encoder: TableEncoder, check: dict[str, Callable[[Any, str], None]]) -> Any:
    """The rows read by the gate's own corrections (TableEncoder.read); a cell
    the gate would have quarantined, or that is still not of its column's kind, is a 422."""
    import pandas as pd

    read, refused = encoder.read(frame)
    values = {col: read[col].tolist() for col in check}
    quarantined = {col: mask.to_numpy() for col, mask in refused.items()}
    for i in range(len(read)):
        for col, ok in check.items():
            field = f"rows[{i}].{col}"
            if col in quarantined and quarantined[col][i]:
                raise invalid(
                    f"{field} is {_describe(frame[col].iat[i])}, which training would have quarantined "
                    "(not a number); send a number, or null for a missing value",
                    field,
                )
            value = values[col][i]
            if not pd.isna(value):
                ok(value, field)
    return read


def _number_cell(value: Any, field: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise invalid(f"{field} must be a number or null, got {_describe(value)}", field)
    if not finite32(value):
        raise invalid(f"{field} is {_describe(value)}; send a finite number, or null for a missing value", field)


def _boolean_cell(value: Any, field: str) -> None:
    """true/false, 0/1, or a yes/no word in any case (as_boolean reads it)."""
    if isinstance(value, bool) or (isinstance(value, (int, float)) and value in (0, 1)):
        return
    if not (isinstance(value, str) and value.strip().lower() in BOOLEAN_WORDS):
        raise invalid(
            f"{field} must be yes or no (true/false, 0/1, or one of {sorted(BOOLEAN_WORDS)}) or null, "
            f"got {_describe(value)}",
            field,
        )


def _date_cell(format: str) -> Callable[[Any, str], None]:
    def check(value: Any, field: str) -> None:
        import pandas as pd

        if not (isinstance(value, str) and as_dates(pd.Series([value]), format).notna().all()):
            raise invalid(f"{field} must be a date written as {format}, or null; got {_describe(value)}", field)

    return check


def _category_cell(value: Any, field: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise invalid(f"{field} must be a string or null, got {_describe(value)}", field)


def _cell_checks(encoder: TableEncoder) -> dict[str, Callable[[Any, str], None]]:
    """Each raw column -> the check of one non-null cell (raises a 422 naming the field)."""
    return {
        **dict.fromkeys(encoder.numeric, _number_cell),
        **dict.fromkeys(encoder.booleans, _boolean_cell),
        **{col: _date_cell(column.format) for col, column in encoder.dates.items()},
        **dict.fromkeys(encoder.categorical, _category_cell),
    }


def predictions(
    model: Any, answer: np.ndarray, unseen: list[list[str]] | None = None
) -> list[ValuePrediction] | list[LabelsPrediction] | list[ClassPrediction]:
    """`unseen` (table rows): each answer says which of its row's categories training never saw."""
    answers = _answers(model, answer)
    if unseen is not None:
        for one, names in zip(answers, unseen):
            one["unseen"] = names
    return answers


def _answers(model: Any, answer: np.ndarray) -> list[ValuePrediction] | list[LabelsPrediction] | list[ClassPrediction]:
    """One answer per row, by task: the value (regression); the labels at or over
    the threshold and every label's probability (multilabel); the class, its
    probability and every class's (binary, multiclass). Probabilities stay
    numpy float32 here: orjson writes them (NUMPY)."""
    task = task_of(model.task)
    if task.regression:
        values: list[ValuePrediction] = [{"value": v} for v in answer.reshape(len(answer), -1)[:, 0].tolist()]
        return values
    classes = model.classes
    if task.multilabel:
        labelled: list[LabelsPrediction] = [
            {"labels": labels, "probabilities": dict(zip(classes, row))}
            for labels, row in zip(predicted_labels(model.metadata, answer), answer)
        ]
        return labelled
    best = answer.argmax(axis=1)
    classified: list[ClassPrediction] = [
        {"class": classes[b], "probability": row[b], "probabilities": dict(zip(classes, row))}
        for b, row in zip(best.tolist(), answer)
    ]
    return classified


def predict_response(model: Any, answer: np.ndarray, request_id: str, unseen: list[list[str]] | None = None) -> bytes:
    """The /predict body (a PredictResponse); `answer` is the model's answer output for the rows."""
    return orjson.dumps(
        {
            "model_name": model.name,
            "model_version": model.version,
            "task": model.task,
            "request_id": request_id,
            "predictions": predictions(model, answer, unseen),
        },
        option=NUMPY,
    )
