"""What a reasoning model attaches to its reply for itself reaches the client on ``/v1/responses`` in a ``reasoning``
item's ``encrypted_content`` (``modelgate.reasoning_token``), and goes back upstream when the client replays the
items, end to end: the official ``openai`` client (or Codex's replay, as its serde types serialize the items) →
modelgate on loopback → the fakes, which refuse a tool loop that lost it as the real upstreams do
(``tests/test_reasoning_round_trip.py`` has the same on ``/v1/chat/completions``).
"""

from __future__ import annotations

import base64
import logging
from typing import Any

import httpx
import openai
import orjson
import pytest

from modelgate.reasoning_token import PREFIX
from modelgate.wire import MAX_OPAQUE_DEPTH, MAX_REASONING_DETAILS
from tests.fakes import Fakes, Reply
from tests.test_reasoning_round_trip import BLOCKS, CALL, round_trip_catalogue
from tests.test_reasoning_round_trip import client as client
from tests.test_reasoning_round_trip import service as service

_ = round_trip_catalogue  # the catalogue of the fixtures: t/gemini (openai kind), t/claude (OpenRouter), t/qwen (HF)

WEATHER_TOOL: Any = {
    "type": "function",
    "name": "get_weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
QUESTION: Any = {"role": "user", "content": "Weather in Zürich?"}
RESULT: Any = {"type": "function_call_output", "call_id": "call_w1", "output": "21 degrees"}
#: What Codex asks beside a reasoning effort (``codex-rs/core/src/client.rs``).
INCLUDE = ["reasoning.encrypted_content"]


def _first_turn(client: openai.OpenAI, model: str, *, stream: bool, include: list[str] | None) -> list[dict[str, Any]]:
    """The output items as the client keeps them: the response's ``output`` (whole), or each
    ``response.output_item.done`` in order (streamed: what Codex records, and what openai-python says to replay)."""
    fields: dict[str, Any] = {"include": include} if include is not None else {}
    if not stream:
        response = client.responses.create(model=model, input=[QUESTION], tools=[WEATHER_TOOL], store=False, **fields)
        return [item.model_dump(exclude_none=True) for item in response.output]
    events = list(
        client.responses.create(model=model, input=[QUESTION], tools=[WEATHER_TOOL], store=False, stream=True, **fields)
    )
    assert events[-1].type == "response.completed"
    done = [event.item.model_dump(exclude_none=True) for event in events if event.type == "response.output_item.done"]
    assert [item["id"] for item in done] == [item.id for item in events[-1].response.output]
    return done


def _codex_replay(item: dict[str, Any]) -> dict[str, Any]:
    """An item as Codex serializes it back (``ResponseItem`` in ``codex-rs/protocol/src/models.rs``): ids skipped, a
    function call's name/arguments/call_id only, a reasoning item's summary and encrypted_content (its content
    skipped when it holds reasoning_text)."""
    if item["type"] == "function_call":
        return {key: item[key] for key in ("type", "name", "arguments", "call_id")}
    if item["type"] == "reasoning":
        return {"type": "reasoning", "summary": item["summary"], "encrypted_content": item.get("encrypted_content")}
    return {key: item[key] for key in ("type", "role", "content")}


def _second_turn(client: openai.OpenAI, model: str, items: list[dict[str, Any]]) -> str:
    response = client.responses.create(model=model, input=[QUESTION, *items, RESULT], tools=[WEATHER_TOOL], store=False)
    return response.output_text


def _carrier(items: list[dict[str, Any]]) -> dict[str, Any]:
    """The reply's last item: the reasoning item holding modelgate's token."""
    last = items[-1]
    assert last["type"] == "reasoning" and last["summary"] == [] and last.get("content", []) == []
    assert last["encrypted_content"].startswith(PREFIX)
    return last


REPLAYS = {"as_received": lambda item: item, "codex": _codex_replay}


@pytest.mark.parametrize("replay", list(REPLAYS))
@pytest.mark.parametrize("include", [INCLUDE, None])
@pytest.mark.parametrize("stream", [False, True])
def test_a_gemini_thought_signature_goes_to_the_client_and_back(
    client: openai.OpenAI, fakes: Fakes, stream: bool, include: list[str] | None, replay: str
) -> None:
    fakes.openai.gemini = True
    fakes.openai.script(Reply(tokens=(), tool_calls=(CALL,), finish="tool_calls"), Reply(tokens=["It is 21."]))
    items = _first_turn(client, "t/gemini", stream=stream, include=include)
    assert [item["type"] for item in items] == ["function_call", "reasoning"]
    _carrier(items)

    replayed = [REPLAYS[replay](item) for item in items]
    assert _second_turn(client, "t/gemini", replayed) == "It is 21."
    signature = fakes.openai.server.signatures["call_w1"]
    sent = fakes.openai.last.json["messages"][1]
    assert sent["tool_calls"][0]["extra_content"] == {"google": {"thought_signature": signature}}


@pytest.mark.parametrize("replay", list(REPLAYS))
@pytest.mark.parametrize("stream", [False, True])
def test_openrouter_reasoning_details_go_to_the_client_and_back_unmodified(
    client: openai.OpenAI, fakes: Fakes, stream: bool, replay: str
) -> None:
    first = Reply(tokens=(), tool_calls=(CALL,), finish="tool_calls", options={"reasoning_details": BLOCKS})
    fakes.openrouter.script(first, Reply(tokens=["It is 21."]))
    items = _first_turn(client, "t/claude", stream=stream, include=INCLUDE)
    # Streamed, the thinking block's text is the reply's reasoning, as before; the blocks ride in the last item.
    assert [item["type"] for item in items] == ["reasoning", "function_call", "reasoning"][0 if stream else 1 :]
    if stream:
        assert [part["text"] for part in items[0]["content"]] == [BLOCKS[0]["text"]]
        assert "encrypted_content" not in items[0]
    _carrier(items)

    replayed = [REPLAYS[replay](item) for item in items]
    assert _second_turn(client, "t/claude", replayed) == "It is 21."
    assert fakes.openrouter.last.json["messages"][1]["reasoning_details"] == BLOCKS


def test_the_blocks_reach_the_turn_before_them_past_its_call_results(client: openai.OpenAI, fakes: Fakes) -> None:
    """A client that records a call's result as soon as it has it puts the result before the reply's last item."""
    first = Reply(tokens=(), tool_calls=(CALL,), finish="tool_calls", options={"reasoning_details": BLOCKS})
    fakes.openrouter.script(first, Reply(tokens=["It is 21."]))
    *items, carrier = _first_turn(client, "t/claude", stream=True, include=INCLUDE)
    response = client.responses.create(model="t/claude", input=[QUESTION, *items, RESULT, carrier], store=False)
    assert response.output_text == "It is 21."
    assert fakes.openrouter.last.json["messages"][1]["reasoning_details"] == BLOCKS


def test_the_carrier_is_added_and_done_last_before_the_reply_completes(client: openai.OpenAI, fakes: Fakes) -> None:
    """openai-python's stream accumulator takes it (``client.responses.stream``), and its final response holds it."""
    first = Reply(tokens=["Sunny."], options={"reasoning_details": BLOCKS})
    fakes.openrouter.script(first)
    with client.responses.stream(model="t/claude", input=[QUESTION], include=["reasoning.encrypted_content"]) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [event.type for event in events]
    assert kinds[-3:] == ["response.output_item.added", "response.output_item.done", "response.completed"]
    added, done = events[-3], events[-2]
    assert added.type == "response.output_item.added" and done.type == "response.output_item.done"
    assert added.output_index == done.output_index == 2 and added.item == done.item
    assert [item.type for item in final.output] == ["reasoning", "message", "reasoning"]
    assert final.output_text == "Sunny."
    assert final.output[2].model_dump(exclude_none=True) == done.item.model_dump(exclude_none=True)


def test_a_reply_without_such_data_has_no_carrier(client: openai.OpenAI, fakes: Fakes) -> None:
    fakes.huggingface.script(Reply(tokens=(), tool_calls=(CALL,), finish="tool_calls"))
    items = _first_turn(client, "t/qwen", stream=False, include=INCLUDE)
    assert [item["type"] for item in items] == ["function_call"]


def _token(body: Any) -> str:
    return PREFIX + base64.urlsafe_b64encode(orjson.dumps(body)).rstrip(b"=").decode()


SECRET = "SECRET-SIGNATURE"


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"thought_signature": SECRET}
    for _ in range(depth - 1):
        value = {"google": value}
    return value


