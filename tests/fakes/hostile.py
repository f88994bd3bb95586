"""A hostile upstream: a raw HTTP/1.1 server on 127.0.0.1 that answers whatever bytes a test scripts.

The provider fakes (``tests/fakes/*.py``) speak each protocol correctly through Starlette; this one
exists for what no well-behaved server framework would send: a gzip body although ``identity`` was
asked for, a line of 200 MiB, endless comments, a chunk that reflects the request's ``Authorization``.

It runs its own event loop in a thread (like ``tests/servers.py``). A test sets ``script``: a function
of the ``Received`` request returning an async iterator of byte pieces (status line, headers, body);
every piece is written with ``drain()``, so a reply the client stops reading stops being produced, and
the fake records how many bytes it wrote and whether the client hung up first.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import zlib
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

__all__ = ["RESET", "HostileUpstream", "Received", "Script", "gzip_bomb", "response_head"]

#: A piece a script yields to reset the connection there (an RST, not the FIN every other ending sends).
RESET = b"\x00reset\x00"


@dataclass(frozen=True)
class Received:
    """One request the hostile upstream read."""

    method: str
    path: str
    headers: Mapping[str, str]  # lower-case names
    body: bytes


Script = Callable[[Received], AsyncIterator[bytes]]


@dataclass
class Outcome:
    """What happened to one reply."""

    written: int = 0
    #: The client closed the connection before the script was over.
    cut_by_client: bool = False
    done: threading.Event = field(default_factory=threading.Event)


def response_head(status: int = 200, headers: Mapping[str, str] | None = None) -> bytes:
    """A status line and headers; the body runs until the connection closes (no length, no chunking)."""
    lines = [f"HTTP/1.1 {status} Hostile", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def gzip_bomb(inflated: int, *, piece: bytes = b"a" * (1 << 20)) -> AsyncIterator[bytes]:
    """A gzip stream of ``inflated`` bytes of ``piece`` repeated (no newline), compressed as it is sent:
    a 1 GiB bomb is about 1 MiB on the wire, and only what the client reads is ever compressed."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # 16+: the gzip container
    sent = 0
    while sent < inflated:
        out = compressor.compress(piece)
        sent += len(piece)
        if out:
            yield out
    yield compressor.flush()


class HostileUpstream:
    """Serve ``script`` on a loopback port. ``received`` and ``outcomes`` are per reply, in order."""

    def __init__(self) -> None:
        self.script: Script | None = None
        self._lock = threading.Lock()
        self._received: list[Received] = []
        self._outcomes: list[Outcome] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        #: The base URL while ``serve`` runs.
        self.url = ""

    @property
    def received(self) -> list[Received]:
        with self._lock:
            return list(self._received)

    @property
    def outcomes(self) -> list[Outcome]:
        with self._lock:
            return list(self._outcomes)

    def reset(self, script: Script | None = None) -> None:
        with self._lock:
            self.script = script
            self._received.clear()
            self._outcomes.clear()

    @contextmanager
    def serve(self) -> Iterator[str]:
        """Start on 127.0.0.1:<free port>; yield the base URL; stop (cutting open replies) on exit."""
        started = threading.Event()
        port: list[int] = []
        stop: list[asyncio.Event] = []

        async def main() -> None:
            server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            port.append(server.sockets[0].getsockname()[1])
            stop.append(asyncio.Event())
            self._loop = asyncio.get_running_loop()
            started.set()
            async with server:
                await stop[0].wait()

        thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
        thread.start()
        if not started.wait(10):
            raise RuntimeError("hostile upstream did not start")
        self.url = f"http://127.0.0.1:{port[0]}"
        try:
            yield self.url
        finally:
            assert self._loop is not None
            self._loop.call_soon_threadsafe(stop[0].set)
            thread.join(timeout=10)

    @staticmethod
    async def _watch(reader: asyncio.StreamReader, outcome: Outcome, replying: asyncio.Task[None]) -> None:
        """Stop the reply when the client hangs up, even while the script waits (a stall notices nothing else).
        Nothing more comes on a request's connection (no pipelining here): a read that returns is the end."""
        with contextlib.suppress(ConnectionError):
            await reader.read(1)
        outcome.cut_by_client = True
        replying.cancel()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        outcome = Outcome()
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *header_lines = head.decode("latin-1").split("\r\n")
            method, path, _ = request_line.split(" ", 2)
            headers = {
                name.strip().lower(): value.strip()
                for name, _, value in (line.partition(":") for line in header_lines if line)
            }
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            received = Received(method, path, headers, body)
            with self._lock:
                self._received.append(received)
                self._outcomes.append(outcome)
                script = self.script
            if script is None:
                writer.write(response_head(500) + b"no script")
                return
            replying = asyncio.current_task()
            assert replying is not None
            watcher = asyncio.create_task(self._watch(reader, outcome, replying))
            try:
                async for piece in script(received):
                    if piece is RESET:
                        sock = writer.get_extra_info("socket")
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        writer.transport.abort()
                        return
                    writer.write(piece)
                    await writer.drain()
                    outcome.written += len(piece)
            except asyncio.CancelledError:
                if not outcome.cut_by_client:
                    raise  # the server stopping
            finally:
                watcher.cancel()
        except (ConnectionError, asyncio.IncompleteReadError):
            outcome.cut_by_client = True
        finally:
            outcome.done.set()
            writer.close()
