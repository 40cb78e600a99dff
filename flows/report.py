"""What a run leaves for people, from the orchestration's side: the run
report with the flow's stage table (each stage, ran or skipped, and its time)
or, by `python -m flows.report` after a plain `dvc repro`, with what
`dvc status` says; the few lines the console ends with; and `make plots`.
The page itself is tasks/evaluation/page.py's, which the report stage of
dvc.yaml also writes at the end of every `dvc repro` and `dvc exp run`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

from flows.common import is_stale, stage_order
from tasks.contracts import reports
from tasks.contracts.reports import Selection
from tasks.core import paths
from tasks.core.task import task_of
from tasks.evaluation import page
from tasks.evaluation.page import INDEX, registry_state, version_text


def stage_rows(root: Path, stages: Optional[list[dict]]) -> list[dict]:
    """The flow's own stage table, or (after a plain `dvc repro`) what `dvc status` says now."""
    if stages is not None:
        return [
            {
                "stage": s["stage"],
                "ran": "ran" if s["ran"] else "skipped (up to date)",
                "seconds": s["seconds"],
                "where": s.get("where", ""),
            }
            for s in stages
        ]
    return [{"stage": name, "ran": "stale" if is_stale(root, name) else "up to date"} for name in stage_order(root)]


def write_report(root: Path, stages: Optional[list[dict]] = None) -> Path:
    """reports/index.html with the flow's stage table (`stages`), or what `dvc status` says now."""
    return page.write_report(root, stage_rows(root, stages))


def console_summary(root: Path) -> list[str]:
    """The lines a run ends with: the champion, where it is, and what to do next."""
    selection = reports.read_optional(Selection, root / paths.SELECTION)
    if selection is None:
        return ["no champion yet: select has not completed (reports/summaries/ says how far the run got)"]
    ours, ref, key = selection.ours, selection.ref, selection.speed_key
    beside = "".join(f", {b.name} baseline {b.quality:.4f}" for b in selection.baselines.values())
    ece = f", ECE {ours['ece']:.4f}" if ours.get("ece") is not None else ""
    registry = registry_state(root)
    uri = registry["uri"]
    if registry["version"]:
        alias = "alias @champion" if registry["promoted"] else "not promoted (select.promote, or `dvc exp run`)"
        held = f"{registry['registered_model']} version {registry['version']}, {alias}"
    else:
        held = f"{registry['registered_model']}: {version_text(registry)} ({registry.get('error') or 'no version of this file'})"
    return [
        f"champion: {selection.champion}: {task_of(selection.task).quality_label} {ours['quality']:.4f}{ece} "
        f"({selection.reference}: {ref['quality']:.4f}{beside}); {selection.speedup:.2f}x the teacher's speed ({key}, "
        f"onnxruntime against onnxruntime), {ours['size_bytes'] / 1024:.1f} KiB",
        "  file:     models/champion.onnx",
        f"  registry: {held} ({uri})",
        f"  report:   {INDEX} (open it in a browser; no network needed), model card {paths.MODEL_CARD}",
        "next:",
        "  make serve        # serve the champion on http://127.0.0.1:8000 (try /docs)",
        f"  .venv/bin/mlflow ui --backend-store-uri {uri}   # runs, registry and model card"
        if uri.startswith("sqlite")
        else f"  open {uri}   # the MLflow UI: runs, registry and model card",
    ]


PLOTS_TEMPLATE = Path(".dvc/tmp/plots_offline.html")
PLOTS_PAGE = paths.REPORTS / "dvc_plots"


def plots_page(root: Path, dvc_args: list[str]) -> Path:
    """`dvc plots show` (or `diff`, with `dvc_args`) as a page that needs no
    network: DVC's default page loads Vega from a CDN, so this one gets an HTML
    template with Vega, Vega-Lite and vega-embed inlined (vl-convert's bundle)."""
    import subprocess
    import sys

    import vl_convert

    from tasks.core.errors import DistilleryError
    from tasks.core.io import write_text

    template = root / PLOTS_TEMPLATE
    write_text(
        template,
        "<!DOCTYPE html><html><head><meta charset=utf-8><title>DVC plots</title>"
        f"<script>{vl_convert.javascript_bundle()}</script></head><body>{{plot_divs}}</body></html>",
    )
    command = [
        sys.executable,
        "-m",
        "dvc",
        "plots",
        *(dvc_args or ["show"]),
        "--html-template",
        str(template),
        "-o",
        str(root / PLOTS_PAGE),
    ]
    done = subprocess.run(command, cwd=root, capture_output=True, text=True)
    if done.returncode != 0:
        raise DistilleryError(f"dvc plots failed ({' '.join(command[2:])}):\n{done.stdout}{done.stderr}")
    return root / PLOTS_PAGE / "index.html"


def main(argv: Iterable[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(
        description="Write reports/index.html from the reports on disk; with --plots, DVC's plots as an offline page."
    )
    parser.add_argument("--root", default=".", help="the project folder (default: here)")
    parser.add_argument(
        "--plots",
        nargs=argparse.REMAINDER,
        metavar="DVC_PLOTS_ARGS",
        help="write reports/dvc_plots/index.html with `dvc plots show`, or `dvc plots` and these "
        "arguments (e.g. --plots diff HEAD)",
    )
    args = parser.parse_args(list(argv) if argv is not None else None)
    root = Path(args.root).resolve()
    if args.plots is not None:
        print(f"wrote {plots_page(root, args.plots).relative_to(root)} (open it in a browser; no network needed)")
        return
    print(f"wrote {write_report(root).relative_to(root)}")
    print("\n".join(console_summary(root)))


if __name__ == "__main__":
    from tasks.core.errors import run_cli

    run_cli(main)
