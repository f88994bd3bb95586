"""The guard in conftest really stops a test from reaching a non-loopback address."""

from __future__ import annotations

import socket

import pytest

from tests.conftest import InternetForbidden


def test_connecting_outside_loopback_fails() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock, pytest.raises(InternetForbidden):
        sock.connect(("93.184.216.34", 80))


def test_loopback_is_allowed() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as client:
            client.connect(server.getsockname())
