"""ONNX artifacts: export, self-description (metadata_props), checked loading,
and onnxruntime sessions with pinned threads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tasks.core import DistilleryError, atomic_path

IMAGE_INPUT = "pixels"
TABLE_INPUT = "features"
OUTPUT_NAMES = ("logits", "probabilities")


def output_names(task: str) -> tuple[str, ...]:
    """Regression models answer a value; classifiers logits and probabilities."""
    return ("prediction",) if task == "regression" else OUTPUT_NAMES


class WithProbabilities(nn.Module):
    """Folds the calibration temperature into the logits and adds the output
    activation to the graph (softmax for single-label, sigmoid per label for
    multilabel), so a client gets calibrated probabilities without
    re-implementing anything. A regression model passes its value through."""

    def __init__(self, model: nn.Module, temperature: float = 1.0, task: str = "multiclass"):
        super().__init__()
        self.model = model
        self.temperature = float(temperature)
        self.task = task
        # Known before tracing, so the exported graph has no data-dependent branch.
        self.single_logit = getattr(getattr(model, "spec", None), "n_classes", 2) == 1

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.task == "regression":
            return (self.model(x),)
        logits = self.model(x) / self.temperature
        if self.task == "multilabel":
            return logits, torch.sigmoid(logits)
        if self.single_logit:  # a sigmoid binary head: [0, z] so softmax gives [1 - p, p]
            logits = torch.cat([torch.zeros_like(logits), logits], dim=1)
        return logits, torch.softmax(logits, dim=1)


def input_name(model: nn.Module) -> str:
    """Raw pixels for image models, encoded features for table models."""
    return TABLE_INPUT if type(model).__name__ == "MLP" else IMAGE_INPUT


def export_onnx(
    model: nn.Module,
    input_shape: tuple[int, ...],
    path: str | Path,
    opset: int,
    temperature: float = 1.0,
    task: str = "multiclass",
) -> None:
    """fp32 ONNX with a dynamic batch dimension; `logits` are divided by `temperature`."""
    name = input_name(model)
    outputs = output_names(task)
    # eval() on the wrapper too: the exporter restores the wrapper's mode afterwards,
    # recursively, and a new module is in training mode, so the caller's model would
    # come back training (dropout on, batch norm updating its statistics).
    model = WithProbabilities(model.cpu().eval(), temperature, task).eval()
    example = torch.zeros((2, *input_shape), dtype=torch.float32)
    dynamic = {tensor: {0: "batch"} for tensor in (name, *outputs)}
    with atomic_path(path) as tmp:
        # The TorchScript exporter: fast, and folds batch norm into the convs.
        torch.onnx.export(
            model,
            (example,),
            str(tmp),
            input_names=[name],
            output_names=list(outputs),
            dynamic_axes=dynamic,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )


def set_metadata(path: str | Path, metadata: dict[str, Any]) -> None:
    """Write `metadata` into the file's metadata_props (values JSON-encoded)."""
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))


def check_onnx(path: str | Path) -> dict[str, Any]:
    """Refuse a missing, truncated or corrupted file; return its metadata."""
    import onnx

    path = Path(path)
    if not path.exists():
        raise DistilleryError(f"{path}: ONNX file not found")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as err:  # onnx raises DecodeError, ValidationError, ...
        raise DistilleryError(f"{path}: not a valid ONNX model ({type(err).__name__}: {err})") from err
    return {p.key: json.loads(p.value) for p in model.metadata_props}


def session(path: str | Path, threads: int = 0) -> Any:
    """An onnxruntime CPU session; threads > 0 pins the intra-op thread count."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own Fail/InvalidGraph types
        raise DistilleryError(f"{path}: onnxruntime cannot load it ({err})") from err


def run_batches(sess: Any, x: np.ndarray, output: str = "probabilities", batch_size: int = 1024) -> np.ndarray:
    name = sess.get_inputs()[0].name
    parts = [
        sess.run([output], {name: x[i : i + batch_size].astype(np.float32)})[0]
        for i in range(0, len(x), batch_size)
    ]
    return np.concatenate(parts)


def file_size(path: str | Path) -> int:
    return Path(path).stat().st_size
