"""Stage 12, report: the run report, reports/index.html, after every run.

One self-contained page of what the stages measured and what the registry
holds (tasks/evaluation/page.py), so that after `dvc repro` or `dvc exp run`
the page a user opens shows this run, not the one before. Like register, it
runs every time (`always_changed`): the registry it shows is outside DVC's
view. `make run`'s flow writes the page once more at its end, with each
stage's time.
"""

from __future__ import annotations

from pathlib import Path

from tasks.core.errors import run_cli
from tasks.core.report import write_summary
from tasks.evaluation.page import INDEX, REGISTRY_SECTIONS, write_report

SECTIONS = REGISTRY_SECTIONS


def main() -> None:
    written = write_report(Path("."))
    write_summary("report", f"Wrote `{INDEX}`: open it in a browser (no network needed).")
    print(f"report: wrote {written} (open it in a browser; no network needed)")


if __name__ == "__main__":
    run_cli(main)
