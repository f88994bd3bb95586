"""``cors.OriginHeaders`` (the fast answers' CORS, computed once per origin) against Starlette's
``CORSMiddleware`` (what every other response gets): the same headers for every configuration."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
from starlette.middleware.cors import CORSMiddleware
from starlette.types import Message, Receive, Scope, Send

from modelgate.app import create_app
from modelgate.cors import ALLOW_METHODS, EXPOSE_HEADERS, OriginHeaders
from modelgate.routes.models import VARY as MODELS_VARY
from modelgate.settings import Settings
from tests.servers import serve_in_thread

BASE = [(b"content-type", b"application/json"), (b"vary", b"Accept-Encoding")]


def starlette_headers(origins: tuple[str, ...], origin: bytes | None) -> list[tuple[bytes, bytes]]:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": list(BASE)})

    cors = CORSMiddleware(
        app,
        allow_origins=list(origins),
        allow_methods=ALLOW_METHODS,
        allow_headers=["*"],
        expose_headers=EXPOSE_HEADERS,
    )
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    headers = [(b"host", b"x")] + ([(b"origin", origin)] if origin is not None else [])
    scope = {"type": "http", "method": "GET", "path": "/models", "headers": headers}
    asyncio.run(cors(scope, receive, send))
    return list(sent[0]["headers"])


def ours(origins: tuple[str, ...], origin: bytes | None) -> list[tuple[bytes, bytes]]:
    state = create_app(Settings(cors_origins=origins, probe_interval=0)).state.gateway
    # Vary (Accept-Encoding and Origin) is prepared with the catalogue's headers; the rest is per origin.
    headers = [BASE[0], (b"vary", MODELS_VARY)]
    if origin is not None:
        headers += OriginHeaders(state).for_origin(origin)
    return headers


@pytest.mark.parametrize("origins", [("*",), ("https://a.example", "https://b.example"), ("https://a.example", "*")])
@pytest.mark.parametrize("origin", [None, b"https://a.example", b"https://b.example", b"https://evil.example", b"null"])
def test_the_same_headers_as_starlette(origins: tuple[str, ...], origin: bytes | None) -> None:
    assert ours(origins, origin) == starlette_headers(origins, origin)


def test_origins_follow_the_catalogue_after_a_swap() -> None:
    state = create_app(Settings(cors_origins=("https://a.example",), probe_interval=0)).state.gateway
    headers = OriginHeaders(state)
    assert (b"access-control-allow-origin", b"https://a.example") in headers.for_origin(b"https://a.example")
    state.settings = Settings(cors_origins=("https://b.example",))
    assert (b"access-control-allow-origin", b"https://a.example") not in headers.for_origin(b"https://a.example")
    assert (b"access-control-allow-origin", b"https://b.example") in headers.for_origin(b"https://b.example")


# --- preflights over a real server --------------------------------------------------------------------


@pytest.fixture(scope="module")
def listed() -> Iterator[str]:
    settings = Settings(cors_origins=("https://a.example",), api_keys=("mg-cors-key-123456",), probe_interval=0)
    with serve_in_thread(create_app(settings)) as url:
        yield url


def preflight(url: str, path: str, origin: str, **extra: str) -> httpx.Response:
    headers = {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, x-internal-token",
        **extra,
    }
    return httpx.options(url + path, headers=headers)


@pytest.mark.parametrize(
    ("path", "shape"),
    [("/v1/chat/completions", "openai"), ("/api/ai/ollama/rwkv-6-world/chat", "seed"), ("/models", "seed")],
)
def test_a_refused_preflight_is_an_error_in_the_documented_shape_granting_nothing(
    listed: str, path: str, shape: str
) -> None:
    """Found in review: Starlette's ``text/plain`` "Disallowed CORS origin", with the requested headers granted in
    ``Access-Control-Allow-Headers`` all the same."""
    refused = preflight(listed, path, "https://evil.example")
    assert refused.status_code == 400
    assert refused.headers["content-type"] == "application/json"
    if shape == "openai":
        assert refused.json()["error"]["message"] == "Disallowed CORS origin"
        assert refused.json()["error"]["type"] == "invalid_request_error"
    else:
        assert refused.json() == {"statusCode": 400, "statusMessage": "Disallowed CORS origin"}
    assert not [name for name in refused.headers if name.startswith("access-control-")], refused.headers
    assert "Origin" in refused.headers["vary"]
    assert refused.headers["x-request-id"]
    allowed = preflight(listed, path, "https://a.example")
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://a.example"
    assert allowed.headers["access-control-allow-headers"] == "authorization, x-internal-token"
    method = preflight(listed, path, "https://a.example", **{"Access-Control-Request-Method": "DELETE"})
    assert method.status_code == 400 and "Disallowed CORS method" in method.text
