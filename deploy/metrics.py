"""Prometheus metrics, in a registry of the server's own (GET /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "distillery_requests",
            "HTTP requests answered, by endpoint and status code",
            ["endpoint", "code"],
            registry=r,
        )
        self.errors = Counter(
            "distillery_request_errors",
            "Requests answered with an error, by endpoint and reason "
            "(bad_request, unauthorized, not_found, too_large, overloaded, slow_body, timeout, internal)",
            ["endpoint", "reason"],
            registry=r,
        )
        self.latency = Histogram(
            "distillery_request_duration_seconds",
            "Time from the request's arrival to its answer, by endpoint",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
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
        self._request_children: dict[tuple[str, int], Counter] = {}
        self._latency_children: dict[str, Histogram] = {}

    def observe_request(self, endpoint: str, code: int, seconds: float) -> None:
        key = (endpoint, code)
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = self.requests.labels(endpoint, str(code))
        child.inc()
        hist = self._latency_children.get(endpoint)
        if hist is None:
            hist = self._latency_children[endpoint] = self.latency.labels(endpoint)
        hist.observe(seconds)

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
