"""Stage 10, select: the accuracy-aware choice of the champion.

The champion is the fastest eligible candidate whose quality (macro-F1, R^2
for regression) is within `select.max_quality_drop` (a share: 0.005 = 0.5%)
of the best candidate's (any model, any precision: on tables usually the
boosted one) and within the budgets. It is copied to models/champion.onnx, with the selection record
and the compression report (Pareto front). If none qualifies, the stage fails
with the table. Nothing here touches the registry: that is the register
stage's, which runs every time (tasks/register.py).
"""

from __future__ import annotations

import re
import shutil

from tasks.contracts import reports
from tasks.contracts.processed import ProcessedMeta, read_meta
from tasks.contracts.reports import (
    BOOSTED,
    REFERENCE,
    CandidateId,
    CompressionReport,
    EvaluationReport,
    Selection,
)
from tasks.core import paths
from tasks.core.errors import DistilleryError, run_cli
from tasks.core.io import atomic_path, read_json
from tasks.core.params import SelectParams, load_params
from tasks.core.report import markdown_table, write_summary
from tasks.core.task import task_of
from tasks.onnx.runtime import check_artifact, file_size

SECTIONS = ("select",)
SUMMARY_KEYS = (
    "accuracy",
    "macro_f1",
    "weighted_f1",
    "ece_before_scaling",
    "ece",
    "mce",
    "r2",
    "rmse",
    "mae",
    "size_bytes",
    "int8_top1_agreement",
    "teacher_top1_agreement",
    "int8_max_abs_diff",
)
LATENCY_PREFIX = "latency_ms_"  # evaluate's latencies: latency_ms_b<batch>_t<threads>[_p10|_p90]


def _quality(result: dict) -> float:
    """macro-F1 for classifiers, R^2 for regression (evaluate's `quality`)."""
    return result.get("quality", result.get("macro_f1"))


def best_candidate(candidates: dict[str, dict]) -> str:
    """The candidate of highest quality (ties: the first evaluated)."""
    return max(candidates, key=lambda n: _quality(candidates[n]))


def select_champion(
    candidates: dict[str, dict], params: SelectParams, task: str = "multiclass"
) -> tuple[str, dict[str, dict]]:
    """Return the champion's name and every candidate's summary with its verdict.
    Quality is the task's (macro-F1, R^2 for regression); `max_quality_drop`
    bounds its loss against the best candidate, as a share of the best's."""
    if REFERENCE.name not in candidates:
        raise DistilleryError(f"{paths.EVALUATION_REPORT}: the reference candidate '{REFERENCE}' was not evaluated")
    best = best_candidate(candidates)
    top = _quality(candidates[best])
    floor = params.quality_floor(top)
    boosted = _quality(candidates[BOOSTED.name]) if BOOSTED.name in candidates else None
    table: dict[str, dict] = {}
    for name, result in candidates.items():
        precision = CandidateId.parse(name).precision
        if params.speed_key not in result:
            raise DistilleryError(
                f"{paths.EVALUATION_REPORT}: {name} has no {params.speed_key} (select.speed_key); "
                "time its thread count in evaluate.latency_threads and rerun evaluate"
            )
        row = {key: result[key] for key in SUMMARY_KEYS if key in result}
        row.update({key: value for key, value in result.items() if key.startswith(LATENCY_PREFIX)})
        row["quality"] = _quality(result)
        row["quality_drop"] = top - row["quality"]
        if boosted is not None:
            row["vs_boosted"] = row["quality"] - boosted
        row["eligible"] = precision in params.precisions
        within_budget = (params.max_size_bytes is None or row["size_bytes"] <= params.max_size_bytes) and (
            params.max_latency_ms is None or row[params.speed_key] <= params.max_latency_ms
        )
        row["within_budget"] = within_budget
        row["qualifies"] = row["eligible"] and within_budget and row["quality"] >= floor
        table[name] = row
    qualified = [n for n, row in table.items() if row["qualifies"]]
    if not qualified:
        rows = [
            {
                "candidate": n,
                **{
                    k: r[k]
                    for k in ("quality", "quality_drop", "eligible", "within_budget", "size_bytes", params.speed_key)
                },
            }
            for n, r in table.items()
        ]
        raise DistilleryError(
            f"no candidate qualifies: none of precision {list(params.precisions)} keeps its quality "
            f"({task_of(task).quality_label}) within select.max_quality_drop={params.max_quality_drop} (a share, so at least "
            f"{floor:.4f}) of the best candidate, {best} ({top:.4f}), and within the size/latency budgets (select.max_size_bytes="
            f"{params.max_size_bytes}, select.max_latency_ms={params.max_latency_ms}). Nothing was promoted.\n"
            + markdown_table(rows)
        )
    return min(qualified, key=lambda n: table[n][params.speed_key]), table


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
    ours, ref = rows[champion], rows[REFERENCE.name]
    return {
        "speedup": {
            key: round(ref[key] / ours[key], 2)
            for key in sorted(ours)
            if re.fullmatch(r"latency_ms_b\d+_t\d+", key) and ours[key]
        },
        "size_ratio": round(ours["size_bytes"] / ref["size_bytes"], 4),
        "quality_drop_points": round(100 * (_quality(ref) - _quality(ours)), 2),
    }


