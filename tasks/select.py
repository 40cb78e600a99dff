"""Stage 10, select and register: the accuracy-aware choice of the champion.

The champion is the fastest eligible candidate whose quality (macro-F1, R^2
for regression) is within `select.max_f1_drop` of the fp32 teacher and within
the budgets. It must pass the gate (absolute floors, and no worse than the
current MLflow champion on this test split). Then, in this order, so that a
crash never leaves the alias ahead of the files: it is registered in MLflow
(unless the current champion is this very file), copied to
models/champion.onnx, the reports are written, and last the alias `champion`
moves (unless `select.promote` is false). If none qualifies, or the gate
fails, the stage fails with the table and nothing is promoted.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from tasks.contracts.onnx import answer_output
from tasks.contracts.registry import CHAMPION_ALIAS, DVC_TAG_PREFIX, ONNX_ARTIFACT, SHA256_TAG, onnx_files
from tasks.contracts.processed import ProcessedMeta, load_split, read_meta
from tasks.core import paths
from tasks.core.errors import DistilleryError, run_cli
from tasks.core.io import atomic_path, read_json, write_json, write_text
from tasks.core.params import MlflowParams, SelectParams, load_params
from tasks.core.provenance import sha256_file
from tasks.core.report import markdown_table, write_summary
from tasks.evaluation.card import dvc_hashes, model_card, params_hash
from tasks.evaluation.metrics import task_metrics
from tasks.onnx.runtime import check_artifact, file_size, read_metadata, run_batches

SECTIONS = ("select",)
REFERENCE = "teacher.fp32"
SUMMARY_KEYS = ("accuracy", "macro_f1", "weighted_f1", "ece_before_scaling", "ece", "mce", "r2", "rmse", "mae",
                "size_bytes", "int8_top1_agreement", "int8_max_abs_diff")
# What the registered pyfunc model needs to load and run (deploy/pyfunc.py), listed: inference is slow.
PYFUNC_REQUIREMENTS = ["mlflow", "onnxruntime", "onnx", "numpy", "pandas", "orjson", "scikit-learn", "PyYAML"]
LATENCY_PREFIX = "latency_ms_"  # evaluate's latencies: latency_ms_b<batch>_t<threads>[_p10|_p90]


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
        if params.speed_key not in result:
            raise DistilleryError(f"{paths.EVALUATION_REPORT}: {name} has no {params.speed_key} (select.speed_key); "
                                  "time its thread count in evaluate.latency_threads and rerun evaluate")
        row = {key: result[key] for key in SUMMARY_KEYS if key in result}
        row.update({key: value for key, value in result.items() if key.startswith(LATENCY_PREFIX)})
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


@dataclass(frozen=True)
class Champion:
    """The model holding the alias now."""

    version: str
    sha256: str
    quality: Optional[float]  # on this test split; None when it is not comparable (other task, classes, inputs)


def current_champion(params: SelectParams, x: np.ndarray, y: np.ndarray, meta: ProcessedMeta) -> Optional[Champion]:
    """The version now holding the `champion` alias, and its quality measured on
    this test split (as TFX's evaluator compares against its baseline). None
    when there is no champion yet."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        version = MlflowClient().get_model_version_by_alias(params.registered_model, CHAMPION_ALIAS)
        folder = Path(mlflow.artifacts.download_artifacts(f"models:/{params.registered_model}/{version.version}"))
    except MlflowException:
        return None
    champion = Champion(str(version.version), version.tags.get(SHA256_TAG, ""), None)
    found = onnx_files(folder)
    if not found:
        return champion
    try:
        metadata, signature, sess = check_artifact(found[0])
    except DistilleryError:  # a champion of an older contract: not comparable, and replaced if this one passes
        return champion
    if (tuple(metadata.classes) != meta.classes or metadata.task != meta.task
            or tuple(signature.input_shape) != tuple(x.shape[1:])):
        return champion
    outputs = run_batches(sess, x, output=answer_output(meta.task))
    if meta.task == "regression":
        outputs = outputs.ravel()
    quality = task_metrics(meta.task, outputs, y, list(meta.classes), probabilities=meta.task != "regression",
                           threshold=metadata.threshold)["quality"]
    return Champion(champion.version, champion.sha256, quality)


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


def signature_and_example(path: Path, test_x: np.ndarray) -> tuple[Any, Any]:
    """The signature and one input example for the champion at `path`, from its
    own metadata (the artifact contract): the first test image, flat, or for a
    table a row of gaps (`test_x` holds encoded features there, not raw rows)."""
    import pandas as pd
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec
    from mlflow.types.schema import AnyType

    metadata, signature, _ = check_artifact(path)
    encoder = metadata.preprocessing.encoder
    if encoder is not None:
        columns = [*encoder.numeric, *encoder.categorical]
        schema = Schema([ColSpec(AnyType(), name, required=False) for name in columns])
        example = pd.DataFrame([{name: None for name in columns}])
        return ModelSignature(inputs=schema), example
    size = int(np.prod(signature.input_shape))
    example = np.asarray(test_x[:1], np.float32).reshape(1, size)
    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, size))])), example


