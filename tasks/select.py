"""Stage 8, select and register: the accuracy-aware choice of the champion.

The champion is the fastest eligible candidate whose macro-F1 is within
`select.max_f1_drop` of the fp32 teacher. It is copied to models/champion.onnx
and registered in MLflow with the alias `champion`. If none qualifies, the stage
fails, prints the table, and nothing is promoted.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from tasks import paths
from tasks.config import MlflowParams, SelectParams, load_params
from tasks.core import DistilleryError, atomic_path, git_commit, markdown_table, read_json, run_cli, sha256_file, write_json, write_summary
from tasks.metrics import task_metrics
from tasks.onnx_utils import check_onnx, run_batches, session
from tasks.preprocess import load_split

REFERENCE = "teacher.fp32"
SUMMARY_KEYS = ("accuracy", "macro_f1", "weighted_f1", "ece_before_scaling", "ece", "mce", "r2", "rmse", "mae",
                "size_bytes", "latency_ms_b1", "latency_ms_b256", "int8_top1_agreement", "int8_max_abs_diff")
COMPRESSION_REPORT = paths.REPORTS / "compression.json"
CHAMPION_ALIAS = "champion"


def _quality(result: dict) -> float:
    """macro-F1 for classifiers, R^2 for regression (evaluate's `quality`)."""
    return result.get("quality", result.get("macro_f1"))


def select_champion(candidates: dict[str, dict], params: SelectParams) -> tuple[str, dict[str, dict]]:
    """Return the champion's name and every candidate's summary with its verdict.
    Quality is macro-F1 (R^2 for regression); `max_f1_drop` bounds its loss."""
    if REFERENCE not in candidates:
        raise DistilleryError(f"{paths.EVALUATION_REPORT}: the reference candidate '{REFERENCE}' was not evaluated")
    reference = _quality(candidates[REFERENCE])
    floor = reference - params.max_f1_drop
    table: dict[str, dict] = {}
    for name, result in candidates.items():
        precision = name.rsplit(".", 1)[-1]
        row = {key: result[key] for key in SUMMARY_KEYS if key in result}
        row["quality"] = _quality(result)
        row["f1_drop"] = reference - row["quality"]
        row["eligible"] = precision in params.precisions
        within_budget = ((params.max_size_bytes is None or row["size_bytes"] <= params.max_size_bytes)
                         and (params.max_latency_ms is None or row[params.speed_key] <= params.max_latency_ms))
        row["within_budget"] = within_budget
        row["qualifies"] = row["eligible"] and within_budget and row["quality"] >= floor
        table[name] = row
    qualified = [n for n, row in table.items() if row["qualifies"]]
    if not qualified:
        rows = [{"candidate": n, **{k: r[k] for k in ("quality", "f1_drop", "eligible", "within_budget", "size_bytes",
                                                      params.speed_key)}}
                for n, r in table.items()]
        raise DistilleryError(
            f"no candidate qualifies: none of precision {list(params.precisions)} keeps its quality (macro-F1; "
            f"R^2 for regression) within select.max_f1_drop={params.max_f1_drop} of {REFERENCE} "
            f"and within the size/latency budgets (select.max_size_bytes={params.max_size_bytes}, "
            f"select.max_latency_ms={params.max_latency_ms}) "
            f"({reference:.4f}). Nothing was promoted.\n" + markdown_table(rows)
        )
    return min(qualified, key=lambda n: table[n][params.speed_key]), table


def current_champion_quality(params: SelectParams, x: np.ndarray, y: np.ndarray, classes: list[str],
                             task: str = "multiclass") -> float | None:
    """Quality of the model now holding the `champion` alias, measured on this
    test split (as TFX's evaluator compares against its baseline). None when
    there is no champion yet, or it takes other inputs, classes or task."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        folder = Path(mlflow.artifacts.download_artifacts(f"models:/{params.registered_model}@{CHAMPION_ALIAS}"))
    except MlflowException:
        return None
    onnx_files = sorted(folder.glob("*.onnx"))
    if not onnx_files:
        return None
    metadata = check_onnx(onnx_files[0])
    if (metadata.get("classes") != classes or metadata.get("task", "multiclass") != task
            or metadata.get("input_spec", {}).get("shape", [None])[1:] != list(x.shape[1:])):
        return None
    sess = session(onnx_files[0])
    if task == "regression":
        return task_metrics(task, run_batches(sess, x, output="prediction").ravel(), y, classes)["quality"]
    return task_metrics(task, run_batches(sess, x), y, classes, probabilities=True)["quality"]


def gate_failures(candidate: dict, params: SelectParams, baseline: float | None, task: str = "multiclass") -> list[str]:
    """Every threshold the candidate misses, with the amount it misses by."""
    failures = []
    quality = _quality(candidate)
    name, floor = ("r2", params.min_r2) if task == "regression" else ("macro_f1", params.min_macro_f1)
    if quality < floor:
        failures.append(f"{name} {quality:.4f} < select.min_{name} {floor} (short by {floor - quality:.4f})")
    if candidate.get("ece") is not None and candidate["ece"] > params.max_ece:
        failures.append(f"ece {candidate['ece']:.4f} > select.max_ece {params.max_ece} "
                        f"(over by {candidate['ece'] - params.max_ece:.4f})")
    if baseline is not None and quality < baseline - params.max_drop_vs_champion:
        drop = baseline - quality
        failures.append(f"{name} {quality:.4f} is {drop:.4f} below the current champion's "
                        f"{baseline:.4f}, more than select.max_drop_vs_champion {params.max_drop_vs_champion}")
    return failures


def register(path: Path, name: str, metadata: dict, scores: dict, params: SelectParams,
             mlflow_cfg: MlflowParams, promote: bool) -> str:
    """Log the ONNX as an MLflow model and register a version, tagged with its
    provenance and scores. Only a version that passed the gate gets the alias."""
    import mlflow
    import onnx
    from mlflow import MlflowClient

    from tasks.tracking import mlflow_run

    tags = {"git_commit": metadata.get("git_commit", git_commit()), "data_hash": metadata.get("data_hash", ""),
            "candidate": name, "sha256": sha256_file(path), "gate": "passed" if promote else "failed",
            "quality": f"{_quality(scores):.6f}", "task": scores.get("task", "")}
    if scores.get("ece") is not None:
        tags["ece"] = f"{scores['ece']:.6f}"
    with mlflow_run(mlflow_cfg, "select", tags):
        mlflow.log_metrics({k: float(v) for k, v in scores.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
        info = mlflow.onnx.log_model(
            onnx.load(str(path)),
            name="model",
            registered_model_name=params.registered_model,
            pip_requirements=["onnxruntime", "onnx"],  # skip slow dependency inference
            save_as_external_data=False,
        )
    version = str(info.registered_model_version)
    client = MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(params.registered_model, version, key, value)
    if promote:
        client.set_registered_model_alias(params.registered_model, CHAMPION_ALIAS, version)
    return version


def write_compression_report(champion: str, table: dict[str, dict], meta: dict) -> None:
    """reports/compression.json and the Pareto plot: latency against quality,
    marker area by file size."""
    from tasks import plots
    from tasks.onnx_utils import file_size

    export = read_json(paths.REPORTS / "export.json", "export report")
    candidates = []
    for name, row in table.items():
        model, precision = name.rsplit(".", 1)
        candidates.append({"name": name, "path": str(paths.ONNX_DIR / f"{name}.onnx"), "precision": precision,
                           "parameters": export.get(model, {}).get("parameters"),
                           "size_bytes": file_size(paths.ONNX_DIR / f"{name}.onnx"), **row})
    write_json(COMPRESSION_REPORT, {"champion": champion, "task": meta.get("task", "multiclass"),
                                    "candidates": candidates})
    plots.pareto(candidates, champion, "R^2" if meta.get("task") == "regression" else "macro-F1",
                 paths.REPORTS / "pareto.png")


def main() -> None:
    params = load_params(paths.PARAMS)
    evaluation = read_json(paths.EVALUATION_REPORT, "evaluation report")
    meta = read_json(paths.PROCESSED / paths.META, "processed meta")
    champion, table = select_champion(evaluation["candidates"], params.select)
    source = paths.ONNX_DIR / f"{champion}.onnx"
    metadata = check_onnx(source)

    from tasks.tracking import configure

    configure(params.mlflow)
    x, y = load_split("test")
    task = meta.get("task", "multiclass")
    baseline_f1 = current_champion_quality(params.select, x, y, meta["classes"], task)
    failures = gate_failures(table[champion], params.select, baseline_f1, task)
    version = register(source, champion, metadata, table[champion], params.select, params.mlflow, not failures)
    if failures:
        raise DistilleryError(
            f"evaluation gate failed for {champion} (registered as version {version} without the "
            f"'{CHAMPION_ALIAS}' alias; nothing promoted):\n  - " + "\n  - ".join(failures)
        )
    with atomic_path(paths.CHAMPION) as tmp:
        shutil.copyfile(source, tmp)
    write_json(
        paths.METRICS,
        {
            "champion": champion,
            "reference": REFERENCE,
            "max_f1_drop": params.select.max_f1_drop,
            "speed_key": params.select.speed_key,
            "registered_model": params.select.registered_model,
            "registered_version": version,
            "task": task,
            "previous_champion_quality": baseline_f1,
            "candidates": table,
        },
    )
    write_compression_report(champion, table, meta)
    c = table[champion]
    baseline = f"{baseline_f1:.4f}" if baseline_f1 is not None else "none comparable"
    quality_name = "R^2" if task == "regression" else "macro-F1"
    ece = f", ECE {c['ece']:.4f}" if c.get("ece") is not None else ""
    write_summary(
        "select",
        f"Champion **{champion}** (fastest by {params.select.speed_key} within {params.select.max_f1_drop} "
        f"{quality_name} of {REFERENCE}): {quality_name} {c['quality']:.4f}{ece}, {c['size_bytes']:,} bytes, "
        f"{c['latency_ms_b1']:.3f} ms at batch 1, {c['latency_ms_b256']:.3f} ms at batch 256.\n\n"
        f"Gate passed (previous champion on this test split: {baseline}). Registered as "
        f"`{params.select.registered_model}` version {version} with alias `{CHAMPION_ALIAS}`.\n\n"
        + markdown_table([{"candidate": n, **r} for n, r in table.items()]),
    )


if __name__ == "__main__":
    run_cli(main)
