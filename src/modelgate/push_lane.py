"""The push lane: the middle of a relayed reply carried from the upstream's network read to the client's socket
in one synchronous call, without waking the response's task.

Pulled, each upstream read resolves aiohttp's read future, the task wakes and resumes the whole chain of
async generators above the read (the upstream reader, the provider, the gateway's relay, the drain bound, the
encoder, the response loop), and the chunk goes out: a loop turn, aiohttp's read path and a dozen frames per
token, about half of the server's CPU per relayed token (``bench/README.md``, "Fourth pass"). Pushed, aiohttp's
protocol hands the bytes to the reply's parser in ``data_received`` and the events go straight through the same
per-batch work those layers do (count, encode, write), while the task sleeps until the lane hands the reply back.

Only the *middle* of a reply is pushed, and only while the loop keeps up (``LoopLag``): the deltas of one network
read (aiohttp feeds them an HTTP chunk at a time; ``Carry.flush`` writes them together), parsed without failure,
for a client socket that takes them now. Everything else is handed back to the pulling task
unchanged, which then does exactly what it did before: the first batch (which opens the response), the batch with
the ``Finish``, a failure in the stream, the end of the body or a broken connection, a client that stops reading
(its bytes then wait in aiohttp's buffer, whose flow control pauses the upstream), and a server shutting down. So
retries, fallbacks, errors, endings and backpressure keep their one tested path, and a reply is pushed only when
every layer between the socket and the upstream has said how to do its part for a batch (``Lane.ready``): the
response, its encoder, the drain bound and the relay. A layer that has no such part leaves the lane unready and
the reply is pulled. Every encoder has one (``deltas``): the data, UI message and text streams, ``/v1`` chunks and
the Responses API's events.

The lane finds its layers through a context variable: ``RelayResponse`` sets it in the response's task, and each
layer, running in that task, registers itself when it starts. The upstream reader (``Upstream.stream``) pushes
only when the lane of its task is ready; the providers pass batches through unchanged (``Provider.stream``).

aiohttp has no hook for this, so a pushed reply's ``StreamReader`` is given a subclass (``PushReader``, no new
state: the sinks live in ``_SINKS``) whose ``feed_data`` offers the bytes to the lane first; anything declined is
buffered as aiohttp would. ``PUSH_SUPPORTED`` is False, and every reply pulled, when aiohttp's reader no longer
has the shape this relies on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import StreamReader

from modelgate.chat import Finish, StreamEvent

if TYPE_CHECKING:
    from modelgate.deadline import Deadline
    from modelgate.drain import Drain
    from modelgate.observer import Observation
    from modelgate.providers._http import StreamParser
    from modelgate.relay_response import ChunkWriter

#: The lane of the response being relayed by the current task (set by ``RelayResponse``).
LANE: ContextVar[Lane | None] = ContextVar("modelgate_push_lane", default=None)


#: How often a loop that relays pushed replies checks how late it runs, and the lateness that counts as late.
LAG_PERIOD = 0.02
LAG_LIMIT = 0.02
#: Consecutive late checks before the loop counts as overloaded (one late check is a pause, not a load).
LAG_CHECKS = 3


class LoopLag:
    """Whether the event loop is overloaded, while replies are relayed: a timer measures its own lateness.

    An overloaded loop pulls rather than pushes. Measured (``bench/README.md``, "Fourth pass"): at 1,000 streams on
    one core, before the lane joined a read's HTTP chunks into one write (``Carry.flush``), the pulled path relayed
    more tokens per second; since, the two are within the run-to-run noise there (with this rule 85-96k
    tokens/s, pushed throughout 54-88k), so the rule stays, a guard with no cost below saturation. The timer runs
    only while a reply may be pushed (``enter`` .. ``leave``), so an idle server has none.
    """

    __slots__ = ("_due", "_handle", "_late_checks", "late", "users")

    def __init__(self) -> None:
        self.late = False
        self.users = 0
        self._late_checks = 0
        self._due = 0.0
        self._handle: asyncio.TimerHandle | None = None

    def enter(self) -> None:
        self.users += 1
        if self._handle is None:
            self._schedule(asyncio.get_running_loop())

    def leave(self) -> None:
        self.users -= 1

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        self._due = loop.time() + LAG_PERIOD
        self._handle = loop.call_at(self._due, self._check, loop)

    def _check(self, loop: asyncio.AbstractEventLoop) -> None:
        late = loop.time() - self._due > LAG_LIMIT
        self._late_checks = self._late_checks + 1 if late else 0
        self.late = self._late_checks >= LAG_CHECKS
        if self.users > 0:
            self._schedule(loop)
        else:
            self._handle, self._late_checks, self.late = None, 0, False


class Lane:
    """The per-batch work of every layer of one relayed reply, registered by the layers themselves."""

    __slots__ = ("drain", "encode", "ended", "lag", "observation", "relayed", "writer")

    def __init__(self, writer: ChunkWriter, lag: LoopLag) -> None:
        self.writer = writer
        self.lag = lag
        #: The encoder's bytes for a batch of deltas (no ``Finish``), or None until the encoder registers.
        self.encode: Callable[[Sequence[StreamEvent]], bytes] | None = None
        self.drain: Drain | None = None
        #: The relay registered (``observation`` may still be None: a relay without an observer).
        self.relayed = False
        self.observation: Observation | None = None
        #: A layer ended the reply's middle (the Responses encoder past its limit): nothing more is pushed, and the
        #: pulling task, handed the reply back at the next bytes, ends it.
        self.ended = False

    def ready(self) -> bool:
        return self.encode is not None and self.drain is not None and self.relayed

    def open(self) -> bool:
        """A pushed batch could go out now: the client's socket takes it, the server is not ending replies, no layer
        ended the reply and its loop is not overloaded."""
        drain = self.drain
        return (
            self.writer.writable()
            and not (drain is not None and drain.expired)
            and not self.ended
            and not self.lag.late
        )

    def push(self, events: Sequence[StreamEvent]) -> None:
        """One batch of deltas through the relay's count, the encoder and out to the client."""
        obs = self.observation
        if obs is not None:
            obs.relayed_events += len(events)
        encode = self.encode
        assert encode is not None
        out = encode(events)
        if out and not self.writer(out):  # ``open`` said it would take it, and nothing ran since
            raise RuntimeError("the client's transport refused a pushed batch")


