"""Function tools, structured output (``text.format``) and images on ``POST /v1/responses``, end to end: the
official ``openai`` SDK (``client.responses``) → modelgate on loopback → the fakes, each speaking its kind's real
tool-call, structured-output and image format (the same catalogue as ``tests/test_openai_tools.py``).

The Responses items become the chat types ``/v1/chat/completions`` uses, so each kind's fake receives what it
receives there; the answers come back as ``function_call`` output items, validated against the SDK's types."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import httpx
import openai
import pytest
from openai.types.responses import Response, ResponseFunctionToolCall, ResponseStreamEvent
from pydantic import TypeAdapter

from modelgate.app import create_app
from modelgate.settings import Settings
from tests import test_openai_tools as chat_tools
from tests.fakes import Fakes, Reply
from tests.fakes._base import ToolCallScript
from tests.servers import serve_in_thread
from tests.test_openai_tools import ARGUMENTS, CALL, WEATHER_TOOL, Weather, tools_catalogue

#: model id → the fake of its kind: the three OpenAI-compatible kinds, Ollama (whole calls) and Cloudflare.
KINDS = {
    "t/smol": "openai",
    "t/qwen": "huggingface",
    "t/deepseek": "openrouter",
    "t/llava": "ollama",
    "t/cf": "cloudflare",
}
CHAT_COMPATIBLE = ["t/smol", "t/qwen", "t/deepseek"]
#: The Responses shape of ``WEATHER_TOOL``: flat, not nested under ``function``.
TOOL: Any = {"type": "function", **WEATHER_TOOL["function"]}
EVENTS: TypeAdapter[ResponseStreamEvent] = TypeAdapter(ResponseStreamEvent)


# The chat tool tests' server (the tools catalogue over the fakes) and SDK client: the same fixtures.
service = chat_tools.service
client = chat_tools.client


def _calls(*calls: ToolCallScript, tokens: tuple[str, ...] = ()) -> Reply:
    return Reply(tokens=tokens, tool_calls=calls, finish="tool_calls")


def _raw_events(service: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The stream's events as sent, each checked against the SDK's event types."""
    with httpx.stream("POST", f"{service}/v1/responses", json={**body, "stream": True}) as answer:
        assert answer.status_code == 200, answer.read()
        lines = answer.read().decode().splitlines()
    events = [json.loads(line.removeprefix("data: ")) for line in lines if line.startswith("data: ")]
    for event in events:
        EVENTS.validate_python(event)
    return events


# --- tool calls out -------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", list(KINDS))
def test_a_tool_call_is_a_function_call_item(client: openai.OpenAI, fakes: Fakes, model: str) -> None:
    fake = fakes[KINDS[model]]
    fake.script(_calls(CALL))
    raw = client.responses.with_raw_response.create(model=model, input="Weather in Zürich?", tools=[TOOL])
    Response.model_validate(raw.http_response.json())  # every field as the SDK's type declares it
    response = raw.parse()
    assert response.status == "completed"
    [call] = response.output
    assert isinstance(call, ResponseFunctionToolCall)
    assert call.name == "get_weather" and call.status == "completed"
    assert json.loads(call.arguments) == json.loads(ARGUMENTS)
    assert call.id is not None and call.id.startswith("fc_")
    # The OpenAI-compatible kinds keep the upstream's call id; Ollama and Cloudflare get one made for them.
    assert call.call_id == "call_w1" if model in CHAT_COMPATIBLE else call.call_id.startswith("call_")
    assert response.output_text == ""
    assert [tool.type for tool in response.tools] == ["function"] and response.tool_choice == "auto"
    assert fake.last.json["tools"] == [WEATHER_TOOL]  # each kind's own tools, as from /v1/chat/completions


