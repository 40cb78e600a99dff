"""Profile a trusted dataset into an editable GX suite (like TFX's SchemaGen),
so a new dataset does not start from an empty file.

    python -m tasks.bootstrap_suite --out expectations/mydata.json

It reads the source configured in params.yaml, applies the same corrections as
the validate stage, and writes expectations with margins around what it saw:
schema, ranges, category sets, completeness, near-duplicates, and the target's
checks as the task type needs them: class set, counts and balance for classes,
range and distribution for a regression target. Review it, then set params.yaml 'validate.suite' to it.
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
from tasks.core.task import task_of
from tasks.data.correct import FEATURE_TYPES
from tasks.data.gate import assess
from tasks.data.quality import duplicate_rows, near_duplicate_rows
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
    task = task_of(params.task.type)
    if table[LABEL].notna().sum() == 0:
        raise DistilleryError(
            f"the target '{dataset.meta.target or LABEL}' has no usable value for task.type {task.name}"
            + (" (a regression target is a number)" if task.regression else "")
            + "; set data.target or task.type in params.yaml"
        )
    # What the near-duplicate expectation measures (rows of this table, row_id aside), not the
    # quality report's figure: for images that one counts near-identical pictures, not rows.
    content = table.drop(columns=[ROW_ID])
    near = float((near_duplicate_rows(content) | duplicate_rows(content)).mean()) if len(content) else 0.0
    expectations = [
        _expect("expect_table_columns_to_match_set", column_set=list(table.columns), exact_match=True),
        _expect("expect_table_row_count_to_be_between", min_value=max(10, len(table) // 2)),
        _expect("expect_column_values_to_be_unique", column=ROW_ID),
        _expect("expect_column_values_to_not_be_null", column=LABEL, mostly=_present(table[LABEL])),
        *(_value_checks(table[LABEL]) if task.regression else _class_checks(table[LABEL], report["balance"])),
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
        if c not in (ROW_ID, LABEL, "class_name")
    }
    for col, kind in types.items():
        values = table[col]
        if kind == "numeric" and values.notna().any():
            expectations.append(_range(col, values))
        elif kind == "boolean":
            expectations.append(_expect("expect_column_values_to_be_in_set", column=col, value_set=[0.0, 1.0]))
        elif kind == "categorical" and 0 < values.nunique() <= MAX_CATEGORIES:
            expectations.append(
                _expect(
                    "expect_column_values_to_be_in_set",
                    column=col,
                    value_set=sorted(values.dropna().astype(str).unique().tolist()),
                    mostly=0.99,
                )
            )
        if kind in FEATURE_TYPES:
            expectations.append(
                _expect("expect_column_values_to_not_be_null", "warning", column=col, mostly=_present(values))
            )
    return {
        "name": name,
        "meta": {
            "notes": f"Bootstrapped by tasks.bootstrap_suite from {len(table)} rows of "
            f"'{params.data.source}'. Edit freely: tighten ranges, change severities."
        },
        "expectations": expectations,
    }


def _present(values: pd.Series) -> float:
    """The share of values present, less a margin: the `mostly` of a not-null check."""
    return round(max(0.0, float(values.notna().mean()) - 0.05), 3)


def _range(column: str, values: pd.Series) -> dict:
    """Its values within what was seen, widened by a tenth of the range."""
    low, high = float(values.min()), float(values.max())
    margin = 0.1 * (high - low) or abs(high) * 0.1 or 1.0
    return _expect(
        "expect_column_values_to_be_between",
        column=column,
        min_value=round(low - margin, 6),
        max_value=round(high + margin, 6),
        mostly=0.99,
    )


def _class_checks(labels: pd.Series, balance: dict) -> list[dict]:
    """A target of classes: the set, enough rows of each, and the balance seen (with margins)."""
    classes = sorted(labels.dropna().unique().tolist(), key=str)
    checks = [
        _expect("expect_column_values_to_be_in_set", column=LABEL, value_set=classes, mostly=0.99),
        _expect(
            "expect_column_value_counts_to_be_at_least",
            column=LABEL,
            value_set=classes,
            min_count=int(max(5, labels.value_counts().min() // 2)),
        ),
    ]
    if balance["imbalance_ratio"] is not None:
        checks += [
            _expect(
                "expect_column_imbalance_ratio_to_be_at_most",
                "warning",
                column=LABEL,
                max_ratio=round(1.5 * balance["imbalance_ratio"], 2),
            ),
            _expect(
                "expect_column_normalized_entropy_to_be_at_least",
                "warning",
                column=LABEL,
                min_value=round(0.9 * balance["normalized_entropy"], 3),
            ),
        ]
    return checks


def _value_checks(target: pd.Series) -> list[dict]:
    """A numeric target (regression) has no classes to count: its range, and the
    centre and spread of its distribution, which a shifted source moves."""
    mean, std = float(target.mean()), float(target.std())
    return [
        _range(LABEL, target),
        _expect(
            "expect_column_mean_to_be_between",
            "warning",
            column=LABEL,
            min_value=round(mean - 0.5 * std, 6),
            max_value=round(mean + 0.5 * std, 6),
        ),
        _expect(
            "expect_column_stdev_to_be_between",
            "warning",
            column=LABEL,
            min_value=round(0.5 * std, 6),
            max_value=round(1.5 * std, 6),
        ),
    ]


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
