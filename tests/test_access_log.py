"""The access log's direct sink (``JsonLinesHandler``), as ``modelgate serve`` runs it, and its pieces.

``test_metrics_logs.py`` checks the lines through ``logging`` (how tests and embedding apps capture
them); here the same lines go straight to the handler's batched writer: same fields, same levels,
credentials redacted, nothing lost at shutdown, order kept.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI

from modelgate.access_log import ACCESS_LOGGER, HIGH_WATER, AccessLog, JsonLinesHandler, LineWriter, _Clock
from modelgate.app import create_app
from modelgate.catalogue import Catalogue, load_catalogue
from modelgate.logs import REDACTED, JsonFormatter, RedactingFilter, logging_config
from modelgate.settings import Settings
from tests.catalogue_files import broken_copy
from tests.cli_process import serve_subprocess
from tests.fakes import Fakes, Fault, Reply
from tests.servers import serve_in_thread

API_KEY = "mg-direct-key-51c0a9d2e7"
CHAT = "/api/ai/ollama/rwkv-6-world/chat"
BODY = {"messages": [{"role": "user", "content": "Hi"}]}


def access_lines(text: str) -> list[dict[str, Any]]:
    lines = [orjson.loads(line) for line in text.splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("msg") == "request"]


class Direct:
    """An access logger ending in one ``JsonLinesHandler`` on a real file, as ``logging_config`` sets it up.

    A logger of its own, outside logging's registry: pytest attaches its capture handlers to every
    registered logger that does not propagate, which (rightly) sends the lines back through ``logging``.
    """

    def __init__(self, path: Path, handler: JsonLinesHandler, logger: logging.Logger) -> None:
        self.path = path
        self.handler = handler
        self.logger = logger
        #: Records that reached the handler through ``logging`` (the direct sink makes none).
        self.records: list[logging.LogRecord] = []
        handler.emit = self.records.append  # type: ignore[method-assign]

    def app(self, settings: Settings, catalogue: Catalogue | None = None) -> FastAPI:
        app = create_app(settings, catalogue)
        state = app.state.gateway
        state.access_log = AccessLog(state.redactor, self.logger)
        return app

    def lines(self) -> list[dict[str, Any]]:
        self.handler.flush()
        return access_lines(self.path.read_text(encoding="utf-8"))


@pytest.fixture
def direct(tmp_path: Path) -> Iterator[Direct]:
    logger = logging.Logger(ACCESS_LOGGER, logging.INFO)
    logger.propagate = False
    path = tmp_path / "stderr.log"
    with path.open("w", encoding="utf-8") as stream:
        handler = JsonLinesHandler(stream)
        handler.setFormatter(JsonFormatter())
        logger.addHandler(handler)
        try:
            yield Direct(path, handler, logger)
        finally:
            handler.close()


def test_lines_skip_logging_and_keep_their_shape(direct: Direct) -> None:
    with serve_in_thread(direct.app(Settings(probe_interval=0))) as url:
        given = httpx.get(url + "/models", headers={"X-Request-ID": "trace-7", "Accept-Encoding": "gzip"})
        generated = httpx.head(url + "/api/models")
        missing = httpx.get(url + "/nope")
        refused = httpx.post(url + "/models")
    assert (given.status_code, generated.status_code, missing.status_code, refused.status_code) == (200, 200, 404, 405)
    assert direct.records == []  # no LogRecord was made for them
    lines = direct.lines()  # flushed at shutdown already; flushing again is harmless
    assert [line["request_id"] for line in lines] == [
        "trace-7",
        generated.headers["x-request-id"],
        missing.headers["x-request-id"],
        refused.headers["x-request-id"],
    ]
    assert [(line["method"], line["route"], line["status"]) for line in lines] == [
        ("GET", "/models", 200),
        ("HEAD", "/api/models", 200),
        ("GET", "unmatched", 404),
        ("POST", "/models", 405),
    ]
    for line in lines:
        assert list(line) == ["ts", "level", "msg", "request_id", "method", "route", "status", "duration_ms"]
        assert line["level"] == "info" and line["msg"] == "request"
        assert datetime.strptime(line["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").year >= 2024
        assert isinstance(line["duration_ms"], float)


def test_a_chat_line_is_complete_and_redacted(direct: Direct, fakes: Fakes) -> None:
    settings = Settings(**fakes.settings_overrides(), api_keys=(API_KEY,), probe_interval=0)
    auth = {"Authorization": f"Bearer {API_KEY}"}
    # An upstream that echoes a credential in its error, and a client that sends one as its request id.
    fakes.ollama.script(Reply(fault=Fault.status(503, message=f"busy, key {API_KEY}")), Reply(tokens=["ok"]))
    with serve_in_thread(direct.app(settings)) as url:
        ok = httpx.post(url + CHAT, json=BODY, headers={**auth, "X-Request-ID": API_KEY})
    assert ok.status_code == 200
    text = direct.path.read_text(encoding="utf-8")
    assert API_KEY not in text
    (line,) = access_lines(text)
    assert line["request_id"] == ok.headers["x-request-id"] != API_KEY  # a key is never taken as the id
    assert line["model"] == "ollama/rwkv-6-world" and line["provider"] == "ollama" and line["stream"] == "ok"
    assert line["completion_tokens"] == 1 and len(line["key_id"]) == 12
    assert len(line["attempts"]) == 1 and REDACTED in line["attempts"][0]


def test_the_level_decides_as_before(direct: Direct) -> None:
    good = load_catalogue()
    app = direct.app(Settings(probe_interval=0), good)
    direct.logger.setLevel(logging.WARNING)
    with serve_in_thread(app) as url:
        assert httpx.get(url + "/models").status_code == 200
        app.state.gateway.swap_catalogue(broken_copy(good))
        failed = httpx.get(url + "/models")
    assert failed.status_code == 500
    lines = direct.lines()
    assert [(line["status"], line["level"]) for line in lines] == [(500, "warning")]
    assert lines[0]["request_id"] == failed.headers["x-request-id"]


def test_modelgate_serve_writes_every_line_by_shutdown(tmp_path: Path) -> None:
    with serve_subprocess([], tmp_path) as served:
        ids = [httpx.get(served.url + "/models").headers["x-request-id"] for _ in range(50)]
    lines = access_lines(served.log())
    assert [line["request_id"] for line in lines] == ids
    assert {line["route"] for line in lines} == {"/models"}


def test_logging_config_routes_access_lines_to_the_one_stderr_handler() -> None:
    config = logging_config("info")
    assert config["handlers"]["stderr"]["class"] == "modelgate.access_log.JsonLinesHandler"
    assert config["root"]["handlers"] == ["stderr"]
    assert config["loggers"][ACCESS_LOGGER] == {"handlers": ["stderr"], "propagate": False}


# --- the writer and the clock ------------------------------------------------------------------------


def test_writer_keeps_order_across_batches_and_immediate_records() -> None:
    fd, name = tempfile.mkstemp()
    os.close(fd)
    try:
        with open(name, "w", encoding="utf-8") as stream:
            writer = LineWriter(stream)
            expected = []
            for i in range(3 * HIGH_WATER // 20):  # several batches' worth
                line = b"line %06d\n" % i
                expected.append(line)
                writer.write(line)
                if i % 1000 == 0:
                    expected.append(b"now %06d\n" % i)
                    writer.write_now(b"now %06d\n" % i)
            writer.close()
            writer.write(b"after close\n")  # still written: the caller writes itself
        assert Path(name).read_bytes() == b"".join(expected) + b"after close\n"
    finally:
        os.unlink(name)


def test_writer_on_a_stream_without_a_descriptor() -> None:
    stream = io.StringIO()
    writer = LineWriter(stream)
    writer.write(b'{"a":"\xc3\xa9"}\n')
    writer.flush()
    assert stream.getvalue() == '{"a":"é"}\n'
    writer.close()


def test_direct_sink_is_not_used_when_another_handler_would_see_the_record() -> None:
    logger = logging.Logger("modelgate.access.test-direct", logging.INFO)  # unregistered: see Direct
    logger.propagate = False
    stream = io.StringIO()
    handler = JsonLinesHandler(stream)
    handler.addFilter(RedactingFilter())
    logger.addHandler(handler)
    log = AccessLog(RedactingFilter(), logger)
    try:
        log.record(None, request_id="a", client_id=False, method="GET", route="/models", status=200, duration=0.001)
        handler.addFilter(logging.Filter("other"))  # a filter we cannot apply ourselves: go through logging
        log.record(None, request_id="b", client_id=False, method="GET", route="/models", status=200, duration=0.001)
        handler.flush()
        assert [line["request_id"] for line in access_lines(stream.getvalue())] == ["a"]
    finally:
        logger.removeHandler(handler)
        handler.close()


def test_clock_matches_a_full_conversion() -> None:
    clock = _Clock()
    start = 1_764_201_558.0
    for step in range(0, 3_000_000, 777):
        now = start + step / 1_000_000
        full = datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        assert clock.iso(now) == full, now


def test_a_key_sent_as_the_request_id_is_never_logged(direct: Direct, fakes: Fakes, tmp_path: Path) -> None:
    """Found from outside: a key of the keys file (held as a digest, so no redactor pattern knows it) sent as
    ``X-Request-ID`` was logged as given. A key is never taken as the request's id."""
    from modelgate.catalogue import load_catalogue as load
    from tests.catalogue_files import model_toml, write_catalogue

    file_key = "mg-file-key-7a41c2d9e0"  # all lower case: not the shape of a generated key
    (tmp_path / "keys.toml").write_text(f'[[keys]]\nname = "team"\nkey = "{file_key}"\n', encoding="utf-8")
    path = write_catalogue(
        tmp_path / "catalogue.toml",
        model_toml("acme", "tiny", provider="ollama", upstream="tiny:1b"),
        header='[server]\nkeys_file = "keys.toml"\n',
    )
    settings = Settings(**fakes.settings_overrides(), probe_interval=0)  # type: ignore[arg-type]
    fakes.ollama.script(Reply(tokens=["ok"]))
    with serve_in_thread(direct.app(settings, load(path))) as url:
        headers = {"Authorization": f"Bearer {file_key}", "X-Request-ID": file_key}
        chat = httpx.post(url + "/api/ai/acme/tiny/chat", json=BODY, headers=headers)
        listing = httpx.get(url + "/models", headers={"X-Request-ID": file_key})  # answered by the server itself
        other = httpx.get(url + "/models", headers={"X-Request-ID": "my-trace-1"})
    assert chat.status_code == listing.status_code == 200
    assert chat.headers["x-request-id"] != file_key and listing.headers["x-request-id"] != file_key
    assert other.headers["x-request-id"] == "my-trace-1"  # any other sane id is kept
    text = direct.path.read_text(encoding="utf-8")
    assert file_key not in text
    assert [line["request_id"] for line in access_lines(text)][-1] == "my-trace-1"


