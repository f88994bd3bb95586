"""GET /models and /api/models over a real socket: ETag/304, gzip, HEAD, 405, Cache-Control, CORS, OpenAPI.

Served by ``GuardedProtocol``, as ``modelgate serve`` does: GET and HEAD are its early answers.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from modelgate.app import create_app
from modelgate.catalogue import Catalogue, load_catalogue
from modelgate.cors import EXPOSE_HEADERS
from modelgate.routes.models import accepts_gzip, etag_matches
from modelgate.server import GuardedProtocol
from modelgate.settings import Settings
from tests.catalogue_files import model_toml, write_catalogue
from tests.servers import serve_in_thread as serve_app

PATHS = ("/models", "/api/models")


def serve_in_thread(app: FastAPI) -> AbstractContextManager[str]:
    """The app under the production protocol, which writes these answers itself (``protocol_answers.py``)."""
    return serve_app(app, http=GuardedProtocol)


IDENTITY = {"Accept-Encoding": "identity"}


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    return load_catalogue()


@pytest.fixture(scope="module")
def url(catalogue: Catalogue) -> Iterator[str]:
    with serve_in_thread(create_app(Settings(), catalogue)) as base:
        yield base


def raw_get(url: str, headers: dict[str, str], method: str = "GET") -> tuple[httpx.Response, bytes]:
    """The response and its body exactly as sent (httpx would otherwise decode gzip)."""
    with httpx.Client() as client, client.stream(method, url, headers=headers) as response:
        return response, b"".join(response.iter_raw())


@pytest.mark.parametrize("path", PATHS)
def test_identity_body_is_the_prepared_bytes(url: str, catalogue: Catalogue, path: str) -> None:
    response, raw = raw_get(url + path, IDENTITY)
    assert response.status_code == 200
    assert raw == catalogue.body
    assert response.headers["content-type"] == "application/json"
    assert response.headers["content-length"] == str(len(catalogue.body))
    assert response.headers["etag"] == catalogue.etag
    assert response.headers["cache-control"] == "public, max-age=60"
    assert "Accept-Encoding" in response.headers["vary"]
    assert "content-encoding" not in response.headers


@pytest.mark.parametrize("path", PATHS)
def test_gzip_when_accepted(url: str, catalogue: Catalogue, path: str) -> None:
    response, raw = raw_get(url + path, {"Accept-Encoding": "br, gzip;q=0.8"})
    assert response.status_code == 200
    assert response.headers["content-encoding"] == "gzip"
    assert response.headers["content-length"] == str(len(raw))
    assert len(raw) < len(catalogue.body)
    assert gzip.decompress(raw) == catalogue.body
    # A strong validator differs per content-coding.
    assert response.headers["etag"] != catalogue.etag
    assert response.headers["etag"].startswith('"') and response.headers["etag"].endswith('"')


@pytest.mark.parametrize(
    ("accept", "gzipped"),
    [
        ("gzip", True),
        ("GZIP;Q=1.0", True),
        ("x-gzip", True),
        ("deflate, gzip;q=0.001", True),
        ("*", True),
        ("*;q=0.5", True),
        ("gzip;q=0", False),
        ("gzip;q=0.000, deflate", False),
        ("*, gzip;q=0", False),
        ("*;q=0", False),
        ("br, deflate", False),
        ("identity", False),
        ("gzip;q=banana", False),
        ("gzip;q=2", False),
        ("", False),
    ],
)
def test_accept_encoding_negotiation(accept: str, gzipped: bool) -> None:
    assert accepts_gzip(accept.encode()) is gzipped


def test_gzip_refused_with_q_zero_over_the_wire(url: str, catalogue: Catalogue) -> None:
    response, raw = raw_get(url + "/models", {"Accept-Encoding": "gzip;q=0, deflate"})
    assert "content-encoding" not in response.headers
    assert raw == catalogue.body


@pytest.mark.parametrize(
    ("header", "matches"),
    [
        ('"abc"', True),
        ('W/"abc"', True),
        ('"x", "abc"', True),
        ('"x",W/"abc" ', True),
        ("*", True),
        ('"x"', False),
        ('"abcd"', False),
        ("abc", False),
        ("", False),
    ],
)
def test_if_none_match_comparison(header: str, matches: bool) -> None:
    assert etag_matches(header.encode(), b'"abc"') is matches


@pytest.mark.parametrize("path", PATHS)
def test_if_none_match_answers_304(url: str, catalogue: Catalogue, path: str) -> None:
    for header in (catalogue.etag, "W/" + catalogue.etag, f'"nope", {catalogue.etag}', "*"):
        response, raw = raw_get(url + path, {**IDENTITY, "If-None-Match": header})
        assert response.status_code == 304, header
        assert raw == b""
        assert response.headers["etag"] == catalogue.etag
        assert response.headers["cache-control"] == "public, max-age=60"
        assert "content-type" not in response.headers


def test_if_none_match_with_a_stale_tag_gets_the_body(url: str, catalogue: Catalogue) -> None:
    response, raw = raw_get(url + "/models", {**IDENTITY, "If-None-Match": '"stale"'})
    assert response.status_code == 200
    assert raw == catalogue.body


def test_gzip_variant_revalidates_with_its_own_tag(url: str) -> None:
    first, _ = raw_get(url + "/models", {"Accept-Encoding": "gzip"})
    again, raw = raw_get(url + "/models", {"Accept-Encoding": "gzip", "If-None-Match": first.headers["etag"]})
    assert again.status_code == 304
    assert raw == b""
    # The gzip tag does not validate the identity representation.
    other, body = raw_get(url + "/models", {**IDENTITY, "If-None-Match": first.headers["etag"]})
    assert other.status_code == 200
    assert body


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("encoding", ["identity", "gzip"])
def test_head_has_the_get_headers_and_no_body(url: str, path: str, encoding: str) -> None:
    get, _ = raw_get(url + path, {"Accept-Encoding": encoding})
    head, raw = raw_get(url + path, {"Accept-Encoding": encoding}, method="HEAD")
    assert head.status_code == 200
    assert raw == b""
    for name in ("content-type", "content-length", "etag", "cache-control", "vary"):
        assert head.headers[name] == get.headers[name]
    assert head.headers.get("content-encoding") == get.headers.get("content-encoding")


def test_query_parameters_are_ignored(url: str, catalogue: Catalogue) -> None:
    response, raw = raw_get(url + "/models?publisher=qwen&x=1", IDENTITY)
    assert response.status_code == 200
    assert raw == catalogue.body


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_other_methods_get_405_with_allow(url: str, path: str, method: str) -> None:
    response = httpx.request(method, url + path, content=b"{}")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD"
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"statusCode": 405, "statusMessage": f"Method {method} not allowed"}


def test_near_miss_paths_are_not_the_fast_path(url: str) -> None:
    response = httpx.get(url + "/modelsx")
    assert response.status_code == 404
    assert response.json()["statusCode"] == 404


def test_cache_max_age_from_settings_wins(catalogue: Catalogue) -> None:
    with serve_in_thread(create_app(Settings(cache_max_age=7), catalogue)) as base:
        assert httpx.get(base + "/models").headers["cache-control"] == "public, max-age=7"


def test_cache_max_age_from_the_catalogue_file(tmp_path: Path) -> None:
    path = write_catalogue(tmp_path / "c.toml", model_toml(), header="[server]\ncache_max_age = 17\n")
    with serve_in_thread(create_app(Settings(config_path=path))) as base:
        assert httpx.get(base + "/models").headers["cache-control"] == "public, max-age=17"


def test_a_swapped_catalogue_is_served_with_its_own_etag(tmp_path: Path, catalogue: Catalogue) -> None:
    app = create_app(Settings(), catalogue)
    with serve_in_thread(app) as base:
        before = httpx.get(base + "/models", headers=IDENTITY)
        replacement = load_catalogue(write_catalogue(tmp_path / "c.toml", model_toml("acme", "swapped")))
        app.state.gateway.swap_catalogue(replacement)
        after = httpx.get(base + "/models", headers=IDENTITY)
        stale = httpx.get(base + "/models", headers={**IDENTITY, "If-None-Match": before.headers["etag"]})
    assert after.content == replacement.body
    assert after.headers["etag"] == replacement.etag != before.headers["etag"]
    assert after.json()["models"] == ["acme/swapped"]
    assert stale.status_code == 200


# --- CORS -----------------------------------------------------------------------------------------


def test_cors_default_allows_any_origin_and_exposes_headers(url: str) -> None:
    response = httpx.get(url + "/models", headers={"Origin": "https://chat.example"})
    assert response.headers["access-control-allow-origin"] == "*"
    exposed = [h.strip() for h in response.headers["access-control-expose-headers"].split(",")]
    assert exposed == list(EXPOSE_HEADERS)
    assert {"ETag", "X-Request-ID", "X-Modelgate-Model", "X-Modelgate-Dropped-Params", "Retry-After"} <= set(exposed)


def test_cors_on_errors_too(url: str) -> None:
    response = httpx.get(url + "/nope", headers={"Origin": "https://chat.example"})
    assert response.status_code == 404
    assert response.headers["access-control-allow-origin"] == "*"


@pytest.mark.parametrize("path", ["/models", "/api/ai/qwen/Qwen2.5-72B-Instruct/chat"])
def test_cors_preflight(url: str, path: str) -> None:
    response = httpx.options(
        url + path,
        headers={
            "Origin": "https://chat.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, authorization",
        },
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "*"
    assert "POST" in response.headers["access-control-allow-methods"]
    assert "authorization" in response.headers["access-control-allow-headers"].lower()


def test_cors_origins_from_the_environment(catalogue: Catalogue) -> None:
    settings = Settings.from_env({"MODELGATE_CORS_ORIGINS": "https://a.example, https://b.example"})
    assert settings.cors_origins == ("https://a.example", "https://b.example")
    with serve_in_thread(create_app(settings, catalogue)) as base:
        allowed = httpx.get(base + "/models", headers={"Origin": "https://b.example"})
        refused = httpx.get(base + "/models", headers={"Origin": "https://evil.example"})
        preflight = httpx.options(
            base + "/models", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"}
        )
    assert allowed.headers["access-control-allow-origin"] == "https://b.example"
    assert "Origin" in allowed.headers["vary"]
    assert "access-control-allow-origin" not in refused.headers
    assert refused.status_code == 200  # the browser enforces CORS; the data is public
    assert preflight.status_code == 400


def test_cors_origins_from_the_catalogue_follow_a_reload(tmp_path: Path) -> None:
    path = write_catalogue(tmp_path / "c.toml", model_toml(), header='[server]\ncors_origins = ["https://a.example"]\n')
    app = create_app(Settings(config_path=path))
    with serve_in_thread(app) as base:
        first = httpx.get(base + "/models", headers={"Origin": "https://a.example"})
        write_catalogue(path, model_toml(), header='[server]\ncors_origins = ["https://b.example"]\n')
        app.state.gateway.reload()
        old = httpx.get(base + "/models", headers={"Origin": "https://a.example"})
        new = httpx.get(base + "/models", headers={"Origin": "https://b.example"})
    assert first.headers["access-control-allow-origin"] == "https://a.example"
    assert "access-control-allow-origin" not in old.headers
    assert new.headers["access-control-allow-origin"] == "https://b.example"


# --- OpenAPI ----------------------------------------------------------------------------------------


def test_openapi_describes_models_with_the_seed_schema(url: str) -> None:
    spec = httpx.get(url + "/openapi.json").json()
    operation = spec["paths"]["/models"]["get"]
    schema_ref = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert schema_ref == "#/components/schemas/ModelsResponse"
    schemas = spec["components"]["schemas"]
    models_response = schemas["ModelsResponse"]
    assert set(models_response["properties"]) == {"configurations", "models", "endpoints"}
    assert models_response["additionalProperties"] is False
    assert sorted(models_response["required"]) == ["configurations", "endpoints", "models"]
    configuration = schemas["ModelConfiguration"]
    assert list(configuration["properties"]) == ["publisher", "name", "description", "icon", "type", "configuration"]
    assert configuration["properties"]["type"]["enum"] == ["instruct", "chat"]
    parameters = schemas["ModelParameters"]["properties"]
    assert list(parameters) == [
        "max_new_tokens",
        "typical_p",
        "repetition_penalty",
        "truncate",
        "return_full_text",
        "temperature",
    ]
    assert "temperature" not in schemas["ModelParameters"]["required"]
    assert set(schemas["Endpoints"]["properties"]) == {"huggingface", "cloudflare", "openrouter", "ollama"}
    error = operation["responses"]["500"]["content"]["application/json"]["schema"]["$ref"]
    assert error == "#/components/schemas/ErrorResponse"


def test_interactive_docs_are_served(url: str) -> None:
    response = httpx.get(url + "/docs")
    assert response.status_code == 200
    assert "text/html" in response.headers["content-type"]
    assert "/openapi.json" in response.text
