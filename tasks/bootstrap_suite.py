"""Profile a trusted dataset into an editable GX suite (like TFX's SchemaGen),
so a new dataset does not start from an empty file.

    python -m tasks.bootstrap_suite --out expectations/mydata.json

It reads the source configured in params.yaml, applies the same corrections as
the validate stage, and writes expectations with margins around what it saw:
schema, ranges, category sets, completeness, class counts, balance and
near-duplicates. Review it, then set params.yaml 'validate.suite' to it.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.contracts.dataset import LABEL, ROW_ID, Dataset
from tasks.core import paths
from tasks.core.errors import DistilleryError, run_cli
from tasks.core.io import write_text
from tasks.core.params import Params, load_params
from tasks.data.gate import assess
from tasks.ingest import (
    ingest,  # a tool, not a stage: it may reuse the ingest stage's function
)

MAX_CATEGORIES = 50  # beyond this a column is free text, not a category set


def _expect(kind: str, severity: str = "critical", **kwargs: Any) -> dict:
    return {"type": kind, "kwargs": kwargs, "severity": severity}


def profile_suite(dataset: Dataset, params: Params, name: str) -> dict:
    """A suite describing `dataset` (after corrections), with margins."""
    corrected, typed = assess(dataset, params.task.type, params.validate)
    table, report = typed.table, corrected.report
    label = LABEL
    classes = sorted(table[label].dropna().unique().tolist(), key=str)
    counts = table[label].value_counts()
    balance = report["balance"]
    near = report["uniqueness"].get("near_duplicate_fraction", 0.0)
    expectations = [
        _expect("expect_table_columns_to_match_set", column_set=list(table.columns), exact_match=True),
        _expect("expect_table_row_count_to_be_between", min_value=max(10, len(table) // 2)),
        _expect("expect_column_values_to_be_unique", column=ROW_ID),
        _expect("expect_column_values_to_not_be_null", column=label),
        _expect("expect_column_values_to_be_in_set", column=label, value_set=classes, mostly=0.99),
        _expect(
            "expect_column_value_counts_to_be_at_least",
            column=label,
            value_set=classes,
            min_count=int(max(5, counts.min() // 2)),
        ),
        _expect(
            "expect_column_imbalance_ratio_to_be_at_most",
            "warning",
            column=label,
            max_ratio=round(1.5 * balance["imbalance_ratio"], 2),
        ),
        _expect(
            "expect_column_normalized_entropy_to_be_at_least",
            "warning",
            column=label,
            min_value=round(0.9 * balance["normalized_entropy"], 3),
        ),
        _expect(
            "expect_table_near_duplicate_fraction_to_be_at_most",
            "warning",
            max_fraction=round(max(0.01, 2 * near), 4),
            ignore_columns=[ROW_ID],
        ),
    ]
    types = corrected.column_types or {
        c: "numeric" if pd.api.types.is_numeric_dtype(table[c]) else "categorical"
        for c in table.columns
        if c not in (ROW_ID, label, "class_name")
    }
    for col, kind in types.items():
        values = table[col]
        missing = float(values.isna().mean())
        if kind == "numeric" and values.notna().any():
            low, high = float(values.min()), float(values.max())
            margin = 0.1 * (high - low) or abs(high) * 0.1 or 1.0
            expectations.append(
                _expect(
                    "expect_column_values_to_be_between",
                    column=col,
                    min_value=round(low - margin, 6),
                    max_value=round(high + margin, 6),
                    mostly=0.99,
                )
            )
        elif kind == "categorical" and 0 < values.nunique() <= MAX_CATEGORIES:
            expectations.append(
                _expect(
                    "expect_column_values_to_be_in_set",
                    column=col,
                    value_set=sorted(values.dropna().astype(str).unique().tolist()),
                    mostly=0.99,
                )
            )
        if kind in ("numeric", "categorical"):
            expectations.append(
                _expect(
                    "expect_column_values_to_not_be_null",
                    "warning",
                    column=col,
                    mostly=round(max(0.0, 1 - missing - 0.05), 3),
                )
            )
    return {
        "name": name,
        "meta": {
            "notes": f"Bootstrapped by tasks.bootstrap_suite from {len(table)} rows of "
            f"'{params.data.source}'. Edit freely: tighten ranges, change severities."
        },
        "expectations": expectations,
    }


def render(suite: dict) -> str:
    """One expectation per line: readable, and diffs stay small when edited."""
    import json

    lines = ",\n".join("    " + json.dumps(e) for e in suite["expectations"])
    return (
        "{\n"
        f'  "name": {json.dumps(suite["name"])},\n'
        f'  "meta": {json.dumps(suite["meta"])},\n'
        f'  "expectations": [\n{lines}\n  ]\n}}\n'
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="suite file to write (default expectations/<source>.bootstrap.json)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing file")
    args = parser.parse_args()
    params = load_params(paths.PARAMS)
    out = args.out or paths.EXPECTATIONS / f"{params.data.source}.bootstrap.json"
    if out.exists() and not args.force:
        raise DistilleryError(f"{out}: already exists; pass --force to overwrite, or --out another file")
    suite = profile_suite(ingest(params.data), params, out.stem)
    write_text(out, render(suite))
    print(f"wrote {out} ({len(suite['expectations'])} expectations); set params.yaml 'validate.suite: {out}' to use it")


if __name__ == "__main__":
    run_cli(main)
