"""The champion's model card (Mitchell et al. 2019, "Model Cards for Model
Reporting"): reports/model_card.md, and the registered version's MLflow
description. Written by register from the reports the earlier stages left, so
every figure in it is one a stage measured; nothing here measures anything.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Optional

import yaml

from tasks.core import paths
from tasks.core.io import read_json
from tasks.core.report import markdown_table

FEW_SAMPLES = 10  # a calibration bin with fewer test samples says little about calibration
LINEAGE_OUTS = ("data/ingested", "data/validated", "data/processed")  # the data hashes dvc.lock records


def params_hash(path: Path = paths.PARAMS) -> str:
    """sha256 of params.yaml as parsed: equal settings hash equally, whatever the comments and key order."""
    parsed = yaml.safe_load(Path(path).read_text()) or {}
    return hashlib.sha256(yaml.safe_dump(parsed, sort_keys=True).encode()).hexdigest()


def dvc_hashes(lock: Path = Path("dvc.lock"), everything: bool = False) -> dict[str, str]:
    """The md5 dvc.lock records for the data outputs in LINEAGE_OUTS, or with
    `everything` for every dep and out of every stage (data and code). Stages
    write dvc.lock one by one, so select sees those of every earlier stage."""
    if not lock.exists():
        return {}
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    found = {}
    for stage in stages.values():
        for entry in [*stage.get("deps", []), *stage.get("outs", [])]:
            if (everything or entry.get("path") in LINEAGE_OUTS) and entry.get("md5"):
                found[entry["path"]] = entry["md5"]
    return found


UNKNOWN = "not recorded (the stage that measures it has not run here)"


def _optional(path: Path) -> dict:
    """A report of an earlier stage; {} when select runs without it (its own CLI on a partial project)."""
    return read_json(path, path.name) if path.exists() else {}


def _f(value: Optional[float], digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def compression_steps(candidates: list[dict], speed_key: str, champion: str) -> list[dict]:
    """teacher -> student -> pruned -> int8: each step's size, speed and quality,
    the path that ends at the champion first."""
    rows = {row["name"]: row for row in candidates}
    model = champion.rsplit(".", 1)[0]
    chain = ["teacher.fp32"]
    if model.startswith("student"):
        chain.append("student.fp32")
    if model.endswith("_pruned"):
        chain.append(f"{model}.fp32")
    chain.append(champion)
    steps = []
    for name in dict.fromkeys(chain):
        if name not in rows:
            continue
        row = rows[name]
        steps.append({"step": name, "parameters": row.get("parameters"), "size_bytes": row["size_bytes"],
                      f"{speed_key}": round(row[speed_key], 4), "quality": round(row["quality"], 4)})
    return steps


def model_card(selection: dict, compression: dict, version: str, registered_model: str, promoted: bool) -> str:
    """The card as Markdown, from select's own record and the reports on disk."""
    from tasks.contracts.dataset import read_meta as read_dataset_meta
    from tasks.contracts.processed import read_meta

    champion, task, speed_key = selection["champion"], selection["task"], selection["speed_key"]
    ours = selection["candidates"][champion]
    report = read_json(paths.EVALUATION_REPORT, "evaluation report")
    evaluation = report["candidates"][champion]
    validation = _optional(paths.VALIDATION_REPORT)
    quality = _optional(paths.DATA_QUALITY_REPORT)
    export = read_json(paths.EXPORT_REPORT, "export report").get(champion.rsplit(".", 1)[0], {})
    meta = read_meta()
    dataset = read_dataset_meta(paths.INGESTED) if (paths.INGESTED / paths.META).exists() else None
    source = f"`{dataset.source}`" + (f" (`{dataset.origin}`)" if dataset.origin else "") if dataset else UNKNOWN
    regression = task == "regression"
    quality_name = "R^2" if regression else "macro-F1"
    speedup = selection["candidates"]["teacher.fp32"][speed_key] / ours[speed_key]

    lines = [f"# Model card: {registered_model} version {version} ({champion})", ""]
    lines += ["## Model details", "",
              f"- **Champion**: `{champion}`, {task}, {ours['size_bytes']:,} bytes, ONNX (`models/champion.onnx`), "
              f"served through onnxruntime (`make serve`).",
              f"- **Quality**: {quality_name} {_f(ours['quality'])}"
              + ("" if regression else f", accuracy {_f(ours.get('accuracy'))}, ECE {_f(ours.get('ece'))}") + ".",
              f"- **Speed**: {ours[speed_key]:.3f} ms ({speed_key}), {speedup:.2f}x the speed of teacher.fp32 in the "
              "same runtime (onnxruntime against onnxruntime, threads pinned, median of interleaved rounds).",
              f"- **Registry**: MLflow model `{registered_model}` version {version}"
              + (", alias `champion`." if promoted else " (not promoted: no alias)."),
              ""]
    classes = ", ".join(f"`{c}`" for c in meta.classes) if meta.classes else "none (regression)"
    lines += ["## Intended use", "",
              f"- Predicts {'a number' if regression else 'one of the classes ' + classes} for one "
              f"{meta.kind} input of the same shape and columns as the training data ({source}"
              + (f", target `{dataset.target}`" if dataset and dataset.target else "") + ").",
              "- Meant for inputs drawn from the training distribution: the monitor (`make monitor`) tests "
              "production windows for drift and retrains when they move away.",
              "- Not meant for decisions the limitations below make unsafe, nor for inputs of another kind.", ""]
    balance = quality.get("balance", {})
    kept = balance.get("kept", balance)
    lines += ["## Training data", "",
              f"- **Source**: {source}, data hash `{meta.data_hash[:16]}`.",
              (f"- **Rows**: {validation['rows_in']:,} in, {validation['rows_valid']:,} valid, "
               f"{validation['rows_quarantined']:,} quarantined (`data/quarantine/`); " if validation else
               f"- **Rows**: {UNKNOWN}; ")
              + f"{meta.production_rows:,} labelled production rows"
              + (f" from snapshot `{meta.production_snapshot}`" if meta.production_snapshot else "") + ".",
              f"- **Split** (rows): " + ", ".join(f"{name} {sum(counts):,}" for name, counts in meta.counts.items())
              + f"; resampling `{meta.resample}`.",
              ]
    if kept.get("imbalance_ratio") is not None:
        lines.append(f"- **Class balance** (rows kept): imbalance ratio {kept['imbalance_ratio']:.2f}, "
                     f"normalised entropy {_f(kept.get('normalized_entropy'), 3)}.")
    labels = _optional(paths.LABEL_ISSUES_REPORT)
    if labels and not labels.get("skipped_reason"):
        lines.append(f"- **Label errors** (confident learning): {labels['suspects']:,} likely among "
                     f"{labels['checked_rows']:,} rows ({labels['flagged_rate']:.1%}, estimated rate "
                     f"{labels['estimated_rate']:.1%}); action `{labels['action']}`: {labels['quarantined']:,} "
                     f"quarantined, {labels['relabelled']:,} relabelled (`reports/label_issues.json`).")
    if validation:
        lines.append(f"- **Gate**: Great Expectations suite `{validation['suite']}`: "
                     f"{'passed' if validation['success'] else 'failed'} (Data Docs: `reports/data_docs/index.html`).")
    lines.append("")
    test_rows = sum(meta.counts.get("test", []))
    lines += ["## Evaluation data", "",
              f"- The held-out test split: {test_rows:,} rows, stratified, never seen in training, calibration or "
              "selection." + ("" if regression else " Per class (rows): " + ", ".join(
                  f"`{c}` {n}" for c, n in zip(meta.classes, meta.counts.get("test", [])))), ""]
    lines += ["## Metrics", ""]
    if regression:
        lines.append(markdown_table([{k: round(ours[k], 4) for k in ("r2", "rmse", "mae") if ours.get(k) is not None}]))
    else:
        averages = evaluation.get("averages", {})
        lines.append(markdown_table([{"accuracy": round(ours["accuracy"], 4), "macro_f1": round(ours["macro_f1"], 4),
                                      "weighted_f1": round(ours["weighted_f1"], 4),
                                      "macro_precision": round(averages.get("macro", {}).get("precision", 0), 4),
                                      "macro_recall": round(averages.get("macro", {}).get("recall", 0), 4),
                                      "roc_auc_ovr_macro": round(evaluation.get("roc_auc", {}).get("ovr_macro", 0), 4)}]))
        lines += ["", "Per class:", "",
                  markdown_table([{"class": c, "precision": round(v["precision"], 4), "recall": round(v["recall"], 4),
                                   "f1": round(v["f1-score"], 4), "support": int(v["support"])}
                                  for c, v in class_scores(evaluation).items()])]
        temperature = export.get("temperature", 1.0)
        why = ("" if temperature != 1.0 else
               f" The temperature stayed at 1: scaling did not lower the validation ECE "
               f"({_f(export.get('val_ece_before'))} before), and it is kept only when it does.")
        lines += ["", f"Calibration: temperature {temperature:.3f}; test ECE {_f(ours.get('ece_before_scaling'))} "
                      f"before scaling, {_f(ours.get('ece'))} after; MCE {_f(ours.get('mce'))}.{why}"]
    slices = report.get("slices") or {}
    champion_slices = (slices.get("candidates") or {}).get(champion)
    if champion_slices:
        lines += ["", "Per slice:", "", markdown_table(_slice_rows(champion_slices))]
    lines.append("")
    lines += ["## Compression history", "",
              "Each step as evaluate measured it on the test split, in the same onnxruntime process:", "",
              markdown_table(compression_steps(compression["candidates"], speed_key, champion)), ""]
    lines += ["## Limitations", ""] + [f"- {item}" for item in limitations(evaluation, quality, regression)] + [""]
    hashes = dvc_hashes()
    lines += ["## Lineage", "",
              f"- git commit `{_git_commit_of(champion)}`",
              f"- params hash (sha256 of params.yaml as parsed) `{params_hash()[:16]}`",
              f"- data hash (the ONNX's metadata) `{meta.data_hash[:16]}`"]
    lines += [f"- dvc.lock `{path}` md5 `{md5}`" for path, md5 in hashes.items()]
    lines.append("- `git checkout <commit> && dvc checkout` restores this data (`dvc pull` first with a remote).")
    return "\n".join(lines) + "\n"


