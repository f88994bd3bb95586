"""The rate limits in Redis (``RedisBackend``, ``MODELGATE_REDIS_URL``): counters shared by every process pointing at
the same Redis. One Lua script checks and takes every limit of a request atomically, on the Redis server's clock;
a concurrency slot is a lease its holder renews while the stream runs; the store's *epoch* shows that Redis lost
its data (below). The contract this keeps and the in-process store: ``limit_store.py``; admission: ``limits.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

from modelgate.limit_store import CONCURRENCY_RETRY_AFTER, Denied, Lease, Plan, Slot, Window

# redis is imported by ``RedisBackend`` only: with it comes the OpenTelemetry SDK its observability module
# loads (~0.1 s of every start-up), which a process counting in memory never needs (issue 13 item 5).
if TYPE_CHECKING:
    import redis.asyncio

# The limiter's logger: these lines keep the name they had before ``RedisBackend`` moved out of limits.py.
log = logging.getLogger("modelgate.limits")

#: How long ``/ready``'s probe key lives in Redis (one a prefix, rewritten by every probe).
READY_PROBE_TTL_MS = 60_000

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
