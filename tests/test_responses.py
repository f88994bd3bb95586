"""``POST /v1/responses`` end to end: the official ``openai`` SDK (``client.responses``) → modelgate on a loopback
port → the fake upstreams of ``tests/fakes`` speaking each provider's real protocol.

Text replies here; function tools, ``text.format`` (``client.responses.parse``) and images are in
``tests/test_responses_tools.py``."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from openai.types.responses import (
    Response,
    ResponseContentPartAddedEvent,
    ResponseContentPartDoneEvent,
    ResponseOutputRefusal,
    ResponseRefusalDeltaEvent,
    ResponseRefusalDoneEvent,
    ResponseStreamEvent,
)

from modelgate.app import create_app
from modelgate.catalogue import load_catalogue
from modelgate.settings import Settings
from tests import test_fallback_policy as policy
from tests.catalogue_files import model_toml
from tests.fakes import PROMPT_TOKENS, Fakes, Fault, Reply
from tests.servers import serve_in_thread
from tests.test_metrics_logs import sample
from tests.test_openai_chat import MODELS, PROVIDERS, REFUSED_CACHE_CONTROL, UPSTREAM_PARAMS, async_sdk, sdk

TOKENS = ["Hel", "lo", ", wörld", " 😀 <b>&</b>"]
TEXT = "".join(TOKENS)
OLLAMA = MODELS["ollama"]
#: A model whose fake streams reasoning (OpenRouter's ``delta.reasoning``).
THINKER = MODELS["openrouter"]
INPUT: list[Any] = [
    {"role": "developer", "content": "Answer in English."},
    {"role": "user", "content": [{"type": "input_text", "text": "Say"}, {"type": "input_text", "text": "hello"}]},
]

#: A PNG's first bytes: enough to be taken for one.
PNG_SIGNATURE = "data:image/png;base64,iVBORw0KGgo="


@pytest.fixture
def service(fakes: Fakes) -> Iterator[str]:
    with serve_in_thread(create_app(Settings.from_env(fakes.env()))) as url:
        yield url


@pytest.fixture
def client(service: str) -> Iterator[openai.OpenAI]:
    with sdk(service) as client:
        yield client


def _sent_messages(fakes: Fakes, provider: str) -> str:
    return str(fakes[provider].last.json)


# --- one model of each provider ------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_non_streamed_response(client: openai.OpenAI, fakes: Fakes, provider: str) -> None:
    fakes[provider].script(Reply(tokens=TOKENS, usage=(13, 4)))
    raw = client.responses.with_raw_response.create(
        model=MODELS[provider],
        instructions="Be terse.",
        input=INPUT,
        max_output_tokens=7,
        temperature=0.3,
        top_p=0.5,
        metadata={"ticket": "42"},
    )
    response = raw.parse()
    assert raw.headers["x-modelgate-model"] == MODELS[provider]
    Response.model_validate(raw.http_response.json())  # every field as the SDK's type declares it
    assert response.object == "response" and response.id.startswith("resp_")
    assert response.status == "completed"
    assert response.model == MODELS[provider]
    assert response.output_text == TEXT
    [message] = response.output
    assert message.type == "message" and message.role == "assistant" and message.status == "completed"
    assert [part.type for part in message.content] == ["output_text"]
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens, response.usage.total_tokens) == (13, 4, 17)
    assert response.usage.output_tokens_details.reasoning_tokens == 0
    # The request's settings are echoed back; the values reached the provider under its own names.
    assert (response.instructions, response.max_output_tokens, response.temperature, response.top_p) == (
        "Be terse.",
        7,
        0.3,
        0.5,
    )
    assert response.metadata == {"ticket": "42"}
    assert UPSTREAM_PARAMS[provider](fakes[provider].last.json)["max"] == 7
    assert UPSTREAM_PARAMS[provider](fakes[provider].last.json)["temperature"] == 0.3
    sent = _sent_messages(fakes, provider)
    assert sent.index("Be terse.") < sent.index("Answer in English.") < sent.index("Say")
    assert "Say\\nhello" in sent or "Say\nhello" in sent  # two text parts, one message


@pytest.mark.parametrize("provider", PROVIDERS)
def test_streamed_response(client: openai.OpenAI, fakes: Fakes, provider: str) -> None:
    fakes[provider].script(Reply(tokens=TOKENS, usage=(13, 4)))
    with client.responses.create(model=MODELS[provider], input="Say hello", stream=True) as stream:
        events: list[ResponseStreamEvent] = list(stream)
    types = [e.type for e in events]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert set(types[4:-4]) == {"response.output_text.delta"}
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == TEXT
    completed = events[-1]
    assert completed.type == "response.completed"
    assert completed.response.output_text == TEXT
    assert completed.response.usage is not None
    assert (completed.response.usage.input_tokens, completed.response.usage.output_tokens) == (13, 4)
    assert len({e.response.id for e in events if e.type.startswith("response.") and hasattr(e, "response")}) == 1


def test_the_sdk_stream_helper_assembles_the_response(client: openai.OpenAI, fakes: Fakes) -> None:
    fakes.ollama.script(Reply(tokens=TOKENS))
    with client.responses.stream(model=OLLAMA, input="Say hello") as stream:
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == TEXT
    assert final.output_text == TEXT and final.status == "completed"


def test_async_sdk_streams_too(service: str, fakes: Fakes) -> None:
    fakes.ollama.script(Reply(tokens=TOKENS))

    async def main() -> str:
        async with async_sdk(service) as client:
            stream = await client.responses.create(model=OLLAMA, input="Say hello", stream=True)
            return "".join([e.delta async for e in stream if e.type == "response.output_text.delta"])

    assert asyncio.run(main()) == TEXT


def test_the_wire_has_event_lines_and_no_done_marker(service: str) -> None:
    body = {"model": OLLAMA, "input": "hi", "stream": True}
    with httpx.stream("POST", f"{service}/v1/responses", json=body) as response:
        raw = response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-accel-buffering"] == "no"
    assert raw.startswith(b"event: response.created\ndata: {")
    assert raw.rstrip().splitlines()[-2] == b"event: response.completed"
    assert b"[DONE]" not in raw


def test_reasoning_is_a_reasoning_item(client: openai.OpenAI, fakes: Fakes) -> None:
    reply = Reply(tokens=["4"], reasoning=["2+2", " is 4"])  # OpenRouter's delta.reasoning
    fakes.openrouter.script(reply, reply)
    response = client.responses.create(model=THINKER, input="2+2?")
    reasoning, message = response.output
    assert reasoning.type == "reasoning" and reasoning.content is not None and message.type == "message"
    assert [c.text for c in reasoning.content] == ["2+2 is 4"]
    assert response.output_text == "4"  # never mixed into the answer
    with client.responses.create(model=THINKER, input="2+2?", stream=True) as stream:
        events = list(stream)
    assert "".join(e.delta for e in events if e.type == "response.reasoning_text.delta") == "2+2 is 4"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "4"


def test_reasoning_tokens_the_provider_reports_are_in_the_usage(client: openai.OpenAI, fakes: Fakes) -> None:
    fakes.openrouter.script(
        Reply(tokens=["4"], reasoning=["2+2", " is 4"], usage=(20, 3), options={"reasoning_tokens": 2})
    )
    raw = client.responses.with_raw_response.create(model=THINKER, input="2+2?")
    response = Response.model_validate(raw.http_response.json())  # complete to the SDK's type
    assert response.usage is not None and response.usage.output_tokens_details.reasoning_tokens == 2
    assert [item.type for item in response.output] == ["reasoning", "message"]


REFUSAL = Reply(tokens=["I can't", " help."], options={"refusal": True})  # OpenAI's ``refusal``, content null


def _without_ids(response: Response) -> list[dict[str, Any]]:
    return [item.model_dump(exclude={"id"}) for item in response.output]


def test_a_refusal_is_a_refusal_part_whole_and_streamed(client: openai.OpenAI, fakes: Fakes) -> None:
    """As OpenAI answers a refusal: a ``refusal`` part of the message, streamed as ``response.refusal.*``; the
    SDK's ``output_text`` (``output_text`` parts only) is empty, so a refusal is never read as an answer."""
    fakes.openrouter.script(REFUSAL, REFUSAL, REFUSAL)
    raw = client.responses.with_raw_response.create(model=THINKER, input="hi")
    whole = raw.parse()
    Response.model_validate(raw.http_response.json())  # every field as the SDK's type declares it
    [message] = whole.output
    assert message.type == "message" and message.status == "completed"
    assert message.content == [ResponseOutputRefusal(type="refusal", refusal="I can't help.")]
    assert whole.output_text == "" and whole.status == "completed"

    with client.responses.create(model=THINKER, input="hi", stream=True) as stream:
        events: list[ResponseStreamEvent] = list(stream)
    assert [e.sequence_number for e in events] == list(range(len(events)))
    [added] = [e for e in events if isinstance(e, ResponseContentPartAddedEvent)]
    deltas = [e for e in events if isinstance(e, ResponseRefusalDeltaEvent)]
    [done] = [e for e in events if isinstance(e, ResponseRefusalDoneEvent)]
    [part_done] = [e for e in events if isinstance(e, ResponseContentPartDoneEvent)]
    assert added.part == ResponseOutputRefusal(type="refusal", refusal="")
    assert "".join(d.delta for d in deltas) == done.refusal == "I can't help."
    assert part_done.part == ResponseOutputRefusal(type="refusal", refusal="I can't help.")
    item_id = events[2].item.id  # type: ignore[union-attr]
    for event in (added, *deltas, done, part_done):
        assert (event.item_id, event.output_index, event.content_index) == (item_id, 0, 0)
    assert not [e for e in events if e.type == "response.output_text.delta"]
    completed = events[-1]
    assert completed.type == "response.completed"
    assert _without_ids(completed.response) == _without_ids(whole)  # the same output as the whole reply

    with client.responses.stream(model=THINKER, input="hi") as helper:
        refused = "".join(e.delta for e in helper if e.type == "response.refusal.delta")
        final = helper.get_final_response()
    assert refused == "I can't help."
    assert _without_ids(final) == _without_ids(whole) and final.output_text == ""


