"""Bad input and hostile clients against a real server: each gets a clear answer or is cleaned up after,
and the service keeps serving others meanwhile (every test checks that another request succeeds).

Raw sockets stand in for clients no HTTP library would be: one that sends a huge ``Content-Length``,
one that trickles its body, one that never reads, one that hangs up mid-stream.
"""

from __future__ import annotations

import json
import logging
import select
import socket
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import pytest

from modelgate.app import create_app
from modelgate.settings import Settings
from tests.fakes import Fakes, Fault, Reply
from tests.raw_http import read_response
from tests.servers import serve_in_thread

CHAT = "/api/ai/ollama/rwkv-6-world/chat"
OPENAI = "/v1/chat/completions"
BODY = {"messages": [{"role": "user", "content": "Hi"}]}
LIMIT = 1_000_000


@pytest.fixture
def service(fakes: Fakes) -> Iterator[str]:
    settings = Settings(
        **fakes.settings_overrides(),
        probe_interval=0,
        max_body_bytes=LIMIT,
        client_body_timeout=1.0,
        client_send_timeout=0.5,
    )
    with serve_in_thread(create_app(settings)) as url:
        yield url


def others_are_served(url: str) -> None:
    """A normal chat, start to end, through the same service."""
    response = httpx.post(url + CHAT, json=BODY, timeout=10)
    assert response.status_code == 200 and '0:"Hello"' in response.text, response.text


