"""CORS for the whole app, with origins that follow the catalogue across reloads.

Starlette's ``CORSMiddleware`` does the protocol (preflight, simple responses, ``Vary: Origin``); this
wrapper only picks its configuration: ``MODELGATE_CORS_ORIGINS`` when set, else the catalogue file's
``[server] cors_origins`` (default ``*``: the catalogue is public, read-only data). When a reload
changes the origins, the next request builds a new ``CORSMiddleware``; otherwise the built one is reused.

A refused preflight (an origin or method not allowed) is an error like any other: 400 in the documented shape
(``app.error_response``: the seed's, OpenAI's under ``/v1``), granting nothing — Starlette answers it in plain
text, and with the requested headers in ``Access-Control-Allow-Headers`` all the same.

``OriginHeaders`` gives the observer's fast answers (``GET /models``) the same headers
``CORSMiddleware`` adds to a simple response, computed once per origin instead of per request;
``tests/test_cors.py`` holds the two to the same output.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from starlette.datastructures import Headers as RequestHeaders
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from modelgate.errors import BadRequest, ModelgateError

if TYPE_CHECKING:
    from modelgate.app import GatewayState

#: Response headers a browser script may read (the model that answered, what was dropped, backoff).
EXPOSE_HEADERS = ("ETag", "X-Request-ID", "X-Modelgate-Model", "X-Modelgate-Dropped-Params", "Retry-After")
ALLOW_METHODS = ("GET", "HEAD", "POST", "OPTIONS")
#: Every response names Origin in ``Vary`` (``CORSMiddleware`` adds it whether or not the request had one).
VARY = "Origin"

Headers = tuple[tuple[bytes, bytes], ...]

#: Distinct origins remembered per app; bounds memory when clients send arbitrary ones.
_ORIGIN_CACHE_SIZE = 256


def configured_origins(state: GatewayState) -> Sequence[str]:
    """``MODELGATE_CORS_ORIGINS`` when set, else the catalogue's ``[server] cors_origins``."""
    configured = state.settings.cors_origins
    return configured if configured is not None else state.catalogue.server.cors_origins


class OriginHeaders:
    """What CORS adds to a simple (not preflight) response for one ``Origin`` value, ``Vary`` aside.

    Mirrors ``CORSMiddleware.send`` without credentials: the expose list always, and
    ``Access-Control-Allow-Origin`` (``*``, or the origin itself when it is one of a configured list).
    Computed once per origin and kept until the configured origins change (a reload).
    """

    def __init__(self, state: GatewayState) -> None:
        self.state = state
        self._origins: Sequence[str] | None = None
        self._allowed: frozenset[str] = frozenset()
        self._cache: dict[bytes, Headers] = {}

    def for_origin(self, origin: bytes) -> Headers:
        origins = configured_origins(self.state)
        if origins is not self._origins:
            self._origins = origins
            self._allowed = frozenset(origins)
            self._cache = {}
        headers = self._cache.get(origin)
        if headers is None:
            if len(self._cache) >= _ORIGIN_CACHE_SIZE:
                self._cache.clear()
            headers = self._cache[origin] = self._compute(origin)
        return headers

    def _compute(self, origin: bytes) -> Headers:
        expose = (b"access-control-expose-headers", ", ".join(EXPOSE_HEADERS).encode("latin-1"))
        if "*" in self._allowed:
            return ((b"access-control-allow-origin", b"*"), expose)
        if origin.decode("latin-1") in self._allowed:
            return (expose, (b"access-control-allow-origin", origin))
        return (expose,)


#: How the app renders an error for a path (``app.error_response``).
ErrorResponder = Callable[[ModelgateError, str], Response]


class CORSRefused(BadRequest):
    """A preflight for an origin or method that is not allowed."""

    def __init__(self, message: str, vary: str) -> None:
        super().__init__(message)
        self.vary = vary

    @property
    def headers(self) -> dict[str, str]:
        return {"Vary": self.vary}  # what the preflight's answer varies on, for a cache between


class _RefusedPreflight(Response):
    """The answer to a refused preflight, rendered for the request's path when it is sent."""

    def __init__(self, error: CORSRefused, respond: ErrorResponder) -> None:
        super().__init__(status_code=error.status)
        self.error = error
        self.respond = respond

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.respond(self.error, scope["path"])(scope, receive, send)


class _CORSMiddleware(CORSMiddleware):
    def __init__(self, app: ASGIApp, *, respond: ErrorResponder, **options: object) -> None:
        super().__init__(app, **options)  # type: ignore[arg-type]
        self.respond = respond

    def preflight_response(self, request_headers: RequestHeaders) -> Response:
        answer = super().preflight_response(request_headers)
        if answer.status_code < 400:
            return answer
        # Starlette's reason ("Disallowed CORS origin, method"), its Vary; none of its Access-Control-* grants.
        error = CORSRefused(bytes(answer.body).decode("latin-1"), answer.headers.get("vary", VARY))
        return _RefusedPreflight(error, self.respond)


class CatalogueCORS:
    def __init__(self, app: ASGIApp, state: GatewayState, respond: ErrorResponder) -> None:
        """``respond``: renders a refused preflight as every other error (``app.error_response``)."""
        self.app = app
        self.state = state
        self.respond = respond
        self._origins: Sequence[str] | None = None
        self._cors: CORSMiddleware | None = None

    def origins(self) -> Sequence[str]:
        return configured_origins(self.state)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        origins = self.origins()
        cors = self._cors
        if cors is None or (origins is not self._origins and list(origins) != list(self._origins or ())):
            cors = self._cors = _CORSMiddleware(
                self.app,
                respond=self.respond,
                allow_origins=list(origins),
                allow_methods=ALLOW_METHODS,
                allow_headers=["*"],  # API keys and request ids travel in headers; the data is public anyway
                expose_headers=EXPOSE_HEADERS,
            )
        self._origins = origins
        await cors(scope, receive, send)
