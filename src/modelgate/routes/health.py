"""Operations endpoints: ``/health`` (liveness), ``/ready`` (readiness), ``/api/status``, ``/metrics``.

None of them calls a provider: ``/api/status`` reads what traffic and the background probes recorded
(``status.py``), so it answers at once whatever the upstreams are doing.

``/api/status`` and ``/metrics`` tell an outsider which providers are configured, failing or busy; with
``MODELGATE_PRIVATE_OPS=1`` (and keys configured) they need an API key or the admin key. ``/health``
and ``/ready`` stay public: orchestrators probe them without credentials.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from modelgate.app import JSON, error_response, gateway
from modelgate.auth import (
    BearerUnauthorized,
    bearer_token,
    is_admin_token,
    presented_token,
    request_principal,
)
from modelgate.errors import ModelgateError
from modelgate.metrics import CONTENT_TYPE

router = APIRouter(tags=["operations"])

#: How long ``/ready`` waits for Redis before calling it unreachable.
REDIS_PING_TIMEOUT = 2.0

_NO_STORE = {"Cache-Control": "no-store"}

Endpoint = Callable[..., Awaitable[Response]]


def _probe(path: str, **options: Any) -> Callable[[Endpoint], Endpoint]:
    """``GET path``, and ``HEAD`` too: uptime monitors and load balancers probe with either. FastAPI's routes,
    unlike Starlette's, answer only the methods named (HEAD was a 405); the HEAD twin stays out of the schema,
    and the server sends its headers without the body."""

    def register(endpoint: Endpoint) -> Endpoint:
        router.add_api_route(path, endpoint, methods=["HEAD"], include_in_schema=False)
        return router.get(path, **options)(endpoint)

    return register


@_probe("/health", summary="Liveness: the process answers")
async def health() -> Response:
    return Response(b'{"status":"ok"}', media_type=JSON, headers=_NO_STORE)


@_probe("/ready", summary="Readiness: catalogue loaded, Redis reachable when configured")
async def ready(request: Request) -> Response:
    state = gateway(request)
    checks: dict[str, Any] = {"catalogue": state.http is not None and bool(state.catalogue.models)}
    problems = [] if checks["catalogue"] else ["catalogue not loaded"]
    if state.settings.redis_url:
        try:
            async with asyncio.timeout(REDIS_PING_TIMEOUT):
                redis_problem = await state.limiter.problem()
        except TimeoutError:
            redis_problem = "redis unreachable"
        checks["redis"] = redis_problem is None
        if redis_problem is not None:
            problems.append(redis_problem)
    if problems:
        error = ModelgateError(f"Not ready: {', '.join(problems)}", status=503, data=checks)
        response = error_response(error, request.url.path)
        response.headers.update(_NO_STORE)
        return response
    return Response(orjson.dumps({"status": "ready", **checks}), media_type=JSON, headers=_NO_STORE)


def _private(request: Request) -> None:
    """With ``private_ops``, the caller must present an API key or the admin key (401 otherwise), as on
    ``/api/usage``; open when neither is configured."""
    state = gateway(request)
    if not state.settings.private_ops:
        return
    authorization = request.headers.get("authorization")
    if is_admin_token(bearer_token(authorization), state.settings.admin_key):
        return
    if state.keys.enabled:
        request_principal(request)  # 401 unless a valid API key
    elif state.settings.admin_key is not None:
        presented_token(authorization)
        raise BearerUnauthorized("Invalid API key")


@_probe("/api/status", summary="Health of each provider and model, from traffic and free probes")
async def status(request: Request) -> Response:
    _private(request)
    state = gateway(request)
    body = state.status.snapshot(state.catalogue, state.settings, state.breakers, scrub=state.redactor.scrub)
    return Response(orjson.dumps(body), media_type=JSON, headers=_NO_STORE)


@_probe("/metrics", summary="Prometheus metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    _private(request)
    return Response(gateway(request).metrics.exposition(), media_type=CONTENT_TYPE, headers=_NO_STORE)
