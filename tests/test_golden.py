"""GET /models on the default catalogue equals the seed's example response, order included."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from modelgate.app import create_app
from modelgate.schema import ModelsResponse
from modelgate.settings import Settings
from tests.servers import serve_in_thread

GOLDEN = Path(__file__).parent / "fixtures" / "models.example.json"


def test_models_matches_seed_example_exactly() -> None:
    expected_text = GOLDEN.read_text(encoding="utf-8")
    with serve_in_thread(create_app(Settings())) as url:  # GuardedProtocol, as `modelgate serve`
        for path in ("/models", "/api/models"):
            response = httpx.get(url + path)
            assert response.status_code == 200
            assert response.headers["content-type"] == "application/json"
            assert response.json() == json.loads(expected_text)
            # Same key orders and array orders, not only deep equality.
            assert json.dumps(response.json()) == json.dumps(json.loads(expected_text))
            ModelsResponse.model_validate(response.json())