@pytest.mark.parametrize("model", ["t/deepseek", "t/llava"])
def test_a_streamed_tool_call_is_the_documented_event_sequence(service: str, fakes: Fakes, model: str) -> None:
    """OpenRouter streams argument fragments; Ollama's call arrives whole. Both are one function_call item."""
    fakes[KINDS[model]].script(_calls(CALL))
    events = _raw_events(service, {"model": model, "input": "Weather?", "tools": [TOOL]})
    types = [e["type"] for e in events]
    assert types[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert types[-3:] == ["response.function_call_arguments.done", "response.output_item.done", "response.completed"]
    assert set(types[3:-3]) == {"response.function_call_arguments.delta"}
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    added, done = events[2], events[-2]
    assert added["output_index"] == done["output_index"] == 0
    assert added["item"]["type"] == "function_call" and added["item"]["arguments"] == ""
    assert added["item"]["status"] == "in_progress" and added["item"]["name"] == "get_weather"
    item_id = added["item"]["id"]
    deltas = [e for e in events if e["type"] == "response.function_call_arguments.delta"]
    assert all(e["item_id"] == item_id and e["output_index"] == 0 for e in deltas)
    arguments = "".join(e["delta"] for e in deltas)
    assert json.loads(arguments) == json.loads(ARGUMENTS)
    assert events[-3]["arguments"] == arguments and events[-3]["item_id"] == item_id
    assert done["item"] == {**added["item"], "arguments": arguments, "status": "completed"}
    assert events[-1]["response"]["output"] == [done["item"]]
    if model == "t/deepseek":
        assert len(deltas) > 1  # the upstream's fragments, passed on as they came


def test_text_before_a_call_is_its_own_message_item(service: str, fakes: Fakes) -> None:
    fakes.openrouter.script(_calls(CALL, tokens=("Let me ", "check.")))
    events = _raw_events(service, {"model": "t/deepseek", "input": "Weather?", "tools": [TOOL]})
    items = [(e["output_index"], e["item"]["type"]) for e in events if e["type"] == "response.output_item.done"]
    assert items == [(0, "message"), (1, "function_call")]
    types = [e["type"] for e in events]
    # The message is closed before the call's item opens.
    assert types.index("response.output_text.done") < types.index("response.output_item.added", 3)
    output = events[-1]["response"]["output"]
    assert output[0]["content"][0]["text"] == "Let me check." and output[1]["name"] == "get_weather"


def test_two_calls_in_one_reply_are_two_items(client: openai.OpenAI, fakes: Fakes) -> None:
    second = ToolCallScript(name="get_weather", arguments='{"city": "Bern"}', id="call_w2")
    fakes.openai.script(_calls(CALL, second), _calls(CALL, second))
    response = client.responses.create(model="t/smol", input="Zürich and Bern?", tools=[TOOL])
    assert [(item.type, getattr(item, "call_id", None)) for item in response.output] == [
        ("function_call", "call_w1"),
        ("function_call", "call_w2"),
    ]
    with client.responses.create(model="t/smol", input="Zürich and Bern?", tools=[TOOL], stream=True) as stream:
        events = list(stream)
    done = [e for e in events if e.type == "response.output_item.done"]
    assert [(e.output_index, e.item.call_id) for e in done] == [(0, "call_w1"), (1, "call_w2")]  # type: ignore[union-attr]


def test_the_sdk_stream_helper_assembles_the_call(client: openai.OpenAI, fakes: Fakes) -> None:
    fakes.openrouter.script(_calls(CALL))
    with client.responses.stream(model="t/deepseek", input="Weather?", tools=[TOOL]) as stream:
        deltas = [e.delta for e in stream if e.type == "response.function_call_arguments.delta"]
        final = stream.get_final_response()
    [call] = final.output
    assert isinstance(call, ResponseFunctionToolCall) and call.arguments == "".join(deltas) == ARGUMENTS


# --- tool results back in: the two-turn loop ------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", CHAT_COMPATIBLE)
def test_two_turn_tool_loop(client: openai.OpenAI, fakes: Fakes, model: str, stream: bool) -> None:
    fake = fakes[KINDS[model]]
    fake.script(_calls(CALL), Reply(tokens=["It is ", "21 degrees."]))
    conversation: list[Any] = [{"role": "user", "content": "Weather in Zürich?"}]
    if stream:
        with client.responses.stream(model=model, input=conversation, tools=[TOOL]) as events:
            first = events.get_final_response()
    else:
        first = client.responses.create(model=model, input=conversation, tools=[TOOL])
    [call] = first.output
    assert isinstance(call, ResponseFunctionToolCall)
    # The SDK's documented loop: the output items go back as input, then each call's output.
    conversation += [item.model_dump(exclude_none=True) for item in first.output]
    conversation.append({"type": "function_call_output", "call_id": call.call_id, "output": "21 degrees"})
    second = client.responses.create(model=model, input=conversation, tools=[TOOL], store=False)
    assert second.output_text == "It is 21 degrees."
    sent = fake.last.json["messages"]
    assert sent[1]["role"] == "assistant"
    assert sent[1]["tool_calls"] == [
        {"id": "call_w1", "type": "function", "function": {"name": "get_weather", "arguments": ARGUMENTS}}
    ]
    assert sent[2] == {"role": "tool", "content": "21 degrees", "tool_call_id": "call_w1"}
    assert len(sent) == 3


def test_ollama_and_cloudflare_get_their_own_second_turn_shapes(client: openai.OpenAI, fakes: Fakes) -> None:
    turn: Any = [
        {"role": "user", "content": "Weather?"},
        {"type": "function_call", "call_id": "call_9", "name": "get_weather", "arguments": ARGUMENTS},
        {"type": "function_call_output", "call_id": "call_9", "output": [{"type": "input_text", "text": "21"}]},
    ]
    fakes.ollama.script(Reply(tokens=["21 degrees."]))
    assert client.responses.create(model="t/llava", input=turn, tools=[TOOL]).output_text == "21 degrees."
    sent = fakes.ollama.last.json["messages"]
    assert sent[1] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"id": "call_9", "function": {"name": "get_weather", "arguments": json.loads(ARGUMENTS)}}],
    }
    assert sent[2] == {"role": "tool", "content": "21", "tool_name": "get_weather", "tool_call_id": "call_9"}
    fakes.cloudflare.script(Reply(tokens=["21 degrees."]))
    client.responses.create(model="t/cf", input=turn, tools=[TOOL])
    sent = fakes.cloudflare.last.json["messages"]
    assert sent[2] == {
        "role": "tool",
        "content": "21",
        "name": "get_weather",
        "tool_call_id": sent[1]["tool_calls"][0]["id"],
    }


