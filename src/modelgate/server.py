"""The HTTP server: uvicorn, with the limits a hostile client must not get around.

uvicorn's httptools protocol (the fast one ``uvicorn[standard]`` picks) has no limit on a request's
head and no timer before the first response: a connection that never finishes its headers, or never
sends a byte, stays open for good, and a 100 MiB header block is buffered and answered (issue 11, #5
and #6). ``GuardedProtocol`` adds to it, per connection:

- a head size limit: a request line + headers over ``max_header_bytes`` → 431 and close. The bytes are
  counted as they arrive, so an endless head is refused at the limit instead of being buffered;
- a head read timeout: the request line and headers must arrive within ``header_timeout`` seconds of
  the connection opening or of the previous response → 408 and close (a connection that sent nothing
  is just closed);
- the keep-alive idle timeout (uvicorn's own timer, set from ``keepalive_timeout``);
- a cap on open connections per process: one over ``max_connections`` gets 503 and is closed at once,
  before it holds a buffer or a timer (the open-files limit is what a flood of sockets exhausts);
- the shutdown hook: the start of a graceful shutdown starts the app's ``Drain`` (``drain.py``).

What uvicorn offers does not cover it: ``limit_concurrency`` counts connections but answers only once a
request's headers are complete, so idle sockets still pile up; ``h11_max_incomplete_event_size`` bounds
the head only with the (slower) h11 protocol, with a 400 and still no timer.
"""

from __future__ import annotations

import asyncio
import math
import resource
from dataclasses import dataclass
from typing import Any

import orjson
import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState
from uvicorn.supervisors import Multiprocess

from modelgate.drain import DRAIN_STATE, Drain
from modelgate.settings import Settings

#: Seconds uvicorn waits beyond ``graceful_timeout`` before cancelling what still runs (a reply blocked
#: on a client that does not read cannot take its error part; the drain ends everything else first).
SHUTDOWN_BACKSTOP = 5.0
#: Seconds between two log lines about refused connections.
REFUSAL_LOG_INTERVAL = 10.0


@dataclass(frozen=True)
class ServerLimits:
    max_header_bytes: int = 32_768
    header_timeout: float = 10.0
    keepalive_timeout: float = 5.0
    max_connections: int = 512

    @classmethod
    def from_settings(cls, settings: Settings) -> ServerLimits:
        return cls(
            max_header_bytes=settings.max_header_bytes,
            header_timeout=settings.header_timeout,
            keepalive_timeout=settings.keepalive_timeout,
            max_connections=settings.max_connections or default_max_connections(),
        )


def default_max_connections() -> int:
    """Half the process's open-files limit: every client stream also holds an upstream socket."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 10_000
    return max(16, soft // 2)


class GatewayConfig(uvicorn.Config):
    """uvicorn's config carrying our limits (pickled with it into ``--workers`` processes)."""

    def __init__(self, app: Any, *, limits: ServerLimits, **kwargs: Any) -> None:
        super().__init__(app, http=GuardedProtocol, **kwargs)
        self.limits = limits
        #: Loop time of the last "connection refused" log line (a flood of refusals logs one per 10 s).
        self.refusal_logged_at = -math.inf


def refusal(status: int, message: str) -> bytes:
    """A whole response in the seed's error shape, closing the connection."""
    body = orjson.dumps({"statusCode": status, "statusMessage": message})
    return b"".join(
        (
            STATUS_LINE[status],
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
            body,
        )
    )


class GuardedProtocol(HttpToolsProtocol):
    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits: ServerLimits = getattr(config, "limits", None) or ServerLimits()
        self.timeout_keep_alive = self.limits.keepalive_timeout  # type: ignore[assignment]  # a float works
        self._head_timer: asyncio.TimerHandle | None = None
        #: Reading a request head (not a body): from the end of the previous request to the end of the headers.
        self._in_head = True
        #: Bytes received of the head being read, counted per network read.
        self._head_bytes = 0
        #: Parser events seen in the current read (a head ended or a message completed).
        self._turns = 0
        #: A byte of the current head has arrived.
        self._head_begun = False

    # -- the connection cap and the first timer ------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        over = len(self.connections) >= self.limits.max_connections
        super().connection_made(transport)
        if over:
            self._log_refusal()
            self._refuse(503, "Too many open connections; try again later")
            return
        self._arm_head_timer()

    def _log_refusal(self) -> None:
        now = self.loop.time()
        if now - getattr(self.config, "refusal_logged_at", -math.inf) >= REFUSAL_LOG_INTERVAL:
            self.config.refusal_logged_at = now  # type: ignore[attr-defined]
            self.logger.warning(
                "connection refused with 503: %d open connections is the limit (--max-connections); "
                "more refusals in the next %g s are not logged",
                self.limits.max_connections,
                REFUSAL_LOG_INTERVAL,
            )

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    # -- the head: size and time ------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        counting = self._in_head
        self._turns = 0
        super().data_received(data)
        if not (counting and self._in_head and self._turns == 0) or self.transport.is_closing():
            return  # the head ended in this read (its exact size was checked then), or was never read here
        self._head_bytes += len(data)
        if self._head_bytes > self.limits.max_header_bytes:
            self._refuse(431, self._too_large())

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_begun = True
        if self._head_timer is None:  # a later request of a keep-alive connection: its own head time
            self._arm_head_timer()

    def on_headers_complete(self) -> None:
        self._cancel_head_timer()
        self._in_head = self._head_begun = False
        self._head_bytes = 0
        self._turns += 1
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size <= self.limits.max_header_bytes:
            super().on_headers_complete()
            return
        # Answered through uvicorn's own request cycle (the parser goes on with the body), not the app.
        app, self.app = self.app, _HeadTooLarge(self._too_large())
        try:
            super().on_headers_complete()
        finally:
            self.app = app

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True
        self._turns += 1

    def _too_large(self) -> str:
        return f"Request headers are larger than {self.limits.max_header_bytes} bytes"

    def _arm_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self._head_begun:  # part of a head came: say why it is closed
            self._refuse(408, f"Request headers did not arrive within {self.limits.header_timeout:g} seconds")
        else:
            self.transport.close()

    def _refuse(self, status: int, message: str) -> None:
        """Answer ``status`` and close, unless a response is under way on this connection (then just close)."""
        self._cancel_head_timer()
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(refusal(status, message))
        self.transport.close()

    # -- shutdown -------------------------------------------------------------------------------------

    def shutdown(self) -> None:
        drain = self.app_state.get(DRAIN_STATE)
        if isinstance(drain, Drain):
            drain.begin()
        super().shutdown()


class _HeadTooLarge:
    """The ASGI app that answers a request whose head is over the limit: 431, connection closed."""

    def __init__(self, message: str) -> None:
        self.body = orjson.dumps({"statusCode": 431, "statusMessage": message})

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(self.body)).encode("ascii")),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": 431, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})


def run(app: Any, settings: Settings, *, workers: int = 1, **options: Any) -> None:
    """Serve ``app`` (an ASGI app, or an import string of a factory with ``workers`` > 1) like ``uvicorn.run``."""
    config = GatewayConfig(
        app,
        limits=ServerLimits.from_settings(settings),
        workers=workers,
        factory=workers > 1,
        timeout_graceful_shutdown=math.ceil(settings.graceful_timeout + SHUTDOWN_BACKSTOP),
        **options,
    )
    try:
        if workers > 1:
            Multiprocess(config, sockets=[config.bind_socket()]).run()
        else:
            uvicorn.Server(config).run()
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it shut down on; as uvicorn.run, no traceback
        pass
