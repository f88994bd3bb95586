"""``MODELGATE_PRIVATE_OPS``: ``/metrics`` and ``/api/status`` closed to callers without a key."""

from __future__ import annotations

from collections.abc import Iterator

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
