"""Budgets per key: tokens and/or USD per UTC day and per UTC month, checked at admission, charged at the end.

A key's ``Budget`` (the keys file's ``[keys.budget]`` table, or a run-time key record) names up to four
limits: ``tokens_per_day``, ``tokens_per_month``, ``usd_per_day``, ``usd_per_month``. Tokens are prompt +
completion tokens (reasoning included, as reported — or estimated when the upstream reports none); USD is
the cost at the catalogue's ``[models.pricing]`` of the model that answered (an unpriced model costs 0).

**Reserve, then settle.** Each limit is a counter per key and period (``2026-12-02``, ``2026-12``) of
two numbers: *spent* (what finished requests cost) and *held* (the reservations of requests still running).

- Admission (``Budgets.reserve``, before any upstream call): while spent + held is below every limit, the
  request is admitted and its *estimate* is added to held — its prompt (estimated from the messages) plus
  the most it may generate (``max_tokens`` / the catalogue's ``max_new_tokens``), priced for the USD
  counters. Check and reservation are one atomic step. Otherwise 429 with ``Retry-After``: when spent
  alone has reached the limit, the budget is *exhausted* (the message names the budget and its UTC reset
  time, ``Retry-After`` counts the seconds to it); when it is full only because of running requests'
  reservations, the key is told so with ``Retry-After: 1`` (one of them may end any moment and give
  back most of its reservation).
- The end (``Budgets.settle``, when the request is over — answered, failed, or cut by the client): its
  actual cost is added to spent and its estimate taken off held. Actual is the usage the upstream
  reported, else the estimate the gateway made for the ledger (prompt estimate + one token per event
  relayed before the reply failed or was cut); a reply that never started costs nothing.

**Why that bounds the overshoot to one in-flight request.** A request is admitted only while spent + held
is *below* the limit, and held covers every running request at its maximum. So when the last request is
admitted, everything else the key will be charged this period is already counted (finished requests at
their actual cost, running ones at no less than it), and the final total stays below the limit plus that
one request's own charge. No request is refused while unreserved budget remains (one whose estimate
exceeds what is left still runs: the overshoot is at most its own size), and near the edge concurrent
requests are serialised by their reservations instead of all getting through. The bound assumes the
estimate is an upper bound: an upstream that generates past ``max_tokens``, or a prompt the estimator
undercounts, is charged its actual usage anyway and can overshoot by that difference.

**Where the counters live.** With ``MODELGATE_REDIS_URL`` set: in that Redis (the limiter's), so every
worker and instance shares them — ``RedisCounters``: one Lua script checks and reserves (one round trip at
admission) and one settles (one at the end); keys expire an hour after their period ends. Without Redis:
in the process (``MemoryCounters``), so each worker and instance has its own. Keys without a budget never
touch either. The ledger (``ledger.py``) is the record of what each request cost; the counters are the fast
path that enforces it. What they cannot see: a Redis that loses its data (restart without persistence)
starts the current periods from zero, and a crashed (killed) instance's running requests stay held at
their estimate until the period ends (the conservative side; SIGTERM drains, so it settles them).

The periods follow this process's UTC clock; a request is charged in the period it was admitted in.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, model_validator

from modelgate.errors import ModelgateError, RateLimited

if TYPE_CHECKING:
    import redis.asyncio

    from modelgate.catalogue import Catalogue, CatalogueModel, Pricing
    from modelgate.chat import ChatRequest
    from modelgate.observer import Observation

Measure = Literal["tokens", "usd"]
Period = Literal["day", "month"]

#: USD are counted in nano-dollars: integers keep Redis' INCRBY exact, and a one-token charge still counts.
NANO_USD = 1_000_000_000
#: Counters outlive their period by this much (seconds), so a late settlement still finds its counter.
COUNTER_GRACE = 3600


class Budget(BaseModel):
    """What a key may spend. Every field optional; a key with none set has no budget."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tokens_per_day: Annotated[int | None, Field(gt=0, description="Prompt + completion tokens per UTC day")] = None
    tokens_per_month: Annotated[int | None, Field(gt=0, description="Prompt + completion tokens per UTC month")] = None
    usd_per_day: Annotated[float | None, Field(gt=0, allow_inf_nan=False, description="USD per UTC day")] = None
    usd_per_month: Annotated[float | None, Field(gt=0, allow_inf_nan=False, description="USD per UTC month")] = None

    @model_validator(mode="after")
    def _something(self) -> Budget:
        if not self.limits():
            raise ValueError("set at least one of tokens_per_day, tokens_per_month, usd_per_day, usd_per_month")
        return self

    def limits(self) -> list[Limit]:
        found: list[Limit] = []
        for measure, period, value in (
            ("tokens", "day", self.tokens_per_day),
            ("tokens", "month", self.tokens_per_month),
            ("usd", "day", self.usd_per_day),
            ("usd", "month", self.usd_per_month),
        ):
            if value is not None:
                units = int(value) if measure == "tokens" else round(value * NANO_USD)
                found.append(Limit(measure, period, units, value))  # type: ignore[arg-type]
        return found


