"""deploy.metrics counts every request in plain numbers (RequestCounts) and
must expose them exactly as prometheus_client's own Counter and Histogram
would: same families, samples, labels, values and order."""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from deploy.metrics import LATENCY_BUCKETS, RequestCounts

OBSERVED = [
    ("/predict", 200, 0.0003),
    ("/predict", 200, 0.0002),  # on a bucket's bound: counted in that bucket
    ("/predict", 422, 0.00005),
    ("/v2/models/{name}/infer", 200, 0.004),
    ("unmatched", 404, 0.0001),
    ("/predict", 503, 12.5),  # past the last bound: +Inf only
    ("/predict", 200, 0.75),
]


def _created_masked(text: bytes) -> str:
    """The exposition, with the _created samples' values (timestamps) masked."""
    return re.sub(r"^(\w+_created\{.*\}) \S+$", r"\1 <time>", text.decode(), flags=re.MULTILINE)


def test_the_exposition_is_prometheus_clients():
    ours = CollectorRegistry()
    counts = RequestCounts("x_requests", "requests", "x_latency_seconds", "latency", LATENCY_BUCKETS)
    ours.register(counts)
    theirs = CollectorRegistry()
    counter = Counter("x_requests", "requests", ["endpoint", "code"], registry=theirs)
    histogram = Histogram("x_latency_seconds", "latency", ["endpoint"], buckets=LATENCY_BUCKETS, registry=theirs)
    for endpoint, code, seconds in OBSERVED:
        counts.observe(endpoint, code, seconds)
        counter.labels(endpoint, str(code)).inc()
        histogram.labels(endpoint).observe(seconds)
    expected = _created_masked(generate_latest(theirs))
    assert _created_masked(generate_latest(ours)) == expected
    assert 'x_requests_total{code="200",endpoint="/predict"} 3.0' in expected  # the comparison compares something
    assert 'x_latency_seconds_bucket{endpoint="/predict",le="0.0002"} 2.0' in expected
