"""Admission: auth, policy and limits for one chat request, in ``admit``.

Limits (over one → ``RateLimited``, 429 with ``Retry-After``):

- per key: ``requests_per_minute`` (a sliding window: at most N admitted requests in any 60 s;
  ``Retry-After`` = seconds until the oldest leaves the window) and ``concurrent_streams``;
- per provider (``[providers.X] max_concurrency``) and per model (``max_concurrency``): caps that
  protect the upstream. Concurrency is held for the whole request — the stream included — and
  released when it ends, fails or the client goes away (``Retry-After: 1``).

A fallback is admitted like a direct call to it (``Admission.admit_fallback``): the key's policy
first, then the fallback's own provider and model slots, taken before it is tried, while the failed
model's are given back. The key's own limits (its window and stream slot) are one per request,
whichever model answers.

Counters live behind ``LimitBackend`` (``limit_store.py``): ``MemoryBackend`` (default; one process) or
``RedisBackend`` (``MODELGATE_REDIS_URL``), where one Lua script checks and takes every limit of a request atomically
using the Redis server's clock, so limits hold across workers and instances. A concurrency slot is a
lease with a TTL that its holder renews while the stream runs: a crashed instance's slots free
themselves after ``lease_ttl`` instead of leaking forever.

A key's budget (``budgets.py``) is the other thing an ``Admission`` holds: reserved when the request's
``ChatRequest`` is known (``Admission.reserve_budget``, first thing in ``gateway.open_stream``) and
settled in ``Admission.release``; its counters live beside these (``Limiter.budgets``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import uuid
from collections.abc import Callable, Container, Sequence
from typing import TYPE_CHECKING

from starlette.requests import Request

from modelgate import budgets
from modelgate.auth import Principal, may_call, on_request_end, request_principal
from modelgate.budget_rules import Budget
from modelgate.budget_store import MemoryCounters
from modelgate.budget_store_redis import RedisCounters
from modelgate.budgets import Budgets, Reservation
from modelgate.errors import Forbidden, ModelgateError, RateLimited
from modelgate.limit_store import (
    CONCURRENCY_RETRY_AFTER,
    Denied,
    Lease,
    LimitBackend,
    MemoryBackend,
    Plan,
    Slot,
    Window,
)
from modelgate.observer import current_observation

# redis is imported by ``RedisBackend`` only: with it comes the OpenTelemetry SDK its observability module
# loads (~0.1 s of every start-up), which a process counting in memory never needs (issue 13 item 5).
if TYPE_CHECKING:
    import redis.asyncio

    from modelgate.app import GatewayState
    from modelgate.catalogue import Catalogue, CatalogueModel
    from modelgate.chat import ChatRequest
    from modelgate.observer import Observation
    from modelgate.settings import Settings

log = logging.getLogger("modelgate.limits")

WINDOW_SECONDS = 60.0
#: How long ``/ready``'s probe key lives in Redis (one a prefix, rewritten by every probe).
READY_PROBE_TTL_MS = 60_000


# --- Redis ------------------------------------------------------------------------------------------

# Every script checks the store's *epoch* first: a token in KEYS[1] that the first process to find it
# missing creates. A Redis restarted without persistence has lost it — and every lease with it — so a
# process whose remembered epoch differs re-takes the leases it still holds (``_RESYNC``) before it
# admits anything more; running streams are then counted again instead of silently freeing their slots.
# Other processes re-take theirs within ``EPOCH_CHECK_SECONDS``; until then (KEYS[2], "rebuilding",
# set with that expiry by whoever noticed the loss) no concurrency slot is handed out at all.
#
# KEYS[1] = epoch; KEYS[2] = rebuilding flag; KEYS[3] = window sorted set (member = lease id, score =
# admitted-at ms); KEYS[4..] = slot sorted sets (member = lease id, score = lease expiry ms). ARGV = the
# epoch this process knows ('' = none), lease id, lease ttl ms, window limit (0 = none), window ms, then
# one limit per slot. Returns {1} when admitted, {-1} when the epoch differs (resync, then ask again),
# else {0, which (0 = window, i = slot i, -1 = rebuilding), retry-after ms}. The server's TIME keeps
# instances with skewed clocks agreeing. A lease already counted (this script sent again after its reply
# was lost, ``RedisBackend.start``) is not counted against itself: it is admitted again, and counted once.
_ACQUIRE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return {-1}
end
if #KEYS > 3 then
  local rebuilding = redis.call('PTTL', KEYS[2])
  if rebuilding > 0 then
    return {0, -1, rebuilding}
  end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease, ttl = ARGV[2], tonumber(ARGV[3])
local wlimit, wms = tonumber(ARGV[4]), tonumber(ARGV[5])
if wlimit > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - wms)
  if not redis.call('ZSCORE', KEYS[3], lease) and redis.call('ZCARD', KEYS[3]) >= wlimit then
    local oldest = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
    return {0, 0, tonumber(oldest[2]) + wms - now}
  end
end
for i = 4, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
  local others = redis.call('ZCARD', KEYS[i])
  if redis.call('ZSCORE', KEYS[i], lease) then
    others = others - 1
  end
  if others >= tonumber(ARGV[i + 2]) then
    return {0, i - 3, 0}
  end
end
if wlimit > 0 then
  redis.call('ZADD', KEYS[3], now, lease)
  redis.call('PEXPIRE', KEYS[3], wms)
end
for i = 4, #KEYS do
  redis.call('ZADD', KEYS[i], now + ttl, lease)
  redis.call('PEXPIRE', KEYS[i], ttl)
end
return {1}
"""

