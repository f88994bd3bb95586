"""``metrics.HttpRequests`` (plain numbers, no locks) exposes exactly what prometheus_client's own
labelled Counter and Histogram would for the same requests."""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest

from modelgate.metrics import _LATENCY_BUCKETS, HttpRequests, Metrics

OBSERVATIONS = [
    ("/models", "GET", 200, 0.0003),
    ("/models", "GET", 200, 0.005),  # on a bound: counted in that bucket (le is inclusive)
    ("/models", "HEAD", 304, 0.02),
    ("/api/ai/{first}/{second}/chat", "POST", 200, 42.0),
    ("/api/ai/{first}/{second}/chat", "POST", 502, 1000.0),  # past the last bound: +Inf only
    ("unmatched", "GET", 404, 0.0),
]


def library_exposition() -> str:
    registry = CollectorRegistry(auto_describe=True)
    counter = Counter(*HttpRequests.COUNTER, ["route", "method", "status"], registry=registry)
    histogram = Histogram(*HttpRequests.HISTOGRAM, ["route"], buckets=_LATENCY_BUCKETS, registry=registry)
    for route, method, status, seconds in OBSERVATIONS:
        counter.labels(route, method, str(status)).inc()
        histogram.labels(route).observe(seconds)
    return generate_latest(registry).decode()


def ours_exposition() -> str:
    registry = CollectorRegistry(auto_describe=True)
    http = HttpRequests(_LATENCY_BUCKETS)
    registry.register(http)
    for observation in OBSERVATIONS:
        http.observe(*observation)
    return generate_latest(registry).decode()


def without_created_values(text: str) -> str:
    """Creation times differ between the two runs; everything else must not."""
    return re.sub(r"^(\w+_created\{.*\}) \S+$", r"\1 T", text, flags=re.MULTILINE)


def test_the_same_exposition_as_the_library() -> None:
    ours, library = ours_exposition(), library_exposition()
    assert "_created{" in ours
    assert without_created_values(ours) == without_created_values(library)


def test_metrics_count_unknown_methods_as_other() -> None:
    metrics = Metrics()
    metrics.observe_request("/models", "BREW", 405, 0.001)
    assert 'modelgate_http_requests_total{method="OTHER",route="/models",status="405"} 1.0' in (
        metrics.exposition().decode()
    )