@dataclass(frozen=True, slots=True)
class Limit:
    measure: Measure
    period: Period
    units: int  #: tokens, or nano-USD
    value: float  #: as configured (tokens or USD)

    @property
    def name(self) -> str:
        return f"{self.measure}_per_{self.period}"

    def describe(self) -> str:
        if self.measure == "tokens":
            return f"{int(self.value)} tokens per {self.period}"
        return f"{self.value:g} USD per {self.period}"


@dataclass(frozen=True, slots=True)
class Charge:
    """What one request costs (or may cost): tokens, and nano-USD."""

    tokens: int
    nano_usd: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int, pricing: Pricing | None) -> Charge:
        usd = pricing.cost(prompt_tokens, completion_tokens) if pricing is not None else 0.0
        return cls(prompt_tokens + completion_tokens, math.ceil(usd * NANO_USD))

    def units(self, measure: Measure) -> int:
        return self.tokens if measure == "tokens" else self.nano_usd


NOTHING = Charge(0, 0)


# --- periods ---------------------------------------------------------------------------------------


def period_of(period: Period, now: datetime) -> tuple[str, datetime]:
    """The period containing ``now`` (UTC): its label (``2026-12-02`` / ``2026-12``) and when the next begins."""
    if period == "day":
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        return start.strftime("%Y-%m-%d"), start + timedelta(days=1)
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    if start.month == 12:
        return start.strftime("%Y-%m"), start.replace(year=start.year + 1, month=1)
    following = start.replace(month=start.month + 1)
    return start.strftime("%Y-%m"), following


@dataclass(frozen=True, slots=True)
class Counter:
    """One limit of one key in the current period."""

    key: str  #: ``budget:<key_id>:<measure>:<label>``
    limit: Limit
    resets_at: datetime

    def ttl(self, now: datetime) -> int:
        return math.ceil((self.resets_at - now).total_seconds()) + COUNTER_GRACE


def counters(key_id: str, budget: Budget, now: datetime) -> list[Counter]:
    found = []
    for limit in budget.limits():
        label, resets_at = period_of(limit.period, now)
        found.append(Counter(f"budget:{key_id}:{limit.measure}:{label}", limit, resets_at))
    return found


# --- where the counters live -----------------------------------------------------------------------


class BudgetUnavailable(ModelgateError):
    status = 503

    def __init__(self) -> None:
        super().__init__("Budget store unavailable; try again shortly")


@dataclass(frozen=True, slots=True)
class Usage:
    """One counter now: ``spent`` (settled charges) and ``held`` (estimates of requests still running)."""

    spent: int = 0
    held: int = 0


@dataclass(frozen=True, slots=True)
class Refusal:
    index: int  #: which counter refused
    busy: bool  #: only because of running requests' reservations: not spent, wait for them


class BudgetCounters(Protocol):
    async def reserve(self, counters: list[Counter], amounts: list[int], now: datetime) -> Refusal | None:
        """Atomically: if every counter's spent + held is below its limit, hold ``amounts``; else which one is not."""
        ...

    async def settle(self, counters: list[Counter], spent: list[int], held: list[int], now: datetime) -> None:
        """Add ``spent`` (the actual charges) and give back ``held`` (the reservation)."""
        ...

    async def read(self, counters: list[Counter]) -> list[Usage]: ...


def _refusal(index: int, usage: Usage, limit: int) -> Refusal | None:
    if usage.spent + usage.held < limit:
        return None
    return Refusal(index, busy=usage.spent < limit)


class MemoryCounters:
    """One process's counters. ``reserve`` never awaits, so it is atomic under asyncio."""

    def __init__(self) -> None:
        self._values: dict[str, tuple[float, Usage]] = {}  # key → (expires at, Unix time; usage)

    async def reserve(self, counters: list[Counter], amounts: list[int], now: datetime) -> Refusal | None:
        for index, counter in enumerate(counters):
            refusal = _refusal(index, self._get(counter.key, now), counter.limit.units)
            if refusal is not None:
                return refusal
        self._add(counters, [0] * len(counters), amounts, now)
        return None

    async def settle(self, counters: list[Counter], spent: list[int], held: list[int], now: datetime) -> None:
        self._add(counters, spent, [-amount for amount in held], now)

    async def read(self, counters: list[Counter]) -> list[Usage]:
        now = datetime.now(UTC)
        return [self._get(counter.key, now) for counter in counters]

    def _get(self, key: str, now: datetime) -> Usage:
        found = self._values.get(key)
        return found[1] if found is not None and found[0] > now.timestamp() else Usage()

    def _add(self, counters: list[Counter], spent: list[int], held: list[int], now: datetime) -> None:
        stamp = now.timestamp()
        for counter, more_spent, more_held in zip(counters, spent, held, strict=True):
            if counter.key not in self._values:  # a new period began somewhere: forget the ended ones
                self._values = {k: v for k, v in self._values.items() if v[0] > stamp}
            usage = self._get(counter.key, now)
            updated = Usage(max(0, usage.spent + more_spent), max(0, usage.held + more_held))
            self._values[counter.key] = (stamp + counter.ttl(now), updated)


