"""Stage 7, export: every candidate to ONNX fp32 and int8, each keeping the
artifact contract (tasks.contracts.onnx).

Each fp32 file is checked by onnx.checker and against PyTorch on the validation
set; each int8 file comes from onnxruntime's quantization, calibrated on
training samples. Every file carries its own description and is checked as
the server will check it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from tasks.contracts.onnx import (
    ArtifactMetadata,
    InputSpec,
    Preprocessing,
    Quantization,
    TargetUnits,
    answer_output,
    input_name,
    output_names,
)
from tasks.contracts.processed import ProcessedMeta, load_split, read_meta
from tasks.contracts.reports import BOOSTED
from tasks.core import paths
from tasks.core.cluster import dask_address, map_on_cluster
from tasks.core.errors import DistilleryError, run_cli
from tasks.core.io import atomic_path, read_json, write_json
from tasks.core.params import ExportParams, load_params
from tasks.core.provenance import git_commit
from tasks.core.report import markdown_table, write_summary
from tasks.core.task import kind_of, task_of
from tasks.evaluation.metrics import class_logits
from tasks.ml.calibration import calibrate
from tasks.ml.models import Model, count_parameters, load_model, predict_logits
from tasks.onnx.export import export_onnx, set_metadata
from tasks.onnx.quantize import (
    cpu_has_vnni,
    default_reduce_range,
    int8_kernels,
    quantize,
)
from tasks.onnx.runtime import check_artifact, file_size, run_batches, session

SECTIONS = ("export",)


def candidate_models(folder: Path) -> list[str]:
    """Every trained model in `folder`: teacher, student, and their pruned versions."""
    return sorted(p.stem for p in folder.glob("*.safetensors"))


def artifact_metadata(meta: ProcessedMeta, threshold: float) -> ArtifactMetadata:
    """What every exported file says about itself (before temperature and precision)."""
    name = input_name(meta.kind)
    if kind_of(meta.kind).table:
        spec = InputSpec(name=name, shape=(-1, *meta.input_shape), dtype="float32", features=meta.feature_names)
        inside = "(x - mean) / std per encoded feature; encode raw rows with preprocessing.encoder"
    else:
        spec = InputSpec(name=name, shape=(-1, *meta.input_shape), dtype="float32", range=(0.0, meta.pixel_max))
        inside = "(x - mean) / std per channel; send raw pixel values"
    return ArtifactMetadata(
        task=meta.task,
        classes=meta.classes,
        input_spec=spec,
        preprocessing=Preprocessing(
            inside_graph=inside, mean=meta.mean, std=meta.std, encoder=meta.encoder, image=meta.image_policy
        ),
        outputs=output_names(meta.task),
        git_commit=git_commit(),
        data_hash=meta.data_hash,
        threshold=threshold,
        target_units=TargetUnits(meta.target_mean, meta.target_std) if task_of(meta.task).regression else None,
    )


def allowed_difference(atol: float, reference: np.ndarray) -> float:
    """export.atol, relative to the largest |value| once that is over 1: float32 sums drift in
    proportion to what they add up. A pruned CNN on 32x32 colour pictures, logits up to about 20,
    was 1.07e-4 off PyTorch in onnxruntime: float32 rounding, not an export fault (those are O(1))."""
    return atol * max(1.0, float(np.abs(reference).max()))


def check_graph(got: np.ndarray, reference: np.ndarray, atol: float, differ: str) -> float:
    """The largest |difference| between the graph's answers and `reference` (what it must give: the
    logits over the temperature), or a DistilleryError beginning with `differ` past the tolerance."""
    max_diff = float(np.abs(reference - got).max())
    if max_diff > allowed_difference(atol, reference):
        raise DistilleryError(
            f"{differ} by {max_diff:.2e} on the validation set, above export.atol={atol:.0e} "
            f"(relative to the largest |value|, {np.abs(reference).max():.3g})"
        )
    return max_diff


def export_candidate(
    name: str,
    model: Model,
    val: tuple[np.ndarray, np.ndarray],
    calibration: np.ndarray,
    metadata: ArtifactMetadata,
    params: ExportParams,
    out_dir: Path,
) -> dict:
    """Fit the temperature on the validation split, write `<name>.fp32.onnx` and
    `<name>.int8.onnx` with it folded in, and return the checks' figures."""
    val_x, val_y = val
    task = metadata.task
    fp32, int8 = out_dir / f"{name}.fp32.onnx", out_dir / f"{name}.int8.onnx"
    raw = predict_logits(model, val_x)
    if task_of(task).single_label:
        raw = class_logits(raw)
    if params.temperature_scaling and not task_of(task).regression:
        kind = "sigmoid" if task_of(task).multilabel else "softmax"
        scaling = calibrate(raw, val_y, params.calibration_bins, kind)
    else:
        scaling = {"temperature": 1.0}
    metadata = metadata.replace(temperature=scaling["temperature"])
    export_onnx(model, model.spec.input_shape, fp32, params.opset, metadata.input_spec.name, metadata.temperature, task)
    set_metadata(fp32, metadata.replace(candidate=f"{name}.fp32", precision="fp32"))
    _, _, sess = check_artifact(fp32)
    output = output_names(task)[0]  # logits, or a regression's prediction
    got = run_batches(sess, val_x, output=output)
    max_diff = check_graph(got, raw / metadata.temperature, params.atol, f"{fp32}: ONNX {output} differ from PyTorch")
    reduce_range = default_reduce_range() if params.reduce_range == "auto" else params.reduce_range == "on"
    quantization = Quantization(
        mode=params.quantization,
        per_channel=params.per_channel,
        calibration_method=params.calibration_method,
        reduce_range=reduce_range,
        cpu_has_vnni=cpu_has_vnni(),
    )
    quantize(
        fp32,
        int8,
        mode=params.quantization,
        calibration=calibration,
        per_channel=params.per_channel,
        method=params.calibration_method,
        reduce_range=reduce_range,
        input_name=metadata.input_spec.name,
    )
    set_metadata(int8, metadata.replace(candidate=f"{name}.int8", precision="int8", quantization=quantization))
    check_artifact(int8)
    return {
        **scaling,
        "parameters": count_parameters(model),
        "fp32_max_abs_diff": max_diff,
        "answer_output": answer_output(task),
        "fp32_size_bytes": file_size(fp32),
        "int8_size_bytes": file_size(int8),
        "int8_kernels": int8_kernels(int8),  # what onnxruntime really runs in integer arithmetic
    }