def register(path: Path, name: str, scores: dict, meta: ProcessedMeta, params: SelectParams,
             mlflow_cfg: MlflowParams, passed: bool, test_x: np.ndarray) -> str:
    """Log the ONNX as an MLflow model and register a version, tagged with its
    provenance and scores. The alias is not touched here (see promote)."""
    import mlflow
    from mlflow import MlflowClient

    import deploy
    import tasks
    from deploy.pyfunc import ChampionModel
    from tasks.core.tracking import mlflow_run, numbers

    metadata = read_metadata(path)
    tags = {"git_commit": metadata.git_commit, "data_hash": metadata.data_hash, "candidate": name,
            SHA256_TAG: sha256_file(path), "gate": "passed" if passed else "failed",
            "quality": f"{_quality(scores):.6f}", "task": meta.task,
            # Lineage: how many labelled production rows trained it, from which snapshot.
            "production_rows": str(meta.production_rows)}
    if meta.production_snapshot:
        tags["production_snapshot"] = meta.production_snapshot
    # Lineage (python -m tasks.trace): the settings, and dvc.lock's hash of every input the stages used.
    if paths.PARAMS.exists():  # select's own CLI runs in a project; register() alone may not
        tags["params_hash"] = params_hash()
    tags.update({f"{DVC_TAG_PREFIX}{dep}": md5 for dep, md5 in dvc_hashes(everything=True).items()})
    if scores.get("ece") is not None:
        tags["ece"] = f"{scores['ece']:.6f}"
    with mlflow_run(mlflow_cfg, "select", tags):
        mlflow.log_metrics(numbers(scores))
        if Path("dvc.lock").exists():  # the lock as it stood: restores this data even if it is never committed
            mlflow.log_artifact("dvc.lock", "lineage")
        signature, example = signature_and_example(path, test_x)
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=ChampionModel(),
            artifacts={ONNX_ARTIFACT: str(path)},
            code_paths=[str(Path(deploy.__file__).parent), str(Path(tasks.__file__).parent)],
            signature=signature,
            input_example=example,
            registered_model_name=params.registered_model,
            pip_requirements=PYFUNC_REQUIREMENTS,  # skip slow dependency inference
        )
    version = str(info.registered_model_version)
    client = MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(params.registered_model, version, key, value)
    return version