class _Unwritable(AccessLog):
    def record(self, obs: Any, **fields: Any) -> None:
        raise TypeError("Integer exceeds 64-bit range")  # what a 2**70 token count did to orjson.dumps


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_line_that_cannot_be_written_never_breaks_the_reply(
    fakes: Fakes, caplog: pytest.LogCaptureFixture, stream: bool
) -> None:
    """Found from outside: the access line is written in the response's last ``send``; a value it could not
    serialize raised there and cut a finished reply (a whole one arrived as headers without its body)."""
    app = create_app(Settings(**fakes.settings_overrides(), probe_interval=0))  # type: ignore[arg-type]
    state = app.state.gateway
    state.access_log = _Unwritable(state.redactor)
    fakes.ollama.script(Reply(tokens=["fine"]))
    body = {"model": "ollama/rwkv-6-world", "messages": BODY["messages"], "stream": stream}
    with serve_in_thread(app) as url:
        answer = httpx.post(url + "/v1/chat/completions", json=body)
        assert httpx.get(url + "/health").status_code == 200  # and the service keeps serving
    assert answer.status_code == 200
    assert "fine" in answer.text and (answer.text.rstrip().endswith("[DONE]") if stream else answer.json()["usage"])
    assert "could not record POST /v1/chat/completions" in caplog.text
