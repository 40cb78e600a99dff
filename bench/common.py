"""What every benchmark records: the machine, and its results under one key of
reports/bench.json (other benchmarks' keys are kept)."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from tasks.core.io import write_json

BENCH_REPORT = Path("reports/bench.json")


def processed_digits(params: Any) -> tuple[dict, Any]:
    """The configured image source through ingest, the gate and preprocess, in memory:
    (splits, ProcessedMeta), as the pipeline makes them."""
    from tasks.data.gate import gate, load_suite
    from tasks.ingest import ingest
    from tasks.preprocess import preprocess

    result = gate(
        ingest(params.data), params.task.type, params.validate, load_suite(f"expectations/{params.data.source}.json")
    )
    return preprocess(result.valid, params.preprocess, params.task.type)


# Doodles per class (tasks/doodles.py): most 600, two rarer, one rare, like the course's imbalanced Quick Draw set.
DOODLE_COUNTS = {"line": 300, "star": 300, "zigzag": 150}
DOODLES_PER_CLASS = 600
# digits28 drawn with stronger jitter than its default (10 deg, 0.1, 2 px): a harder set of look-alikes.
HARD_DIGITS28 = {"rotate_deg": 30.0, "scale": 0.25, "shift_px": 4.0}
IMAGE_SOURCES = ("digits", "digits28", "digits28-hard", "doodles")


def source_params(params: Any, source: str, folder: Path) -> Any:
    """params with the picture source set: a bundled one, digits28-hard, or
    doodles (10 classes drawn into `folder` first, read as Quick Draw files)."""
    if source == "digits28-hard":
        digits28 = dataclasses.replace(params.data.digits28, **HARD_DIGITS28)
        return dataclasses.replace(params, data=dataclasses.replace(params.data, source="digits28", digits28=digits28))
    if source != "doodles":
        return dataclasses.replace(params, data=dataclasses.replace(params.data, source=source))
    from tasks.doodles import CLASSES, make_doodles

    counts = {c: DOODLE_COUNTS.get(c, DOODLES_PER_CLASS) for c in CLASSES}
    make_doodles(folder, counts, seed=0)
    quickdraw = dataclasses.replace(params.data.quickdraw, classes=CLASSES, samples_per_class=counts)
    return dataclasses.replace(
        params, data=dataclasses.replace(params.data, source="quickdraw", path=str(folder), quickdraw=quickdraw)
    )


def machine() -> dict[str, Any]:
    """CPU model and the int8-relevant instruction sets: int8 speed depends on them."""
    flags, model = set(), platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "avx512f": "avx512f" in flags,
        "avx512_vnni": "avx512_vnni" in flags,
        "avx_vnni": "avx_vnni" in flags,
        "python": platform.python_version(),
    }


def record(key: str, results: dict[str, Any], path: Path = BENCH_REPORT) -> None:
    existing = json.loads(path.read_text()) if path.exists() else {}
    existing["machine"] = machine()
    existing[key] = {**results, "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_json(path, existing)


@contextmanager
def timed(into: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    into[name] = round(time.perf_counter() - start, 3)