def _git_commit_of(champion: str) -> str:
    from tasks.onnx.runtime import read_metadata

    return read_metadata(paths.ONNX_DIR / f"{champion}.onnx").git_commit


def _slice_rows(slices: Any) -> list[dict]:
    rows = []
    for feature, groups in (slices.items() if isinstance(slices, dict) else []):
        for group, scores in (groups.items() if isinstance(groups, dict) else []):
            if isinstance(scores, dict):
                rows.append({"slice": f"{feature}={group}",
                             **{k: round(v, 4) if isinstance(v, float) else v for k, v in scores.items()
                                if isinstance(v, (int, float))}})
    return rows


def class_scores(evaluation: dict) -> dict[str, dict]:
    """evaluate's per-class rows without the averages sklearn's report puts beside them."""
    return {c: v for c, v in evaluation.get("per_class", {}).items() if isinstance(v, dict) and "recall" in v
            and not c.endswith(" avg")}


def limitations(evaluation: dict, quality: dict, regression: bool) -> list[str]:
    """What a user of the model should know: its weakest class, the calibration
    bins too thin to trust, the data's own caveats."""
    found = []
    per_class = class_scores(evaluation)
    if per_class and not regression:
        weakest, scores = min(per_class.items(), key=lambda item: item[1]["recall"])
        found.append(f"Lowest recall: class `{weakest}`, {scores['recall']:.3f} on {int(scores['support'])} test "
                     "rows; its errors are the most likely.")
    bins = [b for b in evaluation.get("reliability", []) if b.get("count")]
    thin = [b for b in bins if b["count"] < FEW_SAMPLES]
    if bins:
        total = sum(b["count"] for b in bins)
        fullest = max(bins, key=lambda b: b["count"])
        found.append(f"Calibration: {len(thin)} of {len(bins)} non-empty confidence bins hold fewer than "
                     f"{FEW_SAMPLES} test samples, and {fullest['count']} of {total} fall in "
                     f"[{fullest['lower']:.2f}, {fullest['upper']:.2f}]: the ECE rests mostly on that bin.")
    uniqueness = quality.get("uniqueness", {})
    if uniqueness.get("near_duplicate_fraction"):
        found.append(f"Near-duplicates: {uniqueness['near_duplicate_fraction']:.1%} of the rows have a near twin, "
                     "so test scores may be optimistic.")
    return found or ["None measured beyond the metrics above."]
