"""Each stage's short human summary (also the flow's Prefect artifact)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tasks.core.io import write_text


def write_summary(stage: str, markdown: str, reports_dir: str | Path = "reports") -> None:
    """The stage's short human summary; the flow publishes it as a Prefect artifact."""
    write_text(Path(reports_dir) / "summaries" / f"{stage}.md", markdown.rstrip() + "\n")


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Rows as a Markdown table. The columns are every key of every row, in first-seen
    order, so rows with extra keys still line up; a missing cell is empty."""
    if not rows:
        return "_(none)_"
    headers = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        cells = [_cell(row.get(h, "")) for h in headers]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
