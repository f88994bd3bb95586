"""Limits in a real Redis: shared by separate clients, atomic, and leases that a crashed holder cannot leak."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, asynccontextmanager
from pathlib import Path

import httpx
import pytest
import redis

from modelgate import limit_store_redis
from modelgate.app import create_app
from modelgate.auth import ApiKey, Principal, key_digest
from modelgate.budget_rules import Budget, Charge
from modelgate.catalogue import load_catalogue
from modelgate.chat import ChatRequest, Message
from modelgate.errors import ModelgateError, RateLimited
from modelgate.limit_store import Lease, Plan, Slot, Window
from modelgate.limit_store_redis import REBUILD_SECONDS, REBUILDING, RedisBackend
from modelgate.limits import Admission, Limiter
from modelgate.settings import Settings
from tests.catalogue_files import model_toml, write_catalogue
from tests.cli_process import serve_subprocess, wait_for
from tests.fakes import Fakes, Fault, Reply
from tests.redis_server import RedisProcess, redis_process, running_redis
from tests.servers import serve_in_thread

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


def test_giving_back_part_of_a_lease_keeps_the_rest_renewed(redis_url: str) -> None:
    """A fallback gives back the failed model's slot; the key's slot, same lease, stays held past its TTL."""

    async def scenario() -> None:
        (holder,) = await backends(redis_url, "t8:", n=1, lease_ttl=1.0)
        try:
            assert await holder.acquire(plan(None, ("streams:key:k", 1), ("streams:model:m", 1)), "x") is None
            await holder.release(Lease("x", ("streams:model:m",)))
            assert await holder.acquire(plan(None, ("streams:model:m", 1)), "x") is None  # the fallback's, same id
            await asyncio.sleep(2.5)
            assert await holder.client.zrange("t8:streams:key:k", 0, -1) == [b"x"]
            assert await holder.client.zrange("t8:streams:model:m", 0, -1) == [b"x"]
            await holder.release(Lease("x", ("streams:key:k", "streams:model:m")))
            assert await holder.client.zcard("t8:streams:key:k") == 0
        finally:
            await holder.stop()

    asyncio.run(scenario())


def test_ping(redis_url: str) -> None:
    async def scenario() -> tuple[str | None, str | None]:
        (up,) = await backends(redis_url, "t6:", n=1)
        down = RedisBackend("redis://127.0.0.1:1/0")
        await down.start()
        try:
            return await up.problem(), await down.problem()
        finally:
            await up.stop()
            await down.stop()

    assert asyncio.run(scenario()) == (None, "redis unreachable")


# --- separate service processes sharing one Redis -------------------------------------------------------

RPM_KEY = "mg-redis-rpm-0000aaaa1111bbbb"
STREAMS_KEY = "mg-redis-streams-2222cccc3333"
KEYS_TOML = f"""
[[keys]]
name = "rpm"
key = "{RPM_KEY}"
requests_per_minute = 4

