"""Stage 2, validate: the data-quality gate.

1. Measure the four dimensions (representation, completeness, uniqueness,
   balance) and apply the corrections params.yaml allows (tasks/correct.py).
2. Run the dataset's Great Expectations suite through a GX checkpoint, which
   also builds Data Docs into reports/data_docs/.
3. Rows that a correction could not save, or that fail a critical row-level
   expectation, go to quarantine with their reasons; every other row is
   validated. rows_in == rows_valid + rows_quarantined, always.
4. A failed critical expectation stops the pipeline (exit 2) with a message
   naming what failed; a failed warning is reported and the flow goes on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from tasks import paths
from tasks.config import Params, load_params
from tasks.core import DistilleryError, markdown_table, read_json, run_cli, write_json, write_summary
from tasks.correct import LABEL, ROW_ID, Corrected, correct_images, correct_table
from tasks.dataset import Dataset, read_dataset, write_dataset
from tasks.quality import plot_balance, plot_missingness

DATA_DOCS = paths.REPORTS / "data_docs"
DATA_QUALITY_REPORT = paths.REPORTS / "data_quality.json"
QUALITY_PLOTS = paths.REPORTS / "quality"  # class balance and missingness matrix


@dataclass
class ValidationOutcome:
    success: bool
    results: list[dict[str, Any]]
    reasons: dict[int, list[str]] = field(default_factory=dict)  # row_id -> failed critical checks

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.results if not r["success"] and r["severity"] == "critical"]

    @property
    def warnings(self) -> list[dict[str, Any]]:
        return [r for r in self.results if not r["success"] and r["severity"] != "critical"]


def load_suite(path: str | Path) -> dict:
    suite = read_json(path, "GX expectation suite")
    if not isinstance(suite, dict) or not isinstance(suite.get("expectations"), list):
        raise DistilleryError(f"{path}: a GX suite needs a 'name' and an 'expectations' list")
    return suite


def _describe(config: Any) -> str:
    column = config.kwargs.get("column")
    return f"{config.type}({column})" if column else config.type


def _severity(config: Any) -> str:
    return str(getattr(config, "severity", None) or "critical").split(".")[-1].lower()


def run_suite(
    table: pd.DataFrame, suite: dict, parameters: dict[str, Any], docs_dir: Optional[Path] = None
) -> ValidationOutcome:
    """Run `suite` on `table` through a GX checkpoint and collect per-row
    failures of critical expectations. With `docs_dir`, GX builds Data Docs there."""
    import great_expectations as gx

    import expectations.custom  # noqa: F401  registers the project's expectations

    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)  # stage logs stay readable
    batch = (
        context.data_sources.add_pandas("distillery")
        .add_dataframe_asset("table")
        .add_batch_definition_whole_dataframe("whole table")
    )
    body = {k: v for k, v in suite.items() if k in ("name", "expectations", "meta", "notes")}
    try:
        gx_suite = context.suites.add(gx.ExpectationSuite(**body))
    except Exception as err:  # GX raises several types for a malformed suite
        raise DistilleryError(f"GX suite '{suite.get('name')}' is not valid: {err}") from err
    # GX logs and drops an expectation whose type it does not know instead of
    # raising; a gate that silently skips a check must stop instead.
    if len(gx_suite.expectations) != len(suite["expectations"]):
        known = {e.expectation_type for e in gx_suite.expectations}
        dropped = sorted({str(e.get("type")) for e in suite["expectations"] if isinstance(e, dict)} - known)
        raise DistilleryError(f"GX suite '{suite.get('name')}' is not valid: unknown expectation types {dropped}")
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name="gate", data=batch, suite=gx_suite)
    )
    actions = []
    if docs_dir is not None:
        context.add_data_docs_site(
            site_name="reports",
            site_config={
                "class_name": "SiteBuilder",
                "store_backend": {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": str(Path(docs_dir).resolve()),
                },
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            },
        )
        actions.append(gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=["reports"]))
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name="gate",
            validation_definitions=[definition],
            actions=actions,
            result_format={"result_format": "COMPLETE", "unexpected_index_column_names": [ROW_ID]},
        )
    )
    run = checkpoint.run(batch_parameters={"dataframe": table}, expectation_parameters=parameters)

    results: list[dict[str, Any]] = []
    reasons: dict[int, list[str]] = {}
    for validation in run.run_results.values():
        for result in validation.results:
            config = result.expectation_config
            info = result.exception_info or {}
            detail = result.result or {}
            severity = _severity(config)
            results.append(
                {
                    "expectation": config.type,
                    "column": config.kwargs.get("column"),
                    "kwargs": {k: v for k, v in config.kwargs.items() if k not in ("batch_id", "column")},
                    "severity": severity,
                    "success": bool(result.success),
                    "observed_value": detail.get("observed_value"),
                    "details": detail.get("details"),
                    "unexpected_count": detail.get("unexpected_count"),
                    "exception": info.get("exception_message") if info.get("raised_exception") else None,
                }
            )
            if severity == "critical":
                for row in detail.get("unexpected_index_list") or []:
                    reasons.setdefault(int(row[ROW_ID]), []).append(_describe(config))
    outcome = ValidationOutcome(success=True, results=results, reasons=reasons)
    outcome.success = not outcome.failed
    return outcome


def split_quarantine(dataset: Dataset, reasons: dict[int, list[str]]) -> tuple[Dataset, Dataset]:
    """Split rows into (valid, quarantined); every row lands in exactly one."""
    row_ids = dataset.table[ROW_ID].to_numpy()
    bad = np.isin(row_ids, np.fromiter(reasons, dtype=np.int64, count=len(reasons)))

    def subset(mask: np.ndarray) -> Dataset:
        return Dataset(
            table=dataset.table[mask].reset_index(drop=True),
            arrays={k: v[mask] for k, v in dataset.arrays.items()},
            meta={**dataset.meta, "rows": int(mask.sum())},
        )

    quarantined = subset(bad)
    quarantined.table["reason"] = ["; ".join(reasons[int(r)]) for r in quarantined.table[ROW_ID]]
    return subset(~bad), quarantined


def merge_reasons(*sources: dict[int, list[str]]) -> dict[int, list[str]]:
    merged: dict[int, list[str]] = {}
    for source in sources:
        for row_id, why in source.items():
            merged.setdefault(row_id, []).extend(why)
    return merged


def classes_of(corrected: Corrected, meta: dict) -> list[str]:
    """Declared classes if any, else the labels found (sorted, so stable); none
    for a regression target."""
    if meta.get("task") == "regression":
        return []
    if meta.get("classes"):
        return list(meta["classes"])
    return sorted(corrected.table[LABEL].dropna().astype(str).unique().tolist())


def suite_parameters(meta: dict, table: pd.DataFrame | None = None, classes: list[str] | None = None) -> dict[str, Any]:
    """Values the suites refer to as {"$PARAMETER": name}, taken from the data's own meta."""
    if meta.get("kind", "image") == "image":
        return {"class_labels": list(range(len(meta["classes"])))}
    declared = list(meta.get("declared_columns") or [])
    observed = list(table.columns) if table is not None else []
    return {
        "class_labels": list(classes or []),
        "expected_columns": [ROW_ID, LABEL, *declared] if declared else observed,
    }


