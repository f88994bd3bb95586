"""``create_app(settings, catalogue)`` → the ASGI app.

The lifespan owns the shared upstream HTTP client and the provider instances; the catalogue is one
reference on ``GatewayState`` that reloads swap atomically. Every ``ModelgateError`` (and every
unexpected exception) is mapped to JSON here, in the seed's shape ``{"statusCode", "statusMessage"}``
or, under ``/v1``, in OpenAI's ``{"error": {...}}`` shape.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import aiohttp
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from modelgate import budgets
from modelgate.access_log import AccessLog
from modelgate.auth import AccessMiddleware, KeyRing, load_keyring
from modelgate.catalogue import Catalogue, load_catalogue
from modelgate.cors import CatalogueCORS
from modelgate.drain import DRAIN_STATE, Drain
from modelgate.error_bodies import error_body, is_openai_path
from modelgate.errors import (
    BadRequest,
    CatalogueError,
    ClientDisconnected,
    MethodNotAllowed,
    ModelgateError,
    NotFound,
)
from modelgate.heap import tune_for_serving
from modelgate.ledger import Ledger
from modelgate.limits import Limiter
from modelgate.logs import RedactingFilter, secrets_of
from modelgate.metrics import Metrics
from modelgate.observer import RequestObserver
from modelgate.providers import PROVIDERS, Connection, Provider, new_session
from modelgate.redact import url_secrets
from modelgate.reload import catalogue_reloading, one_line
from modelgate.resilience import Breakers
from modelgate.runtime_keys import RuntimeKeys
from modelgate.settings import Settings
from modelgate.status import Prober, StatusBoard
from modelgate.tracing import Tracing

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

log = logging.getLogger("modelgate")

JSON = "application/json"


class GatewayState:
    """Everything a request needs, owned by one app instance (no module-level state)."""

    def __init__(self, settings: Settings, catalogue: Catalogue, tracer_provider: TracerProvider | None = None) -> None:
        self.settings = settings
        self._catalogue = catalogue
        self.http: aiohttp.ClientSession | None = None
        self.providers: dict[str, Provider] = {}
        #: API keys from the environment and the catalogue's keys file (``auth.py``); swapped with the catalogue.
        self.local_keys: KeyRing = load_keyring(settings, catalogue)
        self.limiter = Limiter.from_settings(settings)
        # Observability and resilience (metrics.py, logs.py, status.py, resilience.py).
        self.metrics = Metrics()
        self.breakers = Breakers()
        self.status = StatusBoard()
        self.redactor = RedactingFilter(self._secrets(catalogue))
        self.access_log = AccessLog(self.redactor)
        #: OpenTelemetry traces (``tracing.py``): None unless configured, or given a provider.
        self.tracing = Tracing.create(settings.tracing, self.redactor.scrub, tracer_provider)
        self.prober = Prober(self, settings.probe_interval)
        #: The graceful-shutdown limit (drain.py), started by the server (server.py).
        self.drain = Drain(settings.graceful_timeout)
        #: Budgets' counters being started from the ledger (``budgets.restore``).
        self._restoring: asyncio.Task[None] | None = None
        #: The usage ledger (``ledger.py``), when a database is configured.
        self.ledger: Ledger | None = None
        if settings.database_url is not None:
            self.ledger = Ledger(
                settings.database_url, scrub=self.redactor.scrub, flush_interval=settings.ledger_flush_interval
            )
        #: Keys managed at run time (``runtime_keys.py``), in the ledger's database.
        self.runtime_keys: RuntimeKeys | None = None
        if self.ledger is not None:
            self.runtime_keys = RuntimeKeys(
                self.ledger,
                local=lambda: self.local_keys,
                env_keys=settings.api_keys,
                publish=self._publish_keys,
                interval=settings.key_refresh_interval,
                fail_closed=settings.admin_key is not None,
                scrub=self.redactor.scrub,
            )
        #: The keys every request is checked against: both of the above, swapped whole (one reference).
        self.keys: KeyRing = self._enforced_keys()

    @property
    def catalogue(self) -> Catalogue:
        return self._catalogue

    def swap_catalogue(self, catalogue: Catalogue) -> None:
        """Atomically replace the catalogue: one reference assignment, so a request sees old or new."""
        providers = self._build_providers(catalogue) if self.http is not None else {}
        keys = load_keyring(self.settings, catalogue)  # a broken keys file keeps the old catalogue too
        self._catalogue = catalogue
        self.local_keys = keys
        self.keys = self._enforced_keys()  # the run-time keys' task imports the file's keys at its next tick
        self.redactor.update(self._secrets(catalogue))
        # Health records, breakers and metric series of providers and models the catalogue no longer has:
        # nothing reads them, and a scrape would show the dropped models forever.
        self.status.retain(catalogue)
        self.breakers.retain(catalogue)
        self.metrics.retain(catalogue)
        if self.http is not None:
            self.providers = providers
            self.prober.wake()  # probe what the new catalogue uses now, not an interval later

    def _enforced_keys(self) -> KeyRing:
        return self.runtime_keys.ring(self.local_keys) if self.runtime_keys is not None else self.local_keys

    def _publish_keys(self, keys: KeyRing) -> None:
        self.keys = keys

    def reload(self) -> Catalogue:
        """Load the catalogue file again and swap it in. Raises ``CatalogueError`` and keeps the old one."""
        catalogue = load_catalogue(self.settings.config_path)
        self.swap_catalogue(catalogue)
        log.info("catalogue reloaded from %s (%d models)", catalogue.source, len(catalogue.models))
        return catalogue

    def connection(self, provider: str, catalogue: Catalogue | None = None) -> Connection:
        """The connection of the provider instance ``provider``: base URL (environment, else the file, else
        the kind's default), its credentials from the environment, its timeouts."""
        instance = (catalogue or self._catalogue).instance(provider)
        entry = instance.entry
        base_url = self.settings.base_url_override(provider) or instance.base_url or ""
        return Connection(
            base_url=base_url.rstrip("/"),
            credentials=self.settings.credential_values(provider, instance.credential_variables),
            connect_timeout=entry.connect_timeout,
            first_token_timeout=entry.first_token_timeout,
            idle_timeout=entry.idle_timeout,
            whole_reply_timeout=entry.whole_reply_timeout,
            name=provider,
            key_variable=instance.key_variable,
            extra_params=instance.wire_params(base_url),
            max_stop_sequences=instance.stop_limit(base_url),
            max_event_bytes=self.settings.upstream_max_event_bytes,
            max_stream_seconds=self.settings.upstream_max_stream_seconds or None,
        )

    def missing_credentials(self, provider: str, catalogue: Catalogue | None = None) -> list[str]:
        """The variables the instance ``provider`` (of ``catalogue``, by default the current one) needs that the
        environment does not set."""
        variables = (catalogue or self._catalogue).instance(provider).credential_variables
        return self.settings.missing_credentials(provider, variables)

    def _build_providers(self, catalogue: Catalogue) -> dict[str, Provider]:
        assert self.http is not None
        return {
            name: PROVIDERS[instance.protocol](self.connection(name, catalogue), self.http)
            for name, instance in catalogue.instances.items()
        }

    def _secrets(self, catalogue: Catalogue) -> list[str]:
        """Every credential of every instance (its ``api_key_env`` and its base URL's user information included) and
        the API keys."""
        values = secrets_of(self.settings)
        for name, instance in catalogue.instances.items():
            values += self.settings.credential_values(name, instance.credential_variables).values()
            values += url_secrets(self.settings.base_url_override(name) or instance.base_url or "")
        return values

    def open_upstreams(self) -> None:
        """The shared upstream HTTP client and the providers built on it (the lifespan's, or one check's)."""
        # No total timeout: streams are bounded by the providers' connect/first-token/idle timeouts.
        self.http = new_session()
        self.providers = self._build_providers(self._catalogue)

    async def close_upstreams(self) -> None:
        if self.http is not None:
            await self.http.close()
            self.http = None

    async def start(self) -> None:
        if self.ledger is not None:  # its writer opens the database in the background (ledger.py)
            await self.ledger.start()
        if self.runtime_keys is not None:
            await self.runtime_keys.start()
        self.open_upstreams()
        await self.limiter.start()
        self.restore_budgets()
        self.limiter.when_store_lost(self.restore_budgets)
        self.metrics.start()
        self.redactor.install()
        self.prober.start()

    def restore_budgets(self) -> None:
        """Start the budgeted keys' counters from the ledger (``budgets.restore``), in the background (the ledger opens
        in its own time): at start, and when Redis lost them under this instance (they began again from zero)."""
        budgeted = [(key.key_id, key.budget) for key in self.keys.keys if key.budget is not None]
        if self.ledger is None or not budgeted or (self._restoring is not None and not self._restoring.done()):
            return
        self.limiter.budgets.restoring(key_id for key_id, _ in budgeted)
        restoring = budgets.restore(self.limiter.budgets, self.ledger, budgeted, started_at=time.time())
        self._restoring = asyncio.create_task(restoring)

    async def stop(self) -> None:
        if self._restoring is not None:
            self._restoring.cancel()
            await asyncio.gather(self._restoring, return_exceptions=True)
        await self.prober.stop()
        await self.metrics.stop()
        if self.runtime_keys is not None:  # before the ledger closes the database it reads
            await self.runtime_keys.stop()
        if self.ledger is not None:  # after the last response: every request's row is queued by now
            await self.ledger.stop()
        await self.limiter.stop()
        await self.close_upstreams()
        if self.tracing is not None:
            await self.tracing.stop()
        self.access_log.flush()
        self.redactor.uninstall()


class ModelgateAPI(FastAPI):
    """FastAPI entered through the request observer, so it sees (and may answer) a request before any of
    the framework's own layers: routing, middleware, exception handlers, FastAPI's telemetry check."""

    observer: RequestObserver | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.observer is None:
            await super().__call__(scope, receive, send)
        else:
            await self.observer(scope, receive, send)

    async def framework(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The app behind the observer."""
        await super().__call__(scope, receive, send)


def create_app(
    settings: Settings | None = None,
    catalogue: Catalogue | None = None,
    *,
    handle_sighup: bool = False,
    tune_gc: bool = False,
    tracer_provider: TracerProvider | None = None,
) -> FastAPI:
    """``handle_sighup``: reload the catalogue on SIGHUP (``modelgate serve`` sets it; main thread only).
    ``tune_gc``: set the process's garbage collector for serving once started (``heap.py``; ``modelgate serve``).
    ``tracer_provider``: trace chat requests through it (``tracing.py``), whatever the settings say."""
    settings = settings or Settings.from_env()
    catalogue = catalogue or load_catalogue(settings.config_path)
    state = GatewayState(settings, catalogue, tracer_provider)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        from modelgate.protocol_answers import lifespan_state

        await state.start()
        if tune_gc:
            tune_for_serving()
        try:
            async with catalogue_reloading(state, sighup=handle_sighup):
                # Where the server finds the drain it starts on shutdown, and the answers it writes itself.
                yield {DRAIN_STATE: state.drain, **lifespan_state(app)}
        finally:
            await state.stop()

    app = ModelgateAPI(
        title="modelgate",
        summary="An open model catalogue and chat gateway",
        version=_version(),
        lifespan=lifespan,
        openapi_url="/openapi.json",
        docs_url=None,  # served by routes/docs.py: Swagger UI from the package, not a CDN
        redoc_url=None,
        # A path with a slash too many is a 404 in our shape, not Starlette's empty 307 to a Location built from
        # the client's Host header (``Host: evil.example`` was sent back as ``http://evil.example/...``).
        redirect_slashes=False,
    )
    app.state.gateway = state
    _install_error_handlers(app)
    _install_middleware(app, state)

    from modelgate.routes import ROUTERS

    for router in ROUTERS:
        app.include_router(router)
    return app


def create_app_from_env() -> FastAPI:
    """Import-string factory for ``modelgate serve --workers N`` (config via ``MODELGATE_CONFIG``).

    Runs in each uvicorn worker. An invalid file logs one line and exits with uvicorn's startup-failure
    code, so a SIGHUP rolling restart keeps the old worker serving.
    """
    settings = Settings.from_env()
    try:
        catalogue = load_catalogue(settings.config_path)
        return create_app(settings, catalogue, handle_sighup=True, tune_gc=True)  # also loads the keys file
    except CatalogueError as exc:
        log.error("invalid catalogue, worker not started: %s", one_line(exc.message))
        raise SystemExit(3) from None  # uvicorn.config.STARTUP_FAILURE


def _install_middleware(app: ModelgateAPI, state: GatewayState) -> None:
    # add_middleware wraps what is already there, so the first added is innermost.
    from modelgate.routes.models import ModelsMethods, fast_routes

    app.add_middleware(ModelsMethods)
    # Inside CORS, so a 401 still carries the CORS headers a browser needs to read it.
    app.add_middleware(AccessMiddleware, respond=error_response)
    app.add_middleware(CatalogueCORS, state=state, respond=error_response)
    # In front of everything: every request (fast answers and refusals included) gets a request id, a log
    # line, metrics; GET and HEAD /models are answered there (routes/models.py, observer.py).
    from modelgate.routes.direct import DirectChat

    app.observer = RequestObserver(
        app.framework,
        state=state,
        respond=error_response,
        routes=lambda: app.router.routes,
        fast=fast_routes(state),
        direct=DirectChat(app, state),  # the chat routes, in front of the framework (routes/direct.py)
    )


def gateway(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gateway
    return state


# --- errors at the boundary ---------------------------------------------------------------------


def error_response(exc: ModelgateError, path: str) -> Response:
    headers = exc.headers
    if is_openai_path(path):
        # The OpenAI SDKs retry every 5xx unless told otherwise; only transient failures are worth it
        # (refused credentials or an unconfigured provider are not).
        headers = {**headers, "x-should-retry": "true" if exc.transient or exc.status == 429 else "false"}
    return Response(error_body(exc, path), status_code=exc.status, media_type=JSON, headers=headers)


def http_exception_error(exc: StarletteHTTPException, method: str, path: str) -> ModelgateError:
    """A Starlette ``HTTPException`` (no route, wrong method, a refused body) as our error."""
    if isinstance(exc.__cause__, ClientDisconnect):
        # FastAPI's 400 "error parsing the body" for a client that left mid-body: nobody reads it (nginx's 499).
        return ClientDisconnected()
    if exc.status_code == 404:
        return NotFound(f"Page not found: {path}")
    if exc.status_code == 405:
        allow = (exc.headers or {}).get("Allow", "")
        return MethodNotAllowed(
            f"Method {method} not allowed", allow=sorted(m.strip() for m in allow.split(",") if m.strip())
        )
    return ModelgateError(str(exc.detail), status=exc.status_code)


def validation_error(errors: Sequence[Any]) -> BadRequest:
    """FastAPI's request validation errors (``RequestValidationError.errors()``) as one 400."""
    if errors and errors[0].get("type") == "json_invalid":  # FastAPI's loc is a character position
        where, reason = errors[0]["loc"][-1], errors[0].get("ctx", {}).get("error", "")
        return BadRequest(
            f"The request body is not valid JSON: {reason} (at character {where})", data={"position": where}
        )
    # A value no member of a union takes fails once per member, each under the member's tag ("str",
    # "list[ContentPart]", "NamedToolChoice"): the deepest failure is the member the client meant, and tags are
    # no field of the body. (The first error named "messages.0.content.str" for a bad image part.)
    ordered = sorted(errors, key=lambda e: -len(e["loc"]))  # stable: first among the deepest
    problems = [{"field": _field(e["loc"]), "message": e["msg"]} for e in ordered]
    first = problems[0] if problems else {"field": "", "message": "invalid request"}
    where = f"Invalid request: {first['field']}" if first["field"] else "Invalid request body"  # e.g. a JSON list
    mapped = BadRequest(f"{where}: {first['message']}", data=problems)
    mapped.param = first["field"] or None
    return mapped


#: Type names pydantic puts in an error's location for a union's member, besides parametrised ones ("list[...]").
_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})


