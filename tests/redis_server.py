"""A real ``redis-server`` on a free loopback port, for the tests of limits shared across processes."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisProcess:
    """A ``redis-server`` without persistence on one loopback port, which a test may restart (losing its data)."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start on a free port, or on the same port again after ``stop``."""
        for _ in range(3):  # another process may take a free port before redis binds it
            port = self.port or free_port()
            process = subprocess.Popen(
                [self.binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + 10
            while process.poll() is None and not _answers_ping(port) and time.monotonic() < deadline:
                time.sleep(0.02)
            if process.poll() is None and _answers_ping(port):
                self.port, self.process = port, process
                return
            process.kill()
            process.wait()
            if self.port:
                time.sleep(0.2)  # the old socket may linger a moment: try the same port again
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def restart(self) -> None:
        """Stop and start again on the same port: every key and every client connection is gone."""
        self.stop()
        self.start()


@contextmanager
def redis_process() -> Iterator[RedisProcess]:
    """A started ``RedisProcess``, stopped on exit. Skips only when the binary is absent;
    ``scripts/test.sh`` (and so CI) installs it."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (scripts/test.sh installs it)")
    server = RedisProcess(binary)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def running_redis() -> Iterator[str]:
    """Start ``redis-server`` (no persistence) and yield its ``redis://`` URL; stop it on exit."""
    with redis_process() as server:
        yield server.url
