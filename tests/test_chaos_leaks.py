"""Chaos from outside: a few hundred requests that misbehave at every point, then nothing may be left behind.

A real server (``serve_in_thread``) relays from a hostile upstream (``tests/fakes/hostile.py``) that stalls, resets,
sends garbage, ends without ``[DONE]``, answers 503 (retries, fallbacks) or answers slowly; raw-socket clients leave
before the head, right after it, mid-stream (with a FIN or an RST, or with a second request pipelined behind), during a
retry's backoff and during a fallback, on every chat route, with and without a key's stream limit and budget.
Once quiet: nothing in flight, every admission slot and budget hold given back, every upstream connection closed,
no task left over, and one ledger row per request that reached the upstream. Twice: limits and budgets counted in
this process, and in a real Redis (``MODELGATE_REDIS_URL``), where no lease or budget hold may be left under the
limiter's prefix. ``test_chaos_shutdown.py`` sends SIGTERM in the middle of the same chaos.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import struct
import tomllib
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import pytest

from modelgate import push_lane
from modelgate.app import create_app
from modelgate.catalogue import parse_catalogue
from modelgate.settings import Settings
from tests.catalogue_files import model_toml
from tests.cli_process import wait_for
from tests.fakes.hostile import RESET, HostileUpstream, Received, response_head
from tests.redis_server import running_redis
from tests.servers import serve_in_thread

REQUESTS = 200
ADMIN = "mg-chaos-admin-0123456789"
KEYS = {"limited": "mg-chaos-limited-0123456789", "free": "mg-chaos-free-0123456789"}
STREAMS = 3  # the limited key's concurrent_streams
MODEL_CAP = 10  # chaos/primary's max_concurrency
KEYS_TOML = f"""
[[keys]]
name = "limited"
key = "{KEYS["limited"]}"
concurrent_streams = {STREAMS}
[keys.budget]
tokens_per_day = 100000000

[[keys]]
name = "free"
key = "{KEYS["free"]}"
"""
RESILIENCE = """max_retries = 1
retry_base_delay = 0.01
retry_max_delay = 3
breaker_threshold = {threshold}
breaker_cooldown = 0.3
first_token_timeout = 120
idle_timeout = 120
whole_reply_timeout = 120
"""


def sse(payload: object) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return sse({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [choice]})


USAGE = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
HEAD = response_head(200, {"Content-Type": "text/event-stream"})
TOKENS = [chunk({"role": "assistant", "content": ""}), chunk({"content": "a"}), chunk({"content": "b"})]
END = [chunk({}, "stop"), sse({"id": "c1", "object": "chat.completion.chunk", "choices": [], "usage": USAGE})]
WHOLE = orjson.dumps(
    {
        "id": "c1",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ab"}, "finish_reason": "stop"}],
        "usage": USAGE,
    }
)
UNAVAILABLE = response_head(503, {"Content-Type": "application/json", "Retry-After": "0"}) + b'{"error":"busy"}'
#: A Retry-After the gateway waits (under ``retry_max_delay``): a client may leave during the backoff.
BACKING_OFF = response_head(503, {"Content-Type": "application/json", "Retry-After": "1"}) + b'{"error":"busy"}'

#: A stall outlasts every wait of the checks: only a client leaving (or a bug) ends it.
STALL = 300.0

MODES = (
    "ok",
    "slow_head",
    "stall_head",
    "stall_mid",
    "reset_mid",
    "fin_no_done",
    "garbage",
    "retry_ok",
    "backoff",
    "fallback_ok",
    "fallback_stall",
    "slow_tokens",
)


class Upstream:
    """The hostile upstream's script: what to answer is in the prompt (``mode=... rid=...``)."""

    def __init__(self) -> None:
        self.attempts: dict[str, int] = {}

    def __call__(self, received: Received) -> AsyncIterator[bytes]:
        body = json.loads(received.body)
        prompt = body["messages"][-1]["content"]
        fields = dict(part.split("=", 1) for part in prompt.split())
        mode, rid = fields["mode"], fields["rid"]
        attempt = self.attempts[rid] = self.attempts.get(rid, 0) + 1
        backup = body["model"] == "m-backup"
        streamed = body.get("stream", False)

        async def whole_or_stream() -> AsyncIterator[bytes]:
            if not streamed:
                yield response_head(200, {"Content-Type": "application/json"}) + WHOLE
                return
            yield HEAD
            for piece in [*TOKENS, *END, b"data: [DONE]\n\n"]:
                yield piece

        async def pieces() -> AsyncIterator[bytes]:
            if mode == "ok":
                async for piece in whole_or_stream():
                    yield piece
            elif mode == "slow_head":
                await asyncio.sleep(0.3)
                async for piece in whole_or_stream():
                    yield piece
            elif mode == "stall_head":
                await asyncio.sleep(STALL)
            elif mode in ("stall_mid", "reset_mid", "fin_no_done", "garbage", "slow_tokens"):
                if not streamed:
                    yield response_head(200, {"Content-Type": "application/json"}) + WHOLE[:20]
                    if mode == "reset_mid":
                        yield RESET
                    elif mode == "stall_mid":
                        await asyncio.sleep(STALL)
                    return
                yield HEAD
                for piece in TOKENS:
                    yield piece
                    await asyncio.sleep(0.01)
                if mode == "stall_mid":
                    await asyncio.sleep(STALL)
                elif mode == "reset_mid":
                    yield RESET
                elif mode == "garbage":
                    yield b"data: {not json at all\n\n\x00\xff\xfe garbage\n\n"
                    await asyncio.sleep(STALL)
                elif mode == "slow_tokens":
                    for _ in range(60):
                        await asyncio.sleep(0.05)
                        yield chunk({"content": "t"})
                    for piece in END:
                        yield piece
            elif mode == "retry_ok":
                if attempt == 1:
                    yield UNAVAILABLE
                else:
                    async for piece in whole_or_stream():
                        yield piece
            elif mode == "backoff":
                if attempt == 1:
                    yield BACKING_OFF
                else:
                    async for piece in whole_or_stream():
                        yield piece
            elif mode == "fallback_ok":
                if not backup:
                    yield UNAVAILABLE
                else:
                    async for piece in whole_or_stream():
                        yield piece
            elif mode == "fallback_stall":
                if not backup:
                    yield UNAVAILABLE
                else:
                    await asyncio.sleep(STALL)

        return pieces()


