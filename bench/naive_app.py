"""The naive reference for ``GET /models``: a typical FastAPI handler, written the way most services are.

It builds the seed's pydantic ``ModelsResponse`` from plain data on every request and lets FastAPI
validate and serialize it through ``response_model`` (``exclude_none`` so the body matches the seed's,
where ``temperature`` appears only on some models). No precomputed body, no ETag, no gzip: the baseline
issue 2 asks modelgate to beat by 4x. Served by one uvicorn worker:

    BENCH_MODELS_JSON=body.json uvicorn --factory naive_app:create_app --app-dir bench --workers 1
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from modelgate.schema import ModelsResponse


def create_app() -> FastAPI:
    data: dict[str, Any] = json.loads(Path(os.environ["BENCH_MODELS_JSON"]).read_bytes())
    app = FastAPI(title="naive models service")

    @app.get("/models", response_model=ModelsResponse, response_model_exclude_none=True)
    async def models() -> ModelsResponse:
        return ModelsResponse(**data)

    return app
