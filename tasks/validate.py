"""Stage 2, validate: the Great Expectations gate.

The suite in expectations/ runs through a GX checkpoint on the ingested table.
Rows that fail a row-level expectation go to quarantine with their reasons; the
rest become the validated dataset. A failed critical expectation stops the
pipeline (exit 2) with a message naming what failed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tasks import paths
from tasks.config import load_params
from tasks.core import DistilleryError, read_json, run_cli, write_json, write_summary
from tasks.dataset import Dataset, read_dataset, write_dataset

ROW_ID = "row_id"


@dataclass
class ValidationOutcome:
    success: bool
    results: list[dict[str, Any]]
    reasons: dict[int, list[str]] = field(default_factory=dict)  # row_id -> failed checks

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.results if not r["success"] and r["severity"] == "critical"]


def load_suite(path: str | Path) -> dict:
    suite = read_json(path, "GX expectation suite")
    if not isinstance(suite, dict) or not isinstance(suite.get("expectations"), list):
        raise DistilleryError(f"{path}: a GX suite needs a 'name' and an 'expectations' list")
    return suite


def _describe(config: Any) -> str:
    column = config.kwargs.get("column")
    return f"{config.type}({column})" if column else config.type


def run_suite(table: pd.DataFrame, suite: dict, parameters: dict[str, Any]) -> ValidationOutcome:
    """Run `suite` on `table` through a GX checkpoint and collect per-row failures."""
    import great_expectations as gx

    import expectations.custom  # noqa: F401  registers the project's expectations

    context = gx.get_context(mode="ephemeral")
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
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name="gate", data=batch, suite=gx_suite)
    )
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name="gate",
            validation_definitions=[definition],
            result_format={"result_format": "COMPLETE", "unexpected_index_column_names": [ROW_ID]},
        )
    )
    run = checkpoint.run(batch_parameters={"dataframe": table}, expectation_parameters=parameters)

    results: list[dict[str, Any]] = []
    reasons: dict[int, list[str]] = {}
    for validation in run.run_results.values():
        for result in validation.results:
            config = result.expectation_config
            name = _describe(config)
            info = result.exception_info or {}
            detail = result.result or {}
            results.append(
                {
                    "expectation": config.type,
                    "column": config.kwargs.get("column"),
                    "kwargs": {k: v for k, v in config.kwargs.items() if k not in ("batch_id", "column")},
                    "severity": str(getattr(config, "severity", None) or "critical").split(".")[-1].lower(),
                    "success": bool(result.success),
                    "observed_value": detail.get("observed_value"),
                    "unexpected_count": detail.get("unexpected_count"),
                    "exception": info.get("exception_message") if info.get("raised_exception") else None,
                }
            )
            for row in detail.get("unexpected_index_list") or []:
                reasons.setdefault(int(row[ROW_ID]), []).append(name)
    outcome = ValidationOutcome(success=True, results=results, reasons=reasons)
    outcome.success = not outcome.failed
    return outcome


def split_quarantine(dataset: Dataset, outcome: ValidationOutcome) -> tuple[Dataset, Dataset]:
    """Split rows into (valid, quarantined); every row lands in exactly one."""
    row_ids = dataset.table[ROW_ID].to_numpy()
    bad = np.isin(row_ids, np.fromiter(outcome.reasons, dtype=np.int64, count=len(outcome.reasons)))

    def subset(mask: np.ndarray) -> Dataset:
        return Dataset(
            table=dataset.table[mask].reset_index(drop=True),
            arrays={k: v[mask] for k, v in dataset.arrays.items()},
            meta={**dataset.meta, "rows": int(mask.sum())},
        )

    quarantined = subset(bad)
    quarantined.table["reason"] = ["; ".join(outcome.reasons[int(r)]) for r in quarantined.table[ROW_ID]]
    return subset(~bad), quarantined


def suite_parameters(meta: dict) -> dict[str, Any]:
    """Values the suites refer to as {"$PARAMETER": name}, taken from the data's own meta."""
    return {"class_labels": list(range(len(meta["classes"])))}


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
        lines.append(f"  - {what}: {seen}")
    lines.append(f"details: {paths.VALIDATION_REPORT}")
    return "\n".join(lines)


def main() -> None:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    params = load_params(paths.PARAMS)
    suite_path = Path(params.validate.suite or paths.EXPECTATIONS / f"{params.data.source}.json")
    dataset = read_dataset(paths.INGESTED)
    outcome = run_suite(dataset.table, load_suite(suite_path), suite_parameters(dataset.meta))
    valid, quarantined = split_quarantine(dataset, outcome)
    report = {
        "success": outcome.success,
        "suite": str(suite_path),
        "rows_in": len(dataset.table),
        "rows_valid": len(valid.table),
        "rows_quarantined": len(quarantined.table),
        "results": outcome.results,
    }
    write_json(paths.VALIDATION_REPORT, report)
    if not outcome.success:
        raise DistilleryError(failure_message(outcome, suite_path))
    write_dataset(paths.VALIDATED, valid)
    write_dataset(paths.QUARANTINE, quarantined)
    failed = [r for r in outcome.results if not r["success"]]
    write_summary(
        "validate",
        f"Suite `{suite_path}`: **{'passed' if outcome.success else 'failed'}** "
        f"({len(outcome.results) - len(failed)}/{len(outcome.results)} expectations met).\n\n"
        f"Rows in {report['rows_in']}, valid {report['rows_valid']}, quarantined {report['rows_quarantined']}.",
    )


if __name__ == "__main__":
    run_cli(main)