# Each counter is a hash: s = spent (settled), h = held (reservations of running requests).
# KEYS = the counters; ARGV = n limits, n amounts, n TTLs (s). Returns 0 when held; else i (1-based) for
# a counter whose spent has reached its limit, -i for one full only because of reservations.
_RESERVE = """
local n = #KEYS
for i = 1, n do
  local v = redis.call('HMGET', KEYS[i], 's', 'h')
  local spent, held, limit = tonumber(v[1] or '0'), tonumber(v[2] or '0'), tonumber(ARGV[i])
  if spent + held >= limit then
    if spent >= limit then
      return i
    end
    return -i
  end
end
for i = 1, n do
  redis.call('HINCRBY', KEYS[i], 'h', ARGV[n + i])
  redis.call('EXPIRE', KEYS[i], ARGV[2 * n + i])
end
return 0
"""

# KEYS = the counters; ARGV = n spent amounts, n held amounts to give back (negative), n TTLs (s). Held
# never goes below 0: a store that lost the reservation (restarted) must not turn its release into credit.
_SETTLE = """
local n = #KEYS
for i = 1, n do
  redis.call('HINCRBY', KEYS[i], 's', ARGV[i])
  if redis.call('HINCRBY', KEYS[i], 'h', ARGV[n + i]) < 0 then
    redis.call('HSET', KEYS[i], 'h', 0)
  end
  redis.call('EXPIRE', KEYS[i], ARGV[2 * n + i])
end
return 0
"""


class RedisCounters:
    """Counters in the limiter's Redis, shared by every process pointing at it."""

    def __init__(self, client: Callable[[], redis.asyncio.Redis], prefix: str) -> None:
        from redis.exceptions import RedisError  # here: a process without Redis never imports it for budgets

        self._client = client  # the limiter's client, which exists once the limiter started
        self.prefix = prefix
        self._failures = (RedisError, OSError)

    async def reserve(self, counters: list[Counter], amounts: list[int], now: datetime) -> Refusal | None:
        keys = [self.prefix + c.key for c in counters]
        args = [*(c.limit.units for c in counters), *amounts, *(c.ttl(now) for c in counters)]
        try:
            found = int(await self._client().eval(_RESERVE, len(keys), *keys, *args))
        except self._failures as exc:  # fail closed, as the limiter does: unmetered spending is the risk
            raise BudgetUnavailable() from exc
        return None if found == 0 else Refusal(abs(found) - 1, busy=found < 0)

    async def settle(self, counters: list[Counter], spent: list[int], held: list[int], now: datetime) -> None:
        keys = [self.prefix + c.key for c in counters]
        args = [*spent, *(-amount for amount in held), *(c.ttl(now) for c in counters)]
        try:
            await self._client().eval(_SETTLE, len(keys), *keys, *args)
        except self._failures as exc:
            raise BudgetUnavailable() from exc

    async def read(self, counters: list[Counter]) -> list[Usage]:
        client = self._client()
        try:
            async with client.pipeline(transaction=False) as pipe:
                for counter in counters:
                    pipe.hmget(self.prefix + counter.key, ["s", "h"])
                replies = await pipe.execute()
        except self._failures as exc:
            raise BudgetUnavailable() from exc
        return [Usage(int(spent or 0), int(held or 0)) for spent, held in replies]


# --- the interface the admission uses --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reservation:
    """A request's estimate, held in its key's counters until ``Budgets.settle``."""

    counters: tuple[Counter, ...]
    estimate: Charge
    prompt_estimate: int  #: the prompt part of ``estimate`` (what a cut reply is charged for its prompt)
    admitted_at: datetime


@dataclass(frozen=True, slots=True)
class BudgetState:
    """One limit of a key as ``/api/usage`` shows it to that key (tokens, or USD)."""

    name: str  #: tokens_per_day | tokens_per_month | usd_per_day | usd_per_month
    limit: float
    spent: float  #: what finished requests cost this period
    reserved: float  #: held for requests still running (their estimates)
    remaining: float  #: limit - spent - reserved, at least 0
    resets_at: datetime


