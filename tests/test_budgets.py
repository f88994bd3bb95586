"""Budgets per key (``budgets.py``): the model, the periods, both counter stores, and 429s over a real socket."""

from __future__ import annotations

import asyncio
import random
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio
from pydantic import ValidationError

from modelgate import budget_store, budget_store_redis
from modelgate import budgets as budgets_module
from modelgate.app import create_app
from modelgate.auth import key_digest, load_keyring
from modelgate.budget_rules import NANO_USD, REST, Budget, Charge, counters, period_of
from modelgate.budget_store import BudgetCounters, BudgetUnavailable, MemoryCounters
from modelgate.budget_store_redis import RedisCounters
from modelgate.budgets import SETTLE_RETRY_DELAYS, Budgets
from modelgate.catalogue import Pricing, load_catalogue
from modelgate.errors import CatalogueError, RateLimited
from modelgate.ledger import Ledger
from modelgate.providers import PROVIDERS
from modelgate.providers.chat_completions import ChatCompletionsProvider
from modelgate.settings import Settings
from tests.catalogue_files import model_toml, write_catalogue
from tests.cli_process import wait_for
from tests.fakes import Fakes, Fault, Reply
from tests.redis_server import free_port, running_redis
from tests.servers import serve_in_thread

# --- the model and the periods ---------------------------------------------------------------------


def ledger_settings(catalogue: Path, tmp_path: Path, fakes: Fakes, **more: Any) -> Settings:
    """The settings of a service of ``catalogue`` in front of the fakes, its ledger a SQLite file in ``tmp_path``."""
    return Settings(
        config_path=catalogue,
        database_url=f"sqlite:///{tmp_path / 'usage.sqlite3'}",
        **fakes.settings_overrides(),  # type: ignore[arg-type]
        **more,
    )


