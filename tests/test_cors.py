"""``cors.OriginHeaders`` (the fast answers' CORS, computed once per origin) against Starlette's
``CORSMiddleware`` (what every other response gets): the same headers for every configuration."""

from __future__ import annotations

import asyncio

import pytest
from starlette.middleware.cors import CORSMiddleware
from starlette.types import Message, Receive, Scope, Send

from modelgate.app import create_app
from modelgate.cors import ALLOW_METHODS, EXPOSE_HEADERS, OriginHeaders
from modelgate.routes.models import VARY as MODELS_VARY
from modelgate.settings import Settings

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
