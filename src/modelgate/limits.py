"""Admission: auth, policy and limits for one chat request, in ``admit``.

Limits (over one → ``RateLimited``, 429 with ``Retry-After``):

- per key: ``requests_per_minute`` (a sliding window: at most N admitted requests in any 60 s;
  ``Retry-After`` = seconds until the oldest leaves the window) and ``concurrent_streams``;
- per provider (``[providers.X] max_concurrency``) and per model (``max_concurrency``): caps that
  protect the upstream. Concurrency is held for the whole request — the stream included — and
  released when it ends, fails or the client goes away (``Retry-After: 1``).

Counters live behind ``LimitBackend``: ``MemoryBackend`` (default; one process) or ``RedisBackend``
(``MODELGATE_REDIS_URL``), where one Lua script checks and takes every limit of a request atomically
using the Redis server's clock, so limits hold across workers and instances. A concurrency slot is a
lease with a TTL that its holder renews while the stream runs: a crashed instance's slots free
themselves after ``lease_ttl`` instead of leaking forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Protocol

import redis.asyncio
from redis.exceptions import RedisError
from starlette.requests import Request

from modelgate.auth import Principal, may_call, on_request_end, request_principal
from modelgate.errors import Forbidden, ModelgateError, RateLimited

if TYPE_CHECKING:
    from modelgate.app import GatewayState
    from modelgate.catalogue import Catalogue, CatalogueModel
    from modelgate.settings import Settings

log = logging.getLogger("modelgate.limits")

WINDOW_SECONDS = 60.0
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
    id: str
    slots: tuple[str, ...]


class LimitBackend(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def ping(self) -> bool: ...

    async def acquire(self, plan: Plan, lease_id: str) -> Denied | None:
        """Atomically: if every limit of ``plan`` has room, count the request and take its slots."""
        ...

    async def release(self, lease: Lease) -> None: ...


# --- in-process -------------------------------------------------------------------------------------


class MemoryBackend:
    """One process's counters. ``acquire`` never awaits, so it is atomic under asyncio."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._hits: dict[str, deque[float]] = {}
        self._holders: dict[str, set[str]] = {}

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def ping(self) -> bool:
        return True

    async def acquire(self, plan: Plan, lease_id: str) -> Denied | None:
        now = self._clock()
        window = plan.window
        hits: deque[float] | None = None
        if window is not None:
            hits = self._hits.setdefault(window.key, deque())
            while hits and hits[0] <= now - window.seconds:
                hits.popleft()
            if len(hits) >= window.limit:
                return Denied(window, hits[0] + window.seconds - now)
        for slot in plan.slots:
            if len(self._holders.get(slot.key, ())) >= slot.limit:
                return Denied(slot, CONCURRENCY_RETRY_AFTER)
        if hits is not None:
            hits.append(now)
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

    def holding(self, key: str) -> int:
        return len(self._holders.get(key, ()))


# --- Redis ------------------------------------------------------------------------------------------

# KEYS[1] = window sorted set (member = lease id, score = admitted-at ms); KEYS[2..] = slot sorted sets
# (member = lease id, score = lease expiry ms). ARGV = lease id, lease ttl ms, window limit (0 = none),
# window ms, then one limit per slot. Returns {1} when admitted, else {0, which (0 = window, i = slot i),
# retry-after ms}. The server's TIME keeps instances with skewed clocks agreeing.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease, ttl = ARGV[1], tonumber(ARGV[2])
local wlimit, wms = tonumber(ARGV[3]), tonumber(ARGV[4])
if wlimit > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - wms)
  if redis.call('ZCARD', KEYS[1]) >= wlimit then
    local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    return {0, 0, tonumber(oldest[2]) + wms - now}
  end
end
for i = 2, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
  if redis.call('ZCARD', KEYS[i]) >= tonumber(ARGV[i + 3]) then
    return {0, i - 1, 0}
  end
end
if wlimit > 0 then
  redis.call('ZADD', KEYS[1], now, lease)
  redis.call('PEXPIRE', KEYS[1], wms)
end
for i = 2, #KEYS do
  redis.call('ZADD', KEYS[i], now + ttl, lease)
  redis.call('PEXPIRE', KEYS[i], ttl)
end
return {1}
"""

# Push a held lease's expiry forward (XX: a lease that already expired is not resurrected past a cap).
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], 'XX', now + ttl, ARGV[1])
  redis.call('PEXPIRE', KEYS[i], ttl)
end
return 1
"""