def test_text_and_calls_of_one_turn_are_one_assistant_message(client: openai.OpenAI, fakes: Fakes) -> None:
    turn: Any = [
        {"role": "user", "content": "Weather in Zürich and Bern?"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
        {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": '{"city": "Zürich"}'},
        {"type": "function_call", "call_id": "c2", "name": "get_weather", "arguments": '{"city": "Bern"}'},
        {"type": "function_call_output", "call_id": "c1", "output": "21"},
        {"type": "function_call_output", "call_id": "c2", "output": "19"},
    ]
    client.responses.create(model="t/smol", input=turn, tools=[TOOL])
    sent = fakes.openai.last.json["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool", "tool"]
    assert sent[1]["content"] == "Checking."
    assert [c["id"] for c in sent[1]["tool_calls"]] == ["c1", "c2"]


# --- tool controls ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("choice", "upstream"),
    [
        ("required", "required"),
        ("none", "none"),
        ({"type": "function", "name": "get_weather"}, {"type": "function", "function": {"name": "get_weather"}}),
    ],
)
def test_tool_choice_and_parallel_calls_are_passed_on(
    client: openai.OpenAI, fakes: Fakes, choice: Any, upstream: Any
) -> None:
    response = client.responses.create(
        model="t/smol", input="hi", tools=[TOOL], tool_choice=choice, parallel_tool_calls=False
    )
    sent = fakes.openai.last.json
    assert sent["tool_choice"] == upstream
    assert sent["parallel_tool_calls"] is False
    assert response.parallel_tool_calls is False
    echoed = response.tool_choice if isinstance(response.tool_choice, str) else response.tool_choice.model_dump()
    assert echoed == choice


def test_tool_controls_ollama_cannot_enforce_are_reported(client: openai.OpenAI) -> None:
    raw = client.responses.with_raw_response.create(
        model="t/llava", input="hi", tools=[TOOL], tool_choice="required", parallel_tool_calls=False
    )
    assert raw.headers["x-modelgate-dropped-params"] == "parallel_tool_calls,tool_choice"


def test_strict_tools_ollama_cannot_enforce_are_reported(client: openai.OpenAI) -> None:
    raw = client.responses.with_raw_response.create(model="t/llava", input="hi", tools=[{**TOOL, "strict": True}])
    assert raw.headers["x-modelgate-dropped-params"] == "tools.strict"


REFUSED: dict[str, tuple[str, dict[str, Any], str, list[str]]] = {
    "hosted tool": ("t/smol", {"tools": [{"type": "web_search"}]}, "tools", ["'web_search'", "t/smol"]),
    "function tool field": (
        "t/smol",
        {"tools": [{**TOOL, "defer_loading": True}]},
        "tools",
        ["defer_loading", "not supported"],
    ),
    "tool without name": ("t/smol", {"tools": [{"type": "function"}]}, "tools", ["tools[0].name"]),
    "unknown named function": (
        "t/smol",
        {"tools": [TOOL], "tool_choice": {"type": "function", "name": "other"}},
        "tool_choice",
        ["'other' is not one of the tools"],
    ),
    "max_tool_calls": ("t/smol", {"tools": [TOOL], "max_tool_calls": 2}, "max_tool_calls", ["t/smol"]),
    "required without tools": ("t/smol", {"tool_choice": "required"}, "tool_choice", ["only allowed when tools"]),
    "tool_choice field beyond type and name": (
        "t/smol",
        {"tools": [TOOL], "tool_choice": {"type": "function", "name": "get_weather", "mode": "auto"}},
        "tool_choice",
        ["tool_choice: mode: not supported", "t/smol"],
    ),
    "function_call_output without its call": (
        "t/smol",
        {
            "input": [
                {"role": "user", "content": "Weather?"},
                {"type": "function_call_output", "call_id": "call_nope", "output": "21"},
            ]
        },
        "input",
        ["input[1].call_id", "'call_nope'", "no earlier function_call"],
    ),
    "allowed_tools choice": (
        "t/smol",
        {"tools": [TOOL], "tool_choice": {"type": "allowed_tools", "mode": "auto", "tools": []}},
        "tool_choice",
        ["'allowed_tools'"],
    ),
    "custom tool call item": (
        "t/smol",
        {"input": [{"type": "custom_tool_call", "call_id": "c", "name": "x", "input": "1"}]},
        "input",
        ["custom_tool_call", "only function tools"],
    ),
    "function_call without call_id": (
        "t/smol",
        {"input": [{"type": "function_call", "name": "get_weather", "arguments": "{}"}]},
        "input",
        ["input[0]", "call_id"],
    ),
    "image in a tool output held to an image's limits": (
        "t/smol",
        {
            "input": [
                {"type": "function_call", "call_id": "c", "name": "get_weather", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c", "output": [{"type": "input_image", "image_url": "x"}]},
            ]
        },
        "input",
        ["input[1].output[0]", "data: URL or an https: URL"],
    ),
    "file in a tool output": (
        "t/smol",
        {
            "input": [
                {"type": "function_call", "call_id": "c", "name": "get_weather", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c", "output": [{"type": "input_file", "file_id": "f"}]},
            ]
        },
        "input",
        ["input[1].output[0]", "'input_file'", "send input_text or input_image"],
    ),
    "tools on a model without them": ("t/plain", {"tools": [TOOL]}, "tools", ["t/plain", "'tools'"]),
    "tool results on a model without tools": (
        "t/plain",
        {
            "input": [
                {"role": "user", "content": "hi"},
                {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c", "output": "1"},
            ]
        },
        "tools",
        ["t/plain", "'tools'"],
    ),
    "a call named outside OpenAI's pattern": (
        "t/smol",
        {
            "input": [
                {"type": "function_call", "call_id": "c", "name": "bad name!", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c", "output": "1"},
            ]
        },
        "input.0.name",
        ["Invalid request: input.0.name: String should match pattern"],
    ),
    "tools on TGI": ("t/tgi", {"tools": [TOOL]}, "tools", ["t/tgi", "tool calling"]),
    "json on a model without it": (
        "t/plain",
        {"text": {"format": {"type": "json_object"}}},
        "text.format",
        ["t/plain", "'json'"],
    ),
    "json_schema without schema": (
        "t/smol",
        {"text": {"format": {"type": "json_schema", "name": "x"}}},
        "text.format",
        ["text.format.schema: required"],
    ),
    "image on a model without vision": (
        "t/plain",
        {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "https://x.org/y.png"}]}]},
        "input",
        ["t/plain", "'vision'"],
    ),
    "image by file id": (
        "t/deepseek",
        {"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file_1", "detail": "auto"}]}]},
        "input",
        ["input[0].content[0].image_url", "files are not stored"],
    ),
    "image detail original": (
        "t/deepseek",
        {
            "input": [
                {"role": "user", "content": [{"type": "input_image", "image_url": "https://x/y", "detail": "original"}]}
            ]
        },
        "input",
        ["'original' is not supported"],
    ),
    "image from http": (
        "t/deepseek",
        {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x.org/y.png"}]}]},
        "input",
        ["data: URL or an https: URL"],
    ),
    "remote image for Ollama": (
        "t/llava",
        {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "https://x.org/y.png"}]}]},
        "input",
        ["t/llava", "does not fetch"],
    ),
    "file": (
        "t/deepseek",
        {"input": [{"role": "user", "content": [{"type": "input_file", "file_url": "https://x.org/a.pdf"}]}]},
        "input",
        ["input_file: file input is not supported", "t/deepseek"],
    ),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_what_cannot_be_carried_is_a_400_before_any_upstream_call(
    client: openai.OpenAI, fakes: Fakes, case: str
) -> None:
    model, fields, param, words = REFUSED[case]
    body: dict[str, Any] = {"model": model, "input": "hi", **fields}
    with pytest.raises(openai.BadRequestError) as caught:
        client.post("/responses", cast_to=Response, body=body)
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["param"] == param
    for word in words:
        assert word in error["message"]
    assert all(fake.requests == [] for fake in (fakes[kind] for kind in set(KINDS.values())))


