"""Limits in a real Redis: shared by separate clients, atomic, and leases that a crashed holder cannot leak."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from modelgate.limits import Lease, Plan, RedisBackend, Slot, Window
from tests.redis_server import running_redis

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with running_redis() as url:
        yield url


def plan(window_limit: int | None = None, *slot_limits: tuple[str, int]) -> Plan:
    window = Window("rpm:k", window_limit, 60.0, "window full") if window_limit else None
    return Plan(window, tuple(Slot(key, limit, f"{key} full") for key, limit in slot_limits))


async def backends(url: str, prefix: str, n: int = 2, lease_ttl: float = 30.0) -> list[RedisBackend]:
    started = [RedisBackend(url, lease_ttl=lease_ttl, prefix=prefix) for _ in range(n)]
    for backend in started:
        await backend.start()
    return started


def test_window_holds_across_two_clients(redis_url: str) -> None:
    async def scenario() -> None:
        a, b = await backends(redis_url, "t1:")
        try:
            p = plan(3)
            assert await a.acquire(p, "1") is None
            assert await b.acquire(p, "2") is None
            assert await a.acquire(p, "3") is None
            for backend in (a, b):
                denied = await backend.acquire(p, "4")
                assert denied is not None and denied.limit is p.window
                assert 59 < denied.retry_after <= 60
        finally:
            for backend in (a, b):
                await backend.stop()

    asyncio.run(scenario())


def test_slots_hold_across_two_clients_and_free_on_release(redis_url: str) -> None:
    async def scenario() -> None:
        a, b = await backends(redis_url, "t2:")
        try:
            p = plan(None, ("streams:model:m", 2))
            assert await a.acquire(p, "1") is None
            assert await b.acquire(p, "2") is None
            denied = await b.acquire(p, "3")
            assert denied is not None and denied.limit is p.slots[0] and denied.retry_after == 1.0
            await a.release(Lease("1", ("streams:model:m",)))
            assert await b.acquire(p, "3") is None
        finally:
            for backend in (a, b):
                await backend.stop()

    asyncio.run(scenario())


def test_a_denied_request_takes_nothing(redis_url: str) -> None:
    async def scenario() -> None:
        (a,) = await backends(redis_url, "t3:", n=1)
        try:
            p = plan(2, ("streams:key:k", 5), ("streams:model:m", 1))
            assert await a.acquire(p, "1") is None
            for lease in ("2", "3"):
                denied = await a.acquire(p, lease)
                assert denied is not None and denied.limit is p.slots[1]
            assert await a.client.zcard("t3:streams:key:k") == 1
            assert await a.client.zcard("t3:rpm:k") == 1
        finally:
            await a.stop()

    asyncio.run(scenario())


def test_concurrent_acquires_never_overshoot(redis_url: str) -> None:
    async def scenario() -> int:
        clients = await backends(redis_url, "t4:", n=4)
        try:
            p = plan(None, ("streams:provider:p", 7))
            results = await asyncio.gather(*(clients[i % 4].acquire(p, f"l{i}") for i in range(40)))
            return sum(result is None for result in results)
        finally:
            for backend in clients:
                await backend.stop()

    assert asyncio.run(scenario()) == 7


def test_a_held_lease_is_renewed_and_an_abandoned_one_expires(redis_url: str) -> None:
    """A crashed instance stops renewing: its slot frees itself after the lease TTL, not never."""

    async def scenario() -> None:
        holder, other = await backends(redis_url, "t5:", lease_ttl=1.0)
        try:
            p = plan(None, ("streams:key:k", 1))
            assert await holder.acquire(p, "held") is None
            # Renewed while held: still taken well past its TTL.
            await asyncio.sleep(2.5)
            assert await other.acquire(p, "x") is not None
            holder.abandon()  # as if the process died mid-stream
            deadline = time.monotonic() + 10
            while await other.acquire(p, "x") is not None:
                assert time.monotonic() < deadline, "an abandoned lease never expired"
                await asyncio.sleep(0.1)
        finally:
            for backend in (holder, other):
                await backend.stop()

    asyncio.run(scenario())


def test_ping(redis_url: str) -> None:
    async def scenario() -> tuple[bool, bool]:
        (up,) = await backends(redis_url, "t6:", n=1)
        down = RedisBackend("redis://127.0.0.1:1/0")
        await down.start()
        try:
            return await up.ping(), await down.ping()
        finally:
            await up.stop()
            await down.stop()

    assert asyncio.run(scenario()) == (True, False)
