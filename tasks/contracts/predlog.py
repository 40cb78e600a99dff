"""The prediction log: one row per answered prediction, and one per refused
request, in SQLite. The server writes it (deploy/predlog.py buffers and
flushes); monitoring reads it (tasks/monitor); both through this module.

Files: `<log_dir>/predictions-YYYYMMDD.db` (the UTC day the rows were
written), WAL mode, so readers never block the writer. Table `predictions`:

| column | meaning |
|---|---|
| ts | unix time the request was answered (seconds) |
| request_id | X-Request-ID (sent or generated); one request can hold many rows |
| row | index of the row in its request (0 for a refused request) |
| endpoint | predict or infer |
| model_name, model_version | the model that answered (or was asked) |
| status | the HTTP status: 200, or the 4xx/5xx the request got |
| error | why it was refused (null when answered) |
| inputs | JSON: a table row as sent; for images the summary {mean, std, min, max} of its pixels, and for a picture sent as a file also {width, height, channels, format} as stored |
| predicted | the answer as text: the class, or for multilabel a JSON list of labels (null for regression) |
| probability | the predicted class's probability (classifiers) |
| probabilities | JSON list, one per class or label, in the model's order (classifiers, multilabel) |
| value | the predicted value (regression) |
| unseen | JSON list: a table row's categorical columns whose value training never saw (null for images, infer, older rows) |
| latency_ms | the request's time in the server, receive to answer |
"""

from __future__ import annotations

import calendar
import math
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import orjson
import pandas as pd

from tasks.core.errors import DistilleryError
from tasks.core.task import task_of

TABLE = "predictions"
PREFIX, SUFFIX = "predictions-", ".db"
GLOB = f"{PREFIX}*{SUFFIX}"

TS, REQUEST_ID, ROW, ENDPOINT = "ts", "request_id", "row", "endpoint"
MODEL_NAME, MODEL_VERSION, STATUS, ERROR = "model_name", "model_version", "status", "error"
INPUTS, PREDICTED, PROBABILITY, PROBABILITIES, VALUE, UNSEEN, LATENCY_MS = (
    "inputs",
    "predicted",
    "probability",
    "probabilities",
    "value",
    "unseen",
    "latency_ms",
)
# Name, SQLite type, default for rows written before the column existed.
COLUMNS: tuple[tuple[str, str, Any], ...] = (
    (TS, "REAL NOT NULL", None),
    (REQUEST_ID, "TEXT NOT NULL", None),
    (ROW, "INTEGER NOT NULL", None),
    (ENDPOINT, "TEXT NOT NULL", None),
    (MODEL_NAME, "TEXT NOT NULL", None),
    (MODEL_VERSION, "TEXT NOT NULL", None),
    (STATUS, "INTEGER NOT NULL DEFAULT 200", 200),
    (ERROR, "TEXT", None),
    (INPUTS, "TEXT", None),
    (PREDICTED, "TEXT", None),
    (PROBABILITY, "REAL", None),
    (PROBABILITIES, "TEXT", None),
    (VALUE, "REAL", None),
    (UNSEEN, "TEXT", None),
    (LATENCY_MS, "REAL NOT NULL", None),
)
NAMES = tuple(name for name, _, _ in COLUMNS)
CREATE_TABLE = (
    f"CREATE TABLE IF NOT EXISTS {TABLE} (id INTEGER PRIMARY KEY, "
    + ", ".join(f"{name} {kind}" for name, kind, _ in COLUMNS)
    + ")"
)
# The monitor reads by time window; ts grows with id, so the index costs little to keep.
CREATE_INDEX = f"CREATE INDEX IF NOT EXISTS {TABLE}_ts ON {TABLE} ({TS})"
INSERT = f"INSERT INTO {TABLE} ({', '.join(NAMES)}) VALUES ({', '.join('?' for _ in NAMES)})"
OK = 200

IMAGE_SUMMARY = ("mean", "std", "min", "max")  # per image, over its pixels in raw units
# Per picture sent as a file (deploy.images): as stored, after EXIF orientation and before the model's
# policy resized it: width and height in pixels, channels (1 grey, 3 colour; alpha not counted), Pillow's format.
PICTURE = WIDTH, HEIGHT, CHANNELS, FORMAT = ("width", "height", "channels", "format")
MAX_ERROR_CHARS = 500


def image_summary(x: np.ndarray) -> dict[str, np.ndarray]:
    """Per image: mean, std (population), min and max of its pixels in raw
    units. The server logs it; monitoring summarises the train split the same way."""
    flat = np.asarray(x).reshape(len(x), -1).astype(np.float64)
    values = (flat.mean(1), flat.std(1), flat.min(1), flat.max(1))
    return dict(zip(IMAGE_SUMMARY, values))


