"""One ``/metrics`` for every worker of ``modelgate serve --workers N``: prometheus_client's multiprocess mode.

``serve --workers N`` gives its workers one shared directory (``PROMETHEUS_MULTIPROC_DIR``: the operator's,
else a private temporary one removed on exit, see ``workers.shared_directory``). In it:

- the library's own series (upstream attempts, tokens, time to first token, streams in flight) are
  mmap-backed by prometheus_client itself: each worker writes ``counter_<pid>.db``, ``histogram_<pid>.db``,
  ``gauge_livesum_<pid>.db`` (a write to mapped memory, no system call);
- the per-request series (``metrics.HttpRequests``, plain numbers for speed) stay plain in memory and are
  *published* by ``Publisher`` into the same file format, ``counter_http-<pid>-<token>.db`` and
  ``histogram_http-<pid>-<token>.db``, every ``PUBLISH_INTERVAL`` seconds, before the worker answers a
  scrape, and when it stops. Only values that changed are written; the request path is untouched.

A scrape, answered by any worker, reads every file (``collect``): counters and histograms are summed over
all workers that ever ran, dead ones included, so a rolling restart (SIGHUP) neither loses a retired
worker's totals nor counts them twice (a new worker starts its own files from zero; the token keeps a
reused pid from overwriting an old worker's). Counters only go down when the whole ``serve`` restarts
(a new directory), which Prometheus treats as a counter reset. What a worker counted in its last
``PUBLISH_INTERVAL`` before being killed (SIGKILL, a crash) is lost; a clean stop publishes everything.
Gauges are ``livesum``: the sum over live workers; a dead worker's gauge files are removed at the next scrape.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, values
from prometheus_client.exposition import generate_latest
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

if TYPE_CHECKING:
    from modelgate.metrics import HttpRequests

DIRECTORY_ENV = "PROMETHEUS_MULTIPROC_DIR"

#: How stale another worker's per-request counts may be in a scrape (the answering worker's own are current).
PUBLISH_INTERVAL = 1.0

_LIVE_GAUGE = re.compile(r"gauge_live[a-z]+_(\d+)\.db")


def multiprocess_directory() -> Path | None:
    """The shared directory, when prometheus_client runs in multiprocess mode in this process.

    The library decides once, when it is first imported, from ``PROMETHEUS_MULTIPROC_DIR``; asking it
    (rather than the environment now) keeps both halves in the same mode."""
    if values.ValueClass is values.MutexValue:
        return None
    directory = os.environ.get(DIRECTORY_ENV)
    return Path(directory) if directory else None


def collect(directory: Path) -> bytes:
    """The text exposition of every worker's files (what ``GET /metrics`` answers in multiprocess mode)."""
    _forget_dead_workers(directory)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, str(directory))  # type: ignore[no-untyped-call]  # (the module is untyped)
    return generate_latest(registry)


def _forget_dead_workers(directory: Path) -> None:
    """Remove the live-gauge files of workers that are gone (a killed worker never cleans up after itself)."""
    for file in directory.glob("gauge_live*.db"):
        match = _LIVE_GAUGE.fullmatch(file.name)
        if match is not None and not _alive(int(match.group(1))):
            mark_process_dead(int(match.group(1)), str(directory))  # type: ignore[no-untyped-call]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


class Publisher:
    """Writes one worker's ``HttpRequests`` into its files in the shared directory (event loop thread only)."""

    def __init__(self, http: HttpRequests, directory: Path) -> None:
        self._http = http
        name = f"http-{os.getpid()}-{secrets.token_hex(4)}.db"
        self._counters = MmapedDict(str(directory / f"counter_{name}"))  # type: ignore[no-untyped-call]
        self._histograms = MmapedDict(str(directory / f"histogram_{name}"))  # type: ignore[no-untyped-call]
        self._counts: dict[tuple[str, str, int], float] = {}  # as last written, to write only what moved
        self._keys: dict[tuple[str, str, int], str] = {}
        self._histogram_keys_of: dict[str, list[str]] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._every_interval())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.publish()
        self.close()

    def close(self) -> None:
        self._counters.close()  # type: ignore[no-untyped-call]
        self._histograms.close()  # type: ignore[no-untyped-call]

    async def _every_interval(self) -> None:
        while True:
            await asyncio.sleep(PUBLISH_INTERVAL)
            self.publish()

    def publish(self) -> None:
        """Write the series whose count moved since the last call (a route's histogram moves with its counts)."""
        moved: set[str] = set()
        for labels, count in self._http.counts():
            if self._counts.get(labels) != count:
                self._counters.write_value(self._counter_key(labels), count, 0.0)  # type: ignore[no-untyped-call]
                self._counts[labels] = count
                moved.add(labels[0])
        for route, buckets, total in self._http.durations():
            if route in moved:
                *bucket_keys, sum_key = self._histogram_keys(route)
                for key, count in zip(bucket_keys, buckets, strict=True):
                    self._histograms.write_value(key, count, 0.0)  # type: ignore[no-untyped-call]
                self._histograms.write_value(sum_key, total, 0.0)  # type: ignore[no-untyped-call]

    def _counter_key(self, labels: tuple[str, str, int]) -> str:
        key = self._keys.get(labels)
        if key is None:
            name, help_text = self._http.COUNTER
            route, method, status = labels
            values = [route, method, str(status)]
            key = self._keys[labels] = mmap_key(name, name + "_total", ["route", "method", "status"], values, help_text)
        return key

    def _histogram_keys(self, route: str) -> list[str]:
        """The mmap keys of one route's buckets, in bound order, then of its sum (the library's key format)."""
        keys = self._histogram_keys_of.get(route)
        if keys is None:
            name, help_text = self._http.HISTOGRAM
            keys = [
                mmap_key(name, name + "_bucket", ["route", "le"], [route, bound], help_text)
                for bound in self._http.bound_labels
            ]
            keys.append(mmap_key(name, name + "_sum", ["route"], [route], help_text))
            self._histogram_keys_of[route] = keys
        return keys
