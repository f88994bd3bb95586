"""The CLI's calls to a server are bounded in bytes and in time, and never show a password.

Found from outside (a hostile server against ``models --url``, ``usage`` and ``keys``): a gzip bomb was inflated
whole (a 400 KB answer took ``modelgate usage`` to 1.6 GB); httpx's timeout is per read, so a server sending a
byte now and then held the CLI for ever; a password in ``--url`` was echoed in every error line; a report's list
or object was shown in a count's cell. The server here is ``tests/fakes/hostile.py``: real bytes on loopback.
"""

from __future__ import annotations

import asyncio
import json
import tracemalloc
from collections.abc import AsyncIterator
from typing import Any

import pytest
from typer.testing import CliRunner

from modelgate.cli import cli
from modelgate.client import MAX_DOCUMENT_BYTES, AsyncModelgateClient, ModelgateClient, ModelgateClientError
from tests.fakes.hostile import HostileUpstream, gzip_bomb, response_head
from tests.test_cli import one_line_failure

runner = CliRunner()
CALLS = [["models", "--url"], ["usage", "--url"], ["keys", "list", "--admin-key", "k", "--url"]]
JSON_HEAD = {"Content-Type": "application/json"}


def answer(body: bytes, head: dict[str, str] | None = None) -> Any:
    async def script(_: Any) -> AsyncIterator[bytes]:
        yield response_head(200, {**JSON_HEAD, **(head or {})}) + body

    return script


def bomb(_: Any) -> AsyncIterator[bytes]:
    async def pieces() -> AsyncIterator[bytes]:
        yield response_head(200, {**JSON_HEAD, "Content-Encoding": "gzip"})
        async for piece in gzip_bomb(256 * 1024 * 1024):
            yield piece

    return pieces()


def peak_bytes(call: Any) -> tuple[Any, int]:
    tracemalloc.start()
    try:
        result = call()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("args", CALLS)
def test_a_gzip_bomb_is_read_only_up_to_the_bound(hostile: HostileUpstream, args: list[str]) -> None:
    hostile.reset(bomb)
    result, peak = peak_bytes(lambda: runner.invoke(cli, [*args, hostile.url]))
    assert one_line_failure(result) == f"{hostile.url}: the answer is longer than {MAX_DOCUMENT_BYTES} bytes"
    assert peak < 4 * MAX_DOCUMENT_BYTES, peak  # the whole bomb is 8 of them


def test_the_clients_get_models_reads_a_gzip_bomb_only_up_to_the_bound(hostile: HostileUpstream) -> None:
    hostile.reset(bomb)
    with ModelgateClient(hostile.url) as client, pytest.raises(ModelgateClientError, match="longer than"):
        peak_bytes(client.get_models)

    async def read() -> None:
        async with AsyncModelgateClient(hostile.url) as client:
            await client.get_models()

    with pytest.raises(ModelgateClientError, match="longer than"):
        peak_bytes(lambda: asyncio.run(read()))


def drip(head: bytes) -> Any:
    """``head``, then a byte every 0.2 s for a minute: every read is well inside httpx's per-read timeout."""

    async def script(_: Any) -> AsyncIterator[bytes]:
        yield head
        for _ in range(300):
            await asyncio.sleep(0.2)
            yield b" "

    return script


@pytest.mark.parametrize("args", CALLS)
@pytest.mark.parametrize(
    "head",
    [response_head(200, JSON_HEAD) + b"{", b"HTTP/1.1 200 OK\r\nX-Drip: "],
    ids=["body", "headers"],
)
def test_a_server_dripping_bytes_cannot_hold_the_cli(
    hostile: HostileUpstream, monkeypatch: pytest.MonkeyPatch, args: list[str], head: bytes
) -> None:
    hostile.reset(drip(head))
    monkeypatch.setenv("MODELGATE_CLI_TIMEOUT", "1")
    message = one_line_failure(runner.invoke(cli, [*args, hostile.url]))
    assert message == f"{hostile.url}: no whole answer within 1 s (MODELGATE_CLI_TIMEOUT)"


def test_a_cli_timeout_that_is_no_number_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELGATE_CLI_TIMEOUT", "0")
    message = one_line_failure(runner.invoke(cli, ["usage", "--url", "http://127.0.0.1:9"]))
    assert message == "MODELGATE_CLI_TIMEOUT: expected a number of seconds >= 0.01, got '0'"


@pytest.mark.parametrize(
    "url", ["http://admin:s3cr3t-pw@127.0.0.1:9", "http://admin:s3cr3t-pw@[::1", "http://:s3cr3t-pw@127.0.0.1:9/x"]
)
@pytest.mark.parametrize("args", [*CALLS, ["chat", "acme/tiny", "hi", "--url"]])
def test_a_password_in_the_url_is_never_shown(url: str, args: list[str]) -> None:
    message = one_line_failure(runner.invoke(cli, [*args, url]))
    assert "s3cr3t-pw" not in message and ":***@" in message, message