def _field(loc: Sequence[Any]) -> str:
    """An error location as the body's field path: no ``body`` prefix, no union member tags (a model's name
    starts with a capital; the bodies' fields never do)."""
    return ".".join(
        str(part)
        for part in loc
        if not (isinstance(part, str) and (part in _TAGS or "[" in part or part[:1].isupper() or part == "body"))
    )


def unexpected_error(method: str, path: str, exc: BaseException) -> ModelgateError:
    """A bug: logged with its traceback, answered opaquely (its text may carry what a client must not see)."""
    log.error("unhandled error on %s %s", method, path, exc_info=exc)
    return ModelgateError("Internal Server Error")


def _install_error_handlers(app: FastAPI) -> None:
    async def on_modelgate_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ModelgateError)
        return error_response(exc, request.url.path)

    async def on_http_exception(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        return error_response(http_exception_error(exc, request.method, request.url.path), request.url.path)

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return error_response(validation_error(exc.errors()), request.url.path)

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        return error_response(unexpected_error(request.method, request.url.path, exc), request.url.path)

    app.add_exception_handler(ModelgateError, on_modelgate_error)
    app.add_exception_handler(StarletteHTTPException, on_http_exception)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(Exception, on_unexpected)


def _version() -> str:
    from modelgate import __version__

    return __version__
