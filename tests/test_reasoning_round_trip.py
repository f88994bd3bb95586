"""What a reasoning model attaches to its reply for itself reaches the client, and comes back upstream on the next
turn as the client returned it, on ``/v1/chat/completions``, end to end: the official ``openai`` client → modelgate
on loopback → the fakes, which refuse a tool loop that lost it as the real upstreams do.

- Gemini's thought signature on Google's OpenAI compatibility API (the ``openai`` kind): a tool call's
  ``extra_content: {"google": {"thought_signature"}}`` (``FakeOpenAI.gemini``).
- OpenRouter's reasoning blocks: an assistant message's ``reasoning_details`` (``reasoning_details`` of
  ``tests/fakes/openrouter.py``).
"""

from __future__ import annotations

import logging
import tomllib
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from modelgate.app import create_app
from modelgate.catalogue import Catalogue, parse_catalogue
from modelgate.settings import Settings
from modelgate.wire import MAX_OPAQUE_BYTES, MAX_OPAQUE_DEPTH
from tests.catalogue_files import catalogue_toml, model_toml
from tests.fakes import Fakes, Reply
from tests.fakes._base import ToolCallScript
from tests.servers import serve_in_thread


def round_trip_catalogue(fakes: Fakes) -> Catalogue:
    """``t/gemini`` on an ``openai`` instance (the OpenAI fake), ``t/claude`` on OpenRouter, ``t/qwen`` on the HF
    router."""
    header = f'[providers.gemini]\nkind = "openai"\nbase_url = "{fakes.openai.url}"\n'
    capable = 'capabilities = ["tools", "reasoning"]\n'
    text = catalogue_toml(
        model_toml("t", "gemini", provider="gemini", upstream="HuggingFaceTB/SmolLM2-135M-Instruct", extra=capable),
        model_toml("t", "claude", provider="openrouter", upstream="deepseek/deepseek-chat:free", extra=capable),
        model_toml("t", "qwen", provider="huggingface", upstream="Qwen/Qwen2.5-72B-Instruct", extra=capable),
        header=header,
    )
    return parse_catalogue(tomllib.loads(text), source="round-trip.toml")


WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
ARGUMENTS = '{"city": "Zürich"}'
CALL = ToolCallScript(name="get_weather", arguments=ARGUMENTS, id="call_w1")
QUESTION: Any = {"role": "user", "content": "Weather in Zürich?"}
#: Reasoning blocks as OpenRouter gives them for Claude with thinking on (a signed thinking block, a redacted one).
BLOCKS = [
    {
        "type": "reasoning.text",
        "text": "The user wants the weather: call the tool.",
        "signature": "EqQBCkgIARABGAIiQL2k4Zx0",
        "id": None,
        "format": "anthropic-claude-v1",
        "index": 0,
    },
    {
        "type": "reasoning.encrypted",
        "data": "RW5jcnlwdGVkIHRoaW5raW5nIGJsb2Nr",
        "id": None,
        "format": "anthropic-claude-v1",
        "index": 1,
    },
]


@pytest.fixture
def service(fakes: Fakes) -> Iterator[str]:
    settings = Settings(**fakes.settings_overrides())  # type: ignore[arg-type]
    with serve_in_thread(create_app(settings, round_trip_catalogue(fakes))) as url:
        yield url


