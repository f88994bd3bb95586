"""The push lane (``push_lane.py``) on a real server and a real upstream: the middle of a trickled reply is carried
from the upstream's read to the client's socket without waking the response's task, and what the client gets, what
the gateway counts and how the reply ends are what the pulled path gives.

The upstream (``tests/fakes/hostile.py``) trickles a Chat Completions stream one event per read, so that every
token is a network read of its own, the case the lane is for. The gateway runs in this process
(``serve_in_thread``), so a test can count the batches the lane pushed and turn the lane off to compare.
"""

from __future__ import annotations

import asyncio
import re
import time
import tomllib
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp
import httpx
import orjson
import pytest

from modelgate import push_lane, relay_response
from modelgate.app import create_app
from modelgate.catalogue import parse_catalogue
from modelgate.push_lane import LAG_CHECKS, LAG_LIMIT, LAG_PERIOD, PUSH_SUPPORTED, Lane, LoopLag
from modelgate.settings import Settings
from tests.catalogue_files import model_toml
from tests.fakes import Fakes, Reply
from tests.fakes.hostile import HostileUpstream, Received, response_head
from tests.servers import serve_in_thread

TOKENS = tuple(f"tök{i} " for i in range(40))
TRICKLE = 0.004
MODEL = "push/lane"
AI_PATH = f"/api/ai/{MODEL}/chat"


def sse(payload: object) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return sse({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [choice]})


USAGE = {"prompt_tokens": 5, "completion_tokens": len(TOKENS), "total_tokens": 5 + len(TOKENS)}
EVENTS = (
    chunk({"role": "assistant", "content": ""}),
    *(chunk({"content": token}) for token in TOKENS),
    chunk({}, "stop"),
    sse({"id": "c1", "object": "chat.completion.chunk", "choices": [], "usage": USAGE}),
    b"data: [DONE]\n\n",
)


#: A reply larger than every buffer between the upstream and a client (sockets, aiohttp's, uvicorn's).
BIG_TOKENS = 1000
BIG_TOKEN = "x" * (32 * 1024)
BIG = (
    chunk({"role": "assistant", "content": ""}),
    *(chunk({"content": f"{i:08d}{BIG_TOKEN}"}) for i in range(BIG_TOKENS)),
    chunk({}, "stop"),
    b"data: [DONE]\n\n",
)


def script(received: Received) -> AsyncIterator[bytes]:
    """The whole reply, an event per read; with ``cut`` in the prompt, closed after the tokens (no finish); with
    ``big``, ``BIG`` as fast as it is read."""

    async def pieces() -> AsyncIterator[bytes]:
        cut = b"cut" in received.body
        if b"burst" not in received.body:
            yield response_head(200, {"Content-Type": "text/event-stream"})
        if b"burst" in received.body:  # chunked: a few chunks a read each, then the rest in one read
            yield response_head(200, {"Content-Type": "text/event-stream", "Transfer-Encoding": "chunked"})
            for event in EVENTS[:5]:
                yield b"%x\r\n%b\r\n" % (len(event), event)
                await asyncio.sleep(TRICKLE)
            yield b"".join(b"%x\r\n%b\r\n" % (len(event), event) for event in EVENTS[5 : 1 + len(TOKENS)])
            await asyncio.sleep(TRICKLE)
            yield b"".join(b"%x\r\n%b\r\n" % (len(event), event) for event in EVENTS[1 + len(TOKENS) :])
            yield b"0\r\n\r\n"
            return
        if b"big" in received.body:  # pushed while trickled, then more than the client reads
            for event in EVENTS[: 1 + len(TOKENS)]:
                yield event
                await asyncio.sleep(TRICKLE)
            for event in BIG[1:]:
                yield event
            return
        for event in EVENTS[: 1 + len(TOKENS)] if cut else EVENTS:
            yield event
            await asyncio.sleep(TRICKLE)

    return pieces()


