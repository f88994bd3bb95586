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
- the keep-alive idle timeout (``keepalive_timeout``): one timer a connection, re-armed when it fires while the
  connection was busy since (uvicorn made a timer and cancelled it per request);
- a body the answer did not read (a refusal, a GET with a body) must end within ``header_timeout`` of the
  response, else the connection is closed: uvicorn drops its bytes as they come, and each restarted its
  keep-alive timer, so a client trickling one held the connection for good;
- a cap on open connections per process: one over ``max_connections`` gets 503 and is closed at once,
  before it holds a buffer or a timer (the open-files limit is what a flood of sockets exhausts);
- a client that reads nothing of what is written to it for ``send_timeout`` seconds (``client_send_timeout``) is
  dropped, buffer and all: uvicorn's ``send`` waited on it for good once its buffer was full (a reply sent whole,
  such as a non-streamed completion), and ``close()`` waits for the buffer to be read;
- the shutdown hook: the start of a graceful shutdown starts the app's ``Drain`` (``drain.py``), and gives each
  keep-alive connection a last request (``LAST_CALL_SECONDS``) rather than closing it under a request on its way;
- bytes the parser refuses get ``400`` in the seed's error shape (uvicorn's is plain text), never written into a
  response still going out on the connection.

What uvicorn offers does not cover it: ``limit_concurrency`` counts connections but answers only once a
request's headers are complete, so idle sockets still pile up; ``h11_max_incomplete_event_size`` bounds
the head only with the (slower) h11 protocol, with a 400 and still no timer.

With ``--workers N``, ``RollingSupervisor`` is uvicorn's supervisor with a SIGHUP rolling restart that a SIGTERM
interrupts and a burst of SIGHUPs does not repeat.

