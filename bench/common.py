"""What every benchmark records: the machine, and its results under one key of
reports/bench.json (other benchmarks' keys are kept)."""

from __future__ import annotations

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
