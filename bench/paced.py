"""Open-loop load: requests sent at fixed times (``--rate`` per second), latency measured from the scheduled time.

A closed-loop client (wrk, or one that waits for a reply before sending the next) stops sending while the
server stalls, so a stall delays few requests and the percentiles hide it ("coordinated omission"). Here
request *i* is due at ``t0 + i / rate`` whatever happened before: it goes out on an idle keep-alive
connection, or on a new one when every open connection is busy, and its latency runs from when it was
*due*, so a late send (the server, or this generator, falling behind) counts against the system.

Requests due in the first ``--warmup`` seconds are sent but not recorded. A reply is ok when it is HTTP
200 and its body holds ``--expect`` (a non-streamed chat completion: ``"choices"``).

Prints one JSON object: latencies in ms (ok replies), errors, how many connections it needed, and how
late the generator itself was (if it falls behind by more than a request interval the run says so).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

import httptools

from loadgen import new_event_loop, parse_header


class Conn(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self, pacer: Pacer) -> None:
        self.pacer = pacer
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.due = 0.0
        self.record = False
        self.status = 0
        self.body: list[bytes] = []
        self.busy = False
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, due: float, record: bool) -> None:
        assert self.transport is not None
        self.busy, self.due, self.record, self.status, self.body = True, due, record, 0, []
        self.parser = httptools.HttpResponseParser(self)
        self.transport.write(self.pacer.request)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._done(f"bad HTTP: {exc}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.busy:
            self._done("connection closed before the reply ended")
        self.pacer.forget(self)

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        body = b"".join(self.body)
        if self.status != 200:
            self._done(f"HTTP {self.status}: {body[:120]!r}")
        elif self.pacer.expect not in body:
            self._done(f"no {self.pacer.expect!r} in {body[:120]!r}")
        else:
            self._done(None)
        if not self.parser.should_keep_alive() and self.transport is not None:
            self.transport.close()

    def _done(self, error: str | None) -> None:
        if not self.busy:
            return
        self.busy = False
        self.pacer.finished(self, time.perf_counter() - self.due, self.record, error)


class Pacer:
    def __init__(self, host: str, port: int, request: bytes, expect: bytes) -> None:
        self.host, self.port, self.request, self.expect = host, port, request, expect
        self.idle: list[Conn] = []
        self.open = 0
        self.most_open = 0
        self.latencies: list[float] = []
        self.errors: Counter[str] = Counter()
        self.pending = 0
        self.connect_errors = 0
        self.drained = asyncio.Event()

    def forget(self, conn: Conn) -> None:
        self.open -= 1
        if conn in self.idle:
            self.idle.remove(conn)

    def finished(self, conn: Conn, seconds: float, record: bool, error: str | None) -> None:
        self.pending -= 1
        if record:
            if error is None:
                self.latencies.append(seconds * 1000)
            else:
                self.errors[error[:160]] += 1
        if not conn.lost:
            self.idle.append(conn)
        if self.pending == 0:
            self.drained.set()

    async def connect(self) -> Conn:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(lambda: Conn(self), self.host, self.port)
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        return conn

    def fire(self, due: float, record: bool) -> None:
        self.pending += 1
        self.drained.clear()
        while self.idle:
            conn = self.idle.pop()
            if not conn.lost:
                conn.send(due, record)
                return
        asyncio.get_running_loop().create_task(self._fire_new(due, record))

    async def _fire_new(self, due: float, record: bool) -> None:
        try:
            conn = await self.connect()
        except OSError as exc:
            self.pending -= 1
            self.connect_errors += 1
            if record:
                self.errors[f"connect: {exc}"] += 1
            return
        conn.send(due, record)


async def run(pacer: Pacer, rate: float, seconds: float, warmup: float, connections: int) -> dict[str, Any]:
    for _ in range(connections):  # open ahead: the first requests should not pay for a handshake
        pacer.idle.append(await pacer.connect())
    interval = 1.0 / rate
    t0 = time.perf_counter() + 0.05
    total = int(seconds * rate)
    late_max = 0.0
    i = 0
    while i < total:
        due = t0 + i * interval
        now = time.perf_counter()
        if now < due:
            await asyncio.sleep(due - now)
            continue
        late_max = max(late_max, now - due)
        pacer.fire(due, record=due - t0 >= warmup)
        i += 1
    try:
        await asyncio.wait_for(pacer.drained.wait(), timeout=30)
    except TimeoutError:
        pacer.errors["no reply within 30 s of the last send"] += pacer.pending
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "rate": rate,
        "seconds": seconds,
        "warmup": warmup,
        "sent": total,
        "latencies_ms": pacer.latencies,
        "errors": sum(pacer.errors.values()),
        "error_samples": dict(pacer.errors.most_common(5)),
        "connections": pacer.most_open,
        "generator_late_max_ms": late_max * 1000,
        "loadgen_cpu_s": usage.ru_utime + usage.ru_stime,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True)
    parser.add_argument("--body", required=True, help="JSON request body (POST)")
    parser.add_argument("--header", action="append", default=[], help="'Name: value'")
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--connections", type=int, default=16, help="keep-alive connections opened ahead")
    parser.add_argument("--expect", default='"choices"', help="text an ok reply body contains")
    args = parser.parse_args()
    url = urlsplit(args.url)
    if url.scheme != "http" or url.hostname is None:
        sys.exit("paced: only http:// URLs on this machine")
    host, port = url.hostname, url.port or 80
    body = args.body.encode()
    lines = [
        f"POST {url.path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        *(f"{k}: {v}" for k, v in map(parse_header, args.header)),
    ]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    async def go() -> dict[str, Any]:
        pacer = Pacer(host, port, request, args.expect.encode())
        return await run(pacer, args.rate, args.seconds, args.warmup, args.connections)

    with asyncio.Runner(loop_factory=new_event_loop()) as runner:
        result = runner.run(go())
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
