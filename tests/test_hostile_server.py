"""Hostile clients at the HTTP layer against a real ``modelgate serve`` process (issue 11, #5 #6 #9 #8 #12).

Raw sockets stand in for what no HTTP library sends: a header block that never ends, headers trickled
one byte at a time, sockets that say nothing, a flood of connections, a client that hangs up while its
reply waits for the first token. Counts stay small (50 sockets against a cap of 20), all on loopback.
"""

from __future__ import annotations

import contextlib
import json
import re
import select
import socket
import time
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.catalogue_files import model_toml, write_catalogue
from tests.cli_process import serve_subprocess, wait_for
from tests.fakes import Fakes, Fault, Reply
from tests.raw_http import connect, post, read_response, read_until_closed, request_head

MAX_HEADER_BYTES = 4096
CAP = 20


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    args = [
        *("--max-header-bytes", str(MAX_HEADER_BYTES)),
        *("--header-timeout", "2"),
        *("--keepalive-timeout", "1"),
        *("--max-connections", str(CAP)),
    ]
    with serve_subprocess(args, tmp_path_factory.mktemp("limited"), env={"MODELGATE_PROBE_INTERVAL": "0"}) as served:
        yield served.url


def health_is_served(url: str) -> None:
    response = httpx.get(url + "/health", timeout=10)
    assert response.status_code == 200, response.text


# --- #5: the head's size -----------------------------------------------------------------------------


def test_an_endless_header_block_is_refused_with_431_before_it_is_all_sent(limited: str) -> None:
    total = 16 * 1024 * 1024
    chunk = b"X-Filler: " + b"a" * 65_000 + b"\r\n"
    sent = 0
    with connect(limited) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: modelgate\r\n")
        try:
            while sent < total and not select.select([sock], [], [], 0)[0]:
                sock.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed while we were still sending: what we want
        status, headers, body = read_response(sock)
        assert status == 431
        assert headers["connection"] == "close"
        assert json.loads(body) == {
            "statusCode": 431,
            "statusMessage": f"Request headers are larger than {MAX_HEADER_BYTES} bytes",
        }
        assert read_until_closed(sock) is not None
    assert sent < total  # refused at the limit, not buffered to the end
    health_is_served(limited)


@pytest.mark.parametrize("split", [False, True], ids=["one-read", "endless"])
def test_under_v1_a_head_too_large_is_refused_in_openais_shape(limited: str, split: bool) -> None:
    """Found from outside: the server's own 431 was in the seed's shape on ``/v1`` too."""
    with connect(limited) as sock:
        if split:  # refused while the head is still coming (its size counted read by read)
            sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: modelgate\r\n")
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                for _ in range(4):
                    sock.sendall(b"X-Filler: " + b"a" * MAX_HEADER_BYTES + b"\r\n")
        else:  # refused once the head is complete (it came in one read)
            sock.sendall(request_head("GET", "/v1/models", {"X-Filler": "a" * (MAX_HEADER_BYTES + 200)}))
        status, headers, body = read_response(sock)
    assert status == 431 and headers["connection"] == "close"
    error = json.loads(body)["error"]
    assert error == {
        "message": f"Request headers are larger than {MAX_HEADER_BYTES} bytes",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }


@pytest.mark.parametrize(("size", "status"), [(MAX_HEADER_BYTES - 500, 200), (MAX_HEADER_BYTES + 200, 431)])
def test_the_limit_counts_the_whole_head_in_one_read(limited: str, size: int, status: int) -> None:
    with connect(limited) as sock:
        sock.sendall(request_head("GET", "/health", {"X-Filler": "a" * size}))
        assert read_response(sock)[0] == status


def test_the_limit_is_per_request_on_a_keep_alive_connection(limited: str) -> None:
    """Heads under the limit add up to more than it over one connection: each request is counted alone."""
    with connect(limited) as sock:
        for _ in range(3):
            sock.sendall(request_head("GET", "/health", {"X-Filler": "a" * (MAX_HEADER_BYTES - 500)}))
            assert read_response(sock)[0] == 200
        sock.sendall(request_head("GET", "/health", {"X-Filler": "a" * (2 * MAX_HEADER_BYTES)}))
        assert read_response(sock)[0] == 431