def test_a_refusal_sent_back_is_the_assistants_text(client: openai.OpenAI, fakes: Fakes) -> None:
    """The SDK's multi-turn pattern sends ``response.output`` back, the ``refusal`` part included: its words are
    what the assistant said, as ``/v1/chat/completions`` takes a refusal sent back."""
    fakes.openrouter.script(REFUSAL, Reply(tokens=["Hi"]))
    first = client.responses.create(model=THINKER, input="Do it", store=False)
    assert [part.type for part in first.output[0].content] == ["refusal"]  # type: ignore[union-attr]
    second = client.responses.create(
        model=THINKER,
        input=[
            {"role": "user", "content": "Do it"},
            *[item.model_dump() for item in first.output],
            {"role": "user", "content": "Say hi then"},
        ],
        store=False,
    )
    assert second.output_text == "Hi"
    assert [(m["role"], m["content"]) for m in fakes.openrouter.last.json["messages"]] == [
        ("user", "Do it"),
        ("assistant", "I can't help."),
        ("user", "Say hi then"),
    ]


def test_prompt_tokens_the_provider_served_from_its_cache_are_in_the_usage(client: openai.OpenAI, fakes: Fakes) -> None:
    fakes.openrouter.script(Reply(tokens=["4"], usage=(1200, 1), options={"cached_tokens": 1024}))
    response = client.responses.create(model=THINKER, input="2+2?")
    assert response.usage is not None and response.usage.input_tokens_details.cached_tokens == 1024