def assess(dataset: Dataset, params: Params) -> tuple[Corrected, Dataset]:
    """Measure and correct; return the corrections and the corrected dataset."""
    if dataset.meta.get("kind") == "tabular":
        corrected = correct_table(dataset.table, dataset.meta, params.validate)
        classes = classes_of(corrected, dataset.meta)
        types = corrected.column_types
        meta = {
            **dataset.meta,
            "classes": classes,
            "column_types": types,
            "features": [c for c, t in types.items() if t in ("numeric", "categorical")],
        }
        return corrected, Dataset(table=corrected.table, arrays=dataset.arrays, meta=meta)
    corrected = correct_images(dataset.table, dataset.arrays["images"], params.validate)
    return corrected, dataset


def failure_message(outcome: ValidationOutcome, suite_path: Path) -> str:
    lines = [f"data validation failed ({suite_path}); these critical expectations failed:"]
    for r in outcome.failed:
        what = f"{r['expectation']}" + (f" on column '{r['column']}'" if r["column"] else "")
        if r["exception"]:
            seen = r["exception"]
        elif r["unexpected_count"]:
            seen = f"{r['unexpected_count']} unexpected rows"
        else:
            seen = f"observed {r['observed_value']}"
        mismatched = (r.get("details") or {}).get("mismatched")
        if mismatched:
            seen += f" (mismatched columns: {mismatched})"
        lines.append(f"  - {what}: {seen}")
    lines.append(f"details: {paths.VALIDATION_REPORT}; Data Docs: {DATA_DOCS / 'index.html'}")
    return "\n".join(lines)


