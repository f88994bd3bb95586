"""``routes/direct.py``: the chat routes are answered in front of the framework, with the framework's answers.

Two servers of the same app: one as it ships (``DirectChat`` answers the chat routes) and one with the
observer's ``direct`` table removed, so FastAPI routes, validates and maps every error. Each request below
must get the same status, error body and headers from both; and a middleware added to the framework must
not see the chat routes (they did not go through it) while it still sees everything else.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.types import ASGIApp, Receive, Scope, Send

from modelgate.app import ModelgateAPI, create_app
from modelgate.settings import Settings
from tests.fakes import Fakes, Reply
from tests.servers import serve_in_thread

MODEL = "openrouter/deepseek-chat"
HELLO = [{"role": "user", "content": "Hello"}]
JSON = {"content-type": "application/json"}
HI = b'[{"role": "user", "content": "hi"}]'


class _Seen:
    """A framework middleware recording the paths that reached the framework."""

    def __init__(self, app: ASGIApp, paths: list[str]) -> None:
        self.app = app
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.paths.append(scope["path"])
        await self.app(scope, receive, send)


def _app(fakes: Fakes, *, direct: bool, seen: list[str] | None = None) -> ModelgateAPI:
    env = {**fakes.env(), "MODELGATE_API_KEYS": "k-one"}
    app = create_app(Settings.from_env(env))
    assert isinstance(app, ModelgateAPI) and app.observer is not None
    if not direct:
        app.observer.direct = None
    if seen is not None:
        app.add_middleware(_Seen, paths=seen)
    return app


@pytest.fixture
def both(fakes: Fakes) -> Iterator[tuple[str, str]]:
    with serve_in_thread(_app(fakes, direct=True)) as direct, serve_in_thread(_app(fakes, direct=False)) as framework:
        yield direct, framework


AUTH = {"authorization": "Bearer k-one"}
CASES: list[tuple[str, dict[str, str], bytes | None]] = [
    ("/v1/chat/completions", AUTH, b""),
    ("/v1/chat/completions", {**AUTH, **JSON}, b"{not json"),
    ("/v1/chat/completions", {**AUTH, **JSON}, b"[1, 2]"),
    ("/v1/chat/completions", {**AUTH, **JSON}, b'{"messages": []}'),
    ("/v1/chat/completions", {**AUTH, **JSON}, b'{"model": "x/y", "messages": [{"role": "user", "content": "hi"}]}'),
    ("/v1/chat/completions", {**AUTH, **JSON}, b'{"model": "%s", "messages": "nope"}' % MODEL.encode()),
    ("/v1/chat/completions", {**AUTH, **JSON}, b'{"model": "%s", "n": 2, "messages": []}' % MODEL.encode()),
    ("/v1/chat/completions", {**AUTH, "content-type": "text/plain"}, b"{}"),
    ("/v1/chat/completions", {**AUTH, **JSON}, b"\xeeu\x0fA"),  # not UTF-8 (found by test_fuzz_api)
    ("/v1/chat/completions", {**AUTH, **JSON}, b'{"model": "m", "messages": [{"role": "user", "content": "\\ud800"}]}'),
    # What orjson refuses and ``json.loads`` (FastAPI's parser) accepts: the direct route falls back to it.
    ("/v1/chat/completions", {**AUTH, **JSON}, b'{"model": "x/y", "temperature": NaN, "messages": %s}' % HI),
    ("/v1/chat/completions", {**AUTH, **JSON}, b'{"model": "x/y", "seed": 18446744073709551616, "messages": %s}' % HI),
    ("/v1/chat/completions", {**AUTH, **JSON}, b'\xef\xbb\xbf{"model": "x/y", "messages": %s}' % HI),  # a BOM
    ("/v1/chat/completions", {**AUTH, **JSON}, (b'{"model": "x/y", "messages": %s}' % HI).decode().encode("utf-16")),
    ("/v1/chat/completions", JSON, b"{}"),  # no key
    ("/v1/chat/completions", {"authorization": "Bearer wrong", **JSON}, b"{}"),
    ("/api/ai/openrouter/no-such-model/chat", {**AUTH, **JSON}, b'{"messages": [{"role": "user", "content": "x"}]}'),
    ("/api/ai/openrouter/deepseek-chat/chat", {**AUTH, **JSON}, b"{oops"),
    ("/api/ai/openrouter/deepseek-chat/chat", {**AUTH, **JSON}, b'{"messages": [{"role": "robot", "content": "x"}]}'),
    ("/api/ai/a/b/c/chat", {**AUTH, **JSON}, b'{"messages": [{"role": "user", "content": "x"}]}'),
    ("/api/ai/openrouter/deepseek-chat/chat", JSON, b"{}"),  # no key
    ("/api/ai/openrouter/deepseek-chat/chat", {**AUTH, "origin": "https://evil.example"}, b"{}"),
]


@pytest.mark.parametrize(("path", "headers", "body"), CASES)
def test_refusals_are_the_frameworks(both: tuple[str, str], path: str, headers: dict[str, str], body: bytes) -> None:
    answers = [httpx.post(url + path, headers=headers, content=body, timeout=30) for url in both]
    direct, framework = answers
    assert direct.status_code == framework.status_code >= 400
    assert direct.json() == framework.json()
    ignored = {"x-request-id", "date", "content-length"}
    assert {k: v for k, v in direct.headers.items() if k not in ignored} == {
        k: v for k, v in framework.headers.items() if k not in ignored
    }


def _events(text: str) -> list[Any]:
    """The SSE events of a stream without the per-call ``id`` and ``created``."""
    events: list[Any] = []
    for line in text.splitlines():
        if line.startswith("data: {"):
            event = json.loads(line[len("data: ") :])
            event.pop("id"), event.pop("created")
            events.append(event)
        elif line:
            events.append(line)
    return events


@pytest.mark.parametrize("stream", [True, False])
def test_replies_are_the_frameworks(both: tuple[str, str], fakes: Fakes, stream: bool) -> None:
    bodies: list[Any] = []
    for url in both:
        fakes.openrouter.script(Reply(tokens=["Hel", "lo"], usage=(3, 2)))
        answer = httpx.post(
            f"{url}/v1/chat/completions",
            headers=AUTH,
            json={"model": MODEL, "messages": HELLO, "stream": stream, "temperature": 0.5},
            timeout=30,
        )
        assert answer.status_code == 200
        assert answer.headers["x-modelgate-model"] == MODEL
        bodies.append(_events(answer.text) if stream else answer.json()["choices"])
    assert bodies[0] == bodies[1]
    assert ("data: [DONE]" in bodies[0]) if stream else bodies[0][0]["message"]["content"] == "Hello"


def test_the_chat_routes_skip_the_framework(fakes: Fakes) -> None:
    seen: list[str] = []
    with serve_in_thread(_app(fakes, direct=True, seen=seen)) as url:
        fakes.openrouter.script(Reply(tokens=["hi"]), Reply(tokens=["hi"]))
        chat = httpx.post(f"{url}/v1/chat/completions", headers=AUTH, json={"model": MODEL, "messages": HELLO})
        ai = httpx.post(f"{url}/api/ai/{MODEL}/chat", headers=AUTH, json={"messages": HELLO})
        listing = httpx.get(f"{url}/v1/models", headers=AUTH)
        wrong_method = httpx.get(f"{url}/v1/chat/completions", headers=AUTH)
    assert chat.status_code == ai.status_code == listing.status_code == 200
    assert wrong_method.status_code == 405
    assert seen == ["/v1/models", "/v1/chat/completions"]  # the listing and the GET went through FastAPI
