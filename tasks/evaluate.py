"""Stage 8, evaluate: every candidate, fp32 and int8, on the test split through
onnxruntime, the same runtime that serves it.

Quality: accuracy, macro/weighted F1, per-class report, confusion matrix, ECE
(R^2 and errors for regression). Cost: size on disk, and latency at batch 1
and 256 for each pinned thread count, every candidate timed in interleaved
rounds in this one process (tasks/onnx/timing.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tasks.contracts import reports
from tasks.contracts.dataset import ROW_ID
from tasks.contracts.onnx import LOGITS, PREDICTION, PROBABILITIES, answer_output
from tasks.contracts.processed import (
    ROW_IDS,
    ProcessedMeta,
    X,
    load_split,
    load_split_arrays,
    read_meta,
)
from tasks.contracts.reports import REFERENCE, Baseline, EvaluationReport
from tasks.core import paths
from tasks.core.errors import DistilleryError, run_cli
from tasks.core.io import write_json
from tasks.core.params import EvaluateParams, load_params
from tasks.core.progress import progress
from tasks.core.report import markdown_table, write_summary
from tasks.core.task import task_of
from tasks.evaluation import plots
from tasks.evaluation.baselines import boosted_baseline, trivial_baseline
from tasks.evaluation.metrics import curve_points, label_curve_points, task_metrics
from tasks.onnx.quantize import agreement
from tasks.onnx.runtime import check_artifact, file_size, read_metadata, run_batches, session
from tasks.onnx.timing import latency_key, session_latencies

SECTIONS = ("evaluate",)
LATENCY_BATCHES = (1, 256)
CURVE_KINDS = ("roc", "pr", "reliability", "residuals")
SUMMARY_COLUMNS = ("accuracy", "macro_f1", "ece_before_scaling", "ece", "size_bytes")
REGRESSION_COLUMNS = ("r2", "rmse", "mae", "size_bytes")


def candidate_files(folder: Path) -> dict[str, Path]:
    """`<model>.<precision>.onnx` files, by candidate name `<model>.<precision>`."""
    return {p.name.removesuffix(".onnx"): p for p in sorted(folder.glob("*.onnx"))}


def measure_latency(files: dict[str, Path], x: np.ndarray, params: EvaluateParams) -> dict[str, dict[str, float]]:
    """Every candidate's latency at batch 1 and 256 for each of
    `evaluate.latency_threads`, in one process and one runtime: per batch size
    and thread count, all candidates are timed in interleaved rounds and the
    median kept, with p10 and p90 for the spread."""
    out: dict[str, dict[str, float]] = {name: {} for name in files}
    for threads in params.latency_threads:
        sessions = {name: session(path, threads=threads, spinning=False) for name, path in files.items()}
        for batch in LATENCY_BATCHES:
            print(
                f"evaluate: timing {len(files)} candidates at batch {batch}, {threads} thread(s), "
                f"{params.latency_rounds} interleaved rounds",
                flush=True,
            )
            key = latency_key(batch, threads)
            for name, figures in session_latencies(
                sessions, x, batch, params.latency_seconds, params.latency_rounds
            ).items():
                out[name].update({key: figures["median"], f"{key}_p10": figures["p10"], f"{key}_p90": figures["p90"]})
    return out


def evaluate_candidate(path: Path, x: np.ndarray, y: np.ndarray, meta: ProcessedMeta, params: EvaluateParams) -> dict:
    """Quality and cost of one ONNX file, run by onnxruntime on the test split."""
    metadata, _, sess = check_artifact(path, threads=params.threads)
    if metadata.task != meta.task or tuple(metadata.classes) != tuple(meta.classes):
        raise DistilleryError(
            f"{path}: a {metadata.task} model of classes {list(metadata.classes)}, but "
            f"data/processed is {meta.task} with {list(meta.classes)}; rerun export (dvc repro)"
        )
    task, classes = meta.task, list(meta.classes)
    cost = {"size_bytes": file_size(path)}
    if task_of(task).regression:
        predicted = run_batches(sess, x, output=PREDICTION).ravel()
        scores = task_metrics(task, predicted, y, classes)
        return {**scores, "residuals": {"predicted": predicted.tolist(), "actual": y.tolist()}, **cost}
    probabilities = run_batches(sess, x, output=PROBABILITIES)
    scores = task_metrics(
        task,
        probabilities,
        y,
        classes,
        params.ece_bins,
        params.f_beta,
        probabilities=True,
        threshold=metadata.threshold,
    )
    # The graph divides logits by T; multiplying back recovers the uncalibrated model.
    logits = run_batches(sess, x, output=LOGITS) * metadata.temperature
    uncalibrated = task_metrics(task, logits, y, classes, params.ece_bins, threshold=metadata.threshold)
    curves = (
        label_curve_points(probabilities, y, classes)
        if task_of(task).multilabel
        else curve_points(probabilities, y, classes)
    )
    return {
        **scores,
        "temperature": metadata.temperature,
        "ece_before_scaling": uncalibrated["ece"],
        "curves": curves,
        **cost,
    }


def write_plots(name: str, result: dict, classes: list[str], task: str) -> None:
    """PNGs for people, and the curve data as JSON for `dvc plots`."""
    if task_of(task).regression:
        residuals = result.pop("residuals")
        plots.residuals(residuals["actual"], residuals["predicted"], name, paths.PLOTS / f"residuals_{name}.png")
        rows = [{"actual": a, "predicted": p} for a, p in zip(residuals["actual"], residuals["predicted"])]
        write_json(paths.CURVES / "residuals" / f"{name}.json", rows)
        return
    if not task_of(task).multilabel:
        plots.confusion(
            result["confusion_matrix"],
            result["confusion_matrix_normalized"],
            classes,
            name,
            paths.PLOTS / f"confusion_{name}.png",
        )
    plots.curves(
        result["curves"],
        name,
        paths.PLOTS / f"curves_{name}.png",
        (result.get("average_precision") or {}).get("per_class"),
    )
    plots.reliability(
        result["reliability"],
        result["ece_before_scaling"],
        result["ece"],
        name,
        paths.PLOTS / f"reliability_{name}.png",
        result.get("temperature"),
    )
    write_json(paths.CURVES / "roc" / f"{name}.json", result["curves"]["roc"])
    write_json(paths.CURVES / "pr" / f"{name}.json", result["curves"]["pr"])
    write_json(paths.CURVES / "reliability" / f"{name}.json", [b for b in result["reliability"] if b["count"]])
    del result["curves"]  # in reports/curves/; the report stays readable


def slice_report(meta: ProcessedMeta, y: np.ndarray, params: EvaluateParams) -> dict:
    """Metrics of every candidate per value of `evaluate.slice_column` (a column of
    the validated table): a model can be good on average and bad for one group."""
    task, classes = meta.task, list(meta.classes)
    table = pd.read_parquet(paths.VALIDATED / paths.TABLE)
    if params.slice_column not in table.columns:
        raise DistilleryError(
            f"params.yaml 'evaluate.slice_column': column '{params.slice_column}' is not in "
            f"the validated table (columns: {list(table.columns)})"
        )
    test = load_split_arrays("test")
    x, row_ids = test[X], test[ROW_IDS]
    values = table.set_index(ROW_ID).loc[row_ids, params.slice_column].astype("string").fillna("(missing)").to_numpy()
    report: dict[str, dict] = {}
    for name, path in candidate_files(paths.ONNX_DIR).items():
        sess = session(path, threads=params.threads)
        predicted = run_batches(sess, x, output=answer_output(task))
        per_value = {}
        for value in sorted(set(values)):
            mask = values == value
            part = predicted[mask].ravel() if task_of(task).regression else predicted[mask]
            scores = task_metrics(
                task, part, y[mask], classes, params.ece_bins, params.f_beta, probabilities=not task_of(task).regression
            )
            per_value[value] = {
                "rows": int(mask.sum()),
                "quality": scores["quality"],
                **{k: scores[k] for k in ("accuracy", "macro_f1", "r2", "rmse") if k in scores},
            }
        report[name] = per_value
    return {"column": params.slice_column, "candidates": report}


def add_int8_agreement(candidates: dict, x: np.ndarray, task: str, params: EvaluateParams) -> None:
    """Top-1 agreement of each int8 file with its fp32 sibling on the test split
    (for regression, the largest absolute difference of predictions)."""
    output = answer_output(task)
    for name in list(candidates):
        if not name.endswith(".int8") or name.replace(".int8", ".fp32") not in candidates:
            continue
        int8, fp32 = (
            session(paths.ONNX_DIR / f"{n}.onnx", threads=params.threads)
            for n in (name, name.replace(".int8", ".fp32"))
        )
        a, b = run_batches(int8, x, output=output), run_batches(fp32, x, output=output)
        if task_of(task).regression:
            candidates[name]["int8_max_abs_diff"] = float(np.abs(a - b).max())
        else:
            candidates[name]["int8_top1_agreement"] = agreement(b, a)


def add_teacher_agreement(candidates: dict, x: np.ndarray, task: str, params: EvaluateParams) -> None:
    """Top-1 agreement of every candidate with the network teacher (`REFERENCE`)
    on the test split, beside its macro-F1: how far a student or a compressed
    copy makes the teacher's own decisions (Stanton et al. 2021). Single-label
    tasks: a multilabel or regression output has no top-1."""
    if not task_of(task).single_label or REFERENCE.name not in candidates:
        return

    def answers(name: str) -> np.ndarray:
        return run_batches(session(paths.ONNX_DIR / f"{name}.onnx", threads=params.threads), x, answer_output(task))

    teacher = answers(REFERENCE.name)
    for name in candidates:
        if name != REFERENCE.name:
            candidates[name]["teacher_top1_agreement"] = agreement(teacher, answers(name))


def compute_baselines(meta: ProcessedMeta, test_y: np.ndarray, candidates: dict) -> dict[str, Baseline]:
    """The trivial baseline (fitted on the train split's labels) and, on tables,
    the boosted candidate, both on this test split."""
    _, train_y = load_split("train")
    threshold = 0.5
    for name in candidates:  # multilabel: the served threshold, the same in every file export wrote
        threshold = read_metadata(paths.ONNX_DIR / f"{name}.onnx").threshold
        break
    found = [trivial_baseline(meta.task, train_y, test_y, list(meta.classes), threshold)]
    boosted = boosted_baseline(meta.task, candidates)
    if boosted is not None:
        found.append(boosted)
    return {b.name: b for b in found}


def log_to_mlflow(mlflow_cfg, candidates: dict, task: str) -> None:
    """Every candidate's scalar metrics (prefixed by its name), the report and the plots."""
    import mlflow

    from tasks.core.tracking import mlflow_run, numbers

    with mlflow_run(mlflow_cfg, "evaluate", {"task": task}):
        for name, result in candidates.items():
            mlflow.log_metrics({f"{name}.{k}": v for k, v in numbers(result).items()})
        mlflow.log_artifact(str(paths.EVALUATION_REPORT))
        mlflow.log_artifacts(str(paths.PLOTS), "plots")


def main() -> None:
    all_params = load_params(paths.PARAMS, SECTIONS)
    params = all_params.evaluate
    meta = read_meta()
    x, y = load_split("test")
    files = candidate_files(paths.ONNX_DIR)
    print(f"evaluate: scoring {len(files)} candidates on {len(y):,} test rows", flush=True)
    scoring = progress(files.items(), "evaluate: scoring the candidates", "candidate", len(files))
    candidates = {name: evaluate_candidate(path, x, y, meta, params) for name, path in scoring}
    for name, latency in measure_latency(files, x, params).items():
        candidates[name].update(latency)
    add_int8_agreement(candidates, x, meta.task, params)
    add_teacher_agreement(candidates, x, meta.task, params)
    for kind in CURVE_KINDS:  # DVC wants every declared plots folder, even one this task leaves empty
        (paths.CURVES / kind).mkdir(parents=True, exist_ok=True)
    for name, result in progress(candidates.items(), "evaluate: curves and plots", "candidate", len(candidates)):
        write_plots(name, result, list(meta.classes), meta.task)
    slices = slice_report(meta, y, params) if params.slice_column else None
    baselines = compute_baselines(meta, y, candidates)
    reports.write(
        EvaluationReport(
            task=meta.task,
            test_rows=len(y),
            latency_threads=tuple(params.latency_threads),
            candidates=candidates,
            slices=slices,
            baselines=baselines,
        )
    )
    log_to_mlflow(all_params.mlflow, candidates, meta.task)
    latency = [latency_key(b, t) for t in params.latency_threads for b in LATENCY_BATCHES]
    quality_name = task_of(meta.task).quality_label
    beside = "; ".join(f"{b.name} baseline ({b.model}): {quality_name} {b.quality:.4f}" for b in baselines.values())
    columns = (*(REGRESSION_COLUMNS if task_of(meta.task).regression else SUMMARY_COLUMNS), *latency)
    rows = [{"candidate": n, **{k: r[k] for k in columns}} for n, r in candidates.items()]
    write_summary(
        "evaluate",
        f"Test split: {len(y)} rows. Latency in ms, onnxruntime, median of interleaved rounds "
        f"({params.latency_rounds} rounds, {params.latency_seconds} s per batch size and thread count); "
        f"`_t<n>` = n intra-op threads. Baselines on the same split: {beside}.\n\n" + markdown_table(rows),
    )


if __name__ == "__main__":
    run_cli(main)
