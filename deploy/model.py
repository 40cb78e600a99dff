"""Loading a model to serve, from a file or from the MLflow registry, and the
checks a model passes before it is trusted.

The file's bytes are read once: their sha256 is checked and onnxruntime builds
its session from those same bytes, so what was checked is what runs. Nothing is
unpickled: the registry is used only to resolve an alias and to download the
ONNX artifact, and onnxruntime reads the ONNX protobuf.

External data: onnxruntime would resolve a tensor's external `location`
against the server's working directory, so a crafted model could return any
file there (params.yaml, .git/config) as its outputs. Every location is
checked in the protobuf before onnxruntime sees it: it must be a relative
path to a file inside the model's own folder. Those files are read once,
inlined into the bytes onnxruntime gets, and covered by the sha256, which is
the sha256 of the .onnx bytes followed by each external file's bytes (for a
self-contained model, simply the file's sha256).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Hashable, Iterator

import numpy as np

from tasks.contracts.encoder import TableEncoder
from tasks.contracts.onnx import (
    TABLE_INPUT,
    ArtifactMetadata,
    Signature,
    Tensor,
    answer_output,
    check_outputs,
    check_servable,
)
from tasks.contracts.registry import SHA256_TAG, missing_provenance, onnx_files
from tasks.core.errors import DistilleryError

log = logging.getLogger("deploy.model")

REGISTRY_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))$")


@dataclass
class LoadedModel:
    name: str
    version: str
    sha256: str
    source: str
    session: Any  # onnxruntime.InferenceSession
    signature: Signature
    metadata: ArtifactMetadata
    loaded_at: float = field(default_factory=time.time)

    @property
    def task(self) -> str:
        return self.metadata.task

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.metadata.classes)

    @property
    def encoder(self) -> TableEncoder | None:
        """Tables: how raw rows become the input (the encoder training used)."""
        return self.metadata.preprocessing.encoder

    @property
    def kind(self) -> str:
        return "table" if self.signature.input_name == TABLE_INPUT else "image"

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.signature.outputs)

    @property
    def answer(self) -> str:
        """The output that holds the answer (probabilities, or a regression's prediction)."""
        return answer_output(self.task)

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Every output for the batch `x` (float32, C-contiguous)."""
        values = self.session.run(None, {self.signature.input_name: x})
        return dict(zip(self._run_names, values))

    def __post_init__(self) -> None:
        self._run_names = [o.name for o in self.session.get_outputs()]


# --------------------------------------------------------------------------- checks


def _all_tensors(graph: Any) -> Iterator[Any]:
    """Every TensorProto of a graph, its nodes' attributes and subgraphs included."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _all_tensors(attr.g)
            for sub in attr.graphs:
                yield from _all_tensors(sub)


def inline_external_data(data: bytes, folder: Path, source: str) -> tuple[bytes, str]:
    """(self-contained ONNX bytes, sha256 over the model and its external
    files). Refuses, naming `source`, the tensor and the location, any external
    data that is not a relative path to a file inside `folder`."""
    if b"location" not in data:  # no external-data entry can be in a protobuf without this key
        return data, hashlib.sha256(data).hexdigest()
    import onnx

    try:
        proto = onnx.ModelProto.FromString(data)
    except Exception as err:  # google.protobuf.message.DecodeError
        raise DistilleryError(f"{source}: not an ONNX protobuf ({type(err).__name__}: {err})") from err
    root, digest, read = folder.resolve(), hashlib.sha256(data), {}
    for tensor in _all_tensors(proto.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        entries = {e.key: e.value for e in tensor.external_data}
        location = entries.get("location", "")
        target = (root / location).resolve()
        if not location or Path(location).is_absolute() or root not in target.parents or not target.is_file():
            raise DistilleryError(
                f"{source}: tensor {tensor.name!r} keeps its data in {location!r}, which is not a file inside the "
                f"model's folder {root}; refusing it (external data must sit next to the .onnx file)"
            )
        if target not in read:
            read[target] = target.read_bytes()
            digest.update(read[target])
        blob, offset = read[target], int(entries.get("offset", 0) or 0)
        length = int(entries["length"]) if entries.get("length") else len(blob) - offset
        if offset < 0 or length < 0 or offset + length > len(blob):
            raise DistilleryError(
                f"{source}: tensor {tensor.name!r}: offset {offset} + length {length} is past the "
                f"end of {location!r} ({len(blob)} bytes)"
            )
        tensor.raw_data = blob[offset : offset + length]
        del tensor.external_data[:]
        tensor.data_location = onnx.TensorProto.DEFAULT
    return (proto.SerializeToString() if read else data), digest.hexdigest()


def build_model(
    data: bytes,
    *,
    name: str,
    version: str | None,
    source: str,
    threads: int,
    folder: Path,
    expected_sha256: str | None = None,
) -> LoadedModel:
    """Check `data` (an ONNX file's bytes) and build the model to serve from it.

    Refused, with a DistilleryError naming `source`: external data outside
    `folder` (the model's own folder), a sha256 other than `expected_sha256`,
    a file onnxruntime cannot load, metadata_props that are
    not the artifact contract's (tasks.contracts.onnx), tensors that do not
    match them, or a trial run whose outputs break the contract.
    """
    import onnxruntime as ort

    data, sha256 = inline_external_data(data, folder, source)
    version = version or sha256[:12]
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
    metadata = ArtifactMetadata.from_props(session.get_modelmeta().custom_metadata_map, source)
    signature = check_servable(_tensors(session.get_inputs()), _tensors(session.get_outputs()), metadata, source)
    policy = metadata.preprocessing.image
    if policy is not None and signature.input_shape != (policy.channels, policy.size, policy.size):
        raise DistilleryError(
            f"{source}: preprocessing.image decodes a picture into {policy.channels} x {policy.size} x "
            f"{policy.size} pixels, but the input takes {list(signature.input_shape)}; re-export it (dvc repro)"
        )
    model = LoadedModel(name, version, sha256, source, session, signature, metadata)
    _trial_run(model)
    return model


def _tensors(args: Any) -> list[Tensor]:
    return [Tensor(a.name, a.type, tuple(a.shape)) for a in args]


def _trial_run(model: LoadedModel) -> None:
    """Two rows through the session: it runs, and its outputs keep the contract."""
    try:
        out = model.run(np.zeros((2, *model.signature.input_shape), np.float32))
    except Exception as err:
        raise DistilleryError(f"{model.source}: a trial run fails ({type(err).__name__}: {err})") from err
    check_outputs(model.metadata, out, 2, model.source)


def _column_kinds(model: LoadedModel) -> dict[str, str]:
    encoder = model.encoder
    assert encoder is not None  # asked of table models only
    # A date's format is part of its kind: a client writing "04/03/2021" must know which is the day.
    return {
        **{c: "numeric" for c in encoder.numeric},
        **{c: "boolean" for c in encoder.booleans},
        **{c: f"datetime ({column.format})" for c, column in encoder.dates.items()},
        **{c: "categorical" for c in encoder.categorical},
    }


def client_contract_differences(served: LoadedModel, candidate: LoadedModel) -> list[str]:
    """What a client of `served` would have to change to call `candidate`, one
    phrase each; empty if nothing.

    The contract is what clients send and read, not the graph. For a table it
    is the raw columns and their kinds: the server encodes rows with each
    model's own encoder, so a category more or fewer (a wider or narrower
    encoded input) is invisible to clients. For an image it is the pixel
    array's shape and range, and picture files if the served model takes
    them (the candidate's policy may differ: clients send the same files).
    For both, the task and the classes in order, which fix the outputs and the
    answer (tasks.contracts.onnx.check_servable has checked each model's
    outputs against them).
    """
    if served.kind != candidate.kind:  # nothing else compares across kinds
        return [f"the served model takes {served.kind} input and the candidate {candidate.kind} input"]
    differences = []
    if served.kind == "table":
        old, new = _column_kinds(served), _column_kinds(candidate)
        added, removed = [c for c in new if c not in old], [c for c in old if c not in new]
        if added:
            differences.append(f"columns added: {added}")
        if removed:
            differences.append(f"columns removed: {removed}")
        differences += [
            f"column {c!r} is {old[c]} in the served model and {new[c]} in the candidate"
            for c in old
            if c in new and old[c] != new[c]
        ]
    else:
        old_spec, new_spec = served.metadata.input_spec, candidate.metadata.input_spec
        if served.signature.input_shape != candidate.signature.input_shape:
            differences.append(
                f"image shape is {list(served.signature.input_shape)} in the served model and "
                f"{list(candidate.signature.input_shape)} in the candidate"
            )
        if old_spec.range != new_spec.range:  # clients scale their pixels to it
            differences.append(
                f"pixel range is {list(old_spec.range or ())} in the served model and "
                f"{list(new_spec.range or ())} in the candidate"
            )
        if served.metadata.preprocessing.image is not None and candidate.metadata.preprocessing.image is None:
            differences.append(
                "the served model takes picture files and the candidate does not (no preprocessing.image)"
            )
    if served.task != candidate.task:
        differences.append(f"task is {served.task} in the served model and {candidate.task} in the candidate")
    if served.classes != candidate.classes:
        order = " (the same names in another order)" if set(served.classes) == set(candidate.classes) else ""
        differences.append(
            f"classes differ{order}: {list(served.classes)} in the served model, "
            f"{list(candidate.classes)} in the candidate"
        )
    return differences


def check_compatible(candidate: LoadedModel, served: LoadedModel) -> None:
    """A new model may replace the served one only if its clients can go on
    sending the same requests and reading the same answers."""
    differences = client_contract_differences(served, candidate)
    if differences:
        raise DistilleryError(
            f"{candidate.source}: clients of the served version {served.version} could not call it unchanged: "
            f"{'; '.join(differences)}; restart the server to change what clients send"
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
        return build_model(
            data, name=self.name, version=None, source=str(self.path), threads=threads, folder=self.path.parent
        )


class RegistrySource:
    """A registered model: `models:/<name>@<alias>` (the fingerprint is the
    version the alias points at) or `models:/<name>/<version>` (fixed).

    The version's `sha256` tag, which tasks.register sets, must match the
    downloaded file; a version without the tag is refused.
    """

    def __init__(self, uri: str, tracking_uri: str, name: str = ""):
        match = REGISTRY_URI.match(uri)
        if not match:
            raise DistilleryError(
                f"DISTILLERY_SERVE_MODEL={uri!r}: a registry URI is models:/<name>@<alias> or models:/<name>/<version>"
            )
        self.registered = match["name"]
        self.alias = match["alias"]
        self.fixed_version = match["version"]
        self.name = name or self.registered
        self.tracking_uri = tracking_uri
        self.describe = uri
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            # MLflow would create an empty store and then report a missing model:
            # a registry file that is not there means no pipeline has run here.
            from tasks.core.tracking import sqlite_path

            database = sqlite_path(self.tracking_uri)
            if database is not None and not database.exists():
                raise DistilleryError(
                    f"{self.describe}: there is no registry at MLFLOW_TRACKING_URI={self.tracking_uri} (no such file in "
                    f"{Path.cwd()}): nothing is registered yet. Run `make run` first, or point MLFLOW_TRACKING_URI "
                    f"at the tracking server, or DISTILLERY_SERVE_MODEL at an ONNX file"
                )
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        return self._client

    def fingerprint(self) -> Hashable:
        if self.fixed_version:
            return self.fixed_version
        try:
            return str(self.client.get_model_version_by_alias(self.registered, self.alias).version)
        except DistilleryError:
            raise
        except Exception as err:  # MlflowException for a missing alias; connection errors for a remote server
            hint = (
                "; run `make run` first: it registers the champion and sets the alias"
                if "RESOURCE_DOES_NOT_EXIST" in str(getattr(err, "error_code", ""))
                else ""
            )
            raise DistilleryError(
                f"{self.describe}: cannot resolve the alias in the registry at {self.tracking_uri} ({err}){hint}"
            ) from err

    def load(self, threads: int, fingerprint: Hashable = None) -> LoadedModel:
        import mlflow.artifacts
        import yaml

        version = str(fingerprint or self.fingerprint())
        where = f"models:/{self.registered}/{version}"
        try:
            mv = self.client.get_model_version(self.registered, version)
        except DistilleryError:
            raise
        except Exception as err:
            raise DistilleryError(f"{where}: not found in the registry at {self.tracking_uri} ({err})") from err
        missing = missing_provenance(mv.tags)
        if SHA256_TAG in missing:
            raise DistilleryError(
                f"{where}: the version has no sha256 tag, so the file cannot be checked; "
                "register it with tasks.register"
            )
        if missing:  # a registration that never finished: no provenance, never served
            raise DistilleryError(
                f"{where}: the version is incomplete (no {', '.join(missing)} tag): it was not "
                "registered by tasks.register, or its registration failed; it is not served"
            )
        expected = mv.tags[SHA256_TAG]
        with tempfile.TemporaryDirectory(prefix="distillery-serve-") as tmp:
            try:
                # The version's own storage location, asked of this source's registry: a
                # models:/ URI would be resolved against MLflow's process-wide registry URI.
                location = self.client.get_model_version_download_uri(self.registered, version)
                folder = Path(
                    mlflow.artifacts.download_artifacts(
                        artifact_uri=location, dst_path=tmp, tracking_uri=self.tracking_uri
                    )
                )
            except Exception as err:
                from tasks.core.tracking import check_artifact_store

                check_artifact_store()  # a store that is down or refuses the credentials, named as such
                raise DistilleryError(f"{where}: cannot download the model's artifacts ({err})") from err
            onnx_file = _onnx_file(folder, where, yaml)
            return build_model(
                onnx_file.read_bytes(),
                name=self.name,
                version=version,
                source=where,
                threads=threads,
                folder=onnx_file.parent,
                expected_sha256=expected,
            )


def _onnx_file(folder: Path, where: str, yaml: Any) -> Path:
    """The ONNX file of a logged MLflow model: MLmodel's onnx flavor names it, or
    it is the pyfunc wrapper's one artifact (its pickle is never loaded here)."""
    mlmodel = folder / "MLmodel"
    if mlmodel.exists():
        flavor = (yaml.safe_load(mlmodel.read_text()) or {}).get("flavors", {}).get("onnx", {})
        if isinstance(flavor, dict) and isinstance(flavor.get("data"), str) and (folder / flavor["data"]).is_file():
            return folder / flavor["data"]
    found = onnx_files(folder)
    if len(found) != 1:
        raise DistilleryError(
            f"{where}: expected one ONNX file in the model's artifacts, found {[p.name for p in found]}"
        )
    return found[0]


def make_source(model: str, model_name: str, tracking_uri: str) -> PathSource | RegistrySource:
    if model.startswith("models:/"):
        return RegistrySource(model, tracking_uri, model_name)
    return PathSource(model, model_name)
