"""The floor of a non-streamed relay: what one ``POST /v1/chat/completions`` costs a server that does nothing else.

Issue 13 item 3 asks for a fifth of the previous release's CPU per non-streamed request (~0.22 ms on the
lead's runs). This puts modelgate beside three servers that relay the same request to the same fake and do
nothing else (no validation, catalogue, keys, limits, metrics, access line, ledger), so the figure splits into
what the server and client stack cost and what modelgate's own work costs:

- ``raw``: an ``asyncio.Protocol`` server and a keep-alive upstream connection, both parsed by ``httptools``
  (uvloop): the cost of Python itself for the relay;
- ``uvicorn-raw``: uvicorn's ASGI cycle (httptools, uvloop) in front of that raw upstream connection;
- ``uvicorn-aiohttp``: uvicorn in front of an ``aiohttp.ClientSession`` (modelgate's stack);
- ``uvicorn-pyreqwest``: uvicorn in front of ``pyreqwest`` (Rust's reqwest; its I/O on its own thread, counted:
  the CPU is the whole process's), only when ``pyreqwest`` is importable (it is not a bench requirement);
- ``modelgate``: ``modelgate serve --workers 1`` as it ships (SQLite ledger, access line), ``--src`` for a tree.

Each server is pinned to the server core, the fake and the closed-loop load (``relay_cpu.py``'s: keep-alive
connections sending back to back) to the load core; the figure is the server process's CPU time (every thread)
over the replies it gave, per repeat, repeats interleaved across the servers.

    bench/.venv/bin/python bench/floors.py --seconds 5 --repeats 3
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import LOAD_CORE, SERVER_CORE, Proc, free_port, pinned, start, wait_http, wait_tcp
from relay_cpu import MODEL, UPSTREAM, cpu_seconds

BENCH = Path(__file__).resolve().parent
PY = sys.executable
UPSTREAM_PATH = b"/api/v1/chat/completions"
KEY = b"sk-or-bench"

# --- the floor servers (run as ``floors.py --serve KIND PORT UPSTREAM_PORT``) ---------------------------


def _relayed(body: bytes) -> bytes:
    """The client's request as the upstream gets it: the catalogue id swapped for the upstream's."""
    import orjson

    request = orjson.loads(body)
    request["model"] = UPSTREAM
    payload: bytes = orjson.dumps(request)
    return payload


def _reply(raw: bytes) -> bytes:
    import orjson

    reply = orjson.loads(raw)
    reply["model"] = MODEL
    out: bytes = orjson.dumps(reply)
    return out


class _RawUpstream(asyncio.Protocol):
    """One keep-alive upstream connection; one request at a time."""

    def __init__(self) -> None:
        import httptools

        self.parser = httptools.HttpResponseParser(self)
        self.body: list[bytes] = []
        self.reply: asyncio.Future[bytes] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        reply, self.reply = self.reply, None
        if reply is not None:
            reply.set_result(b"".join(self.body))
        self.body = []

    def connection_lost(self, exc: Exception | None) -> None:
        if self.reply is not None and not self.reply.done():
            self.reply.set_exception(ConnectionError("upstream closed"))


class _RawPool:
    def __init__(self, port: int) -> None:
        self.port = port
        self.idle: list[_RawUpstream] = []

    async def post(self, payload: bytes) -> bytes:
        loop = asyncio.get_running_loop()
        if self.idle:
            conn = self.idle.pop()
        else:
            _, conn = await loop.create_connection(_RawUpstream, "127.0.0.1", self.port)
        conn.reply = loop.create_future()
        assert conn.transport is not None
        conn.transport.write(
            b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (UPSTREAM_PATH, KEY, len(payload), payload)
        )
        raw = await conn.reply
        self.idle.append(conn)
        return raw


class _RawServer(asyncio.Protocol):
    pool: _RawPool

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        import httptools

        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.parser = httptools.HttpRequestParser(self)
        self.body: list[bytes] = []

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        body, self.body = b"".join(self.body), []
        asyncio.get_running_loop().create_task(self._answer(body))

    async def _answer(self, body: bytes) -> None:
        out = _reply(await self.pool.post(_relayed(body)))
        self.transport.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(out), out)
        )


def _asgi_app(post: Any, startup: Any = None) -> Any:
    """A raw ASGI app relaying through ``post(payload) -> reply bytes``."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] == "lifespan.startup":
                if startup is not None:
                    await startup()
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        out = _reply(await post(_relayed(body)))
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(out))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": out})

    return app