It also writes the app's fast answers (``GET``/``HEAD /models``) itself when their head is complete,
without an ASGI task (``protocol_answers.py``; ``_answer_early`` says when it may).
"""

from __future__ import annotations

import asyncio
import logging
import math
import resource
import signal
import time
from dataclasses import dataclass
from typing import Any

import httptools
import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.logging import TRACE_LOG_LEVEL
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState
from uvicorn.supervisors import Multiprocess
from uvicorn.supervisors.multiprocess import SIGNALS
from uvicorn.supervisors.multiprocess import Process as WorkerSlot

from modelgate.drain import DRAIN_STATE, Drain
from modelgate.error_bodies import error_body
from modelgate.errors import ModelgateError
from modelgate.protocol_answers import EARLY_ANSWERS_STATE, EarlyAnswers
from modelgate.settings import Settings

#: Seconds uvicorn waits beyond ``graceful_timeout`` before cancelling what still runs (a reply blocked
#: on a client that does not read cannot take its error part; the drain ends everything else first).
SHUTDOWN_BACKSTOP = 5.0
#: Seconds between two log lines about refused connections.
REFUSAL_LOG_INTERVAL = 10.0
#: Seconds an idle keep-alive connection stays open once a shutdown began, to answer (with ``Connection: close``) a
#: request its client sent as it began: closed at once, it was lost (a reset, or no response at all) — in every
#: SIGHUP rolling restart, where the clients of a retiring worker are busy, not idle.
LAST_CALL_SECONDS = 1.0


@dataclass(frozen=True)
class ServerLimits:
    max_header_bytes: int = 32_768
    header_timeout: float = 10.0
    keepalive_timeout: float = 5.0
    max_connections: int = 512
    #: Seconds what is written may wait in the server's buffer for a client that reads none of it.
    send_timeout: float = 60.0

    @classmethod
    def from_settings(cls, settings: Settings) -> ServerLimits:
        return cls(
            max_header_bytes=settings.max_header_bytes,
            header_timeout=settings.header_timeout,
            keepalive_timeout=settings.keepalive_timeout,
            max_connections=settings.max_connections or default_max_connections(),
            send_timeout=settings.client_send_timeout,
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
        # ws="none": the service has no WebSocket route. With a WebSocket library installed, uvicorn would take every
        # upgrade request to its WebSocket protocol: out of these limits, refused in plain text, and logged with
        # its query string (where a client may have put a key). Without, an upgrade is an ordinary request.
        super().__init__(app, http=GuardedProtocol, ws="none", **kwargs)
        self.limits = limits
        #: Loop time of the last "connection refused" log line (a flood of refusals logs one per 10 s).
        self.refusal_logged_at = -math.inf


def refusal(status: int, message: str, path: str = "") -> bytes:
    """A whole response in the error shape of ``path`` (OpenAI's under ``/v1``, else the seed's), closing the
    connection."""
    body = error_body(ModelgateError(message, status=status), path)
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
        #: Bytes in the network read being parsed, and whether the current head began in it.
        self._read_size = 0
        self._head_in_read = False
        #: The app's answers this connection writes itself (``protocol_answers.py``), if it may.
        self._early = self._early_answers()
        #: The message being parsed has no uvicorn request cycle: answered by ``_answer_early``, or dropped.
        self._no_cycle = False
        #: Runs from the end of a response given before its request's body was all here (``on_response_complete``).
        self._body_timer: asyncio.TimerHandle | None = None
        #: Runs while the transport's buffer is over its high-water mark; and its size when last looked at.
        self._write_timer: asyncio.TimerHandle | None = None
        self._unread = 0
        #: The server is shutting down: the next request is this connection's last (``shutdown``).
        self._last_call = False
        self._last_call_timer: asyncio.TimerHandle | None = None
        #: When the connection last became idle (its response complete, nothing received since); None: busy.
        self._idle_since: float | None = None
        #: The request whose ASGI task runs (or ran last): ``self.cycle`` is the newest, a pipelined one waiting.
        self._running: RequestResponseCycle | None = None

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
        self._cancel_body_timer()
        self._cancel_write_timer()
        if self.timeout_keep_alive_task is not None:
            self.timeout_keep_alive_task.cancel()
            self.timeout_keep_alive_task = None
        super().connection_lost(exc)
        # uvicorn tells the newest request cycle the client is gone; with a request pipelined behind the running one,
        # that is the waiting one, which never runs. The running one went on as if its client were there: waiting
        # for its first token (the upstream call and the slots held) until the timeout, or writing into the closed
        # transport (an unhandled error).
        running, self._running = self._running, None
        if running is not None and running is not self.cycle:
            if not running.response_complete:
                running.disconnected = True
            running.message_event.set()

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        self._running = cycle
        super()._start_asgi_task(cycle, app)

    # -- keep-alive: one timer a connection, re-armed when it fires early --------------------------------

    def _unset_keepalive_if_required(self) -> None:
        """Bytes came (or a request began): the connection is busy. uvicorn cancelled its keep-alive timer here and
        armed a new one at every response's end, a timer made and cancelled per request (~8% of a ``GET /models``
        under load, py-spy); here the timer stays and ``_keep_alive_due`` closes only a connection idle for the
        whole timeout."""
        self._idle_since = None

    def _keep_idle(self) -> None:
        """The response is complete and nothing else is under way: the keep-alive timeout runs from now."""
        self._idle_since = now = self.loop.time()
        if self.timeout_keep_alive_task is None:
            self.timeout_keep_alive_task = self.loop.call_at(now + self.timeout_keep_alive, self._keep_alive_due)

    def _keep_alive_due(self) -> None:
        self.timeout_keep_alive_task = None
        idle_since = self._idle_since
        if idle_since is None:
            return  # busy: the end of its response arms the timer again
        due = idle_since + self.timeout_keep_alive
        if self.loop.time() < due:  # busy and idle again since it was armed: the rest of the timeout
            self.timeout_keep_alive_task = self.loop.call_at(due, self._keep_alive_due)
            return
        self.timeout_keep_alive_handler()

    # -- a client that does not read -------------------------------------------------------------------

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_timer is None:
            self._unread = self.transport.get_write_buffer_size()
            self._write_timer = self.loop.call_later(self.limits.send_timeout, self._write_timed_out)

    def resume_writing(self) -> None:
        self._cancel_write_timer()
        super().resume_writing()

    def _write_timed_out(self) -> None:
        self._write_timer = None
        unread = self.transport.get_write_buffer_size()
        if unread < self._unread:  # the client reads, slowly: it has as long again for the next bytes
            self._unread = unread
            self._write_timer = self.loop.call_later(self.limits.send_timeout, self._write_timed_out)
            return
        # It read nothing for send_timeout seconds. close() would wait for it to read the buffer, for good: drop it.
        # Waiting sends see the connection lost (uvicorn's cycle), so the response ends as for a client gone.
        self.transport.abort()

    def _cancel_write_timer(self) -> None:
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    # -- the head: size and time ------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        counting = self._in_head
        self._turns = 0
        self._read_size = len(data)
        self._head_in_read = False
        super().data_received(data)
        if self.transport.is_closing():
            return
        if self._head_begun and self._head_timer is None:
            # A head began in this read and is not complete: its time runs from now. (Armed here rather than
            # when each message begins, so a request head that arrives in one read costs no timer.)
            self._arm_head_timer()
        if not (counting and self._in_head and self._turns == 0):
            return  # the head ended in this read (its size was checked then), or was never read here
        self._head_bytes += len(data)
        if self._head_bytes > self.limits.max_header_bytes:
            self._refuse(431, self._too_large())

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_begun = self._head_in_read = True
        self._no_cycle = False

    def on_headers_complete(self) -> None:
        self._cancel_head_timer()
        fits = self._fits()
        self._in_head = self._head_begun = False
        self._head_bytes = 0
        self._turns += 1
        if fits:
            if self.transport.is_closing():
                # Pipelined behind an early answer that closed the connection: as uvicorn does with a request
                # queued behind a closing response, it is never run (nothing more would reach the client).
                self._no_cycle = True
                return
            # An early answer earlier in this read armed the keep-alive timer: not while this request runs.
            self._unset_keepalive_if_required()
            if self._early is None or not self._answer_early():
                super().on_headers_complete()
                if self._last_call and self.cycle is not None:
                    self.cycle.keep_alive = False
            return
        # Answered through uvicorn's own request cycle (the parser goes on with the body), not the app.
        app, self.app = self.app, _HeadTooLarge(self._too_large())
        try:
            super().on_headers_complete()
        finally:
            self.app = app

    def on_body(self, body: bytes) -> None:
        if not self._no_cycle:  # the body of a dropped request goes nowhere
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._cancel_body_timer()
        if self._no_cycle:
            self._no_cycle = False
        else:
            super().on_message_complete()
        self._in_head = True
        self._turns += 1

    def on_response_complete(self) -> None:
        # uvicorn's, with the keep-alive timer armed by ``_keep_idle`` instead of a new ``call_later``.
        self.server_state.total_requests += 1
        if not self.transport.is_closing():
            self.flow.resume_reading()
            if self.pipeline:  # the next request waited behind this response: it runs now
                cycle, app = self.pipeline.pop()
                self._start_asgi_task(cycle, app)
            else:
                self._keep_idle()
        if self._last_call:
            self._give_last_call()
        if not self._in_head and not self._no_cycle and not self.transport.is_closing():
            # Answered before its body was all here (a refusal, a GET with a body, a route that reads none): uvicorn
            # reads the rest and drops it, and every byte of it restarts the keep-alive timer. The rest gets the
            # header timeout to arrive, as a head does, and the connection is closed when it has not.
            self._body_timer = self.loop.call_later(self.limits.header_timeout, self._body_timed_out)

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if not self._in_head:
            self.transport.close()

    def _cancel_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _fits(self) -> bool:
        """Whether the head just completed is within ``max_header_bytes``."""
        limit = self.limits.max_header_bytes
        if self._head_in_read and self._read_size <= limit:  # all of it came in this read: no larger than that
            return True
        return len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers) <= limit

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

    def _unsupported_upgrade_warning(self) -> None:
        # An upgrade is served as an ordinary request (GatewayConfig: no WebSocket protocol); uvicorn's two warnings
        # per request ("install websockets") would be wrong advice, and a log flood for the asking.
        pass

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to bytes its parser refuses (a malformed request line, header or chunk) is
        ``text/plain`` and written even into a response still going out on this connection; ours is the
        seed's error shape, or only the close while a response is under way."""
        cycle = self.cycle
        # The body of the request being answered is malformed (its chunk framing) before its answer began: the
        # refusal is its answer (the app then finds its client gone).
        its_answer = not self._in_head and not self.pipeline and cycle is not None and not cycle.response_started
        self._refuse(400, "Invalid HTTP request", answers_request=its_answer)

    def _refuse(self, status: int, message: str, *, answers_request: bool = False) -> None:
        """Answer ``status`` and close, unless a response is under way on this connection (then just close).
        ``answers_request``: the refusal is the answer of the request in progress, whose response has not begun."""
        self._cancel_head_timer()
        if answers_request or self.cycle is None or self.cycle.response_complete:
            self.transport.write(refusal(status, message, self._path()))
        self.transport.close()

    def _path(self) -> str:
        """The path of the request being read, as far as it came ("" between requests: the last one's URL stays)."""
        if self._in_head and not self._head_begun:
            return ""
        return getattr(self, "url", b"").partition(b"?")[0].decode("latin-1")

    # -- answers written here (protocol_answers.py) ----------------------------------------------------

    def _early_answers(self) -> EarlyAnswers | None:
        early = self.app_state.get(EARLY_ANSWERS_STATE)
        if not isinstance(early, EarlyAnswers):
            return None
        # What uvicorn adds on the ASGI path and an early answer would skip: a root path, its concurrency
        # limit's 503, its own access line, its ASGI message log (trace level).
        if self.root_path or self.limit_concurrency is not None:
            return None
        if (self.access_log and self.access_logger.isEnabledFor(logging.INFO)) or self.logger.isEnabledFor(
            TRACE_LOG_LEVEL
        ):
            return None
        return early

    def _answer_early(self) -> bool:
        """Write the answer to a fast route now, as one write; False leaves the request to uvicorn."""
        assert self._early is not None
        parser = self.parser
        method = parser.get_method()
        if method != b"GET" and method != b"HEAD":
            return False
        try:
            raw_path: bytes = httptools.parse_url(self.url).path
        except httptools.HttpParserInvalidURLError:
            return False  # uvicorn's answer to it, whatever that is
        fast = self._early.route(raw_path, method)
        if fast is None:
            return False
        # What uvicorn's request cycle is there for: a response still going out on this connection (this one
        # waits its turn in uvicorn's pipeline), a client not reading what was sent (uvicorn's send waits for
        # it), a body to read, 100-continue, an upgrade.
        if (
            (self.cycle is not None and not self.cycle.response_complete)
            or self.pipeline
            or self.flow.write_paused
            or self.expect_100_continue
            or parser.should_upgrade()
        ):
            return False
        for name, _ in self.headers:
            if name in _BODY_HEADERS:
                return False
        http_version = parser.get_http_version()
        keep_alive = http_version != "1.0" and parser.should_keep_alive() and not self._last_call  # as uvicorn
        scope = self.scope
        scope["method"] = method.decode("ascii")
        scope["path"] = raw_path.decode("ascii")
        if http_version != "1.1":
            scope["http_version"] = http_version
        try:
            response = self._early.response(fast, scope, self.server_state.default_headers, keep_alive)  # type: ignore[arg-type]
        except Exception:
            return False  # the ASGI path answers it again, and logs what went wrong
        self.transport.write(response)
        self._no_cycle = True
        if not keep_alive:
            self.transport.close()
        self.on_response_complete()  # uvicorn's own end of a response: request count, reading, keep-alive timer
        return True

    # -- shutdown -------------------------------------------------------------------------------------

    def shutdown(self) -> None:
        drain = self.app_state.get(DRAIN_STATE)
        if isinstance(drain, Drain):
            drain.begin()
        # Not closed at once, nor as soon as its running response ends (its client may have sent the next
        # request by then): a request on its way is answered, as the connection's last.
        self._last_call = True
        if self.cycle is None or self.cycle.response_complete:
            self._give_last_call()

    def _give_last_call(self) -> None:
        if self._last_call_timer is None and not self.transport.is_closing():
            wait = min(LAST_CALL_SECONDS, self.limits.keepalive_timeout)
            self._last_call_timer = self.loop.call_later(wait, super().shutdown)  # uvicorn's: close, or after this one


