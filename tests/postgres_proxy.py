"""A TCP proxy in front of a PostgreSQL server that can lose one COMMIT's answer, as a cut network does.

Armed (``cut_next_commit``), it forwards the next ``COMMIT`` to the server, waits for the server's whole answer
(``CommandComplete`` then ``ReadyForQuery``: the transaction is committed by then), and closes both connections
instead of passing that answer on. The client sees its connection lost mid-commit; the rows are in the database.

It reads the client's messages (protocol 3: the untyped start-up messages, then a type byte and a length each) to
find the ``COMMIT`` (asyncpg sends it as a simple ``Query``); the server's side is passed on as bytes. It runs in
the test's event loop, so what it does and when is decided by the messages alone: no timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct

#: The start-up message of protocol 3.0 (after it every client message is typed); SSL and GSS requests are untyped too.
_PROTOCOL_3 = 196608
#: ``ReadyForQuery``'s type and length: the last message of the server's answer to a query.
_READY_FOR_QUERY = b"Z\x00\x00\x00\x05"


class CommitAnswerCutter:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.cuts = 0  #: answers lost so far
        self._armed = False
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> CommitAnswerCutter:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def cut_next_commit(self) -> None:
        self._armed = True

    async def _connection(self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter) -> None:
        server_in, server_out = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        cutting = asyncio.Event()  # set once this connection's COMMIT went to the server with the proxy armed
        pumps = [
            asyncio.create_task(self._client_to_server(client_in, server_out, cutting)),
            asyncio.create_task(self._server_to_client(server_in, client_out, cutting)),
        ]
        self._tasks.update(pumps)
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            self._tasks.difference_update(pumps)
            for writer in (client_out, server_out):
                writer.transport.abort()  # a cut, not a goodbye: no Terminate reaches the server

    async def _client_to_server(
        self, client_in: asyncio.StreamReader, server_out: asyncio.StreamWriter, cutting: asyncio.Event
    ) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            started = False
            while True:
                kind = await client_in.readexactly(1) if started else b""
                header = await client_in.readexactly(4)
                body = await client_in.readexactly(struct.unpack("!I", header)[0] - 4)
                if not started:
                    started = struct.unpack("!I", body[:4])[0] == _PROTOCOL_3
                elif kind == b"Q" and self._armed and body.rstrip(b"\x00; ").upper() == b"COMMIT":
                    self._armed = False
                    cutting.set()  # before the server can answer: its answer is held from here on
                server_out.write(kind + header + body)
                await server_out.drain()

    async def _server_to_client(
        self, server_in: asyncio.StreamReader, client_out: asyncio.StreamWriter, cutting: asyncio.Event
    ) -> None:
        held = b""
        with contextlib.suppress(ConnectionError):
            while chunk := await server_in.read(65536):
                if not cutting.is_set():
                    client_out.write(chunk)
                    await client_out.drain()
                    continue
                held += chunk
                if _READY_FOR_QUERY in held:  # the server answered the COMMIT: committed, and now the answer is lost
                    self.cuts += 1
                    return