def test_usage_the_provider_does_not_report_is_estimated_and_marked(client: openai.OpenAI, fakes: Fakes) -> None:
    fakes.openrouter.default = Reply(tokens=["four words", " of text"], usage=None)  # every call: no usage reported
    raw = client.responses.with_raw_response.create(model=THINKER, input="hi")
    assert fakes.openrouter.last.json["stream"] is False  # asked for one JSON reply, not a stream
    assert raw.headers["x-modelgate-usage"] == "estimated"
    usage = raw.parse().usage
    # Counted from the whole reply's text: 18 characters, ~4 a token.
    assert usage is not None and usage.output_tokens == 5 and usage.model_extra == {"estimated": True}
    with client.responses.create(model=THINKER, input="hi", stream=True) as stream:
        completed = [e for e in stream if e.type == "response.completed"]
    assert completed[0].response.usage is not None and completed[0].response.usage.model_extra == {"estimated": True}
    fakes.openrouter.default = Reply(tokens=["Hi", "!"], usage=(5, 2))
    raw = client.responses.with_raw_response.create(model=THINKER, input="hi")  # reported: unmarked
    assert "x-modelgate-usage" not in raw.headers and not (raw.parse().usage.model_extra or {})  # type: ignore[union-attr]


def test_max_output_tokens_reached_is_incomplete(client: openai.OpenAI, fakes: Fakes) -> None:
    fakes.ollama.script(Reply(tokens=["a", "b"], finish="length"))
    response = client.responses.create(model=OLLAMA, input="hi", max_output_tokens=2)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None and response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text == "ab"
    assert response.usage is not None and (response.usage.input_tokens, response.usage.output_tokens) == (
        PROMPT_TOKENS,
        2,
    )


