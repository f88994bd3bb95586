"""The budget counters in Redis (``RedisCounters``): the limiter's Redis, so every worker and instance pointing at
it shares them. One Lua script checks and reserves (one round trip at admission), one settles (one at the end),
one renews the running requests' holds, one raises the counters to the ledger's figure (``budgets.restore``).
What the counters are and how they are used: ``budgets.py``; the contract this keeps: ``budget_store.py``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from modelgate.budget_rules import Counter
from modelgate.budget_store import HOLD_SECONDS, BudgetUnavailable, CountersLost, Refusal, Usage

if TYPE_CHECKING:
    import redis.asyncio

# Each counter is two keys: KEYS[i] = spent (an integer), KEYS[n + i] = its holds (a sorted set, member
# "<hold id>:<amount>", score = when the hold lapses, ms on the Redis server's clock). A hold is found by its id
# (``_HOLD_OF``): a hold of ``REST`` is made of an amount only the script knows.
#
# The limiter's client sends a command again when its connection broke (``RedisBackend.start``), and the
# first one may have run: every script does nothing the second time.
_HOLD_OF = """
local function hold_of(key, id)
  local prefix = id .. ':'
  for _, member in ipairs(redis.call('ZRANGE', key, 0, -1)) do
    if string.sub(member, 1, #prefix) == prefix then
      return member
    end
  end
  return nil
end
"""

# Reserve: ARGV = hold id, hold ms, n limits, n amounts (-1: REST), n TTLs (s). Returns {} when held (or held
# already); else, for every full counter, i (1-based) when its spent has reached its limit, -i when it is full only
# because of holds. With one more key, the limiter's epoch (``limit_store_redis._ACQUIRE``), and one more ARGV, the
# epoch this process knows: {0} when they differ (Redis lost its data, these counters with it, since this process
# last looked).
_RESERVE = (
    _HOLD_OF
    + """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = math.floor(#KEYS / 2)
if #KEYS > 2 * n and redis.call('GET', KEYS[#KEYS]) ~= ARGV[#ARGV] then
  return {0}
end
if hold_of(KEYS[n + 1], ARGV[1]) then
  return {}
end
local full, rest = {}, {}
for i = 1, n do
  redis.call('ZREMRANGEBYSCORE', KEYS[n + i], '-inf', now)
  local held = 0
  for _, member in ipairs(redis.call('ZRANGE', KEYS[n + i], 0, -1)) do
    held = held + tonumber(string.match(member, ':(%d+)$'))
  end
  local spent, limit = tonumber(redis.call('GET', KEYS[i]) or '0'), tonumber(ARGV[2 + i])
  if spent + held >= limit then
    full[#full + 1] = spent >= limit and i or -i
  end
  rest[i] = limit - spent - held
end
if #full > 0 then
  return full
end
for i = 1, n do
  local amount = ARGV[2 + n + i]
  if tonumber(amount) < 0 then
    amount = string.format('%d', rest[i])
  end
  redis.call('ZADD', KEYS[n + i], now + tonumber(ARGV[2]), ARGV[1] .. ':' .. amount)
  redis.call('EXPIRE', KEYS[n + i], ARGV[2 + 2 * n + i])
end
return {}
"""
)

# Settle: KEYS[2n + 1] = the settlement's mark, set once per hold id; ARGV = hold id, n charges, n TTLs (s), the
# mark's TTL (s). A charge of 0 (a hold given back) creates no counter, so ``restore`` still fills a missing one.
_SETTLE = (
    _HOLD_OF
    + """
local n = (#KEYS - 1) / 2
if not redis.call('SET', KEYS[#KEYS], '1', 'NX', 'EX', ARGV[2 + 2 * n]) then
  return 0
end
for i = 1, n do
  if tonumber(ARGV[1 + i]) > 0 then
    redis.call('INCRBY', KEYS[i], ARGV[1 + i])
    redis.call('EXPIRE', KEYS[i], ARGV[1 + n + i])
  end
  local hold = hold_of(KEYS[n + i], ARGV[1])
  if hold then
    redis.call('ZREM', KEYS[n + i], hold)
  end
end
return 0
"""
)

# Renew: KEYS = hold sets, ARGV = hold ms, then the hold id in each. A hold that is gone (settled) stays gone.
_RENEW_HOLDS = (
    _HOLD_OF
    + """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 1, #KEYS do
  local hold = hold_of(KEYS[i], ARGV[1 + i])
  if hold then
    redis.call('ZADD', KEYS[i], 'XX', now + tonumber(ARGV[1]), hold)
  end
end
return 0
"""
)
# Restore: KEYS = n spent counters; ARGV = n figures from the ledger, n TTLs (s). Each counter becomes the larger of
# the two. A counter that exists may have been started after Redis lost its data (by the first charge to settle
# since): kept only where it is the larger (set only where missing, as before, the day spent before the loss was
# dropped for good).
_RESTORE = """
for i = 1, #KEYS do
  local counted = redis.call('GET', KEYS[i])
  if not counted or tonumber(ARGV[i]) > tonumber(counted) then
    redis.call('SET', KEYS[i], ARGV[i], 'EX', ARGV[#KEYS + i])
  end
end
return 0
"""
#: How long a settlement's mark stays: far longer than a re-send takes (at once, on a fresh connection).
SETTLED_MARK_SECONDS = 60


class Epoch(Protocol):
    """The limiter's knowledge of Redis's epoch (``limit_store_redis.RedisBackend``): changed when Redis lost its
    data."""

    @property
    def epoch_key(self) -> str: ...
    @property
    def known_epoch(self) -> str | None: ...
    async def resync(self) -> None:
        """Adopt the epoch in force, telling whoever waits for a loss (``Limiter.when_store_lost``)."""


class RedisCounters:
    """Counters in the limiter's Redis, shared by every process pointing at it."""

    restore_adds = False

    def __init__(self, client: Callable[[], redis.asyncio.Redis], prefix: str, epoch: Epoch | None = None) -> None:
        from redis.exceptions import RedisError  # here: a process without Redis never imports it for budgets

        self._client = client  # the limiter's client, which exists once the limiter started
        self.prefix = prefix
        #: Checked at each reservation (no round trip of its own): a Redis that lost its data is noticed by a key's
        #: first request after it, even where no rate limit ever asks Redis (a key with a budget only).
        self._epoch = epoch
        self._failures = (RedisError, OSError)

    def _keys(self, counters: list[Counter]) -> list[str]:
        spent = [self.prefix + c.key for c in counters]
        return [*spent, *(key + ":held" for key in spent)]

    async def reserve(self, counters: list[Counter], hold_id: str, amounts: list[int], now: datetime) -> list[Refusal]:
        keys = self._keys(counters)
        args: list[str | int] = [hold_id, HOLD_SECONDS * 1000, *(c.limit.units for c in counters), *amounts]
        args += [c.ttl(now) for c in counters]
        if self._epoch is not None:
            keys.append(self._epoch.epoch_key)
            args.append(self._epoch.known_epoch or "")
        try:
            found = [int(which) for which in await self._client().eval(_RESERVE, len(keys), *keys, *args)]
            if found == [0]:
                assert self._epoch is not None
                await self._epoch.resync()  # starts the counters' restore (app.GatewayState.restore_budgets)
        except self._failures as exc:  # fail closed, as the limiter does: unmetered spending is the risk
            raise BudgetUnavailable() from exc
        if found == [0]:
            raise CountersLost()
        return [Refusal(abs(which) - 1, busy=which < 0) for which in found]

    async def settle(self, counters: list[Counter], hold_id: str, spent: list[int], now: datetime) -> None:
        keys = [*self._keys(counters), f"{self.prefix}budget-settled:{hold_id}"]
        args: list[str | int] = [hold_id, *spent, *(c.ttl(now) for c in counters), SETTLED_MARK_SECONDS]
        try:
            await self._client().eval(_SETTLE, len(keys), *keys, *args)
        except self._failures as exc:
            raise BudgetUnavailable() from exc

    async def renew(self, holds: list[tuple[list[Counter], str]], now: datetime) -> None:
        keys: list[str] = []
        ids: list[str] = []
        for counters, hold_id in holds:
            keys += self._keys(counters)[len(counters) :]
            ids += [hold_id] * len(counters)
        try:
            await self._client().eval(_RENEW_HOLDS, len(keys), *keys, HOLD_SECONDS * 1000, *ids)
        except self._failures as exc:
            raise BudgetUnavailable() from exc

    async def read(self, counters: list[Counter], now: datetime) -> list[Usage]:
        keys = self._keys(counters)  # (holds lapse by the Redis server's clock, as the scripts stamp them)
        now_ms = int(time.time() * 1000)
        try:
            async with self._client().pipeline(transaction=False) as pipe:
                for key in keys[: len(counters)]:
                    pipe.get(key)
                for key in keys[len(counters) :]:
                    pipe.zrangebyscore(key, now_ms, "+inf")
                replies = await pipe.execute()
        except self._failures as exc:
            raise BudgetUnavailable() from exc
        spent, holds = replies[: len(counters)], replies[len(counters) :]
        return [
            Usage(int(value or 0), sum(int(member.rsplit(b":", 1)[1]) for member in members))
            for value, members in zip(spent, holds, strict=True)
        ]

    async def restore(self, counters: list[Counter], spent: list[int], now: datetime) -> None:
        keys = self._keys(counters)[: len(counters)]
        try:
            await self._client().eval(_RESTORE, len(keys), *keys, *spent, *(c.ttl(now) for c in counters))
        except self._failures as exc:
            raise BudgetUnavailable() from exc
