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


@pytest.fixture(autouse=True)
def _clean_environ(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith(_CLEANED_PREFIXES) or name in _CLEANED_NAMES:
            monkeypatch.delenv(name, raising=False)
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
