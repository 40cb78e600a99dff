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

Against an earlier release of the server itself:

    python -m bench.bench_serve --against 5446666 [--against HEAD] [--rounds 7]

serves the same model from this checkout's deploy/ and from each commit's own
deploy/ and tasks/ (`git archive` into a temporary folder, run from there, so
the old server imports its own tasks.core and contracts), with the same
settings: onnxruntime on one thread, the prediction log on as by default, no
model polling. Rounds are interleaved (every server at concurrency 1, then
every server at 16, the order rotated each round) and the medians kept: c1
p50/p99 and c16 throughput of POST /predict, one sample per request, each
server's CPU time per request (less swayed than throughput by other work on
the machine), and the ratios of every other server to the first --against
(the baseline: with `--against 5446666 --against HEAD`, both the committed
server and this checkout's against 5446666, from one run). Results go to reports/bench.json
under "serve_vs_commit". The model is --model, else models/champion.onnx,
else a stand-in built here: the student's shape from params.yaml (8x8
digits, conv channels 8 and 16, dense 32, 10 classes, fp32, untrained
weights), exported by the pipeline's own export code.
"""

# No `from __future__ import annotations`: FastAPI must see the naive route's
# pydantic body type itself, not a string naming a class local to naive_app.
import argparse
import io
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

from bench.common import machine, record
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


# --------------------------------------------------------------------------- against an earlier commit

REPO = Path(__file__).resolve().parents[1]
SERVED_TREES = ("deploy", "tasks")  # what a commit's server imports: its own server code, core and contracts
WORKING_TREE = "working tree"


def resolve_commit(rev: str) -> str:
    out = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise DistilleryError(f"--against {rev}: not a commit of {REPO}")
    return out.stdout.strip()


def materialise(commit: str, dest: Path) -> None:
    """`commit`'s deploy/ and tasks/ under `dest`, and a check that a server
    started there imports them, not this checkout's (the editable install)."""
    dest.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", commit, *SERVED_TREES], capture_output=True, check=True
    )
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(dest, filter="data")
    probe = "import deploy.app, deploy.server, tasks; print(deploy.app.__file__); print(tasks.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=dest, env=server_env(dest), capture_output=True, text=True, timeout=120
    )
    files = out.stdout.split()
    if out.returncode != 0 or len(files) != 2 or not all(Path(f).is_relative_to(dest) for f in files):
        raise DistilleryError(f"{commit[:12]}: its server does not import from {dest}: {out.stderr.strip() or files}")


