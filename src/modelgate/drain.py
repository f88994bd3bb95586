"""Graceful shutdown with a limit: after SIGTERM, running replies get ``graceful_timeout`` seconds, then
each ends with an explicit error saying the server is shutting down.

uvicorn alone waits for every response without limit (an upstream that never ends keeps the process
alive until the orchestrator's SIGKILL cuts every client without an error part), or, with its
``timeout_graceful_shutdown``, cancels them, which cuts the clients just the same. Here the server
(``server.GuardedProtocol.shutdown``) tells the app's ``Drain`` the moment the shutdown starts — it
finds it in the lifespan state under ``DRAIN_STATE`` — and once the limit passes the drain cancels every
wait on an upstream that was registered with it: a relayed reply's next batch (``bounded``) and a
request still waiting for its first token (``routes/opening.py``). They raise ``ShuttingDown``, which
every encoder turns into its protocol's error part (data stream ``3:``, UI ``error``, text
``[error: …]``, OpenAI's error event) and the routes into a 503. uvicorn has already stopped accepting
connections, so new requests are refused meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from modelgate.errors import ModelgateError
from modelgate.push_lane import LANE

log = logging.getLogger("modelgate")

#: Key of the app's ``Drain`` in the ASGI lifespan state (where the server looks for it).
DRAIN_STATE = "modelgate.drain"

T = TypeVar("T")


class ShuttingDown(ModelgateError):
    status = 503

    def __init__(self) -> None:
        super().__init__("The server is shutting down: the reply was ended at the graceful-shutdown limit")

    @property
    def headers(self) -> dict[str, str]:
        return {"Connection": "close", "Retry-After": "1"}


class Drain:
    """The shutdown limit of one app: which waits to cut, and when."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        #: The shutdown started: replies are counting down.
        self.draining = False
        #: The limit passed: every registered wait was cut, later ones fail at once.
        self.expired = False
        #: Tasks waiting on an upstream now.
        self._waiting: set[asyncio.Task[Any]] = set()
        #: Tasks the drain cancelled → their ``cancelling()`` count before (to tell our cancel from others').
        self._cut: dict[asyncio.Task[Any], int] = {}
        self._timer: asyncio.TimerHandle | None = None

    def begin(self) -> None:
        """The server is shutting down (idempotent; called on the event loop)."""
        if self.draining:
            return
        self.draining = True
        log.info("shutting down: running replies have %g seconds to finish", self.timeout)
        self._timer = asyncio.get_running_loop().call_later(self.timeout, self._expire)

    def _expire(self) -> None:
        self.expired = True
        if self._waiting:
            log.warning("graceful-shutdown limit reached: ending %d running replies", len(self._waiting))
        for task in self._waiting:
            self._cut[task] = task.cancelling()
            task.cancel()

    @contextmanager
    def cuts(self, task: asyncio.Task[Any]) -> Iterator[None]:
        """While inside, ``task`` is cancelled when the limit passes (ask ``was_cut`` on CancelledError)."""
        if self.expired:
            raise ShuttingDown()
        self._waiting.add(task)
        try:
            yield
        finally:
            self._waiting.discard(task)

    def was_cut(self, task: asyncio.Task[Any]) -> bool:
        """After a CancelledError of ``task``: True when the drain caused it, and only the drain.

        Withdraws our cancel request, so a real cancellation by someone else still stands.
        """
        before = self._cut.pop(task, None)
        return before is not None and task.uncancel() <= before

    async def bounded(self, events: AsyncIterator[T]) -> AsyncGenerator[T, None]:
        """``events``, ended with ``ShuttingDown`` once the limit passed; closes ``events`` at the end."""
        waiting = self._waiting
        task = asyncio.current_task()  # the response's own task iterates the reply to its end
        assert task is not None
        if (lane := LANE.get()) is not None:
            lane.drain = self  # a pushed batch is held back once the limit passed, and the pull path ends the reply
        try:
            while True:  # per batch: a set add and discard, no context manager (this runs once per upstream read)
                if self.expired:
                    raise ShuttingDown()
                waiting.add(task)
                try:
                    item = await anext(events)
                except StopAsyncIteration:
                    return
                except asyncio.CancelledError:
                    if self.was_cut(task):
                        raise ShuttingDown() from None
                    raise
                finally:
                    waiting.discard(task)
                yield item
        finally:
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                await aclose()
