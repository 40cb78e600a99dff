"""Opening exported files: the contract check (tasks.contracts.onnx) and
onnxruntime sessions with pinned threads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tasks.contracts.onnx import (
    ArtifactMetadata,
    Signature,
    Tensor,
    check_outputs,
    check_servable,
)
from tasks.core.errors import DistilleryError


def read_metadata(path: str | Path) -> ArtifactMetadata:
    """Refuse a missing, truncated or corrupted file; return its metadata, parsed strictly."""
    import onnx

    path = Path(path)
    if not path.exists():
        raise DistilleryError(f"{path}: ONNX file not found")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as err:  # onnx raises DecodeError, ValidationError, ...
        raise DistilleryError(f"{path}: not a valid ONNX model ({type(err).__name__}: {err})") from err
    return ArtifactMetadata.from_props({p.key: p.value for p in model.metadata_props}, str(path))


def session(path: str | Path, threads: int = 0, spinning: bool = True) -> Any:
    """An onnxruntime CPU session; threads > 0 pins the intra-op thread count.

    spinning=False: the intra-op threads sleep as soon as a run ends instead of
    busy-waiting for the next one. Timing several sessions in one process
    needs it: otherwise the threads of the session timed just before spin on
    the cores the next one is using (measured: a small CNN's 2-thread run at
    batch 256 took 6-8 ms interleaved, 2.9 ms alone)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own Fail/InvalidGraph types
        raise DistilleryError(f"{path}: onnxruntime cannot load it ({err})") from err


def tensors(args: Any) -> list[Tensor]:
    """onnxruntime's NodeArgs as the contract's Tensors."""
    return [Tensor(a.name, a.type, tuple(a.shape)) for a in args]


def check_artifact(path: str | Path, threads: int = 0) -> tuple[ArtifactMetadata, Signature, Any]:
    """A file that keeps the contract, as the server will see it: valid ONNX,
    its metadata, its tensors, and a two-row trial run. Returns the metadata,
    the signature and the session."""
    metadata = read_metadata(path)
    sess = session(path, threads)
    signature = check_servable(tensors(sess.get_inputs()), tensors(sess.get_outputs()), metadata, str(path))
    x = np.zeros((2, *signature.input_shape), np.float32)
    values = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {signature.input_name: x})))
    check_outputs(metadata, values, 2, str(path))
    return metadata, signature, sess


def run_batches(sess: Any, x: np.ndarray, output: str, batch_size: int = 1024) -> np.ndarray:
    name = sess.get_inputs()[0].name
    parts = [
        sess.run([output], {name: x[i : i + batch_size].astype(np.float32)})[0] for i in range(0, len(x), batch_size)
    ]
    return np.concatenate(parts)


def file_size(path: str | Path) -> int:
    return Path(path).stat().st_size


def optimized_ops(path: str | Path) -> dict[str, int]:
    """How many nodes of each op type the graph has once onnxruntime's CPU
    optimiser has run, i.e. the kernels a session really executes: an int8
    conv shows as QLinearConv only if its DequantizeLinear -> Conv ->
    QuantizeLinear was fused; left unfused it runs in float between
    conversions."""
    import tempfile
    from collections import Counter

    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        options.log_severity_level = 3  # the "hardware-specific optimisations" notice on saving
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        graph = onnx.load(options.optimized_model_filepath).graph
    return dict(sorted(Counter(node.op_type for node in graph.node).items()))
