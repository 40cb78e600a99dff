"""Serving speed: deploy.server against a naive FastAPI endpoint, same model,
same machine, same run.

    python -m bench.bench_serve [--model models/champion.onnx] [--seconds 3] [--rounds 3]

The naive endpoint is what one writes first: a FastAPI route whose pydantic
body is `list[list[float]]`, one onnxruntime run per request, the response
built by FastAPI. Both servers run under the same uvicorn (httptools, uvloop),
with onnxruntime pinned to one intra-op thread, and every request carries one
sample (a digit from scikit-learn's bundled set).

Load comes from wrk (Debian's `wrk`; the bench is skipped with a message when it
is absent), on loopback only, each measurement bounded in time. For each
endpoint: p50/p99 latency and throughput at concurrency 1, and throughput (and
latencies) at concurrency 16. Endpoints are measured in turn, `--rounds` times,
and the median of the rounds is kept, so that other load on the machine hits
all of them alike. Results go to reports/bench.json under "serve".

Targets: /predict and v2 infer at concurrency 16 reach >= 3x the naive
endpoint's throughput, and /predict's p50 at concurrency 1 is <= 1 ms.
"""

# No `from __future__ import annotations`: FastAPI must see the naive route's
# pydantic body type itself, not a string naming a class local to naive_app.
import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

from bench.common import record
from tasks.contracts.onnx import IMAGE_INPUT, PROBABILITIES, ArtifactMetadata
from tasks.core.errors import DistilleryError, run_cli
from tasks.core.provenance import sha256_file

DEFAULT_MODEL = "models/champion.onnx"
TARGET_RATIO = 3.0
TARGET_P50_MS = 1.0
CONCURRENCY = (1, 16)

# wrk's Lua: POST the body, then print one JSON line of what was measured.
WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = io.open(os.getenv("BENCH_BODY"), "r"):read("*a")
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "mean_us": %f, "errors": %d, "bad_status": %d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.mean,
    e.connect + e.read + e.write + e.timeout, e.status))
end
"""


# --------------------------------------------------------------------------- the naive endpoint


def naive_app(model_path: str) -> Any:
    """What the bench compares against (served by `--naive-server`)."""
    import numpy as np
    import onnxruntime as ort
    from fastapi import FastAPI
    from pydantic import BaseModel

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
    session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
    metadata = ArtifactMetadata.from_props(session.get_modelmeta().custom_metadata_map, model_path)
    classes = list(metadata.classes)
    inp = session.get_inputs()[0]
    shape = [d for d in inp.shape[1:]]

    class Rows(BaseModel):
        rows: list[list[float]]

    app = FastAPI()

    @app.post("/predict")
    def predict(body: Rows) -> dict:
        x = np.asarray(body.rows, dtype=np.float32).reshape(-1, *shape)
        probs = session.run([PROBABILITIES], {inp.name: x})[0]
        return {
            "predictions": [
                {
                    "class": classes[int(p.argmax())],
                    "probability": float(p.max()),
                    "probabilities": dict(zip(classes, p.tolist())),
                }
                for p in probs
            ]
        }

    @app.get("/ready")
    def ready() -> dict:
        return {"ready": True}

    return app


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DistilleryError(f"the server for {url} exited with {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise DistilleryError(f"{url} not ready after {timeout} s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # skips deploy.server's drain grace
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wrk(url: str, body: Path, script: Path, concurrency: int, seconds: int) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--timeout", "10s", "-s", str(script), url],
        capture_output=True,
        text=True,
        env={**os.environ, "BENCH_BODY": str(body)},
        timeout=seconds + 30,
    )
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not line:
        raise DistilleryError(f"wrk failed on {url}: {out.stderr.strip() or out.stdout.strip()}")
    r = json.loads(line[-1])
    if r["errors"] or r["bad_status"]:
        raise DistilleryError(
            f"{url} at concurrency {concurrency}: {r['errors']} socket errors, {r['bad_status']} error statuses"
        )
    return {
        "rps": r["requests"] / (r["duration_us"] / 1e6),
        "p50_ms": r["p50_us"] / 1000,
        "p99_ms": r["p99_us"] / 1000,
        "requests": r["requests"],
    }


class Skip(Exception):
    """Nothing to measure here; say why and exit 0."""


def sample_bodies(model_path: str, folder: Path) -> dict[str, Path]:
    """One image, as a /predict body and as a v2 infer body: a digit from
    scikit-learn's bundled set for an 8x8 model, random pixels otherwise."""
    import numpy as np
    import onnxruntime as ort

    inp = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"]).get_inputs()[0]
    if inp.name != IMAGE_INPUT:
        raise Skip(f"{model_path} is a table model ('{inp.name}'); this bench sends images")
    shape = [int(d) for d in inp.shape[1:]]
    if shape == [1, 8, 8]:
        from sklearn.datasets import load_digits

        pixels = load_digits().images[0].astype(int).ravel().tolist()
    else:
        pixels = np.random.default_rng(0).integers(0, 256, size=int(np.prod(shape))).tolist()
    bodies = {
        "predict": {"rows": [pixels]},
        "infer": {"inputs": [{"name": IMAGE_INPUT, "shape": [1, *shape], "datatype": "FP32", "data": pixels}]},
    }
    paths = {}
    for name, body in bodies.items():
        paths[name] = folder / f"{name}.json"
        paths[name].write_text(json.dumps(body))
    return paths