def export_saved(
    name: str,
    models_dir: Path,
    val: tuple[np.ndarray, np.ndarray],
    calibration: np.ndarray,
    metadata: ArtifactMetadata,
    params: ExportParams,
    out_dir: Path,
) -> dict:
    """export_candidate for the model saved as `models_dir/<name>`: what a Dask
    worker runs, loading the weights itself (absolute paths: its working
    directory is not the project's)."""
    return export_candidate(name, load_model(models_dir / name), val, calibration, metadata, params, out_dir)


def _exported(i: int, n: int, call: tuple) -> dict:
    figures = export_saved(*call)
    print(
        f"export: {i}/{n} {call[0]}: fp32 {figures['fp32_size_bytes']:,} B and int8 {figures['int8_size_bytes']:,} B "
        "written and checked",
        flush=True,
    )
    return figures


def export_boosted(
    source: Path,
    info: dict,
    val: tuple[np.ndarray, np.ndarray],
    metadata: ArtifactMetadata,
    params: ExportParams,
    out_dir: Path,
) -> dict:
    """The boost stage's graph (checked there against scikit-learn) as the
    candidate `boosted.fp32`: the temperature fitted on the validation split
    as for every candidate, the metadata written, the contract checked, and its
    outputs checked against the source graph's. Trees have no int8 version.
    `info` is the boost stage's record (models/boosted/boosted.json)."""
    import onnx

    from tasks.onnx.boosted import set_temperature

    val_x, val_y = val
    task = metadata.task
    target = out_dir / f"{BOOSTED.name}.onnx"
    output = output_names(task)[0]  # logits (log-probabilities at T = 1), or a regression's prediction
    raw = run_batches(session(source, threads=1), val_x, output=output)
    if params.temperature_scaling and task_of(task).single_label:
        scaling = calibrate(raw, val_y, params.calibration_bins, "softmax")
    else:
        scaling = {"temperature": 1.0}
    proto = set_temperature(onnx.load(str(source)), scaling["temperature"])
    with atomic_path(target) as tmp:
        onnx.save(proto, str(tmp))
    metadata = metadata.replace(
        temperature=scaling["temperature"],
        candidate=BOOSTED.name,
        precision="fp32",
        # Trees split the encoded features as they are and learnt the target in its units: no scaling inside.
        preprocessing=dataclasses.replace(
            metadata.preprocessing,
            inside_graph="gradient-boosted trees on the encoded features; encode raw rows with preprocessing.encoder",
        ),
        target_units=None,
    )
    set_metadata(target, metadata)
    _, _, sess = check_artifact(target)
    got = run_batches(sess, val_x, output=output)
    max_diff = check_graph(
        got, raw / metadata.temperature, params.atol, f"{target}: its {output} differ from {source}'s"
    )
    return {
        **scaling,
        "parameters": info.get("tree_nodes"),  # tree nodes: the size a network's parameter count stands for
        "fp32_max_abs_diff": max_diff,
        "sklearn_max_abs_diff": info.get("onnx_max_abs_diff"),
        "answer_output": answer_output(task),
        "fp32_size_bytes": file_size(target),
    }