@pytest.fixture
def client(service: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{service}/v1", api_key="test-key", max_retries=0) as sdk:
        yield sdk


def _first_turn(client: openai.OpenAI, model: str, *, stream: bool) -> dict[str, Any]:
    """The assistant message of the first turn as the client sends it back: the SDK's own message, or the one a
    streaming client assembles from the deltas (every field of theirs kept, as @ai-sdk/openai-compatible and
    OpenRouter's provider keep them)."""
    if not stream:
        completion = client.chat.completions.create(model=model, messages=[QUESTION], tools=[WEATHER_TOOL])
        assert completion.choices[0].finish_reason == "tool_calls"
        return completion.choices[0].message.model_dump(exclude_none=True)
    calls: dict[int, dict[str, Any]] = {}
    details: list[Any] = []
    for chunk in client.chat.completions.create(model=model, messages=[QUESTION], tools=[WEATHER_TOOL], stream=True):
        for choice in chunk.choices:
            details += (choice.delta.model_extra or {}).get("reasoning_details") or []
            for piece in choice.delta.tool_calls or ():
                call = calls.setdefault(piece.index, {"type": "function", "function": {"name": "", "arguments": ""}})
                if piece.id:
                    call["id"] = piece.id
                if piece.function is not None:
                    call["function"]["name"] += piece.function.name or ""
                    call["function"]["arguments"] += piece.function.arguments or ""
                if (extra := (piece.model_extra or {}).get("extra_content")) is not None:
                    call["extra_content"] = extra
    message: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": [calls[i] for i in sorted(calls)]}
    if details:
        message["reasoning_details"] = details
    return message


def _second_turn(client: openai.OpenAI, model: str, assistant: dict[str, Any], *, stream: bool) -> str:
    messages = [QUESTION, assistant, {"role": "tool", "tool_call_id": "call_w1", "content": "21 degrees"}]
    if not stream:
        completion = client.chat.completions.create(model=model, messages=messages, tools=[WEATHER_TOOL])
        return completion.choices[0].message.content or ""
    chunks = client.chat.completions.create(model=model, messages=messages, tools=[WEATHER_TOOL], stream=True)
    return "".join(choice.delta.content or "" for chunk in chunks for choice in chunk.choices)


@pytest.mark.parametrize("stream", [False, True])
def test_a_gemini_thought_signature_goes_to_the_client_and_back(
    client: openai.OpenAI, fakes: Fakes, stream: bool
) -> None:
    fakes.openai.gemini = True
    fakes.openai.script(Reply(tokens=(), tool_calls=(CALL,), finish="tool_calls"), Reply(tokens=["It is 21."]))
    assistant = _first_turn(client, "t/gemini", stream=stream)
    signature = fakes.openai.server.signatures["call_w1"]
    assert assistant["tool_calls"][0]["extra_content"] == {"google": {"thought_signature": signature}}

    assert _second_turn(client, "t/gemini", assistant, stream=stream) == "It is 21."
    sent = fakes.openai.last.json["messages"][1]["tool_calls"][0]
    assert sent["extra_content"] == {"google": {"thought_signature": signature}}


@pytest.mark.parametrize("stream", [False, True])
def test_openrouter_reasoning_details_go_to_the_client_and_back_unmodified(
    client: openai.OpenAI, fakes: Fakes, stream: bool
) -> None:
    first = Reply(tokens=(), tool_calls=(CALL,), finish="tool_calls", options={"reasoning_details": BLOCKS})
    fakes.openrouter.script(first, Reply(tokens=["It is 21."]))
    assistant = _first_turn(client, "t/claude", stream=stream)
    assert assistant["reasoning_details"] == BLOCKS

    assert _second_turn(client, "t/claude", assistant, stream=stream) == "It is 21."
    assert fakes.openrouter.last.json["messages"][1]["reasoning_details"] == BLOCKS


def test_the_reasoning_text_of_the_blocks_is_still_the_replys_reasoning(client: openai.OpenAI, fakes: Fakes) -> None:
    """Streamed beside its block, a thinking block's text is ``reasoning_content`` as any reasoning is."""
    fakes.openrouter.script(Reply(tokens=["Sunny."], options={"reasoning_details": BLOCKS}))
    chunks = client.chat.completions.create(model="t/claude", messages=[QUESTION], stream=True)
    reasoning = "".join((c.delta.model_extra or {}).get("reasoning_content") or "" for k in chunks for c in k.choices)
    assert reasoning == BLOCKS[0]["text"]


def test_a_kind_without_such_fields_is_sent_none(client: openai.OpenAI, fakes: Fakes) -> None:
    """The HF router documents neither field: what a client hands back (from another model's reply) stays here."""
    fakes.huggingface.script(Reply(tokens=["It is 21."]))
    assistant = {
        "role": "assistant",
        "content": None,
        "reasoning_details": BLOCKS,
        "tool_calls": [
            {
                "id": "call_w1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": ARGUMENTS},
                "extra_content": {"google": {"thought_signature": "c2ln"}},
            }
        ],
    }
    assert _second_turn(client, "t/qwen", assistant, stream=False) == "It is 21."
    sent = fakes.huggingface.last.json["messages"][1]
    assert "reasoning_details" not in sent
    assert "extra_content" not in sent["tool_calls"][0]


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"thought_signature": "SECRET-SIGNATURE"}
    for _ in range(depth - 1):
        value = {"google": value}
    return value


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        (_nested(MAX_OPAQUE_DEPTH + 1), f"nested deeper than {MAX_OPAQUE_DEPTH} levels"),
        ({"google": {"thought_signature": "SECRET-SIGNATURE" + "A" * MAX_OPAQUE_BYTES}}, f"{MAX_OPAQUE_BYTES} bytes"),
        ("SECRET-SIGNATURE", "expected a JSON object"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_an_upstreams_extra_content_past_the_bounds_is_a_protocol_error_that_never_quotes_it(
    service: str, fakes: Fakes, caplog: pytest.LogCaptureFixture, extra: Any, reason: str, stream: bool
) -> None:
    """Streamed, the text before the call has gone out: the stream ends with an error chunk."""
    caplog.set_level(logging.DEBUG)
    options = {"extra_content": extra}
    fakes.openai.script(Reply(tokens=["Let me look."], tool_calls=(CALL,), finish="tool_calls", options=options))
    body = {"model": "t/gemini", "messages": [QUESTION], "tools": [WEATHER_TOOL], "stream": stream}
    response = httpx.post(f"{service}/v1/chat/completions", json=body, timeout=30)
    if stream:
        assert response.status_code == 200
        assert "Let me look." in response.text
        assert "extra_content is unreadable" in response.text.split("data: ")[-2]  # the error chunk, before [DONE]
    else:
        assert response.status_code == 502
        assert "extra_content is unreadable" in response.json()["error"]["message"]
    assert reason in response.text
    assert "SECRET-SIGNATURE" not in response.text
    assert "SECRET-SIGNATURE" not in caplog.text


@pytest.mark.parametrize("stream", [False, True])
def test_an_upstreams_reasoning_block_past_the_bounds_is_a_protocol_error_that_never_quotes_it(
    service: str, fakes: Fakes, caplog: pytest.LogCaptureFixture, stream: bool
) -> None:
    caplog.set_level(logging.DEBUG)
    fakes.openrouter.script(Reply(tokens=["Sunny."], options={"reasoning_details": [_nested(MAX_OPAQUE_DEPTH + 1)]}))
    body = {"model": "t/claude", "messages": [QUESTION], "stream": stream}
    response = httpx.post(f"{service}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 502
    assert "a reasoning_details entry is unreadable" in response.json()["error"]["message"]
    assert "SECRET-SIGNATURE" not in response.text
    assert "SECRET-SIGNATURE" not in caplog.text


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("extra_content", _nested(MAX_OPAQUE_DEPTH + 1)),
        ("extra_content", "SECRET-SIGNATURE"),
        ("reasoning_details", [_nested(MAX_OPAQUE_DEPTH + 1)]),
        ("reasoning_details", {"type": "reasoning.encrypted"}),
    ],
)
def test_a_clients_opaque_field_past_the_bounds_is_a_400_naming_it(
    service: str, fakes: Fakes, caplog: pytest.LogCaptureFixture, field: str, value: Any
) -> None:
    caplog.set_level(logging.DEBUG)
    call = {"id": "call_w1", "type": "function", "function": {"name": "get_weather", "arguments": ARGUMENTS}}
    assistant: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": [call]}
    (call if field == "extra_content" else assistant)[field] = value
    messages = [QUESTION, assistant, {"role": "tool", "tool_call_id": "call_w1", "content": "21"}]
    response = httpx.post(
        f"{service}/v1/chat/completions", json={"model": "t/gemini", "messages": messages}, timeout=30
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"].startswith("messages.1.")
    assert field in error["param"]
    assert "SECRET-SIGNATURE" not in response.text
    assert "SECRET-SIGNATURE" not in caplog.text
    assert fakes.openai.requests == []


def test_reasoning_details_on_a_user_message_are_a_400(service: str, fakes: Fakes) -> None:
    messages = [{"role": "user", "content": "Hi", "reasoning_details": BLOCKS}]
    response = httpx.post(
        f"{service}/v1/chat/completions", json={"model": "t/gemini", "messages": messages}, timeout=30
    )
    assert response.status_code == 400
    assert "messages[0].reasoning_details" in response.json()["error"]["message"]
    assert fakes.openai.requests == []


def test_a_history_without_its_signature_gets_geminis_reason(client: openai.OpenAI, fakes: Fakes) -> None:
    """Google wraps the error of its OpenAI compatibility API in a JSON array (``[{"error": {...}}]``): the client reads
    Gemini's message, not the array's text."""
    fakes.openai.gemini = True
    fakes.openai.script(Reply(tokens=(), tool_calls=(CALL,), finish="tool_calls"))
    assistant = _first_turn(client, "t/gemini", stream=False)
    del assistant["tool_calls"][0]["extra_content"]  # a client that drops what it does not know
    with pytest.raises(openai.BadRequestError) as refused:
        _second_turn(client, "t/gemini", assistant, stream=False)
    message = refused.value.body["message"]  # type: ignore[index]
    assert "Function call is missing a thought_signature in functionCall parts" in message
    assert "INVALID_ARGUMENT" not in message and "[{" not in message
