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

With ``modelgate serve --workers N`` every series is shared through prometheus_client's multiprocess
mode and a scrape answered by any worker shows the totals of all of them (``worker_metrics.py``).
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import metrics as _library
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from modelgate import worker_metrics

if TYPE_CHECKING:
    from modelgate.catalogue import Catalogue

#: How the library writes a bucket bound (``0.005``, ``1.0``, ``+Inf``); typed here, untyped there.
_bound_label: Callable[[float], str] = floatToGoString

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
        self.http = HttpRequests(_LATENCY_BUCKETS)
        r.register(self.http)
        # Under ``serve --workers N``: the library's series are mmap-backed by prometheus_client itself;
        # the plain per-request ones are published by this worker for the others' scrapes.
        self.shared_directory = worker_metrics.multiprocess_directory()
        self.publisher = (
            worker_metrics.Publisher(self.http, self.shared_directory) if self.shared_directory is not None else None
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
        self._upstream_requests = _Children(self.upstream_requests)
        self._time_to_first_token = _Children(self.time_to_first_token)
        self._prompt_tokens = _Children(self.prompt_tokens)
        self._completion_tokens = _Children(self.completion_tokens)
        self.streams_in_flight = Gauge(
            "modelgate_streams_in_flight",
            "Replies currently being relayed to clients",
            registry=r,
            multiprocess_mode="livesum",  # across workers: the sum over the live ones
        )

    def start(self) -> None:
        if self.publisher is not None:
            self.publisher.start()

    async def stop(self) -> None:
        if self.publisher is not None:
            await self.publisher.stop()  # publishes what is left: a clean stop loses no count

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        if method not in KNOWN_METHODS:
            method = "OTHER"
        self.http.observe(route, method, status, seconds)

    def observe_upstream(self, provider: str, model: str, outcome: str) -> None:
        self._upstream_requests.child(provider, model, outcome).inc()

    def observe_first_token(self, provider: str, model: str, seconds: float) -> None:
        self._time_to_first_token.child(provider, model).observe(seconds)

    def observe_tokens(self, provider: str, model: str, prompt: int, completion: int) -> None:
        if prompt > 0:
            self._prompt_tokens.child(provider, model).inc(prompt)
        if completion > 0:
            self._completion_tokens.child(provider, model).inc(completion)

    def retain(self, catalogue: Catalogue) -> None:
        """Drop the per-model series of the (provider, model) pairs ``catalogue`` no longer has (at each swap).

        Otherwise every model any catalogue ever served stays exported, frozen, for as long as the process
        runs. A request still in flight on a dropped model records it again when it ends; the next swap drops
        that too. Only in single-process mode: under ``--workers N`` the series live in the workers' shared
        files (``worker_metrics``), which prometheus_client cannot remove from (it only warns), and another
        worker, or a dead one's totals, may still hold them; there they stay until ``serve`` restarts."""
        if self.shared_directory is not None:
            return
        served = {(model.provider, model.id) for model in catalogue.models}
        for children in (
            self._upstream_requests,
            self._time_to_first_token,
            self._prompt_tokens,
            self._completion_tokens,
        ):
            children.forget()
        for metric, labelnames in (
            (self.upstream_requests, ("provider", "model", "outcome")),
            (self.time_to_first_token, ("provider", "model")),
            (self.prompt_tokens, ("provider", "model")),
            (self.completion_tokens, ("provider", "model")),
        ):
            # The label sets as exported (every sample of a child carries them; a bucket adds only ``le``).
            exported = {tuple(s.labels[n] for n in labelnames) for f in metric.collect() for s in f.samples}
            for labels in exported:
                if labels[:2] not in served:
                    metric.remove(*labels)

    def exposition(self) -> bytes:
        """The text exposition format (what ``GET /metrics`` answers): this worker's, or every worker's."""
        if self.shared_directory is None:
            return generate_latest(self.registry)
        if self.publisher is not None:
            self.publisher.publish()  # this worker's own counts are current; the others' at most PUBLISH_INTERVAL old
        return worker_metrics.collect(self.shared_directory)


_Series = TypeVar("_Series", Counter, Histogram)


class _Children(Generic[_Series]):
    """A labelled series' children by label values, as the library's ``labels()`` would return them.

    ``labels()`` checks and converts its values and takes the series' lock on every call: ~10 calls each, four
    times a chat request. The values here are already strings of bounded sets (the module's docstring), so after
    a child's first use a dict lookup finds it. ``forget`` must follow any ``remove``: a child the library
    dropped and this still held would count where no scrape sees it."""

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: _Series) -> None:
        self._metric: _Series = metric
        self._children: dict[tuple[str, ...], _Series] = {}

    def child(self, *labels: str) -> _Series:
        found = self._children.get(labels)
        if found is None:
            found = self._children[labels] = self._metric.labels(*labels)
        return found

    def forget(self) -> None:
        self._children.clear()


