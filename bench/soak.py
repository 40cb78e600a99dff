"""Soak and overload: deploy.server under a long mixed load at 80% of its
measured peak, and its goodput when far more clients connect than it can serve.

    python -m bench.soak [--model models/champion.onnx] [--seconds 600] [--report reports/bench.json]

One server (python -m deploy.server, default settings, onnxruntime on one
thread, its prediction log in a temporary folder) and wrk (Debian's `wrk`; the
bench is skipped with a message when it is absent), on loopback only.

1. **Peak.** A valid-only load (1- and 4-row /predict, 1-row v2 infer) at
   1, 2, 4, ... 64 connections. The saturated rate is the highest throughput;
   the saturating connections are the fewest that reach 95% of it.
2. **Soak.** The mixed load: the valid requests above, and in between about
   one in three malformed ones (truncated JSON, rows of the wrong length, a
   string among the pixels, a v2 shape that disagrees with its data, an
   unknown model), each expected to get a 4xx. It runs `--seconds` in chunks
   of at most 10 s, paced by wrk's per-request delay to 80% of the mixed
   load's own peak (aimed in 2-s runs first, then re-aimed after each chunk
   from the rate it reached). The
   server's RSS is read from /proc after each chunk.
3. **Overload.** The valid load at 3x the saturating connections, and at 3x
   the connections the server admits at once (max_concurrency + max_queue),
   where it must shed. Goodput is the rate of 200s over the saturated rate
   (the valid load at the saturating connections), measured in the same
   round; rounds interleave the three, and the median ratio is kept.
4. **The prediction log.** Every request carries an X-Request-ID naming its
   kind and rows; wrk writes the id of every 200 it read. After the server has
   stopped, each of those ids must be in the log with all its rows.

Reported under "soak" in the report: errors (a valid request not answered 200,
a malformed one not answered 4xx, any 5xx or socket error), p50/p99, RSS at
the start and end of the soak and its growth (goal: under 5%), goodput
(goal: at least 70% of the saturated rate), and the log check.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.bench_serve import DEFAULT_MODEL, Skip, free_port, measure, stop, wait_ready
from bench.common import BENCH_REPORT, record
from deploy.settings import ServeSettings
from tasks.contracts import predlog
from tasks.contracts.onnx import IMAGE_INPUT
from tasks.core.errors import DistilleryError, run_cli

RAMP = (1, 2, 4, 8, 16, 32, 64)
SATURATED_SHARE = 0.95  # the fewest connections within this of the peak saturate the server
SOAK_LOAD = 0.8
CHUNK_S = 10
# The server and wrk on separate cores, so that the load generator's own work
# (960 connections of it, under overload) does not take the server's CPU.
_CPUS = sorted(os.sched_getaffinity(0))
SERVER_CPUS = set(_CPUS[: max(1, len(_CPUS) // 2)])
CLIENT_CPUS = set(_CPUS[len(_CPUS) // 2 :]) or SERVER_CPUS
GOALS = {"rss_growth_max": 0.05, "goodput_min": 0.70, "errors": 0}
# What wrk counts: a valid request answered 200 or not, a malformed one answered
# 4xx or not, 503s (load shed), other 5xx, and answers without our request id.
COUNTERS = ("valid_ok", "valid_bad", "invalid_4xx", "invalid_bad", "shed", "server_errors", "unknown")

# wrk's Lua. Each thread cycles through the requests of SOAK_REQUESTS (one per
# line: kind, rows, path, body, tab-separated); a request's id is
# <kind><rows>-<run>-<thread>-<n>, so its answer tells what was asked.
WRK_SCRIPT = r"""
local threads = {}
function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end
function init(args)
  kinds, rows, paths, bodies = {}, {}, {}, {}
  for line in io.lines(os.getenv("SOAK_REQUESTS")) do
    local k, r, p, b = line:match("^(%a)\t(%d+)\t([^\t]+)\t(.*)$")
    table.insert(kinds, k); table.insert(rows, r); table.insert(paths, p); table.insert(bodies, b)
  end
  run, pause, n = os.getenv("SOAK_RUN"), tonumber(os.getenv("SOAK_DELAY_MS")), 0
  valid_ok, valid_bad, invalid_4xx, invalid_bad, shed, server_errors, unknown = 0, 0, 0, 0, 0, 0, 0
  whole, part = math.floor(pause), pause - math.floor(pause)
  answered = io.open(string.format("%s/%s-%d.ids", os.getenv("SOAK_IDS"), run, tid), "w")
  answered:setvbuf("line")
