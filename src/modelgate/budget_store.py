"""Where the budget counters live: what every store does (``BudgetCounters``), and the in-process store
(``MemoryCounters``: each worker and instance its own). The Redis one, shared by every process pointing at it, is
``budget_store_redis.py``; ``budgets.py`` reserves and settles through either (its docstring: the design).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from modelgate.budget_rules import REST, Counter
from modelgate.errors import ModelgateError


class BudgetUnavailable(ModelgateError):
    status = 503

    def __init__(self) -> None:
        super().__init__("Budget store unavailable; try again shortly")


class CountersLost(BudgetUnavailable):
    """The store lost its data, these counters with it (a Redis restarted without persistence): ask again once they
    are restored (``Budgets.hold``)."""


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
    #: ``restore`` adds the ledger's figure to what was counted live (in-process), rather than raising the counter to
    #: it (Redis): then a key's first charge must wait for it, or the ledger read before its row was written would
    #: lower that charge away.
    restore_adds: bool

    async def reserve(self, counters: list[Counter], hold_id: str, amounts: list[int], now: datetime) -> list[Refusal]:
        """Atomically: if every counter's spent + held is below its limit, hold ``amounts`` (``REST``: what is left
        of that limit) under ``hold_id`` for ``HOLD_SECONDS`` and return nothing; else hold nothing and return every
        full counter."""
        ...

    async def settle(self, counters: list[Counter], hold_id: str, spent: list[int], now: datetime) -> None:
        """Add ``spent`` (the actual charges) and drop the hold ``hold_id``."""
        ...

    async def renew(self, holds: list[tuple[list[Counter], str]], now: datetime) -> None:
        """Hold each of ``holds`` (counters, hold id) for ``HOLD_SECONDS`` from now; a hold already dropped stays so."""
        ...

    async def read(self, counters: list[Counter], now: datetime) -> list[Usage]: ...

    async def restore(self, counters: list[Counter], spent: list[int], now: datetime) -> None:
        """Start each counter from ``spent``, what the ledger holds: the in-process counters add the rows from
        before this process started to what they counted live since; Redis's, shared by every instance, take the
        larger of the counter and the period's rows (the counter is the figure counted live by every instance; the
        ledger the larger one only where Redis lost what it counted, its data, or a settlement)."""
        ...


#: How long a reservation holds budget unless renewed. Its instance renews it while the request runs and settling
#: drops it; this is for the request whose instance was killed (it never settles): its hold lapses instead of
#: blocking the key to the period's end.
HOLD_SECONDS = 3600


def _refusal(index: int, usage: Usage, limit: int) -> Refusal | None:
    if usage.spent + usage.held < limit:
        return None
    return Refusal(index, busy=usage.spent < limit)


@dataclass
class _Tally:
    expires: float  #: Unix time the period's counter may be forgotten
    spent: int = 0
    holds: dict[str, tuple[float, int]] = field(default_factory=dict)  #: hold id → (lapses at, amount)

    def held(self, now: float) -> int:
        return sum(amount for lapses, amount in self.holds.values() if lapses > now)


class MemoryCounters:
    """One process's counters. ``reserve`` never awaits, so it is atomic under asyncio."""

    restore_adds = True

    def __init__(self) -> None:
        self._tallies: dict[str, _Tally] = {}

    async def reserve(self, counters: list[Counter], hold_id: str, amounts: list[int], now: datetime) -> list[Refusal]:
        stamp = now.timestamp()
        usages = [self._usage(counter.key, stamp) for counter in counters]
        refusals = [
            refusal
            for index, (counter, usage) in enumerate(zip(counters, usages, strict=True))
            if (refusal := _refusal(index, usage, counter.limit.units)) is not None
        ]
        if refusals:
            return refusals
        for counter, usage, amount in zip(counters, usages, amounts, strict=True):
            if amount == REST:
                amount = counter.limit.units - usage.spent - usage.held
            tally = self._tally(counter, now)
            tally.holds = {k: v for k, v in tally.holds.items() if v[0] > stamp}  # lapsed holds go
            tally.holds[hold_id] = (stamp + HOLD_SECONDS, amount)
        return []

    async def settle(self, counters: list[Counter], hold_id: str, spent: list[int], now: datetime) -> None:
        for counter, charge in zip(counters, spent, strict=True):
            tally = self._tally(counter, now)
            tally.spent += charge
            tally.holds.pop(hold_id, None)

    async def renew(self, holds: list[tuple[list[Counter], str]], now: datetime) -> None:
        stamp = now.timestamp()
        for counters, hold_id in holds:
            for counter in counters:
                tally = self._tallies.get(counter.key)
                hold = tally.holds.get(hold_id) if tally is not None else None
                if tally is not None and hold is not None:
                    tally.holds[hold_id] = (stamp + HOLD_SECONDS, hold[1])

    async def read(self, counters: list[Counter], now: datetime) -> list[Usage]:
        # ``now``, the clock ``reserve`` stamped the holds with (not time.time(): a hold would lapse by another clock).
        stamp = now.timestamp()
        return [self._usage(counter.key, stamp) for counter in counters]

    async def restore(self, counters: list[Counter], spent: list[int], now: datetime) -> None:
        for counter, amount in zip(counters, spent, strict=True):
            # Live spending here is what this process admitted since it started, which the ledger rows before
            # its start do not hold: the sum is the period's (a request served meanwhile must not hide them).
            self._tally(counter, now).spent += amount

    def _usage(self, key: str, stamp: float) -> Usage:
        tally = self._tallies.get(key)
        if tally is None or tally.expires <= stamp:
            return Usage()
        return Usage(tally.spent, tally.held(stamp))

    def _tally(self, counter: Counter, now: datetime) -> _Tally:
        stamp = now.timestamp()
        tally = self._tallies.get(counter.key)
        if tally is None or tally.expires <= stamp:
            # A new period began somewhere: forget the ended ones.
            self._tallies = {k: v for k, v in self._tallies.items() if v.expires > stamp}
            tally = self._tallies[counter.key] = _Tally(stamp + counter.ttl(now))
        return tally
