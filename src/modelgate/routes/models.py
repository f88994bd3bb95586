"""``GET /models`` and ``GET /api/models``: the catalogue document, serialized once per catalogue.

Two pieces serve one contract:

* ``ModelsAnswer`` answers GET/HEAD on exactly these two paths from bytes prepared once per
  catalogue (identity and gzip bodies, their ETags and header lists): no routing, no pydantic, no
  JSON work per request. ``create_app`` puts it in the request observer's table of fast answers
  (``fast_routes``), so it is answered in front of the framework and still gets a request id, CORS
  headers, metrics and an access line like any other request (``observer.py``). Under ``modelgate serve``
  the HTTP protocol writes that same answer without an ASGI task (``protocol_answers.py``).
* The FastAPI route below is what ``/openapi.json`` and ``/docs`` describe (the seed's
  ``ModelsResponse``); it serves the same bytes should an app be built without the fast answer.
* ``ModelsMethods``, a pure ASGI middleware inside CORS, answers every other method on these paths
  with 405 and ``Allow: GET, HEAD`` (the route table alone would say ``GET``).

Conditional requests follow RFC 9110 §13.1.2 (If-None-Match uses the weak comparison, a list or ``*``);
the gzip variant carries its own ETag because a strong validator must differ between content-codings
(RFC 9110 §8.8.3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi import APIRouter, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from modelgate.app import JSON, gateway
from modelgate.auth import is_protected_path
from modelgate.catalogue import Catalogue
from modelgate.cors import VARY as CORS_VARY
from modelgate.error_bodies import error_body
from modelgate.errors import MethodNotAllowed
from modelgate.observer import FastRoute
from modelgate.schema import ErrorResponse, ModelsResponse

if TYPE_CHECKING:
    from modelgate.app import GatewayState

MODELS_PATHS = frozenset({"/models", "/api/models"})
ALLOWED_METHODS = ("GET", "HEAD")

router = APIRouter()

_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {"model": ModelsResponse, "description": "Model configurations grouped by publisher"},
    405: {"model": ErrorResponse, "description": "Method not allowed (GET and HEAD only)"},
    500: {"model": ErrorResponse, "description": "Internal Server Error"},
}


@router.get("/models", response_model=ModelsResponse, responses=_RESPONSES, summary="List the model catalogue")
@router.get("/api/models", response_model=ModelsResponse, responses=_RESPONSES, include_in_schema=False)
async def get_models(request: Request) -> Response:
    """The model catalogue: configurations grouped by publisher, the allowed models and their chat endpoints.

    Supports `ETag`/`If-None-Match`, gzip and `HEAD`; query parameters are ignored.
    """
    catalogue = gateway(request).catalogue
    return Response(catalogue.body, media_type=JSON, headers={"ETag": catalogue.etag})


# --- the fast path ------------------------------------------------------------------------------

Headers = tuple[tuple[bytes, bytes], ...]


@dataclass(frozen=True, slots=True)
class _Variant:
    """One representation of the document: its body, validator and ready-made header lists."""

    etag: bytes
    body: bytes
    headers: Headers
    not_modified_headers: Headers


@dataclass(frozen=True, slots=True)
class _Prepared:
    catalogue: Catalogue
    identity: _Variant
    gzip: _Variant


#: The representation depends on Accept-Encoding, and (CORS) on Origin.
VARY = b"Accept-Encoding, " + CORS_VARY.encode()


def prepare(catalogue: Catalogue, max_age: int) -> _Prepared:
    common: Headers = (
        (b"cache-control", b"public, max-age=%d" % max_age),
        (b"vary", VARY),
    )

    def variant(body: bytes, etag: bytes, extra: Headers) -> _Variant:
        length = (b"content-length", str(len(body)).encode())
        return _Variant(
            etag=etag,
            body=body,
            headers=((b"content-type", JSON.encode()), length, (b"etag", etag), *common, *extra),
            not_modified_headers=((b"etag", etag), *common),
        )

    etag = catalogue.etag.encode()
    gzip_etag = etag[:-1] + b'-gzip"'
    return _Prepared(
        catalogue=catalogue,
        identity=variant(catalogue.body, etag, ()),
        gzip=variant(catalogue.gzip_body, gzip_etag, ((b"content-encoding", b"gzip"),)),
    )


def _qvalue(params: bytes) -> float | None:
    """The ``q`` weight of one Accept-Encoding member (1 when absent, None when malformed)."""
    for param in params.split(b";"):
        name, _, value = param.partition(b"=")
        if name.strip().lower() == b"q":
            try:
                q = float(value.strip())
            except ValueError:
                return None
            return q if 0 <= q <= 1 else None
    return 1.0


def accepts_gzip(accept_encoding: bytes) -> bool:
    """Whether ``Accept-Encoding`` allows gzip (RFC 9110 §12.5.3): ``gzip``/``x-gzip`` or ``*``, with q > 0."""
    gzip_q: float | None = None
    star_q: float | None = None
    for member in accept_encoding.split(b","):
        coding, _, params = member.partition(b";")
        coding = coding.strip().lower()
        if coding not in (b"gzip", b"x-gzip", b"*"):
            continue
        q = _qvalue(params)
        if q is None:
            continue
        if coding == b"*":
            star_q = q
        else:
            gzip_q = q if gzip_q is None else max(gzip_q, q)
    if gzip_q is not None:
        return gzip_q > 0
    return star_q is not None and star_q > 0


def etag_matches(if_none_match: bytes, etag: bytes) -> bool:
    """If-None-Match against our (strong) tag with the weak comparison: ``*``, a list, ``W/`` tags."""
    if if_none_match == etag:
        return True
    for candidate in if_none_match.split(b","):
        candidate = candidate.strip()
        if candidate == b"*":
            return True
        if candidate.removeprefix(b"W/") == etag:
            return True
    return False


#: Distinct Accept-Encoding values remembered per app (clients send few); bounds memory under abuse.
_ACCEPT_CACHE_SIZE = 256


class ModelsAnswer:
    """GET/HEAD ``/models`` and ``/api/models`` from prepared bytes (an ``observer.FastAnswer``)."""

    def __init__(self, state: GatewayState) -> None:
        self.state = state
        self._prepared: _Prepared | None = None
        self._gzip_ok: dict[bytes, bool] = {}

    def respond(self, scope: Scope) -> tuple[int, Headers, bytes]:
        catalogue = self.state.catalogue  # one read: this request is answered from one catalogue
        prepared = self._prepared
        if prepared is None or prepared.catalogue is not catalogue:
            prepared = self._prepared = prepare(catalogue, self._max_age(catalogue))

        accept_encoding: bytes | None = None
        if_none_match: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"accept-encoding":
                accept_encoding = value if accept_encoding is None else accept_encoding + b"," + value
            elif name == b"if-none-match":
                if_none_match = value if if_none_match is None else if_none_match + b"," + value

        variant = prepared.gzip if accept_encoding and self._accepts_gzip(accept_encoding) else prepared.identity
        if if_none_match is not None and etag_matches(if_none_match, variant.etag):
            return 304, variant.not_modified_headers, b""
        return 200, variant.headers, b"" if scope["method"] == "HEAD" else variant.body

    def _max_age(self, catalogue: Catalogue) -> int:
        configured = self.state.settings.cache_max_age
        return configured if configured is not None else catalogue.server.cache_max_age

    def _accepts_gzip(self, accept_encoding: bytes) -> bool:
        known = self._gzip_ok.get(accept_encoding)
        if known is None:
            if len(self._gzip_ok) >= _ACCEPT_CACHE_SIZE:
                self._gzip_ok.clear()
            known = self._gzip_ok[accept_encoding] = accepts_gzip(accept_encoding)
        return known


def fast_routes(state: GatewayState) -> dict[tuple[str, str], FastRoute]:
    """The observer's fast answers for the catalogue: (path, method) → answer. A path auth protects
    is left to the full stack (none is today: the catalogue is public, see ``auth.py``)."""
    answer = ModelsAnswer(state)
    return {
        (path, method): FastRoute(path, answer)
        for path in sorted(MODELS_PATHS)
        for method in ALLOWED_METHODS
        if not is_protected_path(path)
    }


class ModelsMethods:
    """405 with ``Allow: GET, HEAD`` for any other method on the catalogue paths (CORS preflights are
    answered before, by the CORS middleware outside this one)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in MODELS_PATHS or scope["method"] in ALLOWED_METHODS:
            await self.app(scope, receive, send)
            return
        error = MethodNotAllowed(f"Method {scope['method']} not allowed", allow=list(ALLOWED_METHODS))
        body = error_body(error, scope["path"])
        headers = [
            (b"content-type", JSON.encode()),
            (b"content-length", str(len(body)).encode()),
            *((name.lower().encode(), value.encode()) for name, value in error.headers.items()),
        ]
        await send({"type": "http.response.start", "status": error.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