def registered_version(params: SelectParams, sha256: str) -> Optional[str]:
    """A version already registered for this very file that passed the gate, if any
    (a rerun, or `select.promote: false` earlier): promoting it needs no new version."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        found = MlflowClient().search_model_versions(
            f"name='{params.registered_model}' and tag.{SHA256_TAG}='{sha256}' and tag.gate='passed'")
    except MlflowException:
        return None
    return str(max(int(v.version) for v in found)) if found else None


def describe(registered_model: str, version: str, card: str) -> None:
    """The model card as the version's description: what MLflow's UI shows on its page."""
    from mlflow import MlflowClient

    MlflowClient().update_model_version(registered_model, version, description=card)


def promote(params: SelectParams, version: str) -> None:
    from mlflow import MlflowClient

    MlflowClient().set_registered_model_alias(params.registered_model, CHAMPION_ALIAS, version)


def pareto_front(table: dict[str, dict], speed_key: str) -> list[str]:
    """The candidates no other beats on every count at once: at least as fast
    (speed_key), as good (quality) and as small, and strictly better on one."""
    def dominates(a: dict, b: dict) -> bool:
        no_worse = a[speed_key] <= b[speed_key] and a["quality"] >= b["quality"] and a["size_bytes"] <= b["size_bytes"]
        better = a[speed_key] < b[speed_key] or a["quality"] > b["quality"] or a["size_bytes"] < b["size_bytes"]
        return no_worse and better

    return [n for n, row in table.items() if not any(dominates(other, row) for m, other in table.items() if m != n)]


def versus(candidates: list[dict], champion: str) -> dict:
    """The headline: how many times faster the champion is than the reference
    at every latency key timed (same process, same runtime), its size share and
    its quality drop in points."""
    rows = {row["name"]: row for row in candidates}
    ours, ref = rows[champion], rows[REFERENCE]
    return {
        "speedup": {key: round(ref[key] / ours[key], 2) for key in sorted(ours)
                    if re.fullmatch(r"latency_ms_b\d+_t\d+", key) and ours[key]},
        "size_ratio": round(ours["size_bytes"] / ref["size_bytes"], 4),
        "quality_drop_points": round(100 * (_quality(ref) - _quality(ours)), 2),
    }


def headline(table: dict[str, dict], champion: str, speed_key: str, version: str, task: str) -> dict:
    """The champion in a few numbers (reports/metrics.json, what `dvc metrics show`
    prints): its quality, its speed against the reference in the same runtime,
    its size and its registry version. Strings and per-candidate rows stay in
    reports/selection.json, so the table fits a terminal."""
    ours, ref = table[champion], table[REFERENCE]
    keys = ("r2", "rmse") if task == "regression" else ("macro_f1", "accuracy", "ece")
    return {**{key: round(ours[key], 4) for key in keys if ours.get(key) is not None},
            "quality_drop": round(ref["quality"] - ours["quality"], 4),
            "latency_ms": round(ours[speed_key], 4),
            "speedup": round(ref[speed_key] / ours[speed_key], 2),
            "size_kb": round(ours["size_bytes"] / 1024, 1),
            "version": int(version)}


def write_compression_report(champion: str, table: dict[str, dict], meta: ProcessedMeta, params: SelectParams) -> None:
    """reports/compression.json and the Pareto plot: latency against quality,
    marker area by file size, the non-dominated front and the quality budget."""
    from tasks.evaluation import plots

    export = read_json(paths.EXPORT_REPORT, "export report")
    candidates = []
    for name, row in table.items():
        model, precision = name.rsplit(".", 1)
        candidates.append({"name": name, "path": str(paths.ONNX_DIR / f"{name}.onnx"), "precision": precision,
                           "parameters": export.get(model, {}).get("parameters"),
                           "size_bytes": file_size(paths.ONNX_DIR / f"{name}.onnx"), **row})
    front = pareto_front(table, params.speed_key)
    floor = _quality(table[REFERENCE]) - params.max_f1_drop
    write_json(paths.COMPRESSION_REPORT, {"champion": champion, "task": meta.task, "speed_key": params.speed_key,
                                          "reference": REFERENCE, "quality_floor": floor, "pareto_front": front,
                                          "champion_vs_reference": versus(candidates, champion),
                                          "candidates": candidates})
    plots.pareto(candidates, champion, "R^2" if meta.task == "regression" else "macro-F1", params.speed_key, front,
                 floor, paths.PARETO_PLOT)


def main() -> None:
    all_params = load_params(paths.PARAMS, SECTIONS)
    params = all_params.select
    evaluation = read_json(paths.EVALUATION_REPORT, "evaluation report")
    meta = read_meta()
    champion, table = select_champion(evaluation["candidates"], params)
    source = paths.ONNX_DIR / f"{champion}.onnx"
    check_artifact(source)

    from tasks.core.tracking import configure

    configure(all_params.mlflow)
    x, y = load_split("test")
    current = current_champion(params, x, y, meta)
    baseline = current.quality if current is not None else None
    failures = gate_failures(table[champion], params, baseline, meta.task)
    if failures:
        version = register(source, champion, table[champion], meta, params, all_params.mlflow, passed=False, test_x=x)
        raise DistilleryError(
            f"evaluation gate failed for {champion} (registered as version {version} without the "
            f"'{CHAMPION_ALIAS}' alias; nothing promoted):\n  - " + "\n  - ".join(failures)
        )
    sha256 = sha256_file(source)
    unchanged = current is not None and current.sha256 == sha256
    earlier = current.version if unchanged else registered_version(params, sha256)
    if not earlier:
        print(f"select: registering {champion} in MLflow as '{params.registered_model}' (pyfunc, signature, input "
              "example, model card)", flush=True)
    version = earlier or register(source, champion, table[champion], meta, params, all_params.mlflow, passed=True, test_x=x)
    with atomic_path(paths.CHAMPION) as tmp:
        shutil.copyfile(source, tmp)
    moves = params.promote and not unchanged
    selection = {
        "champion": champion,
        "reference": REFERENCE,
        "max_f1_drop": params.max_f1_drop,
        "speed_key": params.speed_key,
        "registered_model": params.registered_model,
        "registered_version": version,
        "promoted": bool(params.promote),
        "task": meta.task,
        "previous_champion_quality": baseline,
        "candidates": table,
    }
    write_json(paths.SELECTION, selection)
    write_json(paths.METRICS, headline(table, champion, params.speed_key, version, meta.task))
    write_compression_report(champion, table, meta, params)
    card = model_card(selection, read_json(paths.COMPRESSION_REPORT, "compression report"), version,
                      params.registered_model)
    write_text(paths.MODEL_CARD, card)
    describe(params.registered_model, version, card)
    c = table[champion]
    quality_name = "R^2" if meta.task == "regression" else "macro-F1"
    ece = f", ECE {c['ece']:.4f}" if c.get("ece") is not None else ""
    if unchanged:
        registry = f"Same file as `{params.registered_model}` version {version}, already `{CHAMPION_ALIAS}`: no new version."
    elif earlier and moves:
        registry = (f"Same file as `{params.registered_model}` version {version}, registered before: no new version; "
                    f"alias `{CHAMPION_ALIAS}` moved to it.")
    elif earlier:
        registry = (f"Same file as `{params.registered_model}` version {version}, registered before: no new version; "
                    f"the alias `{CHAMPION_ALIAS}` did not move (`select.promote: false`).")
    elif moves:
        registry = f"Registered as `{params.registered_model}` version {version} with alias `{CHAMPION_ALIAS}`."
    else:
        registry = (f"Registered as `{params.registered_model}` version {version}; the alias `{CHAMPION_ALIAS}` "
                    "did not move (`select.promote: false`).")
    write_summary(
        "select",
        f"Champion **{champion}** (fastest by {params.speed_key} within {params.max_f1_drop} "
        f"{quality_name} of {REFERENCE}): {quality_name} {c['quality']:.4f}{ece}, {c['size_bytes']:,} bytes, "
        f"{c[params.speed_key]:.3f} ms ({params.speed_key}, median of interleaved rounds), "
        f"{table[REFERENCE][params.speed_key] / c[params.speed_key]:.2f}x the speed of {REFERENCE} in the same "
        f"runtime.\n\n"
        f"Gate passed (previous champion on this test split: "
        f"{f'{baseline:.4f}' if baseline is not None else 'none comparable'}). {registry}\n\n"
        + markdown_table([{"candidate": n, **{k: v for k, v in r.items() if not k.endswith(("_p10", "_p90"))}}
                          for n, r in table.items()]),
    )
    if moves:  # last: production follows the alias, so everything it points at is written first
        promote(params, version)


if __name__ == "__main__":
    run_cli(main)
