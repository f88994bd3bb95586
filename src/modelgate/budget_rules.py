"""What a key may spend and what a request costs, by UTC period: a key's ``Budget`` and its ``Limit``s, a
request's ``Charge``, and each limit's ``Counter`` in the current period (``period_of``).

Plain values, no store and no I/O: the keys (``auth``, ``runtime_keys``) validate their ``Budget`` here, and
``budgets.py`` (reserve, then settle: the design is in its docstring) and the counter stores count in these units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    from modelgate.catalogue import Pricing

Measure = Literal["tokens", "usd"]
Period = Literal["day", "month"]

#: USD are counted in nano-dollars: integers keep Redis' INCRBY exact, and a one-token charge still counts.
NANO_USD = 1_000_000_000
#: The largest limits a budget takes: counters are 64-bit integers (Redis' INCRBY), spending included on top.
MAX_TOKENS = 10**15
MAX_USD = 10**9
#: The smallest USD limit a budget takes: one nano-dollar, its unit (a smaller one was counted as 0 and refused
#: every request, priced or not, while /api/usage showed it as left).
MIN_USD = 1 / NANO_USD
#: Counters outlive their period by this much (seconds), so a late settlement still finds its counter.
COUNTER_GRACE = 3600


class Budget(BaseModel):
    """What a key may spend: any of the four limits, at least one (a key without a budget has no ``Budget``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tokens_per_day: Annotated[
        int | None, Field(gt=0, le=MAX_TOKENS, description="Prompt + completion tokens per UTC day")
    ] = None
    tokens_per_month: Annotated[
        int | None, Field(gt=0, le=MAX_TOKENS, description="Prompt + completion tokens per UTC month")
    ] = None
    usd_per_day: Annotated[
        float | None, Field(ge=MIN_USD, le=MAX_USD, allow_inf_nan=False, description="USD per UTC day")
    ] = None
    usd_per_month: Annotated[
        float | None, Field(ge=MIN_USD, le=MAX_USD, allow_inf_nan=False, description="USD per UTC month")
    ] = None

    @model_validator(mode="after")
    def _at_least_one(self) -> Budget:
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
    #: An estimate whose USD only the reply will tell (an unpriced model whose upstream bills by reply): it holds
    #: the rest of each USD limit (``REST``).
    usd_unknown: bool = False

    @classmethod
    def of(
        cls, prompt_tokens: int, completion_tokens: int, pricing: Pricing | None, cached_tokens: int | None = None
    ) -> Charge:
        """``cached_tokens`` (of the prompt, as reported) can only lower the USD: ``Pricing.cost``, the ledger's."""
        usd = pricing.cost(prompt_tokens, completion_tokens, cached_tokens) if pricing is not None else 0.0
        return cls(prompt_tokens + completion_tokens, math.ceil(usd * NANO_USD))

    def units(self, measure: Measure) -> int:
        return self.tokens if measure == "tokens" else self.nano_usd

    def held(self, measure: Measure) -> int:
        """What reserving this charge holds in a ``measure`` counter."""
        return REST if measure == "usd" and self.usd_unknown else self.units(measure)


NOTHING = Charge(0, 0)
#: A hold of "the rest": what is left of the counter's limit (its limit less spent and held) when it is made.
REST = -1


# --- periods ---------------------------------------------------------------------------------------


def period_start(period: Period, now: datetime) -> datetime:
    """When the period containing ``now`` (UTC) began."""
    start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return start if period == "day" else start.replace(day=1)


def period_of(period: Period, now: datetime) -> tuple[str, datetime]:
    """The period containing ``now`` (UTC): its label (``2026-12-02`` / ``2026-12``) and when the next begins."""
    start = period_start(period, now)
    if period == "day":
        return start.strftime("%Y-%m-%d"), start + timedelta(days=1)
    if start.month == 12:
        return start.strftime("%Y-%m"), start.replace(year=start.year + 1, month=1)
    return start.strftime("%Y-%m"), start.replace(month=start.month + 1)


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