def test_earlier_output_goes_back_as_input(client: openai.OpenAI, fakes: Fakes) -> None:
    """The SDK's documented multi-turn pattern without storage: the previous ``output`` items (message and
    reasoning) followed by the next user message."""
    fakes.openrouter.script(Reply(tokens=["4"], reasoning=["2+2"]), Reply(tokens=["8"]))
    first = client.responses.create(model=THINKER, input="2+2?", store=False)
    assert [item.type for item in first.output] == ["reasoning", "message"]
    second = client.responses.create(
        model=THINKER,
        input=[
            {"role": "user", "content": "2+2?"},
            *[item.model_dump() for item in first.output],
            {
                "role": "user",
                "content": "and doubled?",
            },
        ],
        store=False,
    )
    assert second.output_text == "8"
    messages = fakes.openrouter.last.json["messages"]
    assert [(m["role"], m["content"]) for m in messages] == [
        ("user", "2+2?"),
        ("assistant", "4"),  # the reasoning item is not replayed (nowhere to put it; models do not read it)
        ("user", "and doubled?"),
    ]


#: A prompt-caching breakpoint on an input block, as OpenRouter's Responses API takes it.
CACHED_INPUT: list[Any] = [
    {
        "role": "user",
        "content": [
            {"type": "input_text", "text": "HUGE TEXT BODY", "cache_control": {"type": "ephemeral"}},
            {"type": "input_text", "text": "Name all the characters."},
        ],
    }
]


def test_a_prompt_caching_breakpoint_reaches_openrouter_on_its_part(client: openai.OpenAI, fakes: Fakes) -> None:
    raw = client.responses.with_raw_response.create(model=MODELS["openrouter"], input=CACHED_INPUT, store=False)
    raw.parse()
    assert fakes.openrouter.last.json["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "HUGE TEXT BODY", "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "Name all the characters."},
            ],
        }
    ]
    assert "x-modelgate-dropped-params" not in raw.headers


def test_a_prompt_caching_breakpoint_ollama_cannot_carry_is_reported(client: openai.OpenAI, fakes: Fakes) -> None:
    raw = client.responses.with_raw_response.create(model=OLLAMA, input=CACHED_INPUT, store=False)
    raw.parse()
    assert raw.headers["x-modelgate-dropped-params"] == "input.content.cache_control"
    assert fakes.ollama.last.json["messages"][-1]["content"] == "HUGE TEXT BODY\nName all the characters."


def test_a_prompt_caching_breakpoint_of_another_kind_is_refused(service: str, fakes: Fakes) -> None:
    part = {"type": "input_text", "text": "Hi", "cache_control": {"type": "ephemeral", "ttl": "1d"}}
    body = {"model": MODELS["openrouter"], "input": [{"role": "user", "content": [part]}], "store": False}
    response = httpx.post(f"{service}/v1/responses", json=body, timeout=10)
    assert response.status_code == 400, response.text
    assert "cache_control.ttl: Input should be '5m' or '1h'" in response.json()["error"]["message"]
    assert fakes.openrouter.requests == []


def test_automatic_prompt_caching_reaches_openrouter_at_the_top_level(client: openai.OpenAI, fakes: Fakes) -> None:
    """The request's own ``cache_control`` (OpenRouter's Responses API documents it: automatic prompt caching)
    goes to OpenRouter as the client sent it: no part gets one it did not ask for."""
    raw = client.responses.with_raw_response.create(
        model=MODELS["openrouter"],
        input="hi",
        store=False,
        extra_body={"cache_control": {"type": "ephemeral", "ttl": "1h"}},
    )
    raw.parse()
    sent = fakes.openrouter.last.json
    assert sent["cache_control"] == {"type": "ephemeral", "ttl": "1h"}
    assert "cache_control" not in str(sent["messages"])
    assert "x-modelgate-dropped-params" not in raw.headers


@pytest.mark.parametrize("provider", ["huggingface", "ollama", "cloudflare"])
def test_automatic_prompt_caching_a_provider_cannot_carry_is_reported(
    client: openai.OpenAI, fakes: Fakes, provider: str
) -> None:
    raw = client.responses.with_raw_response.create(
        model=MODELS[provider], input="hi", store=False, extra_body={"cache_control": {"type": "ephemeral"}}
    )
    raw.parse()
    assert raw.headers["x-modelgate-dropped-params"].split(",") == ["cache_control"]
    assert "cache_control" not in str(fakes[provider].last.json)


