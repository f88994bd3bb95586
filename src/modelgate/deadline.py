"""``Deadline``: one timer guarding a long sequence of waits, moved on by an attribute store.

A stream waits thousands of times (one upstream read, one client write per chunk), each bounded by a
timeout. ``asyncio.timeout`` per wait costs a context manager, a ``TimerHandle`` and a heap entry every
time; this costs a clock read. The one timer, when it fires before the deadline as it now stands,
re-arms itself for it, so it runs about once per timeout period, not once per wait.

It cancels the waiting task only during a wait (``begin`` .. ``end``), the way ``asyncio.timeout``
does (the task's ``cancelling()`` count is restored), so the time spent between two waits (the
consumer's work) never counts against the deadline::

    deadline.begin_in(60)  # or begin(when)
    try:
        chunk = await read()
    except asyncio.CancelledError:
        if deadline.fired():
            raise MyTimeout from None
        raise
    finally:
        deadline.end()
"""

from __future__ import annotations

import asyncio
from typing import Any


class Deadline:
    __slots__ = ("_armed_at", "_cancelling", "_handle", "_loop", "_task", "_victim", "expired", "when")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._handle: asyncio.TimerHandle | None = None
        self._armed_at = 0.0
        self._task: asyncio.Task[Any] | None = None
        self._victim: asyncio.Task[Any] | None = None
        self._cancelling = 0
        #: The current deadline (loop time).
        self.when = 0.0
        #: True once the deadline passed during a wait (the waiting task was cancelled).
        self.expired = False

    def begin(self, when: float) -> None:
        """A wait starts in the current task, allowed to last until ``when`` (loop time)."""
        self.when = when
        self._task = asyncio.current_task()
        if self._handle is None or when < self._armed_at:
            self._arm(when)

    def begin_in(self, seconds: float) -> None:
        """A wait starts, allowed to last ``seconds`` from now."""
        self.begin(self._loop.time() + seconds)

    def extend(self, when: float) -> None:
        """Move the running wait's deadline on to ``when`` (later than now's) from outside the waiting task."""
        self.when = when

    def end(self) -> None:
        """The wait is over (whatever its outcome)."""
        self._task = None

    def fired(self) -> bool:
        """After a ``CancelledError`` in a wait: True when the deadline caused it, not a real cancellation.

        Withdraws our own cancel request; when someone else cancelled the task too, theirs stands.
        """
        victim = self._victim
        return self.expired and victim is not None and victim.uncancel() <= self._cancelling

    def stop(self) -> None:
        """No more waits: drop the timer."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._task = None

    def _arm(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed_at = when
        self._handle = self._loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._handle = None
        task = self._task
        if task is None or self.expired:
            return  # no wait in progress: the next begin() arms the timer again
        if self._loop.time() < self.when:
            self._arm(self.when)  # waits moved the deadline on since the timer was set
            return
        self.expired = True
        self._victim = task
        self._cancelling = task.cancelling()
        task.cancel()