# Push a held lease's expiry forward (XX: a lease released meanwhile is not resurrected past a cap).
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

# Re-take this process's held leases, whatever the counts (they are streams that really run: counting
# them over a cap is the conservative error). KEYS[1] = epoch, KEYS[2] = rebuilding flag, KEYS[3..] =
# slot sorted sets; ARGV = a fresh epoch token (set only if none exists), rebuilding ms (0: this process
# knew no epoch before, so it cannot tell a restart from a first start), lease ttl ms, then the lease id
# held in each slot set. Returns the epoch now in force.
_RESYNC = """
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[1], epoch)
  if tonumber(ARGV[2]) > 0 then
    redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
  end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
for i = 3, #KEYS do
  redis.call('ZADD', KEYS[i], now + ttl, ARGV[i + 1])
  redis.call('PEXPIRE', KEYS[i], ttl)
end
return epoch
"""

#: How often a process holding leases checks the store's epoch: the longest a Redis restart leaves
#: another process's running streams uncounted (this process's own are re-taken before it admits).
EPOCH_CHECK_SECONDS = 1.0
#: After a detected loss, no slot is handed out for this long: every holder has re-taken its leases.
REBUILD_SECONDS = 2 * EPOCH_CHECK_SECONDS
#: What a request hears while the slots are being counted again.
REBUILDING = Slot(
    "rebuilding",
    0,
    "Concurrency limits are being counted again after the rate-limit store restarted; try again shortly",
)