def test_a_head_begun_in_the_read_of_the_previous_request_counts_from_its_first_byte(limited: str) -> None:
    """Pipelined: the next head starts in the read that carried a whole request and ends in a later read, each
    read under the limit, the head over it."""
    half = "a" * (MAX_HEADER_BYTES * 3 // 4)
    with connect(limited) as sock:
        sock.sendall(request_head("GET", "/health") + f"GET /health HTTP/1.1\r\nX-Filler: {half}".encode())
        assert read_response(sock)[0] == 200  # the first read was parsed: what follows is another read
        sock.sendall(f"{half}\r\n\r\n".encode())
        assert read_response(sock)[0] == 431


def test_a_body_is_not_counted_as_head(limited: str) -> None:
    with connect(limited) as sock:
        sock.sendall(post("/health", b"x" * (50 * MAX_HEADER_BYTES)))
        assert read_response(sock)[0] == 405  # the route's answer, not 431


# --- #6: time and number of connections -----------------------------------------------------------


def test_headers_that_never_finish_get_408_and_the_connection_closed(limited: str) -> None:
    with connect(limited) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: modelgate\r\n")
        answer = read_until_closed(sock, timeout=30)
    assert answer is not None, "the connection is still open"
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b"Request headers did not arrive within 2 seconds" in answer


def cut_off(sock: socket.socket, pieces: Iterable[bytes], *, wait: float) -> bool:
    """Send ``pieces`` ``wait`` seconds apart until the server answers or closes (True) or they run out (False)."""
    for piece in pieces:
        try:
            sock.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            return True
        if select.select([sock], [], [], wait)[0]:
            return True
    return False


def test_headers_trickled_a_byte_at_a_time_are_cut_off(limited: str) -> None:
    """Slowloris: every byte arrives in time for a per-read timeout; the head as a whole does not."""
    trickle = b"GET /health HTTP/1.1\r\nHost: modelgate\r\n" + b"X-Slow: " + b"a" * 1000
    with connect(limited) as sock:
        assert cut_off(sock, (bytes([byte]) for byte in trickle), wait=0.2), "the server waited for the whole trickle"
        answer = read_until_closed(sock)
    assert answer is not None and answer.startswith(b"HTTP/1.1 408 ")


def test_a_connection_that_sends_nothing_is_closed(limited: str) -> None:
    with connect(limited) as sock:
        assert read_until_closed(sock, timeout=30) == b""


def test_an_idle_keep_alive_connection_is_closed(limited: str) -> None:
    with connect(limited) as sock:
        sock.sendall(request_head("GET", "/health"))
        assert read_response(sock)[0] == 200
        assert read_until_closed(sock, timeout=30) == b""


def test_the_keep_alive_timeout_runs_from_the_last_answer(limited: str) -> None:
    """The keep-alive timer is made once a connection and re-armed when it fires early (``GuardedProtocol``), where
    uvicorn made and cancelled one per request: a connection answered again 0.7 s into its 1 s keep-alive stays open
    1 s from that answer, whether the answer went through a request cycle or was written by the protocol itself
    (``GET /models``); then it is closed."""
    with connect(limited) as sock:
        sock.sendall(request_head("GET", "/health"))
        assert read_response(sock)[0] == 200
        time.sleep(0.7)
        sock.sendall(request_head("GET", "/models"))
        assert read_response(sock)[0] == 200
        time.sleep(0.6)  # 1.3 s after the first answer: the timer armed then has fired, and waits on
        sock.sendall(request_head("GET", "/health"))
        assert read_response(sock)[0] == 200
        assert read_until_closed(sock, timeout=30) == b""


@pytest.mark.parametrize(
    "head",
    [
        request_head("GET", "/health", {"Content-Length": "100000000"}),
        request_head("POST", "/nowhere", {"Content-Length": "100000000"}),
        request_head("POST", "/health", {"Transfer-Encoding": "chunked"}),
    ],
    ids=["get-with-a-body", "post-to-no-route", "chunked-to-a-405"],
)
def test_a_body_nobody_reads_cannot_hold_the_connection_open(limited: str, head: bytes) -> None:
    """Found in review: the answer went out without reading the body, and then every trickled byte of it (read and
    dropped) restarted the keep-alive timer, and no other timer ran: a connection held for good, a byte a second."""
    chunked = b"chunked" in head
    with connect(limited) as sock:
        sock.sendall(head + (b"1\r\nx\r\n" if chunked else b"x"))
        assert read_response(sock)[0] in (200, 405, 413)
        # 20 s of trickling, against a 2 s header timeout and a 1 s keep-alive.
        trickle = [b"1\r\nx\r\n" if chunked else b"x"] * 40
        assert cut_off(sock, trickle, wait=0.5), "the connection is still open"
    health_is_served(limited)


def test_connections_over_the_cap_get_503_and_the_service_recovers(limited: str) -> None:
    sockets: list[socket.socket] = []
    try:
        for _ in range(50):
            sockets.append(connect(limited))
        answers = [read_until_closed(sock, timeout=30) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
    refused = [a for a in answers if a and a.startswith(b"HTTP/1.1 503 ")]
    held = [a for a in answers if a == b""]  # accepted, then closed by the header timeout
    assert len(refused) + len(held) == 50, answers
    assert len(held) <= CAP
    assert len(refused) >= 50 - CAP
    assert b'"statusMessage":"Too many open connections; try again later"' in refused[0]
    health_is_served(limited)


def test_a_websocket_upgrade_is_an_ordinary_request_and_its_query_is_never_logged(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Found in review: the service has no WebSocket route, yet uvicorn took upgrades to its WebSocket protocol: an
    empty ``text/plain`` 403 outside the documented shape, the connection out of the protocol's limits, and a log
    line with the path *and query string* (``?api_key=…``) beside the client's address."""
    secret = "mg-unknown-to-the-redactor-4f1c9a0b77"
    upgrade = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13",
    }
    env = {"MODELGATE_PROBE_INTERVAL": "0", "MODELGATE_API_KEYS": "mg-some-configured-key-1"}
    with serve_subprocess([], tmp_path_factory.mktemp("ws"), env=env) as served:
        for path, status in ((f"/v1/models?api_key={secret}", 401), (f"/health?key={secret}", 200)):
            with connect(served.url) as sock:
                sock.sendall(request_head("GET", path, upgrade))
                answer, headers, body = read_response(sock)
            assert answer == status, body
            assert headers["content-type"] == "application/json" and headers["x-request-id"]
        health_is_served(served.url)
        wait_for(lambda: served.log().count('"route":"/health"') >= 2, "the access lines")
        log = served.log()
    assert secret not in log, log
    assert "WebSocket" not in log, log  # nor uvicorn's advice to install a WebSocket library


# --- #9, #8, #12: a gateway in front of the fakes ---------------------------------------------------

CHAT = "/api/ai/acme/tiny/chat"
OPENAI = "/v1/chat/completions"
CHAT_BODY = {"messages": [{"role": "user", "content": "Hi"}]}
OPENAI_BODY = {"model": "acme/tiny", "messages": [{"role": "user", "content": "Hi"}], "stream": True}
SEND_TIMEOUT = 2


@pytest.fixture(scope="module")
def gateway(_fake_servers: Fakes, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("gateway")
    catalogue = write_catalogue(tmp / "catalogue.toml", model_toml("acme", "tiny", extra="max_concurrency = 1\n"))
    env = {
        **_fake_servers.env(),
        "MODELGATE_PROBE_INTERVAL": "0",
        "MODELGATE_CLIENT_SEND_TIMEOUT": str(SEND_TIMEOUT),
        "MODELGATE_UPSTREAM_MAX_EVENT_BYTES": str(64 * 1024 * 1024),  # a reply larger than any socket buffer
    }
    with serve_subprocess(["--config", str(catalogue)], tmp, env=env) as served:
        yield served.url


@pytest.mark.parametrize(("path", "body"), [(CHAT, CHAT_BODY), (OPENAI, OPENAI_BODY)], ids=["api-ai", "v1"])
def test_a_client_leaving_before_the_first_token_frees_its_slot_and_cancels_upstream(
    gateway: str, fakes: Fakes, path: str, body: dict[str, Any]
) -> None:
    fakes.ollama.script(Reply(fault=Fault.hang()))  # no first token (the first-token timeout is 60 s)
    with connect(gateway) as sock:
        sock.sendall(post(path, json.dumps(body).encode()))
        wait_for(lambda: fakes.ollama.requests, "the upstream call")
    assert fakes.ollama.wait_for_disconnects(1, timeout=10) == 1, "the upstream request is still open"

    def served() -> httpx.Response | None:  # the model's only slot is free again (429 while it is held)
        response = httpx.post(gateway + path, json=body, timeout=10)
        return response if response.status_code != 429 else None

    response = wait_for(served, "the concurrency slot to be released", timeout=10)
    assert response.status_code == 200 and "Hello" in response.text


def first_tokens(url: str) -> float:
    """First tokens the gateway received so far (the count of its time-to-first-token histogram)."""
    prefix = 'modelgate_upstream_time_to_first_token_seconds_count{model="acme/tiny",provider="ollama"}'
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(prefix):
            return float(line.split()[-1])
    return 0.0


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (OPENAI, {**OPENAI_BODY, "stream": False}),
        ("/v1/responses", {"model": "acme/tiny", "input": "Hi"}),
    ],
)
def test_a_client_leaving_a_non_streamed_v1_completion_cancels_upstream(
    gateway: str, fakes: Fakes, path: str, body: dict[str, Any]
) -> None:
    """A completion is collected whole before its response starts: the client is watched meanwhile too."""
    # Streamed upstream (/v1/responses): one token, then silence (the idle timeout is 60 s). Asked for a whole reply
    # (/v1/chat/completions), Ollama sends nothing until the generation is over: this one never is.
    fakes.ollama.script(Reply(fault=Fault.hang(after=1)))
    before, asked = first_tokens(gateway), len(fakes.ollama.requests)
    with connect(gateway) as sock:
        sock.sendall(post(path, json.dumps(body).encode()))
        wait_for(lambda: len(fakes.ollama.requests) > asked, "the upstream request")
        if fakes.ollama.last.json["stream"]:
            wait_for(lambda: first_tokens(gateway) > before, "the first token")  # now collecting the rest
    assert fakes.ollama.wait_for_disconnects(1, timeout=10) == 1, "the upstream request is still open"


@pytest.mark.parametrize(
    ("path", "body"),
    [(OPENAI, {**OPENAI_BODY, "stream": False}), ("/v1/responses", {"model": "acme/tiny", "input": "Hi"})],
    ids=["chat-completion", "response"],
)
def test_a_client_not_reading_a_whole_reply_is_dropped_in_time(
    gateway: str, fakes: Fakes, path: str, body: dict[str, Any]
) -> None:
    """Found in review: ``MODELGATE_CLIENT_SEND_TIMEOUT`` bounded streamed chunks only. A reply sent whole (a
    non-streamed completion, any large answer) waited for a client that never reads for good: its connection,
    its task and the reply's bytes, buffered in the server, held until the client chose to read or leave."""
    fakes.ollama.script(Reply(tokens=["x" * 8192] * 4000, usage=None))  # ~32 MB: more than any socket buffer
    address = urlsplit(gateway)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((address.hostname or "127.0.0.1", address.port or 80))
        sock.sendall(post(path, json.dumps(body).encode()))
        wait_for(lambda: fakes.ollama.requests, "the upstream call")
        time.sleep(3 * SEND_TIMEOUT)  # never reading meanwhile
        received = read_until_closed(sock, timeout=30)
    assert received is not None, "the connection is still open"
    assert received.startswith(b"HTTP/1.1 200")
    declared = int(re.search(rb"content-length: (\d+)", received, re.IGNORECASE).group(1))  # type: ignore[union-attr]
    assert len(received.partition(b"\r\n\r\n")[2]) < declared, "the whole reply waited for the client"
    health = httpx.get(gateway + "/health", timeout=10)
    assert health.status_code == 200


def test_a_client_reading_a_whole_reply_slowly_gets_all_of_it(gateway: str, fakes: Fakes) -> None:
    """The send timeout is for a client that reads nothing: one reading, however slowly, keeps its connection."""
    fakes.ollama.script(Reply(tokens=["x" * 8192] * 800, usage=None))  # ~6.5 MB
    address = urlsplit(gateway)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((address.hostname or "127.0.0.1", address.port or 80))
        sock.sendall(post(OPENAI, json.dumps({**OPENAI_BODY, "stream": False}).encode()))
        sock.settimeout(10)
        received = b""
        while True:
            time.sleep(SEND_TIMEOUT / 2)  # a pause shorter than the timeout, then 1 MB at most
            chunk = b"x"
            budget = len(received) + 1024 * 1024
            while chunk and len(received) < budget:
                chunk = sock.recv(65536)
                received += chunk
            head, _, body = received.partition(b"\r\n\r\n")
            match = re.search(rb"content-length: (\d+)", head, re.IGNORECASE)
            if not chunk or (match is not None and len(body) >= int(match.group(1))):
                break
    assert match is not None and len(body) == int(match.group(1)), "the reply was cut"


def v1(gateway: str, content: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    given = {"Content-Type": "application/json"} if headers is None else headers
    return httpx.post(gateway + OPENAI, content=content, headers=given, timeout=10)


def v1_body(**fields: Any) -> bytes:
    return json.dumps({"model": "acme/tiny", "messages": [{"role": "user", "content": "Hi"}], **fields}).encode()


@pytest.mark.parametrize("seed", [2**64, -(2**63) - 1, 10**30])
def test_v1_seed_beyond_64_bits_is_a_400_naming_it(gateway: str, fakes: Fakes, seed: int) -> None:
    response = v1(gateway, v1_body(seed=seed))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "seed" and "seed" in error["message"]
    assert not fakes.ollama.requests
    assert v1(gateway, v1_body(seed=2**63)).status_code == 200  # still 64 bits: served


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b'{"model": "acme/tiny", "messages": [{"role": "user", "content": "a\\ud800b"}]}', "messages.0.content"),
        (
            b'{"model": "acme/tiny", "messages": [{"role": "user", "content": [{"type": "text", "text": "\\udfff"}]}]}',
            "messages.0.content",
        ),
        (b'{"model": "acme/tiny", "messages": [{"role": "user", "content": "Hi"}], "stop": ["\\ud83d"]}', "stop"),
        (  # anywhere in a document the caller defines, such as a tool's JSON Schema
            b'{"model": "acme/tiny", "messages": [{"role": "user", "content": "Hi"}], "tools": [{"type": "function",'
            b' "function": {"name": "f", "parameters": {"type": "object", "description": "\\ud800"}}}]}',
            "tools.0.function.parameters",
        ),
    ],
)
def test_v1_lone_surrogate_is_a_400_naming_the_field(gateway: str, fakes: Fakes, body: bytes, param: str) -> None:
    response = v1(gateway, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"].startswith(param) and "surrogate" in error["message"]
    assert not fakes.ollama.requests
    # A surrogate pair is a character like any other.
    assert v1(gateway, v1_body(messages=[{"role": "user", "content": "\U0001f600"}])).status_code == 200


def test_v1_json_syntax_error_says_so_without_a_position_as_param(gateway: str) -> None:
    response = v1(gateway, b'{"model": "acme/tiny", "messages": [')
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] is None
    assert error["message"].startswith("The request body is not valid JSON")
    assert error["type"] == "invalid_request_error"


