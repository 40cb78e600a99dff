"""Labelled production rows: the snapshot that closes the loop.

The monitor (flows/monitor.py, tasks/monitor/snapshot.py) joins the late
labels in `monitor.feedback_dir` to the prediction log and writes the snapshot
here; ingest appends its rows to a table source's rows (`data.production`), so
a retrain learns from them and `dvc repro` reruns from ingest when it changes.
One folder, `data.production.path` (a DVC dependency of ingest):

| file | content |
|---|---|
| rows.csv | one row per labelled production prediction: the row as the client sent it (its columns), the label in the target column, and the lineage columns below; every cell text, as a CSV source reaches the gate |
| quarantine.csv | the labels that cannot become training rows, each with `_reason` |
| snapshot.json | the sha256 of rows.csv, its row count, the quarantine counts by reason |

Lineage columns (ingest leaves them out of the training table): `_request_id`,
`_row` (the prediction's key in the log), `_ts` (when it was answered),
`_model_version` (the version that answered), `_file` (the feedback file).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from tasks.core.errors import DistilleryError
from tasks.core.io import atomic_path, read_json, write_json
from tasks.core.provenance import sha256_file

ROWS, QUARANTINE, SNAPSHOT = "rows.csv", "quarantine.csv", "snapshot.json"
REQUEST_ID, ROW, TS, MODEL_VERSION, FILE, REASON = "_request_id", "_row", "_ts", "_model_version", "_file", "_reason"
LINEAGE = (REQUEST_ID, ROW, TS, MODEL_VERSION, FILE)

# Why a label did not become a training row (quarantine.csv `_reason`).
MISSING_LABEL = "missing_label"
CONFLICTING_LABELS = "conflicting_labels"  # one prediction labelled differently: none of them is trusted
DUPLICATE_LABEL = "duplicate_label"  # the same label again: the first one is kept
NO_PREDICTION = "no_answered_prediction"  # no answered row in the prediction log has this request_id + row
UNKNOWN_CLASS = "unknown_class"
BAD_LABEL = "bad_label"  # a regression label that is not a number
IMAGE_INPUTS = "image_inputs"  # the log keeps a summary of an image's pixels, not the pixels
UNSUPPORTED_TASK = "unsupported_task"


@dataclass(frozen=True)
class Snapshot:
    rows: pd.DataFrame  # rows.csv: the client's columns, the target, LINEAGE
    quarantine: pd.DataFrame  # quarantine.csv
    sha256: str | None = None  # of rows.csv; None when there is none
    reasons: dict[str, int] = field(default_factory=dict)


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as err:  # pandas raises several parser error types
        raise DistilleryError(
            f"{path}: cannot read the production snapshot ({type(err).__name__}: {err}); "
            "rebuild it with `python -m tasks.monitor.snapshot`"
        ) from err


def read_snapshot(folder: str | Path) -> Snapshot:
    """The snapshot in `folder`; empty when none was built yet."""
    folder = Path(folder)
    rows_path = folder / ROWS
    if not rows_path.exists():
        return Snapshot(pd.DataFrame(columns=list(LINEAGE)), pd.DataFrame(columns=[*LINEAGE, REASON]))
    rows = _read_csv(rows_path)
    missing = [c for c in LINEAGE if c not in rows.columns]
    if missing:
        raise DistilleryError(
            f"{rows_path}: lacks the lineage columns {missing}; rebuild it with `python -m tasks.monitor.snapshot`"
        )
    quarantine = _read_csv(folder / QUARANTINE) if (folder / QUARANTINE).exists() else pd.DataFrame()
    info = read_json(folder / SNAPSHOT, "snapshot info") if (folder / SNAPSHOT).exists() else {}
    return Snapshot(rows, quarantine, sha256_file(rows_path), info.get("quarantined_by_reason", {}))


def _write_csv(path: Path, frame: pd.DataFrame) -> None:
    text = frame.to_csv(index=False)
    if path.exists() and path.read_text() == text:
        return  # unchanged: DVC sees the same dependency, and nothing reruns
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_snapshot(folder: str | Path, rows: pd.DataFrame, quarantine: pd.DataFrame) -> Snapshot:
    """Write the three files; a file whose content is unchanged is not touched."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _write_csv(folder / ROWS, rows.astype(str))
    _write_csv(folder / QUARANTINE, quarantine.astype(str))
    reasons = (
        {str(k): int(v) for k, v in quarantine[REASON].value_counts().sort_index().items()} if len(quarantine) else {}
    )
    sha = sha256_file(folder / ROWS)
    info = {
        "rows_sha256": sha,
        "rows": int(len(rows)),
        "quarantined": int(len(quarantine)),
        "quarantined_by_reason": reasons,
    }
    if not (folder / SNAPSHOT).exists() or read_json(folder / SNAPSHOT) != info:
        write_json(folder / SNAPSHOT, info)
    return Snapshot(rows, quarantine, sha, reasons)