#: Request headers that announce a body (an early answer is only for requests without one).
_BODY_HEADERS = frozenset({b"content-length", b"transfer-encoding"})


class _HeadTooLarge:
    """The ASGI app that answers a request whose head is over the limit: 431, connection closed."""

    def __init__(self, message: str) -> None:
        self.message = message

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        body = error_body(ModelgateError(self.message, status=431), scope["path"])
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode("ascii")),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": 431, "headers": headers})
        await send({"type": "http.response.body", "body": body})


#: Seconds before a worker that could not replace a dead one is tried again, doubling up to the most.
REPLACEMENT_RETRY = 1.0
REPLACEMENT_RETRY_MAX = 30.0
#: The supervisor's log, as uvicorn's own lines about its workers.
supervisor_log = logging.getLogger("uvicorn.error")
#: Signals that stop the supervisor (uvicorn's ``handle_int``, ``handle_term``, ``handle_break``).
_EXIT_SIGNALS = frozenset(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGBREAK") if hasattr(signal, name))


class RollingSupervisor(Multiprocess):
    """uvicorn's supervisor, with a SIGHUP rolling restart that neither repeats nor holds up a stop.

    uvicorn waited for each retired worker to drain (up to ``graceful_timeout``) before replacing the next, in the
    thread that handles signals: a SIGTERM meanwhile waited for the whole restart (a new worker was even started
    after it), past an orchestrator's kill deadline. A burst of N SIGHUPs was N restarts one after another, though
    the first new workers already read the file as it is. Here retired workers drain side by side (reaped as they
    exit), a stop ends the restart, and SIGHUPs queued together are one restart.

    A worker that dies is replaced as in uvicorn, but a replacement that cannot start (the catalogue file on disk
    broken meanwhile: an operator mid-edit) no longer stops the service: uvicorn took its start-up failure for a
    broken configuration and stopped the parent, so one crashed worker and a half-edited file were an outage. The
    other workers keep serving the catalogue they loaded, and the slot is tried again, at growing intervals, until
    the file loads. A start-up failure of the first workers still stops the service."""

    def __init__(self, config: uvicorn.Config, sockets: list[Any]) -> None:
        super().__init__(config, sockets)
        #: Workers told to stop by a restart, still draining their replies.
        self.retiring: list[WorkerSlot] = []
        #: The workers started with the service (their start-up failure stops it, as in uvicorn).
        self.first: set[WorkerSlot] = set()
        #: Slot → when to start its next worker, while the slot's last one could not start and exited.
        self.waiting: dict[int, float] = {}
        #: Slot → the last wait it was given, until a worker in it serves (the next wait is twice as long).
        self.backoff: dict[int, float] = {}

    def init_processes(self) -> None:
        super().init_processes()
        self.first = set(self.processes)

    def handle_signals(self) -> None:
        queued = [self.signal_queue.pop(0) for _ in range(len(self.signal_queue))]
        if any(number in _EXIT_SIGNALS for number in queued):
            queued = [number for number in queued if number != signal.SIGHUP]  # no restart on the way out
        restarted = False
        for number in queued:
            if number == signal.SIGHUP:
                if restarted:
                    continue
                restarted = True
            handler = getattr(self, f"handle_{SIGNALS[number].lower()}", None)
            if handler is not None:
                handler()

    def stop_requested(self) -> bool:
        """Set, or a stop signal waits in the queue (this thread handles it only after the restart)."""
        return self.should_exit.is_set() or any(number in _EXIT_SIGNALS for number in self.signal_queue)

    def restart_all(self) -> None:
        """Replace each worker by a new one once that one is ready, as uvicorn does, without waiting for the
        old one to drain; stop at a stop signal."""
        stop = _StopRequested(self)
        for index, old in enumerate(self.processes):
            if stop.is_set():
                return
            new = WorkerSlot(self.config, self.sockets)
            new.start()
            if not new.wait_until_ready(self.config.timeout_worker_healthcheck, stop):  # type: ignore[arg-type]
                new.kill()
                new.join()
                if not stop.is_set():
                    supervisor_log.error(
                        "New child process [%s] was not ready in time; keeping worker [%s] and aborting the restart.",
                        new.pid,
                        old.pid,
                    )
                return
            old.terminate()
            self.retiring.append(old)
            self.processes[index] = new
            self.waiting.pop(index, None)
            self.backoff.pop(index, None)

    def keep_subprocess_alive(self) -> None:
        """uvicorn's, but a replacement that fails to start is tried again later instead of stopping the service."""
        self.retiring = [worker for worker in self.retiring if worker.process.is_alive()]  # reaps the exited
        if self.should_exit.is_set():
            return
        for index, process in enumerate(self.processes):
            due = self.waiting.get(index)
            if due is not None:
                if time.monotonic() >= due:
                    del self.waiting[index]
                    self._replace(index)
                continue
            if process.is_alive(timeout=self.config.timeout_worker_healthcheck):
                if index in self.backoff and process.is_ready(timeout=1):
                    del self.backoff[index]  # it serves: a later failure starts from the shortest wait again
                continue
            process.kill()  # hung, or dead already
            process.join()
            if self.should_exit.is_set():
                return
            if process.exitcode != STARTUP_FAILURE:
                supervisor_log.info("Child process [%s] died", process.pid)
                self._replace(index)
            elif process in self.first:
                supervisor_log.error("Child process [%s] failed to start, stopping the parent process.", process.pid)
                self.should_exit.set()
                return
            else:
                last = self.backoff.get(index)
                wait = self.backoff[index] = min(last * 2, REPLACEMENT_RETRY_MAX) if last else REPLACEMENT_RETRY
                self.waiting[index] = time.monotonic() + wait
                serving = sum(1 for worker in self.processes if worker.process.is_alive())
                supervisor_log.error(
                    "Child process [%s] failed to start (its log line says why); %d of %d workers serving, "
                    "trying again in %.0f s",
                    process.pid,
                    serving,
                    len(self.processes),
                    wait,
                )

    def _replace(self, index: int) -> None:
        process = WorkerSlot(self.config, self.sockets)
        process.start()
        self.processes[index] = process

    def join_all(self) -> None:
        super().join_all()
        for worker in self.retiring:
            worker.join()


class _StopRequested:
    """``RollingSupervisor.stop_requested`` as the event ``Process.wait_until_ready`` polls."""

    def __init__(self, supervisor: RollingSupervisor) -> None:
        self.supervisor = supervisor

    def is_set(self) -> bool:
        return self.supervisor.stop_requested()


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
            RollingSupervisor(config, sockets=[config.bind_socket()]).run()
        else:
            uvicorn.Server(config).run()
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it shut down on; as uvicorn.run, no traceback
        pass