@contextmanager
def gateway(upstream: str, env: dict[str, str]) -> Iterator[str]:
    resilience = "max_retries = 0\nfirst_token_timeout = 5\nidle_timeout = 5\n"
    text = f'[providers.up]\nkind = "openai"\nbase_url = "{upstream}"\n{resilience}\n'
    text += model_toml("push", "lane", provider="up", upstream="m")
    catalogue = parse_catalogue(tomllib.loads(text), source="push-lane.toml")
    with serve_in_thread(create_app(Settings.from_env(env, probe_interval=0), catalogue)) as url:
        yield url


@pytest.fixture(scope="module")
def service(hostile: HostileUpstream) -> Iterator[str]:
    hostile.reset(script)
    with gateway(hostile.url, {}) as url:
        yield url
    hostile.reset()


@pytest.fixture
def pushed(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of the batches the lane pushed during the test (a busy test machine's loop never counts as
    overloaded here: ``LoopLag`` has tests of its own)."""
    monkeypatch.setattr(push_lane, "LAG_LIMIT", 3600.0)
    sizes: list[int] = []
    push = Lane.push

    def counted(lane: Lane, events: Any) -> None:
        sizes.append(len(events))
        push(lane, events)

    monkeypatch.setattr(Lane, "push", counted)
    return sizes


def body(url: str, path: str, payload: dict[str, Any]) -> bytes:
    with httpx.Client(base_url=url, timeout=10) as client:
        response = client.post(path, json=payload)
        assert response.status_code == 200, response.text
        return response.content


def ask(prompt: str = "hello") -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": prompt}]}


def v1(prompt: str = "hello") -> dict[str, Any]:
    return {"model": MODEL, "stream": True, "stream_options": {"include_usage": True}, **ask(prompt)}


def steady(raw: bytes) -> bytes:
    """A body without what differs from one reply to the next (ids, timestamps)."""
    raw = re.sub(rb'"(messageId|id|item_id)":"[^"]*"', b'"id":"*"', raw)
    return re.sub(rb'"(created|created_at|completed_at)":\d+', b'"created":0', raw)


def test_the_lane_is_supported_by_the_installed_aiohttp() -> None:
    # Without it every reply is pulled (correct, but the lane's gain is gone): an aiohttp upgrade must say so here.
    assert PUSH_SUPPORTED


@pytest.mark.parametrize(
    ("version", "pushed"), [("3.13.2", False), ("3.10.0", False), ("3.14.5", True), ("4.0.0", True)]
)
def test_an_aiohttp_the_lane_was_not_checked_against_is_pulled(
    monkeypatch: pytest.MonkeyPatch, version: str, pushed: bool
) -> None:
    monkeypatch.setattr(aiohttp, "__version__", version)
    assert push_lane._push_supported() is pushed


@pytest.mark.parametrize(
    ("path", "payload"),
    [
        (AI_PATH, ask()),
        (AI_PATH + "?protocol=ui", ask()),
        (AI_PATH + "?protocol=text", ask()),
        ("/v1/chat/completions", v1()),
        ("/v1/responses", {"model": MODEL, "stream": True, "input": "hello"}),
    ],
    ids=["ai-data", "ai-ui", "ai-text", "v1", "responses"],
)
def test_a_trickled_reply_is_pushed_and_reads_as_the_pulled_one(
    service: str, pushed: list[int], monkeypatch: pytest.MonkeyPatch, path: str, payload: dict[str, Any]
) -> None:
    with_lane = body(service, path, payload)
    # Every token after the first read was pushed (a slow moment may put two in one read, or one in the pull path).
    assert sum(pushed) >= len(TOKENS) - 5
    monkeypatch.setattr(relay_response, "PUSH_SUPPORTED", False)
    count = len(pushed)
    without = body(service, path, payload)
    assert len(pushed) == count  # the lane was off
    assert steady(with_lane) == steady(without)
    text = "".join(TOKENS)
    if path.endswith("=text"):
        assert with_lane.decode() == text
    elif path.endswith("=ui"):
        chunks = [orjson.loads(line[6:]) for line in with_lane.splitlines() if line.startswith(b"data: {")]
        assert "".join(c["delta"] for c in chunks if c["type"] == "text-delta") == text
        assert [c["type"] for c in chunks].count("text-start") == 1
        assert [c["type"] for c in chunks][-3:] == ["text-end", "finish-step", "finish"]
    elif path == "/v1/responses":
        events = [orjson.loads(line[6:]) for line in with_lane.splitlines() if line.startswith(b"data: {")]
        assert "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta") == text
        assert [e["sequence_number"] for e in events] == list(range(len(events)))  # pushed and pulled: one count
        assert events[-1]["type"] == "response.completed"
        assert events[-1]["response"]["output"][0]["content"][0]["text"] == text
    elif path == AI_PATH:
        parts = [orjson.loads(line[2:]) for line in with_lane.splitlines() if line.startswith(b"0:")]
        assert "".join(parts) == text
        assert with_lane.splitlines()[-1].startswith(b"d:")
    else:
        assert with_lane.endswith(b"data: [DONE]\n\n")
        chunks = [orjson.loads(line[6:]) for line in with_lane.splitlines() if line.startswith(b"data: {")]
        assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == text
        assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"


def test_the_chunks_of_one_network_read_are_pushed_as_one_batch(service: str, pushed: list[int]) -> None:
    """aiohttp hands a chunked body over one HTTP chunk at a time: a read under load brings dozens, and pushing each
    on its own made a write (a system call) per token where the pulled path wrote once per read (at 1,000 streams:
    262,242 writes in 5 s against the pulled path's 19,920)."""
    raw = body(service, AI_PATH, ask("burst"))
    assert "".join(orjson.loads(line[2:]) for line in raw.splitlines() if line.startswith(b"0:")) == "".join(TOKENS)
    assert raw.splitlines()[-1].startswith(b"d:")
    assert max(pushed) >= len(TOKENS) - 10, pushed  # the burst's tokens went out together


def test_a_cloudflare_stream_is_pushed(fakes: Fakes, pushed: list[int]) -> None:
    """Workers AI's stream comes through a generator of the provider's own (``Cloudflare.stream``, which asks a model
    that does not stream again, whole): its middle is pushed all the same."""
    fakes.cloudflare.script(Reply(tokens=TOKENS, delay=TRICKLE))
    text = model_toml("cf", "llama", provider="cloudflare", upstream="@cf/meta/llama-3.1-8b-instruct")
    catalogue = parse_catalogue(tomllib.loads(text), source="push-lane-cloudflare.toml")
    settings = Settings(**fakes.settings_overrides(), probe_interval=0)  # type: ignore[arg-type]
    with serve_in_thread(create_app(settings, catalogue)) as url:
        raw = body(url, "/api/ai/cf/llama/chat", ask())
    assert "".join(orjson.loads(line[2:]) for line in raw.splitlines() if line.startswith(b"0:")) == "".join(TOKENS)
    assert raw.splitlines()[-1].startswith(b"d:")
    assert sum(pushed) >= len(TOKENS) - 5


def test_a_reply_cut_after_pushed_tokens_ends_with_an_error_and_is_counted(service: str, pushed: list[int]) -> None:
    before = completion_tokens(service)
    raw = body(service, AI_PATH, ask("cut"))
    assert sum(pushed) >= len(TOKENS) - 5
    last = raw.splitlines()[-1]
    assert last.startswith(b"3:"), last  # the data stream's error part, never a finish
    assert b"d:" not in raw
    # The pushed batches count as relayed events: the estimate charges one token for each.
    assert completion_tokens(service) - before == len(TOKENS)


def test_a_client_that_leaves_mid_reply_closes_the_upstream(service: str, hostile: HostileUpstream) -> None:
    hostile.reset(script)
    with httpx.Client(base_url=service, timeout=10) as client, client.stream("POST", AI_PATH, json=ask()) as response:
        seen = b""
        for piece in response.iter_raw():
            seen += piece
            if seen.count(b"0:") >= 5:
                break
    deadline = time.monotonic() + 5
    while not (hostile.outcomes and hostile.outcomes[0].done.is_set()) and time.monotonic() < deadline:
        time.sleep(0.02)
    outcome = hostile.outcomes[0]
    assert outcome.done.is_set()
    assert outcome.cut_by_client  # the gateway closed the upstream before the reply was over
    assert outcome.written < len(b"".join(EVENTS))


def test_a_client_that_stops_reading_stops_the_upstream_and_then_gets_every_token(
    service: str, hostile: HostileUpstream, pushed: list[int]
) -> None:
    hostile.reset(script)
    total = len(b"".join(BIG))  # about what the upstream writes
    with (
        httpx.Client(base_url=service, timeout=30) as client,
        client.stream("POST", AI_PATH, json=ask("big")) as response,
    ):
        pieces = response.iter_raw()
        received = b""
        while received.count(b"0:") < len(TOKENS):  # the trickled part
            received += next(pieces)
        time.sleep(1.5)  # not reading: the gateway must stop reading the upstream (its buffers are bounded)
        written = hostile.outcomes[0].written
        assert written < total * 3 // 4, (written, total)
        for piece in pieces:
            received += piece
    assert sum(pushed) >= len(TOKENS) - 5  # the lane carried the trickle, then handed the reply back
    texts = [orjson.loads(line[2:]) for line in received.splitlines() if line.startswith(b"0:")]
    assert texts[: len(TOKENS)] == list(TOKENS)
    texts = texts[len(TOKENS) :]
    assert [text[:8] for text in texts] == [f"{i:08d}" for i in range(BIG_TOKENS)]
    assert all(text[8:] == BIG_TOKEN for text in texts)
    assert received.splitlines()[-1].startswith(b"d:")


def test_a_failure_of_the_lane_itself_ends_the_reply_with_an_error_in_its_protocol(
    service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in a pushed batch's work (here: the fifth push fails) runs inside aiohttp's ``data_received``; it must
    not pass for a broken upstream connection nor be lost: the reply ends with the route's internal-error part."""
    pushes: list[int] = []
    push = Lane.push

    def failing(lane: Lane, events: Any) -> None:
        pushes.append(len(events))
        if len(pushes) == 5:
            raise RuntimeError("a bug")
        push(lane, events)

    monkeypatch.setattr(Lane, "push", failing)
    raw = body(service, AI_PATH, ask())
    assert raw.splitlines()[-1] == b'3:"Internal Server Error"'
    assert b"d:" not in raw
    monkeypatch.setattr(Lane, "push", push)
    assert body(service, AI_PATH, ask()).splitlines()[-1].startswith(b"d:")  # and the next reply is whole


def test_the_lane_can_be_turned_off(hostile: HostileUpstream, pushed: list[int]) -> None:
    hostile.reset(script)
    with gateway(hostile.url, {"MODELGATE_PUSH_LANE": "0"}) as url:
        raw = body(url, AI_PATH, ask())
    assert pushed == []
    assert "".join(orjson.loads(line[2:]) for line in raw.splitlines() if line.startswith(b"0:")) == "".join(TOKENS)


def completion_tokens(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    found = re.search(r'^modelgate_completion_tokens_total\{model="push/lane",provider="up"\} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def test_an_overloaded_loop_pulls_and_a_relieved_one_pushes_again() -> None:
    """Under sustained overload the pulled path relays more cheaply (bench/README.md, "Fourth pass"): a loop late
    by more than ``LAG_LIMIT`` at ``LAG_CHECKS`` checks in a row counts as overloaded; one check on time ends it.
    Only while a reply may be pushed does the check run."""

    async def scenario() -> list[bool]:
        lag = LoopLag()
        seen: list[bool] = []
        lag.enter()
        for _ in range(LAG_CHECKS + 1):  # each check finds the loop blocked beyond the limit
            time.sleep(LAG_PERIOD + LAG_LIMIT * 2)  # noqa: ASYNC251 - blocking the loop is the point
            await asyncio.sleep(0)
            await asyncio.sleep(0)
        seen.append(lag.late)
        await asyncio.sleep(LAG_PERIOD * 3)  # idle: the next checks are on time
        seen.append(lag.late)
        lag.leave()
        await asyncio.sleep(LAG_PERIOD * 2)
        seen.append(lag._handle is None)  # no reply left: no timer
        return seen

    assert asyncio.run(scenario()) == [True, False, True]
