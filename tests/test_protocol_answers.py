"""``protocol_answers.py``: ``GET``/``HEAD /models`` written by the HTTP protocol, byte for byte the ASGI path's.

Two servers of the same app under the production protocol (``server.GuardedProtocol``): one as it ships, one
with ``protocol_answers`` off, so every request goes through uvicorn's request cycle and the observer. Each
request below, sent as raw bytes, must get the same status line, headers in the same order (``date`` aside,
and a generated request id) and body from both, close the connection in the same cases, and be counted and
logged the same. A recording wrapper around the app tells which requests reached ASGI: on the first server
the plain ones must not, the unusual ones must.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.types import ASGIApp, Receive, Scope, Send

from modelgate.access_log import AccessLog
from modelgate.app import create_app
from modelgate.catalogue import Catalogue, load_catalogue
from modelgate.server import GuardedProtocol
from modelgate.settings import Settings
from tests import raw_http
from tests.catalogue_files import broken_copy, model_toml, write_catalogue
from tests.servers import serve_in_thread

ALLOWED = "https://chat.example"
_GENERATED_ID = re.compile(r"^[0-9a-f]{32}$")


class _Seen:
    """The app as uvicorn calls it, recording the paths of the HTTP requests that reached ASGI."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.paths: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.paths.append(scope["path"])
        await self.app(scope, receive, send)


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.fields: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.fields.append(record.structured)  # type: ignore[attr-defined]


@dataclass
class Served:
    url: str
    seen: _Seen
    lines: _Lines
    app: Any = field(repr=False)


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    return load_catalogue()


@contextmanager
def _serve(catalogue: Catalogue, *, early: bool) -> Iterator[Served]:
    settings = Settings(cors_origins=(ALLOWED,), probe_interval=0, protocol_answers=early)
    app = create_app(settings, catalogue)
    logger = logging.Logger(f"access-{early}", logging.INFO)  # each server's lines apart
    lines = _Lines()
    logger.addHandler(lines)
    app.state.gateway.access_log = AccessLog(app.state.gateway.redactor, logger)
    seen = _Seen(app)
    with serve_in_thread(seen, http=GuardedProtocol) as url:
        yield Served(url, seen, lines, app)


@pytest.fixture(scope="module")
def pair(catalogue: Catalogue) -> Iterator[tuple[Served, Served]]:
    """Shared by the parity cases (which change nothing on the servers)."""
    with _serve(catalogue, early=True) as early, _serve(catalogue, early=False) as framework:
        yield early, framework


@pytest.fixture
def both(catalogue: Catalogue) -> Iterator[tuple[Served, Served]]:
    """A pair of its own, for a test that counts or changes what the servers hold."""
    with _serve(catalogue, early=True) as early, _serve(catalogue, early=False) as framework:
        yield early, framework