def file_for(folder: str | Path, ts: float) -> Path:
    return Path(folder) / f"{PREFIX}{time.strftime('%Y%m%d', time.gmtime(ts))}{SUFFIX}"


def file_day_start(path: Path) -> Optional[float]:
    """Start (unix time) of the UTC day a log file is named for; None for another name."""
    try:
        return float(calendar.timegm(time.strptime(path.name.removeprefix(PREFIX).removesuffix(SUFFIX), "%Y%m%d")))
    except ValueError:
        return None


# --------------------------------------------------------------------------- writing


@dataclass
class Entry:
    """One request, as the server hands it over: raw arrays, no formatting
    (that happens on the writer thread). A refused request has `status` >= 400,
    its `error`, and no outputs."""

    ts: float
    request_id: str
    endpoint: str
    model_name: str
    model_version: str
    latency_ms: float
    task: str = ""
    classes: tuple[str, ...] = ()
    threshold: float = 0.5
    x: Optional[np.ndarray] = None  # what the model ran on
    rows: Optional[list] = None  # table rows as sent (logged instead of the encoded x)
    outputs: Optional[np.ndarray] = None  # the answer: probabilities, or a regression's values
    unseen: Optional[list] = None  # table rows: per row, the columns with a category training never saw
    pictures: Optional[list] = None  # pictures sent as files: per row, its PICTURE values (logged in inputs)
    status: int = OK
    error: Optional[str] = None

    def __len__(self) -> int:
        return 1 if self.outputs is None else len(self.outputs)


def _json(values: Any) -> str:
    return orjson.dumps(values, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def _answered(entry: Entry) -> list[tuple]:
    n = len(entry)
    answers: list[tuple[Any, ...]]
    if entry.rows is not None:
        inputs = [_json(row) for row in entry.rows]
    else:
        assert entry.x is not None  # an image entry carries its pixels (Entry's own check)
        stats = image_summary(entry.x)
        summaries = [dict(zip(IMAGE_SUMMARY, values)) for values in zip(*(s.tolist() for s in stats.values()))]
        for summary, picture in zip(summaries, entry.pictures or ()):
            summary.update(zip(PICTURE, picture))
        inputs = [_json(summary) for summary in summaries]
    out = np.asarray(entry.outputs)
    task = task_of(entry.task)
    if task.regression:
        answers = [(None, None, None, v) for v in out.reshape(n, -1)[:, 0].astype(np.float64).tolist()]
    elif task.multilabel:
        names = np.asarray(entry.classes, dtype=object)
        answers = [(_json(names[p >= entry.threshold].tolist()), None, _json(p), None) for p in out]
    else:
        best = out.argmax(axis=1)
        names = np.asarray(entry.classes, dtype=object)[best].tolist()
        top = out[np.arange(n), best].astype(np.float64).tolist()
        answers = [(c, p, _json(row), None) for c, p, row in zip(names, top, out)]
    unseen = [None] * n if entry.unseen is None else [_json(names) for names in entry.unseen]
    head = (entry.ts, entry.request_id)
    tail = (entry.endpoint, entry.model_name, entry.model_version, OK, None)
    return [(*head, i, *tail, inputs[i], *answers[i], unseen[i], entry.latency_ms) for i in range(n)]


def records(entries: list[Entry]) -> list[tuple]:
    """The rows to insert for `entries`, in the order of NAMES."""
    out: list[tuple] = []
    for entry in entries:
        if entry.status != OK or entry.outputs is None:
            error = (entry.error or "")[:MAX_ERROR_CHARS]
            out.append(
                (
                    entry.ts,
                    entry.request_id,
                    0,
                    entry.endpoint,
                    entry.model_name,
                    entry.model_version,
                    entry.status,
                    error,
                    None,
                    None,
                    None,
                    None,
                    None,
                    None,
                    entry.latency_ms,
                )
            )
        else:
            out += _answered(entry)
    return out


def connect(path: Path, timeout: float = 30) -> sqlite3.Connection:
    """A connection to one log file with the current schema: created if new,
    and a file written by an older server is migrated (its rows kept, new
    columns at their defaults)."""
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=timeout)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")  # a committed row survives a process crash
    existing = [r[1] for r in db.execute(f"PRAGMA table_info({TABLE})")]
    if existing and [c for c in existing if c != "id"] != list(NAMES):
        _migrate(db, existing)
    db.execute(CREATE_TABLE)
    db.execute(CREATE_INDEX)
    return db


def _migrate(db: sqlite3.Connection, existing: list[str]) -> None:
    kept = [name for name in NAMES if name in existing]
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute(f"ALTER TABLE {TABLE} RENAME TO {TABLE}_old")
        db.execute(f"DROP INDEX IF EXISTS {TABLE}_ts")
        db.execute(CREATE_TABLE)
        db.execute(f"INSERT INTO {TABLE} (id, {', '.join(kept)}) SELECT id, {', '.join(kept)} FROM {TABLE}_old")
        db.execute(f"DROP TABLE {TABLE}_old")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


