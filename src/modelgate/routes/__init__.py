"""HTTP routes, one module per surface. Thin: parse → resolve → provider → encoder."""

from __future__ import annotations

from fastapi import APIRouter

from modelgate.routes.admin_keys import router as admin_keys_router
from modelgate.routes.chat import router as chat_router
from modelgate.routes.docs import router as docs_router
from modelgate.routes.health import router as health_router
from modelgate.routes.models import router as models_router
from modelgate.routes.openai import router as openai_router
from modelgate.routes.playground import router as playground_router
from modelgate.routes.responses import router as responses_router
from modelgate.routes.usage import router as usage_router

#: Included by ``create_app`` in this order.
ROUTERS: list[APIRouter] = [
    models_router,
    chat_router,
    openai_router,
    responses_router,
    playground_router,
    docs_router,
    health_router,
    usage_router,
    admin_keys_router,
]
