"""Prometheus metrics, in a registry of the server's own (GET /metrics)."""

from __future__ import annotations

import time
from bisect import bisect_left
from typing import Iterator

import prometheus_client.metrics
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.utils import floatToGoString

LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        # distillery_requests_total and distillery_request_duration_seconds (every request)
        self.answered = RequestCounts(
            "distillery_requests",
            "HTTP requests answered, by endpoint and status code",
            "distillery_request_duration_seconds",
            "Time from the request's arrival to its answer, by endpoint",
            LATENCY_BUCKETS,
        )
        r.register(self.answered)
        self.errors = Counter(
            "distillery_request_errors",
            "Requests answered with an error, by endpoint and reason "
            "(bad_request, unauthorized, not_found, too_large, overloaded, slow_body, timeout, internal)",
            ["endpoint", "reason"],
            registry=r,
        )
        self.batch_rows = Histogram(
            "distillery_batch_size", "Rows per onnxruntime run (micro-batches)", buckets=BATCH_BUCKETS, registry=r
        )
        self.inference = Histogram(
            "distillery_inference_duration_seconds", "Time of one onnxruntime run", buckets=LATENCY_BUCKETS, registry=r
        )
        self.in_flight = Gauge("distillery_requests_in_flight", "Prediction requests being worked on", registry=r)
        self.queued = Gauge("distillery_requests_queued", "Prediction requests waiting for a slot", registry=r)
        self.model_info = Gauge(
            "distillery_model_info",
            "The model being served (value 1), by name, version and sha256",
            ["name", "version", "sha256"],
            registry=r,
        )
        self.model_version = Gauge(
            "distillery_model_version", "Version of the served model (registry version; 0 for a file)", registry=r
        )
        self.model_loaded = Gauge(
            "distillery_model_loaded_timestamp_seconds", "When the served model was loaded (unix time)", registry=r
        )
        self.reloads = Counter(
            "distillery_model_reloads",
            "Attempts to swap in a new model, by outcome (success, failure)",
            ["outcome"],
            registry=r,
        )
        self.ready = Gauge(
            "distillery_ready", "1 while the server accepts traffic (readiness probe passes)", registry=r
        )
        self.prediction_log = Counter(
            "distillery_prediction_log_rows",
            "Prediction-log rows by outcome (written; failed: a write error, logged)",
            ["outcome"],
            registry=r,
        )

    def observe_request(self, endpoint: str, code: int, seconds: float) -> None:
        self.answered.observe(endpoint, code, seconds)

    def observe_batch(self, rows: int, seconds: float) -> None:
        self.batch_rows.observe(rows)
        self.inference.observe(seconds)

    def set_model(self, name: str, version: str, sha256: str, loaded_at: float) -> None:
        self.model_info.clear()
        self.model_info.labels(name, version, sha256).set(1)
        self.model_version.set(float(version) if version.isdigit() else 0)
        self.model_loaded.set(loaded_at)

    def count_log(self, outcome: str, rows: int) -> None:
        self.prediction_log.labels(outcome).inc(rows)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestCounts:
    """A counter of requests by endpoint and status code, and a histogram of
    their latency by endpoint, exposed exactly as prometheus_client's Counter
    and Histogram expose them, but counted in plain numbers: those take a lock
    per value and walk the buckets in Python on every observation, about 3% of
    a small model's request on the event loop (measured in instructions). The
    event loop is the only writer and /metrics is rendered there too, so
    nothing here needs a lock."""

    def __init__(self, counter: str, counter_help: str, histogram: str, histogram_help: str, buckets: tuple):
        self.counter, self.counter_help = counter, counter_help
        self.histogram, self.histogram_help = histogram, histogram_help
        self.bounds = (*map(float, buckets), float("inf"))
        self._les = [floatToGoString(b) for b in self.bounds]
        self._counts: dict[tuple[str, int], list[float]] = {}  # (endpoint, code) -> [requests, created]
        self._latency: dict[str, list[float]] = {}  # endpoint -> [per-bucket counts..., sum, created]

    def observe(self, endpoint: str, code: int, seconds: float) -> None:
        count = self._counts.get((endpoint, code))
        if count is None:
            count = self._counts[(endpoint, code)] = [0, time.time()]
        count[0] += 1
        latency = self._latency.get(endpoint)
        if latency is None:
            latency = self._latency[endpoint] = [0] * len(self.bounds) + [0.0, time.time()]
        latency[bisect_left(self.bounds, seconds)] += 1  # the first bucket whose bound is >= seconds
        latency[-2] += seconds

    def describe(self) -> list[Metric]:
        return [
            Metric(self.counter, self.counter_help, "counter"),
            Metric(self.histogram, self.histogram_help, "histogram"),
        ]

    def collect(self) -> Iterator[Metric]:
        created = prometheus_client.metrics._use_created  # PROMETHEUS_DISABLE_CREATED_SERIES, as the library's own
        counter = Metric(self.counter, self.counter_help, "counter")
        for (endpoint, code), (n, since) in self._counts.items():
            labels = {"endpoint": endpoint, "code": str(code)}
            counter.add_sample(self.counter + "_total", labels, float(n))
            if created:
                counter.add_sample(self.counter + "_created", labels, since)
        yield counter
        histogram = Metric(self.histogram, self.histogram_help, "histogram")
        for endpoint, values in self._latency.items():
            total = 0.0
            for le, n in zip(self._les, values):
                total += n
                histogram.add_sample(self.histogram + "_bucket", {"endpoint": endpoint, "le": le}, total)
            labels = {"endpoint": endpoint}
            histogram.add_sample(self.histogram + "_count", labels, total)
            histogram.add_sample(self.histogram + "_sum", labels, values[-2])
            if created:
                histogram.add_sample(self.histogram + "_created", labels, values[-1])
        yield histogram
