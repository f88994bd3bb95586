"""Fallbacks are admitted like a direct call to them: the key's model policy and the concurrency caps hold.

The attacks of issue 11 (#2, #3), against a real server on loopback with the fake upstreams: a key
allowed only a model whose fallback it may not use, and many concurrent requests through a failing
model whose fallback (or its provider) is capped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from modelgate.app import create_app
from modelgate.settings import Settings
from tests.catalogue_files import model_toml, write_catalogue
from tests.cli_process import wait_for
from tests.fakes import Fakes, FakeUpstream, Fault, Reply
from tests.servers import serve_in_thread

KEYS = {"narrow": "mg-fallback-narrow-0000111122", "wide": "mg-fallback-wide-33334444555"}
KEYS_TOML = f"""
[[keys]]
name = "narrow"
key = "{KEYS["narrow"]}"
models = ["a/fb", "a/open"]

[[keys]]
name = "wide"
key = "{KEYS["wide"]}"
"""
HEADER = '[server]\nkeys_file = "keys.toml"\n\n[providers.openrouter]\nmax_concurrency = 2\n'
MESSAGES = [{"role": "user", "content": "Hi!"}]
#: One token, then silence until the client leaves: a stream that holds its slots.
HELD = Reply(tokens=["held"], fault=Fault.hang(after=1))
#: Concurrent callers of the cap tests (the red team's figure).
CALLERS = 20


def catalogue(directory: Path) -> Path:
    (directory / "keys.toml").write_text(KEYS_TOML, encoding="utf-8")
    return write_catalogue(
        directory / "catalogue.toml",
        # The fake Ollama serves only the models the tests name (``fakes.ollama.models``): the others
        # answer 404, a failure that is not retried and falls back at once.
        model_toml("a", "fb", upstream="fb:1b", extra='fallbacks = ["a/secret", "a/open"]\n'),
        model_toml("a", "secret", upstream="secret:1b"),
        model_toml("a", "open", upstream="open:1b"),
        model_toml("a", "flaky-model", upstream="flaky:1b", extra='fallbacks = ["a/steady"]\n'),
        model_toml("a", "steady", upstream="steady:1b", extra="max_concurrency = 2\n"),
        model_toml("a", "flaky-provider", upstream="flaky:1b", extra='fallbacks = ["a/routed"]\n'),
        model_toml("a", "routed", provider="openrouter", upstream="a/routed"),
        model_toml("a", "flaky-capped", upstream="flaky:1b", extra='max_concurrency = 1\nfallbacks = ["a/open"]\n'),
        header=HEADER,
    )


@pytest.fixture
def service(fakes: Fakes, tmp_path: Path) -> Iterator[str]:
    settings = Settings(config_path=catalogue(tmp_path), probe_interval=0, **fakes.settings_overrides())  # type: ignore[arg-type]
    with serve_in_thread(create_app(settings)) as url:
        yield url


def chat(url: str, name: str, key: str) -> httpx.Response:
    return httpx.post(
        f"{url}/api/ai/ollama/{name}/chat",
        json={"messages": MESSAGES},
        headers={"Authorization": f"Bearer {KEYS[key]}"},
        timeout=30,
    )


def completion(url: str, model: str, key: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": model, "messages": MESSAGES},
        headers={"Authorization": f"Bearer {KEYS[key]}"},
        timeout=30,
    )


def asked(fake: FakeUpstream, upstream: str) -> int:
    return sum(1 for r in fake.requests if isinstance(r.json, dict) and r.json.get("model") == upstream)


# --- #2: the key's model policy ------------------------------------------------------------------------


def test_a_fallback_the_key_may_not_use_is_skipped_on_both_surfaces(service: str, fakes: Fakes) -> None:
    fakes.ollama.models = {"secret:1b"}  # a/fb fails, a/secret would answer, a/open fails too
    assert chat(service, "secret", "narrow").status_code == 403  # the direct call: refused
    for response in (chat(service, "fb", "narrow"), completion(service, "a/fb", "narrow")):
        # a/fb's own failure, not a/secret's reply; and nothing names the model the key may not see.
        assert response.status_code == 502, response.text
        assert "x-modelgate-model" not in response.headers
        assert "secret" not in response.text
    assert asked(fakes.ollama, "secret:1b") == 0
    assert asked(fakes.ollama, "fb:1b") == 2


def test_the_next_fallback_the_key_may_use_answers(service: str, fakes: Fakes) -> None:
    """Skipped, not refused: the chain goes on to a fallback within the key's policy."""
    fakes.ollama.models = {"secret:1b", "open:1b"}
    narrow = chat(service, "fb", "narrow")
    assert narrow.status_code == 200 and narrow.headers["x-modelgate-model"] == "a/open"
    # A key allowed every model gets the first fallback, as before.
    wide = completion(service, "a/fb", "wide")
    assert wide.status_code == 200 and wide.headers["x-modelgate-model"] == "a/secret"
    assert asked(fakes.ollama, "secret:1b") == 1 and asked(fakes.ollama, "open:1b") == 1