def serve(kind: str, port: int, upstream_port: int) -> None:
    import uvicorn
    import uvloop

    url = f"http://127.0.0.1:{upstream_port}{UPSTREAM_PATH.decode()}"
    auth = {"Authorization": f"Bearer {KEY.decode()}", "Content-Type": "application/json"}
    if kind == "raw":

        async def main() -> None:
            _RawServer.pool = _RawPool(upstream_port)
            server = await asyncio.get_running_loop().create_server(_RawServer, "127.0.0.1", port)
            await server.serve_forever()

        uvloop.run(main())
        return
    if kind == "uvicorn-raw":
        app = _asgi_app(_RawPool(upstream_port).post)
    elif kind == "uvicorn-aiohttp":
        import aiohttp

        sessions: list[aiohttp.ClientSession] = []

        async def open_session() -> None:
            sessions.append(aiohttp.ClientSession())

        async def post_aiohttp(payload: bytes) -> bytes:
            async with sessions[0].post(url, data=payload, headers=auth) as response:
                return await response.read()

        app = _asgi_app(post_aiohttp, open_session)
    elif kind == "uvicorn-pyreqwest":
        from pyreqwest.client import ClientBuilder

        clients: list[Any] = []

        async def open_client() -> None:
            clients.append(ClientBuilder().error_for_status(False).build())

        async def post_pyreqwest(payload: bytes) -> bytes:
            request = clients[0].post(url).headers(auth).body_bytes(payload).build()
            response = await request.send()
            return bytes((await response.bytes()).to_bytes())

        app = _asgi_app(post_pyreqwest, open_client)
    else:
        raise SystemExit(f"unknown floor {kind!r}")
    uvicorn.run(
        app, host="127.0.0.1", port=port, loop="uvloop", http="httptools", log_level="warning", access_log=False
    )


# --- the measurement -----------------------------------------------------------------------------------


def _load(port: int, connections: int, seconds: float) -> int:
    argv = [PY, str(BENCH / "relay_cpu.py"), "--closed-loop", str(port), "json", str(connections), str(seconds)]
    done = subprocess.run(pinned(LOAD_CORE, [*argv, str(10**9)]), capture_output=True, check=True, text=True)
    result: dict[str, int] = json.loads(done.stdout)
    if result.get("error"):
        raise RuntimeError(f"port {port}: {result['error']} errors")
    return result.get("ok", 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--src", help="run modelgate from this tree's src/ instead of the installed one")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    if args.serve:
        kind, port, upstream_port = args.serve
        serve(kind, int(port), int(upstream_port))
        return
    logs = Path(tempfile.mkdtemp(prefix="floors_"))
    fake_port = free_port()
    argv = [PY, str(BENCH / "fake_upstream.py"), "--port", str(fake_port), "--list-model", UPSTREAM]
    fake = start("fake", [*argv, "--tokens", "8", "--interval-ms", "0"], core=LOAD_CORE, log_dir=logs)
    wait_tcp(fake, fake_port)
    kinds = ["raw", "uvicorn-raw", "uvicorn-aiohttp"]
    if importlib.util.find_spec("pyreqwest") is not None:
        kinds.append("uvicorn-pyreqwest")
    servers: dict[str, tuple[Proc, int]] = {}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELGATE_", "OPENROUTER_", "HF_"))}
    try:
        for kind in kinds:
            port = free_port()
            proc = start(
                kind, [PY, __file__, "--serve", kind, str(port), str(fake_port)], core=SERVER_CORE, log_dir=logs
            )
            wait_tcp(proc, port)
            servers[kind] = (proc, port)
        port = free_port()
        mg_env = env | {
            "MODELGATE_OPENROUTER_BASE_URL": f"http://127.0.0.1:{fake_port}/api/v1",
            "OPENROUTER_API_KEY": KEY.decode(),
            "MODELGATE_DATABASE_URL": f"sqlite:///{logs}/usage.sqlite3",
        }
        if args.src:
            mg_env["PYTHONPATH"] = str(Path(args.src).resolve())
        serve_argv = [PY, "-m", "modelgate", "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
        proc = start("modelgate", serve_argv, core=SERVER_CORE, log_dir=logs, env=mg_env, cwd=logs)
        wait_http(proc, f"http://127.0.0.1:{port}/models")
        servers["modelgate"] = (proc, port)
        figures: dict[str, list[float]] = {kind: [] for kind in servers}
        for _, port in servers.values():  # warm-up: imports on first use, pools, the ledger
            _load(port, args.connections, 1.0)
        for _ in range(args.repeats):
            for kind, (proc, port) in servers.items():
                time.sleep(0.3)
                before = cpu_seconds(proc.pid)
                replies = _load(port, args.connections, args.seconds)
                time.sleep(0.2)
                figures[kind].append(1000 * (cpu_seconds(proc.pid) - before) / max(replies, 1))
    finally:
        for proc, _ in servers.values():
            proc.stop()
        fake.stop()
    ours = statistics.median(figures["modelgate"])
    print("| server | CPU-ms / request, median (range) | share of modelgate's |")
    print("|---|---:|---:|")
    for kind, values in figures.items():
        median = statistics.median(values)
        print(f"| {kind} | {median:.3f} ({min(values):.3f}-{max(values):.3f}) | {median / ours:.0%} |")


if __name__ == "__main__":
    main()