def test_a_budget_needs_at_least_one_positive_limit() -> None:
    with pytest.raises(ValidationError, match="set at least one of tokens_per_day"):
        Budget()
    with pytest.raises(ValidationError, match="greater than 0"):
        Budget(tokens_per_day=0)
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        Budget.model_validate({"tokens_per_week": 5})
    with pytest.raises(ValidationError):
        Budget(usd_per_month=float("inf"))
    # Below one nano-dollar (the counters' unit) a limit counted as 0: every request refused, priced or not.
    for tiny in (1e-300, 4e-10):
        with pytest.raises(ValidationError, match=r"greater than or equal to 0\.000000001"):
            Budget(usd_per_day=tiny)
    assert [limit.units for limit in Budget(usd_per_month=1e-9).limits()] == [1]
    budget = Budget(tokens_per_month=10, usd_per_day=0.5)
    assert [(limit.name, limit.units) for limit in budget.limits()] == [
        ("tokens_per_month", 10),
        ("usd_per_day", NANO_USD // 2),
    ]


@pytest.mark.parametrize(
    ("now", "day", "month"),
    [
        ("2026-12-02T10:30:00", ("2026-12-02", "2026-12-03"), ("2026-12", "2027-01-01")),
        ("2026-12-31T23:59:59", ("2026-12-31", "2027-01-01"), ("2026-12", "2027-01-01")),
        ("2028-02-29T00:00:00", ("2028-02-29", "2028-03-01"), ("2028-02", "2028-03-01")),
    ],
)
def test_periods_are_utc_days_and_months(now: str, day: tuple[str, str], month: tuple[str, str]) -> None:
    moment = datetime.fromisoformat(now).replace(tzinfo=UTC)
    for period, (label, next_start) in (("day", day), ("month", month)):
        found_label, resets_at = period_of(period, moment)  # type: ignore[arg-type]
        assert (found_label, resets_at) == (label, datetime.fromisoformat(next_start).replace(tzinfo=UTC))


def test_the_keys_file_carries_a_budget_table(tmp_path: Path) -> None:
    (tmp_path / "keys.toml").write_text(
        '[[keys]]\nname = "ci"\nkey = "k-ci"\n[keys.budget]\ntokens_per_day = 1000\nusd_per_month = 2.5\n'
        '\n[[keys]]\nname = "free"\nkey = "k-free"\n',
        encoding="utf-8",
    )
    path = write_catalogue(tmp_path / "catalogue.toml", model_toml(), header='[server]\nkeys_file = "keys.toml"\n')
    keys = {key.name: key for key in load_keyring(Settings(), load_catalogue(path)).keys}
    assert keys["ci"].budget == Budget(tokens_per_day=1000, usd_per_month=2.5)
    assert keys["free"].budget is None

    (tmp_path / "keys.toml").write_text(
        '[[keys]]\nname = "ci"\nkey = "k-ci"\n[keys.budget]\ntokens_per_day = -1\n', encoding="utf-8"
    )
    with pytest.raises(CatalogueError, match=r"keys\[0\] \(ci\).*budget.tokens_per_day.*greater than 0"):
        load_keyring(Settings(), load_catalogue(path))


# --- the counter stores -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with running_redis() as url:
        yield url


@pytest.fixture(params=["memory", "redis"])
def store_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@asynccontextmanager
async def stores(kind: str, redis_url: str, count: int = 1) -> AsyncIterator[list[BudgetCounters]]:
    """``count`` handles on one store: for Redis, separate clients, as separate instances would have."""
    if kind == "memory":
        shared = MemoryCounters()
        yield [shared] * count
        return
    prefix = f"test-{uuid.uuid4().hex}:"
    clients = [redis.asyncio.Redis.from_url(redis_url) for _ in range(count)]
    try:
        yield [RedisCounters(lambda client=client: client, prefix) for client in clients]  # type: ignore[misc]
    finally:
        for client in clients:
            await client.aclose()


class Clock:
    def __init__(self, iso: str) -> None:
        self.now = datetime.fromisoformat(iso).replace(tzinfo=UTC).timestamp()

    def __call__(self) -> float:
        return self.now


def holds_last_a_second(monkeypatch: pytest.MonkeyPatch) -> None:
    """``HOLD_SECONDS`` is 1 wherever it is read: the stores (a hold's life) and ``Budgets`` (how often it renews)."""
    for module in (budget_store, budget_store_redis, budgets_module):
        monkeypatch.setattr(module, "HOLD_SECONDS", 1)


def refusal(error: pytest.ExceptionInfo[RateLimited]) -> tuple[int, str, dict[str, object]]:
    return int(error.value.headers["Retry-After"]), error.value.message, error.value.data


def test_admitted_while_below_busy_while_held_exhausted_when_spent(store_kind: str, redis_url: str) -> None:
    clock = Clock("2026-12-02T10:00:00")
    budget = Budget(tokens_per_day=100)

    async def scenario() -> None:
        async with stores(store_kind, redis_url) as (store,):
            budgets = Budgets(store, clock)
            first = await budgets.reserve("k1", "ci", budget, Charge(60, 0), 10)
            second = await budgets.reserve("k1", "ci", budget, Charge(60, 0), 10)  # 60 < 100: admitted
            with pytest.raises(RateLimited) as held:  # 120 held: nothing spent yet, so "busy", not exhausted
                await budgets.reserve("k1", "ci", budget, Charge(1, 0), 1)
            assert refusal(held) == (
                1,
                "Budget nearly spent: the rest of key 'ci''s 100 tokens per day is held by its running requests; "
                "try again when one has ended",
                {"retryAfter": 1, "budget": "tokens_per_day", "resetsAt": "2026-12-03T00:00:00Z"},
            )
            # Another key's budget is its own.
            await budgets.reserve("k2", "other", budget, Charge(60, 0), 10)

            await budgets.settle(first, Charge(30, 0))
            [state] = await budgets.state("k1", budget)
            assert (state.spent, state.reserved, state.remaining) == (30, 60, 10)
            await budgets.settle(second, Charge(70, 0))
            with pytest.raises(RateLimited) as spent:
                await budgets.reserve("k1", "ci", budget, Charge(1, 0), 1)
            assert refusal(spent) == (
                14 * 3600,  # to midnight UTC
                "Budget exhausted: key 'ci' has spent its 100 tokens per day; it resets at 2026-12-03T00:00:00Z",
                {"retryAfter": 14 * 3600, "budget": "tokens_per_day", "resetsAt": "2026-12-03T00:00:00Z"},
            )
            [state] = await budgets.state("k1", budget)
            assert (state.spent, state.reserved, state.remaining) == (100, 0, 0)

            clock.now += 14 * 3600  # the next UTC day: a fresh budget
            await budgets.reserve("k1", "ci", budget, Charge(60, 0), 10)

    asyncio.run(scenario())


def test_a_key_refused_by_several_budgets_is_sent_back_when_all_of_them_let_it_in(
    store_kind: str, redis_url: str
) -> None:
    clock = Clock("2026-12-02T10:00:00")
    month_message = "Budget exhausted: key 'ci' has spent its 100 tokens per month; it resets at 2027-01-01T00:00:00Z"
    to_january = (29 * 24 + 14) * 3600

    async def scenario() -> None:
        async with stores(store_kind, redis_url) as (store,):
            budgets = Budgets(store, clock)
            # The day and the month both spent: the day resets first, but the month keeps the key out until January.
            budget = Budget(tokens_per_day=100, tokens_per_month=100)
            await budgets.settle(await budgets.reserve("k1", "ci", budget, Charge(100, 0), 10), Charge(100, 0))
            with pytest.raises(RateLimited) as both:
                await budgets.reserve("k1", "ci", budget, Charge(1, 0), 1)
            assert refusal(both)[1:] == (
                month_message,
                {"retryAfter": to_january, "budget": "tokens_per_month", "resetsAt": "2027-01-01T00:00:00Z"},
            )
            # The day only held by a running request, the month spent: not "try again in a second".
            budget = Budget(tokens_per_day=1000, tokens_per_month=100)
            await budgets.reserve("k2", "ci", budget, Charge(1000, 0), 10)
            [_, month] = counters("k2", budget, budgets.now())
            await store.restore([month], [100], budgets.now())
            with pytest.raises(RateLimited) as spent_and_busy:
                await budgets.reserve("k2", "ci", budget, Charge(1, 0), 1)
            assert refusal(spent_and_busy)[1] == month_message

    asyncio.run(scenario())


def test_a_hold_never_settled_lapses(store_kind: str, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A request whose instance was killed never settles: its hold must not block the key until the period ends."""
    holds_last_a_second(monkeypatch)
    clock = Clock("2026-12-02T10:00:00")
    budget = Budget(tokens_per_month=100)

    async def scenario() -> None:
        async with stores(store_kind, redis_url) as (store,):
            dying, budgets = (Budgets(store, clock if store_kind == "memory" else time.time) for _ in range(2))
            await dying.reserve("k", "ci", budget, Charge(100, 0), 10)
            await dying.stop()  # and then its instance dies: nothing renews or settles the hold
            with pytest.raises(RateLimited, match="held by its running requests"):
                await budgets.reserve("k", "ci", budget, Charge(1, 0), 1)
            clock.now += 2  # the memory store's clock; Redis lapses it on its own clock
            deadline = time.monotonic() + 30
            while True:
                try:
                    await budgets.reserve("k", "ci", budget, Charge(1, 0), 1)
                    break
                except RateLimited:
                    assert time.monotonic() < deadline, "the hold never lapsed"
                    await asyncio.sleep(0.1)
            [state] = await budgets.state("k", budget)
            assert state.spent == 0  # never charged: its instance died with the request

    asyncio.run(scenario())


def test_a_renewal_keeps_a_running_hold_and_brings_back_no_settled_one(store_kind: str, redis_url: str) -> None:
    clock = Clock("2026-12-02T10:00:00")
    budget = Budget(tokens_per_day=100)

    async def scenario() -> None:
        async with stores(store_kind, redis_url) as (store,):
            budgets = Budgets(store, clock)
            running = await budgets.reserve("k", "ci", budget, Charge(30, 0), 10)
            ended = await budgets.reserve("k", "ci", budget, Charge(20, 0), 10)
            await budgets.settle(ended, Charge(15, 0))
            current = counters("k", budget, budgets.now())
            await store.renew([(current, running.id), (current, ended.id)], budgets.now())
            assert [(s.spent, s.reserved) for s in await budgets.state("k", budget)] == [(15, 30)]

    asyncio.run(scenario())


@pytest.mark.parametrize("counted_in", ["memory", "redis"])
def test_a_call_longer_than_a_holds_life_stays_held_until_it_ends(
    counted_in: str, fakes: Fakes, tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hold lapses ``HOLD_SECONDS`` after it was made (an hour), so that a killed instance's requests do not block
    their key forever; a stream (or a slow reasoning model) running longer stopped counting, and the key's next
    requests passed a budget the stream still spends. Its instance now renews it while it runs."""
    holds_last_a_second(monkeypatch)
    fakes.ollama.default = Reply(tokens=["x"] * 60, delay=0.05)  # 40 tokens in: 2 s, twice the hold's life
    more = {"redis_url": redis_url} if counted_in == "redis" else {}
    with serve_in_thread(create_app(budgeted_settings(fakes, tmp_path, **more))) as url:
        with httpx.stream(
            "POST", f"{url}/api/ai/ollama/tiny/chat", json={"messages": MESSAGES}, headers=bearer("capped"), timeout=30
        ) as streaming:
            assert streaming.status_code == 200
            relayed = 0
            lines = streaming.iter_lines()
            while relayed < 40:
                relayed += next(lines).startswith("0:")
            # 2 s into the stream, its hold (8 + 100 of the key's 40 tokens) still fills the budget.
            refused = chat(url, "capped")
            assert refused.status_code == 429, refused.text
            assert refused.headers["Retry-After"] == "1"
            assert budget_state(url, "capped")["tokens_per_day"]["reserved"] == PROMPT_ESTIMATE + 100
            for _ in lines:
                pass
        assert settled(url, "capped")["tokens_per_day"]["spent"] == 11 + 60  # ended: its hold gone, its usage charged


def test_an_unreachable_redis_fails_closed_with_503() -> None:
    async def scenario() -> None:
        client = redis.asyncio.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=2)
        try:
            budgets = Budgets(RedisCounters(lambda: client, "test:"))
            with pytest.raises(BudgetUnavailable) as refused:
                await budgets.reserve("k", "ci", Budget(tokens_per_day=10), Charge(1, 0), 1)
            assert (refused.value.status, refused.value.message) == (
                503,
                "Budget store unavailable; try again shortly",
            )
        finally:
            await client.aclose()

    asyncio.run(scenario())


def test_a_settlement_the_store_missed_is_sent_again_and_charged_once(redis_url: str) -> None:
    """Found probing: when Redis did not answer as a stream ended, its hold kept the whole estimate for an hour (the
    key "busy") and its cost was never charged. The settlement is sent again; sending one that did arrive again
    charges nothing more (the settled mark)."""

    async def scenario() -> None:
        good = redis.asyncio.Redis.from_url(redis_url)
        gone = redis.asyncio.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
        current = [good]
        budgets = Budgets(RedisCounters(lambda: current[0], f"test-resend-{uuid.uuid4().hex}:"))
        budget = Budget(tokens_per_day=100)
        try:
            reservation = await budgets.reserve("k", "ci", budget, Charge(40, 0), 10)
            current[0] = gone
            with pytest.raises(BudgetUnavailable):
                await budgets.settle(reservation, Charge(15, 0))
            current[0] = good  # the store is back
            [state] = await budgets.state("k", budget)
            assert (state.spent, state.reserved) == (0, 40)  # not settled yet: the first resend is due later
            await asyncio.sleep(SETTLE_RETRY_DELAYS[0] + 0.5)
            [state] = await budgets.state("k", budget)
            assert (state.spent, state.reserved) == (15, 0)
            await budgets.settle(reservation, Charge(15, 0))  # a resend of one that arrived: no second charge
            [state] = await budgets.state("k", budget)
            assert (state.spent, state.reserved) == (15, 0)
        finally:
            await budgets.stop()
            await good.aclose()
            await gone.aclose()

    asyncio.run(scenario())


def test_restore_adds_to_live_counts_in_process_and_raises_counters_to_it_in_redis(
    store_kind: str, redis_url: str
) -> None:
    clock = Clock("2026-12-02T10:00:00")
    budget = Budget(tokens_per_day=100, tokens_per_month=1000)

    async def scenario() -> None:
        async with stores(store_kind, redis_url) as (store,):
            budgets = Budgets(store, clock)
            day, month = counters("k", budget, budgets.now())
            await budgets.settle(await budgets.reserve("k", "ci", budget, Charge(10, 0), 5), Charge(7, 0))
            # The day and the month both counted 7 live. In the process, that is all this process admitted since its
            # start, and the ledger's spending from before it is added. In Redis the ledger's figure is the period's
            # (every row): a counter below it lost what it counted (Redis lost its data), one above it has charges
            # whose rows are not written yet; each keeps the larger.
            await store.restore([day, month], [5, 500], budgets.now())
            expected = [12, 507] if store_kind == "memory" else [7, 500]
            assert [s.spent for s in await budgets.state("k", budget)] == expected
            # Another key's counters are empty: restored.
            other = counters("k2", budget, budgets.now())
            await store.restore(other, [50, 500], budgets.now())
            assert [s.spent for s in await budgets.state("k2", budget)] == [50, 500]

    asyncio.run(scenario())


def test_usd_budget_per_month_counts_the_priced_cost(store_kind: str, redis_url: str) -> None:
    clock = Clock("2026-12-30T12:00:00")
    budget = Budget(usd_per_month=0.001, tokens_per_day=1_000_000)
    pricing = Pricing(input=1.0, output=2.0)  # USD per million tokens
    one = Charge.of(100, 200, pricing)  # (100 * 1 + 200 * 2) / 1e6 = 0.0005 USD
    assert one == Charge(300, NANO_USD // 2000)

    async def scenario() -> None:
        async with stores(store_kind, redis_url) as (store,):
            budgets = Budgets(store, clock)
            for _ in range(2):
                await budgets.settle(await budgets.reserve("k", "ci", budget, one, 100), one)
            with pytest.raises(RateLimited) as spent:
                await budgets.reserve("k", "ci", budget, one, 100)
            retry_after, message, data = refusal(spent)
            assert message == (
                "Budget exhausted: key 'ci' has spent its 0.001 USD per month; it resets at 2027-01-01T00:00:00Z"
            )
            assert retry_after == 36 * 3600 and data["budget"] == "usd_per_month"
            states = {state.name: state for state in await budgets.state("k", budget)}
            assert states["usd_per_month"].spent == pytest.approx(0.001)
            assert states["tokens_per_day"].spent == 600

    asyncio.run(scenario())


def test_a_usd_known_only_from_the_reply_holds_the_rest_of_each_usd_limit(store_kind: str, redis_url: str) -> None:
    """An estimate without USD (an unpriced model its upstream bills by reply) holds what is left of each USD limit,
    whatever else the key holds, so the key's next request is told its budget is held; its tokens are held as any."""
    clock = Clock("2026-12-02T10:00:00")
    budget = Budget(usd_per_day=0.001, usd_per_month=0.01, tokens_per_day=1000)
    priced, unknown = Charge(100, 200_000), Charge(100, 0, usd_unknown=True)  # 0.0002 USD; unknown

    async def scenario() -> None:
        async with stores(store_kind, redis_url) as (store,):
            budgets = Budgets(store, clock)
            await budgets.settle(await budgets.reserve("k", "ci", budget, priced, 10), Charge(50, 300_000))
            running = await budgets.reserve("k", "ci", budget, priced, 10)
            unpriced = await budgets.reserve("k", "ci", budget, unknown, 10)
            states = {state.name: state for state in await budgets.state("k", budget)}
            nothing = pytest.approx(0, abs=1e-12)  # (USD shown as floats)
            assert (states["usd_per_day"].reserved, states["usd_per_day"].remaining) == (pytest.approx(0.0007), nothing)
            assert (states["usd_per_month"].reserved, states["usd_per_month"].remaining) == (
                pytest.approx(0.0097),
                nothing,
            )
            assert (states["tokens_per_day"].reserved, states["tokens_per_day"].remaining) == (200, 750)
            with pytest.raises(RateLimited) as held:
                await budgets.reserve("k", "ci", budget, Charge(1, 0), 1)
            assert refusal(held)[0] == 1 and refusal(held)[2]["budget"] == "usd_per_day"
            if store_kind == "redis":  # a reservation sent again (its reply lost) is held once, not a rest twice
                [day] = [c for c in counters("k", budget, budgets.now()) if c.limit.name == "usd_per_day"]
                assert await store.reserve([day], unpriced.id, [REST], budgets.now()) == []
                assert (await budgets.state("k", budget))[1].reserved == pytest.approx(0.0007)  # usd_per_day

            await budgets.settle(unpriced, Charge(60, 900_000))  # its reply said 0.0009: the day is 0.0002 over
            states = {state.name: state for state in await budgets.state("k", budget)}
            assert (states["usd_per_day"].spent, states["usd_per_day"].reserved) == (
                pytest.approx(0.0012),
                pytest.approx(0.0002),
            )
            assert (states["usd_per_month"].spent, states["usd_per_month"].reserved) == (
                pytest.approx(0.0012),
                pytest.approx(0.0002),
            )
            await budgets.settle(running, Charge(50, 100_000))
            with pytest.raises(RateLimited, match=r"has spent its 0\.001 USD per day"):
                await budgets.reserve("k", "ci", budget, unknown, 10)

    asyncio.run(scenario())


def test_concurrent_requests_overshoot_by_at_most_one(store_kind: str, redis_url: str) -> None:
    """Two "instances" (two handles on one store) run 40 clients that keep asking until the budget is
    exhausted; each admitted request holds its estimate (100) and is charged 50-100. The total charged
    reaches the limit and passes it by less than one request."""
    limit, estimate = 1000, 100
    budget = Budget(tokens_per_day=limit)
    rng = random.Random(14)
    charged: list[int] = []

    async def client(budgets: Budgets) -> None:
        while True:
            try:
                reservation = await budgets.reserve("k", "ci", budget, Charge(estimate, 0), 10)
            except RateLimited as exc:
                if exc.retry_after != 1:
                    return  # exhausted
                await asyncio.sleep(0.001)  # busy: a running request will settle soon
                continue
            await asyncio.sleep(rng.random() / 100)
            cost = rng.randint(50, estimate)
            charged.append(cost)
            await budgets.settle(reservation, Charge(cost, 0))

    async def scenario() -> None:
        async with stores(store_kind, redis_url, count=2) as handles:
            instances = [Budgets(store) for store in handles]
            await asyncio.gather(*(client(instances[i % 2]) for i in range(40)))
            [state] = await instances[0].state("k", budget)
            assert (state.spent, state.reserved) == (sum(charged), 0)

    asyncio.run(scenario())
    assert limit <= sum(charged) < limit + estimate


# --- over a real socket ---------------------------------------------------------------------------------

KEYS = {"capped": "mg-budget-capped", "cut": "mg-budget-cut", "free": "mg-budget-free"}
KEYS_TOML = f"""
[[keys]]
name = "capped"
key = "{KEYS["capped"]}"
[keys.budget]
tokens_per_day = 40

[[keys]]
name = "cut"
key = "{KEYS["cut"]}"
[keys.budget]
tokens_per_month = 100000

[[keys]]
name = "free"
key = "{KEYS["free"]}"
"""
MESSAGES = [{"role": "user", "content": "Hi!"}]
PROMPT_ESTIMATE = 8  # providers._http.estimate_prompt_tokens(MESSAGES): 4 per message + 1 + 3 to prime


def key_id(key: str) -> str:
    return key_digest(KEYS[key]).hex()[:12]


def budgeted_settings(fakes: Fakes, tmp_path: Path, **more: Any) -> Settings:
    """One model, the keys of ``KEYS_TOML`` and a SQLite ledger in ``tmp_path``."""
    (tmp_path / "keys.toml").write_text(KEYS_TOML, encoding="utf-8")
    catalogue = write_catalogue(
        tmp_path / "catalogue.toml", model_toml("acme", "tiny"), header='[server]\nkeys_file = "keys.toml"\n'
    )
    return ledger_settings(catalogue, tmp_path, fakes, **more)


@pytest.fixture
def service(fakes: Fakes, tmp_path: Path) -> Iterator[str]:
    with serve_in_thread(create_app(budgeted_settings(fakes, tmp_path))) as url:
        yield url


def chat(url: str, key: str) -> httpx.Response:
    return httpx.post(f"{url}/api/ai/ollama/tiny/chat", json={"messages": MESSAGES}, headers=bearer(key), timeout=30)


def completion(url: str, key: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": "acme/tiny", "messages": MESSAGES},
        headers=bearer(key),
        timeout=30,
    )


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[key]}"}


def budget_state(url: str, key: str) -> dict[str, dict[str, object]]:
    answer = httpx.get(f"{url}/api/usage?limit=0", headers=bearer(key), timeout=30)
    assert answer.status_code == 200, answer.text
    return {entry["budget"]: entry for entry in answer.json()["budget"]}


def settled(url: str, key: str) -> dict[str, dict[str, object]]:
    """The key's budget once no request holds a reservation (a request settles an instant after its last byte)."""

    def state() -> dict[str, dict[str, object]] | None:
        found = budget_state(url, key)
        return found if all(entry["reserved"] == 0 for entry in found.values()) else None

    return wait_for(state, "the budget to be settled")


def test_a_spent_budget_gives_429_with_its_reset_time_on_both_surfaces(service: str) -> None:
    # Each request costs 11 + 4 = 15 tokens (the fake's usage) and holds 8 + 100 while it runs.
    for call in (chat, completion, chat):
        assert call(service, "capped").status_code == 200
        settled(service, "capped")
    assert settled(service, "capped")["tokens_per_day"] == {
        "budget": "tokens_per_day",
        "limit": 40,
        "spent": 45,
        "reserved": 0,
        "remaining": 0,
        "resetsAt": (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT00:00:00Z"),
    }

    refused = chat(service, "capped")
    assert refused.status_code == 429
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    retry_after = int(refused.headers["retry-after"])
    assert abs(retry_after - (tomorrow.timestamp() - time.time())) < 60
    resets = tomorrow.strftime("%Y-%m-%dT%H:%M:%SZ")
    message = f"Budget exhausted: key 'capped' has spent its 40 tokens per day; it resets at {resets}"
    assert refused.json() == {
        "statusCode": 429,
        "statusMessage": message,
        "data": {"retryAfter": retry_after, "budget": "tokens_per_day", "resetsAt": resets},
    }
    openai = completion(service, "capped")
    assert openai.status_code == 429
    assert abs(int(openai.headers["retry-after"]) - retry_after) <= 1
    assert openai.json()["error"]["message"] == message
    assert openai.json()["error"]["code"] == "rate_limit_exceeded"

    # A key without a budget is not touched, and has no budget to show.
    assert chat(service, "free").status_code == 200
    assert httpx.get(f"{service}/api/usage", headers=bearer("free"), timeout=30).json()["budget"] is None
    # A refused request reached no upstream and has no ledger row: three rows for the capped key.
    rows = httpx.get(f"{service}/api/usage", headers=bearer("capped"), timeout=30).json()
    assert (
        rows["totals"]["requests"] == 3 and rows["totals"]["prompt_tokens"] + rows["totals"]["completion_tokens"] == 45
    )


def test_a_restarted_instance_starts_its_budgets_from_the_ledger(fakes: Fakes, tmp_path: Path) -> None:
    """The in-process counters die with the process; the ledger (SQLite here) is the record they restart from."""
    (tmp_path / "keys.toml").write_text(KEYS_TOML, encoding="utf-8")
    catalogue = write_catalogue(
        tmp_path / "catalogue.toml", model_toml("acme", "tiny"), header='[server]\nkeys_file = "keys.toml"\n'
    )
    settings = ledger_settings(catalogue, tmp_path, fakes)
    with serve_in_thread(create_app(settings)) as url:
        for _ in range(3):
            assert chat(url, "capped").status_code == 200
            settled(url, "capped")
        assert chat(url, "capped").status_code == 429
    # Stopped (the ledger wrote every row); a new process with the same database:
    with serve_in_thread(create_app(settings)) as url:
        wait_for(lambda: budget_state(url, "capped")["tokens_per_day"]["spent"] == 45, "the counters restored")
        refused = chat(url, "capped")
        assert refused.status_code == 429
        assert refused.json()["statusMessage"].startswith("Budget exhausted: key 'capped' has spent its 40 tokens")
        assert chat(url, "cut").status_code == 200  # a key that spent nothing is unaffected


def test_an_instance_restarted_after_redis_lost_its_data_under_it_gets_the_days_spending_back(
    fakes: Fakes, tmp_path: Path, redis_url: str
) -> None:
    """Redis lost its data under a running instance, whose day then began again from zero until it restarted and
    read the ledger. But the first request to end after the loss had created the counter, and a counter that existed
    was taken as counted live, the ledger's figure dropped: the restarted instance still knew only what was spent
    since the loss, and the key could spend its day again."""
    settings = budgeted_settings(fakes, tmp_path, redis_url=redis_url)
    redis.Redis.from_url(redis_url).flushdb()
    with serve_in_thread(create_app(settings)) as url:
        assert chat(url, "capped").status_code == 200
        settled(url, "capped")
        redis.Redis.from_url(redis_url).flushdb()  # Redis restarted without persistence; the instance runs on
        assert chat(url, "capped").status_code == 200
        settled(url, "capped")
    # Stopped (the ledger wrote both rows: 15 tokens each); started again with the same ledger and Redis:
    with serve_in_thread(create_app(settings)) as url:
        wait_for(lambda: budget_state(url, "capped")["tokens_per_day"]["spent"] == 30, "the day's spending restored")
        assert budget_state(url, "capped")["tokens_per_day"]["remaining"] == 40 - 30


def test_redis_losing_its_data_under_a_running_instance_takes_the_days_spending_back_from_the_ledger(
    fakes: Fakes, tmp_path: Path, redis_url: str
) -> None:
    """Redis restarted without persistence under a running instance: its budget counters began the day again from
    zero until the instance restarted, and the key could spend its day twice. The admission that finds the loss (the
    limiter's epoch) now has the counters read from the ledger again, before its own request holds anything."""
    settings = budgeted_settings(fakes, tmp_path, redis_url=redis_url)
    redis.Redis.from_url(redis_url).flushdb()
    with serve_in_thread(create_app(settings)) as url:
        assert chat(url, "capped").status_code == 200
        settled(url, "capped")

        def rows() -> int | None:
            found = httpx.get(f"{url}/api/usage?limit=0", headers=bearer("capped"), timeout=30).json()
            return found["totals"]["requests"] or None

        wait_for(rows, "the request's ledger row")
        redis.Redis.from_url(redis_url).flushdb()  # the day's 15 tokens, and every lease, gone from Redis
        assert chat(url, "capped").status_code == 200
        assert settled(url, "capped")["tokens_per_day"]["spent"] == 15 + 15


def test_a_request_ending_before_the_ledger_was_read_does_not_hide_the_days_spending_in_redis(
    fakes: Fakes, tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review: Redis lost its data and the fleet restarted; the first request of a key to end before the
    instance had read the ledger (it opens in the background) created the counter with its own charge, so the
    ledger's figure, set only where no counter exists, was dropped: the key spent its whole day again."""
    settings = budgeted_settings(fakes, tmp_path, redis_url=redis_url)
    redis.Redis.from_url(redis_url).flushdb()
    with serve_in_thread(create_app(settings)) as url:
        for _ in range(3):
            assert chat(url, "capped").status_code == 200
            settled(url, "capped")
        assert chat(url, "capped").status_code == 429
    redis.Redis.from_url(redis_url).flushdb()  # Redis restarted without persistence; the instance restarts too
    ledger_read = threading.Event()
    report = Ledger.report

    async def slow_report(self: Ledger, query: Any) -> Any:  # a ledger slow to open (a driver, a migration lock)
        await asyncio.to_thread(ledger_read.wait)
        return await report(self, query)

    monkeypatch.setattr(Ledger, "report", slow_report)
    with serve_in_thread(create_app(settings)) as url:
        first: list[int] = []
        request = threading.Thread(target=lambda: first.append(chat(url, "capped").status_code))
        request.start()
        request.join(timeout=2)  # (ended already without the fix; with it, it waits for the ledger)
        ledger_read.set()
        request.join()
        assert first == [429]
        assert chat(url, "capped").status_code == 429


def test_token_figures_are_whole_numbers_on_the_wire(service: str) -> None:
    # As the README shows them ("spent":15): a token is not divisible, so 15.0 would only puzzle a client.
    assert chat(service, "capped").status_code == 200
    settled(service, "capped")
    raw = httpx.get(f"{service}/api/usage?limit=0", headers=bearer("capped"), timeout=30).text
    assert '"limit":40,"spent":15,"reserved":0,"remaining":25,' in raw, raw


@pytest.mark.parametrize("ending", ["cut", "failed"])
def test_a_cut_or_failed_stream_is_charged_what_it_produced(service: str, fakes: Fakes, ending: str) -> None:
    if ending == "cut":  # three tokens, then silence: the client leaves
        fakes.ollama.script(Reply(tokens=["a", "b", "c"], fault=Fault.hang(after=3)))
    else:  # three tokens, then the provider's in-stream error
        fakes.ollama.script(Reply(tokens=["a", "b", "c", "d"], fault=Fault.error_after(3)))
    with (
        httpx.Client(timeout=30) as client,
        client.stream(
            "POST",
            f"{service}/api/ai/ollama/tiny/chat?protocol=text",
            json={"messages": MESSAGES},
            headers={**bearer("cut"), "X-Request-ID": ending},
        ) as response,
    ):
        assert response.status_code == 200
        received = ""
        for chunk in response.iter_text():
            received += chunk
            if ending == "cut" and received == "abc":
                break
    if ending == "cut":
        assert fakes.ollama.wait_for_disconnects(1) >= 1
    else:
        assert received.startswith("abc") and "[error:" in received
    state = settled(service, "cut")["tokens_per_month"]
    # Charged the prompt's estimate and one token per event relayed, not the whole reservation (8 + 100).
    assert PROMPT_ESTIMATE + 3 <= state["spent"] < PROMPT_ESTIMATE + 100  # type: ignore[operator]
    # The ledger holds the same estimate for that request.
    rows = wait_for(
        lambda: [
            r
            for r in httpx.get(f"{service}/api/usage", headers=bearer("cut"), timeout=30).json()["records"]
            if r["request_id"] == ending
        ],
        "the stream's ledger row",
    )
    assert rows[0]["outcome"] == {"cut": "cancelled", "failed": "stream_error"}[ending]
    assert rows[0]["usage_estimated"]
    assert rows[0]["prompt_tokens"] + rows[0]["completion_tokens"] == state["spent"]


def test_a_usd_budget_is_charged_the_ledgers_cost_with_its_cache_hits(fakes: Fakes, tmp_path: Path) -> None:
    """Reported prompt-cache hits at the catalogue's ``cached_input``: the budget charges what the ledger's row
    costs (one price function), not the whole prompt at ``input``."""
    pricing = Pricing(input=1.0, output=4.0, cached_input=0.25)
    assert Charge.of(1200, 10, pricing, 1024) == Charge(1210, 472_000)  # (176 * 1 + 1024 * 0.25 + 10 * 4) / 1e6
    assert Charge.of(1200, 10, pricing) == Charge(1210, 1_240_000)  # no hits reported: the whole prompt at input
    key = "mg-budget-cache"
    keys = f'[[keys]]\nname = "cache"\nkey = "{key}"\n[keys.budget]\nusd_per_day = 1.0\n'
    (tmp_path / "keys.toml").write_text(keys, encoding="utf-8")
    catalogue = write_catalogue(
        tmp_path / "catalogue.toml",
        model_toml(
            "acme",
            "cache",
            provider="openrouter",
            upstream="acme/cache",
            extra="[models.pricing]\ninput = 1\noutput = 4\ncached_input = 0.25\n",
        ),
        header='[server]\nkeys_file = "keys.toml"\n',
    )
    fakes.openrouter.script(Reply(tokens=["a"], usage=(1200, 10), options={"cached_tokens": 1024}))
    settings = ledger_settings(catalogue, tmp_path, fakes, probe_interval=0)
    headers = {"Authorization": f"Bearer {key}"}
    with serve_in_thread(create_app(settings)) as url:
        body = {"model": "acme/cache", "messages": MESSAGES}
        assert httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=30).status_code == 200

        def spent() -> object | None:
            [found] = httpx.get(f"{url}/api/usage?limit=0", headers=headers, timeout=30).json()["budget"]
            return found["spent"] if found["reserved"] == 0 else None

        charged = wait_for(spent, "the budget to be settled")
        ledger_cost = httpx.get(f"{url}/api/usage", headers=headers, timeout=30).json()["totals"]["cost"]
    assert charged == pytest.approx(472 / 1e6)
    assert ledger_cost == pytest.approx(472 / 1e6)


def test_the_cost_openrouter_reports_is_what_the_ledger_and_a_usd_budget_charge(fakes: Fakes, tmp_path: Path) -> None:
    """OpenRouter's ``usage.cost`` is what it billed (USD credits). It is the request's cost in the ledger and its
    key's USD budget: for a model the catalogue prices (its list price only sized the hold) and for one it does not
    (which cost nothing, and left the budget untouched however much it spent)."""
    key = "mg-budget-reported"
    keys = f'[[keys]]\nname = "reported"\nkey = "{key}"\n[keys.budget]\nusd_per_day = 1.0\n'
    (tmp_path / "keys.toml").write_text(keys, encoding="utf-8")
    priced = "[models.pricing]\ninput = 1\noutput = 4\n"
    catalogue = write_catalogue(
        tmp_path / "catalogue.toml",
        model_toml("acme", "priced", provider="openrouter", upstream="acme/priced", extra=priced),
        model_toml("acme", "unpriced", provider="openrouter", upstream="acme/unpriced"),
        header='[server]\nkeys_file = "keys.toml"\n',
    )
    fakes.openrouter.script(
        Reply(tokens=["a"], usage=(1200, 10), options={"cost": 0.002}),  # the list price says 0.00124
        Reply(tokens=["b"], usage=(1200, 10), options={"cost": 0.0003}),
    )
    settings = ledger_settings(catalogue, tmp_path, fakes, probe_interval=0)
    headers = {"Authorization": f"Bearer {key}"}
    with serve_in_thread(create_app(settings)) as url:
        for model in ("acme/priced", "acme/unpriced"):
            body = {"model": model, "messages": MESSAGES}
            assert httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=30).status_code == 200

        def spent() -> object | None:
            [found] = httpx.get(f"{url}/api/usage?limit=0", headers=headers, timeout=30).json()["budget"]
            return found["spent"] if found["reserved"] == 0 else None

        charged = wait_for(spent, "the budget to be settled")
        records = httpx.get(f"{url}/api/usage", headers=headers, timeout=30).json()["records"]
    assert charged == pytest.approx(0.0023)
    assert {r["model"]: r["cost"] for r in records} == {
        "acme/priced": pytest.approx(0.002),
        "acme/unpriced": pytest.approx(0.0003),
    }


def test_a_fallback_that_may_cost_more_is_held_at_its_own_maximum(fakes: Fakes, tmp_path: Path) -> None:
    """a/small may generate 1 token (a hold of 8 + 1), fails, and a/big (up to 100) answers: the hold must be
    a/big's, or concurrent requests each pass a limit they would overrun together (the README's "at most one
    request over it")."""
    key, limit = "mg-budget-fallback", 50
    keys = f'[[keys]]\nname = "fb"\nkey = "{key}"\n[keys.budget]\ntokens_per_day = {limit}\n'
    (tmp_path / "keys.toml").write_text(keys, encoding="utf-8")
    catalogue = write_catalogue(
        tmp_path / "catalogue.toml",
        model_toml("a", "small", upstream="small:1b", max_new_tokens=1, extra='fallbacks = ["a/big"]\n'),
        model_toml("a", "big", upstream="big:1b", max_new_tokens=100),
        header='[server]\nkeys_file = "keys.toml"\n',
    )
    fakes.ollama.models = {"big:1b"}  # a/small's model is not there: a 404, then the fallback
    fakes.ollama.default = Reply(tokens=["x"] * 40, delay=0.02)  # 8 + 40 tokens, ~1 s
    settings = ledger_settings(catalogue, tmp_path, fakes, probe_interval=0)
    headers = {"Authorization": f"Bearer {key}"}

    async def burst(url: str) -> list[int]:
        async with httpx.AsyncClient(timeout=30) as client:
            body = {"messages": MESSAGES}
            answers = await asyncio.gather(
                *(client.post(f"{url}/api/ai/ollama/small/chat", json=body, headers=headers) for _ in range(8))
            )
        return [answer.status_code for answer in answers]

    with serve_in_thread(create_app(settings)) as url:
        statuses = asyncio.run(burst(url))

        def spent() -> object | None:
            [found] = httpx.get(f"{url}/api/usage?limit=0", headers=headers, timeout=30).json()["budget"]
            return found["spent"] if found["reserved"] == 0 else None

        total = wait_for(spent, "the budget to be settled")
    assert statuses.count(200) >= 1
    assert isinstance(total, int) and total < limit + 8 + 100, (statuses, total)


def test_the_kinds_that_read_what_a_reply_cost_say_so_to_the_budgets() -> None:
    """``Provider.reports_cost`` (an unpriced model may still cost money) is set where the kind reads ``usage.cost``."""
    for kind in PROVIDERS.values():
        reads = getattr(kind, "read_cost", ChatCompletionsProvider.read_cost) is not ChatCompletionsProvider.read_cost
        assert kind.reports_cost == reads, kind.name


def test_an_unpriced_model_billed_by_its_reply_holds_the_rest_of_a_usd_budget(fakes: Fakes, tmp_path: Path) -> None:
    """An OpenRouter model without ``[models.pricing]`` costs what its reply says (``usage.cost``), which nothing
    knows before the call: it was held at 0 USD, so a burst of requests all passed a USD limit and spent a reply
    each past it. While one runs it now holds the rest of the key's USD budget: the others get the budget's busy 429
    and the key ends at most one reply over its limit."""
    key, limit, cost = "mg-budget-unpriced", 0.001, 0.0008
    keys = f'[[keys]]\nname = "unpriced"\nkey = "{key}"\n[keys.budget]\nusd_per_day = {limit}\n'
    (tmp_path / "keys.toml").write_text(keys, encoding="utf-8")
    catalogue = write_catalogue(
        tmp_path / "catalogue.toml",
        model_toml("acme", "unpriced", provider="openrouter", upstream="acme/unpriced"),
        header='[server]\nkeys_file = "keys.toml"\n',
    )
    fakes.openrouter.default = Reply(tokens=["x"] * 40, delay=0.02, usage=(8, 40), options={"cost": cost})  # ~1 s
    settings = ledger_settings(catalogue, tmp_path, fakes, probe_interval=0)
    headers = {"Authorization": f"Bearer {key}"}

    async def burst(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            body = {"model": "acme/unpriced", "messages": MESSAGES}
            return await asyncio.gather(
                *(client.post(f"{url}/v1/chat/completions", json=body, headers=headers) for _ in range(6))
            )

    with serve_in_thread(create_app(settings)) as url:
        answers = asyncio.run(burst(url))

        def spent() -> object | None:
            [found] = httpx.get(f"{url}/api/usage?limit=0", headers=headers, timeout=30).json()["budget"]
            return found["spent"] if found["reserved"] == 0 else None

        total = wait_for(spent, "the budget to be settled")
    statuses = [answer.status_code for answer in answers]
    assert statuses.count(200) >= 1
    for refused in (answer for answer in answers if answer.status_code != 200):
        assert refused.status_code == 429, refused.text
        assert refused.headers["Retry-After"] == "1"
        assert refused.json()["error"]["message"].startswith("Budget nearly spent"), refused.text
    assert isinstance(total, float) and total < limit + cost, (statuses, total)
