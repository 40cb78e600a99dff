"""Tables: the champion against the gradient-boosted reference, from pipeline runs.

    python -m bench.bench_tables --project /path/to/run [--project ...] [--seconds S]

For each project folder where `dvc repro` (or `make run`) has run on a table
(penguins, breast_cancer, diabetes, a CSV): the champion's test quality
against the boosted candidate's (reports/selection.json, the same test split),
relative, and the trivial baseline; then, in this one process, the champion,
the students (fp32 and int8) and `boosted.fp32` re-timed in onnxruntime at
batch 256 on 1 thread (the serving key), in interleaved rounds after warm-up,
medians kept: each one's speed as a multiple of the boosted model's. Results
go to reports/bench.json under "tables".
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from bench.common import record
from tasks.contracts import reports
from tasks.contracts.processed import load_split
from tasks.contracts.reports import BOOSTED, Selection
from tasks.core import paths
from tasks.onnx.runtime import session
from tasks.onnx.timing import session_latencies

BATCH, THREADS, ROUNDS = 256, 1, 20
TIMED = ("student.fp32", "student.int8", BOOSTED.name)  # with the champion


def check_project(root: Path, seconds: float) -> dict:
    selection = reports.read(Selection, root / paths.SELECTION)
    if BOOSTED.name not in selection.candidates:
        return {"skipped": "no boosted candidate (not a table, or boost.enabled false)"}
    ours, boosted = selection.ours, selection.candidates[BOOSTED.name]
    names = list(dict.fromkeys([selection.champion, *TIMED]))
    files = {n: root / paths.ONNX_DIR / f"{n}.onnx" for n in names if (root / paths.ONNX_DIR / f"{n}.onnx").exists()}
    x, _ = load_split("test", root / paths.PROCESSED)
    sessions = {n: session(p, threads=THREADS, spinning=False) for n, p in files.items()}
    latency = session_latencies(sessions, x, BATCH, seconds, ROUNDS)
    median = {n: figures["median"] for n, figures in latency.items()}
    return {
        "task": selection.task,
        "champion": selection.champion,
        "champion_quality": round(ours["quality"], 4),
        "boosted_quality": round(boosted["quality"], 4),
        # The target: >= the boosted reference's - 0.5% (relative), or the boosted model is the champion.
        "champion_vs_boosted_relative": round((ours["quality"] - boosted["quality"]) / abs(boosted["quality"]), 4),
        "baselines": {b.name: {"model": b.model, "quality": round(b.quality, 4)} for b in selection.baselines.values()},
        "students_quality_vs_boosted": {
            n: round(selection.candidates[n]["quality"] - boosted["quality"], 4)
            for n in TIMED[:2]
            if n in selection.candidates
        },
        f"latency_ms_b{BATCH}_t{THREADS}": {n: round(v, 4) for n, v in median.items()},
        "speed_vs_boosted": {n: round(median[BOOSTED.name] / v, 2) for n, v in median.items() if n != BOOSTED.name},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", type=Path, action="append", required=True, help="a pipeline run on a table")
    parser.add_argument("--seconds", type=float, default=3.0, help="timing budget per project, shared by the files")
    args = parser.parse_args()
    results: dict = {"load_average_before": os.getloadavg()[0], "batch": BATCH, "threads": THREADS}
    for root in args.project:
        source = reports.read(Selection, root / paths.SELECTION)
        name = f"{root.name} ({source.task})"
        results[name] = check_project(root, args.seconds)
        print(name, results[name], flush=True)
    results["load_average_after"] = os.getloadavg()[0]
    record("tables", results)


if __name__ == "__main__":
    main()