def batch_totals(metrics_url: str) -> tuple[float, float]:
    """(rows, onnxruntime runs) so far, from the server's /metrics."""
    text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    values = {}
    for line in text.splitlines():
        for key in ("distillery_batch_size_sum", "distillery_batch_size_count"):
            if line.startswith(key + " "):
                values[key] = float(line.split()[1])
    return values.get("distillery_batch_size_sum", 0.0), values.get("distillery_batch_size_count", 0.0)


def measure(bench: str, model_arg: str | None, run: Callable[[Path], dict[str, Any]]) -> dict[str, Any] | None:
    """`run(model)`, or None after saying why there is nothing to measure: no
    wrk, no champion yet, or a model this bench cannot load."""
    if shutil.which("wrk") is None:
        print(f"{bench}: skipped, wrk is not installed (Debian: apt-get install -y wrk)")
        return None
    model = Path(model_arg or DEFAULT_MODEL)
    if not model.exists():
        if model_arg:
            raise DistilleryError(f"{model}: not found")
        print(f"{bench}: skipped, {model} not found (run `make run` first, or pass --model)")
        return None
    try:
        return run(model)
    except Skip as why:
        print(f"{bench}: skipped, {why}")
        return None


# --------------------------------------------------------------------------- the bench


def run_bench(model: Path, seconds: int, rounds: int) -> dict[str, Any]:
    python = sys.executable
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        tmp_path = Path(tmp)
        bodies = sample_bodies(str(model), tmp_path)
        script = tmp_path / "post.lua"
        script.write_text(WRK_SCRIPT)
        ours_port, naive_port = free_port(), free_port()
        inherited = {
            k: v for k, v in os.environ.items() if not k.startswith("DISTILLERY_SERVE_")
        }  # no stray token or limits
        env = {
            **inherited,
            "DISTILLERY_SERVE_MODEL": str(model),
            "DISTILLERY_SERVE_PORT": str(ours_port),
            "DISTILLERY_SERVE_POLL_INTERVAL_S": "0",
            "DISTILLERY_SERVE_LOG_DIR": str(tmp_path / "predictions"),
            "DISTILLERY_SERVE_LOG_LEVEL": "warning",
            "DISTILLERY_SERVE_ORT_THREADS": "1",
        }
        procs = [
            subprocess.Popen([python, "-m", "deploy.server"], env=env, stderr=open(tmp_path / "ours.log", "w")),
            subprocess.Popen(
                [python, "-m", "bench.bench_serve", "--naive-server", str(naive_port), "--model", str(model)],
                stderr=open(tmp_path / "naive.log", "w"),
            ),
        ]
        try:
            wait_ready(f"http://127.0.0.1:{ours_port}/v2/health/ready", procs[0])
            wait_ready(f"http://127.0.0.1:{naive_port}/ready", procs[1])
            endpoints = {
                "predict": (f"http://127.0.0.1:{ours_port}/predict", bodies["predict"]),
                "infer": (f"http://127.0.0.1:{ours_port}/v2/models/distillery/infer", bodies["infer"]),
                "naive": (f"http://127.0.0.1:{naive_port}/predict", bodies["predict"]),
            }
            for url, body in endpoints.values():  # warm-up: JIT-free, but caches, sessions and connections
                wrk(url, body, script, 16, 1)
            samples: dict[str, dict[int, list[dict]]] = {name: {c: [] for c in CONCURRENCY} for name in endpoints}
            batches = {c: [0.0, 0.0] for c in CONCURRENCY}  # rows, runs of our server at each concurrency
            metrics_url = f"http://127.0.0.1:{ours_port}/metrics"
            for _ in range(rounds):
                for c in CONCURRENCY:
                    for name, (url, body) in endpoints.items():
                        before = batch_totals(metrics_url)
                        samples[name][c].append(wrk(url, body, script, c, seconds))
                        after = batch_totals(metrics_url)
                        if name != "naive":
                            batches[c][0] += after[0] - before[0]
                            batches[c][1] += after[1] - before[1]
        finally:
            for proc in procs:
                stop(proc)

    def median(name: str, c: int, key: str) -> float:
        return round(statistics.median(s[key] for s in samples[name][c]), 3)

    results: dict[str, Any] = {}
    for name in endpoints:
        results[name] = {
            f"c{c}": {
                "rps": median(name, c, "rps"),
                "p50_ms": median(name, c, "p50_ms"),
                "p99_ms": median(name, c, "p99_ms"),
            }
            for c in CONCURRENCY
        }
    naive_rps = results["naive"]["c16"]["rps"]
    ratios = {
        f"{name}_vs_naive_c16": round(results[name]["c16"]["rps"] / naive_rps, 2) for name in ("predict", "infer")
    }
    return {
        "model": str(model),
        "model_sha256": sha256_file(model),
        "load_generator": "wrk -t1 (one sample per request, loopback)",
        "onnxruntime_threads": 1,
        "seconds_per_measurement": seconds,
        "rounds": rounds,
        "endpoints": results,
        "throughput_ratio": ratios,
        "mean_rows_per_onnxruntime_run": {
            f"c{c}": round(rows / runs, 2) if runs else None for c, (rows, runs) in batches.items()
        },
        "targets": {"throughput_ratio_min": TARGET_RATIO, "predict_p50_c1_max_ms": TARGET_P50_MS},
        "meets_targets": min(ratios.values()) >= TARGET_RATIO and results["predict"]["c1"]["p50_ms"] <= TARGET_P50_MS,
    }


