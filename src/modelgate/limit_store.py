"""Where the rate limits count: what a request takes (a ``Plan``: its ``Window`` and ``Slot``s, held under a
``Lease``), what every store does with it (``LimitBackend``), and the in-process store (``MemoryBackend``: one
process's counters). The Redis one, shared by every process pointing at it, is ``limit_store_redis.py``;
``limits.py`` turns a key's and a model's limits into a ``Plan`` and admits requests through either store.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

#: Retry-After for a full concurrency cap: a stream may end any moment, so "soon".
CONCURRENCY_RETRY_AFTER = 1.0


@dataclass(frozen=True, slots=True)
class Window:
    """At most ``limit`` admissions in any ``seconds``."""

    key: str
    limit: int
    seconds: float
    message: str


@dataclass(frozen=True, slots=True)
class Slot:
    """At most ``limit`` requests holding this counter at once."""

    key: str
    limit: int
    message: str


@dataclass(frozen=True, slots=True)
class Plan:
    window: Window | None
    slots: tuple[Slot, ...]

    @property
    def empty(self) -> bool:
        return self.window is None and not self.slots


@dataclass(frozen=True, slots=True)
class Denied:
    limit: Window | Slot
    retry_after: float


@dataclass(frozen=True, slots=True)
class Lease:
    """Slots held under one id. Releasing a ``Lease`` with some of them gives back only those."""

    id: str
    slots: tuple[str, ...]


class LimitBackend(Protocol):
    #: What the store raises when it cannot be reached (the limiter fails closed on them).
    errors: tuple[type[Exception], ...]

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def problem(self) -> str | None:
        """What keeps the store from counting (``/ready`` reports it), or None."""

    async def acquire(self, plan: Plan, lease_id: str) -> Denied | None:
        """Atomically: if every limit of ``plan`` has room, count the request and take its slots."""
        ...

    async def release(self, lease: Lease) -> None: ...

    async def uncount(self, window: Window, lease_id: str) -> None:
        """Take ``lease_id``'s admission out of ``window``: the request it counted was refused after all."""
        ...


# --- in-process -------------------------------------------------------------------------------------


class MemoryBackend:
    """One process's counters. ``acquire`` never awaits, so it is atomic under asyncio."""

    errors: tuple[type[Exception], ...] = (OSError,)

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._hits: dict[str, deque[tuple[float, str]]] = {}  #: window key → (admitted at, lease id), oldest first
        self._holders: dict[str, set[str]] = {}

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def problem(self) -> str | None:
        return None

    async def acquire(self, plan: Plan, lease_id: str) -> Denied | None:
        now = self._clock()
        window = plan.window
        hits: deque[tuple[float, str]] | None = None
        if window is not None:
            hits = self._hits.setdefault(window.key, deque())
            while hits and hits[0][0] <= now - window.seconds:
                hits.popleft()
            if len(hits) >= window.limit:
                return Denied(window, hits[0][0] + window.seconds - now)
        for slot in plan.slots:
            if len(self._holders.get(slot.key, ())) >= slot.limit:
                return Denied(slot, CONCURRENCY_RETRY_AFTER)
        if hits is not None:
            hits.append((now, lease_id))
        for slot in plan.slots:
            self._holders.setdefault(slot.key, set()).add(lease_id)
        return None

    async def release(self, lease: Lease) -> None:
        for key in lease.slots:
            holders = self._holders.get(key)
            if holders is not None:
                holders.discard(lease.id)
                if not holders:
                    del self._holders[key]

    async def uncount(self, window: Window, lease_id: str) -> None:
        hits = self._hits.get(window.key)
        if hits is not None:
            for hit in [hit for hit in hits if hit[1] == lease_id]:
                hits.remove(hit)

    def holding(self, key: str) -> int:
        return len(self._holders.get(key, ()))
