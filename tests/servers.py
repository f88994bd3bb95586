"""Run ASGI apps as real servers on 127.0.0.1 (a thread each), as httpx's own test-suite does."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from modelgate.server import GatewayConfig, ServerLimits


class _ThreadedServer(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # signals belong to the test process
        pass


@contextmanager
def serve_in_thread(app: Any, **config: Any) -> Iterator[str]:
    """Serve ``app`` on a free loopback port; yield its base URL; shut down on exit.

    With the protocol ``modelgate serve`` runs (``server.GuardedProtocol``: its limits, its early answers) unless
    ``config`` names another ``http``, so the end-to-end tests exercise what production serves."""
    options: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "log_level": "warning", "lifespan": "on", **config}
    if "http" in options:
        server = _ThreadedServer(uvicorn.Config(app, **options))
    else:
        server = _ThreadedServer(GatewayConfig(app, limits=ServerLimits(), **options))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("test server did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def run(coro: Any) -> Any:
    return asyncio.run(coro)