def report(results: dict[str, Any]) -> str:
    lines = [
        f"{'endpoint':<10} {'c1 p50 ms':>10} {'c1 p99 ms':>10} {'c1 req/s':>10} {'c16 p50 ms':>11} {'c16 p99 ms':>11} {'c16 req/s':>10}"
    ]
    for name, r in results["endpoints"].items():
        c1, c16 = r["c1"], r["c16"]
        lines.append(
            f"{name:<10} {c1['p50_ms']:>10.3f} {c1['p99_ms']:>10.3f} {c1['rps']:>10.0f} {c16['p50_ms']:>11.3f} {c16['p99_ms']:>11.3f} {c16['rps']:>10.0f}"
        )
    ratios = ", ".join(f"{k} {v}x" for k, v in results["throughput_ratio"].items())
    batch = ", ".join(f"{k} {v}" for k, v in results["mean_rows_per_onnxruntime_run"].items())
    lines.append(f"throughput ratios: {ratios} (target >= {TARGET_RATIO}x)")
    lines.append(f"mean rows per onnxruntime run (micro-batching): {batch}")
    lines.append(f"meets targets: {results['meets_targets']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help=f"ONNX model (default: the champion, {DEFAULT_MODEL})")
    parser.add_argument("--seconds", type=int, default=3, help="length of each measurement")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per endpoint and concurrency (median kept)")
    parser.add_argument("--naive-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.naive_server:
        import uvicorn

        uvicorn.run(
            naive_app(args.model),
            host="127.0.0.1",
            port=args.naive_server,
            loop="uvloop",
            http="httptools",
            log_level="warning",
            access_log=False,
        )
        return
    if args.seconds < 1 or args.rounds < 1:
        raise DistilleryError("--seconds must be >= 1 and --rounds >= 1")
    results = measure("bench_serve", args.model, lambda model: run_bench(model, args.seconds, args.rounds))
    if results is not None:
        record("serve", results)
        print(report(results))


if __name__ == "__main__":
    run_cli(main)
