"""What the serve tests share: tiny ONNX models made here, a throwaway MLflow
registry, and a real server process on loopback."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[2]
CLASSES = ["a", "b", "c"]
PENGUINS = ["Adelie", "Chinstrap", "Gentoo"]
# The raw rows the table encoder is fitted on: its median fill values are 44 and 4000.
ENCODER_ROWS = {
    "bill": [40.0, 44.0, 48.0, None],
    "mass": [3500.0, 4000.0, 4500.0, 3900.0],
    "island": ["Biscoe", "Dream", "Torgersen", None],
    "sex": ["FEMALE", "MALE", None, "MALE"],
}
TABLE_COLUMNS = {"bill": "numeric", "mass": "numeric", "island": "categorical", "sex": "categorical"}


def table_encoder(rows: dict[str, list] = ENCODER_ROWS, columns: dict[str, str] = TABLE_COLUMNS) -> Any:
    """The encoder of the table models, fitted by the pipeline's own code on a
    small frame (`rows`, by column; `columns`: each one's kind)."""
    import pandas as pd

    from tasks.data.encoding import fit_encoder

    return fit_encoder(pd.DataFrame(rows), columns, "median")


ENCODER = table_encoder()


IMAGE_SCALE = (8.0, 4.0)  # mean, std of the 0..16 pixel models
PICTURE_SCALE = (128.0, 64.0)  # ... and of the 0..255 models of picture files


def image_metadata(
    classes: Sequence[str] = tuple(CLASSES),
    input_shape: tuple[int, ...] = (1, 8, 8),
    data_hash: str = "hash0",
    task: str = "multiclass",
    threshold: float = 0.5,
    policy: Any = None,
) -> Any:
    """The ONNX metadata of an image model in raw 0..16 pixel units, through the contract; with
    `policy` (an ImagePolicy), of a model trained on a folder of pictures: 0..255 units, the policy in it."""
    from tasks.contracts.onnx import IMAGE_INPUT, ArtifactMetadata, InputSpec, Preprocessing, output_names

    top, (mean, std) = (16.0, IMAGE_SCALE) if policy is None else (255.0, PICTURE_SCALE)
    return ArtifactMetadata(
        task=task,
        classes=tuple(classes),
        input_spec=InputSpec(name=IMAGE_INPUT, shape=(-1, *input_shape), dtype="float32", range=(0.0, top)),
        preprocessing=Preprocessing(
            inside_graph="(x - mean) / std per channel; send raw pixel values",
            mean=(mean,),
            std=(std,),
            image=policy,
        ),
        outputs=output_names(task),
        git_commit="abc123",
        data_hash=data_hash,
        threshold=threshold,
    )


def table_metadata(
    encoder: Any = ENCODER,
    classes: Sequence[str] = tuple(PENGUINS),
    task: str = "multiclass",
    data_hash: str = "tablehash",
    target_units: tuple[float, float] | None = None,
) -> Any:
    """The ONNX metadata of a table model over `encoder`'s features, the encoder in it."""
    from tasks.contracts.onnx import TABLE_INPUT, ArtifactMetadata, InputSpec, Preprocessing, TargetUnits, output_names

    mean, std = table_scaling(encoder)
    return ArtifactMetadata(
        task=task,
        classes=tuple(classes),
        input_spec=InputSpec(
            name=TABLE_INPUT, shape=(-1, encoder.width), dtype="float32", features=encoder.feature_names
        ),
        preprocessing=Preprocessing(
            inside_graph="(x - mean) / std per encoded feature; encode raw rows with preprocessing.encoder",
            mean=mean,
            std=std,
            encoder=encoder,
        ),
        outputs=output_names(task),
        git_commit="abc123",
        data_hash=data_hash,
        target_units=TargetUnits(*target_units) if target_units is not None else None,
    )


NUMERIC_SCALE = {"bill": (44.0, 5.0), "mass": (4000.0, 800.0)}  # (mean, std); another numeric column: (0, 1)


def table_scaling(encoder: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The per-feature mean and std an MLP over `encoder`'s features normalises
    by: NUMERIC_SCALE for a numeric column, 0.3 and 0.5 for a one-hot feature."""
    one_hot = encoder.width - len(encoder.numeric)
    scale = [NUMERIC_SCALE.get(c, (0.0, 1.0)) for c in encoder.numeric] + [(0.3, 0.5)] * one_hot
    return tuple(m for m, _ in scale), tuple(s for _, s in scale)


# --------------------------------------------------------------------------- models


def image_model(
    path: Path,
    seed: int = 0,
    n_classes: int = 3,
    input_shape: tuple[int, int, int] = (1, 8, 8),
    task: str = "multiclass",
    classes: Sequence[str] | None = None,
    threshold: float = 0.5,
    policy: Any = None,
) -> Path:
    """A tiny CNN (a few hundred weights) for raw 0..16 pixels, exported as the
    pipeline does: export_onnx, then set_metadata. A binary model has one
    sigmoid logit (n_classes=1) and two classes. With `policy` (an ImagePolicy):
    a model of a folder of pictures, taking 0..255 pixels of the policy's shape
    (input_shape is then the policy's) and carrying the policy, as export writes it."""
    import torch

    from tasks.contracts.onnx import input_name
    from tasks.ml.models import CNN, CNNSpec
    from tasks.onnx.export import export_onnx, set_metadata

    torch.manual_seed(seed)
    if policy is not None:
        input_shape = (policy.channels, policy.size, policy.size)
    mean, std = IMAGE_SCALE if policy is None else PICTURE_SCALE
    spec = CNNSpec(
        input_shape=input_shape, channels=(4,), hidden=8, n_classes=n_classes, dropout=0.0, mean=(mean,), std=(std,)
    )
    export_onnx(CNN(spec).eval(), input_shape, path, opset=17, input_name=input_name("image"), task=task)
    if classes is None:
        classes = CLASSES if n_classes == 3 else [f"c{i}" for i in range(n_classes)]
    set_metadata(path, image_metadata(classes, input_shape, f"hash{seed}", task, threshold, policy))
    return path


def table_model(
    path: Path,
    seed: int = 0,
    task: str = "multiclass",
    classes: Sequence[str] = tuple(PENGUINS),
    n_outputs: int | None = None,
    target_units: tuple[float, float] | None = None,
    encoder: Any = ENCODER,
) -> Path:
    """A tiny MLP over `encoder`'s features, with the encoder in its metadata.
    Regression: one output, scaled back to target units (`target_units`: mean, std) in the graph."""
    import torch

    from tasks.contracts.onnx import input_name
    from tasks.ml.models import MLP, MLPSpec
    from tasks.onnx.export import export_onnx, set_metadata

    torch.manual_seed(seed)
    width = encoder.width
    mean, std = table_scaling(encoder)
    target = dict(target_mean=target_units[0], target_std=target_units[1]) if target_units else {}
    spec = MLPSpec(
        n_features=width, layers=(8,), n_classes=n_outputs or len(classes), dropout=0.0, mean=mean, std=std, **target
    )
    export_onnx(MLP(spec).eval(), (width,), path, opset=17, input_name=input_name("tabular"), task=task)
    set_metadata(path, table_metadata(encoder, classes, task, target_units=target_units))
    return path


def slow_model(path: Path, matmuls: int = 12, width: int = 512, spread: int = 768) -> Path:
    """Same contract as image_model, but slow: each row is spread over `spread`
    internal rows, each pushed through `matmuls` width x width products (tens of
    milliseconds a row), so that requests queue up behind one another."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from tasks.onnx.export import set_metadata

    rng = np.random.default_rng(0)
    scale = 1 / np.sqrt(width)
    inits = [
        numpy_helper.from_array(np.array([-1, 1, 64], dtype=np.int64), "flat_shape"),
        numpy_helper.from_array(np.array([1, spread, 1], dtype=np.int64), "spread"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
        numpy_helper.from_array((rng.standard_normal((64, width)) * 0.02).astype(np.float32), "w_in"),
        numpy_helper.from_array((rng.standard_normal((width, width)) * scale).astype(np.float32), "w"),
        numpy_helper.from_array((rng.standard_normal((width, 3)) * scale).astype(np.float32), "w_out"),
    ]
    nodes = [
        helper.make_node("Reshape", ["pixels", "flat_shape"], ["flat"]),  # N x 1 x 64
        helper.make_node("MatMul", ["flat", "w_in"], ["first"]),  # N x 1 x width
        helper.make_node("Expand", ["first", "spread"], ["h0"]),  # N x spread x width
    ]
    for i in range(matmuls):
        nodes += [
            helper.make_node("MatMul", [f"h{i}", "w"], [f"m{i}"]),
            helper.make_node("Tanh", [f"m{i}"], [f"h{i + 1}"]),
        ]
    nodes += [
        helper.make_node("ReduceMean", [f"h{matmuls}", "axis1"], ["pooled"], keepdims=0),  # N x width
        helper.make_node("MatMul", ["pooled", "w_out"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 3]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    set_metadata(path, image_metadata())
    return path


def onnx_outputs(path: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    """What onnxruntime gives for `x` when used directly, as a client would."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    values = session.run(None, {session.get_inputs()[0].name: x.astype(np.float32)})
    return dict(zip([o.name for o in session.get_outputs()], values))


def pixels(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 17, size=(n, 1, 8, 8)).astype(np.float32)


def picture_policy(size: int = 16, channels: int = 3, fit: str = "pad") -> Any:
    """The decoding policy of the picture models (tasks.contracts.image.ImagePolicy)."""
    from tasks.contracts.image import ImagePolicy

    return ImagePolicy(size=size, channels=channels, fit=fit)  # type: ignore[arg-type]


def picture_file(seed: int = 0, size: tuple[int, int] = (20, 12), mode: str = "RGB", fmt: str = "PNG") -> bytes:
    """A picture file, `size` = (width, height), of random 4x4-pixel blocks (JPEG keeps
    their colours near enough), in Pillow's `mode` and `fmt`."""
    import io

    from PIL import Image

    width, height = size
    blocks = np.random.default_rng(seed).integers(0, 256, ((height + 3) // 4, (width + 3) // 4, 3), dtype=np.uint8)
    image = Image.fromarray(blocks.repeat(4, 0).repeat(4, 1)[:height, :width], "RGB").convert(mode)
    out = io.BytesIO()
    image.save(out, fmt)
    return out.getvalue()


# --------------------------------------------------------------------------- registry


def register(
    tracking_uri: str, path: Path, name: str = "tiny", alias: str | None = "champion", sha256: str | None = None
) -> str:
    """Register `path` as the pipeline's register stage does: an MLflow model
    (the older onnx flavor here, which the server reads too), a version created
    with its provenance tags at once (the file's metadata and sha256, the gate's
    verdict), and the alias moved to it."""
    import mlflow
    import onnx
    from mlflow import MlflowClient

    from tasks.contracts.registry import GATE_TAG, SHA256_TAG
    from tasks.core.provenance import sha256_file
    from tasks.onnx.runtime import read_metadata

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment("serve-tests")
    with mlflow.start_run():
        info = mlflow.onnx.log_model(
            onnx.load(str(path)), name="model", pip_requirements=["onnxruntime"], save_as_external_data=False
        )
    metadata = read_metadata(path)
    tags = {
        SHA256_TAG: sha256 or sha256_file(path),
        GATE_TAG: "passed",
        "candidate": path.stem,
        "task": metadata.task,
        "data_hash": metadata.data_hash or "test",
        "git_commit": metadata.git_commit or "test",
    }
    version = str(mlflow.register_model(info.model_uri, name, tags=tags).version)
    client = MlflowClient(tracking_uri)
    if alias:
        client.set_registered_model_alias(name, alias, version)
    return version


# --------------------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m deploy.server` in a subprocess, configured by environment
    variables, on a free loopback port."""

    def __init__(self, workdir: Path, model: str | Path, **settings: Any):
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_dir = workdir / "predictions"
        self.log_file = workdir / f"server-{self.port}.log"
        env = {
            k: v for k, v in os.environ.items() if not k.startswith("DISTILLERY_SERVE_") and k != "MLFLOW_TRACKING_URI"
        }
        env.update(
            DISTILLERY_SERVE_MODEL=str(model),
            DISTILLERY_SERVE_PORT=str(self.port),
            DISTILLERY_SERVE_LOG_DIR=str(self.log_dir),
            DISTILLERY_SERVE_POLL_INTERVAL_S="0",
            DISTILLERY_SERVE_DRAIN_GRACE_S="0",
            MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false",
        )
        for key, value in settings.items():
            name = "MLFLOW_TRACKING_URI" if key == "tracking_uri" else f"DISTILLERY_SERVE_{key.upper()}"
            env[name] = str(value)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "deploy.server"],
            cwd=workdir,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(self.log_file, "wb"),
        )
        self.client = httpx.Client(base_url=self.url, timeout=30)

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60) -> "Server":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"the server was not ready after {timeout} s:\n{self.log()}")

    def predict(self, rows: Any, **kw: Any) -> httpx.Response:
        return self.client.post("/predict", json={"rows": rows}, **kw)

    def infer(self, x: np.ndarray, name: str = "distillery", input_name: str = "pixels", **kw: Any) -> httpx.Response:
        body = {
            "inputs": [{"name": input_name, "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]
        }
        return self.client.post(f"/v2/models/{name}/infer", json=body, **kw)

    def metric(self, sample_name: str, /, **labels: str) -> float:
        """A sample's value from /metrics (0 if absent)."""
        from prometheus_client.parser import text_string_to_metric_families

        headers = self.client.headers
        text = httpx.get(f"{self.url}/metrics", headers=headers, timeout=10).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == sample_name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return sample.value
        return 0.0

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.client.close()
        return self.proc.returncode


def read_log(folder: Path) -> list[dict]:
    from deploy.predlog import read_predictions

    return read_predictions(folder)


def json_body(value: Any) -> bytes:
    return json.dumps(value).encode()


class Load:
    """Clients sending /predict and v2 infer requests back to back (each from
    its own thread and connection) until stopped; every answer is kept."""

    def __init__(
        self,
        server: Server,
        threads: int = 3,
        model_name: str = "distillery",
        pause_s: float = 0.002,
        rows: list | None = None,
    ):
        """`rows`: /predict only, with these rows (a table model's); default: image pixels, /predict and infer."""
        import threading

        self.server, self.model_name, self.pause_s, self.rows = server, model_name, pause_s, rows
        self.results: list[tuple[int, int, str | None]] = []  # (thread, status, model version)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, index: int) -> None:
        x = pixels(2, seed=index)
        infer = {"inputs": [{"name": "pixels", "shape": [2, 1, 8, 8], "datatype": "FP32", "data": x.ravel().tolist()}]}
        with httpx.Client(base_url=self.server.url, timeout=30) as client:
            n = 0
            while not self._stop.is_set() and n < 20_000:  # bounded, whatever happens
                n += 1
                try:
                    if self.rows is not None:
                        r = client.post("/predict", json={"rows": self.rows})
                    elif n % 2:
                        r = client.post("/predict", json={"rows": x.tolist()})
                    else:
                        r = client.post(f"/v2/models/{self.model_name}/infer", json=infer)
                    version = r.json().get("model_version") if r.status_code == 200 else None
                    self.results.append((index, r.status_code, version))
                except httpx.HTTPError as err:
                    self.results.append((index, -1, repr(err)))
                time.sleep(self.pause_s)  # steady traffic that leaves the test's own thread some CPU

    def __enter__(self) -> "Load":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)

    def versions(self) -> set:
        return {v for _, s, v in self.results if s == 200}

    def failures(self) -> list:
        return [r for r in self.results if r[1] != 200]

    def wait_for_version(self, version: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(v == version for _, s, v in self.results[-50:]):
                return
            time.sleep(0.05)
        raise AssertionError(
            f"no answer from version {version} after {timeout} s; seen {self.versions()}:\n{self.server.log()}"
        )


def replace_file(target: Path, source: Path | bytes) -> None:
    """Write then rename, as the pipeline writes artifacts."""
    tmp = target.with_suffix(".tmp")
    tmp.write_bytes(source if isinstance(source, bytes) else source.read_bytes())
    os.replace(tmp, target)


def wait_until(condition, timeout: float = 30, message: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out: {message}")


def mlflow_server(port: int, backend: Path, artifacts: Path, log: Path) -> subprocess.Popen:
    """A real MLflow tracking server on loopback (its own session, so a test can
    kill it and all its workers), ready when this returns."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{backend}",
            "--artifacts-destination",
            str(artifacts),
            "--workers",
            "1",
        ],
        stdout=open(log, "ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    wait_until(lambda: answers(f"http://127.0.0.1:{port}/health"), timeout=120, message=log.read_text()[-2000:])
    return proc


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False