# --- the per-request series -----------------------------------------------------------------------


@dataclass(slots=True)
class _Durations:
    buckets: list[float]  # per bucket, not cumulative (cumulated when scraped)
    sum: float
    created: float


@dataclass(slots=True)
class _Requests:
    count: float
    created: float
    durations: _Durations


class HttpRequests(Collector):
    """``modelgate_http_requests_total{route,method,status}`` and
    ``modelgate_http_request_duration_seconds{route}``, kept as plain numbers.

    Both move on every request, ``GET /models`` included, where prometheus_client's labelled children
    cost ~0.8 µs (a lock per counter increment, two per histogram observation): here ~0.3 µs. They
    are only updated from the event loop's thread, so plain numbers are enough (a scrape, from any
    thread, reads each one whole). The exposition is the library's own: same families, samples,
    bucket bounds and ``_created`` series (``tests/test_http_metrics.py`` compares the two).
    """

    COUNTER = ("modelgate_http_requests", "HTTP requests answered, by route template and status")
    HISTOGRAM = (
        "modelgate_http_request_duration_seconds",
        "Time from request to the end of the response (whole stream included)",
    )

    def __init__(self, buckets: Sequence[float]) -> None:
        self._bounds = (*(float(b) for b in buckets), math.inf)
        self._series: dict[tuple[str, str, int], _Requests] = {}
        self._routes: dict[str, _Durations] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        series = self._series.get((route, method, status))
        if series is None:
            series = self._bind(route, method, status)
        series.count += 1.0
        durations = series.durations
        durations.sum += seconds
        durations.buckets[bisect_left(self._bounds, seconds)] += 1.0  # the first bound >= seconds

    @property
    def bound_labels(self) -> list[str]:
        return [_bound_label(bound) for bound in self._bounds]

    def counts(self) -> list[tuple[tuple[str, str, int], float]]:
        """Every ``(route, method, status)`` series and its count."""
        return [(labels, series.count) for labels, series in list(self._series.items())]

    def durations(self) -> list[tuple[str, list[float], float]]:
        """Every route's duration histogram: per-bucket (not cumulative) counts and the sum."""
        return [(route, list(h.buckets), h.sum) for route, h in list(self._routes.items())]

    def _bind(self, route: str, method: str, status: int) -> _Requests:
        # Bounded like the labels themselves: route templates x methods x status codes.
        durations = self._routes.get(route)
        if durations is None:
            durations = self._routes[route] = _Durations([0.0] * len(self._bounds), 0.0, time.time())
        series = self._series[(route, method, status)] = _Requests(0.0, time.time(), durations)
        return series

    def collect(self) -> Iterable[Metric]:
        created = getattr(_library, "_use_created", True)  # PROMETHEUS_DISABLE_CREATED_SERIES, as the library
        requests = CounterMetricFamily(*self.COUNTER, labels=["route", "method", "status"])
        for (route, method, status), series in list(self._series.items()):
            requests.add_metric([route, method, str(status)], series.count, series.created if created else None)
        durations = HistogramMetricFamily(*self.HISTOGRAM, labels=["route"])
        bounds = [_bound_label(bound) for bound in self._bounds]
        for route, histogram in list(self._routes.items()):
            cumulative, total = [], 0.0
            for bound, count in zip(bounds, histogram.buckets, strict=True):
                total += count
                cumulative.append((bound, total))
            durations.add_metric([route], cumulative, histogram.sum)
            if created:
                durations.samples.append(Sample(durations.name + "_created", {"route": route}, histogram.created))
        yield requests
        yield durations