def current_lane() -> Lane | None:
    """The lane of the current task's response, when it is ready to carry batches."""
    current = LANE.get()
    return current if current is not None and current.ready() else None


def register_encoder(encode: Callable[[Sequence[StreamEvent]], bytes]) -> Lane | None:
    """An encoder starts in the current task: its per-batch part is ``encode``, the bytes of a batch of deltas.
    Returns the lane (None: the reply is pulled), for an encoder that may end the reply's middle (``Lane.ended``)."""
    current = LANE.get()
    if current is not None:
        current.encode = encode
    return current


def register_relay(observation: Observation | None) -> None:
    """The gateway's relay starts in the current task: its per-batch part is the observation's count."""
    current = LANE.get()
    if current is not None:
        current.relayed = True
        current.observation = observation


class PushReader(StreamReader):
    """aiohttp's reader whose incoming bytes are offered to a ``Carry`` first (while one is attached)."""

    __slots__ = ()

    def feed_data(self, data: bytes, size: int = 0) -> bool:
        sink = _SINKS.get(id(self))
        if sink is not None and data and sink.feed(data):
            return False
        return super().feed_data(data, size)

    def feed_eof(self) -> None:
        sink = _SINKS.get(id(self))
        if sink is not None:
            sink.hand_back()
        super().feed_eof()

    def set_exception(self, exc: BaseException, *args: Any, **kwargs: Any) -> None:
        sink = _SINKS.get(id(self))
        if sink is not None:
            sink.hand_back()
        super().set_exception(exc, *args, **kwargs)


#: Reader id → the carry its bytes are offered to. A reader is in here only while its task waits in ``Carry.run``.
_SINKS: dict[int, Carry] = {}


#: The aiohttp releases whose parser was read to call ``StreamReader.feed_data`` once per de-chunked piece and
#: nothing else to fill the buffer (3.14); an older one (pyproject allows 3.10) gets the pulled path, untested.
PUSH_FROM_AIOHTTP = (3, 14)

#: The most bytes of one network read parsed before their deltas are pushed without waiting for the read's end.
FLUSH_BYTES = 64 * 1024


def _push_supported() -> bool:
    """aiohttp is a release the lane was checked against and its reader still has the shape ``PushReader`` relies
    on (a slotted class with these methods)."""
    try:
        release = tuple(int(part) for part in aiohttp.__version__.split(".")[:2])
    except ValueError:
        return False
    if release < PUSH_FROM_AIOHTTP:
        return False
    try:
        probe = StreamReader.__new__(StreamReader)
        probe.__class__ = PushReader
    except TypeError:
        return False
    return all(callable(getattr(StreamReader, name, None)) for name in ("feed_data", "feed_eof", "set_exception"))