class RedisBackend:
    """Counters shared by every process that points at the same Redis."""

    def __init__(self, url: str, *, lease_ttl: float = 30.0, prefix: str = "modelgate:") -> None:
        from redis.exceptions import RedisError, ResponseError

        self.errors: tuple[type[Exception], ...] = (RedisError, OSError)
        self._refused = ResponseError  # Redis answered, with an error (READONLY, OOM, ...)
        self._url = url
        self.lease_ttl = lease_ttl
        self.prefix = prefix
        self._client: redis.asyncio.Redis | None = None
        self._held: dict[str, Lease] = {}
        self._renewer: asyncio.Task[None] | None = None
        #: The store's epoch when this process last (re)took its leases; None before the first call.
        self._epoch: str | None = None
        #: Called when the store is found to have lost its data (``Limiter.when_store_lost``).
        self.lost: Callable[[], None] | None = None

    @property
    def client(self) -> redis.asyncio.Redis:
        if self._client is None:
            raise RuntimeError("RedisBackend used before start()")
        return self._client

    async def start(self) -> None:
        import redis.asyncio
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        from redis.exceptions import ConnectionError as RedisConnectionError

        self._client = redis.asyncio.Redis.from_url(
            self._url,
            socket_timeout=5.0,
            socket_connect_timeout=5.0,
            # A pooled connection a Redis restart has closed fails on first use: reconnect and send
            # once more. The first may have run (its reply lost), so every script this client runs does
            # nothing twice: leases and budget holds count their own id once, a settlement is marked.
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            retry_on_error=[RedisConnectionError],
        )
        self._acquire = self._client.register_script(_ACQUIRE)
        self._renew = self._client.register_script(_RENEW)
        self._resync = self._client.register_script(_RESYNC)
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

    async def problem(self) -> str | None:
        # A write, not PING: a replica (after a failover to the wrong node) or a full Redis answers PING but refuses
        # the admission script's writes, so every counted request would get a 503 from a "ready" process.
        try:
            await self.client.set(self.prefix + "ready-probe", b"1", px=READY_PROBE_TTL_MS)
        except self._refused as exc:
            return f"redis refuses writes: {str(exc)[:120]}"
        except self.errors:
            return "redis unreachable"
        return None

    async def acquire(self, plan: Plan, lease_id: str) -> Denied | None:
        window = plan.window
        keys = [
            self._epoch_key,
            self.prefix + "rebuilding",
            self.prefix + (window.key if window else "unused"),
            *(self.prefix + s.key for s in plan.slots),
        ]
        args: list[str | int] = [
            "",
            lease_id,
            math.ceil(self.lease_ttl * 1000),
            window.limit if window else 0,
            math.ceil(window.seconds * 1000) if window else 0,
            *(slot.limit for slot in plan.slots),
        ]
        for _ in range(3):
            args[0] = self._epoch or ""
            result = await self._acquire(keys=keys, args=args)
            if int(result[0]) != -1:
                break
            await self.resync()
        else:  # the epoch changed under us three times running: the store is not in a state to trust
            from redis.exceptions import RedisError

            raise RedisError("the rate-limit store keeps losing its data")
        if int(result[0]) == 1:
            if plan.slots:  # one id may take more slots later (a fallback's): renew them all
                held = self._held.get(lease_id)
                before = held.slots if held is not None else ()
                self._held[lease_id] = Lease(lease_id, before + tuple(s.key for s in plan.slots if s.key not in before))
            return None
        which, retry_ms = int(result[1]), int(result[2])
        if which == -1:
            return Denied(REBUILDING, retry_ms / 1000)
        if which == 0:
            assert window is not None
            return Denied(window, retry_ms / 1000)
        return Denied(plan.slots[which - 1], CONCURRENCY_RETRY_AFTER)

    async def release(self, lease: Lease) -> None:
        held = self._held.pop(lease.id, None)
        kept = tuple(key for key in held.slots if key not in lease.slots) if held is not None else ()
        if kept:  # a fallback gave back the failed model's slots; the key's stay held and renewed
            self._held[lease.id] = Lease(lease.id, kept)
        if lease.slots:
            pipe = self.client.pipeline(transaction=False)
            for key in lease.slots:
                pipe.zrem(self.prefix + key, lease.id)
            await pipe.execute()

    async def uncount(self, window: Window, lease_id: str) -> None:
        await self.client.zrem(self.prefix + window.key, lease_id)

    async def resync(self) -> None:
        """Adopt the store's epoch, re-taking every lease this process holds (see ``_RESYNC``)."""
        keys: list[str] = [self._epoch_key, self.prefix + "rebuilding"]
        ids: list[str] = []
        for lease in list(self._held.values()):
            keys += (self.prefix + key for key in lease.slots)
            ids += [lease.id] * len(lease.slots)
        rebuild_ms = math.ceil(REBUILD_SECONDS * 1000) if self._epoch is not None else 0
        args: list[str | int] = [uuid.uuid4().hex, rebuild_ms, math.ceil(self.lease_ttl * 1000), *ids]
        epoch = _text(await self._resync(keys=keys, args=args))
        if self._epoch is not None and epoch != self._epoch:
            log.warning("the rate-limit store lost its leases (restarted?): re-took the %d held here", len(ids))
            if self.lost is not None:
                self.lost()
        self._epoch = epoch

    @property
    def known_epoch(self) -> str | None:
        return self._epoch

    @property
    def epoch_key(self) -> str:
        return self._epoch_key

    def abandon(self) -> None:
        """Forget held leases without releasing them, as a crashed process would (tests use this)."""
        self._held.clear()

    @property
    def _epoch_key(self) -> str:
        return self.prefix + "epoch"

    async def _renew_forever(self) -> None:
        renew_every = self.lease_ttl / 3
        check_every = min(EPOCH_CHECK_SECONDS, renew_every)
        since_renewal = 0.0
        failing = False
        while True:
            await asyncio.sleep(check_every)
            since_renewal += check_every
            if not self._held:
                continue
            try:
                current = await self.client.get(self._epoch_key)
                # Back after failing: a lease may have lapsed meanwhile and been swept by another admission, which
                # a renewal (XX) would not put back; the stream still runs, so it is taken again like after a loss.
                if failing or current is None or _text(current) != self._epoch:
                    await self.resync()  # re-takes (and so renews) every held lease
                    since_renewal = 0.0
                elif since_renewal >= renew_every:
                    since_renewal = 0.0
                    for lease in list(self._held.values()):
                        await self._renew(
                            keys=[self.prefix + key for key in lease.slots],
                            args=[lease.id, math.ceil(self.lease_ttl * 1000)],
                        )
                failing = False
            except self.errors as exc:
                if not failing:  # once per outage, not once a second
                    log.warning("could not renew concurrency leases in Redis: %s", type(exc).__name__)
                failing = True


