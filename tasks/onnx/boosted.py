"""The boosted model (tasks/ml/boosting.py) as the graph the artifact contract
describes (tasks.contracts.onnx): skl2onnx converts the trees, and a few nodes
after them give the tensors every candidate has.

| task | skl2onnx gives | the contract's outputs |
|---|---|---|
| binary, multiclass | label, probabilities | logits = log(p) / T, probabilities = softmax(logits) |
| regression | variable [n, 1] | prediction [n, 1] (target units: the trees learnt them) |

The input is `features`, the table encoder's output, as for the MLPs.
softmax(log(p) / T) is p at T = 1; export fits T on the validation split like
any candidate's and writes it into the `temperature` initializer.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import numpy as np

from tasks.contracts.onnx import LOGITS, PREDICTION, PROBABILITIES, TABLE_INPUT
from tasks.core.task import task_of

TEMPERATURE = "temperature"  # the initializer export sets
_TREE_PROBABILITIES = "tree_probabilities"
_EPS = 1e-7  # log(0) guard: a probability of 0 becomes 1e-7 before the log


@contextlib.contextmanager
def _bool_attributes_as_ints() -> Iterator[None]:
    """skl2onnx 1.20 hands onnx a Python bool for a leaf's
    nodes_missing_value_tracks_true, which onnx >= 1.23 refuses in an int list:
    cast it, for the conversion only."""
    from skl2onnx.common import tree_ensemble

    original = tree_ensemble.add_node

    def add_node(*args: Any, nodes_missing_value_tracks_true: Any = 0, **kwargs: Any) -> Any:
        return original(*args, nodes_missing_value_tracks_true=int(nodes_missing_value_tracks_true), **kwargs)

    tree_ensemble.add_node = add_node
    try:
        yield
    finally:
        tree_ensemble.add_node = original


def boosted_to_onnx(model: Any, n_features: int, task: str, opset: int) -> Any:
    """The contract's graph (an onnx ModelProto, temperature 1, no metadata yet)
    for a fitted HistGradientBoosting model over `n_features` encoded features."""
    from onnx import TensorProto, helper, numpy_helper
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    regression = task_of(task).regression
    options = None if regression else {id(model): {"zipmap": False}}
    with _bool_attributes_as_ints():
        proto = to_onnx(
            model,
            initial_types=[(TABLE_INPUT, FloatTensorType([None, n_features]))],
            target_opset={"": opset, "ai.onnx.ml": 3},
            options=options,
        )
    graph = proto.graph
    produced = PROBABILITIES if not regression else graph.output[0].name
    renamed = _TREE_PROBABILITIES if not regression else PREDICTION
    for node in graph.node:
        node.output[:] = [renamed if name == produced else name for name in node.output]
    width = 1 if regression else len(model.classes_)
    del graph.output[:]
    if regression:
        graph.output.append(helper.make_tensor_value_info(PREDICTION, TensorProto.FLOAT, ["batch", 1]))
        return proto
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(_EPS, np.float32), "eps"),
            numpy_helper.from_array(np.array(1.0, np.float32), "one"),
            numpy_helper.from_array(np.array(1.0, np.float32), TEMPERATURE),
        ]
    )
    graph.node.extend(
        [
            helper.make_node("Clip", [_TREE_PROBABILITIES, "eps", "one"], ["clipped"], name="clip"),
            helper.make_node("Log", ["clipped"], ["log_probabilities"], name="log"),
            helper.make_node("Div", ["log_probabilities", TEMPERATURE], [LOGITS], name="temperature"),
            helper.make_node("Softmax", [LOGITS], [PROBABILITIES], name="softmax", axis=1),
        ]
    )
    graph.output.extend(
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", width]) for name in (LOGITS, PROBABILITIES)]
    )
    return proto


def set_temperature(proto: Any, temperature: float) -> Any:
    """`proto` with logits divided by `temperature` (a classifier's graph; a regression graph has none)."""
    from onnx import numpy_helper

    for i, init in enumerate(proto.graph.initializer):
        if init.name == TEMPERATURE:
            proto.graph.initializer[i].CopyFrom(numpy_helper.from_array(np.array(temperature, np.float32), TEMPERATURE))
    return proto


def max_difference(expected: np.ndarray, got: np.ndarray, task: str) -> float:
    """How far the graph's answer is from scikit-learn's: the largest absolute
    probability difference, or for regression relative to the largest |value|."""
    diff = float(np.abs(np.asarray(expected, np.float64) - np.asarray(got, np.float64)).max(initial=0.0))
    if task_of(task).regression:
        return diff / max(1.0, float(np.abs(expected).max(initial=0.0)))
    return diff
