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
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable

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
            records = predlog.records(pending)
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


def read_predictions(folder: str | Path) -> list[dict[str, Any]]:
    """Every logged row in `folder`, oldest first (for tests and quick looks)."""
    return predlog.read_rows(folder).to_dict("records")