[[keys]]
name = "streams"
key = "{STREAMS_KEY}"
concurrent_streams = 1
"""
MESSAGES = [{"role": "user", "content": "Hi!"}]


@pytest.fixture
def shared(redis_url: str, fakes: Fakes, tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    """``serve`` arguments and environment for a service on the fakes with its limits in Redis."""
    redis.Redis.from_url(redis_url).flushdb()
    (tmp_path / "keys.toml").write_text(KEYS_TOML, encoding="utf-8")
    config = write_catalogue(tmp_path / "catalogue.toml", model_toml("acme", "tiny"), header=HEADER)
    return ["--config", str(config)], {**fakes.env(), "MODELGATE_REDIS_URL": redis_url}


HEADER = '[server]\nkeys_file = "keys.toml"\n'


def chat(url: str, key: str) -> httpx.Response:
    # A fresh connection per request, so that with --workers the kernel may hand it to any worker.
    with httpx.Client(timeout=30) as client:
        return client.post(
            url + "/api/ai/ollama/tiny/chat", json={"messages": MESSAGES}, headers={"Authorization": f"Bearer {key}"}
        )


def test_requests_per_minute_hold_across_two_processes(
    shared: tuple[list[str], dict[str, str]], fakes: Fakes, tmp_path: Path
) -> None:
    args, env = shared
    with serve_subprocess(args, tmp_path, env=env) as a, serve_subprocess(args, tmp_path, env=env) as b:
        for served in (a, b, a, b):
            response = chat(served.url, RPM_KEY)
            assert response.status_code == 200
            assert '0:"Hello"' in response.text  # answered by the fake
        for served in (a, b):
            refused = chat(served.url, RPM_KEY)
            assert refused.status_code == 429
            assert 1 <= int(refused.headers["retry-after"]) <= 60
            assert refused.json()["statusMessage"] == "Rate limit exceeded: key 'rpm' allows 4 requests per minute"
        assert chat(a.url, STREAMS_KEY).status_code == 200  # another key has its own window
    # Read once both have stopped: access lines are written in batches, the last at shutdown.
    logs = a.log() + b.log()
    assert len([r for r in fakes.ollama.requests if r.path == "/api/chat"]) == 5
    assert RPM_KEY not in logs and STREAMS_KEY not in logs
    assert logs.count('"key_id"') >= 7  # the requests were logged, by key_id


def test_concurrent_streams_hold_across_two_processes(
    shared: tuple[list[str], dict[str, str]], fakes: Fakes, tmp_path: Path
) -> None:
    args, env = shared
    with serve_subprocess(args, tmp_path, env=env) as a, serve_subprocess(args, tmp_path, env=env) as b:
        fakes.ollama.script(Reply(tokens=["held"], fault=Fault.hang(after=1)))
        with (
            httpx.Client(timeout=30) as client,
            client.stream(
                "POST",
                a.url + "/api/ai/ollama/tiny/chat",
                json={"messages": MESSAGES},
                headers={"Authorization": f"Bearer {STREAMS_KEY}"},
            ) as held,
        ):
            assert held.status_code == 200
            lines = held.iter_lines()  # kept: dropping a half-read iterator makes httpx close the connection
            assert any(line.startswith("0:") for line in lines)  # live on process a
            refused = chat(b.url, STREAMS_KEY)
            assert refused.status_code == 429
            assert refused.headers["retry-after"] == "1"
            assert refused.json()["statusMessage"] == "Too many concurrent streams: key 'streams' allows 1 at a time"
        # Abandoned on a: the slot is released in Redis, and b admits the key again.
        wait_for(lambda: chat(b.url, STREAMS_KEY).status_code == 200, "process b to admit the key again")


def test_workers_share_the_limit(shared: tuple[list[str], dict[str, str]], tmp_path: Path) -> None:
    args, env = shared
    with serve_subprocess([*args, "--workers", "2"], tmp_path, env=env) as served:
        # uvicorn's supervisor says it is running before its workers are: wait for both to be ready.
        wait_for(lambda: served.log().count("Application startup complete") >= 2, "both workers to start")
        workers = set(re.findall(r"Started server process \[(\d+)\]", served.log()))
        statuses = [chat(served.url, RPM_KEY).status_code for _ in range(10)]
    assert len(workers) == 2
    assert statuses == [200] * 4 + [429] * 6


# --- a Redis restart (issue 11 #11) ---------------------------------------------------------------------


def test_a_redis_restart_leaves_held_leases_counted() -> None:
    """Redis without persistence restarts and loses every lease: the holders take theirs again.

    The process that admits next re-takes its own before it admits; another process holding leases
    notices within ``EPOCH_CHECK_SECONDS`` on its own, without being asked anything; until every
    holder had the time to, no slot is handed out.
    """

    async def scenario(server: RedisProcess) -> None:
        admitting, other = await backends(server.url, "t7:")
        p = plan(None, ("streams:model:m", 3))
        try:
            assert await admitting.acquire(p, "a1") is None
            assert await admitting.acquire(p, "a2") is None
            assert await other.acquire(p, "b1") is None
            server.restart()
            # Every pooled connection is dead now; the first call on one reconnects once, no error.
            denied = await admitting.acquire(p, "a3")
            assert denied is not None and denied.limit is REBUILDING
            assert 0 < denied.retry_after <= REBUILD_SECONDS
            members = await admitting.client.zrange("t7:streams:model:m", 0, -1)
            assert b"a1" in members and b"a2" in members
            deadline = time.monotonic() + 10
            while b"b1" not in await admitting.client.zrange("t7:streams:model:m", 0, -1):
                assert time.monotonic() < deadline, "the other holder never re-took its lease"
                await asyncio.sleep(0.1)
            while (denied := await admitting.acquire(p, "a3")) is not None and denied.limit is REBUILDING:
                assert time.monotonic() < deadline, "slots were never handed out again"
                await asyncio.sleep(0.1)
            assert denied is not None and denied.limit is p.slots[0]  # 3 of 3: a1, a2 and b1 again
            # Released as usual once the streams end.
            await admitting.release(Lease("a1", ("streams:model:m",)))
            assert await admitting.acquire(p, "a3") is None
        finally:
            for backend in (admitting, other):
                await backend.stop()

    with redis_process() as server:
        asyncio.run(scenario(server))


def test_a_cap_still_holds_for_running_streams_after_a_redis_restart(fakes: Fakes, tmp_path: Path) -> None:
    """The red team's attack: two streams hold a cap of two, Redis restarts, two more were admitted."""
    config = write_catalogue(tmp_path / "catalogue.toml", model_toml("acme", "capped", extra="max_concurrency = 2\n"))
    fakes.ollama.default = Reply(tokens=["held"], fault=Fault.hang(after=1))
    with redis_process() as server:
        settings = Settings(config_path=config, redis_url=server.url, **fakes.settings_overrides())  # type: ignore[arg-type]
        with serve_in_thread(create_app(settings)) as url, ExitStack() as streams, httpx.Client(timeout=30) as client:
            for _ in range(2):
                held = streams.enter_context(
                    client.stream("POST", url + "/api/ai/ollama/capped/chat", json={"messages": MESSAGES})
                )
                assert held.status_code == 200
                lines = held.iter_lines()
                assert any(line.startswith("0:") for line in lines)
                streams.callback(lambda lines=lines: lines)  # kept alive with the stream
            server.restart()
            cap = "Model 'acme/capped' is at its concurrency limit (2 streams)"

            def refused_by_the_cap() -> bool:
                refused = httpx.post(url + "/api/ai/ollama/capped/chat", json={"messages": MESSAGES}, timeout=30)
                # Never admitted past the cap, never a 503: refused while being counted, then by the cap.
                assert refused.status_code == 429, refused.text
                return bool(refused.json()["statusMessage"] == cap)

            wait_for(refused_by_the_cap, "the cap to refuse again")
            assert refused_by_the_cap()
            streams.close()  # both streams abandoned: their slots come back
            fakes.ollama.default = Reply()
            wait_for(
                lambda: (
                    httpx.post(url + "/api/ai/ollama/capped/chat", json={"messages": MESSAGES}, timeout=30).status_code
                    == 200
                ),
                "the slots to come back after the streams ended",
            )