def kernel_list(kernels: dict[str, int]) -> str:
    return ", ".join(f"{op} x{n}" for op, n in kernels.items()) or "none (float)"


def main() -> None:
    all_params = load_params(paths.PARAMS, SECTIONS)
    params = all_params.export
    meta = read_meta()
    train_x, _ = load_split("train")
    val = load_split("val")
    rng = np.random.default_rng(0)
    calibration = train_x[rng.choice(len(train_x), size=min(params.calibration_samples, len(train_x)), replace=False)]
    paths.ONNX_DIR.mkdir(parents=True, exist_ok=True)
    metadata = artifact_metadata(meta, params.label_threshold)
    names = candidate_models(paths.MODELS)
    calls = [
        (name, paths.MODELS.resolve(), val, calibration, metadata, params, paths.ONNX_DIR.resolve()) for name in names
    ]
    address = dask_address()
    # Candidates are independent: on a cluster each is a Dask task; here, one after another
    # (a process each would not pay on a laptop: torch's import costs more than an export).
    results = (
        map_on_cluster(export_saved, calls, address)
        if address
        else [_exported(i, len(calls), call) for i, call in enumerate(calls, 1)]
    )
    report = dict(zip(names, results))
    if paths.BOOSTED_ONNX.exists():  # tables: the boost stage's trees
        info = read_json(paths.BOOSTED_INFO, "the boost stage's record")
        report[BOOSTED.model] = export_boosted(paths.BOOSTED_ONNX, info, val, metadata, params, paths.ONNX_DIR)
        print(f"export: {BOOSTED}: {report[BOOSTED.model]['fp32_size_bytes']:,} B written and checked", flush=True)
    write_json(paths.EXPORT_REPORT, report)
    from tasks.core.tracking import log_stage

    log_stage(
        all_params.mlflow,
        "export",
        {f"{name}.{key}": value for name, figures in report.items() for key, value in figures.items()},
        {"task": meta.task},
        (paths.EXPORT_REPORT,),
    )
    where = (
        f" The {len(names)} candidates were exported in parallel on the Dask cluster at {address}." if address else ""
    )
    write_summary(
        "export",
        f"Temperature fitted on the validation split and folded into each graph; exported fp32 "
        f"(checked against PyTorch) and int8 (onnxruntime quantization), each checked against the artifact contract.{where}\n\n"
        + markdown_table(
            [
                {"model": name, **figures, "int8_kernels": kernel_list(figures.get("int8_kernels", {}))}
                for name, figures in report.items()
            ]
        ),
    )


if __name__ == "__main__":
    run_cli(main)
