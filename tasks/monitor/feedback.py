"""Late labels: CSV or Parquet files of (request_id, row, label) in
`monitor.feedback_dir`, append-only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tasks.contracts.predlog import REQUEST_ID, ROW
from tasks.core.errors import DistilleryError

LABEL = "label"
FEEDBACK_COLUMNS = (REQUEST_ID, ROW, LABEL)
FEEDBACK_SUFFIXES = (".csv", ".parquet", ".pq")


def _read_feedback_file(path: Path) -> pd.DataFrame:
    try:
        if path.suffix.lower() == ".csv":
            frame = pd.read_csv(path, dtype={REQUEST_ID: str, LABEL: str})
        else:
            frame = pd.read_parquet(path)
    except Exception as err:  # pandas/pyarrow raise many parser error types
        raise DistilleryError(f"{path}: cannot read the feedback file ({type(err).__name__}: {err})") from err
    missing = [c for c in FEEDBACK_COLUMNS if c not in frame.columns]
    if missing:
        raise DistilleryError(f"{path}: feedback file lacks the columns {missing} (it needs {list(FEEDBACK_COLUMNS)})")
    rows = pd.to_numeric(frame[ROW], errors="coerce")
    if rows.isna().any() or (rows % 1 != 0).any():
        bad = int(rows[rows.isna() | (rows % 1 != 0)].index[0])
        raise DistilleryError(f"{path}: row {bad}: 'row' must be a whole number (the row's index in its request)")
    return pd.DataFrame(
        {
            REQUEST_ID: frame[REQUEST_ID].astype(str),
            ROW: rows.astype(np.int64),
            LABEL: frame[LABEL].where(frame[LABEL].notna(), "").astype(str),
        }
    )  # missing: ""


def feedback_files(feedback_dir: str | Path) -> list[Path]:
    folder = Path(feedback_dir)
    return sorted(p for p in folder.glob("*") if p.suffix.lower() in FEEDBACK_SUFFIXES) if folder.is_dir() else []


def read_all_feedback(feedback_dir: str | Path) -> pd.DataFrame:
    """Every label in every feedback file, in file order, with the file's name in
    `file`: duplicates and conflicts kept, for the snapshot to judge."""
    frames = [_read_feedback_file(path).assign(file=path.name) for path in feedback_files(feedback_dir)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=[*FEEDBACK_COLUMNS, "file"])


def read_feedback(feedback_dir: str | Path, seen: dict[str, int]) -> tuple[pd.DataFrame, dict[str, int]]:
    """Labels that arrived since the last run, and the new `seen` map.

    Feedback files (CSV or Parquet with request_id, row, label) are append-only:
    a new file, or the rows appended to a known one, are new labels. A file
    that shrank was replaced, and all of it counts as new. A label given twice
    for one (request_id, row) counts once, the last one."""
    new, now_seen = [], {}
    for path in feedback_files(feedback_dir):
        frame = _read_feedback_file(path)
        before = seen.get(path.name, 0)
        new.append(frame.iloc[before:] if before <= len(frame) else frame)
        now_seen[path.name] = len(frame)
    labels = pd.concat(new, ignore_index=True) if new else pd.DataFrame(columns=list(FEEDBACK_COLUMNS))
    return labels.drop_duplicates([REQUEST_ID, ROW], keep="last").reset_index(drop=True), now_seen
