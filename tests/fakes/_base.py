"""What every fake upstream shares: scripting, recording, fault injection and disconnect counting.

A fake is a real ASGI app (Starlette) served on 127.0.0.1 by a real uvicorn server in a thread
(``tests/servers.py``). Tests talk to it from their own thread and event loop, so everything a test
reads or writes (the script queue, the recorded requests, the disconnect count) is guarded by a lock.

Each provider module renders a ``Reply`` into its own framing as three lists of byte frames
(preamble, one frame per token, trailer); the ``FrameStream`` below sends them with the reply's
timing and fault, the same way for every provider. A non-streamed reply is rendered as one body (and the
provider's error status for a failure), which ``WholeReply`` sends with the same timing and fault.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute
from starlette.types import Receive, Scope, Send

FaultKind = Literal["slow_first", "split_line", "split_utf8", "error_after", "status", "drop_after", "hang"]

#: Pause between the two halves of a split frame, so they leave as separate TCP segments.
SPLIT_PAUSE = 0.01
#: A hung reply gives up after this long (so a forgotten client cannot block the server's shutdown).
HANG_LIMIT = 60.0


@dataclass(frozen=True)
class Fault:
    """One injected failure. Build with the class methods."""

    kind: FaultKind
    #: Tokens sent before the fault (``error_after``, ``drop_after``, ``hang``).
    after: int = 0
    #: HTTP status of a ``status`` fault.
    http_status: int = 0
    retry_after: float | None = None
    #: The provider's own error code or type (TGI ``error_type``, Cloudflare ``code``, OpenRouter ``code``).
    code: Any = None
    message: str | None = None
    #: Delay of a ``slow_first`` fault.
    seconds: float = 0.0

    @classmethod
    def slow_first(cls, seconds: float) -> Fault:
        """The status line at once, the first token only after ``seconds`` (like ``first_delay``)."""
        return cls("slow_first", seconds=seconds)

    @classmethod
    def split_line(cls) -> Fault:
        """Every frame leaves in two writes, cut in the middle of its line."""
        return cls("split_line")

    @classmethod
    def split_utf8(cls) -> Fault:
        """Every frame holding a multi-byte character is cut after that character's first byte."""
        return cls("split_utf8")

    @classmethod
    def error_after(cls, n: int, *, code: Any = None, message: str | None = None) -> Fault:
        """``n`` tokens, then the provider's in-stream error (under HTTP 200)."""
        return cls("error_after", after=n, code=code, message=message)

    @classmethod
    def status(
        cls, status: int, *, retry_after: float | None = None, code: Any = None, message: str | None = None
    ) -> Fault:
        """An error status with the provider's error body, before any byte of a stream."""
        return cls("status", http_status=status, retry_after=retry_after, code=code, message=message)

    @classmethod
    def drop_after(cls, n: int) -> Fault:
        """``n`` tokens, then the connection is cut without ending the HTTP body."""
        return cls("drop_after", after=n)

    @classmethod
    def hang(cls, after: int = 0) -> Fault:
        """``after=0``: never answer at all (no status line). ``after=n``: ``n`` tokens, then silence."""
        return cls("hang", after=after)


@dataclass(frozen=True)
class ToolCallScript:
    """A tool call a fake answers with; each fake renders it in its own format."""

    name: str
    #: The JSON text of the arguments (streamed in fragments by the Chat Completions fakes).
    arguments: str
    id: str = "call_fake_1"

    def fragments(self, size: int = 7) -> list[str]:
        """The arguments cut in pieces, as OpenAI and OpenRouter stream them."""
        return [self.arguments[i : i + size] for i in range(0, len(self.arguments), size)] or [""]