def _text(reply: object) -> str:
    return reply.decode() if isinstance(reply, bytes) else str(reply)


# --- the limiter --------------------------------------------------------------------------------------


class Limiter:
    """Turns the configured limits for (key, model) into a ``Plan`` and runs it on a backend."""

    def __init__(self, backend: LimitBackend) -> None:
        self.backend = backend
        #: Per-key budgets, counted in the same store: Redis when the limits are shared, else this process.
        self.budgets = Budgets(
            RedisCounters(lambda: backend.client, backend.prefix, backend)
            if isinstance(backend, RedisBackend)
            else MemoryCounters()
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> Limiter:
        if settings.redis_url:
            return cls(RedisBackend(settings.redis_url))
        return cls(MemoryBackend())

    async def start(self) -> None:
        await self.backend.start()
        self.budgets.start()

    def when_store_lost(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when the shared store (Redis) is found to have lost its data, budgets' counters included:
        at the admission that finds it, before that request holds any budget."""
        if isinstance(self.backend, RedisBackend):
            self.backend.lost = callback

    async def stop(self) -> None:
        await self.budgets.stop()
        await self.backend.stop()

    async def problem(self) -> str | None:
        """What keeps the counter store from counting (``/ready`` reports it), or None."""
        return await self.backend.problem()

    def plan(self, principal: Principal, model: CatalogueModel, catalogue: Catalogue) -> Plan:
        """Every limit of a direct call by ``principal`` to ``model``."""
        key = self.key_plan(principal)
        return Plan(key.window, key.slots + self.model_slots(model, catalogue))

    @staticmethod
    def key_plan(principal: Principal) -> Plan:
        """The caller's own limits: counted once per request, whichever model answers it."""
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
        return Plan(window, tuple(slots))

    @staticmethod
    def model_slots(model: CatalogueModel, catalogue: Catalogue) -> tuple[Slot, ...]:
        """The caps that protect ``model``'s upstream: held by whichever request ``model`` is answering."""
        slots: list[Slot] = []
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
        return tuple(slots)

    async def acquire(self, principal: Principal, model: CatalogueModel, catalogue: Catalogue) -> Lease | None:
        """Take every limit for this request, or raise ``RateLimited``. ``None``: nothing to release."""
        plan = self.plan(principal, model, catalogue)
        lease_id = uuid.uuid4().hex
        await self.take(plan, lease_id)
        return Lease(lease_id, tuple(slot.key for slot in plan.slots)) if plan.slots else None

    async def take(self, plan: Plan, lease_id: str) -> None:
        """Count ``plan`` under ``lease_id`` (all of it or nothing), or raise ``RateLimited``."""
        if plan.empty:
            return
        try:
            denied = await self.backend.acquire(plan, lease_id)
        except self.backend.errors as exc:
            # Fail closed: admitting unmetered would break the limits operators rely on.
            log.error("rate-limit store unavailable: %s", type(exc).__name__)
            raise ModelgateError("Rate-limit store unavailable; try again shortly", status=503) from exc
        if denied is not None:
            retry_after = max(1, math.ceil(denied.retry_after))
            raise RateLimited(denied.limit.message, retry_after=retry_after, data={"retryAfter": retry_after})

    async def uncount(self, window: Window, lease_id: str) -> None:
        """Give back ``lease_id``'s place in ``window``, as a request refused at admission never took one."""
        try:
            await self.backend.uncount(window, lease_id)
        except self.backend.errors as exc:  # it leaves the window within its 60 s anyway
            log.warning("could not give back a requests-per-minute admission: %s", type(exc).__name__)

    async def release(self, lease: Lease) -> None:
        try:
            await self.backend.release(lease)
        except self.backend.errors as exc:
            # The lease TTL frees the slot anyway.
            log.warning("could not release a concurrency lease: %s", type(exc).__name__)


class Admission:
    """What ``admit`` let in: the caller, and the slots its request holds until the request is over.

    One lease id covers them all. The key's slots stay for the whole request; the model side
    (provider and model caps) follows the model being tried, so a fallback holds its own caps and
    not the failed model's.
    """

    def __init__(self, principal: Principal, limiter: Limiter, catalogue: Catalogue) -> None:
        self.principal = principal
        self._limiter = limiter
        self._catalogue = catalogue
        self._lease_id = uuid.uuid4().hex
        self._key_slots: tuple[str, ...] = ()
        self._model_slots: tuple[str, ...] = ()
        self._reservation: Reservation | None = None
        #: A reservation sent to the budget store and not answered yet (see ``reserve_budget``).
        self._pending: Reservation | None = None
        self._obs: Observation | None = None
        #: The window of an admission the store failed to answer: it may hold this request's place (``_take``).
        self._uncounted: Window | None = None

    @property
    def held(self) -> tuple[str, ...]:
        return self._key_slots + self._model_slots

    async def admit_model(self, model: CatalogueModel) -> None:
        """The direct call: policy (``Forbidden``), then the key's and ``model``'s limits in one step."""
        self._check_policy(model)
        key = self._limiter.key_plan(self.principal)
        model_slots = self._limiter.model_slots(model, self._catalogue)
        await self._take(Plan(key.window, key.slots + model_slots), key.slots, model_slots)

    async def admit_fallback(self, model: CatalogueModel) -> None:
        """Move to ``model`` as if it were called directly: ``Forbidden`` if the key may not use it,
        ``RateLimited`` if its provider or model is at its cap. The failed model's slots are given
        back first: the request no longer uses that upstream, and a fallback on the same provider
        must not count this request twice.
        """
        self._check_policy(model)
        await self._give_back(self._model_slots)
        self._model_slots = ()
        model_slots = self._limiter.model_slots(model, self._catalogue)
        await self._take(Plan(None, model_slots), (), model_slots)

    @property
    def budget(self) -> Budget | None:
        """The caller's budget, if its key has one."""
        key = self.principal.key
        return key.budget if key is not None else None

    async def reserve_budget(
        self, calls: Sequence[tuple[CatalogueModel, ChatRequest]], billed_by_reply: Container[str] = frozenset()
    ) -> None:
        """Hold the most the request may cost in its key's budget, or raise ``RateLimited`` (429) when spent.

        ``calls``: the request as each model that may answer it would be sent (the requested model, admitted by
        ``admit_model``, and its fallbacks, each with its own defaults); the hold is the most any of them the key may
        use could cost. ``billed_by_reply``: the provider instances whose upstream says what each reply cost
        (``budgets.estimate``). Settled to the actual cost by ``release``."""
        key = self.principal.key
        if key is None or key.budget is None or self._reservation is not None or self._pending is not None:
            return
        most, prompt = budgets.worst_case(
            budgets.estimate(m, r, billed_by_reply=m.provider in billed_by_reply)
            for m, r in calls
            if may_call(self.principal, m.id)
        )
        self._obs = current_observation()
        reservation = self._limiter.budgets.reservation(key.key_id, key.budget, most, prompt)
        # Recorded before the store answers: a request cancelled meanwhile (its hold may be made in Redis, the
        # answer on its way back) still gives it back in ``release`` instead of holding it for HOLD_SECONDS.
        self._pending = reservation
        try:
            await self._limiter.budgets.hold(reservation, key.name)
        except ModelgateError as exc:
            # No reply reaches an upstream: the window's place is given back. Refused (429), nothing is held; a store
            # failing (503) may have held it, its answer lost on the way back: ``release`` gives it back then.
            if isinstance(exc, RateLimited):
                self._pending = None
            await self._uncount_window()
            raise
        self._pending, self._reservation = None, reservation

    async def release(self) -> None:
        """Give back everything held and charge the budget what the request cost (run once it is over)."""
        await self._give_back(self.held)
        self._key_slots = self._model_slots = ()
        uncounted, self._uncounted = self._uncounted, None
        if uncounted is not None:
            await self._limiter.uncount(uncounted, self._lease_id)
        reservation, self._reservation = self._reservation, None
        pending, self._pending = self._pending, None
        try:
            if reservation is not None:
                await self._limiter.budgets.settle(reservation, budgets.actual(self._obs, reservation, self._catalogue))
            elif pending is not None:  # cancelled while the store answered: no reply began, nothing to charge
                await self._limiter.budgets.give_back(pending)
        except ModelgateError as exc:  # sent again for a while, then its hold lapses; the ledger has its row
            log.warning("could not settle a budget charge (sent again shortly): %s", exc.message)

    async def _uncount_window(self) -> None:
        """A request the budget refused reaches no upstream: like one over a concurrency cap, it must not use up
        one of the key's ``requests_per_minute`` (a client retrying a busy budget each second locked itself out)."""
        window = self._limiter.key_plan(self.principal).window
        if window is not None:
            await self._limiter.uncount(window, self._lease_id)

    def _check_policy(self, model: CatalogueModel) -> None:
        if not may_call(self.principal, model.id):
            raise Forbidden(f"This API key may not use the model '{model.id}'", data={"model": model.id})

    async def _take(self, plan: Plan, key_slots: tuple[Slot, ...], model_slots: tuple[Slot, ...]) -> None:
        # Counted as held before the store answers: if the request is cancelled meanwhile, or the store fails
        # (it may have taken them, its answer lost on the way back), ``release`` still gives them back (releasing
        # a slot that was never taken changes nothing).
        self._key_slots += tuple(s.key for s in key_slots)
        self._model_slots += tuple(s.key for s in model_slots)
        try:
            await self._limiter.take(plan, self._lease_id)
        except RateLimited:  # refused: nothing was taken
            self._key_slots = tuple(k for k in self._key_slots if k not in {s.key for s in key_slots})
            self._model_slots = ()
            raise
        except ModelgateError:
            # The store failed (503), perhaps after counting the request, its answer lost on the way back: the client
            # was refused, so ``release`` gives back its place in the window too, as for a budget's refusal.
            self._uncounted = plan.window
            raise

    async def _give_back(self, slots: tuple[str, ...]) -> None:
        if slots:
            await self._limiter.release(Lease(self._lease_id, slots))


async def admit(state: GatewayState, request: Request, model: CatalogueModel) -> Admission:
    """Auth + policy + limits for one request to ``model``; call it before opening the stream.

    Raises ``Unauthorized`` (401), ``Forbidden`` (403) or ``RateLimited`` (429). Concurrency taken
    here is held until the request is over — its stream included — and then released. Hand the
    ``Admission`` to ``gateway.open_stream``: its fallbacks are admitted through it.
    """
    admission = Admission(request_principal(request), state.limiter, state.catalogue)
    on_request_end(request, admission.release)  # first: a request cancelled while admitted leaks nothing
    await admission.admit_model(model)
    return admission
