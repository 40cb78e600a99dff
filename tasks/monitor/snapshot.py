"""Late labels become training rows: every feedback file joined to the
prediction log, checked, and written as the production snapshot
(tasks.contracts.production) that ingest appends to the source's rows.

What a label needs to become a row: an answered prediction with its
request_id + row in the log (whose `inputs` hold the row as the client sent
it), one label per prediction, and a label the task accepts (a known class, or
a number for regression). Anything else goes to quarantine.csv with its
reason; nothing is dropped. The rows then pass the same GX gate as any data,
in validate. The snapshot grows: a row stays once labelled, even after its log
file is gone, unless it is labelled again.

    python -m tasks.monitor.snapshot      # the monitor runs it on every pass with new labels
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pandas as pd

from tasks.contracts import dataset as dataset_contract
from tasks.contracts import predlog
from tasks.contracts import production as snap
from tasks.contracts.processed import read_meta
from tasks.core import paths
from tasks.core.errors import run_cli
from tasks.core.params import Params, load_params
from tasks.core.task import kind_of, task_of
from tasks.monitor.feedback import LABEL, read_all_feedback

KEYS = [predlog.REQUEST_ID, predlog.ROW]


def _quarantined(frame: pd.DataFrame, reason: str) -> pd.DataFrame:
    return pd.DataFrame(
        {
            snap.REQUEST_ID: frame[predlog.REQUEST_ID].astype(str),
            snap.ROW: frame[predlog.ROW],
            snap.FILE: frame["file"],
            LABEL: frame[LABEL],
            snap.REASON: reason,
        }
    )


def judge_labels(labels: pd.DataFrame) -> tuple[pd.DataFrame, list[pd.DataFrame]]:
    """One trusted label per prediction, and the quarantined rest: missing
    labels, conflicting labels (all of them), repeats of the same label."""
    out = []
    missing = labels[LABEL].str.strip() == ""
    out.append(_quarantined(labels[missing], snap.MISSING_LABEL))
    labels = labels[~missing]
    distinct = labels.groupby(KEYS)[LABEL].transform("nunique")
    out.append(_quarantined(labels[distinct > 1], snap.CONFLICTING_LABELS))
    labels = labels[distinct == 1]
    repeat = labels.duplicated(KEYS, keep="first")
    out.append(_quarantined(labels[repeat], snap.DUPLICATE_LABEL))
    return labels[~repeat], out


def _label_problem(task: str, classes: tuple[str, ...]):
    if task_of(task).single_label:
        known = set(classes)
        return snap.UNKNOWN_CLASS, lambda label: label not in known
    if task_of(task).regression:
        return snap.BAD_LABEL, lambda label: not np.isfinite(pd.to_numeric(label, errors="coerce"))
    return snap.UNSUPPORTED_TASK, lambda label: True  # multilabel feedback has no agreed format yet


def build(root: str | Path = ".", params: Params | None = None) -> snap.Snapshot:
    """Rebuild `data.production.path` from every feedback file and the log."""
    root = Path(root)
    params = params or load_params(root / paths.PARAMS)
    m = params.monitor
    processed = read_meta(root / paths.PROCESSED)
    # Image labels are quarantined (the log keeps pixel summaries, not pixels):
    # only tables need the user's target column, from ingest's meta.
    target = LABEL if kind_of(processed.kind).image else dataset_contract.read_meta(root / paths.INGESTED).target
    previous = snap.read_snapshot(root / params.data.production.path)

    labels, quarantined = judge_labels(read_all_feedback(root / m.feedback_dir))
    logged = predlog.lookup(root / m.log_dir, labels).drop_duplicates(KEYS, keep="last") if len(labels) else None
    if logged is not None and len(logged):
        joined = labels.merge(logged.astype({predlog.ROW: np.int64}), on=KEYS, how="left", indicator=True)
    else:
        joined = labels.assign(
            _merge="left_only", **{c: None for c in (predlog.INPUTS, predlog.TS, predlog.MODEL_VERSION)}
        )
    unmatched = joined["_merge"] == "left_only"
    quarantined.append(_quarantined(joined[unmatched], snap.NO_PREDICTION))
    joined = joined[~unmatched]
    if kind_of(processed.kind).image:
        quarantined.append(_quarantined(joined, snap.IMAGE_INPUTS))
        joined = joined.iloc[:0]
    reason, bad = _label_problem(processed.task, processed.classes)
    wrong = joined[LABEL].map(bad).astype(bool)
    quarantined.append(_quarantined(joined[wrong], reason))
    joined = joined[~wrong]

    inputs = pd.DataFrame([orjson.loads(text) for text in joined[predlog.INPUTS]], index=joined.index)
    rows = inputs.assign(
        **{
            target: joined[LABEL],
            snap.REQUEST_ID: joined[predlog.REQUEST_ID],
            snap.ROW: joined[predlog.ROW],
            snap.TS: joined[predlog.TS],
            snap.MODEL_VERSION: joined[predlog.MODEL_VERSION],
            snap.FILE: joined["file"],
        }
    )
    rows = rows.astype(object).where(rows.notna(), "").astype(str)
    # Rows labelled before stay (their log file may have been rotated away); a new label replaces one.
    kept = (
        previous.rows[
            ~previous.rows.set_index([snap.REQUEST_ID, snap.ROW]).index.isin(
                rows.set_index([snap.REQUEST_ID, snap.ROW]).index
            )
        ]
        if len(previous.rows)
        else previous.rows
    )
    rows = pd.concat([kept, rows], ignore_index=True)
    rows = rows[[c for c in rows.columns if c not in snap.LINEAGE] + list(snap.LINEAGE)]
    order = np.lexsort((pd.to_numeric(rows[snap.ROW]), rows[snap.REQUEST_ID], pd.to_numeric(rows[snap.TS])))
    rows = rows.fillna("").iloc[order].reset_index(drop=True)
    quarantine = (
        pd.concat([q for q in quarantined if len(q)], ignore_index=True)
        if any(len(q) for q in quarantined)
        else pd.DataFrame(columns=[snap.REQUEST_ID, snap.ROW, snap.FILE, LABEL, snap.REASON])
    )
    return snap.write_snapshot(root / params.data.production.path, rows, quarantine)


def describe(snapshot: snap.Snapshot) -> str:
    reasons = ", ".join(f"{n} {reason}" for reason, n in snapshot.reasons.items()) or "none"
    return f"{len(snapshot.rows)} labelled production rows (quarantined: {reasons})"


def main() -> None:
    snapshot = build()
    folder = load_params(paths.PARAMS).data.production.path
    print(f"{folder}: {describe(snapshot)}; `dvc repro` (or `make run`) retrains on them")


if __name__ == "__main__":
    run_cli(main)
