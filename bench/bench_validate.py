"""Validating 1,000,000 rows x 10 columns: corrections and the four-dimension
profile (duplicates and near-duplicates included), then the GX suite.

    python -m bench.bench_validate [--rows N]

Target: <= 30 s on 2 cores. The table is text as a CSV reader gives it, with
the usual mess: units on numbers, category variants, missing tokens, duplicates.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace

import numpy as np
import pandas as pd

from bench.common import record, timed
from tasks.contracts.dataset import ROW_ID, Dataset, DatasetMeta
from tasks.core.params import load_params
from tasks.core.provenance import hash_table
from tasks.data.correct import correct_table
from tasks.data.gate import gate, load_suite

COLUMNS = 10


def messy_table(rows: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    dept = np.array(
        ["HR", "hr", " HR ", "Human Resources", "Sales", "sales", "Engineering", "Enginering", "Legal", "NA"]
    )
    frame = pd.DataFrame(
        {
            "age": rng.integers(18, 70, rows).astype(str),
            "salary": np.char.add(rng.integers(20_000, 150_000, rows).astype(str), " $"),
            "height_cm": rng.normal(170, 10, rows).round(1).astype(str),
            "weight_kg": rng.normal(70, 12, rows).round(1).astype(str),
            "score_a": rng.random(rows).round(4).astype(str),
            "score_b": rng.random(rows).round(4).astype(str),
            "dept": dept[rng.integers(0, len(dept), rows)],
            "city": rng.choice(["Paris", "paris", "Lyon", "Lille", "Nice", "Nantes"], rows),
            "comment": rng.choice(["ok", "late delivery", "late delivry", "fine", "NA", "great service"], rows),
            "label": rng.choice(["a", "b", "c"], rows, p=[0.6, 0.3, 0.1]),
        }
    )
    frame.iloc[: rows // 100] = frame.iloc[rows // 100 : 2 * (rows // 100)].to_numpy()  # 1% duplicates
    assert len(frame.columns) == COLUMNS
    return frame.rename(columns={"label": "target"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    base = load_params()
    params = replace(
        base,
        data=replace(base.data, source="csv", path="bench.csv", target="target"),
        validate=replace(base.validate, synonyms={"dept": {"Human Resources": "HR"}}),
    )
    table = messy_table(args.rows)
    table.insert(0, ROW_ID, np.arange(len(table), dtype=np.int64))
    meta = DatasetMeta(source="csv", kind="tabular", rows=len(table), data_hash=hash_table(table), target="target")
    phases: dict[str, float] = {}
    with timed(phases, "profile_and_corrections_s"):
        corrected = correct_table(table, meta.target, {}, params.task.type, params.validate)
    start = time.perf_counter()
    result = gate(
        Dataset(table=table, arrays={}, meta=meta),
        params.task.type,
        params.validate,
        load_suite("expectations/csv.json"),
    )
    total = time.perf_counter() - start
    results = {
        "rows": args.rows,
        "columns": COLUMNS,
        "total_s": round(total, 3),
        "target_s": 30,
        "within_target": total <= 30,
        **phases,
        "gx_and_split_s": round(total - phases["profile_and_corrections_s"], 3),
        "duplicate_rows": corrected.report["uniqueness"]["duplicate_rows"],
        "near_duplicate_rows": corrected.report["uniqueness"]["near_duplicate_rows"],
        "rows_quarantined": result.summary["rows_quarantined"],
        "gate_success": result.outcome.success,
    }
    record("validate_1m_rows", results)
    print(results)


if __name__ == "__main__":
    main()
