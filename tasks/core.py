"""Small pieces every stage shares: the project's error type, the stage entry
point, atomic writes, hashing and provenance."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np


class DistilleryError(Exception):
    """An expected failure: bad params, bad data or a failed gate.

    Its message names the file, key, column or field, and says what to do.
    Entry points turn it into exit code 2 with no traceback.
    """


EXIT_EXPECTED_FAILURE = 2


def run_cli(main: Callable[[], None]) -> None:
    """Run a stage's main(); expected failures exit 2 with their message only."""
    try:
        main()
    except DistilleryError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(EXIT_EXPECTED_FAILURE)


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `target`; rename it over `target` only on success,
    so a crash never leaves a half-written artifact behind."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=target.suffix)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o644)  # mkstemp makes files private; artifacts are for sharing
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def write_json(path: str | Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")


def read_json(path: str | Path, what: str = "file") -> Any:
    path = Path(path)
    if not path.exists():
        raise DistilleryError(f"{path}: {what} not found; run the stage that writes it first (dvc repro)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DistilleryError(f"{path}: not valid JSON ({err})") from err


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_npz(path: str | Path, **arrays: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    path = Path(path)
    if not path.exists():
        raise DistilleryError(f"{path}: not found; run the stage that writes it first (dvc repro)")
    # allow_pickle=False: a data file must never be able to run code.
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def hash_arrays(*arrays: np.ndarray) -> str:
    """Content hash of arrays: dtype, shape and bytes, so equal data hash equally."""
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def git_commit() -> str:
    """The commit of the code that produced an artifact ('unknown' outside git)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def write_summary(stage: str, markdown: str, reports_dir: str | Path = "reports") -> None:
    """The stage's short human summary; the flow publishes it as a Prefect artifact."""
    write_text(Path(reports_dir) / "summaries" / f"{stage}.md", markdown.rstrip() + "\n")


def markdown_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "_(none)_"
    headers = list(rows[0])
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        cells = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.values()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
