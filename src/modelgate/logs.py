"""Structured logs with credentials redacted, and the one middleware that observes every request.

``RequestObserver`` (pure ASGI, outermost) does per request, and nothing it does not need:

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
- when the response is over (the stream included): the ``modelgate_http_*`` metrics and one JSON
  log line on ``modelgate.access``.

Redaction: ``RedactingFilter`` scrubs every configured secret (provider credentials, API keys) and
any ``Bearer …`` token from message, arguments, structured fields and tracebacks. The app installs it
on every log handler present when it starts (its own and the server's), so no record reaches an
output unscrubbed, whoever logged it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import AsyncGenerator, Callable, Iterable, MutableMapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelgate.auth import PRINCIPAL_STATE
from modelgate.errors import ModelgateError, PayloadTooLarge
from modelgate.metrics import UNMATCHED_ROUTE

if TYPE_CHECKING:
    from modelgate.app import GatewayState
    from modelgate.settings import Settings

access_log = logging.getLogger("modelgate.access")
log = logging.getLogger("modelgate")

#: ``scope["state"]`` key of the request's ``Observation`` (Starlette exposes it as ``request.state.obs``).
OBSERVATION_STATE = "obs"

#: The request being handled in this task (and the tasks it starts, which copy the context). A
#: ContextVar holds no shared state: each request's task sees only its own value.
_current: ContextVar[Observation | None] = ContextVar("modelgate_observation", default=None)

#: An ``X-Request-ID`` we echo and log as given; anything else is replaced (it is client input).
_SANE_REQUEST_ID = re.compile(rb"^[A-Za-z0-9][A-Za-z0-9._:/+=-]{0,127}$")

#: Methods whose body the guard counts and times.
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

REDACTED = "[REDACTED]"


# --- the per-request record ---------------------------------------------------------------------


@dataclass(slots=True)
class Observation:
    """What one request did, filled as it goes; logged and counted when the response ends."""

    request_id: str
    started: float  # time.perf_counter()
    model: str | None = None
    provider: str | None = None
    first_event_at: float | None = None  # perf_counter() when the answering upstream's first event came
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    usage_estimated: bool = False
    dropped_params: list[str] = field(default_factory=list)
    #: (model id, error) of each failed attempt before the answer (retries and fallbacks).
    attempts: list[tuple[str, str]] = field(default_factory=list)
    #: ok | stream_error | cancelled, once a relayed reply ended.
    stream_outcome: str | None = None
    error: str | None = None
    #: The reply being relayed, closed by the middleware if the response ended without closing it.
    relay: AsyncGenerator[Any, None] | None = None

    @property
    def ttft_ms(self) -> float | None:
        if self.first_event_at is None:
            return None
        return round((self.first_event_at - self.started) * 1000, 1)


def current_observation() -> Observation | None:
    """The ``Observation`` of the request this code runs for, if any."""
    return _current.get()


# --- redaction ----------------------------------------------------------------------------------

_BEARER = r"(?i:\bbearer\s+)[^\s\"',;]+"


class RedactingFilter(logging.Filter):
    """Replaces secrets and bearer tokens in a record, in place, so every later handler sees it clean."""

    #: Shorter values are not treated as secrets: redacting "1" everywhere would destroy every log.
    MIN_SECRET_LENGTH = 4

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._pattern = re.compile(_BEARER)
        self.update(secrets)

    def update(self, secrets: Iterable[str]) -> None:
        values = sorted({s for s in secrets if len(s) >= self.MIN_SECRET_LENGTH}, key=len, reverse=True)
        alternatives = [re.escape(s) for s in values] + [_BEARER]
        self._pattern = re.compile("|".join(alternatives))

    def scrub(self, text: str) -> str:
        return self._pattern.sub(_replacement, text)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not hide the rest of the record
            message = str(record.msg)
        record.msg = self.scrub(message)
        record.args = None
        structured = getattr(record, "structured", None)
        if isinstance(structured, dict):
            record.structured = {k: self.scrub(v) if isinstance(v, str) else v for k, v in structured.items()}
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = self.scrub(record.stack_info)
        return True

    def install(self) -> None:
        """Attach to every handler of every logger that exists now (root, modelgate, uvicorn, …)."""
        for handler in _all_handlers():
            handler.addFilter(self)

    def uninstall(self) -> None:
        for handler in _all_handlers():
            handler.removeFilter(self)


def _replacement(match: re.Match[str]) -> str:
    text = match.group(0)
    if text[:6].lower() == "bearer":
        return text[: len(text) - len(text.lstrip()[6:].lstrip())] + REDACTED
    return REDACTED


def _all_handlers() -> list[logging.Handler]:
    loggers: list[logging.Logger] = [logging.getLogger()]
    loggers += [lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)]
    seen: dict[int, logging.Handler] = {}
    for logger in loggers:
        for handler in logger.handlers:
            seen[id(handler)] = handler
    return list(seen.values())


def secrets_of(settings: Settings) -> list[str]:
    """Every value that must never appear in a log: provider credentials and API keys."""
    values = [value for creds in settings.credentials.values() for value in creds.values()]
    values += list(settings.api_keys)
    # Keys of the keys file are held only as digests; presented ones travel as "Bearer …", scrubbed by pattern.
    return values


# --- JSON lines ---------------------------------------------------------------------------------


class JsonFormatter(logging.Formatter):
    """One JSON object per line. Access records print their fields; others ts, level, logger, msg, exc."""

    def format(self, record: logging.LogRecord) -> str:
        structured = getattr(record, "structured", None)
        if isinstance(structured, dict):
            return orjson.dumps(structured).decode()
        line: dict[str, Any] = {
            "ts": _iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exc"] = record.exc_text
        return orjson.dumps(line).decode()


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def logging_config(level: str = "info") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for ``uvicorn.run(log_config=...)``: JSON lines on stderr for
    modelgate and uvicorn alike; uvicorn's access log off (``modelgate.access`` replaces it)."""
    upper = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "modelgate.logs.JsonFormatter"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
        "root": {"handlers": ["stderr"], "level": upper},
        "loggers": {
            "uvicorn": {"level": upper},
            "uvicorn.error": {"level": upper},
            "uvicorn.access": {"level": "WARNING", "propagate": False},
        },
    }


