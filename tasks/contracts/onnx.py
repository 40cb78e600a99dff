"""The ONNX artifact contract: the tensor names per task type, the metadata a
file carries in its metadata_props, and what makes a file servable.

Export writes it, evaluate and select check it, and the server refuses a file
that does not meet it. A file takes what the user sends (raw pixels, or the
encoded features of `preprocessing.encoder`); normalisation, the calibration
temperature, the output activation and a regression's scale-back to target
units are inside the graph.

| task | input | outputs (batch first) | the answer |
|---|---|---|---|
| binary, multiclass | pixels / features | logits [n, classes], probabilities [n, classes] (rows sum to 1) | the most probable class |
| multilabel | pixels / features | logits [n, labels], probabilities [n, labels] (each in [0, 1]) | the labels with probability >= threshold |
| regression | pixels / features | prediction [n, 1] (target units) | the value |
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Optional, Sequence

import numpy as np

from tasks.contracts.encoder import TableEncoder
from tasks.contracts.image import ImagePolicy
from tasks.core.config import parse
from tasks.core.errors import DistilleryError
from tasks.core.task import IMAGE, TABLE, TaskType, kind_of, task_of

IMAGE_INPUT = "pixels"
TABLE_INPUT = "features"
LOGITS = "logits"
PROBABILITIES = "probabilities"
PREDICTION = "prediction"
FLOAT = "tensor(float)"  # onnxruntime's name for the one element type the contract uses


def input_name(kind: str) -> str:
    """Raw pixels for image models, encoded features for table models."""
    return TABLE_INPUT if kind_of(kind).table else IMAGE_INPUT


def output_names(task: str) -> tuple[str, ...]:
    """Regression models answer a value; the others logits and probabilities."""
    return (PREDICTION,) if task_of(task).regression else (LOGITS, PROBABILITIES)


def answer_output(task: str) -> str:
    """The output a client reads the answer from."""
    return PREDICTION if task_of(task).regression else PROBABILITIES


@dataclass(frozen=True)
class InputSpec:
    name: str  # pixels | features
    shape: tuple[int, ...]  # -1 (any batch), then one sample's shape
    dtype: str  # float32
    range: Optional[tuple[float, float]] = None  # images: raw pixel range; send values in it
    features: tuple[str, ...] = ()  # tables: the encoded features, in order


@dataclass(frozen=True)
class Preprocessing:
    inside_graph: str  # what the graph does to the input, in words
    mean: tuple[float, ...]
    std: tuple[float, ...]
    encoder: Optional[TableEncoder] = None  # tables: raw rows -> input (tasks.contracts.encoder)
    # A folder of pictures: how an image file becomes `pixels` (tasks.contracts.image.decode replays it).
    image: Optional[ImagePolicy] = None


@dataclass(frozen=True)
class TargetUnits:
    mean: float  # regression: prediction = model output * std + mean, inside the graph
    std: float


@dataclass(frozen=True)
class Quantization:
    mode: Literal["static", "dynamic"]
    per_channel: bool
    calibration_method: str
    reduce_range: bool
    cpu_has_vnni: bool  # on the machine that quantized


@dataclass(frozen=True)
class ArtifactMetadata:
    """What every exported file says about itself (its metadata_props: one key
    per field, each value JSON)."""

    task: TaskType
    classes: tuple[str, ...]  # class or label names, in output order; empty for regression
    input_spec: InputSpec
    preprocessing: Preprocessing
    outputs: tuple[str, ...]
    git_commit: str
    data_hash: str
    temperature: float = 1.0  # logits are divided by it inside the graph
    threshold: float = 0.5  # multilabel: a label is predicted when its probability reaches this
    target_units: Optional[TargetUnits] = None
    candidate: Optional[str] = None  # <model>.<precision>
    precision: Optional[Literal["fp32", "int8"]] = None
    quantization: Optional[Quantization] = None

    def __post_init__(self) -> None:
        if tuple(self.outputs) != output_names(self.task):
            raise ValueError(
                f"outputs {list(self.outputs)} are not those of a {self.task} model {list(output_names(self.task))}"
            )
        if task_of(self.task).classes and not self.classes:
            raise ValueError(f"a {self.task} model needs its class names")
        if task_of(self.task).binary and len(self.classes) != 2:
            raise ValueError(f"a binary model has 2 classes, not {len(self.classes)}")
        if self.input_spec.name == TABLE_INPUT and self.preprocessing.encoder is None:
            raise ValueError("a table model needs preprocessing.encoder")
        if self.input_spec.name not in (IMAGE_INPUT, TABLE_INPUT):
            raise ValueError(f"input '{self.input_spec.name}' is neither '{IMAGE_INPUT}' nor '{TABLE_INPUT}'")

    @property
    def kind(self) -> str:
        return (TABLE if self.input_spec.name == TABLE_INPUT else IMAGE).name

    def to_props(self) -> dict[str, str]:
        return {key: json.dumps(value) for key, value in dataclasses.asdict(self).items()}

    @classmethod
    def from_props(cls, props: Mapping[str, str], source: str) -> "ArtifactMetadata":
        """Parse metadata_props strictly; a DistilleryError names `source` and the key."""
        try:
            raw = {key: json.loads(value) for key, value in props.items()}
        except json.JSONDecodeError as err:
            raise DistilleryError(f"{source}: metadata_props are not JSON-encoded ({err})") from err
        # Export writes every key; a file without one was not made by it (a default would be a guess).
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in raw]
        if missing:
            keys = "; ".join(f"'{key}': missing key" for key in missing)
            raise DistilleryError(f"{source} (metadata_props): {keys}; re-export it (dvc repro)")
        return parse(cls, raw, f"{source} (metadata_props)")

    def replace(self, **changes: Any) -> "ArtifactMetadata":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Tensor:
    """One graph input or output as a runtime reports it (onnxruntime's NodeArg)."""

    name: str
    type: str
    shape: tuple  # ints, or names / None for symbolic dimensions


@dataclass(frozen=True)
class Signature:
    """What clients depend on: the input tensor and the outputs, batch dimension left out."""

    input_name: str
    input_shape: tuple[int, ...]
    outputs: tuple[tuple[str, tuple[int, ...]], ...]

    def describe(self) -> str:
        outs = ", ".join(f"{n}{list(s)}" for n, s in self.outputs)
        return f"{self.input_name}[-1, {', '.join(map(str, self.input_shape))}] -> {outs}"


def _dims(shape: Sequence, what: str, source: str) -> tuple[int, ...]:
    shape = list(shape)
    if len(shape) < 2:
        raise DistilleryError(f"{source}: {what} has shape {shape}; a batch dimension and at least one more are needed")
    if isinstance(shape[0], int) and shape[0] > 0:
        raise DistilleryError(
            f"{source}: {what} has a fixed batch size {shape[0]}; export it with a dynamic batch dimension"
        )
    rest = shape[1:]
    if not all(isinstance(d, int) and d > 0 for d in rest):
        raise DistilleryError(f"{source}: {what} has non-batch dimensions {rest}; they must be fixed")
    return tuple(rest)


def output_width(metadata: ArtifactMetadata) -> int:
    return 1 if task_of(metadata.task).regression else len(metadata.classes)


def check_servable(
    inputs: Sequence[Tensor], outputs: Sequence[Tensor], metadata: ArtifactMetadata, source: str
) -> Signature:
    """The graph's tensors against the contract for `metadata.task`: one float
    input named for its kind with a dynamic batch, the task's float outputs of
    one column per class (one for regression). Returns the signature."""
    if len(inputs) != 1:
        raise DistilleryError(
            f"{source}: the model has {len(inputs)} inputs ({[i.name for i in inputs]}); one is expected"
        )
    (inp,) = inputs
    if inp.name != metadata.input_spec.name:
        raise DistilleryError(
            f"{source}: the input is '{inp.name}' but metadata_props input_spec says '{metadata.input_spec.name}'"
        )
    if inp.type != FLOAT:
        raise DistilleryError(f"{source}: input '{inp.name}' is {inp.type}; {FLOAT} is expected")
    input_shape = _dims(inp.shape, f"input '{inp.name}'", source)
    if list(input_shape) != list(metadata.input_spec.shape[1:]):
        raise DistilleryError(
            f"{source}: input '{inp.name}' takes {list(input_shape)} per row but metadata_props "
            f"input_spec says {list(metadata.input_spec.shape[1:])}"
        )
    encoder = metadata.preprocessing.encoder
    if encoder is not None and (encoder.width,) != input_shape:
        raise DistilleryError(
            f"{source}: the encoder gives {encoder.width} features but the input takes {list(input_shape)}"
        )
    by_name = {o.name: o for o in outputs}
    width = output_width(metadata)
    found = []
    for name in output_names(metadata.task):
        out = by_name.get(name)
        if out is None:
            raise DistilleryError(
                f"{source}: a {metadata.task} model needs the output '{name}' (it has {sorted(by_name)})"
            )
        if out.type != FLOAT:
            raise DistilleryError(f"{source}: output '{name}' is {out.type}; {FLOAT} is expected")
        shape = list(out.shape)
        if len(shape) == 2 and not isinstance(shape[1], int):
            shape[1] = width  # a symbolic dimension: check_outputs checks the trial run's
        dims = _dims(shape, f"output '{name}'", source)
        if dims != (width,):
            raise DistilleryError(
                f"{source}: output '{name}' has shape [-1, {', '.join(map(str, dims))}] but the "
                f"model has {width} {'value' if width == 1 else 'classes'} per row"
            )
        found.append((name, dims))
    return Signature(inp.name, input_shape, tuple(found))


def check_outputs(metadata: ArtifactMetadata, values: Mapping[str, np.ndarray], rows: int, source: str) -> None:
    """A run's outputs keep the contract: finite, one row per input row, and
    probabilities that are a distribution (single-label) or in [0, 1] (multilabel)."""
    width = output_width(metadata)
    for name in output_names(metadata.task):
        value = np.asarray(values[name])
        if value.shape != (rows, width) or not np.isfinite(value).all():
            raise DistilleryError(
                f"{source}: a trial run gives {name} of shape {list(value.shape)} (expected [{rows}, {width}], finite)"
            )
    task = task_of(metadata.task)
    if task.regression:
        return
    probs = np.asarray(values[PROBABILITIES])
    if task.single_label and not np.allclose(probs.sum(axis=1), 1, atol=1e-3):
        raise DistilleryError(f"{source}: a trial run gives probabilities that are not one distribution per row")
    if ((probs < -1e-6) | (probs > 1 + 1e-6)).any():
        raise DistilleryError(f"{source}: a trial run gives probabilities outside [0, 1]")


def predicted_labels(metadata: ArtifactMetadata, probabilities: np.ndarray) -> list[list[str]]:
    """Multilabel: per row, the labels whose probability reaches the threshold."""
    names = np.asarray(metadata.classes, dtype=object)
    return [names[row >= metadata.threshold].tolist() for row in np.asarray(probabilities)]
