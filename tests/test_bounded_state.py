"""State a hostile upstream could grow without bound inside the service, driven from outside through a real server.

Each test streams, from the hostile upstream (``tests/fakes/hostile.py``), what makes one piece of per-reply state
grow, and checks the bound from the client's side: what it receives, or the documented error once a limit is
passed. Never a timing or a memory figure.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from modelgate import push_lane, relay_response
from modelgate.encoders.responses import MAX_HELD_OUTPUT
from modelgate.providers.chat_completions import MAX_TOOL_CALLS
from modelgate.push_lane import Lane
from modelgate.reasoning import MAX_HELD
from tests.fakes.hostile import HostileUpstream, Received, response_head

SSE = {"Content-Type": "text/event-stream"}


def chunk(delta: dict[str, object], finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return b"data: " + orjson.dumps({"choices": [choice]}) + b"\n\n"


def test_whitespace_between_refusal_deltas_reaches_the_client_instead_of_piling_up(
    hostile: HostileUpstream, hostile_openai_service: str
) -> None:
    """Content that is only whitespace is held back while a ``<think>`` may follow it (``reasoning.py``); a
    refusal delta beside it in every chunk keeps the stream's byte limit (counted only while no event comes) from
    ever seeing it, so it piled up for the whole reply. The upstream here waits, after a megabyte of it, until
    the client has received all but ``MAX_HELD`` characters of it."""
    seen_enough = threading.Event()
    waited: list[bool] = []
    total = 1000 * 1000

    async def script(_: Received) -> AsyncIterator[bytes]:
        yield response_head(200, SSE)
        for _ in range(total // 1000):
            yield chunk({"refusal": ".", "content": " " * 999 + "\n"})
        waited.append(await asyncio.to_thread(seen_enough.wait, 20))
        yield chunk({"content": "end"}, "stop") + b"data: [DONE]\n\n"

    hostile.reset(script)
    body = {"model": "h/m", "messages": [{"role": "user", "content": "Hi"}], "stream": True}
    received = 0
    with httpx.stream("POST", hostile_openai_service + "/v1/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            for choice in orjson.loads(line[6:])["choices"]:
                received += len(choice["delta"].get("content") or "")
            if received >= total - MAX_HELD:
                seen_enough.set()
    assert waited == [True], "the client did not get the whitespace before the upstream gave up waiting"
    assert received == total + len("end")


def test_a_reply_numbering_tool_calls_without_end_is_cut_at_the_limit(
    hostile: HostileUpstream, hostile_openai_service: str
) -> None:
    """Every tool call is remembered until the reply ends (the parser's indexes, the Responses item of each, a
    collected reply's calls), and a chunk naming a new one is a few dozen bytes, each an event: an upstream numbering
    calls without end grew that with the stream. Past ``MAX_TOOL_CALLS`` the stream ends with an error chunk."""
    calls = MAX_TOOL_CALLS + 100

    async def script(_: Received) -> AsyncIterator[bytes]:
        yield response_head(200, SSE)
        for index in range(calls):
            call = {"index": index, "id": f"c{index}", "function": {"name": "f", "arguments": "{}"}}
            yield chunk({"tool_calls": [call]})
        yield chunk({}, "tool_calls") + b"data: [DONE]\n\n"

    hostile.reset(script)
    body = {"model": "h/m", "messages": [{"role": "user", "content": "Hi"}], "stream": True}
    response = httpx.post(hostile_openai_service + "/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 200
    payloads = [orjson.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: {")]
    relayed = {
        call["index"] for p in payloads for c in p.get("choices", ()) for call in c["delta"].get("tool_calls", ())
    }
    assert relayed == set(range(MAX_TOOL_CALLS))
    [error] = [p["error"] for p in payloads if "error" in p]
    assert f"more than {MAX_TOOL_CALLS} tool calls" in error["message"]


def test_a_tool_call_index_past_any_reply_is_the_upstreams_protocol_error(
    hostile: HostileUpstream, hostile_openai_service: str
) -> None:
    """An index no encoder can write (past 64 bits: ``orjson`` refuses it) passed through to the client's chunk
    encoder, which failed there as our own error; it is the upstream's broken reply, said as such."""

    async def script(_: Received) -> AsyncIterator[bytes]:
        yield response_head(200, SSE)
        call = {"index": 10**30, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
        choice = {"index": 0, "delta": {"tool_calls": [call]}, "finish_reason": "tool_calls"}
        # json, not orjson: the bytes a server may send, which orjson itself would refuse to write.
        yield b"data: " + json.dumps({"choices": [choice]}).encode() + b"\n\ndata: [DONE]\n\n"

    hostile.reset(script)
    body = {"model": "h/m", "messages": [{"role": "user", "content": "Hi"}], "stream": True}
    with httpx.stream("POST", hostile_openai_service + "/v1/chat/completions", json=body, timeout=60) as response:
        text = response.read().decode()
    assert "a tool call index out of range" in text, text
    assert "Internal" not in text, text


@pytest.mark.parametrize("lane", ["pushed", "pulled"])
def test_a_streamed_response_without_end_fails_at_the_held_output_limit(
    hostile: HostileUpstream,
    hostile_openai_service: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    lane: str,
) -> None:
    """A streamed ``/v1/responses`` reply holds its whole output for ``response.completed``: an upstream streaming
    text without end grew that with the stream. Past ``MAX_HELD_OUTPUT`` characters the client has every delta up
    to the limit, then ``error`` and ``response.failed`` saying so, and nothing after; pushed or pulled alike.
    The service records it as the stream error it is (it was counted as a client gone, ``cancelled``)."""
    caplog.set_level(logging.INFO, logger="modelgate.access")
    piece = 50_000
    pieces = 2 * MAX_HELD_OUTPUT // piece  # twice the limit, then a finish the client must never see

    async def script(_: Received) -> AsyncIterator[bytes]:
        yield response_head(200, SSE)
        yield chunk({"role": "assistant", "content": ""})
        for _ in range(pieces):
            yield chunk({"content": "x" * piece})
            await asyncio.sleep(0.002)  # reads of their own, so the lane pushes them
        yield chunk({}, "stop") + b"data: [DONE]\n\n"

    ended_in_push: list[bool] = []
    if lane == "pushed":
        monkeypatch.setattr(push_lane, "LAG_LIMIT", 3600.0)  # a busy test machine's loop never counts as late
        push = Lane.push

        def counted(self: Lane, events: Any) -> None:
            push(self, events)
            ended_in_push.append(self.ended)

        monkeypatch.setattr(Lane, "push", counted)
    else:
        monkeypatch.setattr(relay_response, "PUSH_SUPPORTED", False)
    hostile.reset(script)
    body = {"model": "h/m", "input": "Hi", "stream": True}
    events: list[dict[str, Any]] = []
    with httpx.stream("POST", hostile_openai_service + "/v1/responses", json=body, timeout=60) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(orjson.loads(line[6:]))
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert len(text) == MAX_HELD_OUTPUT // piece * piece
    assert [e["type"] for e in events][-2:] == ["error", "response.failed"]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    failed = events[-1]["response"]
    assert failed["status"] == "failed"
    assert f"passed {MAX_HELD_OUTPUT} characters" in failed["error"]["message"]
    assert events[-2]["message"] == failed["error"]["message"]
    assert failed["output"][0]["content"][0]["text"] == text  # what was delivered, and no more
    metrics = httpx.get(hostile_openai_service + "/metrics").text
    assert 'modelgate_upstream_requests_total{model="h/m",outcome="stream_error",provider="local"} 1.0' in metrics
    assert 'outcome="cancelled"' not in metrics
    access = [
        r.structured  # type: ignore[attr-defined]
        for r in caplog.records
        if r.name == "modelgate.access" and r.structured["route"] == "/v1/responses"  # type: ignore[attr-defined]
    ]
    assert [(line["stream"], line["error"]) for line in access] == [("stream_error", failed["error"]["message"])]
    if lane == "pushed":
        assert True in ended_in_push  # the limit was passed in a pushed batch, and the pulled path ended the reply
    else:
        assert not ended_in_push