#: Tokens that say they are modelgate's but do not read back, and what the 400 says of each.
BROKEN = {
    "not_base64": (PREFIX + "%%" + SECRET, "not base64url of JSON"),
    "not_json": (PREFIX + base64.urlsafe_b64encode(SECRET.encode()).decode(), "not base64url of JSON"),
    "unknown_key": (_token({"details": [], SECRET: 1}), "does not hold what modelgate writes"),
    "details_not_a_list": (_token({"details": {"a": SECRET}}), "its details are not a list"),
    "too_many_details": (
        _token({"details": [{"type": "reasoning.text", "text": SECRET}] * (MAX_REASONING_DETAILS + 1)}),
        f"at most {MAX_REASONING_DETAILS} reasoning blocks",
    ),
    "detail_not_an_object": (_token({"details": [SECRET]}), "expected a JSON object"),
    "extra_not_an_object": (_token({"calls": {"call_w1": SECRET}}), "expected a JSON object"),
    "too_deep": (
        _token({"calls": {"call_w1": _nested(MAX_OPAQUE_DEPTH + 1)}}),
        "deeper",
    ),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_token_of_ours_that_does_not_read_back_is_a_400_that_never_quotes_it(
    service: str, fakes: Fakes, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    token, reason = BROKEN[case]
    call = {"type": "function_call", "call_id": "call_w1", "name": "get_weather", "arguments": "{}"}
    carrier = {"type": "reasoning", "summary": [], "encrypted_content": token}
    body = {"model": "t/claude", "input": [QUESTION, call, carrier, RESULT], "tools": [WEATHER_TOOL], "store": False}
    with caplog.at_level(logging.DEBUG):
        reply = httpx.post(f"{service}/v1/responses", json=body, timeout=30)
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["param"] == "input" and error["type"] == "invalid_request_error"
    assert error["message"].startswith("input[2].encrypted_content: not as modelgate made it (")
    assert reason in error["message"]
    assert SECRET not in reply.text and SECRET not in caplog.text
    assert fakes.openrouter.requests == []


def test_another_servers_encrypted_content_is_left_out_and_named_dropped(client: openai.OpenAI, fakes: Fakes) -> None:
    """OpenAI's own encrypted reasoning (a conversation begun there) is no model's here to read."""
    fakes.openrouter.script(Reply(tokens=["It is 21."]))
    call = {"type": "function_call", "call_id": "call_w1", "name": "get_weather", "arguments": "{}"}
    theirs = {"type": "reasoning", "summary": [], "encrypted_content": "gAAAAABpQ" + "x" * 40}
    raw = client.responses.with_raw_response.create(
        model="t/claude", input=[QUESTION, theirs, call, RESULT], tools=[WEATHER_TOOL], store=False
    )
    assert raw.parse().output_text == "It is 21."
    assert "input.reasoning.encrypted_content" in raw.headers["x-modelgate-dropped-params"].split(",")
    assert "reasoning_details" not in fakes.openrouter.last.json["messages"][1]


def test_blocks_with_no_turn_after_them_are_a_400(service: str, fakes: Fakes) -> None:
    carrier = {"type": "reasoning", "summary": [], "encrypted_content": _token({"details": BLOCKS})}
    body = {"model": "t/claude", "input": [carrier, QUESTION], "store": False}
    reply = httpx.post(f"{service}/v1/responses", json=body, timeout=30)
    assert reply.status_code == 400
    assert reply.json()["error"]["message"].startswith("input[0]: a reasoning item modelgate made belongs beside")
    assert fakes.openrouter.requests == []


@pytest.mark.parametrize("stream", [False, True])
def test_more_blocks_than_the_bound_fail_the_reply(service: str, fakes: Fakes, stream: bool) -> None:
    """Streamed, one block a chunk: no piece passes the parser's bound, the reply's whole does."""
    blocks = [{"type": "reasoning.summary", "summary": "s", "index": i} for i in range(MAX_REASONING_DETAILS + 1)]
    fakes.openrouter.script(Reply(tokens=["Sunny."], options={"reasoning_details": blocks}))
    body = {"model": "t/claude", "input": [QUESTION], "store": False, "stream": stream}
    reply = httpx.post(f"{service}/v1/responses", json=body, timeout=30)
    if not stream:
        assert reply.status_code == 502
        assert f"more than {MAX_REASONING_DETAILS} reasoning_details" in reply.json()["error"]["message"]
        return
    failed = [line for line in reply.text.splitlines() if line.startswith("data: ")][-1]
    response = orjson.loads(failed.removeprefix("data: "))["response"]
    assert response["status"] == "failed"
    assert f"more than {MAX_REASONING_DETAILS} reasoning_details" in response["error"]["message"]