@pytest.mark.parametrize("value", ["100000000000000000000000000000", '"\\ud800"'])
@pytest.mark.parametrize("stream", [False, True])
def test_a_tool_choice_extra_no_upstream_request_can_carry_is_a_400(
    service: str, fakes: Fakes, value: str, stream: bool
) -> None:
    # Echoed in the response, such a value was a 500 (or a cut stream) after the upstream call.
    choice = {"type": "function", "name": "get_weather", "x": "VALUE"}
    body = {"model": "t/smol", "input": "hi", "stream": stream, "tools": [TOOL], "tool_choice": choice}
    raw = json.dumps(body).replace('"VALUE"', value)  # as they come on the wire
    answer = httpx.post(f"{service}/v1/responses", content=raw, headers={"content-type": "application/json"})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == "tool_choice"
    assert "x: not supported" in answer.json()["error"]["message"]
    assert fakes.openai.requests == []


# --- structured output -----------------------------------------------------------------------------------


@pytest.mark.parametrize("model", [*CHAT_COMPATIBLE, "t/llava", "t/cf", "t/tgi"])
def test_parse_returns_the_pydantic_object(client: openai.OpenAI, fakes: Fakes, model: str) -> None:
    fake = fakes[KINDS.get(model, "huggingface")]
    fake.script(Reply(tokens=['{"city": ', '"Zürich", "degrees": 21}']))
    response = client.responses.parse(model=model, input="Weather in Zürich?", text_format=Weather)
    assert response.output_parsed == Weather(city="Zürich", degrees=21)
    assert response.text is not None and response.text.format is not None
    assert response.text.format.type == "json_schema"
    sent = fake.last.json
    schema = {
        "t/llava": lambda: sent["format"],
        "t/cf": lambda: sent["response_format"]["json_schema"],
        "t/tgi": lambda: sent["parameters"]["grammar"]["value"],
    }.get(model, lambda: sent["response_format"]["json_schema"]["schema"])()
    assert schema["required"] == ["city", "degrees"]  # each kind's own structured output field
    if model in CHAT_COMPATIBLE:
        assert sent["response_format"]["json_schema"]["name"] == "Weather"
        assert sent["response_format"]["json_schema"]["strict"] is True


