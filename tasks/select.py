"""Stage 8, select and register: the accuracy-aware choice of the champion.

The champion is the fastest eligible candidate whose macro-F1 is within
`select.max_f1_drop` of the fp32 teacher. It is copied to models/champion.onnx
and registered in MLflow with the alias `champion`. If none qualifies, the stage
fails, prints the table, and nothing is promoted.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tasks import paths
from tasks.config import MlflowParams, SelectParams, load_params
from tasks.core import DistilleryError, atomic_path, git_commit, markdown_table, read_json, run_cli, sha256_file, write_json, write_summary
from tasks.onnx_utils import check_onnx

REFERENCE = "teacher.fp32"
SUMMARY_KEYS = ("accuracy", "macro_f1", "weighted_f1", "ece_before_scaling", "ece", "mce", "size_bytes", "latency_ms_b1", "latency_ms_b256")
CHAMPION_ALIAS = "champion"


def select_champion(candidates: dict[str, dict], params: SelectParams) -> tuple[str, dict[str, dict]]:
    """Return the champion's name and every candidate's summary with its verdict."""
    if REFERENCE not in candidates:
        raise DistilleryError(f"{paths.EVALUATION_REPORT}: the reference candidate '{REFERENCE}' was not evaluated")
    floor = candidates[REFERENCE]["macro_f1"] - params.max_f1_drop
    table: dict[str, dict] = {}
    for name, result in candidates.items():
        precision = name.rsplit(".", 1)[-1]
        row = {key: result[key] for key in SUMMARY_KEYS}
        row["f1_drop"] = candidates[REFERENCE]["macro_f1"] - result["macro_f1"]
        row["eligible"] = precision in params.precisions
        row["qualifies"] = row["eligible"] and result["macro_f1"] >= floor
        table[name] = row
    qualified = [n for n, row in table.items() if row["qualifies"]]
    if not qualified:
        rows = [{"candidate": n, **{k: r[k] for k in ("macro_f1", "f1_drop", "eligible", params.speed_key)}} for n, r in table.items()]
        raise DistilleryError(
            f"no candidate qualifies: none of precision {list(params.precisions)} keeps macro-F1 within "
            f"select.max_f1_drop={params.max_f1_drop} of {REFERENCE} "
            f"({candidates[REFERENCE]['macro_f1']:.4f}). Nothing was promoted.\n" + markdown_table(rows)
        )
    return min(qualified, key=lambda n: table[n][params.speed_key]), table


def register_champion(path: Path, name: str, metadata: dict, params: SelectParams, mlflow_cfg: MlflowParams) -> str:
    """Log the champion ONNX as an MLflow model, register it and move the alias.
    Returns the new model version."""
    import mlflow
    import onnx
    from mlflow import MlflowClient

    from tasks.tracking import mlflow_run

    tags = {"git_commit": metadata.get("git_commit", git_commit()), "data_hash": metadata.get("data_hash", ""),
            "candidate": name, "sha256": sha256_file(path)}
    with mlflow_run(mlflow_cfg, "select", tags):
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
    client.set_registered_model_alias(params.registered_model, CHAMPION_ALIAS, version)
    return version


def main() -> None:
    params = load_params(paths.PARAMS)
    evaluation = read_json(paths.EVALUATION_REPORT, "evaluation report")
    champion, table = select_champion(evaluation["candidates"], params.select)
    source = paths.ONNX_DIR / f"{champion}.onnx"
    metadata = check_onnx(source)
    with atomic_path(paths.CHAMPION) as tmp:
        shutil.copyfile(source, tmp)
    version = register_champion(paths.CHAMPION, champion, metadata, params.select, params.mlflow)
    write_json(
        paths.METRICS,
        {
            "champion": champion,
            "reference": REFERENCE,
            "max_f1_drop": params.select.max_f1_drop,
            "speed_key": params.select.speed_key,
            "registered_model": params.select.registered_model,
            "registered_version": version,
            "candidates": table,
        },
    )
    c = table[champion]
    write_summary(
        "select",
        f"Champion **{champion}** (fastest by {params.select.speed_key} within {params.select.max_f1_drop} macro-F1 "
        f"of {REFERENCE}): macro-F1 {c['macro_f1']:.4f}, {c['size_bytes']:,} bytes, "
        f"{c['latency_ms_b1']:.3f} ms at batch 1, {c['latency_ms_b256']:.3f} ms at batch 256.\n\n"
        f"Registered as `{params.select.registered_model}` version {version} with alias `{CHAMPION_ALIAS}`.\n\n"
        + markdown_table([{"candidate": n, **r} for n, r in table.items()]),
    )


if __name__ == "__main__":
    run_cli(main)
