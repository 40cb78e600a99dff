"""Stage 2, validate: the data-quality gate (tasks/data/gate.py).

Measures the four dimensions, applies the corrections params.yaml allows, runs
the dataset's Great Expectations suite (Data Docs in reports/data_docs), and
splits the rows into validated and quarantined: rows_in == rows_valid +
rows_quarantined, always. A failed critical expectation stops the pipeline
(exit 2) naming what failed; a failed warning is reported.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from tasks.contracts import reports
from tasks.contracts.dataset import REASON, ROW_ID, read_dataset, write_dataset
from tasks.contracts.reports import ValidationReport
from tasks.core import paths
from tasks.core.errors import DistilleryError, run_cli
from tasks.core.io import write_json
from tasks.core.params import load_params
from tasks.core.report import write_summary
from tasks.core.task import kind_of
from tasks.data.docs import make_offline
from tasks.data.gate import (
    GateResult,
    default_suite,
    failure_message,
    gate,
    load_suite,
    quality_summary,
)
from tasks.data.label_issues import plot_label_issues
from tasks.data.quality import plot_balance, plot_missingness

SECTIONS = ("task", "validate")


def log_to_mlflow(mlflow_cfg, source: str, report: dict, summary: dict, task: str) -> None:
    import mlflow

    from tasks.core.tracking import mlflow_run

    with mlflow_run(mlflow_cfg, "validate", {"data_source": source, "task": task}):
        mlflow.log_metrics({k: float(v) for k, v in summary.items() if isinstance(v, (int, float))})
        ratio = report["balance"].get("imbalance_ratio")
        if ratio:
            mlflow.log_metric("imbalance_ratio", ratio)
        mlflow.log_metric("duplicate_rows", report["uniqueness"]["duplicate_rows"])
        mlflow.log_dict(report, "data_quality.json")
        if paths.DATA_DOCS.exists():
            mlflow.log_artifacts(str(paths.DATA_DOCS), "data_docs")


def write_reports(result: GateResult, suite_path: Path) -> None:
    report, outcome, summary = result.report, result.outcome, result.summary
    write_json(paths.DATA_QUALITY_REPORT, report)
    if paths.DATA_DOCS.exists():
        make_offline(paths.DATA_DOCS)
    write_json(paths.LABEL_ISSUES_REPORT, result.label_report)
    plot_label_issues(result.label_issues, [result.valid, result.quarantined], paths.LABEL_ISSUES_PLOT)
    plot_balance(report["balance"]["counts"], paths.QUALITY_PLOTS / "balance.png")
    if kind_of(report["kind"]).table and summary["rows_in"]:
        typed = pd.concat([result.valid.table, result.quarantined.table.drop(columns=REASON)])
        plot_missingness(typed.sort_values(ROW_ID).drop(columns=[ROW_ID]), paths.QUALITY_PLOTS / "missingness.png")
    reports.write(
        ValidationReport(
            **summary,
            suite=str(suite_path),
            data_docs=str(paths.DATA_DOCS / "index.html"),
            results=tuple(outcome.results),
        )
    )


def _beside(report: dict) -> str:
    """The other models tried (tables), with their out-of-fold macro-F1."""
    others = [
        f"{name} {quality:.3f}" for name, quality in report.get("considered", {}).items() if name != report["model"]
    ]
    return f", over {', '.join(others)}" if others else ""


def label_issue_summary(report: dict) -> str:
    if report.get("skipped_reason"):
        return f"Label errors: not looked for ({report['skipped_reason']})."
    skipped = (
        (
            " Skipped, too few rows for the folds: "
            + ", ".join(f"class `{c}` ({n} rows)" for c, n in report["skipped_classes"].items())
            + "."
        )
        if report["skipped_classes"]
        else ""
    )
    if not report.get("reliable", True):
        return (
            f"Label errors (confident learning): {report['suspects']} suspects among {report['checked_rows']} rows, "
            f"not acted on or gated: unreliable, {report['unreliable_reason']}. See `{paths.LABEL_ISSUES_REPORT}`."
            + skipped
        )
    done = {
        "report": "reported only",
        "quarantine": f"{report['quarantined']} quarantined (reason label_issue)",
        "relabel": f"{report['relabelled']} relabelled",
    }[report["action"]]
    return (
        f"Label errors (confident learning): {report['suspects']} likely among {report['checked_rows']} rows "
        f"({report['flagged_rate']:.1%}; estimated rate {report['estimated_rate']:.1%}; out-of-fold "
        f"{report['model']} macro-F1 {report['model_quality']:.3f}{_beside(report)}); {done}. "
        f"See `{paths.LABEL_ISSUES_REPORT}`.{skipped}"
    )


def main() -> None:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    params = load_params(paths.PARAMS, SECTIONS)
    dataset = read_dataset(paths.INGESTED)
    # The suite follows the data and the task: the ingested meta says which source it came from.
    suite_path = Path(params.validate.suite or default_suite(dataset.meta.source, params.task.type))
    suite = load_suite(suite_path)
    print(
        f"validate: {len(suite['expectations'])} expectations of {suite_path} on {len(dataset.table):,} rows, "
        "then Data Docs and the label-error check",
        flush=True,
    )
    result = gate(dataset, params.task.type, params.validate, suite, paths.DATA_DOCS)
    write_reports(result, suite_path)
    log_to_mlflow(params.mlflow, dataset.meta.source, result.report, result.summary, result.valid.meta.task or "")
    outcome, summary = result.outcome, result.summary
    if not outcome.success:
        raise DistilleryError(failure_message(outcome, suite_path, dataset.meta.target))
    write_dataset(paths.VALIDATED, result.valid)
    write_dataset(paths.QUARANTINE, result.quarantined)
    warned = ", ".join(f"{r['expectation']}({r['column'] or ''})" for r in outcome.warnings) or "none"
    write_summary(
        "validate",
        f"Suite `{suite_path}`: **passed** ({sum(r['success'] for r in outcome.results)}/{len(outcome.results)} "
        f"expectations met; warnings: {warned}).\n\n"
        f"Rows in {summary['rows_in']}, valid {summary['rows_valid']}, quarantined {summary['rows_quarantined']}.\n\n"
        + quality_summary(result.report)
        + "\n\n"
        + label_issue_summary(result.label_report),
    )


if __name__ == "__main__":
    run_cli(main)
