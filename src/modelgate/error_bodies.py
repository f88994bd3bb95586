"""Error bodies as the client reads them: OpenAI's ``{"error": {...}}`` under ``/v1``, the seed's
``{"statusCode", "statusMessage"}`` elsewhere. Used by the app's error responses and by the server's own
refusals (``server.py``: a head too large, a malformed request), so both speak the path's shape."""

from __future__ import annotations

from typing import Any

import orjson

from modelgate.errors import ModelgateError


def is_openai_path(path: str) -> bool:
    return path == "/v1" or path.startswith("/v1/")


def error_body(exc: ModelgateError, path: str) -> bytes:
    if is_openai_path(path):
        return orjson.dumps({"error": openai_error(exc)})
    body: dict[str, Any] = {"statusCode": exc.status, "statusMessage": exc.message}
    if exc.data is not None:
        body["data"] = exc.data
    return orjson.dumps(body)


_OPENAI_TYPES = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", "model_not_allowed"),
    404: ("invalid_request_error", None),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "request_too_large"),
    415: ("invalid_request_error", "unsupported_media_type"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
}


def openai_error(exc: ModelgateError) -> dict[str, Any]:
    kind, code = _OPENAI_TYPES.get(exc.status, ("invalid_request_error" if exc.status < 500 else "server_error", None))
    code = exc.code or code
    param = getattr(exc, "param", None)
    if exc.status == 404 and isinstance(exc.data, dict) and "model" in exc.data:
        code, param = "model_not_found", "model"
    return {"message": exc.message, "type": kind, "param": param, "code": code}