@dataclass
class Served:
    url: str
    app: Any
    loops: list[asyncio.AbstractEventLoop]
    redis_url: str | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self.loops[0]

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)


def chaos_catalogue(hostile: HostileUpstream, tmp_path: Path) -> str:
    """The catalogue of the chaos (its keys file written to ``tmp_path``): ``chaos/primary`` falling back to
    ``chaos/backup``, both served by ``hostile``."""
    (tmp_path / "keys.toml").write_text(KEYS_TOML, encoding="utf-8")
    resilience = RESILIENCE.format(threshold=1000)
    text = f'[server]\nkeys_file = "{tmp_path / "keys.toml"}"\n\n'
    text += f'[providers.up]\nkind = "openai"\nbase_url = "{hostile.url}"\nmax_concurrency = 12\n{resilience}\n'
    text += f'[providers.up2]\nkind = "openai"\nbase_url = "{hostile.url}"\n{resilience}\n'
    extra = f'fallbacks = ["chaos/backup"]\nmax_concurrency = {MODEL_CAP}\n'
    text += model_toml("chaos", "primary", provider="up", upstream="m-primary", extra=extra)
    text += model_toml("chaos", "backup", provider="up2", upstream="m-backup")
    return text


@pytest.fixture(params=["memory", "redis"])
def limits_store(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """Where the limits and budgets count: this process (None), or a real Redis (its URL)."""
    if request.param == "memory":
        yield None
        return
    with running_redis() as url:
        yield url


@pytest.fixture
def served(hostile: HostileUpstream, tmp_path: Path, limits_store: str | None) -> Iterator[Served]:
    text = chaos_catalogue(hostile, tmp_path)
    catalogue = parse_catalogue(tomllib.loads(text), source=str(tmp_path / "chaos.toml"))
    settings = Settings.from_env(
        {},
        probe_interval=0,
        database_url=f"sqlite:///{tmp_path / 'usage.sqlite3'}",
        admin_key=ADMIN,
        ledger_flush_interval=0.1,
        client_send_timeout=2.0,
        redis_url=limits_store,
    )
    app = create_app(settings, catalogue)
    loops: list[asyncio.AbstractEventLoop] = []

    async def observed(scope: Any, receive: Any, send: Any) -> None:
        if not loops:
            loops.append(asyncio.get_running_loop())
        await app(scope, receive, send)

    hostile.reset(Upstream())
    try:
        with serve_in_thread(observed) as url:
            httpx.get(url + "/health", timeout=10)
            yield Served(url, app, loops, limits_store)
    finally:
        hostile.reset()


# --- raw clients ---------------------------------------------------------------------------------------


ROUTES = ("data", "ui", "v1-stream", "v1-whole", "responses-stream", "responses-whole")
BEHAVIOURS = ("full", "before_head", "after_head", "mid", "rst", "pipelined")


def request_bytes(route: str, prompt: str, key: str, rid: str) -> bytes:
    messages = [{"role": "user", "content": prompt}]
    if route in ("data", "ui"):
        path, body = f"/api/ai/chaos/primary/chat?protocol={route}", {"messages": messages}
    elif route.startswith("v1"):
        path, body = "/v1/chat/completions", {"model": "chaos/primary", "messages": messages}
        body["stream"] = route == "v1-stream"
    else:
        path, body = "/v1/responses", {"model": "chaos/primary", "input": prompt}
        body["stream"] = route == "responses-stream"
    payload = orjson.dumps(body)
    head = [
        f"POST {path} HTTP/1.1",
        "Host: modelgate",
        "Content-Type: application/json",
        f"Content-Length: {len(payload)}",
        f"Authorization: Bearer {KEYS[key]}",
        f"X-Request-ID: {rid}",
        "Connection: close",
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + payload


def drive(
    url: str, route: str, mode: str, behaviour: str, key: str, rid: str, rng: random.Random, patience: float = 2.0
) -> bytes:
    """One client's request, and what it read before it left (``patience``: how long it waits on a silent reply)."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=20)
    received = b""
    try:
        sent = request_bytes(route, f"mode={mode} rid={rid}", key, rid)
        if behaviour == "pipelined":  # a second request behind the first, on a connection kept alive
            second = request_bytes(route, f"mode={mode} rid={rid}-b", key, f"{rid}-b")
            sent = sent.replace(b"Connection: close", b"Connection: keep-alive") + second
        sock.sendall(sent)
        if behaviour == "before_head":
            sock.settimeout(rng.choice((0.01, 0.1, 0.4, 1.2)))
        else:
            sock.settimeout(patience)  # a client that gives up on a stalled reply
        try:
            while True:
                piece = sock.recv(65536)
                if not piece:
                    break
                received += piece
                if behaviour == "after_head" and b"\r\n\r\n" in received:
                    break
                if behaviour in ("mid", "rst", "pipelined") and received.count(b"\n") > rng.choice((12, 40)):
                    break
        except TimeoutError:
            pass
        if behaviour == "rst":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        sock.close()
    return received


def in_flight(url: str) -> float:
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith("modelgate_streams_in_flight "):
            return float(line.split()[1])
    raise AssertionError("no in-flight gauge")


def ledger_ids(url: str) -> list[str]:
    answer = httpx.get(f"{url}/api/usage?limit=1000", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10)
    assert answer.status_code == 200, answer.text
    return [record["request_id"] for record in answer.json()["records"]]


def budget_reserved(url: str) -> int:
    answer = httpx.get(f"{url}/api/usage?limit=0", headers={"Authorization": f"Bearer {KEYS['limited']}"}, timeout=10)
    assert answer.status_code == 200, answer.text
    return sum(int(entry["reserved"]) for entry in answer.json()["budget"])


def redis_holds(url: str, prefix: str) -> dict[str, list[bytes]]:
    """Every concurrency lease and budget hold in Redis under the limiter's ``prefix``, by key (an emptied sorted
    set is deleted)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = [*client.scan_iter(f"{prefix}streams:*"), *client.scan_iter(f"{prefix}budget:*:held")]
        found = {key.decode(): client.zrange(key, 0, -1) for key in keys}
    finally:
        client.close()
    return {key: members for key, members in found.items() if members}


def all_upstream_closed(hostile: HostileUpstream) -> bool:
    return all(outcome.done.is_set() for outcome in hostile.outcomes)


async def task_names() -> list[str]:
    current = asyncio.current_task()
    return sorted(repr(task.get_coro()) for task in asyncio.all_tasks() if task is not current)


def test_chaos_leaves_nothing_behind(served: Served, hostile: HostileUpstream) -> None:
    url = served.url
    baseline = served.call(task_names())
    rng = random.Random(20240611)
    plan = []
    for i in range(REQUESTS):
        route, mode, behaviour = rng.choice(ROUTES), rng.choice(MODES), rng.choice(BEHAVIOURS)
        key = "limited" if i % 2 else "free"
        plan.append((route, mode, behaviour, key, f"chaos-{i:04d}-{route}-{mode}-{behaviour}"))

    def one(item: tuple[str, str, str, str, str]) -> bytes:
        route, mode, behaviour, key, rid = item
        return drive(url, route, mode, behaviour, key, rid, random.Random(rid))

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, plan))
    # The chaos did reach the upstream and got answers: replies, refusals at a cap, upstream errors.
    statuses = {raw[9:12] for raw in answers if raw.startswith(b"HTTP/1.1 ")}
    assert {b"200", b"429", b"502"} <= statuses, statuses

    assert wait_for(lambda: in_flight(url) == 0 or None, "nothing in flight")
    assert wait_for(lambda: all_upstream_closed(hostile) or None, "every upstream connection closed")
    gateway = served.app.state.gateway
    backend = gateway.limiter.backend
    if (redis_url := served.redis_url) is None:
        assert wait_for(lambda: not backend._holders or None, f"every slot free: {backend._holders}")
    else:  # every lease released (not left to lapse), every budget hold settled, in Redis itself
        assert wait_for(lambda: not backend._held or None, f"no lease held or renewed: {backend._held}")
        assert wait_for(lambda: not redis_holds(redis_url, backend.prefix) or None, "no lease or hold in Redis")
    assert wait_for(lambda: budget_reserved(url) == 0 or None, "the budget's holds given back")
    lag = served.app.observer.lag
    assert wait_for(lambda: (lag.users == 0 and lag._handle is None) or None, f"the lag timer stopped: {lag.users}")
    assert not push_lane._SINKS
    assert not gateway.drain._waiting
    for provider in ("up", "up2"):
        breaker = gateway.breakers.peek(provider)
        assert breaker is None or breaker._trial is None
    assert all(breaker._trial is None for breaker in gateway.breakers._models.values())

    # From outside: the key's N streams and the model's cap can be taken again, all at once.
    assert_can_hold(url, "limited", STREAMS)
    assert_can_hold(url, "free", MODEL_CAP)
    assert wait_for(lambda: in_flight(url) == 0 or None, "nothing in flight")

    # Every request that reached the upstream has its one ledger row.
    prompts = (json.loads(r.body)["messages"][-1]["content"] for r in hostile.received)
    reached_ids = {rid for prompt in prompts if (rid := prompt.split("rid=")[1]).startswith("chaos-")}

    def rows() -> list[str] | None:
        ids = [rid for rid in ledger_ids(url) if rid.startswith("chaos-")]
        return ids if reached_ids <= set(ids) else None

    ids = wait_for(rows, "a ledger row for every request that reached the upstream")
    assert len(ids) == len(set(ids)), [rid for rid in ids if ids.count(rid) > 1]

    def tasks_back() -> list[str] | None:
        left = served.call(task_names())
        return left if len(left) <= len(baseline) else None

    wait_for(tasks_back, "no task beyond the baseline")


def assert_can_hold(url: str, key: str, n: int) -> None:
    """``n`` slow streams of ``key`` open at once (each its first part read), then all abandoned."""
    socks = []
    try:
        for i in range(n):
            parts = urlsplit(url)
            sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
            rid = f"hold-{key}-{i}"
            sock.sendall(request_bytes("data", f"mode=slow_tokens rid={rid}", key, rid))
            received = b""
            while b'0:"' not in received:
                piece = sock.recv(65536)
                assert piece, received
                received += piece
            assert received.startswith(b"HTTP/1.1 200"), received[:300]
            socks.append(sock)
    finally:
        for sock in socks:
            sock.close()