def test_a_password_in_the_url_is_not_in_a_table_title(hostile: HostileUpstream) -> None:
    report = {"groups": [], "totals": {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0}}
    report["totals"] |= {"reasoning_tokens": 0, "cost": None}
    hostile.reset(answer(json.dumps(report).encode()))
    url = hostile.url.replace("//", "//admin:s3cr3t-pw@")
    result = runner.invoke(cli, ["usage", "--url", url])
    assert result.exit_code == 0, result.output
    assert "s3cr3t-pw" not in result.stdout and "admin:***@" in result.stdout


def usage_report(**group: Any) -> dict[str, Any]:
    counts = {"requests": 1, "prompt_tokens": 10, "cached_tokens": 0, "completion_tokens": 5, "reasoning_tokens": 0}
    entry = {"key_id": "0123456789ab", "model": "acme/tiny", "provider": "ollama", **counts, "cost": 0.5}
    return {"groups": [{**entry, **group}], "totals": {**counts, "cost": 0.5}}


@pytest.mark.parametrize(
    "group",
    [
        {"requests": [1, 2]},
        {"prompt_tokens": {"a": 1}},
        {"completion_tokens": "12"},
        {"reasoning_tokens": True},
        {"cached_tokens": -1},
        {"cost": "0.1"},
        {"model": ["acme/tiny"]},
        {"key_id": {"id": 1}},
    ],
)
def test_a_usage_report_value_of_another_type_is_one_line(hostile: HostileUpstream, group: dict[str, Any]) -> None:
    """Found from outside: a server's list or object went into the table as a count, a cost or a name."""
    hostile.reset(answer(json.dumps(usage_report(**group)).encode()))
    message = one_line_failure(runner.invoke(cli, ["usage", "--url", hostile.url]))
    assert message == f"{hostile.url}: the answer is not a GET /api/usage report"


@pytest.mark.parametrize(("cost", "shown"), [(3e-9, "3.00e-09"), (0, "0.00000000"), (0.00012, "0.00012000")])
def test_a_cost_too_small_for_eight_decimals_is_not_shown_as_zero(
    hostile: HostileUpstream, cost: float, shown: str
) -> None:
    hostile.reset(answer(json.dumps(usage_report(cost=cost)).encode()))
    result = runner.invoke(cli, ["usage", "--url", hostile.url])
    assert result.exit_code == 0, result.output
    row = next(line for line in result.stdout.splitlines() if "0123456789ab" in line)
    assert row.rstrip(" │").endswith(f" {shown}"), row


#: Terminal controls a server (or an upstream, through the gateway's error texts) may put in a text: OSC 52 (write
#: the clipboard), erase the line, a C1 CSI. ``cell`` keeps them out of tables; they went to the terminal elsewhere.
ESCAPES = "\x1b]52;c;ZWNobyBwd25lZA==\x07\x1b[2K\x9b31m"


def _no_controls(text: str) -> bool:
    return not any(char in text for char in "\x1b\x07\x9b")


@pytest.mark.parametrize("args", CALLS)
def test_a_servers_error_message_never_sends_terminal_controls(hostile: HostileUpstream, args: list[str]) -> None:
    """Found from outside: the error line quoted the server's message as it came, escape sequences and all."""

    async def refuse(_: Any) -> AsyncIterator[bytes]:
        body = {"statusCode": 500, "statusMessage": f"down{ESCAPES}now"}
        yield response_head(500, JSON_HEAD) + json.dumps(body).encode()

    hostile.reset(refuse)
    message = one_line_failure(runner.invoke(cli, [*args, hostile.url]))
    assert "down" in message and "now" in message and _no_controls(message), repr(message)


def test_chat_never_sends_an_upstreams_terminal_controls(hostile: HostileUpstream, hostile_openai_service: str) -> None:
    """Found from outside: ``modelgate chat`` wrote the reply, and the error a reply ended with, as they came: an
    upstream's (or a prompt-injected model's) escape sequences drove the terminal."""

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return b"data: " + json.dumps({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}).encode()

    async def reply(_: Any) -> AsyncIterator[bytes]:
        yield response_head(200, {"Content-Type": "text/event-stream"})
        yield chunk({"content": f"one{ESCAPES}\ttwo\n"}) + b"\n\n"
        yield b'data: {"error": {"message": "broke' + ESCAPES.encode("unicode_escape") + b' here"}}\n\n'

    hostile.reset(reply)
    result = runner.invoke(cli, ["chat", "h/m", "Hi", "--url", hostile_openai_service])
    assert result.exit_code == 1, result.output
    assert "one" in result.stdout and "\ttwo\n" in result.stdout and _no_controls(result.stdout), repr(result.stdout)
    assert "broke" in result.stderr and _no_controls(result.stderr), repr(result.stderr)