# --- the middleware -----------------------------------------------------------------------------


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


class RequestObserver:
    def __init__(self, app: ASGIApp, *, state: GatewayState, respond: ErrorResponder) -> None:
        self.app = app
        self.state = state
        self.respond = respond
        #: Route templates of paths that routes without parameters answer (bounded by the route table).
        self._static_routes: dict[str, str] = {}
        self._flat_routes: list[Any] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
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
        request_id = given_id.decode("ascii") if given_id and _SANE_REQUEST_ID.match(given_id) else os.urandom(16).hex()
        obs = Observation(request_id, started)
        state: MutableMapping[str, Any] = scope.setdefault("state", {})
        state[OBSERVATION_STATE] = obs
        token = _current.set(obs)
        id_header = (b"x-request-id", request_id.encode("ascii"))
        send_timeout = settings.client_send_timeout
        status = 0
        logged = False
        guard: _BodyGuard | None = None
        replaced = False

        async def send_out(message: Message) -> None:
            nonlocal status, logged
            kind = message["type"]
            if kind == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), id_header]}
            elif kind == "http.response.body":
                if message.get("more_body", False):
                    # Only streamed chunks can wait on a client that does not read; one-shot bodies fit the buffer.
                    try:
                        async with asyncio.timeout(send_timeout):
                            await send(message)
                    except TimeoutError:
                        raise ClientStalled from None
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

        try:
            if scope["method"] in _BODY_METHODS:
                limit = settings.max_body_bytes
                if declared_length is not None and declared_length.isdigit() and int(declared_length) > limit:
                    # Refused before reading a byte of it.
                    await self.respond(body_too_large(limit), scope["path"])(scope, receive, send_out)
                    return
                guard = _BodyGuard(receive, limit, settings.client_body_timeout)
                receive = guard.receive
            await self.app(scope, receive, send_observed)
        except ClientStalled:
            obs.error = obs.error or "client stopped reading"
            # Returning without completing the response makes the server close the connection.
        except BaseException:
            if status == 0:
                status = 500
            raise
        finally:
            _current.reset(token)
            await _close_relay(obs)
            if not logged:  # the response did not complete: client gone, stalled, or the app failed
                self._finish(scope, obs, status or 500)

    def _finish(self, scope: Scope, obs: Observation, status: int) -> None:
        duration = time.perf_counter() - obs.started
        route = self._route(scope)
        method: str = scope["method"]
        self.state.metrics.observe_request(route, method, status, duration)
        level = logging.WARNING if status >= 500 else logging.INFO
        if not access_log.isEnabledFor(level):
            return
        fields: dict[str, Any] = {
            "ts": _iso(time.time()),
            "level": logging.getLevelName(level).lower(),
            "msg": "request",
            "request_id": obs.request_id,
            "method": method,
            "route": route,
            "status": status,
            "duration_ms": round(duration * 1000, 1),
        }
        if obs.model is not None:
            fields["model"] = obs.model
            fields["provider"] = obs.provider
            fields["ttft_ms"] = obs.ttft_ms
            fields["prompt_tokens"] = obs.prompt_tokens
            fields["completion_tokens"] = obs.completion_tokens
            if obs.usage_estimated:
                fields["usage_estimated"] = True
            fields["dropped_params"] = obs.dropped_params
        if obs.attempts:
            fields["attempts"] = [f"{model}: {error}" for model, error in obs.attempts]
        if obs.stream_outcome is not None:
            fields["stream"] = obs.stream_outcome
        if obs.error is not None:
            fields["error"] = obs.error
        principal = scope.get("state", {}).get(PRINCIPAL_STATE)
        key_id = getattr(principal, "key_id", None)
        if key_id is not None:
            fields["key_id"] = key_id
        access_log.log(level, "%s", orjson.dumps(fields).decode(), extra={"structured": fields})

    def _routes(self, scope: Scope) -> list[Any]:
        """Every route with a template, flat (FastAPI nests included routers in wrappers without one)."""
        if self._flat_routes is None:
            from modelgate.routes import ROUTERS  # routes import the app module, which imports this one

            app_routes = getattr(getattr(scope.get("app"), "router", None), "routes", ())
            candidates = [*app_routes, *(route for router in ROUTERS for route in router.routes)]
            self._flat_routes = [r for r in candidates if isinstance(getattr(r, "path", None), str)]
        return self._flat_routes

    def _route(self, scope: Scope) -> str:
        """The matched route's template, never the raw path (metric labels must stay bounded)."""
        path = getattr(scope.get("route"), "path", None)
        if isinstance(path, str):
            return path
        # Answered before routing (the /models fast path, auth refusals): find the template ourselves.
        raw: str = scope["path"]
        known = self._static_routes.get(raw)
        if known is not None:
            return known
        for route in self._routes(scope):
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
