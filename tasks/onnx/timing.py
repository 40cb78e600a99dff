"""Timing onnxruntime sessions so that a comparison means something on a
shared machine: every candidate in one process, in the same runtime, with the
intra-op thread count pinned, in interleaved rounds after a warm-up, and the
median kept (one sample can be off by 2x when a neighbour wakes up)."""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping

import numpy as np


class Timings:
    """Single-call wall times (ms) of several functions, taken in interleaved
    rounds: in each round every function runs for the same time, one after the
    other, so a busy spell on a shared machine hits all of them rather than
    the one that happened to be running."""

    def __init__(self, fns: Mapping[str, Callable[[], object]], seconds: float, rounds: int = 10):
        for fn in fns.values():  # warm-up: first-run allocations and kernel selection
            fn()
            fn()
        turn = seconds / max(1, len(fns)) / rounds
        self.rounds: list[dict[str, np.ndarray]] = []
        for _ in range(rounds):
            row = {}
            for name, fn in fns.items():
                fn()  # untimed: lets the previous function's spinning threads go quiet
                times: list[float] = []
                end = time.perf_counter() + turn
                while len(times) < 3 or time.perf_counter() < end:
                    start = time.perf_counter()
                    fn()
                    times.append((time.perf_counter() - start) * 1000)
                row[name] = np.asarray(times)
            self.rounds.append(row)

    def all(self, name: str) -> np.ndarray:
        return np.concatenate([row[name] for row in self.rounds])

    def median(self, name: str) -> float:
        return float(np.median(self.all(name)))

    def p10(self, name: str) -> float:
        return float(np.percentile(self.all(name), 10))

    def p90(self, name: str) -> float:
        return float(np.percentile(self.all(name), 90))

    def speedup(self, slow: str, fast: str) -> float:
        """How many times faster `fast` is than `slow` (ratio of median latencies)."""
        return round(self.median(slow) / self.median(fast), 2)


def latency_key(batch: int, threads: int) -> str:
    """The report key of a median latency: `latency_ms_b<batch>_t<threads>`."""
    return f"latency_ms_b{batch}_t{threads}"


def session_latencies(
    sessions: Mapping[str, Any], x: np.ndarray, batch: int, seconds: float, rounds: int
) -> dict[str, dict[str, float]]:
    """Median, p10 and p90 latency (ms) of one run on `batch` rows for each
    session (all pinned to the same thread count), timed interleaved."""
    rows = np.resize(x, (batch, *x.shape[1:])).astype(np.float32)  # repeats rows if the split is small

    def runner(sess: Any) -> Callable[[], object]:
        feed = {sess.get_inputs()[0].name: rows}
        outputs = [sess.get_outputs()[-1].name]  # the answer: probabilities, or a regression's prediction
        return lambda: sess.run(outputs, feed)

    timings = Timings({name: runner(sess) for name, sess in sessions.items()}, seconds, rounds)
    return {
        name: {"median": timings.median(name), "p10": timings.p10(name), "p90": timings.p90(name)} for name in sessions
    }