def server_env(tree: Path, settings: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a server run from `tree`: no stray DISTILLERY_SERVE_* or PYTHONPATH."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("DISTILLERY_SERVE_") and k != "PYTHONPATH"}
    return {**inherited, "PYTHONPATH": str(tree), **(settings or {})}


def stand_in_model(path: Path) -> Path:
    """An image model of the student's shape (params.yaml distill: conv 8, 16; dense 32), 10 digit classes,
    exported and labelled by the pipeline's own code. Untrained: the bench measures serving, not accuracy."""
    import torch

    from tasks.contracts.onnx import IMAGE_INPUT, ArtifactMetadata, InputSpec, Preprocessing, output_names
    from tasks.ml.models import CNN, CNNSpec
    from tasks.onnx.export import export_onnx, set_metadata

    torch.manual_seed(0)
    shape = (1, 8, 8)
    spec = CNNSpec(shape, channels=(8, 16), hidden=32, n_classes=10, dropout=0.0, mean=(8.0,), std=(4.0,))
    export_onnx(CNN(spec).eval(), shape, path, opset=17, input_name=IMAGE_INPUT)
    metadata = ArtifactMetadata(
        task="multiclass",
        classes=tuple(str(d) for d in range(10)),
        input_spec=InputSpec(name=IMAGE_INPUT, shape=(-1, *shape), dtype="float32", range=(0.0, 16.0)),
        preprocessing=Preprocessing(inside_graph="(x - mean) / std per channel", mean=(8.0,), std=(4.0,)),
        outputs=output_names("multiclass"),
        git_commit="bench-stand-in",
        data_hash="none",
    )
    set_metadata(path, metadata)
    return path


def logged_rows(folder: Path) -> int:
    """Rows in a server's prediction log (any schema version: both have the table)."""
    import sqlite3

    total = 0
    for path in sorted(folder.glob("predictions-*.db")):
        db = sqlite3.connect(path)
        try:
            total += db.execute("SELECT COUNT(*) FROM predictions").fetchone()[0]
        finally:
            db.close()
    return total


def start_servers(
    trees: dict[str, Path], model: Path, tmp_path: Path
) -> tuple[dict[str, subprocess.Popen], dict[str, str]]:
    """One server per tree, the same model and settings; (processes, base URLs), once all are ready.
    Server i logs its predictions to tmp_path/predictions-i and its stderr to tmp_path/server-i.log."""
    procs: dict[str, subprocess.Popen] = {}
    urls: dict[str, str] = {}
    try:
        for i, (name, tree) in enumerate(trees.items()):
            port = free_port()
            settings = {
                "DISTILLERY_SERVE_MODEL": str(model.resolve()),
                "DISTILLERY_SERVE_PORT": str(port),
                "DISTILLERY_SERVE_POLL_INTERVAL_S": "0",
                "DISTILLERY_SERVE_LOG_DIR": str(tmp_path / f"predictions-{i}"),  # on, as by default
                "DISTILLERY_SERVE_LOG_LEVEL": "warning",
                "DISTILLERY_SERVE_ORT_THREADS": "1",
            }
            with open(tmp_path / f"server-{i}.log", "w") as stderr:
                procs[name] = subprocess.Popen(
                    [sys.executable, "-m", "deploy.server"], cwd=tree, env=server_env(tree, settings), stderr=stderr
                )
            urls[name] = f"http://127.0.0.1:{port}"
        for i, (name, proc) in enumerate(procs.items()):
            try:
                wait_ready(urls[name] + "/v2/health/ready", proc)
            except DistilleryError as err:
                raise DistilleryError(f"{name}: {err}\n{(tmp_path / f'server-{i}.log').read_text()[-2000:]}") from None
    except BaseException:
        for proc in procs.values():
            stop(proc)
        raise
    return procs, urls


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads, so far (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def interleaved(
    servers: dict[str, tuple[str, int]], body: Path, script: Path, seconds: int, rounds: int
) -> dict[str, dict[int, list]]:
    """wrk samples of POST /predict, per server (base URL, pid) and concurrency:
    each round every server at c1, then every server at c16, the order rotated
    each round (A,B then B,A: no server is always first, so drift in the
    machine's load falls on all). Each sample also has the server's CPU time per
    request, which a busy machine sways less than requests per second."""
    for url, _ in servers.values():  # warm-up: caches, the onnxruntime session, the log's first file
        wrk(url + "/predict", body, script, 16, 2)
        wrk(url + "/predict", body, script, 1, 1)
    samples: dict[str, dict[int, list[dict]]] = {name: {c: [] for c in CONCURRENCY} for name in servers}
    names = list(servers)
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for c in CONCURRENCY:
            for name in order:
                url, pid = servers[name]
                cpu = cpu_seconds(pid)
                sample = wrk(url + "/predict", body, script, c, seconds)
                sample["cpu_us"] = (cpu_seconds(pid) - cpu) / sample["requests"] * 1e6
                samples[name][c].append(sample)
    return samples


def summarise(samples: dict[str, dict[int, list]], logged: dict[str, int]) -> dict[str, dict[str, Any]]:
    """Per server: the medians over rounds, each round's figures, and the rows its prediction log holds."""

    def median(name: str, c: int, key: str) -> float:
        return round(statistics.median(s[key] for s in samples[name][c]), 4)

    return {
        name: {
            **{
                f"c{c}": {key: median(name, c, key) for key in ("rps", "p50_ms", "p99_ms", "cpu_us")}
                for c in CONCURRENCY
            },
            "c16_rps_rounds": [round(s["rps"]) for s in samples[name][16]],
            "c1_p50_ms_rounds": [round(s["p50_ms"], 4) for s in samples[name][1]],
            "prediction_log_rows": logged[name],
        }
        for name in samples
    }


def over_baseline(servers: dict[str, dict[str, Any]], baseline: str) -> dict[str, dict[str, float]]:
    base = servers[baseline]
    return {
        name: {
            "c16_rps": round(r["c16"]["rps"] / base["c16"]["rps"], 3),
            "c1_p50": round(r["c1"]["p50_ms"] / base["c1"]["p50_ms"], 3),
            "c1_p99": round(r["c1"]["p99_ms"] / base["c1"]["p99_ms"], 3),
            "c16_cpu_per_request": round(r["c16"]["cpu_us"] / base["c16"]["cpu_us"], 3)
            if base["c16"]["cpu_us"]
            else None,
        }
        for name, r in servers.items()
        if name != baseline
    }


def model_note(model: Path | None) -> str:
    if model is None:
        return "no models/champion.onnx: a stand-in, " + " ".join((stand_in_model.__doc__ or "").split())
    return "the champion" if str(model) == DEFAULT_MODEL else "--model"


def run_against(model: Path | None, revs: list[str], seconds: int, rounds: int) -> dict[str, Any]:
    commits = {rev: resolve_commit(rev) for rev in revs}
    note = model_note(model)
    with tempfile.TemporaryDirectory(prefix="bench-serve-vs-") as tmp:
        tmp_path = Path(tmp)
        model_name = "stand-in" if model is None else str(model)
        served = stand_in_model(tmp_path / "stand-in.onnx") if model is None else model
        model_sha256 = sha256_file(served)
        bodies = sample_bodies(str(served), tmp_path)
        script = tmp_path / "post.lua"
        script.write_text(WRK_SCRIPT)
        trees = {WORKING_TREE: REPO}
        for rev, commit in commits.items():
            trees[rev] = tmp_path / f"tree-{commit[:12]}"
            materialise(commit, trees[rev])
        procs, urls = start_servers(trees, served, tmp_path)
        try:
            targets = {name: (urls[name], proc.pid) for name, proc in procs.items()}
            samples = interleaved(targets, bodies["predict"], script, seconds, rounds)
        finally:
            for proc in procs.values():
                stop(proc)
        logged = {name: logged_rows(tmp_path / f"predictions-{i}") for i, name in enumerate(trees)}
    servers = summarise(samples, logged)
    return {
        "command": "python -m bench.bench_serve "
        + " ".join(f"--against {rev}" for rev in revs)
        + f" --seconds {seconds} --rounds {rounds}",
        "commits": commits,
        "cpu": machine()["cpu"],
        "model": model_name,
        "model_note": note,
        "model_sha256": model_sha256,
        "endpoint": "POST /predict, one sample per request",
        "load_generator": "wrk -t1, loopback",
        "settings": "DISTILLERY_SERVE_ORT_THREADS=1, prediction log on (default), POLL_INTERVAL_S=0, defaults otherwise",
        "onnxruntime_threads": 1,
        "seconds_per_measurement": seconds,
        "rounds": rounds,
        "interleaving": "per round: every server at c1, then every server at c16; the order rotated each round",
        "servers": servers,
        "baseline": revs[0],
        "over_baseline": over_baseline(servers, revs[0]),
    }


def report_against(results: dict[str, Any]) -> str:
    lines = [
        f"{'server':<22} {'c1 p50 ms':>10} {'c1 p99 ms':>10} {'c16 req/s':>10} {'c16 cpu us/req':>15}  c16 req/s by round"
    ]
    for name, r in results["servers"].items():
        label = name if name == WORKING_TREE else f"{name} ({results['commits'][name][:7]})"
        rounds = " ".join(str(v) for v in r["c16_rps_rounds"])
        lines.append(
            f"{label:<22} {r['c1']['p50_ms']:>10.3f} {r['c1']['p99_ms']:>10.3f} {r['c16']['rps']:>10.0f}"
            f" {r['c16']['cpu_us']:>15.1f}  {rounds}"
        )
    baseline = results["baseline"]
    for name, ratio in results["over_baseline"].items():
        lines.append(
            f"{name} / {baseline}: c16 throughput {ratio['c16_rps']}x, c1 p50 {ratio['c1_p50']}x, "
            f"c1 p99 {ratio['c1_p99']}x, c16 server CPU per request {ratio['c16_cpu_per_request']}x"
        )
    lines.append(
        f"model: {results['model_note']}; {results['rounds']} rounds of {results['seconds_per_measurement']} s"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help=f"ONNX model (default: the champion, {DEFAULT_MODEL})")
    parser.add_argument("--seconds", type=int, default=3, help="length of each measurement")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per endpoint and concurrency (median kept)")
    parser.add_argument(
        "--against",
        action="append",
        metavar="COMMIT",
        help="measure this checkout's server against COMMIT's (repeatable); results under serve_vs_commit",
    )
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
    if args.against:
        if shutil.which("wrk") is None:
            print("bench_serve: skipped, wrk is not installed (Debian: apt-get install -y wrk)")
            return
        model = Path(args.model) if args.model else Path(DEFAULT_MODEL) if Path(DEFAULT_MODEL).exists() else None
        if model is not None and not model.exists():
            raise DistilleryError(f"{model}: not found")
        against = run_against(model, args.against, args.seconds, args.rounds)
        record("serve_vs_commit", against)
        print(report_against(against))
        return
    results = measure("bench_serve", args.model, lambda model: run_bench(model, args.seconds, args.rounds))
    if results is not None:
        record("serve", results)
        print(report(results))


if __name__ == "__main__":
    run_cli(main)
