"""tasks/onnx/quantize.py: static (QDQ) and dynamic int8 through onnxruntime, the
calibration methods, VNNI detection and top-1 agreement."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_spec
from onnx import numpy_helper

from tasks.contracts.onnx import IMAGE_INPUT, PREDICTION, PROBABILITIES, TABLE_INPUT
from tasks.ml.models import CNN, MLP, CNNSpec, MLPSpec
from tasks.onnx.export import export_onnx
from tasks.onnx.quantize import agreement, cpu_has_vnni, default_reduce_range, float_input_block, int8_kernels, quantize
from tasks.onnx.runtime import optimized_ops, run_batches, session


def blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """8x8 images in 0..16 whose class is the quadrant holding a bright patch
    (noise elsewhere): easy to learn, so a trained model has clear margins."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.uniform(0, 6, (n, 1, 8, 8)).astype(np.float32)
    for i, label in enumerate(y):
        row, col = divmod(int(label), 2)
        x[i, 0, row * 4 : row * 4 + 4, col * 4 : col * 4 + 4] += rng.uniform(6, 10)
    return np.clip(x, 0, 16), y


def table(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    centres = np.array([[3.0, 0, 0, 0, 1, 0], [0, 3.0, 0, 0, 0, 1], [0, 0, 3.0, 0, 1, 1]], dtype=np.float32)
    return (centres[y] + rng.normal(0, 0.7, (n, 6))).astype(np.float32), y


def trained(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, steps: int = 150) -> torch.nn.Module:
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    model.train()
    for step in range(steps):
        batch = slice((step * 64) % len(x), (step * 64) % len(x) + 64)
        optimizer.zero_grad()
        F.cross_entropy(model(xt[batch]), yt[batch]).backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def cnn_fp32(tmp_path_factory):
    x, y = blobs(640, 0)
    model = trained(CNN(tiny_spec(channels=(8, 16), hidden=16, n_classes=3)), x, y)
    path = tmp_path_factory.mktemp("q") / "cnn.fp32.onnx"
    export_onnx(model, (1, 8, 8), path, 17, IMAGE_INPUT)
    return path


@pytest.fixture(scope="module")
def mlp_fp32(tmp_path_factory):
    x, y = table(640, 0)
    spec = MLPSpec(n_features=6, layers=(32, 32), n_classes=3, dropout=0.0, mean=(0.0,) * 6, std=(1.0,) * 6)
    model = trained(MLP(spec), x, y)
    path = tmp_path_factory.mktemp("q") / "mlp.fp32.onnx"
    export_onnx(model, (6,), path, 17, TABLE_INPUT)
    return path


def ops(path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


def int8_weights(path) -> list[np.ndarray]:
    return [
        numpy_helper.to_array(t)
        for t in onnx.load(str(path)).graph.initializer
        if t.data_type == onnx.TensorProto.INT8 and len(t.dims) >= 2
    ]


def float_layers(path) -> list[str]:
    """Gemm/MatMul/Conv nodes whose weights are plain fp32 initializers (not DequantizeLinear outputs)."""
    graph = onnx.load(str(path)).graph
    initializers = {t.name for t in graph.initializer}
    return [n.name for n in graph.node if n.op_type in ("Gemm", "MatMul", "Conv") and n.input[1] in initializers]


def probabilities(path, x: np.ndarray) -> np.ndarray:
    return run_batches(session(path, threads=1), x, output=PROBABILITIES)


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_static_int8_agrees_with_fp32_for_every_calibration_method(cnn_fp32, tmp_path, method):
    int8 = tmp_path / f"{method}.onnx"
    quantize(
        cnn_fp32,
        int8,
        mode="static",
        calibration=blobs(128, 1)[0],
        per_channel=True,
        method=method,
        reduce_range=False,
        input_name=IMAGE_INPUT,
    )
    onnx.checker.check_model(onnx.load(str(int8)))
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops(int8)
    # The second conv and the hidden dense layer hold int8 weights; the first conv
    # (one input channel) and the classifier stay fp32.
    assert sorted(w.shape for w in int8_weights(int8)) == [(16, 8, 3, 3), (16, 64)]
    assert float_layers(int8) == [float_layers(cnn_fp32)[0], float_layers(cnn_fp32)[-1]]
    x = blobs(300, 2)[0]
    fp32_probs, int8_probs = probabilities(cnn_fp32, x), probabilities(int8, x)
    assert agreement(fp32_probs, int8_probs) >= 0.9
    assert not np.array_equal(fp32_probs, int8_probs)  # it really runs different arithmetic
    np.testing.assert_allclose(int8_probs.sum(axis=1), 1.0, atol=1e-5)  # Softmax stayed float


def test_the_quantized_conv_runs_as_an_int8_kernel_and_the_first_block_in_float(cnn_fp32, tmp_path):
    int8 = tmp_path / "int8.onnx"
    quantize(cnn_fp32, int8, calibration=blobs(128, 1)[0], input_name=IMAGE_INPUT)
    kernels, ran = int8_kernels(int8), optimized_ops(int8)
    # onnxruntime fused DequantizeLinear -> Conv -> QuantizeLinear into its integer conv,
    # and the pool after it reads uint8 too; the hidden dense layer is an integer Gemm.
    assert kernels["QLinearConv"] == 1 and kernels["NhwcMaxPool"] == 1 and kernels["QGemm"] == 1
    # The first block stays float, pooled in float: the only uint8 pool is the NHWC one.
    assert ran["Conv"] == 1 and ran["MaxPool"] == 1
    assert int8_kernels(cnn_fp32) == {}


def test_the_first_block_can_be_quantized_too(cnn_fp32, tmp_path):
    int8 = tmp_path / "int8.onnx"
    quantize(cnn_fp32, int8, calibration=blobs(128, 1)[0], input_name=IMAGE_INPUT, float_input_layer=False)
    assert sorted(w.shape for w in int8_weights(int8)) == [(8, 1, 3, 3), (16, 8, 3, 3), (16, 64)]
    assert int8_kernels(int8)["QLinearConv"] == 2


def test_the_float_input_block_rewrite_computes_the_same(cnn_fp32, tmp_path):
    """ReLU -> MaxPool becomes MaxPool -> ReLU in the first block: the same values, exactly."""
    model = onnx.load(str(cnn_fp32))
    before = [n.op_type for n in model.graph.node]
    block = float_input_block(model)
    after = [n.op_type for n in model.graph.node]
    assert before.index("Relu") < before.index("MaxPool") and after.index("MaxPool") < after.index("Relu")
    assert [n.op_type for n in model.graph.node if n.name in block] == ["Conv", "MaxPool", "Relu"]
    onnx.checker.check_model(model, full_check=True)
    rewritten = tmp_path / "rewritten.onnx"
    onnx.save(model, str(rewritten))
    x = blobs(64, 3)[0]
    np.testing.assert_array_equal(probabilities(rewritten, x), probabilities(cnn_fp32, x))


def test_a_first_conv_on_many_channels_is_quantized(tmp_path):
    spec = CNNSpec(
        input_shape=(6, 8, 8), channels=(8,), hidden=8, n_classes=3, dropout=0.0, mean=(8.0,) * 6, std=(4.0,) * 6
    )
    model = CNN(spec).eval()
    fp32 = tmp_path / "wide.onnx"
    export_onnx(model, (6, 8, 8), fp32, 17, IMAGE_INPUT)
    assert float_input_block(onnx.load(str(fp32))) == []


def test_calibration_methods_set_different_ranges(cnn_fp32, tmp_path):
    calibration = blobs(128, 1)[0]
    scales = {}
    for method in ("minmax", "percentile"):
        path = tmp_path / f"{method}.onnx"
        quantize(cnn_fp32, path, calibration=calibration, method=method)
        graph = onnx.load(str(path)).graph
        initializers = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        scales[method] = [
            float(initializers[n.input[1]])
            for n in graph.node
            if n.op_type == "QuantizeLinear" and initializers[n.input[1]].size == 1
        ]
    assert scales["minmax"] != scales["percentile"]


def test_dynamic_int8_quantizes_the_dense_layers(mlp_fp32, tmp_path):
    int8 = tmp_path / "dynamic.onnx"
    quantize(mlp_fp32, int8, mode="dynamic", per_channel=True, reduce_range=False, input_name=TABLE_INPUT)
    onnx.checker.check_model(onnx.load(str(int8)))
    graph_ops = ops(int8)
    assert "MatMulInteger" in graph_ops or "DynamicQuantizeMatMul" in graph_ops
    assert "Gemm" not in graph_ops  # every dense layer was reached
    assert len(int8_weights(int8)) == 3
    x = table(300, 2)[0]
    assert agreement(probabilities(mlp_fp32, x), probabilities(int8, x)) >= 0.9


def test_dynamic_int8_leaves_convs_in_float(cnn_fp32, tmp_path):
    int8 = tmp_path / "dynamic.onnx"
    quantize(cnn_fp32, int8, mode="dynamic")
    assert "Conv" in ops(int8) and "ConvInteger" not in ops(int8)
    x = blobs(200, 3)[0]
    assert agreement(probabilities(cnn_fp32, x), probabilities(int8, x)) >= 0.9


def test_static_int8_of_an_mlp_agrees(mlp_fp32, tmp_path):
    int8 = tmp_path / "static.onnx"
    quantize(mlp_fp32, int8, mode="static", calibration=table(128, 1)[0], input_name=TABLE_INPUT)
    x = table(300, 2)[0]
    assert agreement(probabilities(mlp_fp32, x), probabilities(int8, x)) >= 0.9


def test_reduce_range_uses_7_bit_weights(cnn_fp32, tmp_path):
    calibration = blobs(64, 1)[0]
    full, reduced = tmp_path / "full.onnx", tmp_path / "reduced.onnx"
    quantize(cnn_fp32, full, calibration=calibration, reduce_range=False)
    quantize(cnn_fp32, reduced, calibration=calibration, reduce_range=True)
    assert max(np.abs(w.astype(int)).max() for w in int8_weights(full)) == 127
    assert max(np.abs(w.astype(int)).max() for w in int8_weights(reduced)) <= 64


def test_per_channel_gives_one_weight_scale_per_output_channel(cnn_fp32, tmp_path):
    calibration = blobs(64, 1)[0]
    sizes = {}
    for per_channel in (True, False):
        path = tmp_path / f"{per_channel}.onnx"
        quantize(cnn_fp32, path, calibration=calibration, per_channel=per_channel)
        graph = onnx.load(str(path)).graph
        initializers = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        weights = {t for t, v in initializers.items() if v.dtype == np.int8 and v.ndim == 4}
        sizes[per_channel] = sorted(
            initializers[n.input[1]].size
            for n in graph.node
            if n.op_type == "DequantizeLinear" and n.input[0] in weights
        )
    assert sizes[True] == [16] and sizes[False] == [1]  # the second conv (the first stays fp32)


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_int8_weights_make_the_file_about_4x_smaller(tmp_path, mode):
    """On a model whose size is its weights; a model of a few thousand parameters
    is dominated by graph overhead, and its int8 file can be larger than fp32."""
    torch.manual_seed(0)
    spec = MLPSpec(
        n_features=128,
        layers=(512, 512),
        n_classes=10,
        dropout=0.0,
        mean=(0.0,) * 128,
        std=(1.0,) * 128,
        batch_norm=False,
    )
    fp32, int8 = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    export_onnx(MLP(spec).eval(), (128,), fp32, 17, TABLE_INPUT)
    calibration = np.random.default_rng(0).normal(size=(32, 128)).astype(np.float32)
    quantize(fp32, int8, mode=mode, calibration=calibration, input_name=TABLE_INPUT)
    assert int8.stat().st_size < 0.3 * fp32.stat().st_size


def test_a_regression_head_and_scale_back_stay_in_float(tmp_path):
    """The graph multiplies by the target's std and adds its mean last; int8 there,
    or at the output layer before it, would round every prediction to a step of
    the output's range."""
    torch.manual_seed(0)
    spec = MLPSpec(
        n_features=6,
        layers=(16,),
        n_classes=1,
        dropout=0.0,
        mean=(0.0,) * 6,
        std=(1.0,) * 6,
        batch_norm=False,
        target_mean=1000.0,
        target_std=250.0,
    )
    fp32, int8 = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    export_onnx(MLP(spec).eval(), (6,), fp32, 17, TABLE_INPUT, task="regression")
    quantize(fp32, int8, calibration=table(64, 1)[0], input_name=TABLE_INPUT)
    graph = onnx.load(str(int8)).graph
    producers = {out: node.op_type for node in graph.node for out in node.output}
    scale_back = [node for node in graph.node if node.op_type in ("Mul", "Add")]
    assert scale_back
    assert all(producers.get(name) != "DequantizeLinear" for node in scale_back for name in node.input)
    x = table(64, 2)[0]
    fp32_values = run_batches(session(fp32), x, output=PREDICTION)
    int8_values = run_batches(session(int8), x, output=PREDICTION)
    assert len(np.unique(int8_values)) == len(x)  # not snapped to a grid of 256 steps
    np.testing.assert_allclose(int8_values, fp32_values, rtol=0.02)


def test_the_output_layer_can_be_quantized_too(mlp_fp32, tmp_path):
    int8 = tmp_path / "all.onnx"
    quantize(mlp_fp32, int8, calibration=table(64, 1)[0], input_name=TABLE_INPUT, float_output_layer=False)
    assert len(int8_weights(int8)) == 3 and float_layers(int8) == []
    assert len(float_layers(mlp_fp32)) == 3


def test_bad_options_are_refused(cnn_fp32, tmp_path):
    out = tmp_path / "x.onnx"
    with pytest.raises(ValueError, match="calibration"):
        quantize(cnn_fp32, out, mode="static", calibration=None)
    with pytest.raises(ValueError, match="mode"):
        quantize(cnn_fp32, out, mode="weights", calibration=blobs(8, 0)[0])
    with pytest.raises(ValueError, match="method"):
        quantize(cnn_fp32, out, calibration=blobs(8, 0)[0], method="mse")
    assert not out.exists()


@pytest.mark.parametrize(
    ("flags", "expected"),
    [("fpu avx2 avx512f avx512_vnni", True), ("fpu avx2 avx_vnni", True), ("fpu avx2 avx512f avx512bw", False)],
)
def test_cpu_has_vnni_reads_the_flags(tmp_path, flags, expected):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
    assert cpu_has_vnni(cpuinfo) is expected
    assert default_reduce_range(cpuinfo) is (not expected)


def test_cpu_has_vnni_is_false_when_cpuinfo_is_unreadable(tmp_path):
    assert cpu_has_vnni(tmp_path / "missing") is False
    assert default_reduce_range(tmp_path / "missing") is True


def test_agreement_is_the_top1_match_fraction():
    a = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    b = np.array([[0.6, 0.4], [0.7, 0.3], [0.9, 0.1], [0.1, 0.9]])
    assert agreement(a, b) == 0.75
    assert agreement(a, a) == 1.0
    with pytest.raises(ValueError, match="shape"):
        agreement(a, b[:3])
