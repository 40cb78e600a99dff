"""Loading a model to serve, from a file or from the MLflow registry, and the
checks a model passes before it is trusted.

The file's bytes are read once: their sha256 is checked and onnxruntime builds
its session from those same bytes, so what was checked is what runs. Nothing is
unpickled: the registry is used only to resolve an alias and to download the
ONNX artifact, and onnxruntime reads the ONNX protobuf.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Hashable

import numpy as np

from tasks.core import DistilleryError

log = logging.getLogger("deploy.model")

OUTPUTS = ("logits", "probabilities")
IMAGE_INPUT, TABLE_INPUT = "pixels", "features"
REGISTRY_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))$")


@dataclass(frozen=True)
class Signature:
    """What clients depend on: the input tensor and the outputs, batch dimension left out."""

    input_name: str
    input_shape: tuple[int, ...]
    outputs: tuple[tuple[str, tuple[int, ...]], ...]

    def describe(self) -> str:
        outs = ", ".join(f"{n}{list(s)}" for n, s in self.outputs)
        return f"{self.input_name}[-1, {', '.join(map(str, self.input_shape))}] -> {outs}"


@dataclass
class LoadedModel:
    name: str
    version: str
    sha256: str
    source: str
    session: Any  # onnxruntime.InferenceSession
    signature: Signature
    classes: tuple[str, ...]
    metadata: dict[str, Any]
    encoder: dict | None = None  # tables: tasks.preprocess.encode_table's encoder
    loaded_at: float = field(default_factory=time.time)

    @property
    def kind(self) -> str:
        return "table" if self.signature.input_name == TABLE_INPUT else "image"

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.signature.outputs)

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Every output for the batch `x` (float32, C-contiguous)."""
        values = self.session.run(None, {self.signature.input_name: x})
        return dict(zip(self._run_names, values))

    def __post_init__(self) -> None:
        self._run_names = [o.name for o in self.session.get_outputs()]


# --------------------------------------------------------------------------- checks


def _static_dims(shape: list, what: str, where: str) -> tuple[int, ...]:
    if len(shape) < 2:
        raise DistilleryError(f"{where}: {what} has shape {shape}; a batch dimension and at least one more are needed")
    if isinstance(shape[0], int) and shape[0] > 0:
        raise DistilleryError(f"{where}: {what} has a fixed batch size {shape[0]}; export it with a dynamic batch dimension")
    rest = shape[1:]
    if not all(isinstance(d, int) and d > 0 for d in rest):
        raise DistilleryError(f"{where}: {what} has non-batch dimensions {rest}; they must be fixed")
    return tuple(rest)