def test_v1_body_that_is_not_an_object_says_so(gateway: str) -> None:
    error = v1(gateway, b"[1, 2]").json()["error"]
    assert error["message"].startswith("Invalid request body: Input should be a valid dictionary")
    assert error["param"] is None


def test_v1_body_without_content_type_is_read_as_json(gateway: str) -> None:
    response = v1(gateway, v1_body(), headers={})
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "Hello, world!"


def test_v1_body_declared_as_another_media_type_is_a_clear_415(gateway: str) -> None:
    response = v1(gateway, v1_body(), headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 415
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert "Content-Type: application/json" in error["message"]
    assert "application/x-www-form-urlencoded" in error["message"]


def test_a_reply_outlasting_the_keep_alive_timeout_is_not_cut_by_it(gateway: str, fakes: Fakes) -> None:
    """The keep-alive timer armed by the previous answer on the connection fires while this reply streams
    (``GuardedProtocol`` keeps one timer a connection and checks, when it fires, that the connection is idle): the
    reply goes on to its end. 12 tokens 0.5 s apart against the default 5 s keep-alive."""
    fakes.ollama.script(Reply(tokens=[f"t{i} " for i in range(12)], delay=0.5))
    with httpx.Client(base_url=gateway, timeout=30, limits=httpx.Limits(max_connections=1)) as client:
        assert client.get("/health").status_code == 200
        reply = client.post(CHAT, json=CHAT_BODY)
        assert client.get("/health").status_code == 200  # and the connection is kept after it
    assert reply.status_code == 200
    lines = reply.text.splitlines()
    assert "".join(json.loads(line[2:]) for line in lines if line.startswith("0:")) == "".join(
        f"t{i} " for i in range(12)
    )
    assert lines[-1].startswith("d:"), lines[-3:]