@pytest.mark.parametrize(
    ("cache_control", "error"),
    REFUSED_CACHE_CONTROL,
)
def test_an_automatic_prompt_caching_directive_other_than_anthropics_is_refused(
    service: str, fakes: Fakes, cache_control: Any, error: str
) -> None:
    body = {"model": MODELS["openrouter"], "input": "hi", "store": False, "cache_control": cache_control}
    response = httpx.post(f"{service}/v1/responses", json=body, timeout=10)
    assert response.status_code == 400, response.text
    assert error in response.json()["error"]["message"]
    assert fakes.openrouter.requests == []


def test_catalogue_defaults_a_provider_cannot_carry_are_not_reported_as_dropped(client: openai.OpenAI) -> None:
    raw = client.responses.with_raw_response.create(model=MODELS["cloudflare"], input="hi", temperature=0.5)
    raw.parse()
    assert "x-modelgate-dropped-params" not in raw.headers  # typical_p/truncate are the catalogue's, not ours


def test_catalogue_defaults_apply_when_the_call_sets_nothing(client: openai.OpenAI, fakes: Fakes) -> None:
    client.responses.create(model=OLLAMA, input="hi")
    options = fakes.ollama.last.json["options"]
    assert options["num_predict"] == 500  # the catalogue's max_new_tokens
    assert "temperature" not in options and "top_p" not in options


# --- refused, with a 400 that says why, before any upstream call ---------------------------------


