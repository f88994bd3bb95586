"""The access log: one JSON line per request, cheap enough for ``GET /models`` at tens of thousands a second.

``AccessLog.record`` builds the line (orjson, straight from the request's fields) and hands it to one
of two sinks:

- **direct**: when ``modelgate.access`` ends in exactly one ``JsonLinesHandler`` (what
  ``logs.logging_config`` sets up for ``modelgate serve``), the line is appended to that handler's
  ``LineWriter``: no ``LogRecord``, no handler lock, no formatter, no write per request;
- **logging**: otherwise (tests, ``caplog``, an embedding application's own logging) through
  ``logging`` as an ordinary record carrying the fields as ``structured``, so any handler sees it.

Either way the line has the same fields and shape, and ``MODELGATE_LOG_LEVEL`` / ``--log-level``
decide as before: info for a normal answer, warning for a 5xx (``Logger.isEnabledFor``).

No credential can be in a line. Most fields hold no client or upstream text by construction: the
time, the level, our own request id, a known method, the route *template* (never the raw path), the
status, the duration, catalogue model ids and provider names, parameter names, the outcome word,
and ``key_id`` (a short digest prefix). The few that may carry foreign text pass through the app's
``RedactingFilter.scrub`` before serialization: a client-chosen ``X-Request-ID``, an unknown method,
and the error messages of ``attempts`` and ``error``.

``LineWriter`` batches lines in memory and a background thread writes them every
``FLUSH_INTERVAL`` seconds (or sooner past ``HIGH_WATER`` bytes) in one ``write(2)``, so a request
never waits on stderr, even when whatever reads stderr stalls. Past ``LIMIT`` unwritten bytes the
request path writes itself (it waits rather than grow memory without bound or drop lines). Any
other record through the same handler is written at once, after the lines already buffered, so
the output stays in order. The buffer is flushed at app shutdown and when logging shuts down.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections import deque
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any

import orjson

from modelgate.logs import RedactingFilter
from modelgate.metrics import KNOWN_METHODS

if TYPE_CHECKING:
    from modelgate.observer import Observation

ACCESS_LOGGER = "modelgate.access"

#: How long a buffered line may wait before it is written, and how much may wait before a write is due now.
FLUSH_INTERVAL = 0.05
HIGH_WATER = 64 * 1024
#: Unwritten bytes past which the caller writes itself (stderr is not keeping up).
LIMIT = 4 * 1024 * 1024


class LineWriter:
    """Whole lines to a file descriptor (or a text stream without one), written by a background thread."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        try:
            self._fd: int | None = stream.fileno()
        except (AttributeError, OSError, ValueError):  # StringIO and friends: no descriptor
            self._fd = None
        # A deque: append and popleft are atomic, so the request path takes no lock. The size is a
        # hint for when to write (a lost update between threads only moves a write a little).
        self._pending: deque[bytes] = deque()
        self._size = 0
        self._io = threading.Lock()  # one writer at a time, oldest lines first
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.broken: OSError | None = None

    def write(self, line: bytes) -> None:
        """Buffer one line (ending in a newline); written within ``FLUSH_INTERVAL``."""
        self._pending.append(line)
        before = self._size
        size = self._size = before + len(line)
        if self._closed or size >= LIMIT:  # no thread to write it, or stderr is not keeping up
            self.flush()
        elif self._thread is None:
            self._start()
        elif size >= HIGH_WATER > before:  # wake the writer once, when the batch becomes due
            self._wake.set()

    def write_now(self, line: bytes) -> None:
        """Write every buffered line and then ``line``, before returning."""
        with self._io:
            self._write(self._take() + line)

    def flush(self) -> None:
        with self._io:
            self._write(self._take())

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        self.flush()

    def _take(self) -> bytes:
        """Every buffered line, oldest first (called holding ``_io``)."""
        pending = self._pending
        self._size = 0
        parts = [pending.popleft() for _ in range(len(pending))]
        return b"".join(parts)

    def _start(self) -> None:
        with self._io:
            if self._thread is not None or self._closed:
                return
            self._thread = threading.Thread(target=self._run, name="modelgate-access-log", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(FLUSH_INTERVAL)
            self._wake.clear()
            self.flush()

    def _write(self, data: bytes) -> None:
        if not data or self.broken is not None:
            return
        try:
            if self._fd is None:
                self._stream.write(data.decode("utf-8"))
                self._stream.flush()
                return
            view = memoryview(data)
            while view:
                try:
                    written = os.write(self._fd, view)
                except BlockingIOError:  # someone made the descriptor non-blocking: wait for room
                    time.sleep(0.001)
                    continue
                view = view[written:]
        except OSError as exc:  # stderr closed or gone: nothing more can be written there
            self.broken = exc


class JsonLinesHandler(logging.Handler):
    """A handler writing one line per record through a ``LineWriter`` (``logs.logging_config`` installs it).

    Records are formatted by the configured formatter and written at once; ``AccessLog`` appends its
    ready-made lines to ``writer`` directly, batched.
    """

    def __init__(self, stream: IO[str] | None = None) -> None:
        super().__init__()
        self.writer = LineWriter(stream if stream is not None else sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.writer.write_now(self.format(record).encode("utf-8", "backslashreplace") + b"\n")
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
        super().close()


class _Clock:
    """``2026-11-26T23:39:18.123Z`` for a ``time.time()``, as ``datetime.isoformat`` would write it (rounded
    to the microsecond, then cut to the millisecond), built once per millisecond."""

    def __init__(self) -> None:
        self._millis = -1
        self._text = ""
        self._second = -1
        self._stamp = ""

    def iso(self, now: float) -> str:
        millis = round(now * 1_000_000) // 1000
        if millis != self._millis:
            second, ms = divmod(millis, 1000)
            if second != self._second:  # strftime once a second: under load each request is a new millisecond
                self._stamp = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
                self._second = second
            self._text = f"{self._stamp}.{ms:03d}Z"
            self._millis = millis
        return self._text


class AccessLog:
    """Builds and writes the access line of each request (one instance per app, on ``GatewayState``)."""

    def __init__(self, redactor: RedactingFilter, logger: logging.Logger | None = None) -> None:
        self.redactor = redactor
        self.logger = logger or logging.getLogger(ACCESS_LOGGER)
        self._clock = _Clock()

    def record(
        self,
        obs: Observation | None,
        *,
        request_id: str,
        client_id: bool,
        method: str,
        route: str,
        status: int,
        duration: float,
        key_id: str | None = None,
    ) -> None:
        """Write the line of one finished request. ``client_id``: ``request_id`` came from the client."""
        level = logging.WARNING if status >= 500 else logging.INFO
        logger = self.logger
        if not logger.isEnabledFor(level):
            return
        scrub = self.redactor.scrub
        fields: dict[str, Any] = {
            "ts": self._clock.iso(time.time()),
            "level": "warning" if level == logging.WARNING else "info",
            "msg": "request",
            "request_id": scrub(request_id) if client_id else request_id,
            "method": method if method in KNOWN_METHODS else scrub(method),
            "route": route,
            "status": status,
            "duration_ms": round(duration * 10_000) / 10,  # one decimal, without round(x, 1)'s slow path
        }
        if obs is not None:
            if obs.model is not None:
                fields["model"] = obs.model
                fields["provider"] = obs.provider
                fields["ttft_ms"] = obs.ttft_ms
                fields["prompt_tokens"] = obs.prompt_tokens
                fields["completion_tokens"] = obs.completion_tokens
                if obs.usage_estimated:
                    fields["usage_estimated"] = True
                fields["dropped_params"] = obs.dropped_params
            if obs.attempts:
                fields["attempts"] = [scrub(f"{model}: {error}") for model, error in obs.attempts]
            if obs.stream_outcome is not None:
                fields["stream"] = obs.stream_outcome
            if obs.error is not None:
                fields["error"] = scrub(obs.error)
        if key_id is not None:
            fields["key_id"] = key_id
        handler = _direct_handler(logger)
        if handler is not None:
            handler.writer.write(orjson.dumps(fields, option=orjson.OPT_APPEND_NEWLINE))
        else:
            logger.log(level, "%s", orjson.dumps(fields).decode(), extra={"structured": fields})

    def flush(self) -> None:
        handler = _direct_handler(self.logger)
        if handler is not None:
            handler.writer.flush()


def _direct_handler(logger: logging.Logger) -> JsonLinesHandler | None:
    """The one ``JsonLinesHandler`` every record of ``logger`` reaches, when nothing else would see the record.

    Checked per line (a few attribute reads), so a handler added later (``caplog``, a test's
    capture) is honoured at once. The handler's own filters may only be redaction, which
    ``AccessLog.record`` applies itself.
    """
    handlers = logger.handlers
    if logger.propagate or len(handlers) != 1 or logger.filters:
        return None
    handler = handlers[0]
    if type(handler) is not JsonLinesHandler or handler.level > logging.INFO:
        return None
    for attached in handler.filters:
        if type(attached) is not RedactingFilter:
            return None
    return handler