def quality_summary(report: dict) -> str:
    """The four dimensions in a few lines, for the Prefect artifact."""
    balance, unique = report["balance"], report["uniqueness"]
    completeness = report["completeness"]
    if report["kind"] == "tabular":
        missing = {c: f"{v['fraction']:.1%}" for c, v in completeness["columns"].items() if v["missing"]}
        rows_missing = completeness["rows_with_missing"]
        variants = {c: len(e.get("variants", [])) for c, e in report["representation"]["columns"].items() if e.get("variants")}
        representation = f"category variants {variants or 'none'}; corrections {report['corrections']}"
    else:
        missing = {"pixels": completeness["missing_pixels"]}
        rows_missing = completeness["images_with_missing_pixels"]
        representation = f"shapes {report['representation']['shapes']}, value range {report['representation']['value_range']}"
    ratio = balance["imbalance_ratio"]
    if "target" in balance:
        t = balance["target"]
        balance_text = f"target mean {t['mean']:.4g}, std {t['std']:.4g}, skew {t['skew']:.2f}, range [{t['min']:.4g}, {t['max']:.4g}]"
    elif ratio:
        balance_text = (f"imbalance ratio {ratio:.2f}, normalised entropy {balance['normalized_entropy']:.3f}, "
                        f"gini {balance['gini']:.3f}")
    else:
        balance_text = "no labels"
    return markdown_table(
        [
            {"dimension": "representation", "finding": representation},
            {"dimension": "completeness", "finding": f"rows with a missing value: {rows_missing}; missing: {missing or 'none'}"},
            {"dimension": "uniqueness", "finding": f"duplicate rows {unique['duplicate_rows']}, near-duplicates "
             f"{unique.get('near_duplicate_rows', unique.get('near_duplicate_images'))}"},
            {"dimension": "balance", "finding": balance_text},
        ]
    )


def log_to_mlflow(params: Params, report: dict, summary: dict) -> None:
    import mlflow

    from tasks.tracking import mlflow_run

    with mlflow_run(params.mlflow, "validate", {"data_source": params.data.source}):
        mlflow.log_metrics({k: float(v) for k, v in summary.items() if isinstance(v, (int, float))})
        ratio = report["balance"].get("imbalance_ratio")
        if ratio:
            mlflow.log_metric("imbalance_ratio", ratio)
        mlflow.log_metric("duplicate_rows", report["uniqueness"]["duplicate_rows"])
        mlflow.log_dict(report, "data_quality.json")
        if DATA_DOCS.exists():
            mlflow.log_artifacts(str(DATA_DOCS), "data_docs")


@dataclass
class GateResult:
    report: dict[str, Any]  # the four dimensions and the corrections
    outcome: ValidationOutcome
    valid: Dataset
    quarantined: Dataset

    @property
    def summary(self) -> dict[str, Any]:
        return {
            "success": self.outcome.success,
            "rows_in": len(self.valid.table) + len(self.quarantined.table),
            "rows_valid": len(self.valid.table),
            "rows_quarantined": len(self.quarantined.table),
        }


def gate(dataset: Dataset, params: Params, suite: dict, docs_dir: Optional[Path] = None) -> GateResult:
    """Measure, correct, run the suite, and split the rows into valid and quarantined."""
    dataset.meta["task"] = params.task.type
    if dataset.meta.get("kind") == "tabular":
        dataset.meta["declared_columns"] = list(params.data.columns)
    corrected, typed = assess(dataset, params)
    parameters = suite_parameters(typed.meta, typed.table, typed.meta.get("classes"))
    outcome = run_suite(typed.table, suite, parameters, docs_dir)
    valid, quarantined = split_quarantine(typed, merge_reasons(corrected.row_issues, outcome.reasons))
    return GateResult(report=corrected.report, outcome=outcome, valid=valid, quarantined=quarantined)


def main() -> None:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    params = load_params(paths.PARAMS)
    suite_path = Path(params.validate.suite or paths.EXPECTATIONS / f"{params.data.source}.json")
    suite = load_suite(suite_path)
    result = gate(read_dataset(paths.INGESTED), params, suite, DATA_DOCS)
    report, outcome, summary = result.report, result.outcome, result.summary
    write_json(DATA_QUALITY_REPORT, report)
    plot_balance(report["balance"]["counts"], QUALITY_PLOTS / "balance.png")
    if report["kind"] == "tabular" and summary["rows_in"]:
        typed = pd.concat([result.valid.table, result.quarantined.table.drop(columns="reason")])
        plot_missingness(typed.sort_values(ROW_ID).drop(columns=[ROW_ID]), QUALITY_PLOTS / "missingness.png")
    write_json(
        paths.VALIDATION_REPORT,
        {**summary, "suite": str(suite_path), "data_docs": str(DATA_DOCS / "index.html"), "results": outcome.results},
    )
    log_to_mlflow(params, report, summary)
    if not outcome.success:
        raise DistilleryError(failure_message(outcome, suite_path))
    write_dataset(paths.VALIDATED, result.valid)
    write_dataset(paths.QUARANTINE, result.quarantined)
    warned = ", ".join(f"{r['expectation']}({r['column'] or ''})" for r in outcome.warnings) or "none"
    write_summary(
        "validate",
        f"Suite `{suite_path}`: **passed** ({sum(r['success'] for r in outcome.results)}/{len(outcome.results)} "
        f"expectations met; warnings: {warned}).\n\n"
        f"Rows in {summary['rows_in']}, valid {summary['rows_valid']}, quarantined {summary['rows_quarantined']}.\n\n"
        + quality_summary(report),
    )


if __name__ == "__main__":
    run_cli(main)
