"""The prediction log's writer: every answered row, and every refused request,
appended to SQLite in the format of tasks.contracts.predlog (which the monitor
reads with the same code).

Requests append to an in-memory buffer (a list append under a lock); a
background thread writes the buffer in one transaction when it is half full or
every `flush_interval`. Rows leave the buffer only once their transaction has
committed. Nothing is dropped: a request whose rows would overflow
`max_buffer` waits (`put`) until the writer has made room, so a writer that
falls behind slows the answers down (backpressure) instead of losing rows.
One request larger than the whole buffer is admitted into an empty buffer.
So the buffer never holds more than max(max_buffer, the largest request)
rows, and a crash (kill -9) loses at most that. A failing disk is logged and
counted ('failed'); requests go on being answered.

The writer turns entries into rows a run of like entries at a time (one
tasks.contracts.predlog.records call per run, on the run's rows stacked), not
one call per entry: the writer is a thread of the server's process, and the
per-call numpy work of thousands of one-row entries a second held the GIL the
event loop needs (about 30 us an entry, against 2-3 us a row stacked). For the
same reason the writer registers an adapter for None with sqlite3 (see
`_bind_null_directly`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable, Hashable

import numpy as np

from tasks.contracts import predlog
from tasks.contracts.predlog import Entry
from tasks.core.errors import DistilleryError

log = logging.getLogger("deploy.predlog")
BACKPRESSURE_POLL_S = 0.002  # a full buffer is rechecked this often; a commit of 1,000 rows takes a few ms

__all__ = ["Entry", "PredictionLog", "read_predictions"]


class PredictionLog:
    def __init__(self, folder: str | Path, max_buffer: int, flush_interval_s: float, count: Callable[[str, int], None]):
        """`count(outcome, rows)` reports rows 'written' or 'failed' (metrics)."""
        self.folder = Path(folder)
        self.max_buffer, self.flush_interval_s = max_buffer, flush_interval_s
        self._count = count
        self._buffer: list[Entry] = []
        self._rows = 0  # rows in the buffer, written or not yet
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._db: sqlite3.Connection | None = None
        self._path: Path | None = None

    # ------------------------------------------------------------ request side

    def append(self, entry: Entry) -> bool:
        """Hand `entry` to the writer if the buffer has room (never blocks on
        I/O); False, and the writer woken, if it has not."""
        n = len(entry)
        with self._lock:
            admitted = self._rows == 0 or self._rows + n <= self.max_buffer
            if admitted:
                self._buffer.append(entry)
                self._rows += n
            wake = not admitted or self._rows * 2 >= self.max_buffer
        if wake:
            self._wake.set()
        return admitted

    async def put(self, entry: Entry) -> None:
        """Append `entry`, waiting without blocking the event loop while the
        buffer is full: the writer frees it at the next commit."""
        while not self.append(entry):
            await asyncio.sleep(BACKPRESSURE_POLL_S)

    # ------------------------------------------------------------ writer side

    def check(self) -> None:
        """Refuse, before serving, a log folder that cannot be written."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._open()
        except (OSError, sqlite3.Error) as err:
            raise DistilleryError(
                f"DISTILLERY_SERVE_LOG_DIR={self.folder}: cannot write the prediction log there ({err})"
            ) from err

    def start(self) -> None:
        self.check()
        _bind_null_directly()
        self._thread = threading.Thread(target=self._loop, name="prediction-log", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Write what is buffered, then stop the writer."""
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        if self._db is not None:
            self._db.close()
            self._db = None

    def _open(self) -> sqlite3.Connection:
        path = predlog.file_for(self.folder, time.time())
        if self._db is None or path != self._path:
            if self._db is not None:
                self._db.close()
            self._db, self._path = predlog.connect(path), path
        return self._db

    def _loop(self) -> None:
        while True:
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            stopping = self._stop
            self.flush()
            if stopping:
                return

    def flush(self) -> None:
        """Write the buffered entries in one transaction; they leave the buffer
        only after it commits. Runs on the writer thread (or at close)."""
        with self._lock:
            pending = list(self._buffer)
        if not pending:
            return
        rows = sum(len(e) for e in pending)
        try:
            records = stacked_records(pending)
            db = self._open()
            db.execute("BEGIN")
            try:
                db.executemany(predlog.INSERT, records)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            outcome = "written"
        except Exception:  # a full or read-only disk must not take the server down
            log.exception("could not write %d prediction rows to %s; they are lost", rows, self.folder)
            outcome = "failed"
        with self._lock:
            del self._buffer[: len(pending)]
            self._rows -= rows
        self._count(outcome, rows)


def _null(value: None) -> None:
    return None


def _bind_null_directly() -> None:
    """sqlite3 (CPython 3.11) looks for an adapter for every parameter that is
    not an int, float or str, None included: two attribute lookups that fail,
    each formatting an AttributeError, under the GIL, for every NULL column of
    every row (a quarter of a row's insert). With an adapter registered for None,
    it is found in one dict lookup, and None still binds as NULL. The registry
    is sqlite3's, for the whole process; None -> None changes nothing else."""
    sqlite3.register_adapter(type(None), _null)


def _run_key(entry: Entry) -> Hashable:
    """Entries with equal keys are stacked into one records() call; None: alone.
    The dtypes are in it because records() writes what numpy makes of them (a
    float32 and a float64 probability print differently)."""
    outputs = entry.outputs
    if entry.status != predlog.OK or outputs is None or not len(outputs):
        return None  # a refused request (one row), or no rows at all: nothing to stack
    image = entry.rows is None
    return (
        entry.endpoint,
        entry.model_name,
        entry.model_version,
        entry.task,
        entry.classes,
        entry.threshold,
        image,
        (entry.x.shape[1:], entry.x.dtype) if image and entry.x is not None else None,
        outputs.shape[1:],
        outputs.dtype,
        entry.unseen is None,  # a run either flags its rows' unseen categories or not
        entry.pictures is None,  # ... and either describes its rows' picture files or not
    )


def stacked_records(entries: list[Entry]) -> list[tuple]:
    """predlog.records(entries), row for row and in order, computed per run of
    like entries: the run's inputs and outputs are stacked into one entry, the
    contract formats its rows, and each row gets back its own request's ts,
    request id, row index and latency."""
    out: list[tuple] = []
    i, n = 0, len(entries)
    while i < n:
        key = _run_key(entries[i])
        j = i + 1
        if key is not None:
            while j < n and _run_key(entries[j]) == key:
                j += 1
        if j - i == 1:
            out += predlog.records(entries[i:j])
        else:
            out += _stacked(entries[i:j])
        i = j
    return out


def _stacked(run: list[Entry]) -> list[tuple]:
    first = run[0]
    image = first.rows is None
    stacked = dataclasses.replace(  # the run as one request; ts, request id and latency are set per row below
        first,
        x=np.concatenate([e.x for e in run]) if image else None,  # type: ignore[misc]  # image entries carry x
        rows=None if image else [row for e in run for row in e.rows],  # type: ignore[union-attr]  # table: rows
        outputs=np.concatenate([e.outputs for e in run]),  # type: ignore[misc]  # answered: outputs
        unseen=None if first.unseen is None else [names for e in run for names in e.unseen or ()],
        pictures=None if first.pictures is None else [picture for e in run for picture in e.pictures or ()],
    )
    rows = predlog.records([stacked])
    # Columns ts, request_id, row first and latency_ms last (tests/serve/test_predlog_writer.py holds this).
    if len(rows) == len(run):  # one row each (no entry in a run is empty): the usual case
        return [(e.ts, e.request_id, 0, *row[3:-1], e.latency_ms) for e, row in zip(run, rows)]
    per_row = ((e.ts, e.request_id, k, e.latency_ms) for e in run for k in range(len(e)))
    return [(ts, rid, k, *row[3:-1], latency) for (ts, rid, k, latency), row in zip(per_row, rows)]


def read_predictions(folder: str | Path) -> list[dict[str, Any]]:
    """Every logged row in `folder`, oldest first (for tests and quick looks)."""
    return predlog.read_rows(folder).to_dict("records")
