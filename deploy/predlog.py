"""The prediction log: one row per answered prediction, appended to SQLite.

Requests only append to an in-memory buffer (a list append under a lock); a
background thread writes the buffer in one transaction when it is half full or
every `flush_interval`. Rows leave the buffer only once their transaction has
committed, and a request whose rows would overflow `max_buffer` is not logged
(counted as dropped) rather than waiting: so a request never blocks on the log,
and a crash (kill -9) loses at most `max_buffer` rows. A failing disk is
logged and counted; requests go on being answered.

Storage: `<log_dir>/predictions-YYYYMMDD.db` (UTC day), SQLite in WAL mode, so
readers (the monitor flow, `sqlite3`) never block the writer. Table
`predictions`:

| column | meaning |
|---|---|
| ts | unix time the request was answered (seconds) |
| request_id | X-Request-ID (sent or generated); one request can hold many rows |
| row | index of the row in its request |
| endpoint | predict or infer |
| model_name, model_version | the model that answered |
| inputs | JSON: a table row as sent; for images a summary {mean, std, min, max} |
| predicted | the predicted class name |
| probability | its probability |
| probabilities | JSON list, one per class, in the model's class order |
| latency_ms | the request's time in the server, receive to answer |
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import orjson

from tasks.core import DistilleryError

log = logging.getLogger("deploy.predlog")

SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    request_id TEXT NOT NULL,
    row INTEGER NOT NULL,
    endpoint TEXT NOT NULL,
    model_name TEXT NOT NULL,
    model_version TEXT NOT NULL,
    inputs TEXT NOT NULL,
    predicted TEXT NOT NULL,
    probability REAL NOT NULL,
    probabilities TEXT NOT NULL,
    latency_ms REAL NOT NULL
);
-- The monitor reads by time window; ts grows with id, so the index costs little to keep.
CREATE INDEX IF NOT EXISTS predictions_ts ON predictions (ts);
"""
INSERT = (
    "INSERT INTO predictions (ts, request_id, row, endpoint, model_name, model_version, inputs, predicted,"
    " probability, probabilities, latency_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


@dataclass
class Entry:
    """One answered request, as the request path hands it over: raw arrays, no
    formatting (that happens on the writer thread)."""

    ts: float
    request_id: str
    endpoint: str
    model_name: str
    model_version: str
    classes: tuple[str, ...]
    x: np.ndarray  # what the model ran on
    rows: list | None  # table rows as sent (they are logged instead of the encoded x)
    probabilities: np.ndarray
    latency_ms: float

    def __len__(self) -> int:
        return len(self.probabilities)


def _records(entries: list[Entry]) -> list[tuple]:
    """The rows to insert for `entries`. Entries of one kind and class list are
    stacked first, so that the per-row work is numpy's and orjson's: this runs
    on the writer thread, but it holds the GIL the event loop needs."""
    groups: dict[tuple, list[Entry]] = {}
    for entry in entries:
        groups.setdefault((entry.classes, entry.rows is None), []).append(entry)
    out: list[tuple] = []
    for (classes, summary), group in groups.items():
        counts = np.array([len(e) for e in group])
        if counts.max() > 1:
            def per_row(values: list) -> list:
                return np.repeat(np.array(values, dtype=object), counts).tolist()
        else:
            per_row = list
        probs = np.concatenate([e.probabilities for e in group])
        best = probs.argmax(axis=1)
        if summary:
            flat = np.concatenate([e.x.reshape(len(e.x), -1) for e in group]).astype(np.float64)
            stats = zip(flat.mean(1).tolist(), flat.std(1).tolist(), flat.min(1).tolist(), flat.max(1).tolist())
            inputs = [orjson.dumps({"mean": a, "std": b, "min": c, "max": d}).decode() for a, b, c, d in stats]
        else:
            inputs = [orjson.dumps(row).decode() for e in group for row in e.rows]
        out += zip(
            per_row([e.ts for e in group]),
            per_row([e.request_id for e in group]),
            (np.arange(len(probs)) - np.repeat(np.cumsum(counts) - counts, counts)).tolist(),
            per_row([e.endpoint for e in group]),
            per_row([e.model_name for e in group]),
            per_row([e.model_version for e in group]),
            inputs,
            np.asarray(classes, dtype=object)[best].tolist(),
            probs[np.arange(len(probs)), best].astype(np.float64).tolist(),
            [orjson.dumps(p, option=orjson.OPT_SERIALIZE_NUMPY).decode() for p in probs],
            per_row([e.latency_ms for e in group]),
        )
    return out


class PredictionLog:
    def __init__(self, folder: str | Path, max_buffer: int, flush_interval_s: float, count: Callable[[str, int], None]):
        """`count(outcome, rows)` reports rows 'written', 'dropped' or 'failed' (metrics)."""
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
        self._day = ""

    # ------------------------------------------------------------ request side

    def append(self, entry: Entry) -> bool:
        """Hand `entry` to the writer; never blocks on I/O. False if it was dropped."""
        n = len(entry)
        with self._lock:
            if self._rows + n > self.max_buffer:
                dropped = True
            else:
                dropped = False
                self._buffer.append(entry)
                self._rows += n
                wake = self._rows * 2 >= self.max_buffer
        if dropped:
            self._count("dropped", n)
            return False
        if wake:
            self._wake.set()
        return True

    # ------------------------------------------------------------ writer side

    def check(self) -> None:
        """Refuse, before serving, a log folder that cannot be written."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._open()
        except (OSError, sqlite3.Error) as err:
            raise DistilleryError(f"DISTILLERY_SERVE_LOG_DIR={self.folder}: cannot write the prediction log there ({err})") from err

    def start(self) -> None:
        self.check()
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

    def _path(self, day: str) -> Path:
        return self.folder / f"predictions-{day}.db"

    def _open(self) -> sqlite3.Connection:
        day = time.strftime("%Y%m%d", time.gmtime())
        if self._db is None or day != self._day:
            if self._db is not None:
                self._db.close()
            db = sqlite3.connect(self._path(day), check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # a committed row survives a process crash
            db.executescript(SCHEMA)
            self._db, self._day = db, day
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
            records = _records(pending)
            db = self._open()
            db.execute("BEGIN")
            try:
                db.executemany(INSERT, records)
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


def read_predictions(folder: str | Path) -> list[dict[str, Any]]:
    """Every logged row in `folder`, oldest first (for tests and quick looks)."""
    out = []
    for path in sorted(Path(folder).glob("predictions-*.db")):
        db = sqlite3.connect(path)  # read-write, so a WAL left by a crashed server is recovered
        db.row_factory = sqlite3.Row
        out += [dict(r) for r in db.execute("SELECT * FROM predictions ORDER BY id")]
        db.close()
    return out
