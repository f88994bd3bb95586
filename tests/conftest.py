"""Shared fixtures. No test may reach the internet: any connection to a non-loopback address fails."""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

#: Variables that would point the service at real providers or change its behaviour.
_CLEANED_PREFIXES = ("MODELGATE_", "HF_", "CLOUDFLARE_", "OPENROUTER_", "OLLAMA_", "OPENAI_")
_CLEANED_NAMES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


def _is_loopback(address: Any) -> bool:
    if isinstance(address, str | bytes):
        return True  # AF_UNIX path
    if not (isinstance(address, tuple) and address):
        return False
    host = address[0]
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class InternetForbidden(RuntimeError):
    pass


@pytest.fixture(autouse=True)
def _no_internet(monkeypatch: pytest.MonkeyPatch) -> None:
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex

    def connect(self: socket.socket, address: Any) -> Any:
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address):
            raise InternetForbidden(f"test tried to reach {address!r}")
        return real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> Any:
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address):
            raise InternetForbidden(f"test tried to reach {address!r}")
        return real_connect_ex(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)


def strip_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remove the variables that would point a service at real providers (session and module fixtures
    that start processes call it too: they run before the per-test cleaning)."""
    for name in list(os.environ):
        if name.startswith(_CLEANED_PREFIXES) or name in _CLEANED_NAMES:
            monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def _clean_environ(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    strip_environ(monkeypatch)
    # The usage ledger of a service on the built-in catalogue goes to the state directory: the test's own.
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    yield


@pytest.fixture(scope="session")
def _fake_servers() -> Iterator[Any]:
    from tests.fakes import running_fakes

    with running_fakes() as fakes:
        yield fakes


@pytest.fixture
def fakes(_fake_servers: Any) -> Iterator[Any]:
    """The four fake upstreams (``tests/fakes``), served once per session, reset for every test."""
    _fake_servers.reset()
    yield _fake_servers
    _fake_servers.reset()


def cleaned_environ() -> dict[str, str]:
    """A copy of the environment as every test sees it, for processes that session fixtures start."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        strip_environ(monkeypatch)
        return dict(os.environ)


@pytest.fixture(scope="session")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """llama.cpp's OpenAI-compatible server with SmolLM2-135M (``tests/llamacpp.py``), one per session."""
    from tests.llamacpp import llama_server

    with llama_server(tmp_path_factory.mktemp("llama"), cleaned_environ()) as server:
        yield server


@pytest.fixture(scope="session")
def cluster_backends() -> Iterator[Any]:
    """A real Redis and a real PostgreSQL for the two-instance tests (``tests/cluster.py``), one per session."""
    from tests.cluster import running_backends

    with running_backends() as backends:
        yield backends


@pytest.fixture(scope="module")
def hostile() -> Iterator[Any]:
    """A raw loopback upstream answering the bytes a test scripts (``tests/fakes/hostile.py``)."""
    from tests.fakes.hostile import HostileUpstream

    upstream = HostileUpstream()
    with upstream.serve():
        yield upstream


@pytest.fixture
def hostile_openai_service(hostile: Any) -> Iterator[str]:
    """A service whose one model ``h/m`` is served by ``hostile`` as an OpenAI-compatible server (kind
    ``openai``): for the bytes real Chat Completions servers write."""
    import tomllib

    from modelgate.app import create_app
    from modelgate.catalogue import parse_catalogue
    from modelgate.settings import Settings
    from tests.catalogue_files import model_toml
    from tests.servers import serve_in_thread

    header = f'[providers.local]\nkind = "openai"\nbase_url = "{hostile.url}"\n'
    catalogue = parse_catalogue(
        tomllib.loads(header + model_toml("h", "m", provider="local", upstream="m")), source="hostile.toml"
    )
    with serve_in_thread(create_app(Settings(probe_interval=0), catalogue)) as url:
        yield url