@dataclass(frozen=True)
class Reply:
    """What the fake answers to one request."""

    tokens: Sequence[str] = ("Hello", ",", " world", "!")
    #: Reasoning tokens sent before ``tokens`` (OpenRouter ``delta.reasoning``, Ollama ``message.thinking``).
    reasoning: Sequence[str] = ()
    #: ``(prompt_tokens, completion_tokens)`` to report; None = omit; "auto" = ``PROMPT_TOKENS`` and the
    #: number of scripted tokens (reasoning included), the same for every fake.
    usage: tuple[int, int] | Literal["auto"] | None = "auto"
    finish: Literal["stop", "length", "tool_calls"] = "stop"
    #: Tool calls after ``tokens`` (script ``finish="tool_calls"`` with them, as the providers do).
    tool_calls: Sequence[ToolCallScript] = ()
    #: Seconds between two tokens, and before the first one.
    delay: float = 0.0
    first_delay: float = 0.0
    fault: Fault | None = None
    #: Provider-specific switches (documented in each fake module).
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def first_wait(self) -> float:
        fault = self.fault
        return max(self.first_delay, fault.seconds if fault and fault.kind == "slow_first" else 0.0)


#: Prompt tokens reported when a reply's usage is "auto".
PROMPT_TOKENS = 11


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    #: The path exactly as sent (percent-encoding kept), e.g. to check a model id was not encoded.
    raw_path: str
    query: str
    headers: Mapping[str, str]
    json: Any


@dataclass
class Frames:
    """A reply rendered in a provider's framing."""

    preamble: list[bytes]
    tokens: list[bytes]
    trailer: list[bytes]
    #: Frames sent instead of the trailer by an ``error_after`` fault.
    error: list[bytes] = field(default_factory=list)


class DroppedConnection(Exception):
    """Raised inside a fake to make uvicorn cut the connection mid-body (``drop_after``)."""


class _QuietDrops(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and record.exc_info[0] is DroppedConnection)


QUIET_DROPS = _QuietDrops()


def dumps(value: Any) -> bytes:
    """Compact JSON with raw UTF-8, as serde_json and most upstreams write it."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class FakeUpstream:
    """Base of the four fakes. Subclasses define ``name``, ``prefix``, ``routes()`` and the renderers."""

    name: ClassVar[str]
    #: Path prefix mirroring the real base URL's path (``/client/v4``, ``/api/v1``).
    prefix: ClassVar[str] = ""
    #: Models a listing shows when ``models`` is None.
    listed_by_default: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._queue: deque[Reply] = deque()
        self._requests: list[RecordedRequest] = []
        self._listings: list[RecordedRequest] = []
        self._disconnects = 0
        self._epoch = 0
        #: Answer this when nothing is scripted.
        self.default = Reply()
        #: Answer each request for one of these models (as the request names it) with its reply, before the script:
        #: one model failing beside the provider's others.
        self.by_model: dict[str, Reply] = {}
        #: None: serve any model. A set: only these (others get the provider's "not found"), and list them.
        self.models: set[str] | None = None
        #: Base URL of the running server (set by ``running_fakes``).
        self.root = ""
        self.app = Starlette(routes=self.routes())

    # -- the test-facing API ----------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The base URL to configure the provider with (the real one's path included)."""
        return self.root + self.prefix

    def script(self, *replies: Reply) -> None:
        """Queue replies, one per coming request; ``default`` answers once the queue is empty."""
        with self._lock:
            self._queue.extend(replies)

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def listings(self) -> list[RecordedRequest]:
        """The model-listing calls (health probes), kept apart from ``requests``: probes run in the
        background of every served app, and must not shift what a test counts or reads as ``last``."""
        with self._lock:
            return list(self._listings)

    @property
    def last(self) -> RecordedRequest:
        requests = self.requests
        assert requests, f"the {self.name} fake received no request"
        return requests[-1]

    @property
    def disconnects(self) -> int:
        """Streams the client abandoned before the fake finished sending them."""
        with self._lock:
            return self._disconnects

    def wait_for_disconnects(self, n: int = 1, timeout: float = 10.0) -> int:
        """Block until ``n`` disconnects were seen (or ``timeout``); return the count."""
        with self._lock:
            self._lock.wait_for(lambda: self._disconnects >= n, timeout)
            return self._disconnects

    def reset(self) -> None:
        """Forget scripts, records and counts; streams still running from before no longer count."""
        with self._lock:
            self._queue.clear()
            self._requests.clear()
            self._listings.clear()
            self._disconnects = 0
            self._epoch += 1
            self.default = Reply()
            self.by_model = {}
            self.models = None

    # -- for the provider modules -----------------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        raise NotImplementedError

    def listed(self) -> list[str]:
        return sorted(self.models) if self.models is not None else list(self.listed_by_default)

    def serves(self, model: str) -> bool:
        return self.models is None or model in self.models

    async def record(self, request: Request, *, listing: bool = False) -> tuple[RecordedRequest, int]:
        body = await request.body()
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        raw_path = request.scope.get("raw_path", request.url.path.encode()).decode("latin-1")
        recorded = RecordedRequest(
            method=request.method,
            path=request.url.path,
            raw_path=raw_path,
            query=request.url.query,
            headers={k.lower(): v for k, v in request.headers.items()},
            json=parsed,
        )
        with self._lock:
            (self._listings if listing else self._requests).append(recorded)
            return recorded, self._epoch

    def next_reply(self, model: str | None = None) -> Reply:
        with self._lock:
            if model is not None and model in self.by_model:
                return self.by_model[model]
            return self._queue.popleft() if self._queue else self.default

    def count_disconnect(self, epoch: int) -> None:
        with self._lock:
            if epoch == self._epoch:
                self._disconnects += 1
                self._lock.notify_all()

    @staticmethod
    def usage_of(reply: Reply, sent: int) -> tuple[int, int] | None:
        if reply.usage == "auto":
            return PROMPT_TOKENS, sent
        return reply.usage