REFUSED: dict[str, tuple[dict[str, Any], str, str]] = {
    "store": ({"store": True}, "store", "responses are not stored"),
    "previous_response_id": ({"previous_response_id": "resp_1"}, "previous_response_id", "not stored"),
    "conversation": ({"conversation": "conv_1"}, "conversation", "not stored"),
    "background": ({"background": True}, "background", "not stored"),
    # The default catalogue's Ollama model declares no capabilities: what needs one names model and capability.
    "tools": (
        {"tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}]},
        "tools",
        f"model '{OLLAMA}' does not support tool calling (capability 'tools')",
    ),
    "tool_choice": ({"tool_choice": "required"}, "tool_choice", "only allowed when tools are given"),
    "json_schema": (
        {"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}}}},
        "text.format",
        f"model '{OLLAMA}' does not support structured output",
    ),
    "json_object": ({"text": {"format": {"type": "json_object"}}}, "text.format", "(capability 'json')"),
    # The effort is carried (tests/test_reasoning_effort.py), a summary reported as dropped (below); nothing else.
    "reasoning_mode": (
        {"reasoning": {"mode": "pro"}},
        "reasoning.mode",
        f"not supported (model '{OLLAMA}'); only reasoning.effort is carried",
    ),
    "reasoning_effort": ({"reasoning": {"effort": "extreme"}}, "reasoning.effort", "Input should be 'none'"),
    "include": (
        {"include": ["reasoning.encrypted_content", "message.output_text.logprobs"]},
        "include",
        "message.output_text.logprobs: cannot be included",
    ),
    "text_verbosity": ({"text": {"verbosity": "low"}}, "text.verbosity", "only the default, 'medium'"),
    "image": (
        {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": PNG_SIGNATURE}]}]},
        "input",
        f"model '{OLLAMA}' does not support image input (capability 'vision')",
    ),
    "file": (
        {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file_1"}]}]},
        "input",
        "input[0].content[0]: input_file: file input is not supported",
    ),
    "item_reference": ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input", "cannot be referenced"),
    "function_call_output": (
        {
            "input": [
                {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c", "output": "1"},
            ]
        },
        "tools",
        "(capability 'tools')",
    ),
    "only_instructions": ({"input": []}, "input", "at least one message"),
    "max_output_tokens": ({"max_output_tokens": 100_000}, "max_output_tokens", "above the limit of 500"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_unsupported_requests_are_refused(client: openai.OpenAI, fakes: Fakes, case: str) -> None:
    fields, param, message = REFUSED[case]
    body: dict[str, Any] = {"model": OLLAMA, "input": "hi", **fields}
    with pytest.raises(openai.BadRequestError) as caught:
        client.post("/responses", cast_to=Response, body=body)
    assert caught.value.status_code == 400
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["type"] == "invalid_request_error"
    assert caught.value.body["param"] == param
    assert message in caught.value.body["message"]
    assert fakes.ollama.requests == []


def test_tools_declined_with_tool_choice_none_reach_a_model_without_tools(client: openai.OpenAI, fakes: Fakes) -> None:
    # As an agent sends them on every turn: "none" asks for no tool use, which a model without tools serves.
    tools: Any = [{"type": "function", "name": "f", "parameters": {"type": "object"}}]
    raw = client.responses.with_raw_response.create(model=OLLAMA, input="hi", tools=tools, tool_choice="none")
    reply = raw.parse()
    assert reply.output_text == "Hello, world!"
    assert reply.tool_choice == "none" and [tool.name for tool in reply.tools] == ["f"]  # echoed as asked
    assert "tools" not in fakes.ollama.last.json
    assert "x-modelgate-dropped-params" not in raw.headers


#: Extra output no provider kind makes, whose absence leaves the answer as asked: accepted, named as dropped.
UNMADE: dict[str, tuple[dict[str, Any], str]] = {
    "summary": ({"reasoning": {"effort": "low", "summary": "auto"}}, "reasoning.summary"),
    "generate_summary": ({"reasoning": {"generate_summary": "concise"}}, "reasoning.generate_summary"),
    "default_verbosity": ({"text": {"verbosity": "medium"}}, "text.verbosity"),
}


@pytest.mark.parametrize("case", list(UNMADE))
def test_extra_output_nobody_makes_is_reported_as_dropped(client: openai.OpenAI, case: str) -> None:
    fields, name = UNMADE[case]
    raw = client.responses.with_raw_response.create(model=OLLAMA, input="hi", **fields)
    assert raw.parse().output_text == "Hello, world!"
    assert name in raw.headers["x-modelgate-dropped-params"].split(",")


@pytest.mark.parametrize("include", [[], ["reasoning.encrypted_content"]])
def test_an_include_of_encrypted_reasoning_is_honoured_not_dropped(client: openai.OpenAI, include: list[Any]) -> None:
    """A reply's round-trip data comes in a reasoning item's encrypted_content (tests/test_responses_round_trip.py);
    [] asks for nothing."""
    raw = client.responses.with_raw_response.create(model=OLLAMA, input="hi", include=include)
    assert "x-modelgate-dropped-params" not in raw.headers


@pytest.mark.parametrize("store", [False, None])
def test_store_false_or_absent_is_served(client: openai.OpenAI, store: bool | None) -> None:
    fields: dict[str, Any] = {} if store is None else {"store": store}
    assert client.responses.create(model=OLLAMA, input="hi", **fields).output_text == "Hello, world!"


def test_stream_null_is_a_whole_response(client: openai.OpenAI, fakes: Fakes) -> None:
    # The SDKs' non-streaming params type it ``Optional[Literal[False]]``.
    assert client.responses.create(model=OLLAMA, input="hi", stream=None).output_text == "Hello, world!"
    assert fakes.ollama.last.json["stream"] is False


def test_a_bad_body_is_an_openai_shaped_400(service: str) -> None:
    answer = httpx.post(f"{service}/v1/responses", json={"model": OLLAMA, "input": 42})
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error" and "input" in error["message"]


#: A lone surrogate (valid JSON, not valid Unicode) wherever the body has text: each a 400 naming where.
LONE_SURROGATE = {
    "input": ('"\\ud800"', "Invalid request: input: "),
    "a text part": (
        '[{"role": "user", "content": [{"type": "input_text", "text": "\\ud800"}]}]',
        "Invalid request: input.0.content.0.text: ",
    ),
    "a tool output": (
        '[{"type": "function_call_output", "call_id": "c", "output": "\\ud800"}]',
        "Invalid request: input.0.output: ",
    ),
}


@pytest.mark.parametrize("case", list(LONE_SURROGATE))
def test_text_that_is_not_unicode_is_a_400_not_a_500(service: str, fakes: Fakes, case: str) -> None:
    items, where = LONE_SURROGATE[case]
    body = f'{{"model": "{OLLAMA}", "input": {items}}}'.encode()
    answer = httpx.post(f"{service}/v1/responses", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert "lone surrogate" in error["message"] and error["message"].startswith(where)
    assert fakes.ollama.requests == []


def test_a_call_name_that_is_not_unicode_is_a_400_naming_it(service: str, fakes: Fakes) -> None:
    items = '[{"type": "function_call", "call_id": "c", "name": "\\ud800", "arguments": "{}"}]'
    body = f'{{"model": "{OLLAMA}", "input": {items}}}'.encode()
    answer = httpx.post(f"{service}/v1/responses", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == 400
    assert answer.json()["error"]["message"].startswith("Invalid request: input.0.name: ")  # held to the pattern
    assert fakes.ollama.requests == []


def test_a_body_without_content_type_is_read_as_json_and_another_type_is_a_415(service: str) -> None:
    body = orjson.dumps({"model": OLLAMA, "input": "hi"})
    plain = httpx.post(f"{service}/v1/responses", content=body, headers={})
    assert plain.status_code == 200 and plain.json()["output"][0]["content"][0]["text"] == "Hello, world!"
    form = httpx.post(f"{service}/v1/responses", content=body, headers={"content-type": "text/plain"})
    assert form.status_code == 415
    assert "Content-Type: application/json" in form.json()["error"]["message"]


def test_more_messages_than_the_limit_are_refused(fakes: Fakes) -> None:
    app = create_app(Settings.from_env(fakes.env(), max_messages=3))
    items = [{"role": "user", "content": str(n)} for n in range(3)]
    with serve_in_thread(app) as url, sdk(url) as client:
        assert client.responses.create(model=OLLAMA, input=items).output_text  # 3 are fine
        with pytest.raises(openai.BadRequestError, match="4 messages are more than the limit of 3"):
            client.responses.create(model=OLLAMA, instructions="Be terse.", input=items)  # + instructions
    assert len(fakes.ollama.requests) == 1


def test_an_unknown_model_is_a_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.create(model="nobody/nothing", input="hi")
    assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "model_not_found"


# --- upstream failures, before and after the first byte -------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_upstream_429_is_a_rate_limit_error(client: openai.OpenAI, fakes: Fakes, stream: bool) -> None:
    fakes.ollama.script(Reply(fault=Fault.status(429, retry_after=7)))
    with pytest.raises(openai.RateLimitError) as caught:
        client.responses.create(model=OLLAMA, input="hi", stream=stream)
    assert caught.value.response.headers["retry-after"] == "7"


def test_upstream_500_is_a_502(client: openai.OpenAI, fakes: Fakes) -> None:
    fakes.ollama.default = Reply(fault=Fault.status(500))  # every attempt: the gateway retries 5xx
    with pytest.raises(openai.InternalServerError) as caught:
        client.responses.create(model=OLLAMA, input="hi")
    assert caught.value.status_code == 502
    assert isinstance(caught.value.body, dict) and "ollama" in caught.value.body["message"]


def test_an_error_after_the_stream_started_is_raised_by_the_sdk(client: openai.OpenAI, fakes: Fakes) -> None:
    fakes.ollama.script(Reply(tokens=["one", " two", " three"], fault=Fault.error_after(2)))
    received: list[str] = []
    with pytest.raises(openai.APIError) as caught:
        for event in client.responses.create(model=OLLAMA, input="hi", stream=True):
            if event.type == "response.output_text.delta":
                received.append(event.delta)
    assert "".join(received) == "one two"
    assert "ollama" in caught.value.message


def test_the_sdk_stream_helper_raises_a_failure_too(client: openai.OpenAI, fakes: Fakes) -> None:
    fakes.ollama.script(Reply(tokens=["one", " two"], fault=Fault.error_after(1)))
    with pytest.raises(openai.APIError, match="ollama"), client.responses.stream(model=OLLAMA, input="hi") as stream:
        stream.until_done()


def test_the_failure_on_the_wire_is_error_then_response_failed(service: str, fakes: Fakes) -> None:
    fakes.ollama.script(Reply(tokens=["one", " two"], fault=Fault.drop_after(1)))
    body = {"model": OLLAMA, "input": "hi", "stream": True}
    with httpx.stream("POST", f"{service}/v1/responses", json=body) as response:
        lines = [line for line in response.read().decode().splitlines() if line.startswith("event: ")]
    assert lines[-2:] == ["event: error", "event: response.failed"]
    assert "event: response.completed" not in lines


def test_a_non_streamed_failure_midway_is_a_502(client: openai.OpenAI, fakes: Fakes) -> None:
    # Asked for a whole reply, Ollama answers a runner failing mid-generation with an error status, which is
    # retried (nothing reached the client yet): it fails on every attempt here.
    fakes.ollama.default = Reply(tokens=["one", " two"], fault=Fault.error_after(1))
    with pytest.raises(openai.InternalServerError) as caught:
        client.responses.create(model=OLLAMA, input="hi")
    assert caught.value.status_code == 502
    assert fakes.ollama.last.json["stream"] is False


def test_closing_the_stream_closes_the_upstream(client: openai.OpenAI, fakes: Fakes) -> None:
    fakes.ollama.script(Reply(tokens=["t"] * 50, delay=0.05))
    stream = client.responses.create(model=OLLAMA, input="hi", stream=True)
    assert next(iter(stream)).type == "response.created"
    stream.close()
    assert fakes.ollama.wait_for_disconnects(1) == 1


# --- the same keys, fallbacks and metrics as every other route --------------------------------------


def test_keys_and_model_policy_apply(fakes: Fakes, tmp_path: Path) -> None:
    (tmp_path / "keys.toml").write_text('[[keys]]\nkey = "narrow-key"\nmodels = ["open/*"]\n')
    (tmp_path / "catalogue.toml").write_text(
        '[server]\nkeys_file = "keys.toml"\n'
        + model_toml("open", "tiny", upstream="tiny:1b")
        + model_toml("closed", "small", upstream="small:1b")
    )
    app = create_app(Settings.from_env(fakes.env()), load_catalogue(tmp_path / "catalogue.toml"))
    with serve_in_thread(app) as url, sdk(url, api_key="narrow-key") as client, sdk(url, api_key="wrong") as wrong:
        assert client.responses.create(model="open/tiny", input="hi").output_text == "Hello, world!"
        with pytest.raises(openai.PermissionDeniedError):
            client.responses.create(model="closed/small", input="hi")
        with pytest.raises(openai.AuthenticationError):
            wrong.responses.create(model="open/tiny", input="hi")
    assert [r.json["model"] for r in fakes.ollama.requests] == ["tiny:1b"]


def test_a_fallback_answers_and_is_named(fakes: Fakes, tmp_path: Path) -> None:
    (tmp_path / "catalogue.toml").write_text(
        "[providers.ollama]\nmax_retries = 0\n"
        + model_toml("acme", "primary", upstream="primary:1b", extra='fallbacks = ["acme/backup"]')
        + model_toml("acme", "backup", upstream="backup:1b")
    )
    fakes.ollama.script(Reply(fault=Fault.status(503)), Reply(tokens=["saved"]))
    app = create_app(Settings.from_env(fakes.env()), load_catalogue(tmp_path / "catalogue.toml"))
    with serve_in_thread(app) as url, sdk(url) as client:
        raw = client.responses.with_raw_response.create(model="acme/primary", input="hi")
        response = raw.parse()
        metrics = httpx.get(f"{url}/metrics").text
    assert raw.headers["x-modelgate-model"] == "acme/backup"
    assert response.model == "acme/backup" and response.output_text == "saved"
    assert [r.json["model"] for r in fakes.ollama.requests] == ["primary:1b", "backup:1b"]
    assert sample(metrics, "modelgate_http_requests_total", route="/v1/responses", method="POST", status="200") == 1
    assert (
        sample(metrics, "modelgate_upstream_requests_total", provider="ollama", model="acme/backup", outcome="ok") == 1
    )
    assert (
        sample(metrics, "modelgate_upstream_requests_total", provider="ollama", model="acme/primary", outcome="ok") == 0
    )


def test_a_fallback_the_key_may_not_use_is_skipped(fakes: Fakes, tmp_path: Path) -> None:
    """The shared opening path admits each fallback like a direct call (issue 11 #2), here too."""
    settings = Settings(config_path=policy.catalogue(tmp_path), probe_interval=0, **fakes.settings_overrides())  # type: ignore[arg-type]
    fakes.ollama.models = {"secret:1b", "open:1b"}  # a/fb fails; a/secret (not for this key) and a/open answer
    with serve_in_thread(create_app(settings)) as url, sdk(url, api_key=policy.KEYS["narrow"]) as client:
        raw = client.responses.with_raw_response.create(model="a/fb", input="hi")
        assert raw.parse().model == raw.headers["x-modelgate-model"] == "a/open"
    assert policy.asked(fakes.ollama, "secret:1b") == 0


# --- the README ---------------------------------------------------------------------------------------


def test_the_readme_example_works_against_the_service(fakes: Fakes, capsys: pytest.CaptureFixture[str]) -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    start = readme.index("\n### Responses API (`POST /v1/responses`, stateless)\n")
    found = re.search(r"```python\n(.*?)```", readme[start:], re.S)
    assert found, "the section has no python example"
    fakes.huggingface.script(Reply(tokens=["Hi", " there", "!"]))
    with serve_in_thread(create_app(Settings.from_env(fakes.env()))) as url:
        exec(compile(found.group(1).replace("http://127.0.0.1:8000", url), "README.md", "exec"), {})
    assert capsys.readouterr().out == "Hi there!\n"
    sent = fakes.huggingface.last.json  # the HF router: Chat Completions
    assert sent["max_tokens"] == 256
    assert sent["messages"] == [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hello!"}]
