"""``RelayResponse``: a streamed reply sent with the fewest hops per chunk.

Starlette's ``StreamingResponse`` sends every chunk through each ``send`` wrapper between the app and the
server (``ExceptionMiddleware``'s sender, ``CORSMiddleware.send``, ``ServerErrorMiddleware._send``, the
observer's two), and on servers below ASGI 2.4 (uvicorn is 2.3) runs the body and a disconnect listener in
an anyio task group: a cancel scope, two tasks and their bookkeeping per response.

Those wrappers only look at ``http.response.start`` (to add headers, or note that a response started), so
here the start goes through them as before and the body chunks go straight to the observer's send
(``observer.DIRECT_SEND`` in the scope: the send guard, the metrics and the access line stay on every
response). The body is iterated in the request's own task; one small task listens for the client leaving
and then cancels it, as the task group did, so a client that goes away still closes the upstream at once.

Under uvicorn's httptools protocol (ours: ``server.GuardedProtocol``) a chunk is framed and written to the
connection's transport directly (``ChunkWriter``) while the transport takes it without waiting: that is all
uvicorn's ``send`` would do then, minus an ASGI message, two coroutines and the send guard's timer per chunk.
When the client's socket is full (the transport paused writing) or gone, the chunk takes the ``send`` path,
so the send guard still times a client that stopped reading.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from modelgate.observer import DIRECT_SEND, PUSH_LANE, SERVER_SEND
from modelgate.push_lane import LANE, PUSH_SUPPORTED, Lane, LoopLag


class RelayResponse(Response):
    def __init__(self, body: AsyncIterator[bytes], *, media_type: str, headers: Mapping[str, str]) -> None:
        self.body_iterator = body
        self.status_code = 200
        self.media_type = media_type
        self.background = None
        self.init_headers(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        direct: Send = scope.get(DIRECT_SEND, send)
        write = ChunkWriter.of(scope.get(SERVER_SEND))
        task = asyncio.current_task()
        assert task is not None
        state = ClientWatch(task)
        listener = asyncio.create_task(state.listen(receive))
        # The layers beneath register their per-batch parts as they start (see ``push_lane``).
        lag: LoopLag | None = scope.get(PUSH_LANE)
        lane = Lane(write, lag) if write is not None and lag is not None and PUSH_SUPPORTED else None
        token = LANE.set(lane)
        if lane is not None:
            lane.lag.enter()
        try:
            async for chunk in self.body_iterator:
                if chunk and (write is None or not write(chunk)):
                    await direct({"type": "http.response.body", "body": chunk, "more_body": True})
            await direct({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            # The client left (the listener cancelled us): the response is over, as in Starlette's. A
            # cancellation from anywhere else (server shutdown) stands.
            if not state.left or task.uncancel() > 0:
                raise
        finally:
            LANE.reset(token)
            if lane is not None:
                lane.lag.leave()
            state.done = True
            listener.cancel()
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()  # closes the reply and so the upstream, now rather than at garbage collection


class ChunkWriter:
    """Writes the body chunks of a started chunked response straight to uvicorn's transport."""

    __slots__ = ("cycle",)

    def __init__(self, cycle: RequestResponseCycle) -> None:
        self.cycle = cycle

    @classmethod
    def of(cls, send: Send | None) -> ChunkWriter | None:
        """The writer for the response ``send`` (the server's own) has just started, or None when that is not
        uvicorn's httptools cycle or the response is not chunked (a HEAD, a declared length)."""
        cycle = getattr(send, "__self__", None)
        if not isinstance(cycle, RequestResponseCycle):
            return None
        if not cycle.response_started or cycle.chunked_encoding is not True or cycle.scope["method"] == "HEAD":
            return None
        return cls(cycle)

    def writable(self) -> bool:
        """A chunk written now goes to the socket (or its buffer) without waiting for the client."""
        cycle = self.cycle
        return not (cycle.flow.write_paused or cycle.disconnected or cycle.response_complete)

    def __call__(self, chunk: bytes) -> bool:
        """Write one non-empty chunk; False (nothing written) when it must wait for the client or the
        connection is gone: then ``send`` decides (it waits under the send guard, or drops it)."""
        if not self.writable():
            return False
        self.cycle.transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
        return True


class ClientWatch:
    """Cancels ``task`` when the client leaves (``http.disconnect``, or ``receive`` failing) before ``done``; ``left``
    then says the cancellation was this watch's. For a task that waits on an upstream while no one reads the client:
    a response streaming its reply, or a route waiting for the reply's first token (``routes/opening.py``)."""

    __slots__ = ("done", "left", "task")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.done = False
        self.left = False

    async def listen(self, receive: Receive) -> None:
        try:
            while (await receive())["type"] != "http.disconnect":
                pass
        except Exception:
            pass  # a failing receive() counts as the client gone
        if not self.done:
            self.left = True
            self.task.cancel()
