"""Stage 6, export: every candidate to ONNX fp32 and int8.

Each fp32 file is checked by onnx.checker and against PyTorch on the validation
set; each int8 file comes from onnxruntime's static QDQ quantization,
calibrated on training samples. Every file carries its own description.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tasks import paths
from tasks.calibration import calibrate
from tasks.quantize import cpu_has_vnni, default_reduce_range, quantize
from tasks.config import ExportParams, load_params
from tasks.core import DistilleryError, git_commit, markdown_table, read_json, run_cli, write_json, write_summary
from tasks.models import Model, count_parameters, load_model
from tasks.onnx_utils import IMAGE_INPUT, TABLE_INPUT, check_onnx, input_name, output_names, export_onnx, file_size, run_batches, session, set_metadata
from tasks.preprocess import load_split
from tasks.metrics import class_logits
from tasks.training import predict_logits


def candidate_models(folder: Path) -> list[str]:
    """Every trained model in `folder`: teacher, student, and their pruned versions."""
    return sorted(p.stem for p in folder.glob("*.safetensors"))


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
    reduce_range = default_reduce_range() if params.reduce_range == "auto" else params.reduce_range == "on"
    quantization = {"mode": params.quantization, "per_channel": params.per_channel,
                    "calibration_method": params.calibration_method, "reduce_range": reduce_range,
                    "cpu_has_vnni": cpu_has_vnni()}
    quantize(fp32, int8, mode=params.quantization, calibration=calibration, per_channel=params.per_channel,
             method=params.calibration_method, reduce_range=reduce_range, input_name=input_name(model))
    set_metadata(int8, {**metadata, "candidate": f"{name}.int8", "precision": "int8", "quantization": quantization})
    check_onnx(int8)
    return {
        **scaling,
        "parameters": count_parameters(model),
        "fp32_max_abs_diff": max_diff,
        "quantization": quantization,
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
        for name in candidate_models(paths.MODELS)
    }
    write_json(paths.REPORTS / "export.json", report)
    write_summary(
        "export",
        "Temperature fitted on the validation split and folded into each graph; exported fp32 "
        "(checked against PyTorch) and int8 (onnxruntime quantization):\n\n"
        + markdown_table([{"model": name, **figures} for name, figures in report.items()]),
    )


if __name__ == "__main__":
    run_cli(main)
