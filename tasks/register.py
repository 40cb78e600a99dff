"""Stage 11, register: the champion select chose, checked against the MLflow
registry every run.

The registry is a side effect DVC cannot see: after `dvc pull`, a new
MLFLOW_TRACKING_URI or a run restored from DVC's run cache, select's outputs
are there but the registry may hold nothing. So this stage is
`always_changed` in dvc.yaml (never restored from the run cache): every `make
run`, `dvc repro`, `dvc exp run` and worker run asks the registry. In order:

1. the gate, on this test split: clearly above the trivial baseline
   (`select.min_gain_over_trivial`), within `select.max_quality_drop` of the
   boosted baseline (tables), the optional absolute floors, calibration, and
   no worse than the current champion;
2. a complete version of this very file (its sha256) is reused; otherwise one
   is created with every tag at once (provenance, gate verdict, sha256), so a
   version without them never exists; a failure after creation deletes it;
3. the model card (the version's MLflow description too) and the headline
   metrics are written, with the version the registry answered;
4. last, the alias `champion` moves (`select.promote`; by default not under
   `dvc exp run` once the model has a champion), since production follows it.

A failed gate registers the version without the alias and fails the stage.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from tasks.contracts import reports
from tasks.contracts.dataset import read_meta as read_dataset_meta
from tasks.contracts.onnx import answer_output
from tasks.contracts.processed import ProcessedMeta, load_split, read_meta
from tasks.contracts.registry import (
    CHAMPION_ALIAS,
    GATE_TAG,
    ONNX_ARTIFACT,
    SHA256_TAG,
    alias_version,
    complete_versions,
    lineage_tags,
    missing_provenance,
    onnx_files,
)
from tasks.contracts.reports import BOOSTED_BASELINE, TRIVIAL, Baseline, CompressionReport, Selection
from tasks.core import paths
from tasks.core.errors import DistilleryError, run_cli
from tasks.core.io import write_json, write_text
from tasks.core.params import MlflowParams, SelectParams, load_params, model_name
from tasks.core.provenance import sha256_file
from tasks.core.report import write_summary
from tasks.core.task import task_of
from tasks.evaluation.card import dvc_hashes, model_card, params_hash
from tasks.evaluation.metrics import task_metrics
from tasks.onnx.runtime import check_artifact, read_metadata, run_batches

SECTIONS = ("select",)
# The registered model's code (deploy/pyfunc.py and what it runs), found as files: a stage does not import deploy/.
DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
# What the registered pyfunc model needs to load and run (deploy/pyfunc.py), listed: inference is slow.
PYFUNC_REQUIREMENTS = ["mlflow", "onnxruntime", "onnx", "numpy", "pandas", "orjson", "scikit-learn", "PyYAML"]


def _quality(result: dict) -> float:
    """macro-F1 for classifiers, R^2 for regression (evaluate's `quality`)."""
    return result.get("quality", result.get("macro_f1"))


@dataclass(frozen=True)
class Champion:
    """The model holding the alias now."""

    version: str
    sha256: str
    quality: Optional[float]  # on this test split; None when it is not comparable (other task, classes, inputs)


def current_champion(registered_model: str, x: np.ndarray, y: np.ndarray, meta: ProcessedMeta) -> Optional[Champion]:
    """The version now holding the `champion` alias, and its quality measured on
    this test split (as TFX's evaluator compares against its baseline). None
    when there is no champion yet."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        version = MlflowClient().get_model_version_by_alias(registered_model, CHAMPION_ALIAS)
        folder = Path(mlflow.artifacts.download_artifacts(f"models:/{registered_model}/{version.version}"))
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
    if (
        tuple(metadata.classes) != meta.classes
        or metadata.task != meta.task
        or tuple(signature.input_shape) != tuple(x.shape[1:])
    ):
        return champion
    outputs = run_batches(sess, x, output=answer_output(meta.task))
    if task_of(meta.task).regression:
        outputs = outputs.ravel()
    quality = task_metrics(
        meta.task,
        outputs,
        y,
        list(meta.classes),
        probabilities=not task_of(meta.task).regression,
        threshold=metadata.threshold,
    )["quality"]
    return Champion(champion.version, champion.sha256, quality)


def gate_failures(
    candidate: dict,
    params: SelectParams,
    baseline: float | None,
    task: str = "multiclass",
    baselines: Optional[dict[str, Baseline]] = None,
) -> list[str]:
    """Every threshold the candidate misses, with the amount it misses by: the
    trivial baseline it must beat clearly, the boosted reference it must stay
    within the budget of, the optional absolute floors, calibration, and the
    current champion (`baseline`, its quality on this test split)."""
    failures = []
    quality = _quality(candidate)
    name, floor = task_of(task).quality_metric, getattr(params, task_of(task).gate_floor)
    baselines = baselines or {}
    trivial = baselines.get(TRIVIAL)
    if trivial is not None and quality < trivial.quality + params.min_gain_over_trivial:
        failures.append(
            f"{name} {quality:.4f} does not beat the trivial baseline, {trivial.model} ({name} "
            f"{trivial.quality:.4f} on the same test split), by select.min_gain_over_trivial "
            f"{params.min_gain_over_trivial} (gain {quality - trivial.quality:+.4f}): the features may carry "
            "no signal about the target; check data.target and the columns"
        )
    boosted = baselines.get(BOOSTED_BASELINE)
    if boosted is not None and quality < params.quality_floor(boosted.quality):
        failures.append(
            f"{name} {quality:.4f} is {boosted.quality - quality:.4f} below the boosted baseline, {boosted.model} "
            f"({boosted.quality:.4f}), more than select.max_quality_drop {params.max_quality_drop} of it "
            f"(at least {params.quality_floor(boosted.quality):.4f})"
        )
    if floor is not None and quality < floor:
        failures.append(f"{name} {quality:.4f} < select.min_{name} {floor} (short by {floor - quality:.4f})")
    if candidate.get("ece") is not None and candidate["ece"] > params.max_ece:
        failures.append(
            f"ece {candidate['ece']:.4f} > select.max_ece {params.max_ece} "
            f"(over by {candidate['ece'] - params.max_ece:.4f})"
        )
    if baseline is not None and quality < baseline - params.max_drop_vs_champion:
        drop = baseline - quality
        failures.append(
            f"{name} {quality:.4f} is {drop:.4f} below the current champion's "
            f"{baseline:.4f}, more than select.max_drop_vs_champion {params.max_drop_vs_champion}"
        )
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
        columns = list(encoder.columns)  # every raw column a row carries (numbers, yes/no, dates, categories)
        schema = Schema([ColSpec(AnyType(), name, required=False) for name in columns])
        example = pd.DataFrame([{name: None for name in columns}])
        return ModelSignature(inputs=schema), example
    size = int(np.prod(signature.input_shape))
    example = np.asarray(test_x[:1], np.float32).reshape(1, size)
    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, size))])), example


def provenance_tags(path: Path, name: str, scores: dict, meta: ProcessedMeta, passed: bool) -> dict[str, str]:
    """Every tag a version carries from birth: where it came from and what it
    scored (contracts.registry.REQUIRED_TAGS among them), and dvc.lock's hash
    of every input, keyed so that MLflow accepts any data path."""
    metadata = read_metadata(path)
    tags = {
        "git_commit": metadata.git_commit,
        "data_hash": metadata.data_hash,
        "candidate": name,
        SHA256_TAG: sha256_file(path),
        GATE_TAG: "passed" if passed else "failed",
        "quality": f"{_quality(scores):.6f}",
        "task": meta.task,
        # Lineage: how many labelled production rows trained it, from which snapshot.
        "production_rows": str(meta.production_rows),
    }
    if meta.production_snapshot:
        tags["production_snapshot"] = meta.production_snapshot
    # Lineage (python -m tasks.trace): the settings, and dvc.lock's hash of every input the stages used.
    if paths.PARAMS.exists():  # the stage runs in a project; register() alone may not
        tags["params_hash"] = params_hash()
    tags.update(lineage_tags(dvc_hashes(everything=True)))
    if scores.get("ece") is not None:
        tags["ece"] = f"{scores['ece']:.6f}"
    missing = missing_provenance(tags)
    if missing:
        raise DistilleryError(f"{path}: its metadata_props lack {missing}; export it again (dvc repro export)")
    return tags


def register(
    path: Path,
    name: str,
    scores: dict,
    meta: ProcessedMeta,
    registered_model: str,
    mlflow_cfg: MlflowParams,
    passed: bool,
    test_x: np.ndarray,
) -> str:
    """Log the ONNX as an MLflow model (as code: nothing pickled) and create a
    version with all its tags at once. The alias is not touched here (promote)."""
    import mlflow

    from tasks.core.tracking import mlflow_run, numbers

    tags = provenance_tags(path, name, scores, meta, passed)
    with mlflow_run(mlflow_cfg, "register", tags):
        mlflow.log_metrics(numbers(scores))
        if Path("dvc.lock").exists():  # the lock as it stood: restores this data even if it is never committed
            mlflow.log_artifact("dvc.lock", "lineage")
        signature, example = signature_and_example(path, test_x)
        with warnings.catch_warnings():
            # Our predict takes no type hints on purpose (MLflow would validate rows by them, before the
            # server's own parsing that names the row and column): its advice to add them is not the user's.
            # MLflow raises it under a `simplefilter("once")` of its own, which outranks any filter set
            # here, so it is dropped where warnings are shown.
            warnings.showwarning = _without_type_hint_advice(warnings.showwarning)
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(DEPLOY / "pyfunc_model.py"),  # models from code: nothing pickled
                artifacts={ONNX_ARTIFACT: str(path)},
                code_paths=[str(DEPLOY), str(DEPLOY.parent / "tasks")],
                signature=signature,
                input_example=example,
                pip_requirements=PYFUNC_REQUIREMENTS,  # skip slow dependency inference
            )
    # One call creates the version and its tags together: no version is ever seen without its provenance.
    return str(mlflow.register_model(info.model_uri, registered_model, tags=tags).version)


def _without_type_hint_advice(show: Any) -> Any:
    def shown(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001 - warnings' own signature
        if "type hints to the `predict` method" not in str(message):
            show(message, category, filename, lineno, file, line)

    return shown


def describe(registered_model: str, version: str, card: str) -> None:
    """The model card as the version's description: what MLflow's UI shows on its page."""
    from mlflow import MlflowClient

    MlflowClient().update_model_version(registered_model, version, description=card)


def delete(registered_model: str, version: str) -> None:
    """Undo a version whose registration did not finish (best effort: the registry may be what failed)."""
    from mlflow import MlflowClient

    try:
        MlflowClient().delete_model_version(registered_model, version)
    except Exception as err:  # noqa: BLE001 - the original failure is the one to report
        print(f"register: could not delete the unfinished version {version} ({err})", flush=True)


def promote(registered_model: str, version: str) -> None:
    from mlflow import MlflowClient

    MlflowClient().set_registered_model_alias(registered_model, CHAMPION_ALIAS, version)


def headline(selection: Selection, version: str) -> dict:
    """The champion in a few numbers (reports/metrics.json, what `dvc metrics show`
    prints): its quality, its speed against the reference in the same runtime,
    its size and its registry version. Strings and per-candidate rows stay in
    reports/selection.json, so the table fits a terminal."""
    ours = selection.ours
    keys = task_of(selection.task).headline
    return {
        **{key: round(ours[key], 4) for key in keys if ours.get(key) is not None},
        "quality_drop": round(selection.candidates[selection.best]["quality"] - ours["quality"], 4),  # below the best
        **{f"{b.name}_quality": round(b.quality, 4) for b in selection.baselines.values()},
        "latency_ms": round(ours[selection.speed_key], 4),
        "speedup": round(selection.speedup, 2),
        "size_kb": round(ours["size_bytes"] / 1024, 1),
        "version": int(version),
    }


def registered_model_of(params: SelectParams) -> str:
    """select.registered_model, or distillery-<the data's name> (ingest recorded it)."""
    if params.registered_model:
        return params.registered_model
    dataset = read_dataset_meta(paths.INGESTED)
    return model_name(dataset.name or dataset.source)


def main() -> None:
    from mlflow import MlflowClient

    from tasks.core.tracking import configure

    all_params = load_params(paths.PARAMS, SECTIONS)
    params = all_params.select
    selection = reports.read(Selection)
    champion, scores = selection.champion, selection.ours
    meta = read_meta()
    check_artifact(paths.CHAMPION)
    name = registered_model_of(params)
    configure(all_params.mlflow)
    client = MlflowClient()
    x, y = load_split("test")
    sha256 = sha256_file(paths.CHAMPION)
    current = current_champion(name, x, y, meta)
    baseline = current.quality if current is not None and current.sha256 != sha256 else None
    failures = gate_failures(scores, params, baseline, meta.task, selection.baselines)
    passed = not failures
    existing = complete_versions(client, name, sha256, "passed" if passed else "failed")
    created = not existing
    if created:
        print(
            f"register: registering {champion} in MLflow as '{name}' (pyfunc, signature, input example, "
            f"model card) at {os.environ.get('MLFLOW_TRACKING_URI') or all_params.mlflow.resolved_uri()}",
            flush=True,
        )
    version = (
        str(existing[0].version)
        if existing
        else register(paths.CHAMPION, champion, scores, meta, name, all_params.mlflow, passed, x)
    )
    if failures:
        raise DistilleryError(
            f"evaluation gate failed for {champion} (registered as '{name}' version {version} without the "
            f"'{CHAMPION_ALIAS}' alias; nothing promoted):\n  - " + "\n  - ".join(failures)
        )
    current_alias = alias_version(client, name)
    moves = params.promotes(has_champion=current_alias is not None) and current_alias != version
    holds = moves or current_alias == version
    try:
        card = model_card(selection, reports.read(CompressionReport), version, name, promoted=holds)
        write_text(paths.MODEL_CARD, card)
        describe(name, version, card)
        write_json(paths.METRICS, headline(selection, version))
    except BaseException:
        if created:
            delete(name, version)
        raise
    write_summary("register", registry_sentence(name, version, created, moves, holds, baseline))
    if moves:  # last: production follows the alias, so everything it points at is written first
        promote(name, version)


def registry_sentence(
    name: str, version: str, created: bool, moves: bool, holds: bool, baseline: Optional[float]
) -> str:
    gate = (
        f"Gate passed (previous champion on this test split: "
        f"{f'{baseline:.4f}' if baseline is not None else 'none comparable'}). "
    )
    what = (
        f"Registered as `{name}` version {version}"
        if created
        else f"Same file as `{name}` version {version}, registered before: no new version"
    )
    alias = (
        f"; alias `{CHAMPION_ALIAS}` moved to it."
        if moves
        else f"; already `{CHAMPION_ALIAS}`."
        if holds
        else f"; the alias `{CHAMPION_ALIAS}` did not move (`select.promote` is false, or this is `dvc exp run` and the model has a champion)."
    )
    return gate + what + alias


if __name__ == "__main__":
    run_cli(main)
