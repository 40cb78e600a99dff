"""int8 quantization of an exported fp32 ONNX file with onnxruntime, as options
the export stage can choose between.

- static (QDQ): uint8 activations and int8 weights, activation ranges
  calibrated on sample inputs (MinMax, Entropy or Percentile). Convs, Gemms
  and MatMuls all run as integer kernels: the fastest, and the only mode that
  quantizes convolutions.
- dynamic: int8 weights only; activation ranges are computed per batch at run
  time, so no calibration data is needed. onnxruntime quantizes MatMul this
  way (MatMulInteger; it rewrites Gemm, what torch exports for nn.Linear, into
  MatMul + Add itself). Convs are left fp32: onnxruntime can run them as
  ConvInteger, but its CPU kernel is a slow unfused path (about 6x slower than
  the fp32 conv on the reference small CNN, onnxruntime 1.32, AVX-512 VNNI).
  Useful for MLPs; a CNN only gains on its dense head.

Pick `reduce_range` with `default_reduce_range()`: onnxruntime's guidance is
7-bit weights on x86 CPUs without VNNI, where the u8 x s8 multiply-add can
saturate, and full 8 bits where VNNI is present.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Literal, Optional

import numpy as np

from tasks.contracts.onnx import IMAGE_INPUT
from tasks.core.io import atomic_path
from tasks.onnx.runtime import optimized_ops

Mode = Literal["static", "dynamic"]
Method = Literal["minmax", "entropy", "percentile"]
Format = Literal["qdq", "qoperator"]
MODES = ("static", "dynamic")
METHODS = ("minmax", "entropy", "percentile")
PERCENTILE = 99.99  # percentile calibration clips activation ranges to this percentile of |x|
VNNI_FLAGS = ("avx512_vnni", "avx_vnni")
# Kept out of int8: the output activations (probabilities) and a regression's
# scale-back to target units (Mul, Add), as in tasks/onnx/export.py.
FLOAT_OPS = ("Softmax", "Sigmoid", "Mul", "Add")
SHALLOW_INPUT = 4  # a first conv reading this many channels or fewer stays fp32 (float_input_block)


def cpu_has_vnni(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """True when the CPU advertises AVX-512 VNNI or AVX-VNNI (the int8 dot-product
    instructions onnxruntime's u8 x s8 kernels use); False if it cannot tell."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags") and ":" in line:
            flags = set(line.split(":", 1)[1].split())
            return any(flag in flags for flag in VNNI_FLAGS)
    return False


def default_reduce_range(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """7-bit weights (reduce_range) on CPUs without VNNI, to avoid saturating the
    u8 x s8 pairwise add; full 8 bits where VNNI is present."""
    return not cpu_has_vnni(cpuinfo)


class CalibrationReader:
    """Feeds calibration samples to onnxruntime's quantizer in batches."""

    def __init__(self, x: np.ndarray, name: str, batch_size: int = 32):
        self._name = name
        self._batches = iter([x[i : i + batch_size] for i in range(0, len(x), batch_size)])

    def get_next(self) -> Optional[dict[str, np.ndarray]]:
        batch = next(self._batches, None)
        return None if batch is None else {self._name: np.ascontiguousarray(batch, dtype=np.float32)}


def output_layer(model) -> list[str]:  # onnx.ModelProto -> [node name]
    """The name of the last Gemm, MatMul or Conv node of the graph (whose nodes
    are in topological order), as a list: empty when there is none."""
    layers = [n.name for n in model.graph.node if n.op_type in ("Gemm", "MatMul", "Conv")]
    return layers[-1:]


def float_input_block(model) -> list[str]:  # onnx.ModelProto, rewritten in place -> [node names]
    """Keep the first conv block in float when its Conv reads at most
    SHALLOW_INPUT channels (an image's 1-3): returns the names of its nodes
    (the Conv and what follows it up to the next Conv, Gemm or MatMul), or []
    when the model has no such block.

    Why: the block's reductions are only 9-27 terms long, too short for int8
    kernels to pay for themselves; in int8 it is the slowest layer of a small
    CNN (measured at batch 256: 8.5 ms against 2.4 ms in fp32 for the 28x28
    teacher's 32-channel first conv). A ReLU -> MaxPool in it is rewritten as
    MaxPool -> ReLU, which computes the same (ReLU is monotone, so it commutes
    with max): otherwise onnxruntime's optimiser moves the quantization of
    the block's output up, between the ReLU and the pool, and runs that pool
    on uint8 in a slow NCHW kernel (23 ms), instead of in float fused with the
    conv, followed by one quantization of a quarter of the values."""
    weights = {init.name: init for init in model.graph.initializer}
    nodes = list(model.graph.node)
    first = next((i for i, n in enumerate(nodes) if n.op_type == "Conv"), None)
    if first is None or len(nodes[first].input) < 2 or nodes[first].input[1] not in weights:
        return []
    if weights[nodes[first].input[1]].dims[1] > SHALLOW_INPUT:
        return []
    block = [nodes[first]]
    for node in nodes[first + 1 :]:
        if node.op_type in ("Conv", "Gemm", "MatMul"):
            break
        block.append(node)
    for relu, pool in zip(block, block[1:]):
        if relu.op_type == "Relu" and pool.op_type == "MaxPool" and list(pool.input) == list(relu.output):
            # x -> Relu -> r -> MaxPool -> y  becomes  x -> MaxPool -> r -> Relu -> y
            x, r, y = relu.input[0], relu.output[0], pool.output[0]
            new_pool, new_relu = type(pool)(), type(relu)()
            new_pool.CopyFrom(pool)
            new_relu.CopyFrom(relu)
            new_pool.input[0], new_pool.output[0] = x, r
            new_relu.input[0], new_relu.output[0] = r, y
            relu.CopyFrom(new_pool)  # relu's slot comes first: topological order holds
            pool.CopyFrom(new_relu)
            stale = [info for info in model.graph.value_info if info.name == r]  # r is now pooled: re-inferred
            for info in stale:
                model.graph.value_info.remove(info)
            break
    return [node.name for node in block]


def quantize(
    fp32_path: str | Path,
    out_path: str | Path,
    mode: Mode = "static",
    calibration: Optional[np.ndarray] = None,
    per_channel: bool = True,
    method: Method = "minmax",
    reduce_range: bool = False,
    input_name: str = IMAGE_INPUT,
    quant_format: Format = "qdq",
    float_output_layer: bool = True,
    float_input_layer: bool = True,
) -> None:
    """Write an int8 version of `fp32_path` to `out_path` (atomically).

    Always runs onnxruntime's `quant_pre_process` first (shape inference and
    graph optimisation: batch norm folded, constants folded). The FLOAT_OPS
    stay in float: quantized probabilities would come in 1/255 steps (softmax
    rows no longer summing to 1), which ruins calibration, and a regression's
    scale-back to target units (Mul, Add) would round its values.

    static: needs `calibration`, raw inputs as the model takes them (N, ...),
    fed under `input_name`; `method` picks how activation ranges are set from
    them (minmax: the observed range; entropy: the KL-optimal clip; percentile:
    the 99.99th percentile). `quant_format` qdq (onnxruntime's recommended
    layout) or qoperator (QLinearConv/QLinearMatMul written out).
    dynamic: `calibration`, `method` and `quant_format` are ignored; MatMul
    and Gemm weights only, convs stay fp32.

    `float_output_layer`: the last Gemm/MatMul/Conv (the classifier or the
    regression head) stays fp32. Its output is the model's answer; in int8 it
    would be rounded to 1/255 of its calibrated range before the float tail
    (temperature, softmax, scale-back) ever sees it. It is the smallest layer,
    so this costs next to nothing in speed or size.

    `float_input_layer` (static): a first conv block on 1-4 channels stays
    fp32 too (see float_input_block): in int8 it is the slowest layer of a
    small CNN."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    _check_options(mode, method, quant_format, calibration)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        graph = onnx.load(str(prepared))
        float_ops = [n.name for n in graph.graph.node if n.op_type in FLOAT_OPS]
        if float_input_layer and mode == "static":
            float_ops += float_input_block(graph)
            onnx.save(graph, str(prepared))
        if mode == "dynamic":  # its outputs are float: the output layer needs no such care
            _quantize_dynamic(prepared, out_path, per_channel, reduce_range, float_ops)
            return
        if float_output_layer:
            float_ops += output_layer(graph)
        _quantize_static(
            prepared,
            out_path,
            CalibrationReader(calibration, input_name),
            method,
            quant_format,
            per_channel,
            reduce_range,
            float_ops,
        )


def _check_options(mode: str, method: str, quant_format: str, calibration: Optional[np.ndarray]) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if quant_format not in ("qdq", "qoperator"):
        raise ValueError(f"quant_format must be 'qdq' or 'qoperator', got {quant_format!r}")
    if mode == "static" and (calibration is None or len(calibration) == 0):
        raise ValueError("static quantization needs calibration samples (argument 'calibration')")


def _quantize_dynamic(
    prepared: Path, out_path: str | Path, per_channel: bool, reduce_range: bool, float_ops: list[str]
) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with atomic_path(out_path) as out:
        quantize_dynamic(
            str(prepared),
            str(out),
            op_types_to_quantize=["MatMul", "Gemm"],  # not Conv: see the module docstring
            per_channel=per_channel,
            reduce_range=reduce_range,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=float_ops,
        )


def _quantize_static(
    prepared: Path,
    out_path: str | Path,
    reader: "CalibrationReader",
    method: str,
    quant_format: str,
    per_channel: bool,
    reduce_range: bool,
    float_ops: list[str],
) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    calibrate_method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[method]
    with atomic_path(out_path) as out:
        quantize_static(
            str(prepared),
            str(out),
            reader,
            quant_format=QuantFormat.QDQ if quant_format == "qdq" else QuantFormat.QOperator,
            per_channel=per_channel,
            reduce_range=reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=float_ops,
            calibrate_method=calibrate_method,
            extra_options={"CalibPercentile": PERCENTILE} if method == "percentile" else {},
        )


def int8_kernels(path: str | Path) -> dict[str, int]:
    """The integer kernels onnxruntime's CPU session really runs for `path`
    (op type -> node count, after its optimiser fused the QDQ pairs): empty
    when every layer still runs in float."""
    return {
        op: n
        for op, n in optimized_ops(path).items()
        if op.startswith(("QLinear", "QGemm", "Nhwc")) or "Integer" in op or op.startswith("DynamicQuantize")
    }


def agreement(fp32_probs: np.ndarray, int8_probs: np.ndarray) -> float:
    """Fraction of rows whose top-1 class is the same in both (1.0 = identical decisions)."""
    fp32_probs, int8_probs = np.asarray(fp32_probs), np.asarray(int8_probs)
    if fp32_probs.shape != int8_probs.shape or fp32_probs.ndim != 2 or len(fp32_probs) == 0:
        raise ValueError(
            f"agreement needs two (N, classes) arrays of one shape, got {fp32_probs.shape} and {int8_probs.shape}"
        )
    return float(np.mean(fp32_probs.argmax(axis=1) == int8_probs.argmax(axis=1)))