class RedisBackend:
    """Counters shared by every process that points at the same Redis."""

    def __init__(self, url: str, *, lease_ttl: float = 30.0, prefix: str = "modelgate:") -> None:
        self._url = url
        self.lease_ttl = lease_ttl
        self.prefix = prefix
        self._client: redis.asyncio.Redis | None = None
        self._held: dict[str, Lease] = {}
        self._renewer: asyncio.Task[None] | None = None

    @property
    def client(self) -> redis.asyncio.Redis:
        if self._client is None:
            raise RuntimeError("RedisBackend used before start()")
        return self._client

    async def start(self) -> None:
        self._client = redis.asyncio.Redis.from_url(self._url, socket_timeout=5.0, socket_connect_timeout=5.0)
        self._acquire = self._client.register_script(_ACQUIRE)
        self._renew = self._client.register_script(_RENEW)
        self._renewer = asyncio.create_task(self._renew_forever(), name="modelgate-lease-renewer")

    async def stop(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
            self._renewer = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except (RedisError, OSError):
            return False

    async def acquire(self, plan: Plan, lease_id: str) -> Denied | None:
        window = plan.window
        keys = [self.prefix + (window.key if window else "unused")] + [self.prefix + s.key for s in plan.slots]
        args: list[str | int] = [
            lease_id,
            math.ceil(self.lease_ttl * 1000),
            window.limit if window else 0,
            math.ceil(window.seconds * 1000) if window else 0,
            *(slot.limit for slot in plan.slots),
        ]
        result = await self._acquire(keys=keys, args=args)
        if int(result[0]) == 1:
            if plan.slots:
                self._held[lease_id] = Lease(lease_id, tuple(s.key for s in plan.slots))
            return None
        which, retry_ms = int(result[1]), int(result[2])
        if which == 0:
            assert window is not None
            return Denied(window, retry_ms / 1000)
        return Denied(plan.slots[which - 1], CONCURRENCY_RETRY_AFTER)

    async def release(self, lease: Lease) -> None:
        self._held.pop(lease.id, None)
        if lease.slots:
            pipe = self.client.pipeline(transaction=False)
            for key in lease.slots:
                pipe.zrem(self.prefix + key, lease.id)
            await pipe.execute()

    def abandon(self) -> None:
        """Forget held leases without releasing them, as a crashed process would (tests use this)."""
        self._held.clear()

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self.lease_ttl / 3)
            for lease in list(self._held.values()):
                try:
                    await self._renew(
                        keys=[self.prefix + key for key in lease.slots],
                        args=[lease.id, math.ceil(self.lease_ttl * 1000)],
                    )
                except (RedisError, OSError) as exc:
                    log.warning("could not renew a concurrency lease in Redis: %s", type(exc).__name__)


# --- the limiter --------------------------------------------------------------------------------------


class Limiter:
    """Turns the configured limits for (key, model) into a ``Plan`` and runs it on a backend."""

    def __init__(self, backend: LimitBackend) -> None:
        self.backend = backend

    @classmethod
    def from_settings(cls, settings: Settings) -> Limiter:
        if settings.redis_url:
            return cls(RedisBackend(settings.redis_url))
        return cls(MemoryBackend())

    async def start(self) -> None:
        await self.backend.start()

    async def stop(self) -> None:
        await self.backend.stop()

    async def ping(self) -> bool:
        """Whether the counter store answers (``/ready`` reports it)."""
        return await self.backend.ping()

    def plan(self, principal: Principal, model: CatalogueModel, catalogue: Catalogue) -> Plan:
        window: Window | None = None
        slots: list[Slot] = []
        key = principal.key
        if key is not None:
            if key.requests_per_minute is not None:
                window = Window(
                    f"rpm:{key.key_id}",
                    key.requests_per_minute,
                    WINDOW_SECONDS,
                    f"Rate limit exceeded: key '{key.name}' allows {key.requests_per_minute} requests per minute",
                )
            if key.concurrent_streams is not None:
                slots.append(
                    Slot(
                        f"streams:key:{key.key_id}",
                        key.concurrent_streams,
                        f"Too many concurrent streams: key '{key.name}' allows {key.concurrent_streams} at a time",
                    )
                )
        provider_cap = catalogue.provider_entry(model.provider).max_concurrency
        if provider_cap is not None:
            slots.append(
                Slot(
                    f"streams:provider:{model.provider}",
                    provider_cap,
                    f"Provider '{model.provider}' is at its concurrency limit ({provider_cap} streams)",
                )
            )
        if model.max_concurrency is not None:
            slots.append(
                Slot(
                    f"streams:model:{model.id}",
                    model.max_concurrency,
                    f"Model '{model.id}' is at its concurrency limit ({model.max_concurrency} streams)",
                )
            )
        return Plan(window, tuple(slots))

    async def acquire(self, principal: Principal, model: CatalogueModel, catalogue: Catalogue) -> Lease | None:
        """Take every limit for this request, or raise ``RateLimited``. ``None``: nothing to release."""
        plan = self.plan(principal, model, catalogue)
        if plan.empty:
            return None
        lease_id = uuid.uuid4().hex
        try:
            denied = await self.backend.acquire(plan, lease_id)
        except (RedisError, OSError) as exc:
            # Fail closed: admitting unmetered would break the limits operators rely on.
            log.error("rate-limit store unavailable: %s", type(exc).__name__)
            raise ModelgateError("Rate-limit store unavailable; try again shortly", status=503) from exc
        if denied is not None:
            retry_after = max(1, math.ceil(denied.retry_after))
            raise RateLimited(denied.limit.message, retry_after=retry_after, data={"retryAfter": retry_after})
        return Lease(lease_id, tuple(slot.key for slot in plan.slots)) if plan.slots else None

    async def release(self, lease: Lease) -> None:
        try:
            await self.backend.release(lease)
        except (RedisError, OSError) as exc:
            # The lease TTL frees the slot anyway.
            log.warning("could not release a concurrency lease: %s", type(exc).__name__)


async def admit(state: GatewayState, request: Request, model: CatalogueModel) -> Principal:
    """Auth + policy + limits for one request to ``model``; call it before opening the stream.

    Raises ``Unauthorized`` (401), ``Forbidden`` (403) or ``RateLimited`` (429). Concurrency taken
    here is held until the request is over — its stream included — and then released.
    """
    principal = request_principal(request)
    if not may_call(principal, model.id):
        raise Forbidden(f"This API key may not use the model '{model.id}'", data={"model": model.id})
    lease = await state.limiter.acquire(principal, model, state.catalogue)
    if lease is not None:
        on_request_end(request, partial(state.limiter.release, lease))
    return principal
