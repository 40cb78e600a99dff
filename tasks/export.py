"""Stage 6, export: every candidate to ONNX fp32 and int8.

Each fp32 file is checked by onnx.checker and against PyTorch on the validation
set; each int8 file comes from onnxruntime's static QDQ quantization,
calibrated on training samples. Every file carries its own description.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from tasks import paths
from tasks.calibration import calibrate
from tasks.config import ExportParams, load_params
from tasks.core import DistilleryError, atomic_path, git_commit, markdown_table, read_json, run_cli, write_json, write_summary
from tasks.models import Model, count_parameters, load_model
from tasks.onnx_utils import IMAGE_INPUT, TABLE_INPUT, check_onnx, input_name, output_names, export_onnx, file_size, run_batches, session, set_metadata
from tasks.preprocess import load_split
from tasks.training import class_logits, predict_logits

CANDIDATE_MODELS = ("teacher", "student")
FLOAT_OPS = ("Softmax", "Sigmoid", "Mul", "Add")  # kept out of int8 (the input's Sub/Div normalisation is quantized)


class _Calibration:
    """Feeds calibration batches to onnxruntime's quantizer."""

    def __init__(self, x: np.ndarray, name: str, batch_size: int = 32):
        self._name = name
        self._batches = iter([x[i : i + batch_size] for i in range(0, len(x), batch_size)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {self._name: batch.astype(np.float32)}


def quantize_int8(fp32_path: Path, int8_path: Path, calibration: np.ndarray, name: str, per_channel: bool) -> None:
    """Static int8 QDQ: uint8 activations and int8 weights, the layout x86
    VNNI kernels run fastest."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        # The output activations stay in float: quantized probabilities would come in
        # 1/255 steps (softmax rows no longer summing to 1), ruining calibration; and
        # a regression's scale-back to target units (Mul, Add) would round values.
        float_ops = [n.name for n in onnx.load(str(prepared)).graph.node if n.op_type in FLOAT_OPS]
        with atomic_path(int8_path) as out:
            quantize_static(
                str(prepared),
                str(out),
                _Calibration(calibration, name),
                quant_format=QuantFormat.QDQ,
                per_channel=per_channel,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=float_ops,
            )


def export_candidate(
    name: str,
    model: Model,
    val: tuple[np.ndarray, np.ndarray],
    calibration: np.ndarray,
    metadata: dict,
    params: ExportParams,
    out_dir: Path,
) -> dict:
    """Fit the temperature on the validation split, write `<name>.fp32.onnx` and
    `<name>.int8.onnx` with it folded in, and return the checks' figures."""
    val_x, val_y = val
    task = metadata.get("task", "multiclass")
    fp32, int8 = out_dir / f"{name}.fp32.onnx", out_dir / f"{name}.int8.onnx"
    raw = predict_logits(model, val_x)
    if task in ("multiclass", "binary"):
        raw = class_logits(raw)
    if params.temperature_scaling and task != "regression":
        kind = "sigmoid" if task == "multilabel" else "softmax"
        scaling = calibrate(raw, val_y, params.calibration_bins, kind)
    else:
        scaling = {"temperature": 1.0}
    temperature = scaling["temperature"]
    metadata = {**metadata, "temperature": temperature}
    export_onnx(model, model.spec.input_shape, fp32, params.opset, temperature, task)
    set_metadata(fp32, {**metadata, "candidate": f"{name}.fp32", "precision": "fp32"})
    check_onnx(fp32)
    output = "prediction" if task == "regression" else "logits"
    got = run_batches(session(fp32), val_x, output=output)
    max_diff = float(np.abs(raw / temperature - got).max())
    if max_diff > params.atol * max(1.0, float(np.abs(raw).max()) if task == "regression" else 1.0):
        raise DistilleryError(
            f"{fp32}: ONNX {output} differ from PyTorch by {max_diff:.2e} on the validation set, "
            f"above export.atol={params.atol:.0e}"
        )
    quantize_int8(fp32, int8, calibration, input_name(model), params.per_channel)
    set_metadata(int8, {**metadata, "candidate": f"{name}.int8", "precision": "int8"})
    check_onnx(int8)
    return {
        **scaling,
        "parameters": count_parameters(model),
        "fp32_max_abs_diff": max_diff,
        "fp32_size_bytes": file_size(fp32),
        "int8_size_bytes": file_size(int8),
    }


def artifact_metadata(meta: dict) -> dict:
    """What every exported file says about itself."""
    if meta.get("kind") == "tabular":
        input_spec = {
            "name": TABLE_INPUT,
            "shape": [-1, *meta["input_shape"]],
            "dtype": "float32",
            "features": meta["feature_names"],
            "encoding": "tasks.preprocess.encode_table with encoder (below): impute, one-hot; then standardised in the graph",
        }
        preprocessing = {"encoder": meta["encoder"], "inside_graph": "(x - mean) / std per encoded feature"}
    else:
        input_spec = {
            "name": IMAGE_INPUT,
            "shape": [-1, *meta["input_shape"]],
            "dtype": "float32",
            "range": [0, meta["pixel_max"]],
        }
        preprocessing = {"inside_graph": "(x - mean) / std per channel; send raw pixel values"}
    return {
        "classes": meta["classes"],
        "task": meta.get("task", "multiclass"),
        "input_spec": input_spec,
        "preprocessing": {**preprocessing, "mean": meta["mean"], "std": meta["std"]},
        "outputs": list(output_names(meta.get("task", "multiclass"))),
        "target_units": {"mean": meta.get("target_mean"), "std": meta.get("target_std")}
        if meta.get("task") == "regression" else None,
        "git_commit": git_commit(),
        "data_hash": meta["data_hash"],
    }


def main() -> None:
    params = load_params(paths.PARAMS).export
    meta = read_json(paths.PROCESSED / paths.META, "processed meta")
    train_x, _ = load_split("train")
    val = load_split("val")
    rng = np.random.default_rng(0)
    calibration = train_x[rng.choice(len(train_x), size=min(params.calibration_samples, len(train_x)), replace=False)]
    paths.ONNX_DIR.mkdir(parents=True, exist_ok=True)
    report = {
        name: export_candidate(
            name, load_model(paths.MODELS / name), val, calibration, artifact_metadata(meta), params, paths.ONNX_DIR
        )
        for name in CANDIDATE_MODELS
    }
    write_json(paths.REPORTS / "export.json", report)
    write_summary(
        "export",
        "Temperature fitted on the validation split and folded into each graph; exported fp32 "
        "(checked against PyTorch) and static int8 QDQ:\n\n"
        + markdown_table([{"model": name, **figures} for name, figures in report.items()]),
    )


if __name__ == "__main__":
    run_cli(main)
