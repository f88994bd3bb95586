"""CORS for the whole app, with origins that follow the catalogue across reloads.

Starlette's ``CORSMiddleware`` does the protocol (preflight, simple responses, ``Vary: Origin``); this
wrapper only picks its configuration: ``MODELGATE_CORS_ORIGINS`` when set, else the catalogue file's
``[server] cors_origins`` (default ``*``: the catalogue is public, read-only data). When a reload
changes the origins, the next request builds a new ``CORSMiddleware``; otherwise the built one is reused.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    from modelgate.app import GatewayState

#: Response headers a browser script may read (the model that answered, what was dropped, backoff).
EXPOSE_HEADERS = ("ETag", "X-Request-ID", "X-Modelgate-Model", "X-Modelgate-Dropped-Params", "Retry-After")
ALLOW_METHODS = ("GET", "HEAD", "POST", "OPTIONS")


class CatalogueCORS:
    def __init__(self, app: ASGIApp, state: GatewayState) -> None:
        self.app = app
        self.state = state
        self._origins: Sequence[str] | None = None
        self._cors: CORSMiddleware | None = None

    def origins(self) -> Sequence[str]:
        configured = self.state.settings.cors_origins
        return configured if configured is not None else self.state.catalogue.server.cors_origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        origins = self.origins()
        cors = self._cors
        if cors is None or (origins is not self._origins and list(origins) != list(self._origins or ())):
            cors = self._cors = CORSMiddleware(
                self.app,
                allow_origins=list(origins),
                allow_methods=ALLOW_METHODS,
                allow_headers=["*"],  # API keys and request ids travel in headers; the data is public anyway
                expose_headers=EXPOSE_HEADERS,
            )
        self._origins = origins
        await cors(scope, receive, send)
