"""PyTorch to ONNX: the graph the contract describes (tasks.contracts.onnx),
and its metadata_props."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from tasks.contracts.onnx import ArtifactMetadata, output_names
from tasks.core.io import atomic_path
from tasks.core.task import task_of


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
        if task_of(self.task).regression:
            return (self.model(x),)
        logits = self.model(x) / self.temperature
        if task_of(self.task).multilabel:
            return logits, torch.sigmoid(logits)
        if self.single_logit:  # a sigmoid binary head: [0, z] so softmax gives [1 - p, p]
            logits = torch.cat([torch.zeros_like(logits), logits], dim=1)
        return logits, torch.softmax(logits, dim=1)


def export_onnx(
    model: nn.Module,
    input_shape: tuple[int, ...],
    path: str | Path,
    opset: int,
    input_name: str,
    temperature: float = 1.0,
    task: str = "multiclass",
) -> None:
    """fp32 ONNX with a dynamic batch dimension; `logits` are divided by `temperature`."""
    outputs = output_names(task)
    # eval() on the wrapper too: the exporter restores the wrapper's mode afterwards,
    # recursively, and a new module is in training mode, so the caller's model would
    # come back training (dropout on, batch norm updating its statistics).
    model = WithProbabilities(model.cpu().eval(), temperature, task).eval()
    example = torch.zeros((2, *input_shape), dtype=torch.float32)
    dynamic = {tensor: {0: "batch"} for tensor in (input_name, *outputs)}
    with atomic_path(path) as tmp:
        # The TorchScript exporter: fast, and folds batch norm into the convs.
        torch.onnx.export(
            model,
            (example,),
            str(tmp),
            input_names=[input_name],
            output_names=list(outputs),
            dynamic_axes=dynamic,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )


def set_metadata(path: str | Path, metadata: ArtifactMetadata) -> None:
    """Write `metadata` into the file's metadata_props (one key per field, JSON values)."""
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in metadata.to_props().items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))