def write_compression_report(
    champion: str, table: dict[str, dict], meta: ProcessedMeta, params: SelectParams, best: str
) -> None:
    """reports/compression.json and the Pareto plot: latency against quality,
    marker area by file size, the non-dominated front and the quality budget."""
    from tasks.evaluation import plots

    export = read_json(paths.EXPORT_REPORT, "export report")
    candidates = []
    for name, row in table.items():
        candidate = CandidateId.parse(name)
        candidates.append(
            {
                "name": name,
                "path": str(paths.ONNX_DIR / f"{name}.onnx"),
                "precision": candidate.precision,
                "parameters": export.get(candidate.model, {}).get("parameters"),
                "size_bytes": file_size(paths.ONNX_DIR / f"{name}.onnx"),
                **row,
            }
        )
    front = pareto_front(table, params.speed_key)
    floor = params.quality_floor(_quality(table[best]))
    reports.write(
        CompressionReport(
            champion=champion,
            task=meta.task,
            speed_key=params.speed_key,
            reference=REFERENCE.name,
            best=best,
            quality_floor=floor,
            pareto_front=tuple(front),
            champion_vs_reference=versus(candidates, champion),
            candidates=tuple(candidates),
        )
    )
    plots.pareto(
        candidates, champion, task_of(meta.task).quality_label, params.speed_key, front, floor, paths.PARETO_PLOT
    )


def main() -> None:
    params = load_params(paths.PARAMS, SECTIONS).select
    evaluation = reports.read(EvaluationReport)
    meta = read_meta()
    champion, table = select_champion(evaluation.candidates, params, meta.task)
    best = best_candidate(evaluation.candidates)
    source = paths.ONNX_DIR / f"{champion}.onnx"
    check_artifact(source)
    with atomic_path(paths.CHAMPION) as tmp:
        shutil.copyfile(source, tmp)
    selection = Selection(
        champion=champion,
        reference=REFERENCE.name,
        best=best,
        max_quality_drop=params.max_quality_drop,
        speed_key=params.speed_key,
        task=meta.task,
        candidates=table,
        baselines=evaluation.baselines,
    )
    reports.write(selection)
    write_compression_report(champion, table, meta, params, best)
    c = selection.ours
    quality_name = task_of(meta.task).quality_label
    ece = f", ECE {c['ece']:.4f}" if c.get("ece") is not None else ""
    beside = "; ".join(f"{b.name} baseline {b.model}: {b.quality:.4f}" for b in selection.baselines.values())
    write_summary(
        "select",
        f"Champion **{champion}** (fastest by {params.speed_key} within {params.max_quality_drop:.1%} "
        f"of the {quality_name} of the best candidate, {best}: {table[best]['quality']:.4f}): {quality_name} "
        f"{c['quality']:.4f}{ece}, {c['size_bytes']:,} bytes, "
        f"{c[params.speed_key]:.3f} ms ({params.speed_key}, median of interleaved rounds), "
        f"{selection.speedup:.2f}x the speed of {REFERENCE} in the same runtime. Baselines on the same test split: "
        f"{beside or 'none'}. The register stage gates it against them and the MLflow registry.\n\n"
        + markdown_table(
            [
                {"candidate": n, **{k: v for k, v in r.items() if not k.endswith(("_p10", "_p90"))}}
                for n, r in table.items()
            ]
        ),
    )


if __name__ == "__main__":
    run_cli(main)
