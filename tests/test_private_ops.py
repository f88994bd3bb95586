"""``MODELGATE_PRIVATE_OPS``: ``/metrics`` and ``/api/status`` closed to callers without a key."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from modelgate.app import create_app
from modelgate.settings import Settings
from tests.servers import serve_in_thread

KEY = "mg-ops-test-key"
OPS = ("/metrics", "/api/status")
PUBLIC = ("/health", "/ready", "/models")


def serve(settings: Settings) -> Iterator[str]:
    with serve_in_thread(create_app(settings)) as url:
        yield url


@pytest.fixture
def private() -> Iterator[str]:
    yield from serve(Settings.from_env({"MODELGATE_PRIVATE_OPS": "1", "MODELGATE_API_KEYS": KEY}, probe_interval=0))


@pytest.fixture
def public() -> Iterator[str]:
    yield from serve(Settings.from_env({"MODELGATE_API_KEYS": KEY}, probe_interval=0))


@pytest.mark.parametrize("path", OPS)
def test_private_ops_need_a_key(private: str, path: str) -> None:
    refused = httpx.get(private + path)
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"].startswith("Bearer")
    assert refused.json()["statusCode"] == 401
    assert httpx.get(private + path, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(private + path, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


@pytest.mark.parametrize("path", OPS)
def test_a_head_probe_of_private_ops_needs_the_key_too(private: str, path: str) -> None:
    assert httpx.head(private + path).status_code == 401
    assert httpx.head(private + path, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


@pytest.mark.parametrize("path", PUBLIC)
def test_liveness_readiness_and_the_catalogue_stay_public(private: str, path: str) -> None:
    assert httpx.get(private + path).status_code == 200


@pytest.mark.parametrize("path", OPS)
def test_ops_are_public_by_default(public: str, path: str) -> None:
    assert httpx.get(public + path).status_code == 200


def test_private_ops_without_any_key_configured_stay_open() -> None:
    """Nothing to authenticate against: the service is open, so are its operations endpoints."""
    for url in serve(Settings.from_env({"MODELGATE_PRIVATE_OPS": "1"}, probe_interval=0)):
        assert httpx.get(url + "/metrics").status_code == 200


ADMIN = "mg-ops-admin-key"


@pytest.mark.parametrize("api_keys", [KEY, ""])
def test_the_admin_key_opens_private_ops_as_it_opens_the_usage(api_keys: str) -> None:
    """The operator's key reads /api/usage; it was refused on /metrics and /api/status (not an API key)."""
    env = {"MODELGATE_PRIVATE_OPS": "1", "MODELGATE_ADMIN_KEY": ADMIN, "MODELGATE_DATABASE_URL": "off"}
    for url in serve(Settings.from_env({**env, "MODELGATE_API_KEYS": api_keys}, probe_interval=0)):
        for path in OPS:
            assert httpx.get(url + path, headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 200
            assert httpx.head(url + path, headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 200
            # With only the admin key configured, the service is not open: no key or a wrong one is refused.
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {ADMIN}"}):
                refused = httpx.get(url + path, headers=headers)
                assert refused.status_code == 401 and refused.json()["statusCode"] == 401


@pytest.mark.parametrize("path", ["/metrics", "/api/usage", "/admin/keys", "/v1/models"])
@pytest.mark.parametrize(
    ("authorization", "says"),
    [
        (None, "Missing"),
        ("Bearer", "Malformed Authorization header: expected 'Bearer <key>'"),
        (f"Basic {KEY}", "Malformed Authorization header: expected 'Bearer <key>'"),
    ],
)
def test_every_route_says_the_same_of_a_missing_or_malformed_header(
    tmp_path: Path, path: str, authorization: str | None, says: str
) -> None:
    """Found from outside: ``Bearer`` without a key was "Malformed" on the chat routes but "Missing" on the
    usage, admin and operations routes."""
    env = {
        "MODELGATE_PRIVATE_OPS": "1",
        "MODELGATE_API_KEYS": KEY,
        "MODELGATE_ADMIN_KEY": ADMIN,
        "MODELGATE_DATABASE_URL": f"sqlite:///{tmp_path / 'ledger.sqlite3'}",
    }
    for url in serve(Settings.from_env(env, probe_interval=0)):
        headers = {} if authorization is None else {"Authorization": authorization}
        refused = httpx.get(url + path, headers=headers)
        assert refused.status_code == 401
        body = refused.json()
        message = body["error"]["message"] if path.startswith("/v1") else body["statusMessage"]
        assert message.startswith(says), message