def in_flight(url: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("modelgate_streams_in_flight "):
            return float(line.split()[1])
    raise AssertionError("no in-flight gauge")


def wait_until(predicate: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


# --- raw HTTP ------------------------------------------------------------------------------------


def connect(url: str, *, receive_buffer: int | None = None) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer is not None:  # before connect, so the TCP window is small from the start
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.connect((parts.hostname or "127.0.0.1", parts.port or 80))
    return sock


def head(method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: modelgate", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def closed_by_peer(sock: socket.socket, timeout: float = 10.0) -> bool:
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except (ConnectionResetError, TimeoutError):
        return False
    return True


# --- bad input ------------------------------------------------------------------------------------


def test_malformed_json_is_a_400_in_the_seed_shape(service: str) -> None:
    response = httpx.post(service + CHAT, content=b'{"messages": [', headers={"content-type": "application/json"})
    assert response.status_code == 400
    body = response.json()
    assert body["statusCode"] == 400 and "not valid JSON" in body["statusMessage"]
    others_are_served(service)


def test_malformed_json_under_v1_is_a_400_in_the_openai_shape(service: str) -> None:
    response = httpx.post(service + OPENAI, content=b'{"model": ', headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_invalid_utf8_is_a_400(service: str) -> None:
    body = b'{"messages": [{"role": "user", "content": "caf\xe9 \xff\xfe"}]}'
    response = httpx.post(service + CHAT, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["statusCode"] == 400
    v1 = httpx.post(
        service + OPENAI,
        content=b'{"model": "ollama/rwkv-6-world", "messages": [{"role": "user", "content": "\xff"}]}',
        headers={"content-type": "application/json"},
    )
    assert v1.status_code == 400 and v1.json()["error"]["type"] == "invalid_request_error"
    others_are_served(service)


def test_ten_thousand_messages_are_a_400(service: str) -> None:
    messages = [{"role": "user", "content": "hi"}] * 10_000
    response = httpx.post(service + CHAT, json={"messages": messages})
    assert response.status_code == 400
    assert "1000" in response.json()["statusMessage"]
    v1 = httpx.post(service + OPENAI, json={"model": "ollama/rwkv-6-world", "messages": messages})
    assert v1.status_code == 400 and "1000" in v1.json()["error"]["message"]
    others_are_served(service)


def test_a_10mb_content_length_is_refused_before_any_of_it_is_sent(service: str) -> None:
    with connect(service) as sock:
        sock.sendall(head("POST", CHAT, {"Content-Type": "application/json", "Content-Length": "10000000"}))
        status, headers, body = read_response(sock)  # answered without waiting for a single body byte
    assert status == 413
    assert json.loads(body) == {
        "statusCode": 413,
        "statusMessage": f"The request body is larger than {LIMIT} bytes",
        "data": {"limit": LIMIT},
    }
    assert headers["x-request-id"]
    others_are_served(service)


def test_a_10mb_body_without_length_is_cut_off_at_the_limit(service: str) -> None:
    sent = 0

    def ten_megabytes() -> Iterator[bytes]:
        nonlocal sent
        chunk = b"[" + b"0," * 32_767 + b"0"
        for _ in range(10_000_000 // len(chunk)):
            sent += len(chunk)
            yield chunk

    for path, shape in ((CHAT, "seed"), (OPENAI, "openai")):
        response = httpx.post(service + path, content=ten_megabytes(), headers={"content-type": "application/json"})
        assert response.status_code == 413, (path, response.text)
        if shape == "seed":
            assert response.json()["statusCode"] == 413
        else:
            assert response.json()["error"]["code"] == "request_too_large"
    assert sent > 2 * 9_000_000  # the client did push its 10 MB twice; the service only counted them
    others_are_served(service)


# --- hostile clients ---------------------------------------------------------------------------------


def post_chat(sock: socket.socket) -> None:
    """Send the chat request (BODY, whole) on a raw connection."""
    payload = orjson.dumps(BODY)
    sock.sendall(head("POST", CHAT, {"Content-Type": "application/json", "Content-Length": str(len(payload))}))
    sock.sendall(payload)


def test_a_body_trickling_in_byte_by_byte_gets_a_408_and_blocks_nobody(service: str) -> None:
    payload = orjson.dumps(BODY)
    with connect(service) as sock:
        sock.sendall(head("POST", CHAT, {"Content-Type": "application/json", "Content-Length": str(len(payload))}))
        sock.sendall(payload[:1])
        others_are_served(service)  # while the slow client is mid-body
        answered = False
        for byte in payload[1:]:
            readable, _, _ = select.select([sock], [], [], 0.3)  # one byte per 0.3 s: far too slow
            if readable:
                answered = True
                break
            sock.sendall(bytes([byte]))
        assert answered, "the slow body was never cut off"
        status, headers, body = read_response(sock)
        assert status == 408
        assert json.loads(body)["statusCode"] == 408
        assert headers["connection"] == "close"
        assert closed_by_peer(sock)
    others_are_served(service)


def test_a_client_that_never_reads_is_dropped_and_the_upstream_closed(service: str, fakes: Fakes) -> None:
    fakes.ollama.script(Reply(tokens=["x" * 8192] * 4000, usage=None))  # ~32 MB: more than any buffer holds
    with connect(service, receive_buffer=4096) as sock:
        post_chat(sock)
        # Never read. The gateway's writes stall, it gives up, and closes the upstream stream.
        assert fakes.ollama.wait_for_disconnects(1) == 1
        assert wait_until(lambda: in_flight(service) == 0)
        others_are_served(service)


def read_ticks(sock: socket.socket, count: int) -> bytes:
    """What the connection received until ``count`` ``tick`` tokens were in it (10 s at most a read)."""
    sock.settimeout(10)
    received = b""
    while received.count(b'0:"tick"') < count:
        received += sock.recv(4096)
    return received


def test_a_client_hanging_up_mid_stream_frees_everything(service: str, fakes: Fakes) -> None:
    fakes.ollama.script(Reply(tokens=["tick"] * 400, delay=0.05))
    with connect(service) as sock:
        post_chat(sock)
        assert read_ticks(sock, 3).startswith(b"HTTP/1.1 200")
        assert in_flight(service) == 1
    # The socket is closed: the upstream must see it, and nothing must stay in flight.
    assert fakes.ollama.wait_for_disconnects(1) == 1
    assert wait_until(lambda: in_flight(service) == 0)
    others_are_served(service)


def test_many_clients_hanging_up_at_once_leave_nothing_behind(service: str, fakes: Fakes) -> None:
    fakes.ollama.default = Reply(tokens=["tick"] * 400, delay=0.05)
    sockets = []
    for _ in range(10):
        sock = connect(service)
        post_chat(sock)
        sockets.append(sock)
    for sock in sockets:
        sock.settimeout(10)
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    assert wait_until(lambda: in_flight(service) == 10)
    for sock in sockets:
        sock.close()
    assert fakes.ollama.wait_for_disconnects(10) == 10
    assert wait_until(lambda: in_flight(service) == 0)
    fakes.ollama.default = Reply()
    others_are_served(service)


def pipelined_chats(sock: socket.socket) -> None:
    """Two chat requests on a raw connection, the second sent right behind the first (HTTP/1.1 pipelining)."""
    payload = orjson.dumps(BODY)
    one = head("POST", CHAT, {"Content-Type": "application/json", "Content-Length": str(len(payload))}) + payload
    sock.sendall(one + one)


def test_a_client_leaving_before_the_first_token_with_a_request_pipelined_behind_frees_the_upstream(
    service: str, fakes: Fakes
) -> None:
    """Found by chaos: with a second request queued behind it, uvicorn told the queued request the client was gone,
    not the one running; it waited for its first token (the upstream call, its slots) until the timeout."""
    fakes.ollama.script(Reply(fault=Fault.hang()))  # no status line: the gateway waits for the first token
    with connect(service) as sock:
        pipelined_chats(sock)
        assert wait_until(lambda: len(fakes.ollama.requests) == 1)
    assert fakes.ollama.wait_for_disconnects(1) == 1
    others_are_served(service)


def test_a_client_leaving_mid_stream_with_a_request_pipelined_behind_frees_everything(
    service: str, fakes: Fakes
) -> None:
    fakes.ollama.script(Reply(tokens=["tick"] * 10, fault=Fault.hang(after=3)))  # three tokens, then silence
    with connect(service) as sock:
        pipelined_chats(sock)
        read_ticks(sock, 3)
        assert in_flight(service) == 1
    assert fakes.ollama.wait_for_disconnects(1) == 1
    assert wait_until(lambda: in_flight(service) == 0)
    others_are_served(service)


# --- bytes the HTTP parser refuses ---------------------------------------------------------------------


def requests_counted(url: str, route: str, status: int) -> float:
    wanted = f'route="{route}",status="{status}"'
    total = 0.0
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("modelgate_http_requests_total{") and wanted in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.parametrize(
    "raw",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: modelgate\r\nBad Header: space in its name\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: modelgate\r\nX-Request-ID: a\rb\r\n\r\n",
        b"POST /api/ai/ollama/rwkv-6-world/chat HTTP/1.1\r\nHost: modelgate\r\nContent-Length: 2\r\n"
        b"Content-Length: 3\r\n\r\n{}",
        b"POST /api/ai/ollama/rwkv-6-world/chat HTTP/1.1\r\nHost: modelgate\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz\r\n{}\r\n0\r\n\r\n",
    ],
    ids=["request-line", "header-name", "bare-cr", "two-lengths", "chunk-size"],
)
def test_bytes_the_http_parser_refuses_get_a_400_in_the_seed_shape(service: str, raw: bytes) -> None:
    """Found in review: uvicorn's own answer was ``text/plain`` "Invalid HTTP request received." — the one error
    of the service outside the documented shape."""
    with connect(service) as sock:
        sock.sendall(raw)
        status, headers, body = read_response(sock)
        assert status == 400
        assert headers["content-type"] == "application/json"
        assert json.loads(body) == {"statusCode": 400, "statusMessage": "Invalid HTTP request"}
        assert headers["connection"] == "close"
        assert closed_by_peer(sock)
    others_are_served(service)


@pytest.mark.parametrize(
    "raw",
    [
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: modelgate\r\nBad Header: space in its name\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: modelgate\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz\r\n{}\r\n0\r\n\r\n",
    ],
    ids=["header-name", "chunk-size"],
)
def test_under_v1_the_parsers_400_is_in_openais_shape(service: str, raw: bytes) -> None:
    """Found from outside: the server's own refusals were in the seed's shape on ``/v1`` too, where the README
    promises OpenAI's (an SDK reads ``error.message``)."""
    with connect(service) as sock:
        sock.sendall(raw)
        status, headers, body = read_response(sock)
        assert status == 400 and headers["connection"] == "close"
        error = json.loads(body)["error"]
        assert error["message"] == "Invalid HTTP request" and error["type"] == "invalid_request_error"
    others_are_served(service)


def test_garbage_after_a_v1_request_is_not_answered_in_that_requests_shape(service: str) -> None:
    """The parser keeps the last request's URL until the next one begins: a request line it cannot read has no
    path, and gets the seed's shape."""
    with connect(service) as sock:
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: modelgate\r\n\r\n")
        assert read_response(sock)[0] == 200
        sock.sendall(b"GARBAGE\r\n\r\n")
        status, _, body = read_response(sock)
        assert status == 400 and json.loads(body) == {"statusCode": 400, "statusMessage": "Invalid HTTP request"}


def test_bad_framing_behind_a_streaming_reply_never_writes_into_it(service: str, fakes: Fakes) -> None:
    """A refusal written while a response is still going out would land inside that response's body (uvicorn
    wrote its 400 there): the connection is closed instead, as for the other refusals (``server._refuse``)."""
    fakes.ollama.script(Reply(tokens=["tick"] * 40, delay=0.05))
    with connect(service) as sock:
        post_chat(sock)
        sock.settimeout(10)
        received = sock.recv(65536)
        assert received.startswith(b"HTTP/1.1 200")
        sock.sendall(b"GARBAGE\r\n\r\n")  # a pipelined "request" no parser accepts
        while chunk := sock.recv(65536):
            received += chunk
    assert b"HTTP/1.1 400" not in received and b"Invalid HTTP request" not in received, received[-300:]
    others_are_served(service)


def test_a_client_leaving_mid_body_is_a_499_not_an_unhandled_error(
    service: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Found in review: on the chat routes (answered in front of the framework, ``routes/direct.py``) a body cut
    short by its client was logged as an unhandled error with a traceback and counted as a 500 — one error-level
    traceback per hostile connection, and a server-error rate a client could raise at will. The framework's routes
    (``/v1/responses``) answered it as FastAPI's 400 "error parsing the body", a client error nobody made."""
    for path in (CHAT, OPENAI, "/v1/responses"):
        with connect(service) as sock:
            sock.sendall(head("POST", path, {"Content-Type": "application/json", "Content-Length": "100"}))
            sock.sendall(b'{"messages": [')
            sock.shutdown(socket.SHUT_WR)
            assert closed_by_peer(sock)
        route = "/api/ai/{first}/{second}/chat" if path == CHAT else path
        assert wait_until(lambda route=route: requests_counted(service, route, 499) == 1), path  # type: ignore[misc]
        assert requests_counted(service, route, 500) == requests_counted(service, route, 400) == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    others_are_served(service)