# --------------------------------------------------------------------------- reading


def _reader(path: Path) -> sqlite3.Connection:
    # Read-write, so that a WAL left by a crashed server is recovered; readers never write rows.
    db = sqlite3.connect(path, timeout=30)
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if TABLE not in tables:
        db.close()
        raise DistilleryError(f"{path}: not a prediction log (no table '{TABLE}'); move it out of the log folder")
    return db


def _with_all_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows of an older file get today's columns, at their defaults."""
    for name, _, default in COLUMNS:
        if name not in frame:
            frame[name] = default
    return frame


def log_files(folder: str | Path) -> list[Path]:
    """Every log file under `folder`, subfolders included (one per server replica)."""
    return sorted(Path(folder).rglob(GLOB))


def read_rows(folder: str | Path, since: Optional[float] = None, until: float = math.inf) -> pd.DataFrame:
    """Logged rows with since <= ts < until, oldest first, across the daily files
    under `folder`. A day's file holds rows written that UTC day (a row answered
    just before midnight may be written just after), so files are skipped with
    a day's margin."""
    frames = []
    for path in log_files(folder):
        day = file_day_start(path)
        if day is not None and ((since is not None and day + 2 * 86400 <= since) or day - 86400 >= until):
            continue
        db = _reader(path)
        try:
            frames.append(
                _with_all_columns(
                    pd.read_sql_query(
                        f"SELECT * FROM {TABLE} WHERE {TS} >= ? AND {TS} < ? ORDER BY {TS}, id",
                        db,
                        params=(since if since is not None else -math.inf, until),
                    )
                )
            )
        finally:
            db.close()
    frames = [f for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame(columns=["id", *NAMES])
    return pd.concat(frames, ignore_index=True).sort_values(TS, kind="stable").reset_index(drop=True)


def rows_per_request(folder: str | Path, status: int = OK) -> dict[str, int]:
    """{request_id: rows logged} over every file under `folder`, for requests
    logged with `status` (answered ones by default). Counted in SQLite, so a
    log of millions of rows is checked without loading it."""
    counts: dict[str, int] = {}
    for path in log_files(folder):
        db = _reader(path)
        try:
            for request_id, n in db.execute(
                f"SELECT {REQUEST_ID}, COUNT(*) FROM {TABLE} WHERE {STATUS} = ? GROUP BY {REQUEST_ID}", (status,)
            ):
                counts[request_id] = counts.get(request_id, 0) + n
        finally:
            db.close()
    return counts


def lookup(folder: str | Path, keys: pd.DataFrame) -> pd.DataFrame:
    """The answered rows for `keys` (request_id, row), from whichever file holds them."""
    columns = [TS, REQUEST_ID, ROW, MODEL_VERSION, INPUTS, PREDICTED, PROBABILITIES, VALUE]
    frames = []
    if not keys.empty:
        wanted = keys[[REQUEST_ID, ROW]].astype({REQUEST_ID: str, ROW: int})
        pairs = list(wanted.itertuples(index=False, name=None))
        for path in log_files(folder):
            db = _reader(path)
            try:
                have = {r[1] for r in db.execute(f"PRAGMA table_info({TABLE})")}
                select = ", ".join(f"p.{c}" if c in have else f"NULL AS {c}" for c in columns)
                ok = f" AND p.{STATUS} = {OK}" if STATUS in have else ""
                db.execute(
                    f"CREATE TEMP TABLE wanted ({REQUEST_ID} TEXT, {ROW} INTEGER, PRIMARY KEY ({REQUEST_ID}, {ROW}))"
                )
                db.executemany("INSERT OR IGNORE INTO wanted VALUES (?, ?)", pairs)
                frames.append(
                    pd.read_sql_query(
                        f"SELECT {select} FROM {TABLE} p JOIN wanted w ON p.{REQUEST_ID} = w.{REQUEST_ID} "
                        f"AND p.{ROW} = w.{ROW}{ok}",
                        db,
                    )
                )
            finally:
                db.close()
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def request_rows(folder: str | Path, request_id: str) -> pd.DataFrame:
    """Every logged row of one request (answered or refused), from whichever file holds them."""
    frames = []
    for path in log_files(folder):
        db = _reader(path)
        try:
            frames.append(
                _with_all_columns(
                    pd.read_sql_query(
                        f"SELECT * FROM {TABLE} WHERE {REQUEST_ID} = ? ORDER BY {ROW}", db, params=(request_id,)
                    )
                )
            )
        finally:
            db.close()
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["id", *NAMES])