PUSH_SUPPORTED = _push_supported()


class Carry:
    """One stretch of pushed batches: from ``run`` until the reply needs its pulling task again.

    Shares the read loop's state: ``quiet`` (bytes since the last completed event, bounded by ``max_event``)
    and the idle deadline, moved on by each pushed batch as the loop moves it on by each pulled one.
    """

    __slots__ = (
        "deadline",
        "error",
        "events",
        "idle",
        "lane",
        "loop",
        "max_event",
        "parser",
        "pending",
        "pending_bytes",
        "quiet",
        "stream_end",
        "waiter",
    )

    def __init__(
        self,
        lane: Lane,
        parser: StreamParser,
        deadline: Deadline,
        *,
        idle: float,
        stream_end: float,
        max_event: int,
        quiet: int,
    ) -> None:
        self.lane = lane
        self.parser = parser
        self.deadline = deadline
        self.idle = idle
        self.stream_end = stream_end
        self.max_event = max_event
        self.quiet = quiet
        #: A batch the pulling task must deliver (it holds the ``Finish``, or the parser failed after it).
        self.events: list[StreamEvent] = []
        #: Deltas parsed during this network read, pushed together once aiohttp has fed all of it (``flush``).
        self.pending: list[StreamEvent] = []
        self.pending_bytes = 0
        #: What the lane's own work raised (never the upstream's doing: that is the parser's ``failure``).
        self.error: Exception | None = None
        self.loop = asyncio.get_running_loop()
        self.waiter: asyncio.Future[None] | None = None

    async def run(self, reader: StreamReader) -> None:
        """Carry the reply's batches until it is handed back (the caller's deadline bounds the wait)."""
        if not self.lane.open() or reader.exception() is not None or reader.is_eof() or reader._buffer:
            return  # buffered bytes, an end or a closed socket: the pulling path first
        reader.__class__ = PushReader
        self.waiter = waiter = self.loop.create_future()
        _SINKS[id(reader)] = self
        try:
            await waiter
        finally:
            _SINKS.pop(id(reader), None)
            self.waiter = None

    def hand_back(self) -> None:
        """The pulling task takes the reply again, with the deltas not yet pushed in front of its batch."""
        if self.pending:
            self.events = self.pending + self.events
            self.pending, self.pending_bytes = [], 0
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self.waiter = None

    def flush(self) -> None:
        """Push the deltas of the network read aiohttp has just fed piece by piece: one encode and one write for
        all of it. (aiohttp calls ``feed_data`` once per HTTP chunk, and a read under load brings dozens: writing
        each on its own cost a system call per token where the pulled path writes once per read.)"""
        events = self.pending
        if not events or self.waiter is None:
            return  # handed back meanwhile (with them), or the reply is over
        if not self.lane.open():
            self.hand_back()  # they go out through the pulled path, which waits for the client
            return
        self.pending, self.pending_bytes = [], 0
        try:
            self.lane.push(events)
        except Exception as exc:  # a bug of ours: raised in the response's task, where the pulled path reports it
            self.error = exc
            self.hand_back()

    def feed(self, data: bytes) -> bool:
        """Bytes from the upstream: True when taken (pushed, or parsed and handed back), False when declined
        (the reader buffers them for the pulling task)."""
        if self.waiter is None or not self.lane.open():
            self.hand_back()
            return False
        parser = self.parser
        try:
            events = parser.feed(data)
            if parser.failure is not None or parser.done or (events and isinstance(events[-1], Finish)):
                self.events = events
                self.hand_back()
                return True
            if events:
                self.quiet = 0
                if not self.pending:
                    self.loop.call_soon(self.flush)
                self.pending += events
                self.pending_bytes += len(data)
                self.deadline.extend(min(self.loop.time() + self.idle, self.stream_end))
                if self.pending_bytes >= FLUSH_BYTES:
                    self.flush()  # a flood: bounded batches, and the client's backpressure seen between them
        except Exception as exc:  # a bug of ours: raised in the response's task, where the pulled path reports it
            self.error = exc
            self.hand_back()
            return True
        self.quiet += len(data)  # as the read loop counts it
        if self.quiet > self.max_event:
            self.hand_back()  # the read loop raises the limit's error
        return True