def json_error(status: int, body: Any, *, retry_after: float | None = None) -> Response:
    headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else None
    return JSONResponse(body, status_code=status, headers=headers)


class FrameStream(Response):
    """An ASGI response sending ``frames`` with ``reply``'s timing and fault; counts a client disconnect.

    A ``Response`` only so endpoints can return it; it writes its own messages (no content-length).
    """

    def __init__(
        self,
        fake: FakeUpstream,
        epoch: int,
        reply: Reply,
        frames: Frames,
        *,
        media_type: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.status_code = 200
        self.background = None
        self.fake = fake
        self.epoch = epoch
        self.reply = reply
        self.frames = frames
        self.start_headers = [(b"content-type", media_type.encode())] + [
            (k.lower().encode(), v.encode()) for k, v in (headers or {}).items()
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gone = asyncio.Event()
        self.finishing = False

        async def watch() -> None:
            # After the last body message uvicorn also answers receive() with a disconnect:
            # only one that comes while the stream is still being sent is the client going away.
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    if not self.finishing:
                        gone.set()
                    return

        watcher = asyncio.create_task(watch())
        try:
            await self._run(send, gone)
        finally:
            self.finishing = True
            watcher.cancel()
            if gone.is_set():
                self.fake.count_disconnect(self.epoch)

    async def _run(self, send: Send, gone: asyncio.Event) -> None:
        reply, frames, fault = self.reply, self.frames, self.reply.fault
        kind = fault.kind if fault else None
        if kind == "hang" and fault is not None and fault.after == 0:
            await _pause(gone, HANG_LIMIT)  # not even a status line
            return

        await send({"type": "http.response.start", "status": 200, "headers": self.start_headers})

        async def write(frame: bytes) -> None:
            cut = _cut(frame, kind)
            if cut:
                await send({"type": "http.response.body", "body": frame[:cut], "more_body": True})
                await asyncio.sleep(SPLIT_PAUSE)
                frame = frame[cut:]
            await send({"type": "http.response.body", "body": frame, "more_body": True})

        for frame in frames.preamble:
            await write(frame)
        stop_at = fault.after if fault and kind in ("error_after", "drop_after", "hang") else None
        for i, frame in enumerate(frames.tokens):
            if stop_at is not None and i == stop_at:
                break
            if await _pause(gone, reply.first_wait if i == 0 else reply.delay):
                return
            await write(frame)

        if kind == "hang":
            await _pause(gone, HANG_LIMIT)
            return
        if kind == "drop_after":
            if await _pause(gone, reply.delay):
                return
            raise DroppedConnection(f"{self.fake.name} fake: dropping the connection as scripted")
        if not frames.tokens and await _pause(gone, reply.first_wait):
            return
        for frame in frames.error if kind == "error_after" else frames.trailer:
            await write(frame)
        self.finishing = True
        await send({"type": "http.response.body", "body": b"", "more_body": False})


class WholeReply(Response):
    """A non-streamed reply, sent as a server that generates the whole reply before answering sends it (Ollama,
    Workers AI, TGI's ``/generate``): nothing at all, not even the status line, until the generation ``reply``
    scripts is over (its first delay, then one delay per further token), then ``answer``. The reply's fault acts
    as it would on a stream, as far as a whole reply can show it: ``slow_first`` delays everything; ``hang`` never
    answers; ``error_after(n)`` ends the generation after ``n`` tokens with ``failure`` (the provider's error
    status: there is no stream to put the error in); ``drop_after(n)`` cuts the connection after ``n`` tokens'
    time, before the body. A client that leaves meanwhile is counted as a disconnect, as a stream's is.
    """

    def __init__(self, fake: FakeUpstream, epoch: int, reply: Reply, answer: Response, failure: Response) -> None:
        self.status_code = answer.status_code
        self.background = None
        self.fake = fake
        self.epoch = epoch
        self.reply = reply
        self.answer = answer
        self.failure = failure

    def generation_time(self) -> float:
        """Seconds the scripted generation takes, up to the fault that ends it."""
        reply, fault = self.reply, self.reply.fault
        tokens = len(reply.reasoning) + len(reply.tokens) + (1 if reply.tool_calls else 0)
        if fault is not None and fault.kind in ("error_after", "drop_after", "hang"):
            tokens = min(tokens, fault.after)
        return reply.first_wait + reply.delay * max(tokens - 1, 0) if tokens else reply.first_wait

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gone = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":  # the request body is read: only this is left
                pass
            gone.set()

        watcher = asyncio.create_task(watch())
        try:
            kind = self.reply.fault.kind if self.reply.fault else None
            if await _pause(gone, HANG_LIMIT if kind == "hang" else self.generation_time()):
                self.fake.count_disconnect(self.epoch)
                return
            if kind == "hang":
                return
        finally:
            watcher.cancel()
        if kind == "drop_after":
            headers = [(k, v) for k, v in self.answer.raw_headers if k != b"content-length"]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            raise DroppedConnection(f"{self.fake.name} fake: dropping the connection as scripted")
        await (self.failure if kind == "error_after" else self.answer)(scope, receive, send)


async def _pause(gone: asyncio.Event, seconds: float) -> bool:
    """Wait ``seconds`` unless the client goes away first; True if it went away."""
    if seconds <= 0:
        await asyncio.sleep(0)
        return gone.is_set()
    try:
        await asyncio.wait_for(gone.wait(), seconds)
    except TimeoutError:
        return False
    return True


def _cut(frame: bytes, kind: str | None) -> int:
    """Where to split ``frame`` for a split fault (0 = send it whole)."""
    if kind == "split_line" and len(frame) > 1:
        return len(frame) // 2
    if kind == "split_utf8":
        for i, byte in enumerate(frame):
            if byte >= 0xC0:  # the lead byte of a multi-byte character
                return i + 1
    return 0