# --- Redis's answer late or lost on the way back ----------------------------------------------------------


@asynccontextmanager
async def proxy(
    redis_url: str, *, reply_delay: float = 0.0, lose_reply_to: bytes = b"", nth: int = 1
) -> AsyncIterator[str]:
    """A TCP proxy to ``redis_url`` on this loop: Redis's replies come back ``reply_delay`` late, and the connection
    that sends the ``nth`` command containing ``lose_reply_to`` is cut once Redis has run it, before its reply."""
    target = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    seen = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal seen
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target)
        cut = asyncio.Event()

        async def requests() -> None:
            nonlocal seen
            while data := await reader.read(65536):
                up_writer.write(data)
                await up_writer.drain()
                if lose_reply_to and lose_reply_to in data and (seen := seen + 1) == nth:
                    cut.set()
                    await asyncio.sleep(0.2)  # Redis runs it; its reply goes nowhere
                    return

        async def replies() -> None:
            while data := await up_reader.read(65536):
                await asyncio.sleep(reply_delay)
                if cut.is_set():
                    return
                writer.write(data)
                await writer.drain()

        tasks = [asyncio.create_task(requests()), asyncio.create_task(replies())]
        with contextlib.suppress(OSError):
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        for end in (writer, up_writer):
            end.transport.abort()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}/0"
    finally:
        server.close()


