"""Limits: the plan for (key, model), the in-process backend, and 429s over a real socket."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import orjson
import pytest

from modelgate.app import create_app
from modelgate.auth import ANONYMOUS, ApiKey, Principal, key_digest
from modelgate.catalogue import Catalogue, load_catalogue
from modelgate.errors import RateLimited
from modelgate.limit_store import Lease, MemoryBackend, Plan, Slot, Window
from modelgate.limits import Limiter
from modelgate.settings import Settings
from tests.catalogue_files import model_toml, write_catalogue
from tests.cli_process import wait_for
from tests.fakes import Fakes, FakeUpstream, Fault, Reply
from tests.servers import serve_in_thread


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


# --- over a real socket, with the fake upstreams -------------------------------------------------------

KEYS = {
    "rpm": "mg-limits-rpm-000011112222",
    "streams": "mg-limits-streams-33334444",
    "free": "mg-limits-free-555566667777",
}
KEYS_TOML = f"""
[[keys]]
name = "rpm"
key = "{KEYS["rpm"]}"
requests_per_minute = 3

[[keys]]
name = "streams"
key = "{KEYS["streams"]}"
concurrent_streams = 1

[[keys]]
name = "free"
key = "{KEYS["free"]}"
"""
HEADER = '[server]\nkeys_file = "keys.toml"\n\n[providers.openrouter]\nmax_concurrency = 1\n'
MESSAGES = [{"role": "user", "content": "Hi!"}]
HELD = Reply(tokens=["held"], fault=Fault.hang(after=1))  # one token, then silence until the client leaves


def limited_catalogue(directory: Path) -> Path:
    (directory / "keys.toml").write_text(KEYS_TOML, encoding="utf-8")
    return write_catalogue(
        directory / "catalogue.toml",
        model_toml("acme", "tiny"),
        model_toml("acme", "capped", extra="max_concurrency = 1\n"),
        model_toml("acme", "routed", provider="openrouter", upstream="acme/routed"),
        model_toml("acme", "other", provider="openrouter", upstream="acme/other"),
        header=HEADER,
    )


@pytest.fixture
def service(fakes: Fakes, tmp_path: Path) -> Iterator[str]:
    settings = Settings(config_path=limited_catalogue(tmp_path), **fakes.settings_overrides())  # type: ignore[arg-type]
    with serve_in_thread(create_app(settings)) as url:
        yield url


def chat(url: str, name: str = "tiny", key: str = "free", provider: str = "ollama") -> httpx.Response:
    return httpx.post(
        f"{url}/api/ai/{provider}/{name}/chat",
        json={"messages": MESSAGES},
        headers={"Authorization": f"Bearer {KEYS[key]}"},
        timeout=30,
    )


def completion(url: str, model: str = "acme/tiny", key: str = "free") -> httpx.Response:
    return httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": model, "messages": MESSAGES},
        headers={"Authorization": f"Bearer {KEYS[key]}"},
        timeout=30,
    )


@contextmanager
def held_stream(
    url: str, fake: FakeUpstream, name: str = "tiny", key: str = "free", provider: str = "ollama"
) -> Iterator[httpx.Response]:
    """A chat stream that stays open (its first part read) until the block ends, then is abandoned."""
    fake.script(HELD)
    with (
        httpx.Client(timeout=30) as client,
        client.stream(
            "POST",
            f"{url}/api/ai/{provider}/{name}/chat",
            json={"messages": MESSAGES},
            headers={"Authorization": f"Bearer {KEYS[key]}"},
        ) as response,
    ):
        assert response.status_code == 200
        lines = response.iter_lines()  # kept: dropping a half-read iterator makes httpx close the connection
        assert any(line.startswith("0:") for line in lines)  # the first token arrived: the stream is live
        yield response


def test_requests_per_minute_gives_429_with_retry_after_on_both_surfaces(service: str) -> None:
    assert chat(service, key="rpm").status_code == 200
    assert completion(service, key="rpm").status_code == 200
    assert chat(service, "capped", key="rpm").status_code == 200  # one window per key, whatever the model

    refused = chat(service, key="rpm")
    assert refused.status_code == 429
    retry_after = int(refused.headers["retry-after"])
    assert 1 <= retry_after <= 60
    assert refused.json() == {
        "statusCode": 429,
        "statusMessage": "Rate limit exceeded: key 'rpm' allows 3 requests per minute",
        "data": {"retryAfter": retry_after},
    }
    openai = completion(service, key="rpm")
    assert openai.status_code == 429
    assert 1 <= int(openai.headers["retry-after"]) <= 60
    assert openai.json()["error"] == {
        "message": "Rate limit exceeded: key 'rpm' allows 3 requests per minute",
        "type": "rate_limit_error",
        "param": None,
        "code": "rate_limit_exceeded",
    }
    assert chat(service, key="free").status_code == 200  # another key is not affected


def test_concurrent_streams_429_while_a_stream_is_open(service: str, fakes: Fakes) -> None:
    with held_stream(service, fakes.ollama, key="streams"):
        refused = completion(service, "acme/routed", key="streams")
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["message"] == "Too many concurrent streams: key 'streams' allows 1 at a time"
        assert chat(service, "tiny", key="free").status_code == 200  # others are served meanwhile
    # The held stream was abandoned mid-reply: its slot comes back.
    assert fakes.ollama.wait_for_disconnects(1) >= 1
    wait_for(lambda: chat(service, key="streams").status_code == 200, "the stream slot to be released")


def admitted(call: Callable[[], httpx.Response]) -> httpx.Response:
    """``call()`` once its slot is free: a slot comes back when the previous request's task has wound
    down, an instant after its client saw the last byte. A 429 never reaches the upstream, so retrying
    it consumes no scripted reply."""

    def attempt() -> httpx.Response | None:
        response = call()
        return None if response.status_code == 429 else response

    return wait_for(attempt, "a concurrency slot to be released")


def test_a_finished_stream_and_a_failed_one_give_their_slot_back(service: str, fakes: Fakes) -> None:
    for _ in range(3):
        assert admitted(lambda: chat(service, key="streams")).status_code == 200
    fakes.ollama.script(Reply(fault=Fault.status(400)))  # not retried: fails before the first byte
    assert admitted(lambda: chat(service, key="streams")).status_code == 400
    fakes.ollama.script(Reply(tokens=["a", "b"], fault=Fault.error_after(1)))
    failed = admitted(lambda: chat(service, key="streams"))
    assert failed.status_code == 200 and failed.text.splitlines()[-1].startswith("3:")  # reported in the stream
    assert admitted(lambda: chat(service, key="streams")).status_code == 200


def test_model_cap(service: str, fakes: Fakes) -> None:
    with held_stream(service, fakes.ollama, "capped"):
        refused = chat(service, "capped")
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["statusMessage"] == "Model 'acme/capped' is at its concurrency limit (1 streams)"
        assert chat(service, "tiny").status_code == 200  # same provider, uncapped model
    wait_for(lambda: chat(service, "capped").status_code == 200, "the model slot to be released")


def test_provider_cap(service: str, fakes: Fakes) -> None:
    with held_stream(service, fakes.openrouter, "routed", provider="openrouter"):
        refused = completion(service, "acme/other")
        assert refused.status_code == 429
        assert refused.json()["error"]["message"] == "Provider 'openrouter' is at its concurrency limit (1 streams)"
        assert completion(service, "acme/tiny").status_code == 200  # another provider
    wait_for(lambda: completion(service, "acme/other").status_code == 200, "the provider slot to be released")


def test_a_client_that_never_reads_loses_its_slot_when_the_gateway_drops_it(fakes: Fakes, tmp_path: Path) -> None:
    settings = Settings(
        config_path=limited_catalogue(tmp_path),
        # Long enough that the check below lands well inside it, short enough for a test.
        client_send_timeout=3.0,
        **fakes.settings_overrides(),  # type: ignore[arg-type]
    )
    fakes.ollama.script(Reply(tokens=["x" * 8192] * 4000, usage=None))  # ~32 MB: more than any buffer holds
    payload = orjson.dumps({"messages": MESSAGES})
    request = (
        "POST /api/ai/ollama/tiny/chat HTTP/1.1\r\nHost: modelgate\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {KEYS['streams']}\r\nContent-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload
    with serve_in_thread(create_app(settings)) as url, socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window from the start
        sock.connect(("127.0.0.1", int(url.rsplit(":", 1)[1])))
        sock.sendall(request)
        # Never read. While the gateway still tries to write, the stream holds the key's one slot...
        wait_for(lambda: fakes.ollama.requests, "the stream to reach the upstream")
        assert chat(url, key="streams").status_code == 429
        # ...until it gives up on the client; then the slot is back, with the client still connected.
        assert fakes.ollama.wait_for_disconnects(1) == 1
        assert admitted(lambda: chat(url, key="streams")).status_code == 200


def test_limits_fail_closed_when_redis_is_unreachable(fakes: Fakes, tmp_path: Path) -> None:
    settings = Settings(
        config_path=limited_catalogue(tmp_path),
        redis_url="redis://127.0.0.1:9/0",  # nothing listens on the discard port
        **fakes.settings_overrides(),  # type: ignore[arg-type]
    )
    with serve_in_thread(create_app(settings)) as url:
        refused = chat(url, key="rpm")
        assert refused.status_code == 503
        assert refused.json() == {"statusCode": 503, "statusMessage": "Rate-limit store unavailable; try again shortly"}
        assert chat(url, key="free").status_code == 200  # nothing to count: Redis is not needed
        assert httpx.get(url + "/ready").status_code == 503
    assert len([r for r in fakes.ollama.requests if r.path == "/api/chat"]) == 1
