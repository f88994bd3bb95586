"""Limits: the plan for (key, model), the in-process backend, and 429s over a real socket."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from modelgate.auth import ANONYMOUS, ApiKey, Principal, key_digest
from modelgate.catalogue import Catalogue, load_catalogue
from modelgate.errors import RateLimited
from modelgate.limits import Lease, Limiter, MemoryBackend, Plan, Slot, Window
from tests.catalogue_files import model_toml, write_catalogue


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def window(limit: int = 2, seconds: float = 60.0) -> Window:
    return Window("rpm:k", limit, seconds, "window full")


def slot(key: str = "streams:key:k", limit: int = 1) -> Slot:
    return Slot(key, limit, f"{key} full")


# --- the in-process backend ---------------------------------------------------------------------------


def test_window_is_sliding_and_says_when_it_frees() -> None:
    clock = Clock()
    backend = MemoryBackend(clock)
    plan = Plan(window(limit=2), ())

    async def scenario() -> None:
        assert await backend.acquire(plan, "a") is None
        clock.now += 10
        assert await backend.acquire(plan, "b") is None
        clock.now += 5
        denied = await backend.acquire(plan, "c")
        assert denied is not None and denied.limit is plan.window
        assert denied.retry_after == pytest.approx(45.0)  # the first hit leaves the window at +60
        clock.now += 45
        assert await backend.acquire(plan, "d") is None  # exactly 60 s after the first: it has left
        denied = await backend.acquire(plan, "e")
        assert denied is not None and denied.retry_after == pytest.approx(10.0)

    asyncio.run(scenario())


def test_slots_are_held_until_released() -> None:
    backend = MemoryBackend(Clock())
    plan = Plan(None, (slot(limit=2),))

    async def scenario() -> None:
        assert await backend.acquire(plan, "a") is None
        assert await backend.acquire(plan, "b") is None
        denied = await backend.acquire(plan, "c")
        assert denied is not None and denied.limit is plan.slots[0] and denied.retry_after == 1.0
        await backend.release(Lease("a", ("streams:key:k",)))
        assert await backend.acquire(plan, "c") is None
        await backend.release(Lease("b", ("streams:key:k",)))
        await backend.release(Lease("c", ("streams:key:k",)))
        assert backend.holding("streams:key:k") == 0

    asyncio.run(scenario())


def test_a_denied_request_takes_nothing() -> None:
    """All or nothing: a request refused by its model cap neither counts in the window nor keeps its key slot."""
    backend = MemoryBackend(Clock())
    key_slot, model_slot = slot("streams:key:k", 5), slot("streams:model:m", 1)
    plan = Plan(window(limit=2), (key_slot, model_slot))

    async def scenario() -> None:
        assert await backend.acquire(plan, "a") is None
        for lease in ("b", "c", "d"):
            denied = await backend.acquire(plan, lease)
            assert denied is not None and denied.limit is model_slot
        assert backend.holding("streams:key:k") == 1
        await backend.release(Lease("a", (key_slot.key, model_slot.key)))
        assert await backend.acquire(plan, "e") is None  # the window still has room: b, c, d were not counted
        denied = await backend.acquire(Plan(window(limit=2), ()), "f")
        assert denied is not None and denied.limit.key == "rpm:k"

    asyncio.run(scenario())


def test_release_of_an_unknown_lease_is_harmless() -> None:
    backend = MemoryBackend(Clock())
    asyncio.run(backend.release(Lease("nope", ("streams:key:k",))))
    assert backend.holding("streams:key:k") == 0


# --- the plan ---------------------------------------------------------------------------------------


@pytest.fixture
def catalogue(tmp_path: Path) -> Catalogue:
    header = "[providers.ollama]\nmax_concurrency = 4\n"
    return load_catalogue(
        write_catalogue(
            tmp_path / "c.toml",
            model_toml("acme", "capped", extra="max_concurrency = 2\n"),
            model_toml("acme", "free", provider="openrouter"),
            header=header,
        )
    )


def test_plan_collects_every_limit_that_applies(catalogue: Catalogue) -> None:
    key = ApiKey(digest=key_digest("k" * 20), name="ci", requests_per_minute=30, concurrent_streams=3)
    limiter = Limiter(MemoryBackend())
    plan = limiter.plan(Principal(key), catalogue.get("acme/capped"), catalogue)
    assert plan.window == Window(
        f"rpm:{key.key_id}", 30, 60.0, "Rate limit exceeded: key 'ci' allows 30 requests per minute"
    )
    assert [(s.key, s.limit) for s in plan.slots] == [
        (f"streams:key:{key.key_id}", 3),
        ("streams:provider:ollama", 4),
        ("streams:model:acme/capped", 2),
    ]
    assert "k" * 20 not in repr(plan)  # counters are named by key_id, never by the key


def test_nothing_to_count_means_no_lease(catalogue: Catalogue) -> None:
    limiter = Limiter(MemoryBackend())
    assert limiter.plan(ANONYMOUS, catalogue.get("acme/free"), catalogue).empty
    assert asyncio.run(limiter.acquire(ANONYMOUS, catalogue.get("acme/free"), catalogue)) is None


def test_acquire_raises_rate_limited_with_retry_after(catalogue: Catalogue) -> None:
    key = ApiKey(digest=key_digest("k" * 20), name="ci", requests_per_minute=1)
    limiter = Limiter(MemoryBackend())
    model = catalogue.get("acme/free")

    async def scenario() -> RateLimited:
        assert await limiter.acquire(Principal(key), model, catalogue) is None  # a window takes no slot
        with pytest.raises(RateLimited) as caught:
            await limiter.acquire(Principal(key), model, catalogue)
        return caught.value

    error = asyncio.run(scenario())
    assert error.status == 429
    assert error.message == "Rate limit exceeded: key 'ci' allows 1 requests per minute"
    assert 59 <= int(error.headers["Retry-After"]) <= 60