def head(method: str, target: str, headers: dict[str, str] | None = None, version: str = "1.1") -> bytes:
    lines = [f"{method} {target} HTTP/{version}", "Host: modelgate", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@dataclass(frozen=True)
class Case:
    name: str
    sent: bytes
    methods: tuple[str, ...]  #: the method of each request sent, in order (a HEAD answer has no body)
    asgi: tuple[str, ...] = ()  #: paths that still reach ASGI on the server writing early answers
    closes: bool = False


def cases(catalogue: Catalogue) -> list[Case]:
    gzip = {"Accept-Encoding": "gzip"}
    gzip_tag = catalogue.etag[:-1] + '-gzip"'
    return [
        Case("plain", head("GET", "/models"), ("GET",)),
        Case("api path", head("GET", "/api/models"), ("GET",)),
        Case("gzip", head("GET", "/models", gzip), ("GET",)),
        Case("br only", head("GET", "/models", {"Accept-Encoding": "br"}), ("GET",)),
        Case("gzip refused", head("GET", "/models", {"Accept-Encoding": "gzip;q=0, deflate"}), ("GET",)),
        Case("etag hit", head("GET", "/models", {"If-None-Match": catalogue.etag}), ("GET",)),
        Case("etag list hit", head("GET", "/models", {"If-None-Match": f'"x", W/{catalogue.etag}'}), ("GET",)),
        Case("etag miss", head("GET", "/models", {"If-None-Match": '"stale"'}), ("GET",)),
        Case("gzip etag hit", head("GET", "/models", {**gzip, "If-None-Match": gzip_tag}), ("GET",)),
        Case("origin allowed", head("GET", "/models", {"Origin": ALLOWED}), ("GET",)),
        Case("origin foreign", head("GET", "/models", {"Origin": "https://evil.example"}), ("GET",)),
        Case("head", head("HEAD", "/models"), ("HEAD",)),
        Case("head gzip", head("HEAD", "/api/models", gzip), ("HEAD",)),
        Case("query string", head("GET", "/models?publisher=qwen&x=1"), ("GET",)),
        Case("absolute form", head("GET", "http://modelgate/models"), ("GET",)),
        Case("client request id", head("GET", "/models", {"X-Request-ID": "trace-42"}), ("GET",)),
        Case("insane request id", head("GET", "/models", {"X-Request-ID": "two words"}), ("GET",)),
        Case("http/1.0", head("GET", "/models", version="1.0"), ("GET",), closes=True),
        Case("http/1.0 keep-alive", head("GET", "/models", {"Connection": "keep-alive"}, "1.0"), ("GET",), closes=True),
        Case("connection close", head("GET", "/models", {"Connection": "close"}), ("GET",), closes=True),
        Case("pipelined", head("GET", "/models") + head("HEAD", "/api/models", gzip), ("GET", "HEAD")),
        Case(
            "pipelined behind the framework",
            head("GET", "/models") + head("GET", "/nope") + head("GET", "/api/models"),
            ("GET", "GET", "GET"),
            asgi=("/nope", "/api/models"),  # the last waits its turn behind /nope, in uvicorn's pipeline
        ),
        Case(
            "pipelined after close",
            head("GET", "/models", {"Connection": "close"}) + head("GET", "/api/models"),
            ("GET",),
            closes=True,
        ),
        Case(
            "pipelined after close, with a body",
            head("GET", "/models", {"Connection": "close"}) + raw_http.post("/v1/chat/completions", b"{}"),
            ("GET",),
            closes=True,
        ),
        Case("body", head("GET", "/models", {"Content-Length": "2"}) + b"{}", ("GET",), asgi=("/models",)),
        Case(
            "chunked body",
            head("GET", "/models", {"Transfer-Encoding": "chunked"}) + b"0\r\n\r\n",
            ("GET",),
            ("/models",),
        ),
        Case("percent-encoded", head("GET", "/%6Dodels"), ("GET",), asgi=("/models",)),
        Case("other method", head("POST", "/models", {"Content-Length": "0"}), ("POST",), asgi=("/models",)),
        Case("near miss", head("GET", "/models/"), ("GET",), asgi=("/models/",)),
    ]


Response = tuple[bytes, list[tuple[str, str]], bytes]


def read_responses(sock: socket.socket, methods: tuple[str, ...]) -> list[Response]:
    """Each response's status line, headers in order (names lowercased) and body, as sent."""
    sock.settimeout(10)
    data = b""
    responses: list[Response] = []
    for method in methods:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, f"closed before a response: {data!r}"
            data += chunk
        raw_head, _, data = data.partition(b"\r\n\r\n")
        status, *lines = raw_head.decode("latin-1").split("\r\n")
        headers = [(name.strip().lower(), value.strip()) for name, value in (line.split(":", 1) for line in lines)]
        code = int(status.split()[1])
        length = 0 if method == "HEAD" or code == 304 else int(dict(headers)["content-length"])
        while len(data) < length:
            chunk = sock.recv(65536)
            assert chunk, "closed in a body"
            data += chunk
        responses.append((status.encode(), headers, data[:length]))
        data = data[length:]
    assert data == b"", f"more than {len(methods)} responses: {data!r}"
    return responses


def comparable(response: Response) -> Response:
    """Without ``date``, and a generated request id as a placeholder (each server draws its own)."""
    status, headers, body = response
    kept = []
    for name, value in headers:
        if name == "date":
            continue
        if name == "x-request-id" and _GENERATED_ID.match(value):
            value = "<generated>"
        kept.append((name, value))
    return status, kept, body


def exchange(url: str, case: Case) -> tuple[list[Response], bool]:
    """The responses to ``case`` and whether the server then closed the connection."""
    with raw_http.connect(url) as sock:
        sock.sendall(case.sent)
        responses = read_responses(sock, case.methods)
        closed = raw_http.read_until_closed(sock, timeout=5 if case.closes else 0.3) is not None
    return responses, closed


@contextmanager
def server_warnings() -> Iterator[list[logging.LogRecord]]:
    """What uvicorn logs at warning or above meanwhile (a parser callback failing is answered 400 and logged)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("uvicorn.error")
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


@pytest.mark.parametrize("case", cases(load_catalogue()), ids=lambda case: case.name)
def test_early_answers_are_the_asgi_answers(pair: tuple[Served, Served], case: Case) -> None:
    early, framework = pair
    early.seen.paths.clear()
    framework.seen.paths.clear()
    with server_warnings() as warnings:
        answers = [exchange(server.url, case) for server in pair]
    assert [record.getMessage() for record in warnings] == [], case.name
    (early_responses, early_closed), (framework_responses, framework_closed) = answers
    assert [comparable(r) for r in early_responses] == [comparable(r) for r in framework_responses], case.name
    assert early_closed == framework_closed == case.closes, case.name
    assert early.seen.paths == list(case.asgi), case.name
    assert len(framework.seen.paths) == len(case.methods), case.name
    if case.name == "client request id":
        assert dict(early_responses[0][1])["x-request-id"] == "trace-42"


def test_counted_and_logged_alike(both: tuple[Served, Served], catalogue: Catalogue) -> None:
    for case in cases(catalogue):
        for server in both:
            exchange(server.url, case)
    early, framework = both
    assert early.seen.paths != framework.seen.paths  # the early answers did skip ASGI

    def line_shape(fields: dict[str, Any]) -> tuple[Any, ...]:
        request_id = "<generated>" if _GENERATED_ID.match(fields["request_id"]) else fields["request_id"]
        return fields["method"], fields["route"], fields["status"], fields["level"], request_id, sorted(fields)

    assert [line_shape(f) for f in early.lines.fields] == [line_shape(f) for f in framework.lines.fields]
    assert len(early.lines.fields) > len(cases(catalogue))

    def counts(served: Served) -> list[str]:
        """The request counters and the duration histograms' counts, by route, method and status."""
        text = httpx.get(served.url + "/metrics").text
        names = ("modelgate_http_requests_total{", "modelgate_http_request_duration_seconds_count{")
        return sorted(line for line in text.splitlines() if line.startswith(names))

    early_counts, framework_counts = counts(early), counts(framework)
    assert early_counts == framework_counts
    assert any('route="/models",status="304"' in line for line in early_counts)


def test_a_failing_answer_is_left_to_the_asgi_path(both: tuple[Served, Served], catalogue: Catalogue) -> None:
    """An answer that raises is not written early: the ASGI path answers the 500 and logs it, on both servers."""
    for server in both:
        server.app.state.gateway.swap_catalogue(broken_copy(catalogue))
    answers = [exchange(server.url, Case("broken", head("GET", "/models"), ("GET",))) for server in both]
    (early_responses, _), (framework_responses, _) = answers
    assert [comparable(r) for r in early_responses] == [comparable(r) for r in framework_responses]
    assert early_responses[0][0] == b"HTTP/1.1 500 Internal Server Error"
    early, framework = both
    assert early.seen.paths == framework.seen.paths == ["/models"]
    assert [f["status"] for f in early.lines.fields] == [f["status"] for f in framework.lines.fields] == [500]


def test_a_reload_reaches_the_early_answers(both: tuple[Served, Served], catalogue: Catalogue, tmp_path: Path) -> None:
    early, _ = both
    before, _ = exchange(early.url, Case("plain", head("GET", "/models"), ("GET",)))
    replacement = load_catalogue(write_catalogue(tmp_path / "c.toml", model_toml("acme", "swapped")))
    early.app.state.gateway.swap_catalogue(replacement)
    after, _ = exchange(early.url, Case("plain", head("GET", "/models"), ("GET",)))
    assert before[0][2] == catalogue.body
    assert after[0][2] == replacement.body
    assert dict(after[0][1])["etag"] == replacement.etag
    assert early.seen.paths == []


def test_a_client_not_reading_gets_the_asgi_path(both: tuple[Served, Served]) -> None:
    """Early answers stop once the connection's write buffer is full (uvicorn's send would wait there): a client
    pipelining thousands of requests without reading them sends the rest through uvicorn's cycle, whose
    pipeline stops reading from it; read at last, every response arrives, in order."""
    early, _ = both
    count = 3000  # ~25 MB of responses: more than the kernel's socket buffers hold
    with raw_http.connect(early.url, timeout=30) as sock:
        sender = threading.Thread(target=sock.sendall, args=(head("GET", "/models") * count,), daemon=True)
        sender.start()
        deadline = time.monotonic() + 20
        while not early.seen.paths and time.monotonic() < deadline:
            time.sleep(0.01)
        assert early.seen.paths, "the early answers went on writing to a client that does not read"
        responses = read_responses(sock, ("GET",) * count)
        sender.join(timeout=10)
    assert {status for status, _, _ in responses} == {b"HTTP/1.1 200 OK"}
    assert 0 < len(early.seen.paths) < count


def test_the_setting() -> None:
    assert Settings().protocol_answers is True
    assert Settings.from_env({}).protocol_answers is True
    for off in ("0", "false", "no", "off"):
        assert Settings.from_env({"MODELGATE_PROTOCOL_ANSWERS": off}).protocol_answers is False