def build_model(data: bytes, *, name: str, version: str, source: str, threads: int, expected_sha256: str | None = None) -> LoadedModel:
    """Check `data` (an ONNX file's bytes) and build the model to serve from it.

    Refused, with a DistilleryError naming `source`: a sha256 other than
    `expected_sha256`, a file onnxruntime cannot load, inputs or outputs that are
    not the project's contract (one float input with a dynamic batch dimension;
    float `logits` and `probabilities` of one column per class), metadata without
    classes (or, for tables, without the encoder), or a trial run that fails or
    gives probabilities that are not a distribution.
    """
    import onnxruntime as ort

    sha256 = hashlib.sha256(data).hexdigest()
    if expected_sha256 is not None and sha256 != expected_sha256:
        raise DistilleryError(
            f"{source}: sha256 of the downloaded file is {sha256}, but the registry's sha256 tag says "
            f"{expected_sha256}; refusing a file that is not the one registered"
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only; warnings about unused initializers are noise here
    try:
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own Fail / InvalidGraph / InvalidProtobuf types
        raise DistilleryError(f"{source}: onnxruntime cannot load it ({type(err).__name__}: {err})") from err

    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise DistilleryError(f"{source}: the model has {len(inputs)} inputs ({[i.name for i in inputs]}); one is expected")
    (inp,) = inputs
    if inp.type != "tensor(float)":
        raise DistilleryError(f"{source}: input '{inp.name}' is {inp.type}; tensor(float) is expected")
    input_shape = _static_dims(list(inp.shape), f"input '{inp.name}'", source)

    try:
        metadata = {k: json.loads(v) for k, v in session.get_modelmeta().custom_metadata_map.items()}
    except json.JSONDecodeError as err:
        raise DistilleryError(f"{source}: metadata_props are not JSON-encoded ({err})") from err
    classes = metadata.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise DistilleryError(f"{source}: metadata_props has no 'classes' (a list of class names)")

    by_name = {o.name: o for o in session.get_outputs()}
    outputs = []
    for out_name in OUTPUTS:
        out = by_name.get(out_name)
        if out is None:
            raise DistilleryError(f"{source}: the model has no '{out_name}' output (it has {sorted(by_name)})")
        if out.type != "tensor(float)":
            raise DistilleryError(f"{source}: output '{out_name}' is {out.type}; tensor(float) is expected")
        shape = list(out.shape)
        if len(shape) == 2 and not isinstance(shape[1], int):
            shape[1] = len(classes)  # a symbolic class dimension: the trial run below checks it
        dims = _static_dims(shape, f"output '{out_name}'", source)
        if dims != (len(classes),):
            raise DistilleryError(f"{source}: output '{out_name}' has shape [-1, {dims}] but there are {len(classes)} classes")
        outputs.append((out_name, dims))
    signature = Signature(inp.name, input_shape, tuple(outputs))

    encoder = None
    if inp.name == TABLE_INPUT:
        encoder = (metadata.get("preprocessing") or {}).get("encoder")
        if not isinstance(encoder, dict) or not {"numeric", "categorical", "fill_values"} <= set(encoder):
            raise DistilleryError(f"{source}: a table model needs preprocessing.encoder in its metadata_props")
        width = len(encoder["numeric"]) + sum(len(v) for v in encoder["categorical"].values())
        if (width,) != input_shape:
            raise DistilleryError(f"{source}: the encoder gives {width} features but the input takes {list(input_shape)}")
    elif inp.name != IMAGE_INPUT:
        raise DistilleryError(f"{source}: input '{inp.name}' is neither '{IMAGE_INPUT}' (images) nor '{TABLE_INPUT}' (tables)")

    model = LoadedModel(name, version, sha256, source, session, signature, tuple(classes), metadata, encoder)
    _trial_run(model)
    return model


def _trial_run(model: LoadedModel) -> None:
    """Two rows through the session: it runs, and gives one distribution per row."""
    try:
        out = model.run(np.zeros((2, *model.signature.input_shape), np.float32))
    except Exception as err:
        raise DistilleryError(f"{model.source}: a trial run fails ({type(err).__name__}: {err})") from err
    probs = out["probabilities"]
    if probs.shape != (2, len(model.classes)) or not np.isfinite(probs).all() or not np.allclose(probs.sum(axis=1), 1, atol=1e-3):
        raise DistilleryError(f"{model.source}: a trial run gives probabilities that are not one distribution per row")


def check_compatible(candidate: LoadedModel, expected: Signature) -> None:
    """A new model may replace the served one only if clients cannot tell the
    difference in shape: same input, same outputs."""
    if candidate.signature != expected:
        raise DistilleryError(
            f"{candidate.source}: signature {candidate.signature.describe()} differs from the served "
            f"{expected.describe()}; restart the server to change what clients send"
        )


# --------------------------------------------------------------------------- sources


class PathSource:
    """An ONNX file. Its fingerprint is the file's stat, cheap to poll; its
    version is the first 12 hex digits of its sha256."""

    def __init__(self, path: str, name: str):
        self.path = Path(path)
        self.name = name or "distillery"
        self.describe = str(self.path)

    def fingerprint(self) -> Hashable:
        try:
            st = os.stat(self.path)
        except OSError:
            return None  # missing for a moment (being replaced): keep serving
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def load(self, threads: int, fingerprint: Hashable = None) -> LoadedModel:
        try:
            data = self.path.read_bytes()
        except OSError as err:
            raise DistilleryError(f"{self.path}: cannot read the model file ({err.strerror})") from err
        version = hashlib.sha256(data).hexdigest()[:12]
        return build_model(data, name=self.name, version=version, source=str(self.path), threads=threads)


class RegistrySource:
    """A registered model: `models:/<name>@<alias>` (the fingerprint is the
    version the alias points at) or `models:/<name>/<version>` (fixed).

    The version's `sha256` tag, which tasks.select sets, must match the
    downloaded file; a version without the tag is refused.
    """

    def __init__(self, uri: str, tracking_uri: str, name: str = ""):
        match = REGISTRY_URI.match(uri)
        if not match:
            raise DistilleryError(f"DISTILLERY_SERVE_MODEL={uri!r}: a registry URI is models:/<name>@<alias> or models:/<name>/<version>")
        self.registered = match["name"]
        self.alias = match["alias"]
        self.fixed_version = match["version"]
        self.name = name or self.registered
        self.tracking_uri = tracking_uri
        self.describe = uri
        self._client = None

    @property
    def client(self) -> Any:
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        return self._client

    def fingerprint(self) -> Hashable:
        if self.fixed_version:
            return self.fixed_version
        try:
            return str(self.client.get_model_version_by_alias(self.registered, self.alias).version)
        except Exception as err:  # MlflowException for a missing alias; connection errors for a remote server
            raise DistilleryError(
                f"{self.describe}: cannot resolve the alias in the registry at {self.tracking_uri} ({err})"
            ) from err

    def load(self, threads: int, fingerprint: Hashable = None) -> LoadedModel:
        import mlflow.artifacts
        import yaml

        version = str(fingerprint or self.fingerprint())
        where = f"models:/{self.registered}/{version}"
        try:
            mv = self.client.get_model_version(self.registered, version)
        except Exception as err:
            raise DistilleryError(f"{where}: not found in the registry at {self.tracking_uri} ({err})") from err
        expected = mv.tags.get("sha256")
        if not expected:
            raise DistilleryError(f"{where}: the version has no sha256 tag, so the file cannot be checked; register it with tasks.select")
        with tempfile.TemporaryDirectory(prefix="distillery-serve-") as tmp:
            try:
                folder = Path(
                    mlflow.artifacts.download_artifacts(artifact_uri=where, dst_path=tmp, tracking_uri=self.tracking_uri)
                )
            except Exception as err:
                raise DistilleryError(f"{where}: cannot download the model's artifacts ({err})") from err
            onnx_file = _onnx_file(folder, where, yaml)
            data = onnx_file.read_bytes()
        return build_model(data, name=self.name, version=version, source=where, threads=threads, expected_sha256=expected)


def _onnx_file(folder: Path, where: str, yaml: Any) -> Path:
    """The ONNX file of a logged MLflow model: MLmodel's onnx flavor names it."""
    mlmodel = folder / "MLmodel"
    if mlmodel.exists():
        flavor = (yaml.safe_load(mlmodel.read_text()) or {}).get("flavors", {}).get("onnx", {})
        if isinstance(flavor, dict) and isinstance(flavor.get("data"), str) and (folder / flavor["data"]).is_file():
            return folder / flavor["data"]
    found = sorted(folder.glob("*.onnx"))
    if len(found) != 1:
        raise DistilleryError(f"{where}: expected one ONNX file in the model's artifacts, found {[p.name for p in found]}")
    return found[0]


def make_source(model: str, model_name: str, tracking_uri: str) -> PathSource | RegistrySource:
    if model.startswith("models:/"):
        return RegistrySource(model, tracking_uri, model_name)
    return PathSource(model, model_name)
