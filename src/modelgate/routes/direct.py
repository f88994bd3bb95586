"""The chat routes answered in front of the framework, as ``GET /models`` is (``observer.py``).

``POST /v1/chat/completions`` and the ``/api/ai/.../chat`` routes are the gateway's hot paths: each call
crossed a dozen ASGI layers (Starlette's error and exception middleware, FastAPI's telemetry, body-limit and
exit-stack layers, two routers), FastAPI's dependency solving and its ``send`` wrappers before any of our
code ran — a third of a non-streamed call's CPU (bench/README.md, *Performance II*).

``DirectChat`` matches those paths itself (POST only: every other method, and any path it does not know,
goes to the framework as before) and runs what the framework ran for them, no more: CORS and the key check
(the same ``CatalogueCORS`` and ``AccessMiddleware``), the body read as JSON the way ``JSONBodyRoute`` and
FastAPI read it, validated by the same pydantic model with FastAPI's error locations, the same route
handlers, and every error rendered by the app's own mapping (``app.error_response``). So status codes,
error shapes and messages are those of the framework path; ``tests/test_openai_validation.py`` and the
chat suites hold them.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from modelgate.app import (
    error_response,
    gateway,
    http_exception_error,
    unexpected_error,
    validation_error,
)
from modelgate.auth import AccessMiddleware
from modelgate.cors import CatalogueCORS
from modelgate.errors import ClientDisconnected, ModelgateError
from modelgate.routes import chat, openai, openai_request

if TYPE_CHECKING:
    from modelgate.app import GatewayState

_API_AI = "/api/ai/"
_CHAT = "/chat"
_V1_CHAT = "/v1/chat/completions"


class DirectChat:
    def __init__(self, app: FastAPI, state: GatewayState) -> None:
        self.app = app
        # What the framework ran in front of these routes (``app._install_middleware``), nothing else.
        self.chain: ASGIApp = CatalogueCORS(
            AccessMiddleware(self._answer, respond=error_response), state=state, respond=error_response
        )
        #: Route template → the framework's route object (the observer logs and counts under its template).
        self._routes: dict[str, Any] | None = None

    def __call__(self, scope: Scope) -> ASGIApp | None:
        """The app answering this request in front of the framework, or None (the framework answers)."""
        if scope["method"] != "POST" or scope.get("root_path"):
            return None
        path: str = scope["path"]
        if path == _V1_CHAT:
            template = _V1_CHAT
        elif path.startswith(_API_AI) and path.endswith(_CHAT):
            parts = path[len(_API_AI) : -len(_CHAT)].split("/")
            if len(parts) not in (2, 3) or not all(parts):
                return None
            template = chat.TWO_PART if len(parts) == 2 else chat.THREE_PART
            scope["path_params"] = parts
        else:
            return None
        scope["app"] = self.app  # as Starlette sets it: ``request.app`` and the key check read the state there
        scope["route"] = self._route(template)
        return self.chain

    def _route(self, template: str) -> Any:
        if self._routes is None:
            self._routes = {
                route.path: route
                for router in (chat.router, openai.router)
                for route in router.routes
                if isinstance(route, APIRoute) and route.path in (_V1_CHAT, chat.TWO_PART, chat.THREE_PART)
            }
        return self._routes[template]

    async def _answer(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        path: str = scope["path"]  # what ``request.url.path`` would build a URL for (no root path here)
        try:
            try:
                if scope["path"] == _V1_CHAT:
                    response = await _chat_completions(request)
                else:
                    parts: list[str] = scope["path_params"]
                    query = request.query_params
                    model = gateway(request).catalogue.resolve_route(*parts)
                    response = await chat.answer(request, model, query.get("protocol"))
            except ModelgateError as exc:
                response = error_response(exc, path)
            except StarletteHTTPException as exc:  # a body the observer refused (it answers that itself)
                response = error_response(http_exception_error(exc, request.method, path), path)
            except ClientDisconnect:  # the client left before its body was all here: a 499, not a bug
                response = error_response(ClientDisconnected(), path)
        except Exception as exc:
            response = error_response(unexpected_error(request.method, path, exc), path)
        await response(scope, receive, send)


async def _chat_completions(request: Request) -> Response:
    """``openai.chat_completions`` after the body checks ``JSONBodyRoute`` and FastAPI make."""
    declared = request.headers.get("content-type")
    if declared is not None and not openai.json_media_type(declared):
        raise openai.unsupported_media_type(declared)
    raw = await request.body()
    if not raw:  # FastAPI: a required body that is absent
        raise validation_error([{"type": "missing", "loc": ("body",), "msg": "Field required"}])
    try:
        body = openai_request.ChatCompletionRequest.model_validate(_json_body(raw), from_attributes=True)
    except ValidationError as exc:
        # As FastAPI reports a body model's errors: located under ``body``.
        raise validation_error([{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]) from None
    return await openai.chat_completions(body, request)


def _json_body(raw: bytes) -> Any:
    """The body as FastAPI reads it (Starlette's ``json.loads``), its errors as FastAPI reports them.

    Not orjson, although it parses a long conversation in half the time: it reads an integer beyond 64 bits as a
    float, silently (``wire.py`` must see that integer to refuse it)."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        error = {"type": "json_invalid", "loc": ("body", exc.pos), "msg": "JSON decode error"}
        raise validation_error([{**error, "ctx": {"error": exc.msg}}]) from None
    except Exception as exc:  # bytes that are no Unicode text at all: FastAPI's 400 for an unparsable body
        raise StarletteHTTPException(400, "There was an error parsing the body") from exc