#: ``Retry-After`` when a budget is full only of running requests' reservations: one may end any moment.
BUSY_RETRY_AFTER = 1


class Budgets:
    """Check and charge the budget of one key (id + ``Budget``), whatever the key's source."""

    def __init__(self, store: BudgetCounters, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self._clock = clock

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    async def reserve(
        self, key_id: str, key_name: str, budget: Budget, estimate: Charge, prompt_estimate: int
    ) -> Reservation:
        """Admit a request of ``estimate`` against ``budget`` and hold it; else ``RateLimited`` (429), or
        ``BudgetUnavailable`` (503) when the store does not answer."""
        now = self._now()
        held = counters(key_id, budget, now)
        refusal = await self.store.reserve(held, [estimate.units(c.limit.measure) for c in held], now)
        if refusal is not None:
            counter = held[refusal.index]
            raise busy(key_name, counter) if refusal.busy else exhausted(key_name, counter, now)
        return Reservation(tuple(held), estimate, prompt_estimate, now)

    async def settle(self, reservation: Reservation, actual: Charge) -> None:
        """Charge what the request actually cost and give back its reservation."""
        counters = list(reservation.counters)
        await self.store.settle(
            counters,
            [actual.units(c.limit.measure) for c in counters],
            [reservation.estimate.units(c.limit.measure) for c in counters],
            reservation.admitted_at,
        )

    async def state(self, key_id: str, budget: Budget) -> list[BudgetState]:
        current = counters(key_id, budget, self._now())
        found = await self.store.read(current)
        return [_state(counter, usage) for counter, usage in zip(current, found, strict=True)]


def _state(counter: Counter, usage: Usage) -> BudgetState:
    limit = counter.limit
    scale = 1 if limit.measure == "tokens" else NANO_USD
    spent, reserved = usage.spent / scale, usage.held / scale
    remaining = max(0.0, limit.value - spent - reserved)
    return BudgetState(limit.name, limit.value, spent, reserved, remaining, counter.resets_at)


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def exhausted(key_name: str, counter: Counter, now: datetime) -> RateLimited:
    """The 429 for a spent budget: which one, and when it resets (``Retry-After`` and the message)."""
    resets = _iso(counter.resets_at)
    retry_after = max(1, math.ceil((counter.resets_at - now).total_seconds()))
    return RateLimited(
        f"Budget exhausted: key '{key_name}' has spent its {counter.limit.describe()}; it resets at {resets}",
        retry_after=retry_after,
        data={"retryAfter": retry_after, "budget": counter.limit.name, "resetsAt": resets},
    )


def busy(key_name: str, counter: Counter) -> RateLimited:
    """The 429 for a budget whose rest is held by the key's running requests: retry when one has ended."""
    return RateLimited(
        f"Budget nearly spent: the rest of key '{key_name}''s {counter.limit.describe()} is held by its running "
        "requests; try again when one has ended",
        retry_after=BUSY_RETRY_AFTER,
        data={"retryAfter": BUSY_RETRY_AFTER, "budget": counter.limit.name, "resetsAt": _iso(counter.resets_at)},
    )


# --- a request's estimate and actual charge --------------------------------------------------------


def estimate(model: CatalogueModel, request: ChatRequest) -> tuple[Charge, int]:
    """The most ``request`` to ``model`` may cost (its prompt, estimated, + the most it may generate), and
    the prompt part of it."""
    from modelgate.providers._http import estimate_prompt_tokens  # not at import: auth imports this module

    prompt = estimate_prompt_tokens(request.messages)
    limit = model.parameters.max_new_tokens
    wanted = request.params.max_new_tokens
    completion = min(wanted, limit) if wanted is not None else limit
    return Charge.of(prompt, completion, model.pricing), prompt


def actual(obs: Observation | None, reservation: Reservation, catalogue: Catalogue) -> Charge:
    """What the request cost: the usage the upstream reported (or the gateway estimated, ``gateway._relay``);
    for a reply cut before that was known, its prompt estimate + the events relayed; nothing if no reply began."""
    if obs is None:  # no observer (a bare app in a test): keep the reservation as the charge
        return reservation.estimate
    answered = catalogue.by_id.get(obs.model) if obs.model is not None else None
    pricing = answered.pricing if answered is not None else None
    if obs.prompt_tokens is not None and obs.completion_tokens is not None:
        return Charge.of(obs.prompt_tokens, obs.completion_tokens, pricing)
    if obs.relayed_events:
        return Charge.of(reservation.prompt_estimate, obs.relayed_events, pricing)
    return NOTHING
