"""Budgets per key: tokens and/or USD per UTC day and per UTC month, checked at admission, charged at the end.

A key's ``Budget`` (the keys file's ``[keys.budget]`` table, or a run-time key record) names up to four
limits: ``tokens_per_day``, ``tokens_per_month``, ``usd_per_day``, ``usd_per_month``. Tokens are prompt +
completion tokens (reasoning included, as reported — or estimated when the upstream reports none); USD is
the ledger's ``cost`` (``ledger.request_cost``): what the upstream reported it billed (OpenRouter's ``usage.cost``),
else the cost at the catalogue's ``[models.pricing]`` of the model that answered (an unpriced model costs 0), by
``Pricing.cost``: reported prompt-cache hits at ``cached_input``. An estimate prices the whole prompt at ``input``
(hits are not known before the reply), which the catalogue requires to be at least ``cached_input``, so a
reservation still covers a charge at the catalogue's prices. An estimate can only use the catalogue's prices (the
upstream says what it billed once it is over), so a reported cost above the list price is charged all the same.
A model without prices whose upstream bills each reply (``Provider.reports_cost``: OpenRouter) has no USD
estimate at all: its reservation holds *the rest* of each USD limit (``REST``: the limit less spent and held),
so while it runs the key's other requests get the busy 429 and the key ends at most that one reply over its
limit (held at 0 USD, N concurrent requests all passed the check and overspent it by N replies). The price of
that bound: while such a request runs, its key starts nothing else; ``[models.pricing]`` (an estimate of what the
upstream charges) lets its requests run side by side again. Other unpriced models cost 0 USD (tokens still count).

**Reserve, then settle.** Each limit is a counter per key and period (``2026-12-02``, ``2026-12``) of
two numbers: *spent* (what finished requests cost) and *held* (the reservations of requests still running).

- Admission (``Budgets.reserve``, before any upstream call): while spent + held is below every limit, the
  request is admitted and its *estimate* is added to held — its prompt (estimated from the messages) plus
  the most it may generate (``max_tokens`` / the catalogue's ``max_new_tokens``), priced for the USD
  counters. Check and reservation are one atomic step. Otherwise 429 with ``Retry-After``: when spent
  alone has reached the limit, the budget is *exhausted* (the message names the budget and its UTC reset
  time, ``Retry-After`` counts the seconds to it; of several spent, the one that resets last); when it is
  full only because of running requests' reservations, the key is told so with ``Retry-After: 1`` (one of
  them may end any moment and give back most of its reservation).
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

**Where the counters live.** With ``MODELGATE_REDIS_URL`` set: in that Redis (the limiter's), so every worker and
instance shares them — ``RedisCounters`` (``budget_store_redis.py``): one Lua script checks and reserves (one round
trip at admission) and one settles (one at the end); a counter is an integer (spent) and a sorted set of holds (each
lapsing ``HOLD_SECONDS`` after it was made or last renewed), expiring an hour after its period ends. Without Redis:
in the process (``MemoryCounters``, ``budget_store.py``), so each worker and instance has its own. Keys without a
budget never touch either. The ledger (``ledger.py``) is the record of what each request cost; the counters are the
fast path that enforces it, and start from it (``restore``) when an instance starts: a restarted single instance
keeps its keys' spending, and so does a fleet restarted after its Redis lost its data. A Redis that loses its data
while the instances keep running is noticed by the limiter's epoch (``limit_store_redis._ACQUIRE``, also checked by
each reservation) and the counters are read from the ledger again, as at start, before the request that noticed holds
anything (``CountersLost``, ``Limiter.when_store_lost``). What they cannot see: the ledger rows not yet written when
Redis lost its data (its flush interval), the holds of the requests running then, and a killed instance's running
requests, never charged (their ledger rows are lost with them): their holds lapse after ``HOLD_SECONDS`` rather than
block the key until the period ends. A live instance renews the holds of its running requests (``Budgets.start``), so
a call longer than that (a long stream, a slow reasoning model) stays held until it settles. SIGTERM drains, so a
stopped instance settles every request first.

The periods follow this process's UTC clock; a request is charged in the period it was admitted in.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from modelgate.budget_rules import NANO_USD, NOTHING, Budget, Charge, Counter, counters, period_start
from modelgate.budget_store import HOLD_SECONDS, BudgetCounters, BudgetUnavailable, CountersLost, Refusal, Usage
from modelgate.budget_store_redis import SETTLED_MARK_SECONDS
from modelgate.errors import RateLimited
from modelgate.ledger import request_cost

if TYPE_CHECKING:
    from modelgate.catalogue import Catalogue, CatalogueModel
    from modelgate.chat import ChatRequest
    from modelgate.ledger import Ledger
    from modelgate.observer import Observation

log = logging.getLogger("modelgate.budgets")


# --- the interface the admission uses --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reservation:
    """A request's estimate, held in its key's counters until ``Budgets.settle``."""

    id: str
    counters: tuple[Counter, ...]
    estimate: Charge
    prompt_estimate: int  #: the prompt part of ``estimate`` (what a cut reply is charged for its prompt)
    admitted_at: datetime
    key_id: str


@dataclass(frozen=True, slots=True)
class BudgetState:
    """One limit of a key as ``/api/usage`` shows it to that key: tokens (integers), or USD."""

    name: str  #: tokens_per_day | tokens_per_month | usd_per_day | usd_per_month
    limit: float
    spent: float  #: what finished requests cost this period
    reserved: float  #: held for requests still running (their estimates)
    remaining: float  #: limit - spent - reserved, at least 0
    resets_at: datetime


#: ``Retry-After`` when a budget is full only of running requests' reservations: one may end any moment.
BUSY_RETRY_AFTER = 1


#: Pauses before a failed settlement is sent again (the store did not answer: a Redis restart, a network blip).
#: Left unsettled, the request's hold kept its whole estimate for ``HOLD_SECONDS`` (a key "busy" for an hour) and
#: its cost was never charged. Every resend stays within ``SETTLED_MARK_SECONDS`` of the first try, so one that
#: did reach the store is never charged twice (the mark makes a resend a no-op).
SETTLE_RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0)
#: The latest a resend starts, after the first try (half the mark's life: the store may answer slowly).
SETTLE_RETRY_WITHIN = SETTLED_MARK_SECONDS / 2
#: The longest a key's request waits at start for ``restore`` to have started the key's Redis counters.
RESTORE_WAIT = 10.0
#: Running requests' holds are renewed this many times within ``HOLD_SECONDS``: one renewal the store misses (a
#: Redis restart) still leaves the hold standing until the next.
RENEWALS_PER_HOLD = 3


class Budgets:
    """Check and charge the budget of one key (id + ``Budget``), whatever the key's source."""

    def __init__(self, store: BudgetCounters, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self._clock = clock
        self._resends: set[asyncio.Task[None]] = set()
        #: Keys whose counters ``restore`` is starting from the ledger → set once it has (or given up).
        self._restoring: dict[str, asyncio.Event] = {}
        #: Reservations held and not settled yet, by id: their requests run, and their holds are renewed.
        self._running: dict[str, Reservation] = {}
        self._renewer: asyncio.Task[None] | None = None

    def restoring(self, key_ids: Iterable[str]) -> None:
        """``restore`` is about to start these keys' counters: where it raises a counter to the ledger's figure (Redis),
        a request of one of them holds nothing until it has, or a charge settled meanwhile, its ledger row not
        written yet when the ledger was read, would be lost under that figure."""
        if not self.store.restore_adds:
            self._restoring.update((key_id, asyncio.Event()) for key_id in key_ids)

    def restored(self, key_id: str) -> None:
        event = self._restoring.pop(key_id, None)
        if event is not None:
            event.set()

    def now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    async def reserve(
        self, key_id: str, key_name: str, budget: Budget, estimate: Charge, prompt_estimate: int
    ) -> Reservation:
        """Admit a request of ``estimate`` against ``budget`` and hold it; else ``RateLimited`` (429), or
        ``BudgetUnavailable`` (503) when the store does not answer."""
        reservation = self.reservation(key_id, budget, estimate, prompt_estimate)
        await self.hold(reservation, key_name)
        return reservation

    def reservation(self, key_id: str, budget: Budget, estimate: Charge, prompt_estimate: int) -> Reservation:
        """The reservation of ``estimate`` in ``budget``'s counters now, not held yet (``hold`` does that)."""
        now = self.now()
        return Reservation(
            uuid.uuid4().hex, tuple(counters(key_id, budget, now)), estimate, prompt_estimate, now, key_id
        )

    async def hold(self, reservation: Reservation, key_name: str) -> None:
        """Hold ``reservation`` if its counters have room; else ``RateLimited`` (429), or ``BudgetUnavailable``
        (503) when the store does not answer. Whoever awaits this may be cancelled while the store holds it:
        ``give_back`` then undoes it."""
        held = list(reservation.counters)
        amounts = [reservation.estimate.held(c.limit.measure) for c in held]
        for last in (False, True):
            restoring = self._restoring.get(reservation.key_id)
            if restoring is not None:
                try:
                    await asyncio.wait_for(restoring.wait(), RESTORE_WAIT)
                except TimeoutError:  # a ledger that does not answer: counted from zero, no request waits more
                    self.restored(reservation.key_id)
            try:
                refusals = await self.store.reserve(held, reservation.id, amounts, reservation.admitted_at)
                break
            except CountersLost:  # their restore from the ledger has begun (``restoring``): wait for it, ask again
                if last:
                    raise
        if refusals:
            raise refused(key_name, held, refusals, reservation.admitted_at)
        self._running[reservation.id] = reservation

    async def settle(self, reservation: Reservation, actual: Charge) -> None:
        """Charge what the request actually cost and give back its reservation. When the store does not answer
        (``BudgetUnavailable``, raised for the caller's log), the settlement is sent again in the background
        (``SETTLE_RETRY_DELAYS``)."""
        self._running.pop(reservation.id, None)  # renewed no more: unsettled after all, it lapses
        try:
            await self._settle(reservation, actual)
        except BudgetUnavailable:
            task = asyncio.get_running_loop().create_task(self._resend(reservation, actual))
            self._resends.add(task)
            task.add_done_callback(self._resends.discard)
            raise

    async def _resend(self, reservation: Reservation, actual: Charge) -> None:
        loop = asyncio.get_running_loop()
        until = loop.time() + SETTLE_RETRY_WITHIN
        for delay in SETTLE_RETRY_DELAYS:
            await asyncio.sleep(delay)
            if loop.time() > until:
                break
            try:
                await self._settle(reservation, actual)
            except BudgetUnavailable:
                continue
            log.warning("a budget charge was settled when sent again")
            return
        log.warning("gave up settling a budget charge: its hold lapses within %d s", HOLD_SECONDS)

    def start(self) -> None:
        """Renew the holds of running requests from now on (``_renew_forever``), until ``stop``."""
        if self._renewer is None:
            self._renewer = asyncio.get_running_loop().create_task(self._renew_forever(), name="modelgate-budget-holds")

    async def stop(self) -> None:
        """Stop renewing holds and sending settlements again (the instance stops; what it still holds lapses)."""
        tasks = [*self._resends, *([self._renewer] if self._renewer is not None else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._renewer = None

    async def _renew_forever(self) -> None:
        """Renew the running requests' holds, so a call longer than ``HOLD_SECONDS`` (a long stream, a slow reasoning
        model) stays counted against its key's other requests until it settles."""
        failing = False
        while True:
            await asyncio.sleep(HOLD_SECONDS / RENEWALS_PER_HOLD)
            running = [(list(r.counters), r.id) for r in self._running.values()]
            if not running:
                continue
            try:
                await self.store.renew(running, self.now())
            except BudgetUnavailable:
                if not failing:  # once per outage
                    log.warning("could not renew running requests' budget holds (tried again shortly)")
                failing = True
            else:
                failing = False

    async def _settle(self, reservation: Reservation, actual: Charge) -> None:
        counters = list(reservation.counters)
        await self.store.settle(
            counters, reservation.id, [actual.units(c.limit.measure) for c in counters], reservation.admitted_at
        )

    async def give_back(self, reservation: Reservation) -> None:
        """Drop ``reservation``'s hold, if it was made, charging nothing (its request never started)."""
        await self.settle(reservation, NOTHING)

    async def state(self, key_id: str, budget: Budget) -> list[BudgetState]:
        now = self.now()
        current = counters(key_id, budget, now)
        found = await self.store.read(current, now)
        return [_state(counter, usage) for counter, usage in zip(current, found, strict=True)]


def _state(counter: Counter, usage: Usage) -> BudgetState:
    limit = counter.limit
    if limit.measure == "tokens":  # whole tokens, as configured: /api/usage shows "spent":15, not 15.0
        tokens_left = max(0, limit.units - usage.spent - usage.held)
        return BudgetState(limit.name, limit.units, usage.spent, usage.held, tokens_left, counter.resets_at)
    spent, reserved = usage.spent / NANO_USD, usage.held / NANO_USD
    remaining = max(0.0, limit.value - spent - reserved)
    return BudgetState(limit.name, limit.value, spent, reserved, remaining, counter.resets_at)


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def refused(key_name: str, held: list[Counter], refusals: list[Refusal], now: datetime) -> RateLimited:
    """The 429 for the full counter that keeps the key out longest: a spent one before one only busy, and of
    spent ones the last to reset (a key whose month is spent too, sent back at the day's reset, would only be
    refused again)."""
    spent = [held[refusal.index] for refusal in refusals if not refusal.busy]
    if spent:
        return exhausted(key_name, max(spent, key=lambda counter: counter.resets_at), now)
    return busy(key_name, held[refusals[0].index])


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


def estimate(model: CatalogueModel, request: ChatRequest, *, billed_by_reply: bool = False) -> tuple[Charge, int]:
    """The most ``request`` to ``model`` may cost (its prompt, estimated, + the most it may generate), and
    the prompt part of it. ``billed_by_reply``: ``model``'s upstream says what each reply cost
    (``Provider.reports_cost``), so without prices its USD is unknown, not 0."""
    # Not at import: auth imported this module while Budget lived here, and the CLI loads auth without the providers.
    from modelgate.providers._http import estimate_prompt_tokens

    prompt = estimate_prompt_tokens(request.messages)
    limit = model.parameters.max_new_tokens
    wanted = request.params.max_new_tokens
    completion = min(wanted, limit) if wanted is not None else limit
    charge = Charge.of(prompt, completion, model.pricing)
    if model.pricing is None and billed_by_reply:
        charge = replace(charge, usd_unknown=True)
    return charge, prompt


def worst_case(estimates: Iterable[tuple[Charge, int]]) -> tuple[Charge, int]:
    """The most of several ``estimate`` results, tokens and USD each on its own (one model may generate more, another
    cost more per token), and the largest prompt part."""
    charges = list(estimates)
    return (
        Charge(
            max(c.tokens for c, _ in charges),
            max(c.nano_usd for c, _ in charges),
            any(c.usd_unknown for c, _ in charges),
        ),
        max(prompt for _, prompt in charges),
    )


def actual(obs: Observation | None, reservation: Reservation, catalogue: Catalogue) -> Charge:
    """What the request cost: the usage the upstream reported (or the gateway estimated, ``gateway._relay``);
    for a reply cut before that was known, its prompt estimate + the events relayed; nothing if no reply began."""
    if obs is None:  # no observer (a bare app in a test): keep the reservation as the charge
        return reservation.estimate
    answered = catalogue.by_id.get(obs.model) if obs.model is not None else None
    pricing = answered.pricing if answered is not None else None
    if obs.prompt_tokens is not None and obs.completion_tokens is not None:
        usd = request_cost(obs, pricing) or 0.0  # the ledger's cost: the upstream's figure when it reported one
        return Charge(obs.prompt_tokens + obs.completion_tokens, math.ceil(usd * NANO_USD))
    if obs.relayed_events:
        return Charge.of(reservation.prompt_estimate, obs.relayed_events, pricing)
    return NOTHING


# --- the ledger as the record ----------------------------------------------------------------------


async def restore(budgets: Budgets, ledger: Ledger, keys: Iterable[tuple[str, Budget]], *, started_at: float) -> None:
    """Start each budgeted key's counters of the current periods from the ledger.

    Run once at start (``app.GatewayState.start``): a restarted single instance keeps what its keys spent
    today and this month (the in-process counters died with it), and so do instances that come back to
    a Redis restarted without persistence. In-process, only rows from before ``started_at`` (Unix time: this
    process's start) count: what it served since is counted live; Redis's counters take every row of the period
    (``BudgetCounters.restore`` says how each store combines the two). Failures are logged: the counters then
    start from zero, as they would without a ledger.
    """
    from modelgate.usage_store import UsageFilter  # loaded with the ledger, in the background

    now = budgets.now()
    keys = list(keys)
    try:
        for key_id, budget in keys:
            current = counters(key_id, budget, now)
            spent = []
            for counter in current:
                since = period_start(counter.limit.period, now).timestamp()
                until = started_at if budgets.store.restore_adds else None
                window = UsageFilter(key_id=key_id, since=since, until=until, limit=0)
                totals = (await ledger.report(window)).totals
                if counter.limit.measure == "tokens":
                    spent.append(totals.prompt_tokens + totals.completion_tokens)
                else:
                    spent.append(math.ceil((totals.cost or 0.0) * NANO_USD))
            await budgets.store.restore(current, spent, now)
            budgets.restored(key_id)
    except Exception as exc:  # the ledger or the store is down: count from zero rather than not serve
        log.warning("budgets: could not start the counters from the usage ledger: %s", getattr(exc, "message", exc))
    finally:  # (cancelled or failed too: no request waits for a restore that will not come)
        for key_id, _ in keys:
            budgets.restored(key_id)
