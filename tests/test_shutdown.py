"""SIGTERM while replies run that would never end (issue 11, #10), against a real ``modelgate serve``.

The fake upstream sends one token and then nothing (for a minute). With ``--graceful-timeout 3`` the
server stops accepting connections at once, gives the replies their three seconds, then ends each one with
its protocol's error part saying the server is shutting down, and exits.
"""

from __future__ import annotations

import json
import signal
import socket
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.catalogue_files import model_toml, write_catalogue
from tests.cli_process import serve_subprocess, wait_for
from tests.fakes import Fakes, Fault, Reply
from tests.raw_http import connect, post, read_until_closed

CHAT = "/api/ai/acme/tiny/chat"
CHAT_BODY = json.dumps({"messages": [{"role": "user", "content": "Hi"}]}).encode()
OPENAI_BODY = json.dumps({"model": "acme/tiny", "messages": [{"role": "user", "content": "Hi"}], "stream": True})

#: protocol → (path, body, the error part it must end with)
STREAMS = {
    "data": (CHAT, CHAT_BODY, b'3:"The server is shutting down'),
    "ui": (CHAT + "?protocol=ui", CHAT_BODY, b'{"type":"error","errorText":"The server is shutting down'),
    "text": (CHAT + "?protocol=text", CHAT_BODY, b"[error: The server is shutting down"),
    "openai": ("/v1/chat/completions", OPENAI_BODY.encode(), b'{"error":{"message":"The server is shutting down'),
}


def refused(url: str) -> bool:
    parts = urlsplit(url)
    try:
        socket.create_connection((parts.hostname, parts.port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def read_response_bytes(data: bytes | None) -> tuple[int, dict[str, str], bytes]:
    assert data is not None, "no response"
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    return int(status_line.split()[1]), dict(line.split(": ", 1) for line in lines), body


def read_until(sock: socket.socket, marker: bytes) -> bytes:
    sock.settimeout(30)
    data = b""
    while marker not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before {marker!r}: {data!r}"
        data += chunk
    return data


@pytest.mark.timeout(180)
def test_sigterm_ends_endless_replies_with_an_error_part_at_the_limit_then_exits(fakes: Fakes, tmp_path: Path) -> None:
    fakes.ollama.default = Reply(fault=Fault.hang(after=1))  # "Hello", then silence
    catalogue = write_catalogue(tmp_path / "catalogue.toml", model_toml("acme", "tiny"))
    env = {**fakes.env(), "MODELGATE_PROBE_INTERVAL": "0"}
    with serve_subprocess(["--config", str(catalogue), "--graceful-timeout", "3"], tmp_path, env=env) as served:
        sockets = {name: connect(served.url) for name in STREAMS}
        try:
            for name, (path, body, _) in STREAMS.items():
                sockets[name].sendall(post(path, body))
            started = {name: read_until(sock, b"Hello") for name, sock in sockets.items()}
            # One more request whose reply has not started: no first token, ever.
            fakes.ollama.script(Reply(fault=Fault.hang()))
            waiting = connect(served.url)
            sockets["waiting"] = waiting
            waiting.sendall(post(CHAT, CHAT_BODY))
            wait_for(lambda: len(fakes.ollama.requests) == len(STREAMS) + 1, "the fifth upstream call")

            served.signal(signal.SIGTERM)
            wait_for(lambda: refused(served.url), "new connections to be refused")
            assert served.process.poll() is None  # the running replies still have their time

            endings = {name: read_until_closed(sock, timeout=60) for name, sock in sockets.items()}
        finally:
            for sock in sockets.values():
                sock.close()
        for name, (_, _, error_part) in STREAMS.items():
            ending = endings[name]
            assert ending is not None, f"{name}: the reply was never ended"
            assert error_part in started[name] + ending, f"{name}: {started[name] + ending!r}"
        status, _, body = read_response_bytes(endings["waiting"])
        assert status == 503 and json.loads(body)["statusMessage"].startswith("The server is shutting down")
        served.process.wait(timeout=60)  # and the process exits on its own
        assert "graceful-shutdown limit reached: ending 5 running replies" in served.log()
