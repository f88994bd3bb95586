"""The one middleware that observes every request, in front of the whole application.

``RequestObserver`` wraps the app, FastAPI's own layers included (``app.ModelgateAPI`` calls it
first), and does per request, and nothing it does not need:

- a request id: ``X-Request-ID`` when it is sane, else a fresh one; echoed in the response;
- an ``Observation`` (``request.state.obs``; ``current_observation()`` for code without the
  request, such as ``gateway.open_stream``) that routes and the gateway fill: model, provider,
  time to first token, usage, dropped parameters, attempts, mid-stream error;
- the body guard: ``Content-Length`` over ``settings.max_body_bytes`` → 413 before reading a byte;
  a body without one is counted while it arrives and refused at the limit; the whole body must
  arrive within ``settings.client_body_timeout`` (a client trickling it one byte a second gets 408
  and its connection closed);
- the send guard: a streamed chunk the client does not accept within ``settings.client_send_timeout``
  (a client that never reads) ends the response, which closes the upstream;
- when the response is over (the stream included): the ``modelgate_http_*`` metrics and one access
  line (``access_log.AccessLog``).

**Fast answers.** A path + method in the ``fast`` table (``GET``/``HEAD /models``, see
``routes/models.py``) is answered here from prepared bytes, one dict lookup after the request
arrives, without the framework: no routing, no Starlette/FastAPI middleware layers. It still gets
everything a request gets: request id, CORS headers (``cors.OriginHeaders``, computed once per
origin), the metrics and the access line. Auth is decided once, when the table is built: a path
``auth.is_protected_path`` protects never enters it (today's fast paths are public by policy). What
it does skip is FastAPI's native OpenTelemetry bridge, which is idle unless an OpenTelemetry
provider is configured and costs ~2.5 µs per request to find that out. Under ``server.GuardedProtocol``
the HTTP protocol writes the same answers itself, without an ASGI task (``protocol_answers.py``), from
``fast_reply`` and ``record_fast``: the observer still decides what is answered, counted and logged.

**Direct answers.** The chat routes (``POST /v1/chat/completions``, ``POST /api/ai/.../chat``) are handed to
``direct`` (``routes/direct.py``) instead of the framework: the same CORS, key check, handlers and error
mapping, without the framework's layers. A middleware added to the FastAPI app does not see them.
``DIRECT_SEND`` lets a streamed response send its body chunks to ``send_out`` without the framework's
``send`` wrappers (``relay_response.py``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import AsyncGenerator, Callable, Mapping, MutableMapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelgate.auth import PRINCIPAL_STATE
from modelgate.cors import OriginHeaders
from modelgate.deadline import Deadline
from modelgate.errors import ModelgateError, PayloadTooLarge
from modelgate.metrics import UNMATCHED_ROUTE
from modelgate.push_lane import LoopLag

if TYPE_CHECKING:
    from modelgate.app import GatewayState
    from modelgate.auth import KeyRing
    from modelgate.catalogue import Catalogue
    from modelgate.tracing import RequestTrace

log = logging.getLogger("modelgate")

#: ``scope["state"]`` key of the request's ``Observation`` (Starlette exposes it as ``request.state.obs``).
OBSERVATION_STATE = "obs"

#: The request being handled in this task (and the tasks it starts, which copy the context). A
#: ContextVar holds no shared state: each request's task sees only its own value.
_current: ContextVar[Observation | None] = ContextVar("modelgate_observation", default=None)

#: An ``X-Request-ID`` we echo and log as given; anything else is replaced (it is client input).
_SANE_REQUEST_ID = re.compile(rb"^[A-Za-z0-9][A-Za-z0-9._:/+=-]{0,127}$")

#: ``scope`` key of the observer's own ``send`` (send guard, metrics, access line), for a response whose body
#: chunks need none of the framework's ``send`` wrappers (``relay_response.RelayResponse``).
DIRECT_SEND = "modelgate.send"
#: ``scope`` key of the server's own ``send`` (beneath the observer), for ``relay_response.ChunkWriter``.
SERVER_SEND = "modelgate.server_send"
#: The loop's ``LoopLag`` when a streamed response may push the middle of its reply, else None (``push_lane.py``;
#: ``Settings.push_lane``).
PUSH_LANE = "modelgate.push_lane"

#: Methods whose body the guard counts and times.
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


# --- the per-request record ---------------------------------------------------------------------


@dataclass(slots=True)
class Observation:
    """What one request did, filled as it goes; logged and counted when the response ends."""

    request_id: str
    started: float  # time.perf_counter()
    model: str | None = None  #: the model answering (or trying to): set by ``gateway.open_stream``
    requested_model: str | None = None
    provider: str | None = None
    #: The catalogue ``open_stream`` read: a reload mid-stream must not reprice (or unprice) its ledger row.
    catalogue: Catalogue | None = None
    first_event_at: float | None = None  # perf_counter() when the answering upstream's first event came
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    reasoning_tokens: int | None = None
    cached_tokens: int | None = None  #: of ``prompt_tokens``, the provider's prompt-cache hits, when it reports them
    reported_cost: float | None = None  #: USD the upstream says it billed (``Usage.cost``), when it says
    usage_estimated: bool = False
    dropped_params: list[str] = field(default_factory=list)
    #: (model id, error) of each failed attempt before the answer (retries and fallbacks).
    attempts: list[tuple[str, str]] = field(default_factory=list)
    #: ok | stream_error | cancelled, once a relayed reply ended.
    stream_outcome: str | None = None
    error: str | None = None
    #: Why a layer above the gateway's relay stopped reading the reply and ended it with an error (the Responses
    #: encoder past its held output): the relay, closed, records a stream error with this, not a client gone.
    cut_reason: str | None = None
    #: The request's OpenTelemetry spans, when tracing is on (``tracing.py``, started by ``gateway.open_stream``).
    trace: RequestTrace | None = None
    #: The reply being relayed, closed by the middleware if the response ended without closing it.
    relay: AsyncGenerator[Any, None] | None = None
    #: The request id came from the client (``X-Request-ID``): client text, redacted in the log.
    client_id: bool = False
    #: Events of the answering reply relayed so far: the completion estimate of a reply cut before its usage.
    relayed_events: int = 0
    #: The request's headers as the server gave them (tracing reads a caller's trace context from them).
    request_headers: Sequence[tuple[bytes, bytes]] = ()

    @property
    def ttft_ms(self) -> float | None:
        if self.first_event_at is None:
            return None
        return round((self.first_event_at - self.started) * 1000, 1)


def current_observation() -> Observation | None:
    """The ``Observation`` of the request this code runs for, if any."""
    return _current.get()


# --- fast answers -------------------------------------------------------------------------------

#: Header lists prepared once and shared by every request they answer (never mutated).
Headers = tuple[tuple[bytes, bytes], ...]


class FastAnswer(Protocol):
    def respond(self, scope: Scope) -> tuple[int, Headers, bytes]:
        """Status, headers and body for this request (``scope``: at least ``method``, ``path``, ``headers``)."""
        ...


@dataclass(frozen=True, slots=True)
class FastRoute:
    route: str  #: the route template the request is counted and logged under
    answer: FastAnswer


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs a microsecond more per request
class FastReply:
    """A fast answer ready to send, by the observer (ASGI) or by the HTTP protocol itself (``protocol_answers.py``):
    the answer's headers, then the CORS headers of the request's origin, then ``x-request-id``."""

    route: str
    status: int
    headers: Headers
    cors: Headers
    request_id: str
    client_id: bool
    body: bytes
    started: float  # time.perf_counter()


# --- refusals -----------------------------------------------------------------------------------


class BodyTimeout(ModelgateError):
    status = 408

    def __init__(self, seconds: float) -> None:
        super().__init__(f"The request body did not arrive within {seconds:g} seconds")

    @property
    def headers(self) -> dict[str, str]:
        # The rest of the body may still trickle in: stop reading it.
        return {"Connection": "close"}


def body_too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The request body is larger than {limit} bytes", data={"limit": limit})


class _BodyRefused(StarletteHTTPException):
    """Raised from ``receive`` to stop the app reading. A Starlette HTTPException because FastAPI's body
    parsing re-raises those and turns anything else into a generic 400; whatever the app answers
    then, ``RequestObserver`` replaces it with the refusal (413 or 408)."""


class ClientStalled(Exception):
    """The client stopped reading the response (see ``client_send_timeout``)."""


ErrorResponder = Callable[[ModelgateError, str], ASGIApp]


# --- the middleware -----------------------------------------------------------------------------


class RequestObserver:
    def __init__(
        self,
        app: ASGIApp,
        *,
        state: GatewayState,
        respond: ErrorResponder,
        routes: Callable[[], list[Any]],
        fast: Mapping[tuple[str, str], FastRoute] | None = None,
        direct: Callable[[Scope], ASGIApp | None] | None = None,
    ) -> None:
        """``routes``: the app's routes (read lazily: routers are included after the observer is built).
        ``direct``: the app that answers a request in front of the framework, or None (``routes/direct.py``)."""
        self.app = app
        self.state = state
        self.respond = respond
        self.fast: Mapping[tuple[str, str], FastRoute] = fast or {}
        self.direct = direct
        self.cors = OriginHeaders(state)
        self._app_routes = routes
        #: How late this app's loop runs while replies are pushed (``push_lane.LoopLag``).
        self.lag = LoopLag()
        #: Route templates of paths that routes without parameters answer (bounded by the route table).
        self._static_routes: dict[str, str] = {}
        self._flat_routes: list[Any] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        fast = self.fast.get((scope["path"], scope["method"]))
        if fast is not None:
            await self._answer(fast, scope, receive, send)
            return
        started = time.perf_counter()
        settings = self.state.settings
        given_id: bytes | None = None
        declared_length: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                given_id = value
            elif name == b"content-length":
                declared_length = value
        request_id, client_id = _request_id(given_id, self.state.keys)
        obs = Observation(request_id, started, client_id=client_id, request_headers=scope["headers"])
        state: MutableMapping[str, Any] = scope.setdefault("state", {})
        state[OBSERVATION_STATE] = obs
        token = _current.set(obs)
        id_header = (b"x-request-id", obs.request_id.encode("ascii"))
        send_timeout = settings.client_send_timeout
        stall: Deadline | None = None  # the send guard's one timer, made at the first streamed chunk
        status = 0
        logged = False
        guard: _BodyGuard | None = None
        replaced = False

        async def send_out(message: Message) -> None:
            nonlocal status, logged, stall
            kind = message["type"]
            if kind == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), id_header]}
            elif kind == "http.response.body":
                if message.get("more_body", False):
                    # A stream is ended here when its client stops reading (and its upstream closed). A one-shot body
                    # waiting on such a client is dropped with its connection by the server (server.GuardedProtocol).
                    # One Deadline per response, not a timeout object per chunk (deadline.py).
                    if stall is None:
                        stall = Deadline(asyncio.get_running_loop())
                    stall.begin_in(send_timeout)
                    try:
                        await send(message)
                    except asyncio.CancelledError:
                        if stall.fired():
                            raise ClientStalled from None
                        raise
                    finally:
                        stall.end()
                    return
                # The last message: record now, so the request is counted before its client sees the end.
                logged = True
                self._finish(scope, obs, status)
            await send(message)

        async def send_observed(message: Message) -> None:
            nonlocal replaced
            if replaced:
                return  # the app's answer to a refused body, already replaced by the refusal
            if message["type"] == "http.response.start" and guard is not None and guard.refusal is not None:
                replaced = True
                await self.respond(guard.refusal, scope["path"])(scope, receive, send_out)
                return
            await send_out(message)

        scope[DIRECT_SEND] = send_out
        scope[SERVER_SEND] = send
        scope[PUSH_LANE] = self.lag if settings.push_lane else None
        try:
            if scope["method"] in _BODY_METHODS:
                limit = settings.max_body_bytes
                if declared_length is not None and declared_length.isdigit() and int(declared_length) > limit:
                    # Refused before reading a byte of it.
                    await self.respond(body_too_large(limit), scope["path"])(scope, receive, send_out)
                    return
                guard = _BodyGuard(receive, limit, settings.client_body_timeout)
                receive = guard.receive
            app = self.direct(scope) if self.direct is not None else None
            await (app or self.app)(scope, receive, send_observed)
        except ClientStalled:
            obs.error = obs.error or "client stopped reading"
            # Returning without completing the response makes the server close the connection.
        except BaseException:
            if status == 0:
                status = 500
            raise
        finally:
            _current.reset(token)
            if stall is not None:
                stall.stop()
            await _close_relay(obs)
            if not logged:  # the response did not complete: client gone, stalled, or the app failed
                self._finish(scope, obs, status or 500)
            # The request's reference cycles end here (the scope holds our send closures, which hold the
            # scope; its state holds cleanups bound to objects that hold the request): refcounting frees it
            # all now, instead of the cyclic collector walking it later (heap.py).
            del scope[DIRECT_SEND], scope[SERVER_SEND], scope[PUSH_LANE]
            state.clear()

    async def _answer(self, fast: FastRoute, scope: Scope, receive: Receive, send: Send) -> None:
        """Send a fast answer, with the request id and CORS headers, counted and logged like any other."""
        try:
            reply = self.fast_reply(fast, scope)
        except Exception as exc:  # what the framework's last-resort handler would do: log it, answer opaquely
            await self._fast_failed(fast, scope, receive, send, exc)
            return
        headers = [*reply.headers, *reply.cors, (b"x-request-id", reply.request_id.encode("ascii"))]
        recorded = False
        try:
            await send({"type": "http.response.start", "status": reply.status, "headers": headers})
            # Recorded before the body goes out, so the request is counted before its client sees the end.
            recorded = True
            self.record_fast(reply, scope["method"], reply.status)
            await send({"type": "http.response.body", "body": reply.body})
        except BaseException:
            if not recorded:
                self.record_fast(reply, scope["method"], 500)
            raise

    def fast_reply(self, fast: FastRoute, scope: Scope) -> FastReply:
        """The whole fast answer to ``scope``; raises what the answer raises."""
        started = time.perf_counter()
        request_id, client_id, origin = _fast_request_ids(scope, self.state.keys)
        status, headers, body = fast.answer.respond(scope)
        cors = self.cors.for_origin(origin) if origin is not None else ()
        return FastReply(fast.route, status, headers, cors, request_id, client_id, body, started)

    def record_fast(self, reply: FastReply, method: str, status: int) -> None:
        """Count and log a fast answer (``status``: what the client got)."""
        self._record(None, reply.request_id, reply.client_id, method, reply.route, status, reply.started, None)

    async def _fast_failed(self, fast: FastRoute, scope: Scope, receive: Receive, send: Send, exc: Exception) -> None:
        started = time.perf_counter()
        request_id, client_id, _ = _fast_request_ids(scope, self.state.keys)
        log.error("unhandled error on %s %s", scope["method"], scope["path"], exc_info=exc)
        error = self.respond(ModelgateError("Internal Server Error"), scope["path"])
        id_header = (b"x-request-id", request_id.encode("ascii"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), id_header]}
            await send(message)

        self._record(None, request_id, client_id, scope["method"], fast.route, 500, started, None)
        await error(scope, receive, send_with_id)

    def _finish(self, scope: Scope, obs: Observation, status: int) -> None:
        try:
            principal = scope.get("state", {}).get(PRINCIPAL_STATE)
            key_id: str | None = getattr(principal, "key_id", None)
            route = self._route(scope)
            ledger = self.state.ledger
            if ledger is not None and obs.model is not None:  # a chat request that reached open_stream (ledger.py)
                ledger.record(obs, status, key_id, obs.catalogue or self.state.catalogue)
            if obs.trace is not None:
                obs.trace.end(obs, status)
            self._record(obs, obs.request_id, obs.client_id, scope["method"], route, status, obs.started, key_id)
        except Exception as exc:  # bookkeeping never breaks the response it describes
            _bookkeeping_failed(scope, exc)

    def _record(
        self,
        obs: Observation | None,
        request_id: str,
        client_id: bool,
        method: str,
        route: str,
        status: int,
        started: float,
        key_id: str | None,
    ) -> None:
        duration = time.perf_counter() - started
        state = self.state
        state.metrics.observe_request(route, method, status, duration)
        state.access_log.record(
            obs,
            request_id=request_id,
            client_id=client_id,
            method=method,
            route=route,
            status=status,
            duration=duration,
            key_id=key_id,
        )

    def _routes(self) -> list[Any]:
        """Every route with a template, flat (FastAPI nests included routers in wrappers without one)."""
        if self._flat_routes is None:
            from modelgate.routes import ROUTERS  # routes import the app module, which imports this one

            candidates = [*self._app_routes(), *(route for router in ROUTERS for route in router.routes)]
            self._flat_routes = [r for r in candidates if isinstance(getattr(r, "path", None), str)]
        return self._flat_routes

    def _route(self, scope: Scope) -> str:
        """The matched route's template, never the raw path (metric labels must stay bounded)."""
        path = getattr(scope.get("route"), "path", None)
        if isinstance(path, str):
            return path
        # Answered before routing (auth refusals, body refusals): find the template ourselves.
        raw: str = scope["path"]
        known = self._static_routes.get(raw)
        if known is not None:
            return known
        for route in self._routes():
            try:
                match, _ = route.matches(scope)
            except Exception:  # a route's converter refusing the path is simply no match
                continue
            if match is not Match.NONE:
                template: str = route.path
                if "{" not in template:
                    self._static_routes[raw] = template
                return template
        return UNMATCHED_ROUTE