def test_a_request_cancelled_while_its_budget_is_reserved_gives_it_back(redis_url: str, tmp_path: Path) -> None:
    """Found in review: cancelled (the client left) after Redis held its budget, before the answer came back, a
    request kept that hold for HOLD_SECONDS (an hour)."""
    catalogue = load_catalogue(write_catalogue(tmp_path / "c.toml", model_toml("a", "m", max_new_tokens=100)))
    model = catalogue.by_id["a/m"]
    key = ApiKey(digest=key_digest("mg-cancelled-reservation"), name="t", budget=Budget(tokens_per_day=1000))
    request = ChatRequest(messages=(Message("user", "Hi!"),))

    async def scenario() -> tuple[int, int]:
        async with proxy(redis_url, reply_delay=0.3) as url:
            limiter = Limiter(RedisBackend(url, prefix="t9:"))
            await limiter.start()
            try:
                await limiter.problem()  # a pooled connection, ready
                admission = Admission(Principal(key), limiter, catalogue)
                reserving = asyncio.create_task(admission.reserve_budget([(model, request)]))
                await asyncio.sleep(0.1)  # Redis held it; the answer is on its way back
                reserving.cancel()
                await asyncio.wait((reserving,))
                await admission.release()  # the access middleware's cleanup
                [state] = await limiter.budgets.state(key.key_id, key.budget)  # type: ignore[arg-type]
                return state.reserved, state.spent
            finally:
                await limiter.stop()

    assert asyncio.run(scenario()) == (0, 0)


def test_a_script_sent_again_after_its_reply_was_lost_does_nothing_twice(redis_url: str, tmp_path: Path) -> None:
    """Found in review: the client sends a command again when its connection broke, and Redis may have run it.
    A settlement was charged twice (INCRBY); an admission at a cap of 1 counted its own first lease, was refused,
    and that lease kept the only slot for ``lease_ttl``."""
    catalogue = load_catalogue(
        write_catalogue(tmp_path / "c.toml", model_toml("a", "m", extra="max_concurrency = 1\n"))
    )
    model = catalogue.by_id["a/m"]
    budget = Budget(tokens_per_day=100)  # full once a request's 108 is held
    acquire = hashlib.sha1(limit_store_redis._ACQUIRE.encode()).hexdigest().encode()

    async def settled(lose_reply_to: bytes) -> int:
        async with proxy(redis_url, lose_reply_to=lose_reply_to) as url:
            limiter = Limiter(RedisBackend(url, prefix=f"t10-{uuid.uuid4().hex}:"))  # (not the trigger's text)
            await limiter.start()
            try:
                reservation = await limiter.budgets.reserve("k", "t", budget, Charge(108, 0), 8)
                await limiter.budgets.settle(reservation, Charge(15, 0))
                [state] = await limiter.budgets.state("k", budget)
                return state.spent + state.reserved
            finally:
                await limiter.stop()

    async def admitted_twice() -> list[str]:
        # The 3rd EVALSHA of _ACQUIRE: NOSCRIPT, then the epoch is new to this process, then the admission.
        async with proxy(redis_url, lose_reply_to=acquire, nth=3) as url:
            limiter = Limiter(RedisBackend(url, prefix="t11:"))
            await limiter.start()
            outcomes = []
            try:
                for _ in range(2):  # one request, over, then the next
                    admission = Admission(
                        Principal(ApiKey(digest=key_digest("mg-resent"), name="t")), limiter, catalogue
                    )
                    try:
                        await admission.admit_model(model)
                        outcomes.append("admitted")
                    except RateLimited as exc:
                        outcomes.append(exc.message)
                    await admission.release()
                return outcomes
            finally:
                await limiter.stop()

    assert asyncio.run(settled(b"INCRBY")) == 15  # the settlement's reply lost
    assert asyncio.run(settled(b"ZRANGE")) == 15  # the reservation's (the settlement's script has no ZRANGE)
    assert asyncio.run(admitted_twice()) == ["admitted", "admitted"]


