"""Streaming load generator: N concurrent chat streams for a fixed window, TTFT per stream, aggregate tokens/s.

Each of ``--concurrency`` workers opens a connection and runs streams back to back (HTTP/1.1 keep-alive)
until the window ends; at the end every stream still open is cut (counted as ``cut``, not as an error).

- TTFT = from just before the request is written (or the connection opened, when a worker needs a new one)
  to the first body bytes that carry a token. A stream with no token by the end of the window is recorded
  as *censored* with the time it had waited (a lower bound), so a saturated system cannot hide its tail.
- Tokens are counted by the fake upstream's ``~`` marker (every token text is `` ~word``) with one
  ``bytes.count`` per read, whatever the framing (OpenAI SSE, AI SDK data stream, coalesced writes).
- tokens/s = tokens received between ``warmup`` and the last moment a new stream may start (the end of the
  window less min(0.5 s, a tenth)), divided by that time.
- A stream is *ok* when the status is 200, it delivered exactly ``--expect-tokens`` tokens and its tail holds
  the protocol's terminator (``d:`` finish part of the data stream, ``data: [DONE]`` of SSE); anything else
  that completes is an *error*, with a sample of what was received.

Why raw asyncio sockets (uvloop + httptools, C parsers) by default: the load generator shares one core with
the fake upstream, and at 500 streams must read ~100,000 token events/s; any per-chunk Python work in a
client library is load-generator time the system under test gets credited or blamed for. ``--client
aiohttp|httpx|httpx2`` runs the same measurement through those libraries: ``run.py clients`` compares their CPU
cost per token against the raw client (that table is in bench/README.md), which is the measurement behind
this choice and behind the choice of modelgate's upstream client.

Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httptools

MARKER = b"~"
# uvloop's loop.time() has millisecond resolution (libuv's cached clock): TTFT needs perf_counter.
CLIENTS = ("raw", "aiohttp", "httpx", "httpx2")
TERMINATORS = {"data": b"\nd:", "sse": b"data: [DONE]"}


@dataclass
class Stats:
    tokens: int = 0
    ok: int = 0
    started: int = 0
    cut: int = 0
    errors: int = 0
    error_samples: Counter[str] = field(default_factory=Counter)
    ttft: list[float] = field(default_factory=list)
    censored: list[float] = field(default_factory=list)

    def error(self, why: str) -> None:
        self.errors += 1
        self.error_samples[why[:160]] += 1


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    path: str
    body: bytes
    headers: tuple[tuple[str, str], ...]
    fmt: str
    expect_tokens: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{self.path}"

    def request_bytes(self) -> bytes:
        lines = [
            f"POST {self.path} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            "Content-Type: application/json",
            f"Content-Length: {len(self.body)}",
            *(f"{k}: {v}" for k, v in self.headers),
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + self.body


class Stream:
    """What one stream received; fed by any client implementation."""

    __slots__ = ("first", "start", "stats", "status", "tail", "tokens")

    def __init__(self, stats: Stats, start: float) -> None:
        self.stats = stats
        self.start = start
        self.first: float | None = None
        self.tokens = 0
        self.status = 0
        self.tail = b""

    def body(self, chunk: bytes, now: Callable[[], float]) -> None:
        n = chunk.count(MARKER)
        if n:
            if self.first is None:
                self.first = now()
            self.tokens += n
            self.stats.tokens += n
        self.tail = (self.tail + chunk)[-512:]

    def finish(self, target: Target) -> None:
        """The response ended: record TTFT and judge the stream."""
        stats = self.stats
        if self.first is not None:
            stats.ttft.append(self.first - self.start)
        if self.status != 200:
            stats.error(f"HTTP {self.status}: {self.tail[:120]!r}")
        elif self.tokens != target.expect_tokens:
            stats.error(f"{self.tokens} tokens (expected {target.expect_tokens}); tail {self.tail[-120:]!r}")
        elif TERMINATORS[target.fmt] not in self.tail:
            stats.error(f"no terminator; tail {self.tail[-120:]!r}")
        else:
            stats.ok += 1

    def cut(self, now: float) -> None:
        """The window closed with this stream still open."""
        self.stats.cut += 1
        if self.first is not None:
            self.stats.ttft.append(self.first - self.start)
        else:
            self.stats.censored.append(now - self.start)


# --- raw client: uvloop + httptools -------------------------------------------------------------------


class RawConnection(asyncio.Protocol):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser: httptools.HttpResponseParser | None = None
        self.stream: Stream | None = None
        self.done: asyncio.Future[bool] | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, request: bytes, stream: Stream) -> asyncio.Future[bool]:
        assert self.transport is not None
        self.stream = stream
        self.parser = httptools.HttpResponseParser(self)
        self.done = self.loop.create_future()
        self.transport.write(request)
        return self.done

    def data_received(self, data: bytes) -> None:
        if self.parser is None:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:  # pragma: no cover - never asked for
            pass
        except httptools.HttpParserError as exc:
            self._end(False, f"bad HTTP: {exc}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._end(False, "connection closed before the response ended")

    # httptools callbacks
    def on_headers_complete(self) -> None:
        assert self.parser is not None and self.stream is not None
        self.stream.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        assert self.stream is not None
        self.stream.body(body, time.perf_counter)

    def on_message_complete(self) -> None:
        assert self.parser is not None
        self._end(self.parser.should_keep_alive(), None)

    def _end(self, keep_alive: bool, why: str | None) -> None:
        if self.done is not None and not self.done.done():
            if why is not None and self.stream is not None:
                self.stream.tail += f" [{why}]".encode()
                self.stream.status = self.stream.status or -1
            self.done.set_result(keep_alive and why is None)


async def raw_worker(target: Target, stats: Stats, t_end: float) -> None:
    """Streams back to back until ``t_end`` (the last moment a new stream may start)."""
    loop = asyncio.get_running_loop()
    request = target.request_bytes()
    conn: RawConnection | None = None
    stream: Stream | None = None
    try:
        while loop.time() < t_end:
            stream = Stream(stats, time.perf_counter())
            stats.started += 1
            if conn is None or conn.lost:
                try:
                    _, proto = await loop.create_connection(lambda: RawConnection(loop), target.host, target.port)
                except OSError as exc:
                    stats.error(f"connect: {exc}")
                    stream = None
                    await asyncio.sleep(0.05)
                    continue
                conn = proto
            keep_alive = await conn.send(request, stream)
            stream.finish(target)
            stream = None
            if not keep_alive and conn.transport is not None:
                conn.transport.close()
                conn = None
    except asyncio.CancelledError:
        if stream is not None:
            stream.cut(time.perf_counter())
        raise
    finally:
        if conn is not None and conn.transport is not None:
            conn.transport.close()


# --- library clients, for the client comparison --------------------------------------------------------


async def aiohttp_workers(target: Target, stats: Stats, t_end: float, n: int) -> list[asyncio.Task[None]]:
    import aiohttp

    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=None), auto_decompress=False
    )
    headers = {"Content-Type": "application/json", **dict(target.headers)}

    async def worker() -> None:
        loop = asyncio.get_running_loop()
        stream: Stream | None = None
        try:
            while loop.time() < t_end:
                stream = Stream(stats, time.perf_counter())
                stats.started += 1
                try:
                    async with session.post(target.url, data=target.body, headers=headers) as response:
                        stream.status = response.status
                        async for chunk in response.content.iter_any():
                            stream.body(chunk, time.perf_counter)
                except aiohttp.ClientError as exc:
                    stream.tail += f" [{exc!r}]".encode()
                    stream.status = stream.status or -1
                stream.finish(target)
                stream = None
        except asyncio.CancelledError:
            if stream is not None:
                stream.cut(time.perf_counter())
            raise

    tasks = [asyncio.create_task(worker()) for _ in range(n)]
    closer = asyncio.gather(*tasks, return_exceptions=True)
    closer.add_done_callback(lambda _: asyncio.ensure_future(session.close()))
    return tasks


async def httpx_workers(
    target: Target, stats: Stats, t_end: float, n: int, module: str = "httpx"
) -> list[asyncio.Task[None]]:
    """httpx, or httpx2 (pydantic's fork, same API, with the connection pool's assignment pass made linear)."""
    import importlib

    httpx: Any = importlib.import_module(module)

    client = httpx.AsyncClient(timeout=httpx.Timeout(None), limits=httpx.Limits(max_connections=None), trust_env=False)
    headers = {"Content-Type": "application/json", **dict(target.headers)}

    async def worker() -> None:
        loop = asyncio.get_running_loop()
        stream: Stream | None = None
        try:
            while loop.time() < t_end:
                stream = Stream(stats, time.perf_counter())
                stats.started += 1
                try:
                    async with client.stream("POST", target.url, content=target.body, headers=headers) as response:
                        stream.status = response.status_code
                        async for chunk in response.aiter_raw():
                            stream.body(chunk, time.perf_counter)
                except httpx.HTTPError as exc:
                    stream.tail += f" [{exc!r}]".encode()
                    stream.status = stream.status or -1
                stream.finish(target)
                stream = None
        except asyncio.CancelledError:
            if stream is not None:
                stream.cut(time.perf_counter())
            raise

    tasks = [asyncio.create_task(worker()) for _ in range(n)]
    closer = asyncio.gather(*tasks, return_exceptions=True)
    closer.add_done_callback(lambda _: asyncio.ensure_future(client.aclose()))
    return tasks


# --- the run --------------------------------------------------------------------------------------------


async def run(target: Target, concurrency: int, seconds: float, warmup: float, client: str) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    stats = Stats()
    t0 = loop.time()
    t_end = t0 + seconds
    # No new stream in the last moments of the window: one started there and cut before its first token would
    # enter TTFT as a tiny lower bound and pull the percentiles down. A stream still waiting at the end has
    # waited at least this long, a lower bound worth keeping.
    last_start = t_end - min(0.5, seconds / 10)
    if client == "raw":
        tasks = [asyncio.create_task(raw_worker(target, stats, last_start)) for _ in range(concurrency)]
    elif client == "aiohttp":
        tasks = await aiohttp_workers(target, stats, last_start, concurrency)
    else:
        tasks = await httpx_workers(target, stats, last_start, concurrency, module=client)
    warm = min(warmup, seconds / 2)
    await asyncio.sleep(warm)
    tokens_at_warm, t_warm = stats.tokens, time.perf_counter()
    await asyncio.sleep(max(0.0, last_start - loop.time()))
    tokens_at_end, t_stop = stats.tokens, time.perf_counter()  # rate over the part where every worker streamed
    await asyncio.sleep(max(0.0, t_end - loop.time()))
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.sleep(0.05)  # let library clients close their pools
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "client": client,
        "concurrency": concurrency,
        "seconds": seconds,
        "warmup": warm,
        "started": stats.started,
        "ok": stats.ok,
        "errors": stats.errors,
        "error_samples": dict(stats.error_samples.most_common(5)),
        "cut": stats.cut,
        "tokens": stats.tokens,
        "tokens_per_s": (tokens_at_end - tokens_at_warm) / (t_stop - t_warm),
        "ttft_s": stats.ttft,
        "censored_s": stats.censored,
        "loadgen_cpu_s": usage.ru_utime + usage.ru_stime,
    }


def new_event_loop() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def parse_header(line: str) -> tuple[str, str]:
    name, _, value = line.partition(":")
    return name.strip(), value.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True)
    parser.add_argument("--body", required=True, help="JSON request body")
    parser.add_argument("--format", choices=sorted(TERMINATORS), required=True)
    parser.add_argument("--header", action="append", default=[], help="'Name: value'")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--expect-tokens", type=int, default=200)
    parser.add_argument("--client", choices=CLIENTS, default="raw")
    args = parser.parse_args()
    url = urlsplit(args.url)
    if url.scheme != "http" or url.hostname is None:
        sys.exit("loadgen: only http:// URLs on this machine")
    target = Target(
        host=url.hostname,
        port=url.port or 80,
        path=url.path + (f"?{url.query}" if url.query else ""),
        body=args.body.encode(),
        headers=tuple(parse_header(h) for h in args.header),
        fmt=args.format,
        expect_tokens=args.expect_tokens,
    )
    started = time.monotonic()
    with asyncio.Runner(loop_factory=new_event_loop()) as runner:
        result = runner.run(run(target, args.concurrency, args.seconds, args.warmup, args.client))
    result["wall_s"] = time.monotonic() - started
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