def _bookkeeping_failed(scope: Scope, exc: Exception) -> None:
    """A request's line, ledger row or trace could not be made: said in the log, and the response goes on (it
    runs in the response's ``send``: raised there, a value the bookkeeping could not write cut a finished reply)."""
    log.error("could not record %s %s", scope["method"], scope["path"], exc_info=exc)


def _request_id(given: bytes | None, keys: KeyRing) -> tuple[str, bool]:
    """The request's id and whether the client chose it: its ``X-Request-ID`` if sane, else a new one. A key
    sent as the id is replaced too: the keys file's and the run-time ones are held as digests, so no redactor
    pattern knows them, and the id goes to the access line, the ledger and the trace."""
    if given is not None and _SANE_REQUEST_ID.match(given) is not None and keys.identify(given) is None:
        return given.decode("ascii"), True
    return os.urandom(16).hex(), False


def _fast_request_ids(scope: Scope, keys: KeyRing) -> tuple[str, bool, bytes | None]:
    """A fast answer's request id, whether the client chose it, and the request's ``Origin``."""
    given_id: bytes | None = None
    origin: bytes | None = None
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            given_id = value
        elif name == b"origin":
            origin = value
    return (*_request_id(given_id, keys), origin)


class _BodyGuard:
    """``receive`` that counts the body against ``limit`` and wants all of it before a deadline."""

    def __init__(self, receive: Receive, limit: int, timeout: float) -> None:
        self._receive = receive
        self.limit = limit
        self.timeout = timeout
        self.deadline = asyncio.get_running_loop().time() + timeout
        self.received = 0
        self.complete = False
        #: Why the body was refused; the response the client gets.
        self.refusal: ModelgateError | None = None

    async def receive(self) -> Message:
        if self.complete:  # after the body only http.disconnect is left to wait for, with no deadline
            return await self._receive()
        try:
            async with asyncio.timeout_at(self.deadline):
                message = await self._receive()
        except TimeoutError:
            self.refusal = BodyTimeout(self.timeout)
            raise _BodyRefused(408) from None
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limit:
                self.refusal = body_too_large(self.limit)
                raise _BodyRefused(413)
            self.complete = not message.get("more_body", False)
        else:
            self.complete = True
        return message


async def _close_relay(obs: Observation) -> None:
    """Close a reply the response left open (client gone or stalled), so its upstream closes now."""
    relay = obs.relay
    if relay is None:
        return
    obs.relay = None
    try:
        await relay.aclose()
    except RuntimeError:  # still running in a task being torn down; that task's cancellation closes it
        pass
    except Exception:
        log.exception("closing an abandoned reply failed")
