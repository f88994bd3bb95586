"""Every error of the service in the seed's shape: 404, 405 + Allow, and an opaque 500 that keeps serving."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import httpx
import pytest

from modelgate.app import create_app
from modelgate.catalogue import load_catalogue
from modelgate.settings import Settings
from tests.catalogue_files import BrokenCatalogue, broken_copy
from tests.servers import serve_in_thread

INTERNAL = {"statusCode": 500, "statusMessage": "Internal Server Error"}
SECRET = BrokenCatalogue.failure


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with serve_in_thread(create_app(Settings())) as base:
        yield base


@pytest.mark.parametrize("path", ["/nope", "/api", "/api/ai", "/models/qwen", "/v2/models"])
def test_unknown_path_is_404_in_seed_shape(url: str, path: str) -> None:
    response = httpx.get(url + path)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"statusCode": 404, "statusMessage": f"Page not found: {path}"}


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/models/"), ("GET", "/api/status/"), ("POST", "/api/ai/ollama/rwkv-6-world/chat/")],
)
def test_a_slash_too_many_is_a_404_not_a_redirect_to_the_clients_host(url: str, method: str, path: str) -> None:
    """Starlette answered an empty 307 whose Location was built from the client's Host header."""
    response = httpx.request(method, url + path, headers={"Host": "evil.example"}, json={"messages": []})
    assert response.status_code == 404 and "location" not in response.headers
    assert response.json() == {"statusCode": 404, "statusMessage": f"Page not found: {path}"}


def test_a_slash_too_many_under_v1_is_openais_404(url: str) -> None:
    response = httpx.post(url + "/v1/chat/completions/", headers={"Host": "evil.example"}, json={})
    assert response.status_code == 404 and "location" not in response.headers
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"] == "Page not found: /v1/chat/completions/"


def test_wrong_method_on_a_routed_path_is_405_with_allow(url: str) -> None:
    response = httpx.delete(url + "/openapi.json")
    assert response.status_code == 405
    assert {m.strip() for m in response.headers["allow"].split(",")} == {"GET", "HEAD"}
    assert response.json() == {"statusCode": 405, "statusMessage": "Method DELETE not allowed"}


def test_wrong_method_on_models_is_405_with_allow(url: str) -> None:
    response = httpx.post(url + "/models", json={})
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD"
    assert response.json() == {"statusCode": 405, "statusMessage": "Method POST not allowed"}


def _assert_opaque_500(response: httpx.Response) -> None:
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/json"
    assert response.json() == INTERNAL
    assert SECRET not in response.text
    assert "Traceback" not in response.text


def test_unexpected_error_in_a_route_is_an_opaque_500(caplog: pytest.LogCaptureFixture) -> None:
    app = create_app(Settings())

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError(SECRET)

    caplog.set_level(logging.ERROR, logger="modelgate")
    with serve_in_thread(app) as base:
        _assert_opaque_500(httpx.get(base + "/boom"))
        # The service keeps serving.
        assert httpx.get(base + "/models").status_code == 200
        _assert_opaque_500(httpx.get(base + "/boom"))
    logged = [r for r in caplog.records if r.name == "modelgate" and r.exc_info]
    assert logged, "the failure must be logged with its detail"
    assert SECRET in str(logged[0].exc_info[1])  # type: ignore[index]
    assert "GET /boom" in logged[0].getMessage()


def test_unexpected_error_in_the_models_fast_path_is_an_opaque_500(caplog: pytest.LogCaptureFixture) -> None:
    good = load_catalogue()
    broken = broken_copy(good)
    app = create_app(Settings(), good)
    caplog.set_level(logging.ERROR, logger="modelgate")
    with serve_in_thread(app) as base:
        app.state.gateway.swap_catalogue(broken)
        _assert_opaque_500(httpx.get(base + "/models"))
        assert httpx.get(base + "/openapi.json").status_code == 200  # other routes unaffected
        app.state.gateway.swap_catalogue(good)
        recovered = httpx.get(base + "/models")
    assert recovered.status_code == 200
    assert recovered.content == good.body
    assert any(r.name == "modelgate" and r.exc_info and SECRET in str(r.exc_info[1]) for r in caplog.records)