# --- #3: the fallback's model and provider caps ------------------------------------------------------


async def _concurrent_streams(url: str, name: str, callers: int) -> list[int]:
    """``callers`` requests at once, each holding its stream open; the statuses once all have one."""
    statuses: list[int] = []
    all_answered, release = asyncio.Event(), asyncio.Event()

    async def one(client: httpx.AsyncClient) -> None:
        async with client.stream(
            "POST",
            f"{url}/api/ai/ollama/{name}/chat",
            json={"messages": MESSAGES},
            headers={"Authorization": f"Bearer {KEYS['wide']}"},
        ) as response:
            # Kept until the stream is let go: a half-read iterator that is dropped gets finalised, and
            # httpx then closes the connection, so the server ends the stream and frees its slot early.
            lines = response.aiter_lines()
            if response.status_code == 200:
                async for line in lines:
                    if line.startswith("0:"):  # the fallback's first token: it is streaming
                        break
            else:
                await response.aread()
            statuses.append(response.status_code)
            if len(statuses) == callers:
                all_answered.set()
            await release.wait()  # holding the stream (and its slots) until every caller has an answer
            await lines.aclose()

    limits = httpx.Limits(max_connections=callers + 5)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        tasks = [asyncio.create_task(one(client)) for _ in range(callers)]
        try:
            async with asyncio.timeout(60):
                await all_answered.wait()
        finally:
            release.set()
            await asyncio.gather(*tasks, return_exceptions=True)
    return statuses


@pytest.mark.parametrize(
    ("primary", "fallback", "fake_name"),
    [("flaky-model", "steady:1b", "ollama"), ("flaky-provider", "a/routed", "openrouter")],
    ids=["model-cap", "provider-cap"],
)
def test_concurrent_requests_through_a_failing_model_respect_the_fallbacks_cap(
    service: str, fakes: Fakes, primary: str, fallback: str, fake_name: str
) -> None:
    fakes.ollama.models = {"steady:1b"}  # flaky:1b answers 404
    fake = fakes[fake_name]
    fake.default = HELD
    statuses = asyncio.run(_concurrent_streams(service, primary, CALLERS))
    # Exactly the cap reached the fallback; every other caller got the failing model's own error.
    assert sorted(statuses) == [200] * 2 + [502] * (CALLERS - 2)
    assert asked(fake, fallback) == 2


def test_a_failed_models_slot_is_given_back_while_its_fallback_streams(service: str, fakes: Fakes) -> None:
    """a/flaky-capped allows one stream; once it failed over to a/open, it no longer holds that one."""
    fakes.ollama.models = {"open:1b"}
    fakes.ollama.default = HELD
    with (
        httpx.Client(timeout=30) as client,
        client.stream(
            "POST",
            f"{service}/api/ai/ollama/flaky-capped/chat",
            json={"messages": MESSAGES},
            headers={"Authorization": f"Bearer {KEYS['wide']}"},
        ) as held,
    ):
        assert held.status_code == 200 and held.headers["x-modelgate-model"] == "a/open"
        lines = held.iter_lines()
        assert any(line.startswith("0:") for line in lines)
        fakes.ollama.default = Reply()
        again = chat(service, "flaky-capped", "wide")
        assert again.status_code == 200, again.text
        assert again.headers["x-modelgate-model"] == "a/open"
    wait_for(lambda: fakes.ollama.disconnects >= 1, "the held stream to be abandoned")
