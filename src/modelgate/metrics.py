"""Prometheus metrics of one app, in its own ``CollectorRegistry`` (never the process-global one).

Label sets are bounded by construction, because an unbounded label is a memory leak in the gateway
and in every Prometheus that scrapes it:

- ``route``: the route *template* (``/api/ai/{first}/{second}/chat``), never the raw path; a path
  no route matches is ``"unmatched"``;
- ``method``: the HTTP methods routes use, anything else ``"OTHER"``;
- ``status``: the numeric status code (a fixed, small set);
- ``provider``: a registry name; ``model``: a catalogue id (``publisher/name``), only ever taken
  from a resolved ``CatalogueModel``;
- ``outcome``: one word from ``resilience.outcome_of`` or ``ok``/``cancelled``/``stream_error``.

Never a key, a key id, a user, a request id or free text.

With ``modelgate serve --workers N`` each worker process keeps its own registry: a scrape sees one
worker. Scrape each worker (or run one per container) when that matters.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

#: Methods kept as label values; the rest collapse into "OTHER" (methods are client-chosen strings).
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

UNMATCHED_ROUTE = "unmatched"

# Request latency covers whole streams, so it reaches minutes; time to first token covers retries.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """Every series modelgate exports. One instance per app, on ``GatewayState.metrics``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "modelgate_http_requests",
            "HTTP requests answered, by route template and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.request_duration = Histogram(
            "modelgate_http_request_duration_seconds",
            "Time from request to the end of the response (whole stream included)",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_requests = Counter(
            "modelgate_upstream_requests",
            "Upstream attempts by provider, model and outcome (retries and fallbacks counted each)",
            ["provider", "model", "outcome"],
            registry=r,
        )
        self.time_to_first_token = Histogram(
            "modelgate_upstream_time_to_first_token_seconds",
            "Time from sending an upstream request to its first event (the attempt that answered)",
            ["provider", "model"],
            buckets=_TTFT_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "modelgate_prompt_tokens", "Prompt tokens (as reported or estimated)", ["provider", "model"], registry=r
        )
        self.completion_tokens = Counter(
            "modelgate_completion_tokens",
            "Completion tokens (as reported or estimated)",
            ["provider", "model"],
            registry=r,
        )
        self.streams_in_flight = Gauge(
            "modelgate_streams_in_flight", "Replies currently being relayed to clients", registry=r
        )
        self._request_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        # Labelled children cached: this runs for every request, /models included. Bounded like the
        # labels themselves (route templates x methods x status codes).
        if method not in KNOWN_METHODS:
            method = "OTHER"
        key = (route, method, status)
        children = self._request_children.get(key)
        if children is None:
            children = (self.requests.labels(route, method, str(status)), self.request_duration.labels(route))
            self._request_children[key] = children
        count, duration = children
        count.inc()
        duration.observe(seconds)

    def observe_upstream(self, provider: str, model: str, outcome: str) -> None:
        self.upstream_requests.labels(provider, model, outcome).inc()

    def observe_first_token(self, provider: str, model: str, seconds: float) -> None:
        self.time_to_first_token.labels(provider, model).observe(seconds)

    def observe_tokens(self, provider: str, model: str, prompt: int, completion: int) -> None:
        if prompt > 0:
            self.prompt_tokens.labels(provider, model).inc(prompt)
        if completion > 0:
            self.completion_tokens.labels(provider, model).inc(completion)

    def exposition(self) -> bytes:
        """The text exposition format (what ``GET /metrics`` answers)."""
        return generate_latest(self.registry)