# --- Redis out of reach for longer than a lease ------------------------------------------------------------


class Switch:
    """A TCP proxy to Redis that can be cut: while off, every connection through it is dropped and new ones are.
    While ``losing``, Redis runs every command sent, and the connection is cut before its reply gets through."""

    def __init__(self, redis_url: str) -> None:
        self.target = int(redis_url.rsplit(":", 1)[1].split("/")[0])
        self.on = True
        self.losing = False
        self._links: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return f"redis://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/0"

    def cut(self) -> None:
        self.on = False
        for link in list(self._links):
            link.cancel()

    async def stop(self) -> None:
        self.cut()
        assert self._server is not None
        self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.on:
            writer.transport.abort()
            return
        link = asyncio.current_task()
        assert link is not None
        self._links.add(link)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter, replies: bool) -> None:
            while data := await source.read(65536):
                if replies and self.losing:  # Redis has run the command: its answer goes nowhere
                    sink.transport.abort()
                    return
                sink.write(data)
                await sink.drain()

        try:
            await asyncio.gather(pipe(reader, up_writer, False), pipe(up_reader, writer, True))
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self._links.discard(link)
            for end in (writer, up_writer):
                end.transport.abort()


def test_a_stream_outliving_a_redis_outage_longer_than_its_lease_is_counted_again(redis_url: str) -> None:
    """Found in review: an instance cut off from Redis for longer than ``lease_ttl`` (a partition, a failover) while a
    stream ran found its lease swept by another instance's admission when it got back, and its renewals (ZADD XX)
    never put it back: the stream ran to its end uncounted, so the other instances admitted past the cap."""

    async def scenario() -> None:
        switch = Switch(redis_url)
        holder = RedisBackend(await switch.start(), lease_ttl=1.0, prefix="t12:")
        (other,) = await backends(redis_url, "t12:", n=1, lease_ttl=1.0)
        await holder.start()
        p = plan(None, ("streams:model:m", 1))
        try:
            assert await holder.acquire(p, "running") is None  # a stream that goes on through what follows
            switch.cut()
            deadline = time.monotonic() + 10
            while await other.acquire(p, "probe") is not None:  # the lease lapsed: another instance sweeps it
                assert time.monotonic() < deadline, "the cut-off holder's lease never lapsed"
                await asyncio.sleep(0.1)
            await other.release(Lease("probe", ("streams:model:m",)))
            switch.on = True  # Redis is within reach again; the stream still runs
            deadline = time.monotonic() + 10
            while b"running" not in await other.client.zrange("t12:streams:model:m", 0, -1):
                assert time.monotonic() < deadline, "the running stream was never counted again"
                await asyncio.sleep(0.1)
            denied = await other.acquire(p, "late")
            assert denied is not None and denied.limit is p.slots[0]
        finally:
            for backend in (holder, other):
                await backend.stop()
            await switch.stop()

    asyncio.run(scenario())


