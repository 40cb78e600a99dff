"""The champion's model card (Mitchell et al. 2019, "Model Cards for Model
Reporting"): reports/model_card.md, and the registered version's MLflow
description. Written by register from the reports the earlier stages left, so
every figure in it is one a stage measured; nothing here measures anything.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from tasks.contracts import reports
from tasks.contracts.dataset import DatasetMeta
from tasks.contracts.dataset import read_meta as read_dataset_meta
from tasks.contracts.processed import ProcessedMeta, read_meta
from tasks.contracts.reports import (
    CandidateId,
    CompressionReport,
    EvaluationReport,
    Selection,
    ValidationReport,
)
from tasks.core import paths
from tasks.core.io import read_json
from tasks.core.report import markdown_table
from tasks.core.task import task_of

FEW_SAMPLES = 10  # a calibration bin with fewer test samples says little about calibration
LINEAGE_OUTS = ("data/ingested", "data/validated", "data/processed")  # the data hashes dvc.lock records


def params_hash(path: Path = paths.PARAMS) -> str:
    """sha256 of params.yaml as parsed: equal settings hash equally, whatever the comments and key order."""
    parsed = yaml.safe_load(Path(path).read_text()) or {}
    return hashlib.sha256(yaml.safe_dump(parsed, sort_keys=True).encode()).hexdigest()


def dvc_hashes(lock: Path = Path("dvc.lock"), everything: bool = False, running: str = "register") -> dict[str, str]:
    """The md5 dvc.lock records for the data outputs in LINEAGE_OUTS, or with
    `everything` for every dep and out of every stage (data and code). Stages
    write dvc.lock one by one, so the stage `running` (register: it reads the
    lock) sees those of every earlier stage; its own entry is its previous
    run's, skipped. A path's producing stage is its truth: an out wins over any
    stage's dep of the same path."""
    if not lock.exists():
        return {}
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    found: dict[str, dict[str, str]] = {"deps": {}, "outs": {}}
    for name, stage in stages.items():
        if name == running:
            continue
        for kind, hashes in found.items():
            for entry in stage.get(kind, []):
                if (everything or entry.get("path") in LINEAGE_OUTS) and entry.get("md5"):
                    hashes[entry["path"]] = entry["md5"]
    return {**found["deps"], **found["outs"]}


UNKNOWN = "not recorded (the stage that measures it has not run here)"


def _optional(path: Path) -> dict:
    """A report of an earlier stage; {} when select runs without it (its own CLI on a partial project)."""
    return read_json(path, path.name) if path.exists() else {}


