"""``RelayResponse`` on a real uvicorn (httptools) server: chunks written to the transport directly while it
takes them, through ``send`` (and so the send guard) once the client stops reading, in order either way."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator

from starlette.types import Message, Receive, Scope, Send

from modelgate.observer import DIRECT_SEND, SERVER_SEND
from modelgate.relay_response import ChunkWriter, RelayResponse
from tests.raw_http import connect, request_head
from tests.servers import serve_in_thread

#: One streamed part: big enough that a client that does not read fills the socket buffers.
PART = 64 * 1024


class RelayApp:
    """Streams ``parts`` numbered chunks; counts the body messages that went through ``send``."""

    def __init__(self, parts: int, size: int) -> None:
        self.parts, self.size = parts, size
        self.sent_chunks: list[int] = []  # sizes of the body messages that took the send path
        self.ended = 0

    async def body(self) -> AsyncIterator[bytes]:
        for i in range(self.parts):
            yield b""  # an empty chunk is no chunk: written, it would be the terminator
            yield (b"%08d" % i).ljust(self.size, b".")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return

        async def counted(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body"):
                    self.sent_chunks.append(len(message["body"]))
                else:
                    self.ended += 1
            await send(message)

        scope[DIRECT_SEND] = counted
        scope[SERVER_SEND] = send
        await RelayResponse(self.body(), media_type="text/plain", headers={})(scope, receive, send)


def read_chunked(sock: socket.socket) -> tuple[bytes, bytes]:
    """Head and de-chunked body of one chunked response (strict: each chunk's size line must be right)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower()
    body = b""
    while True:
        while b"\r\n" not in rest:
            rest += sock.recv(65536)
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        while len(rest) < size + 2:
            more = sock.recv(65536)
            assert more, "closed inside a chunk"
            rest += more
        assert rest[size : size + 2] == b"\r\n"
        if size == 0:
            assert rest == b"\r\n", rest  # nothing after the terminator
            return head, body
        body += rest[:size]
        rest = rest[size + 2 :]


def expected(app: RelayApp) -> bytes:
    return b"".join((b"%08d" % i).ljust(app.size, b".") for i in range(app.parts))


def test_chunks_bypass_send_while_the_client_reads_and_the_connection_stays_usable() -> None:
    app = RelayApp(parts=5, size=10)
    with serve_in_thread(app, http="httptools") as url:
        sock = connect(url)
        for _ in range(2):  # keep-alive: the response completed as uvicorn's own would
            sock.sendall(request_head("GET", "/"))
            _, body = read_chunked(sock)
            assert body == expected(app)
        sock.close()
    assert app.sent_chunks == []  # every chunk went to the transport
    assert app.ended == 2  # the end always takes send: the access line and metrics are recorded there


def test_a_client_that_stops_reading_gets_the_rest_through_send_in_order() -> None:
    app = RelayApp(parts=300, size=PART)  # ~19 MiB: more than the socket buffers hold
    with serve_in_thread(app, http="httptools") as url:
        sock = connect(url, timeout=30)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        sock.sendall(request_head("GET", "/"))
        time.sleep(1.0)  # not reading: the server's transport fills and pauses writing
        _, body = read_chunked(sock)
        sock.close()
    assert body == expected(app)  # nothing lost, nothing reordered between the two paths
    assert app.sent_chunks, "a paused transport must hand the chunk to send (and its guard)"
    assert all(size == PART for size in app.sent_chunks)


def test_no_writer_for_a_send_that_is_not_uvicorns_cycle() -> None:
    async def send(message: Message) -> None: ...

    assert ChunkWriter.of(send) is None
    assert ChunkWriter.of(None) is None