def test_the_schema_description_is_passed_on(client: openai.OpenAI, fakes: Fakes) -> None:
    fakes.openai.script(Reply(tokens=['{"city": "Zürich", "degrees": 21}']))
    text_format: Any = {
        "type": "json_schema",
        "name": "Weather",
        "description": "The weather in the city asked about",
        "schema": Weather.model_json_schema(),
    }
    client.responses.create(model="t/smol", input="Weather in Zürich?", text={"format": text_format})
    sent = fakes.openai.last.json["response_format"]["json_schema"]
    assert sent["description"] == "The weather in the city asked about"
    assert sent["name"] == "Weather"


def test_json_object_is_passed_on(client: openai.OpenAI, fakes: Fakes) -> None:
    fakes.openai.script(Reply(tokens=['{"ok": true}']))
    response = client.responses.create(model="t/smol", input="JSON please", text={"format": {"type": "json_object"}})
    assert json.loads(response.output_text) == {"ok": True}
    assert fakes.openai.last.json["response_format"] == {"type": "json_object"}


# --- images ----------------------------------------------------------------------------------------------

PNG = "data:image/png;base64,iVBORw0KGgo="


def test_image_parts_reach_an_openai_compatible_upstream(client: openai.OpenAI, fakes: Fakes) -> None:
    content: Any = [
        {"type": "input_text", "text": "What is this?"},
        {"type": "input_image", "image_url": PNG, "detail": "low"},
        {"type": "input_image", "image_url": "https://example.org/cat.png", "detail": "auto"},
    ]
    client.responses.create(model="t/deepseek", input=[{"role": "user", "content": content}])
    assert fakes.openrouter.last.json["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": PNG, "detail": "low"}},
                {"type": "image_url", "image_url": {"url": "https://example.org/cat.png", "detail": "auto"}},
            ],
        }
    ]