def _f(value: Optional[float], digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def compression_steps(candidates: Sequence[dict], speed_key: str, champion: str) -> list[dict]:
    """teacher -> student -> pruned -> int8: each step's size, speed and quality,
    the path that ends at the champion first."""
    rows = {row["name"]: row for row in candidates}
    steps = []
    for step in CandidateId.parse(champion).lineage():
        if step.name not in rows:
            continue
        row = rows[step.name]
        steps.append(
            {
                "step": step.name,
                "parameters": row.get("parameters"),
                "size_bytes": row["size_bytes"],
                f"{speed_key}": round(row[speed_key], 4),
                "quality": round(row["quality"], 4),
                # the share of test rows where it decides as the teacher does (single-label tasks)
                **(
                    {"teacher_agreement": round(row["teacher_top1_agreement"], 4)}
                    if "teacher_top1_agreement" in row
                    else {}
                ),
            }
        )
    return steps


@dataclass(frozen=True)
class CardInputs:
    """Everything the card says, as the stages left it: read once, here."""

    selection: Selection
    compression: CompressionReport
    evaluation: EvaluationReport
    validation: Optional[ValidationReport]
    quality: dict  # reports/data_quality.json ({} when validate has not run here)
    labels: dict  # reports/label_issues.json
    export: dict  # the champion's model's entry in reports/export.json
    meta: ProcessedMeta
    dataset: Optional[DatasetMeta]

    @property
    def source(self) -> str:
        d = self.dataset
        return f"`{d.source}`" + (f" (`{d.origin}`)" if d.origin else "") if d else UNKNOWN


def card_inputs(selection: Selection, compression: CompressionReport) -> CardInputs:
    export = read_json(paths.EXPORT_REPORT, "export report")
    return CardInputs(
        selection=selection,
        compression=compression,
        evaluation=reports.read(EvaluationReport),
        validation=reports.read_optional(ValidationReport),
        quality=_optional(paths.DATA_QUALITY_REPORT),
        labels=_optional(paths.LABEL_ISSUES_REPORT),
        export=export.get(selection.champion_id.model, {}),
        meta=read_meta(),
        dataset=read_dataset_meta(paths.INGESTED) if (paths.INGESTED / paths.META).exists() else None,
    )


def model_card(
    selection: Selection, compression: CompressionReport, version: str, registered_model: str, promoted: bool
) -> str:
    """The card as Markdown, from select's own record and the reports on disk."""
    given = card_inputs(selection, compression)
    lines = [f"# Model card: {registered_model} version {version} ({selection.champion})", ""]
    for section in (
        _details(given, version, registered_model, promoted),
        _intended_use(given),
        _training_data(given),
        _evaluation_data(given),
        _metrics(given),
        _compression(given),
        ["## Limitations", ""]
        + [
            f"- {item}"
            for item in limitations(
                given.evaluation.candidates[selection.champion], given.quality, task_of(selection.task).regression
            )
        ]
        + [""],
        _lineage(given),
    ):
        lines += section
    return "\n".join(lines) + "\n"


def _quality_name(selection: Selection) -> str:
    return task_of(selection.task).quality_label


def _details(given: CardInputs, version: str, registered_model: str, promoted: bool) -> list[str]:
    s, ours = given.selection, given.selection.ours
    regression = task_of(s.task).regression
    return [
        "## Model details",
        "",
        f"- **Champion**: `{s.champion}`, {s.task}, {ours['size_bytes']:,} bytes, ONNX (`models/champion.onnx`), "
        "served through onnxruntime (`make serve`).",
        f"- **Quality**: {_quality_name(s)} {_f(ours['quality'])}"
        + ("" if regression else f", accuracy {_f(ours.get('accuracy'))}, ECE {_f(ours.get('ece'))}")
        + ".",
        f"- **Speed**: {ours[s.speed_key]:.3f} ms ({s.speed_key}), {s.speedup:.2f}x the speed of "
        f"{s.reference} in the same runtime (onnxruntime against onnxruntime, threads pinned, median of "
        "interleaved rounds).",
        f"- **Registry**: MLflow model `{registered_model}` version {version}"
        + (", alias `champion`." if promoted else " (not promoted: no alias)."),
        "",
    ]


def _intended_use(given: CardInputs) -> list[str]:
    meta, dataset = given.meta, given.dataset
    regression = task_of(given.selection.task).regression
    classes = ", ".join(f"`{c}`" for c in meta.classes) if meta.classes else "none (regression)"
    return [
        "## Intended use",
        "",
        f"- Predicts {'a number' if regression else 'one of the classes ' + classes} for one "
        f"{meta.kind} input of the same shape and columns as the training data ({given.source}"
        + (f", target `{dataset.target}`" if dataset and dataset.target else "")
        + ").",
        "- Meant for inputs drawn from the training distribution: the monitor (`make monitor`) tests "
        "production windows for drift and retrains when they move away.",
        "- Not meant for decisions the limitations below make unsafe, nor for inputs of another kind.",
        "",
    ]


def _training_data(given: CardInputs) -> list[str]:
    meta, validation, labels = given.meta, given.validation, given.labels
    balance = given.quality.get("balance", {})
    kept = balance.get("kept", balance)
    lines = [
        "## Training data",
        "",
        f"- **Source**: {given.source}, data hash `{meta.data_hash[:16]}`.",
        (
            f"- **Rows**: {validation.rows_in:,} in, {validation.rows_valid:,} valid, "
            f"{validation.rows_quarantined:,} quarantined (`data/quarantine/`); "
            if validation
            else f"- **Rows**: {UNKNOWN}; "
        )
        + f"{meta.production_rows:,} labelled production rows"
        + (f" from snapshot `{meta.production_snapshot}`" if meta.production_snapshot else "")
        + ".",
        "- **Split** (rows): "
        + ", ".join(f"{name} {sum(counts):,}" for name, counts in meta.counts.items())
        + f"; resampling `{meta.resample}`.",
    ]
    if kept.get("imbalance_ratio") is not None:
        lines.append(
            f"- **Class balance** (rows kept): imbalance ratio {kept['imbalance_ratio']:.2f}, "
            f"normalised entropy {_f(kept.get('normalized_entropy'), 3)}."
        )
    if labels and not labels.get("skipped_reason"):
        lines.append(
            f"- **Label errors** (confident learning): {labels['suspects']:,} likely among "
            f"{labels['checked_rows']:,} rows ({labels['flagged_rate']:.1%}, estimated rate "
            f"{labels['estimated_rate']:.1%}); action `{labels['action']}`: {labels['quarantined']:,} "
            f"quarantined, {labels['relabelled']:,} relabelled (`reports/label_issues.json`)."
        )
    if validation:
        lines.append(
            f"- **Gate**: Great Expectations suite `{validation.suite}`: "
            f"{'passed' if validation.success else 'failed'} (Data Docs: `reports/data_docs/index.html`)."
        )
    return lines + [""]


def _evaluation_data(given: CardInputs) -> list[str]:
    meta = given.meta
    test_rows = sum(meta.counts.get("test", []))
    return [
        "## Evaluation data",
        "",
        f"- The held-out test split: {test_rows:,} rows, stratified, never seen in training, calibration or "
        "selection."
        + (
            ""
            if task_of(given.selection.task).regression
            else " Per class (rows): "
            + ", ".join(f"`{c}` {n}" for c, n in zip(meta.classes, meta.counts.get("test", [])))
        ),
        "",
    ]


def baseline_rows(selection: Selection) -> list[dict]:
    """The champion beside the baselines on the same test split: the trivial one
    it must beat clearly and the boosted one it must stay close to."""
    task = task_of(selection.task)
    keys = [k for k in task.headline if k != "ece"]
    ours = selection.ours
    rows = [{"model": f"champion: {selection.champion}", **{k: round(ours[k], 4) for k in keys if k in ours}}]
    for b in selection.baselines.values():
        rows.append(
            {"model": f"{b.name} baseline: {b.model}", **{k: round(b.metrics[k], 4) for k in keys if k in b.metrics}}
        )
    for row, quality in zip(rows, [ours["quality"], *(b.quality for b in selection.baselines.values())]):
        row[f"vs champion ({task.quality_label})"] = round(quality - ours["quality"], 4)
    return rows


def _metrics(given: CardInputs) -> list[str]:
    s, ours = given.selection, given.selection.ours
    evaluation = given.evaluation.candidates[s.champion]
    lines = ["## Metrics", ""]
    if s.baselines:
        lines += [
            "Beside the baselines (same test split; the gate wants the champion clearly above the trivial one "
            "and within `select.max_quality_drop`, a share, of the best candidate):",
            "",
            markdown_table(baseline_rows(s)),
            "",
        ]
    if task_of(s.task).regression:
        lines.append(markdown_table([{k: round(ours[k], 4) for k in ("r2", "rmse", "mae") if ours.get(k) is not None}]))
    else:
        averages = evaluation.get("averages", {})
        lines.append(
            markdown_table(
                [
                    {
                        "accuracy": round(ours["accuracy"], 4),
                        "macro_f1": round(ours["macro_f1"], 4),
                        "weighted_f1": round(ours["weighted_f1"], 4),
                        "macro_precision": round(averages.get("macro", {}).get("precision", 0), 4),
                        "macro_recall": round(averages.get("macro", {}).get("recall", 0), 4),
                        "roc_auc_ovr_macro": round(evaluation.get("roc_auc", {}).get("ovr_macro", 0), 4),
                    }
                ]
            )
        )
        lines += [
            "",
            "Per class:",
            "",
            markdown_table(
                [
                    {
                        "class": c,
                        "precision": round(v["precision"], 4),
                        "recall": round(v["recall"], 4),
                        "f1": round(v["f1-score"], 4),
                        "support": int(v["support"]),
                    }
                    for c, v in class_scores(evaluation).items()
                ]
            ),
        ]
        temperature = given.export.get("temperature", 1.0)
        why = (
            ""
            if temperature != 1.0
            else f" The temperature stayed at 1: scaling did not lower the validation ECE "
            f"({_f(given.export.get('val_ece_before'))} before), and it is kept only when it does."
        )
        lines += [
            "",
            f"Calibration: temperature {temperature:.3f}; test ECE {_f(ours.get('ece_before_scaling'))} "
            f"before scaling, {_f(ours.get('ece'))} after; MCE {_f(ours.get('mce'))}.{why}",
        ]
    champion_slices = ((given.evaluation.slices or {}).get("candidates") or {}).get(s.champion)
    if champion_slices:
        lines += ["", "Per slice:", "", markdown_table(_slice_rows(champion_slices))]
    return lines + [""]


def _compression(given: CardInputs) -> list[str]:
    s = given.selection
    return [
        "## Compression history",
        "",
        "Each step as evaluate measured it on the test split, in the same onnxruntime process:",
        "",
        markdown_table(compression_steps(given.compression.candidates, s.speed_key, s.champion)),
        "",
    ]


def _lineage(given: CardInputs) -> list[str]:
    lines = [
        "## Lineage",
        "",
        f"- git commit `{_git_commit_of(given.selection.champion)}`",
        f"- params hash (sha256 of params.yaml as parsed) `{params_hash()[:16]}`",
        f"- data hash (the ONNX's metadata) `{given.meta.data_hash[:16]}`",
    ]
    lines += [f"- dvc.lock `{path}` md5 `{md5}`" for path, md5 in dvc_hashes().items()]
    lines.append("- `git checkout <commit> && dvc checkout` restores this data (`dvc pull` first with a remote).")
    return lines


def _git_commit_of(champion: str) -> str:
    from tasks.onnx.runtime import read_metadata

    return read_metadata(paths.ONNX_DIR / f"{champion}.onnx").git_commit


def _slice_rows(slices: Any) -> list[dict]:
    rows = []
    for feature, groups in slices.items() if isinstance(slices, dict) else []:
        for group, scores in groups.items() if isinstance(groups, dict) else []:
            if isinstance(scores, dict):
                rows.append(
                    {
                        "slice": f"{feature}={group}",
                        **{
                            k: round(v, 4) if isinstance(v, float) else v
                            for k, v in scores.items()
                            if isinstance(v, (int, float))
                        },
                    }
                )
    return rows


def class_scores(evaluation: dict) -> dict[str, dict]:
    """evaluate's per-class rows without the averages sklearn's report puts beside them."""
    return {
        c: v
        for c, v in evaluation.get("per_class", {}).items()
        if isinstance(v, dict) and "recall" in v and not c.endswith(" avg")
    }


def limitations(evaluation: dict, quality: dict, regression: bool) -> list[str]:
    """What a user of the model should know: its weakest class, the calibration
    bins too thin to trust, the data's own caveats."""
    found = []
    per_class = class_scores(evaluation)
    if per_class and not regression:
        weakest, scores = min(per_class.items(), key=lambda item: item[1]["recall"])
        found.append(
            f"Lowest recall: class `{weakest}`, {scores['recall']:.3f} on {int(scores['support'])} test "
            "rows; its errors are the most likely."
        )
    bins = [b for b in evaluation.get("reliability", []) if b.get("count")]
    thin = [b for b in bins if b["count"] < FEW_SAMPLES]
    if bins:
        total = sum(b["count"] for b in bins)
        fullest = max(bins, key=lambda b: b["count"])
        found.append(
            f"Calibration: {len(thin)} of {len(bins)} non-empty confidence bins hold fewer than "
            f"{FEW_SAMPLES} test samples, and {fullest['count']} of {total} fall in "
            f"[{fullest['lower']:.2f}, {fullest['upper']:.2f}]: the ECE rests mostly on that bin."
        )
    uniqueness = quality.get("uniqueness", {})
    if uniqueness.get("near_duplicate_fraction"):
        found.append(
            f"Near-duplicates: {uniqueness['near_duplicate_fraction']:.1%} of the rows have a near twin, "
            "so test scores may be optimistic."
        )
    return found or ["None measured beyond the metrics above."]