end
function request()
  n = n + 1
  local i = (n - 1) % #paths + 1
  local id = string.format("%s%s-%s-%d-%d", kinds[i], rows[i], run, tid, n)
  return wrk.format("POST", paths[i], {["Content-Type"] = "application/json", ["X-Request-ID"] = id}, bodies[i])
end
function delay()
  -- wrk's timers count whole milliseconds: a fractional pause is drawn as the
  -- whole part, plus one with the fraction's probability
  if math.random() < part then return whole + 1 end
  return whole
end
function response(status, headers, body)
  local id = headers["x-request-id"] or ""
  local kind = id:sub(1, 1)
  if status == 503 then shed = shed + 1
  elseif status >= 500 then server_errors = server_errors + 1
  elseif kind == "v" then
    if status == 200 then valid_ok = valid_ok + 1; answered:write(id, "\n") else valid_bad = valid_bad + 1 end
  elseif kind == "i" then
    if status >= 400 then invalid_4xx = invalid_4xx + 1 else invalid_bad = invalid_bad + 1 end
  else unknown = unknown + 1 end
end
function done(summary, latency, requests)
  local names = {"valid_ok", "valid_bad", "invalid_4xx", "invalid_bad", "shed", "server_errors", "unknown"}
  local out = {}
  for _, name in ipairs(names) do
    local total = 0
    for _, t in ipairs(threads) do total = total + t:get(name) end
    table.insert(out, string.format('"%s": %d', name, total))
  end
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "socket_errors": %d, %s}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, table.concat(out, ", ")))
end
"""


def request_specs(model: str) -> dict[str, list[tuple[str, int, str, str]]]:
    """The valid-only and the mixed request cycles: (kind, rows, path, body)."""
    import numpy as np
    import onnxruntime as ort

    inp = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).get_inputs()[0]
    if inp.name != IMAGE_INPUT:
        raise Skip(f"{model} is a table model ('{inp.name}'); this bench sends images")
    shape = [int(d) for d in inp.shape[1:]]
    size = int(np.prod(shape))
    rng = np.random.default_rng(0)

    def rows(n: int) -> list:
        return rng.integers(0, 17, size=(n, size)).tolist()

    infer = "/v2/models/distillery/infer"

    def tensor(shape_: list[int], data: list) -> str:
        return json.dumps({"inputs": [{"name": IMAGE_INPUT, "shape": shape_, "datatype": "FP32", "data": data}]})

    valid = [
        ("v", 1, "/predict", json.dumps({"rows": rows(1)})),
        ("v", 4, "/predict", json.dumps({"rows": rows(4)})),
        ("v", 1, infer, tensor([1, *shape], rows(1)[0])),
    ]
    wrong_length, with_string = rows(1), rows(1)
    wrong_length[0] = wrong_length[0][:-3]
    with_string[0][size // 2] = "seven"
    invalid = [
        ("i", 0, "/predict", json.dumps({"rows": rows(1)})[:-7]),  # truncated JSON
        ("i", 0, "/predict", json.dumps({"rows": wrong_length})),
        ("i", 0, "/predict", json.dumps({"rows": with_string})),
        ("i", 0, infer, tensor([2, *shape], rows(1)[0])),  # the shape asks for 2 images, the data holds 1
        ("i", 0, "/v2/models/nosuch/infer", tensor([1, *shape], rows(1)[0])),
    ]
    mixed = []
    for i in range(10):  # 10 valid, 5 malformed, interleaved
        mixed.append(valid[i % len(valid)])
        if i % 2:
            mixed.append(invalid[(i // 2) % len(invalid)])
    return {"valid": valid, "mixed": mixed}


class Harness:
    """The server, wrk and the files they share, in one temporary folder."""

    def __init__(self, model: Path, tmp: Path):
        self.tmp, self.port = tmp, free_port()
        self.ids = tmp / "answered"
        self.ids.mkdir()
        self.log_dir = tmp / "predictions"
        self.script = tmp / "soak.lua"
        self.script.write_text(WRK_SCRIPT)
        self.specs = {}
        for name, specs in request_specs(str(model)).items():
            self.specs[name] = tmp / f"{name}.tsv"
            self.specs[name].write_text("".join(f"{k}\t{r}\t{p}\t{b}\n" for k, r, p, b in specs))
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("DISTILLERY_SERVE_")}
        env = {
            **inherited,
            "DISTILLERY_SERVE_MODEL": str(model),
            "DISTILLERY_SERVE_PORT": str(self.port),
            "DISTILLERY_SERVE_POLL_INTERVAL_S": "0",
            "DISTILLERY_SERVE_LOG_DIR": str(self.log_dir),
            "DISTILLERY_SERVE_LOG_LEVEL": "warning",
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "deploy.server"],
            env=env,
            stderr=open(tmp / "server.log", "w"),
            preexec_fn=lambda: os.sched_setaffinity(0, SERVER_CPUS),
        )
        self.runs = 0
        wait_ready(f"http://127.0.0.1:{self.port}/v2/health/ready", self.proc)

    def wrk(
        self, load: str, connections: int, seconds: float, delay_ms: float = 0, shed_ok: bool = False
    ) -> dict[str, Any]:
        """One wrk run of the `load` cycle; its counters, rate and latencies."""
        self.runs += 1
        threads = min(2, connections)
        env = {
            **os.environ,
            "SOAK_REQUESTS": str(self.specs[load]),
            "SOAK_RUN": f"r{self.runs}",
            "SOAK_DELAY_MS": f"{delay_ms:.3f}",
            "SOAK_IDS": str(self.ids),
        }
        out = subprocess.run(
            [
                "wrk",
                f"-t{threads}",
                f"-c{connections}",
                f"-d{max(1, round(seconds))}s",
                "--timeout",
                "15s",
                "-s",
                str(self.script),
                f"http://127.0.0.1:{self.port}",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=seconds + 60,
            preexec_fn=lambda: os.sched_setaffinity(0, CLIENT_CPUS),
        )
        line = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
        if out.returncode != 0 or not line:
            raise DistilleryError(f"wrk failed: {out.stderr.strip() or out.stdout.strip()}")
        if self.proc.poll() is not None:
            raise DistilleryError(
                f"the server exited with {self.proc.returncode} during the load; see {self.tmp}/server.log"
            )
        r = json.loads(line[-1])
        seconds_run = r["duration_us"] / 1e6
        r.update(
            connections=connections,
            rps=r["requests"] / seconds_run,
            ok_rps=r["valid_ok"] / seconds_run,
            p50_ms=r["p50_us"] / 1000,
            p99_ms=r["p99_us"] / 1000,
        )
        # Under overload, 503 is the right answer; below it, any 503 is an error.
        r["errors"] = (
            r["valid_bad"]
            + r["invalid_bad"]
            + r["server_errors"]
            + r["unknown"]
            + r["socket_errors"]
            + (0 if shed_ok else r["shed"])
        )
        return r

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise DistilleryError("no VmRSS in /proc for the server")

    def stop(self) -> None:
        stop(self.proc)

    def log_check(self) -> dict[str, Any]:
        """Every 200 wrk read is in the prediction log with all its rows."""
        logged = predlog.rows_per_request(self.log_dir)
        answered = missing = short = 0
        for path in self.ids.glob("*.ids"):
            for request_id in path.read_text().split():
                answered += 1
                rows = int(request_id.split("-", 1)[0][1:])
                have = logged.get(request_id, 0)
                missing += have == 0
                short += 0 < have < rows
        return {
            "answered_ok": answered,
            "logged_requests": len(logged),
            "missing": missing,
            "rows_short": short,
            "complete": answered > 0 and missing == 0 and short == 0,
        }


def _ramp(h: Harness, load: str, seconds: float) -> tuple[list[dict], float, int]:
    points = [h.wrk(load, c, seconds) for c in RAMP]
    peak = max(p["rps"] for p in points)
    saturating = min(p["connections"] for p in points if p["rps"] >= SATURATED_SHARE * peak)
    return points, peak, saturating


def _summary(point: dict) -> dict[str, Any]:
    return {
        k: round(point[k], 3) if isinstance(point[k], float) else point[k]
        for k in ("connections", "rps", "ok_rps", "p50_ms", "p99_ms", "errors", *COUNTERS, "socket_errors")
    }


def run_soak(model: Path, seconds: float, step_s: float, rounds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp:
        h = Harness(model, Path(tmp))
        try:
            h.wrk("mixed", 16, 1)  # warm-up
            ramp, peak, saturating = _ramp(h, "valid", step_s)
            mixed_peak = h.wrk("mixed", saturating, step_s)
            target = SOAK_LOAD * mixed_peak["rps"]
            # Per connection, a request takes (delay + latency): the delay is aimed at
            # the target rate from the latency the last run showed, starting from
            # one request's time alone, and tried in short runs until within 5%.
            pace = {"latency_s": 1 / ramp[0]["rps"]}

            def paced(length: float) -> dict[str, Any]:
                delay_s = max(0.0, saturating / target - pace["latency_s"])
                point = h.wrk("mixed", saturating, length, delay_ms=delay_s * 1000)
                if point["rps"]:
                    pace["latency_s"] = max(0.0, saturating / point["rps"] - delay_s)
                return point

            aiming = [paced(2)]
            while abs(aiming[-1]["rps"] / target - 1) > 0.05 and len(aiming) < 5:
                aiming.append(paced(2))
            chunks, rss = [], [h.rss_kib()]
            left = seconds
            while left > 0:
                chunks.append(paced(min(CHUNK_S, left)))
                rss.append(h.rss_kib())
                left -= CHUNK_S
            defaults = ServeSettings()  # the server runs on them
            admitted = defaults.max_concurrency + defaults.max_queue
            # Goodput: the saturated rate and the overloads, interleaved round by round
            # so that the machine's drift hits them alike; the median ratio is kept.
            overload_connections = (3 * saturating, 3 * admitted)
            rounds_run = []
            for _ in range(rounds):
                rounds_run.append(
                    [h.wrk("valid", c, step_s, shed_ok=True) for c in (saturating, *overload_connections)]
                )
        finally:
            h.stop()
        log = h.log_check()

    total = {k: sum(c[k] for c in chunks) for k in (*COUNTERS, "socket_errors", "errors", "requests")}
    soak_s = sum(c["duration_us"] for c in chunks) / 1e6
    goodput = {}
    for i, c in enumerate(overload_connections, start=1):
        ratios = [r[i]["ok_rps"] / r[0]["ok_rps"] for r in rounds_run]
        median_round = sorted(rounds_run, key=lambda r: r[i]["ok_rps"] / r[0]["ok_rps"])[len(rounds_run) // 2]
        goodput[f"c{c}"] = {
            **_summary(median_round[i]),
            "saturated_ok_rps": round(median_round[0]["ok_rps"], 1),
            "goodput": round(statistics.median(ratios), 3),
            "goodput_rounds": [round(x, 3) for x in ratios],
            "errors": sum(r[i]["errors"] for r in rounds_run),
            "shed": sum(r[i]["shed"] for r in rounds_run),
        }
    growth = rss[-1] / rss[0] - 1
    results = {
        "model": str(model),
        "load_generator": "wrk (loopback), paced with wrk's per-request delay",
        "server_cpus": sorted(SERVER_CPUS),
        "client_cpus": sorted(CLIENT_CPUS),
        "ramp": [_summary(p) for p in ramp],
        "saturating_connections": saturating,
        "saturated_rps": round(peak, 1),
        "soak": {
            "seconds": round(soak_s, 1),
            "connections": saturating,
            "mixed_peak_rps": round(mixed_peak["rps"], 1),
            "target_rps": round(target, 1),
            "aiming_rps": [round(p["rps"], 1) for p in aiming],
            "rps": round(total["requests"] / soak_s, 1),
            "load_share_of_peak": round(total["requests"] / soak_s / mixed_peak["rps"], 3),
            "requests": total["requests"],
            **{k: total[k] for k in (*COUNTERS, "socket_errors")},
            "errors": total["errors"],
            "p50_ms_median": round(statistics.median(c["p50_ms"] for c in chunks), 3),
            "p99_ms_median": round(statistics.median(c["p99_ms"] for c in chunks), 3),
            "p99_ms_worst_chunk": round(max(c["p99_ms"] for c in chunks), 3),
            "rss_kib": rss,
            "rss_start_kib": rss[0],
            "rss_end_kib": rss[-1],
            "rss_growth": round(growth, 4),
        },
        "overload": goodput,
        "prediction_log": log,
        "goals": GOALS,
    }
    results["meets_goals"] = (
        total["errors"] == 0
        and growth < GOALS["rss_growth_max"]
        and log["complete"]
        and min(g["goodput"] for g in goodput.values()) >= GOALS["goodput_min"]
    )
    return results


def report(r: dict[str, Any]) -> str:
    s = r["soak"]
    lines = [
        f"ramp: a peak of {r['saturated_rps']:.0f} answers/s, reached at {r['saturating_connections']} connections",
        f"soak: {s['seconds']:.0f} s at {s['rps']:.0f} req/s ({s['load_share_of_peak']:.0%} of the mixed peak), "
        f"{s['requests']} requests: {s['valid_ok']} valid answered, {s['invalid_4xx']} malformed refused with 4xx, "
        f"{s['errors']} errors",
        f"latency: p50 {s['p50_ms_median']} ms, p99 {s['p99_ms_median']} ms (worst chunk {s['p99_ms_worst_chunk']} ms)",
        f"RSS: {s['rss_start_kib']} KiB -> {s['rss_end_kib']} KiB ({s['rss_growth']:+.1%}, goal < {GOALS['rss_growth_max']:.0%})",
    ]
    for name, g in r["overload"].items():
        lines.append(
            f"overload {name}: {g['ok_rps']:.0f} answers/s against {g['saturated_ok_rps']:.0f} saturated: "
            f"goodput {g['goodput']:.0%} (median of {g['goodput_rounds']}, goal >= "
            f"{GOALS['goodput_min']:.0%}), {g['shed']} shed with 503, {g['errors']} errors"
        )
    log = r["prediction_log"]
    lines.append(
        f"prediction log: {log['answered_ok']} answered requests, {log['missing']} missing, "
        f"{log['rows_short']} with rows missing"
    )
    lines.append(f"meets goals: {r['meets_goals']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help=f"ONNX image model (default: the champion, {DEFAULT_MODEL})")
    parser.add_argument("--seconds", type=float, default=600, help="length of the soak")
    parser.add_argument("--step-seconds", type=float, default=3, help="length of each ramp and overload measurement")
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds of the goodput measurement (median kept)"
    )
    parser.add_argument("--report", type=Path, default=BENCH_REPORT, help="the JSON report; results go under 'soak'")
    args = parser.parse_args()
    if args.seconds < 1 or args.step_seconds < 1 or args.rounds < 1:
        raise DistilleryError("--seconds and --step-seconds must be >= 1, and --rounds >= 1")
    results = measure("soak", args.model, lambda model: run_soak(model, args.seconds, args.step_seconds, args.rounds))
    if results is not None:
        record("soak", results, args.report)
        print(report(results))


if __name__ == "__main__":
    run_cli(main)
