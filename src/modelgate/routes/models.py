"""``GET /models`` and ``GET /api/models``: the catalogue document, serialized once at load."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from modelgate.app import gateway
from modelgate.schema import ErrorResponse, ModelsResponse

router = APIRouter()

_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {"model": ModelsResponse, "description": "Model configurations grouped by publisher"},
    500: {"model": ErrorResponse, "description": "Internal Server Error"},
}


@router.get("/models", response_model=ModelsResponse, responses=_RESPONSES, summary="List the model catalogue")
@router.get("/api/models", response_model=ModelsResponse, responses=_RESPONSES, include_in_schema=False)
async def get_models(request: Request) -> Response:
    catalogue = gateway(request).catalogue
    return Response(catalogue.body, media_type="application/json", headers={"ETag": catalogue.etag})
