"""Fast answers written by the HTTP protocol itself: no ASGI task, no ``send`` calls.

The observer answers ``GET``/``HEAD /models`` from prepared bytes in front of the framework
(``observer.py``, ``routes/models.py``). What that still cost per request was uvicorn's ASGI machinery:
an asyncio Task, the app chain in front of the observer (``ProxyHeadersMiddleware``, ``ModelgateAPI``),
two ``send`` calls that check and frame every header, two ``transport.write`` calls. ``EarlyAnswers``
gives ``server.GuardedProtocol`` the whole response as one ``bytes`` when a request head for a fast
route is complete; the protocol writes it at once (the conditions under which it may are in
``GuardedProtocol._answer_early``).

One answer, two senders: status, headers, body, request id and CORS headers come from the observer's
``fast_reply`` and the request is counted and logged by its ``record_fast``, so both paths say the same
and follow a catalogue reload (``ModelsAnswer`` re-prepares on a new catalogue, ``OriginHeaders`` on new
origins). Only the framing is done here, as uvicorn's ``RequestResponseCycle.send`` does it: the server's
default headers (``date``, ``server``) first, the answer's headers in order, ``connection: close`` when
the connection is not kept alive. ``tests/test_protocol_answers.py`` holds a server with this path and
one without it to the same bytes.

Setting: ``MODELGATE_PROTOCOL_ANSWERS=0`` (``Settings.protocol_answers``) leaves every request to ASGI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from uvicorn.protocols.http.httptools_impl import HEADER_RE, HEADER_VALUE_RE, STATUS_LINE

if TYPE_CHECKING:
    from modelgate.observer import FastRoute, Headers, RequestObserver

#: Lifespan state key (uvicorn hands the lifespan's state to every connection's protocol).
EARLY_ANSWERS_STATE = "modelgate.early_answers"

#: Serialized header lists remembered at once; prepared lists are few (answer variants, CORS per origin).
_WIRE_CACHE_SIZE = 512


def lifespan_state(app: Any) -> dict[str, EarlyAnswers]:
    """For the app's lifespan: the answers the server may write itself, unless the settings turn them off."""
    observer: RequestObserver | None = getattr(app, "observer", None)
    if observer is None or not observer.fast or not observer.state.settings.protocol_answers:
        return {}
    return {EARLY_ANSWERS_STATE: EarlyAnswers(observer)}


class EarlyAnswers:
    def __init__(self, observer: RequestObserver) -> None:
        self.observer = observer
        #: The observer's fast routes by raw path and method, as the parser gives them.
        self.routes: dict[tuple[bytes, bytes], FastRoute] = {
            (path.encode("ascii"), method.encode("ascii")): fast for (path, method), fast in observer.fast.items()
        }
        # Header lists are prepared once and shared (an answer's variant, CORS per origin): serialized once
        # each, by identity. The cache keeps each list alive, so an id cannot be reused while it is cached.
        self._wire: dict[int, tuple[Headers, bytes]] = {}
        self._defaults: object = None
        self._defaults_wire = b""

    def route(self, raw_path: bytes, method: bytes) -> FastRoute | None:
        return self.routes.get((raw_path, method))

    def response(
        self, fast: FastRoute, scope: dict[str, Any], default_headers: list[tuple[bytes, bytes]], keep_alive: bool
    ) -> bytes:
        """The whole response to ``scope``, counted and logged. Raises what the answer raises (nothing is
        recorded then: the ASGI path answers the request and does)."""
        reply = self.observer.fast_reply(fast, scope)
        if default_headers is not self._defaults:  # uvicorn replaces the list when the date changes
            self._defaults = default_headers
            self._defaults_wire = _serialize(default_headers)
        parts = [
            STATUS_LINE[reply.status],
            self._defaults_wire,
            self._serialized(reply.headers),
            self._serialized(reply.cors),
            b"x-request-id: ",
            reply.request_id.encode("ascii"),
            b"\r\n" if keep_alive else b"\r\nconnection: close\r\n",
            b"\r\n",
            reply.body,
        ]
        self.observer.record_fast(reply, scope["method"], reply.status)
        return b"".join(parts)

    def _serialized(self, headers: Headers) -> bytes:
        if not headers:
            return b""
        known = self._wire.get(id(headers))
        if known is not None and known[0] is headers:
            return known[1]
        if len(self._wire) >= _WIRE_CACHE_SIZE:
            self._wire.clear()
        wire = _serialize(headers)
        self._wire[id(headers)] = (headers, wire)
        return wire


def _serialize(headers: Any) -> bytes:
    """Header lines as uvicorn's ``send`` writes them; what it would refuse raises (the ASGI path then answers)."""
    lines = []
    for name, value in headers:
        if HEADER_RE.search(name) or HEADER_VALUE_RE.search(value):
            raise ValueError(f"invalid HTTP header {name!r}")
        lines.append(b"%s: %s\r\n" % (name.lower(), value))
    return b"".join(lines)