def test_images_reach_ollama_as_base64(client: openai.OpenAI, fakes: Fakes) -> None:
    content: Any = [{"type": "input_text", "text": "What is this?"}, {"type": "input_image", "image_url": PNG}]
    client.responses.create(model="t/llava", input=[{"role": "user", "content": content}])
    assert fakes.ollama.last.json["messages"] == [
        {"role": "user", "content": "What is this?", "images": ["iVBORw0KGgo="]}
    ]


def _image(decoded_bytes: int) -> Any:
    data = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * (decoded_bytes - 8)).decode()  # a PNG's first bytes
    return {"type": "input_image", "image_url": f"data:image/png;base64,{data}"}


@pytest.mark.parametrize(("images", "words"), [([120], ["per image", "100 bytes"]), ([72, 72, 72], ["150 bytes"])])
def test_image_limits_are_the_chat_limits(fakes: Fakes, images: list[int], words: list[str]) -> None:
    settings = Settings(**fakes.settings_overrides(), max_image_bytes=100, max_images_bytes=150)  # type: ignore[arg-type]
    content = [{"type": "input_text", "text": "Look"}, *(_image(size) for size in images)]
    with (
        serve_in_thread(create_app(settings, tools_catalogue(fakes))) as url,
        openai.OpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0) as sdk,
    ):
        with pytest.raises(openai.APIStatusError) as caught:
            sdk.responses.create(model="t/deepseek", input=[{"role": "user", "content": content}])
        assert caught.value.status_code == 413
        body = caught.value.body
        assert isinstance(body, dict) and all(word in body["message"] for word in words)
        assert fakes.openrouter.requests == []


# --- an agent framework over the Responses API ------------------------------------------------------------


def test_pydantic_ai_responses_model_output_type(service: str, fakes: Fakes) -> None:
    """pydantic-ai's ``OpenAIResponsesModel``: its default structured output is a ``final_result`` function tool
    the model calls, sent flat, as the Responses API defines tools."""
    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIResponsesModel
    from pydantic_ai.providers.openai import OpenAIProvider

    arguments = json.dumps({"city": "Zürich", "degrees": 21})
    fakes.openai.script(_calls(ToolCallScript("final_result", arguments, "call_f")))

    async def run() -> Weather:
        # Our own client, closed in the loop that used it (run_sync would leave its connections open).
        async with openai.AsyncOpenAI(base_url=f"{service}/v1", api_key="test-key", max_retries=0) as sdk:
            model = OpenAIResponsesModel("t/smol", provider=OpenAIProvider(openai_client=sdk))
            result = await Agent(model, output_type=Weather).run("Weather in Zürich?")
            return result.output

    assert asyncio.run(run()) == Weather(city="Zürich", degrees=21)
    assert [t["function"]["name"] for t in fakes.openai.last.json["tools"]] == ["final_result"]