def test_an_admission_whose_answer_from_redis_was_lost_gives_back_what_redis_took(
    redis_url: str, tmp_path: Path
) -> None:
    """Found in review: when Redis ran an admission's script but its answer never came back (a connection cut twice,
    a reply later than the socket timeout), the request got its 503 and forgot what the script took: the key's
    stream slot stayed taken for the lease's 30 s, and the budget's hold for HOLD_SECONDS, an hour (a budgeted key
    refused as "held by its running requests" with none running, after a Redis hiccup)."""
    catalogue = load_catalogue(write_catalogue(tmp_path / "c.toml", model_toml("a", "m", max_new_tokens=100)))
    model = catalogue.by_id["a/m"]
    key = ApiKey(
        digest=key_digest("mg-lost-answers"), name="t", concurrent_streams=1, budget=Budget(tokens_per_day=1000)
    )
    request = ChatRequest(messages=(Message("user", "Hi!"),))

    async def scenario() -> tuple[list[int], int]:
        switch = Switch(redis_url)
        limiter = Limiter(RedisBackend(await switch.start(), prefix=f"t13-{uuid.uuid4().hex}:"))
        await limiter.start()
        statuses = []
        try:
            warm = Admission(Principal(key), limiter, catalogue)  # the scripts loaded, the epoch known
            await warm.admit_model(model)
            await warm.release()

            slot = Admission(Principal(key), limiter, catalogue)
            switch.losing = True
            with pytest.raises(ModelgateError) as refused:
                await slot.admit_model(model)  # taken in Redis; the answer lost
            statuses.append(refused.value.status)
            switch.losing = False
            await slot.release()  # the access middleware's cleanup

            hold = Admission(Principal(key), limiter, catalogue)
            await hold.admit_model(model)  # the slot is free again
            switch.losing = True
            with pytest.raises(ModelgateError) as refused:
                await hold.reserve_budget([(model, request)])  # held in Redis; the answer lost
            statuses.append(refused.value.status)
            switch.losing = False
            await hold.release()
            [state] = await limiter.budgets.state(key.key_id, key.budget)  # type: ignore[arg-type]
            return statuses, state.reserved
        finally:
            await limiter.stop()
            await switch.stop()

    assert asyncio.run(scenario()) == ([503, 503], 0)


def test_an_admission_whose_answer_was_lost_gives_back_its_place_in_the_requests_per_minute_window(
    redis_url: str, tmp_path: Path
) -> None:
    """Redis ran the admission's script (the request took a place in the key's window) and both its answer and the
    resent script's were lost: the client got a 503, and the place it never used stayed counted for the minute, so
    its retry was refused with 429 "Rate limit exceeded" as soon as Redis answered again."""
    catalogue = load_catalogue(write_catalogue(tmp_path / "c.toml", model_toml("a", "m")))
    model = catalogue.by_id["a/m"]
    key = ApiKey(digest=key_digest("mg-lost-window"), name="t", requests_per_minute=2)

    async def scenario() -> list[int | str]:
        switch = Switch(redis_url)
        limiter = Limiter(RedisBackend(await switch.start(), prefix=f"t14-{uuid.uuid4().hex}:"))
        await limiter.start()
        outcomes: list[int | str] = []
        try:
            warm = Admission(Principal(key), limiter, catalogue)  # the scripts loaded, the epoch known: 1 of 2 used
            await warm.admit_model(model)
            await warm.release()
            lost = Admission(Principal(key), limiter, catalogue)
            switch.losing = True
            with pytest.raises(ModelgateError) as refused:
                await lost.admit_model(model)  # counted in Redis; the answer lost
            switch.losing = False
            await lost.release()  # the access middleware's cleanup
            outcomes.append(refused.value.status)
            retry = Admission(Principal(key), limiter, catalogue)
            try:
                await retry.admit_model(model)
                outcomes.append("admitted")
            except RateLimited as exc:
                outcomes.append(exc.message)
            await retry.release()
            return outcomes
        finally:
            await limiter.stop()
            await switch.stop()

    assert asyncio.run(scenario()) == [503, "admitted"]
