"""Tools, structured output and images on ``/v1/chat/completions``, end to end with the official clients
(``openai``, pydantic-ai) → modelgate on loopback → the fakes, which speak each kind's real format.

The three OpenAI-compatible kinds (an ``openai`` instance, the HF router, OpenRouter) share one wire module;
each is run through the same tool loop, since each fake frames tool calls its own way (OpenRouter with
``content: null`` beside argument fragments)."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import tomllib
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from pydantic import BaseModel

from modelgate.app import create_app
from modelgate.catalogue import Catalogue, parse_catalogue
from modelgate.settings import Settings
from tests.fakes import Fakes, Fault, Reply
from tests.fakes._base import FakeUpstream, ToolCallScript
from tests.servers import serve_in_thread

ALL = '["tools", "json", "vision"]'


def _model(name: str, provider: str, upstream: str, capabilities: str = ALL, extra: str = "") -> str:
    return f"""
[[models]]
publisher = "t"
name = "{name}"
provider = "{provider}"
type = "chat"
capabilities = {capabilities}
{extra}
[models.configuration]
model = "{upstream}"
[models.configuration.parameters]
max_new_tokens = 64
typical_p = -1
repetition_penalty = -1
truncate = 2048
"""


def tools_catalogue(fakes: Fakes) -> Catalogue:
    text = f"""
[providers.llama]
kind = "openai"
base_url = "{fakes.openai.url}"

[providers.tgi-local]
kind = "huggingface"
api = "tgi"
base_url = "{fakes.huggingface.url}"
""" + "".join(
        (
            _model("smol", "llama", "HuggingFaceTB/SmolLM2-135M-Instruct"),
            _model("qwen", "huggingface", "Qwen/Qwen2.5-72B-Instruct", '["tools", "json"]'),
            _model("deepseek", "openrouter", "deepseek/deepseek-chat:free"),
            _model("plain", "llama", "HuggingFaceTB/SmolLM2-135M-Instruct", "[]"),
            _model("llava", "ollama", "llava:7b"),
            _model("cf", "cloudflare", "@cf/meta/llama-3.3-70b-instruct-fp8-fast", '["tools", "json"]'),
            _model("cf-mistral", "cloudflare", "@cf/mistralai/mistral-small-3.1-24b-instruct", '["tools"]'),
            _model("tgi", "tgi-local", "Qwen/Qwen2.5-72B-Instruct", '["tools", "json"]', 'template = "chatml"'),
        )
    )
    return parse_catalogue(tomllib.loads(text), source="tools.toml")


#: model id → the fake of its kind.
KINDS = {"t/smol": "openai", "t/qwen": "huggingface", "t/deepseek": "openrouter"}

WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
ARGUMENTS = '{"city": "Zürich", "unit": "celsius"}'
#: A conversation one tool call in: the call (with our id) and the tool's answer, as an SDK sends it back.
SECOND_TURN: Any = [
    {"role": "user", "content": "Weather?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_9", "type": "function", "function": {"name": "get_weather", "arguments": ARGUMENTS}}
        ],
    },
    {"role": "tool", "tool_call_id": "call_9", "content": "21"},
]
CALL = ToolCallScript(name="get_weather", arguments=ARGUMENTS, id="call_w1")


@pytest.fixture
def service(fakes: Fakes) -> Iterator[str]:
    settings = Settings(**fakes.settings_overrides())  # type: ignore[arg-type]
    with serve_in_thread(create_app(settings, tools_catalogue(fakes))) as url:
        yield url


@pytest.fixture
def client(service: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{service}/v1", api_key="test-key", max_retries=0) as sdk:
        yield sdk


def _fake(fakes: Fakes, model: str) -> FakeUpstream:
    return fakes[KINDS[model]]


def _tool_call_reply() -> Reply:
    return Reply(tokens=(), tool_calls=(CALL,), finish="tool_calls")


def _second_turn_checks(fake: FakeUpstream) -> None:
    """The second request carries the assistant's call and the tool's answer as the OpenAI reference has them."""
    sent = fake.last.json
    assistant, tool = sent["messages"][1], sent["messages"][2]
    assert assistant["role"] == "assistant"
    assert assistant["tool_calls"] == [
        {"id": "call_w1", "type": "function", "function": {"name": "get_weather", "arguments": ARGUMENTS}}
    ]
    assert tool == {"role": "tool", "content": "21 degrees", "tool_call_id": "call_w1"}
    assert sent["tools"] == [WEATHER_TOOL]


@pytest.mark.parametrize("model", list(KINDS))
def test_two_turn_tool_loop(client: openai.OpenAI, fakes: Fakes, model: str) -> None:
    fake = _fake(fakes, model)
    fake.script(_tool_call_reply(), Reply(tokens=["It is ", "21 degrees."]))
    messages: list[Any] = [{"role": "user", "content": "Weather in Zürich?"}]
    first = client.chat.completions.create(
        model=model, messages=messages, tools=[WEATHER_TOOL], tool_choice="auto", parallel_tool_calls=False
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls
    assert calls is not None and len(calls) == 1
    call = calls[0]
    assert call.type == "function"
    assert (call.id, call.function.name, call.function.arguments) == ("call_w1", "get_weather", ARGUMENTS)
    sent = fake.last.json
    assert sent["tools"] == [WEATHER_TOOL]
    assert sent["tool_choice"] == "auto"
    assert sent["parallel_tool_calls"] is False

    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "21 degrees"},
    ]
    second = client.chat.completions.create(model=model, messages=messages, tools=[WEATHER_TOOL])
    assert second.choices[0].message.content == "It is 21 degrees."
    assert second.choices[0].finish_reason == "stop"
    _second_turn_checks(fake)


@pytest.mark.parametrize("model", list(KINDS))
def test_two_turn_tool_loop_streamed(client: openai.OpenAI, fakes: Fakes, model: str) -> None:
    """Argument fragments arrive as streamed ``delta.tool_calls`` pieces; the first piece names the call."""
    fake = _fake(fakes, model)
    fake.script(_tool_call_reply(), Reply(tokens=["It is ", "21 degrees."]))
    messages: list[Any] = [{"role": "user", "content": "Weather in Zürich?"}]
    pieces = []
    finish = None
    for chunk in client.chat.completions.create(model=model, messages=messages, tools=[WEATHER_TOOL], stream=True):
        for choice in chunk.choices:
            pieces += choice.delta.tool_calls or []
            finish = choice.finish_reason or finish
    assert finish == "tool_calls"
    assert len(pieces) > 2  # the first piece, then the arguments in fragments
    assert (pieces[0].id, pieces[0].type, pieces[0].function and pieces[0].function.name) == (
        "call_w1",
        "function",
        "get_weather",
    )
    assert all(p.index == 0 for p in pieces)
    assert all(p.id is None for p in pieces[1:])
    assert "".join((p.function.arguments or "") for p in pieces if p.function) == ARGUMENTS

    assistant = {
        "role": "assistant",
        "tool_calls": [
            {"id": "call_w1", "type": "function", "function": {"name": "get_weather", "arguments": ARGUMENTS}}
        ],
    }
    messages += [assistant, {"role": "tool", "tool_call_id": "call_w1", "content": "21 degrees"}]
    text = ""
    for chunk in client.chat.completions.create(model=model, messages=messages, tools=[WEATHER_TOOL], stream=True):
        for choice in chunk.choices:
            text += choice.delta.content or ""
    assert text == "It is 21 degrees."
    _second_turn_checks(fake)


def test_the_sdk_stream_helper_assembles_the_call(client: openai.OpenAI, fakes: Fakes) -> None:
    fakes.openrouter.script(_tool_call_reply())
    with client.chat.completions.stream(
        model="t/deepseek", messages=[{"role": "user", "content": "Weather?"}], tools=[WEATHER_TOOL]
    ) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    calls = final.choices[0].message.tool_calls
    assert calls is not None
    assert calls[0].function.arguments == ARGUMENTS
    assert final.choices[0].finish_reason == "tool_calls"


def test_two_calls_in_one_reply_keep_their_indexes(client: openai.OpenAI, fakes: Fakes) -> None:
    second = ToolCallScript(name="get_weather", arguments='{"city": "Bern"}', id="call_w2")
    fakes.openai.script(Reply(tokens=(), tool_calls=(CALL, second), finish="tool_calls"))
    completion = client.chat.completions.create(
        model="t/smol", messages=[{"role": "user", "content": "Zürich and Bern?"}], tools=[WEATHER_TOOL]
    )
    calls = completion.choices[0].message.tool_calls or []
    assert [(c.id, c.function.arguments) for c in calls] == [("call_w1", ARGUMENTS), ("call_w2", '{"city": "Bern"}')]


class Weather(BaseModel):
    city: str
    degrees: int


@pytest.mark.parametrize("model", list(KINDS))
def test_parse_returns_the_pydantic_object(client: openai.OpenAI, fakes: Fakes, model: str) -> None:
    fake = _fake(fakes, model)
    fake.script(Reply(tokens=['{"city": ', '"Zürich", "degrees": 21}']))
    completion = client.chat.completions.parse(
        model=model, messages=[{"role": "user", "content": "Weather in Zürich?"}], response_format=Weather
    )
    assert completion.choices[0].message.parsed == Weather(city="Zürich", degrees=21)
    sent = fake.last.json["response_format"]
    assert sent["type"] == "json_schema"
    assert sent["json_schema"]["name"] == "Weather"
    assert sent["json_schema"]["strict"] is True
    assert sent["json_schema"]["schema"]["required"] == ["city", "degrees"]


@pytest.mark.parametrize("stream", [False, True])
def test_openrouter_structured_output_goes_only_to_providers_that_honour_it(
    client: openai.OpenAI, fakes: Fakes, stream: bool
) -> None:
    """Without ``provider.require_parameters`` OpenRouter may route to a serving provider that ignores
    ``response_format`` (its fake does): the answer would be free text under a promise of JSON."""
    fakes.openrouter.script(Reply(tokens=['{"city": "Zürich", "degrees": 21}']))
    text = ""
    if stream:
        chunks = client.chat.completions.create(
            model="t/deepseek", messages=[{"role": "user", "content": "Weather?"}], response_format=JSON, stream=True
        )
        text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    else:
        completion = client.chat.completions.create(
            model="t/deepseek", messages=[{"role": "user", "content": "Weather?"}], response_format=JSON
        )
        text = completion.choices[0].message.content or ""
    assert json.loads(text) == {"city": "Zürich", "degrees": 21}
    assert fakes.openrouter.last.json["provider"] == {"require_parameters": True}
    fakes.openrouter.script(Reply(tokens=["Hi"]))
    client.chat.completions.create(model="t/deepseek", messages=[{"role": "user", "content": "Hi"}])
    assert "provider" not in fakes.openrouter.last.json  # other requests are routed as before


JSON: Any = {"type": "json_object"}


def test_the_schema_description_is_passed_on(client: openai.OpenAI, fakes: Fakes) -> None:
    fakes.openai.script(Reply(tokens=['{"city": "Zürich", "degrees": 21}']))
    json_schema: Any = {
        "name": "Weather",
        "description": "The weather in the city asked about",
        "schema": Weather.model_json_schema(),
        "strict": True,
    }
    client.chat.completions.create(
        model="t/smol",
        messages=[{"role": "user", "content": "Weather in Zürich?"}],
        response_format={"type": "json_schema", "json_schema": json_schema},
    )
    sent = fakes.openai.last.json["response_format"]["json_schema"]
    assert sent["description"] == "The weather in the city asked about"
    assert (sent["name"], sent["strict"]) == ("Weather", True)


def test_json_object_mode_is_passed_on(client: openai.OpenAI, fakes: Fakes) -> None:
    fakes.openai.script(Reply(tokens=['{"ok": true}']))
    completion = client.chat.completions.create(
        model="t/smol", messages=[{"role": "user", "content": "JSON please"}], response_format={"type": "json_object"}
    )
    assert json.loads(completion.choices[0].message.content or "") == {"ok": True}
    assert fakes.openai.last.json["response_format"] == {"type": "json_object"}


def test_pydantic_ai_output_type(service: str, fakes: Fakes) -> None:
    """pydantic-ai's default structured output is a ``final_result`` tool the model calls."""
    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    arguments = json.dumps({"city": "Zürich", "degrees": 21})
    fakes.openai.script(
        Reply(tokens=(), tool_calls=(ToolCallScript("final_result", arguments, "call_f"),), finish="tool_calls")
    )

    async def run() -> Weather:
        # Our own client, closed in the loop that used it (run_sync would leave its connections open).
        async with openai.AsyncOpenAI(base_url=f"{service}/v1", api_key="test-key", max_retries=0) as sdk:
            model = OpenAIChatModel("t/smol", provider=OpenAIProvider(openai_client=sdk))
            result = await Agent(model, output_type=Weather).run("Weather in Zürich?")
            return result.output

    assert asyncio.run(run()) == Weather(city="Zürich", degrees=21)
    sent = fakes.openai.last.json
    assert [t["function"]["name"] for t in sent["tools"]] == ["final_result"]


def test_image_parts_are_passed_on(client: openai.OpenAI, fakes: Fakes) -> None:
    image = "data:image/png;base64,iVBORw0KGgo="
    content: Any = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": image, "detail": "low"}},
        {"type": "image_url", "image_url": {"url": "https://example.org/cat.png"}},
    ]
    client.chat.completions.create(model="t/deepseek", messages=[{"role": "user", "content": content}])
    assert fakes.openrouter.last.json["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": image, "detail": "low"}},
                {"type": "image_url", "image_url": {"url": "https://example.org/cat.png"}},
            ],
        }
    ]


#: Two images each with its own words: "compare" needs the text between them where the client put it.
INTERLEAVED: Any = [
    {"type": "text", "text": "Compare this"},
    {"type": "image_url", "image_url": {"url": "https://example.org/a.png"}},
    {"type": "text", "text": "with this"},
    {"type": "image_url", "image_url": {"url": "https://example.org/b.png", "detail": "high"}},
]


def test_text_between_images_keeps_its_place(client: openai.OpenAI, fakes: Fakes) -> None:
    """Found from outside: a message's images were sent after all of its text ("Compare this\\nwith this",
    then both images), so the model could not tell which words went with which image."""
    client.chat.completions.create(model="t/deepseek", messages=[{"role": "user", "content": INTERLEAVED}])
    assert fakes.openrouter.last.json["messages"] == [{"role": "user", "content": INTERLEAVED}]


def test_responses_text_between_images_keeps_its_place(client: openai.OpenAI, fakes: Fakes) -> None:
    content: Any = [
        {"type": "input_image", "image_url": "https://example.org/a.png", "detail": "auto"},
        {"type": "input_text", "text": "is older than"},
        {"type": "input_image", "image_url": "https://example.org/b.png", "detail": "auto"},
    ]
    client.responses.create(model="t/deepseek", input=[{"role": "user", "content": content}])
    assert fakes.openrouter.last.json["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": "https://example.org/a.png", "detail": "auto"}},
                {"type": "text", "text": "is older than"},
                {"type": "image_url", "image_url": {"url": "https://example.org/b.png", "detail": "auto"}},
            ],
        }
    ]


def test_ollama_takes_the_text_and_the_images_apart_as_its_protocol_has_them(
    client: openai.OpenAI, fakes: Fakes
) -> None:
    inline = "data:image/png;base64,iVBORw0KGgo="
    content: Any = [
        {"type": "image_url", "image_url": {"url": inline}},
        {"type": "text", "text": "What is this?"},
    ]
    fakes.ollama.script(Reply(tokens=["a bird"]))
    client.chat.completions.create(model="t/llava", messages=[{"role": "user", "content": content}])
    assert fakes.ollama.last.json["messages"] == [
        {"role": "user", "content": "What is this?", "images": ["iVBORw0KGgo="]}
    ]


@pytest.mark.parametrize(
    ("fields", "capability", "param"),
    [
        ({"tools": [WEATHER_TOOL]}, "'tools'", "tools"),
        ({"response_format": {"type": "json_object"}}, "'json'", "response_format"),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}
                ]
            },
            "'vision'",
            "messages",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "hi"},
                    {
                        "role": "assistant",
                        "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
                    },
                    {"role": "tool", "tool_call_id": "c", "content": "1"},
                ]
            },
            "'tools'",
            "tools",
        ),
    ],
)
def test_a_model_without_the_capability_is_refused_before_any_upstream_call(
    client: openai.OpenAI, fakes: Fakes, fields: dict[str, Any], capability: str, param: str
) -> None:
    fields.setdefault("messages", [{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="t/plain", **fields)
    body = caught.value.body
    assert isinstance(body, dict)
    assert "t/plain" in body["message"]
    assert capability in body["message"]
    assert body["param"] == param
    assert fakes.openai.requests == []


@pytest.mark.parametrize(("model", "kind"), [("t/plain", "openai"), ("t/tgi", "huggingface")])
@pytest.mark.parametrize("stream", [False, True])
def test_tools_declined_with_tool_choice_none_reach_a_model_without_tools_as_a_plain_request(
    client: openai.OpenAI, fakes: Fakes, model: str, kind: str, stream: bool
) -> None:
    # Open WebUI and LangChain agents send their tools on every turn; "none" asks for no tool use, which a model
    # without tool calling (t/plain declares none; TGI's /generate_stream has none) serves as asked.
    fakes[kind].script(Reply(tokens=["Hi", "!"]))
    raw = client.chat.completions.with_raw_response.create(
        model=model,
        messages=[{"role": "user", "content": "hi"}],
        tools=[WEATHER_TOOL],
        tool_choice="none",
        parallel_tool_calls=False,
        stream=stream,
    )
    sent = fakes[kind].last.json
    assert not {"tools", "tool_choice", "parallel_tool_calls"} & set(sent)
    assert "x-modelgate-dropped-params" not in raw.headers  # not using the tools is what the caller chose
    if stream:
        text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    else:
        text = raw.parse().choices[0].message.content or ""
    assert text == "Hi!"


def test_a_fallback_without_the_capability_is_passed_over(fakes: Fakes) -> None:
    catalogue = parse_catalogue(
        tomllib.loads(
            f"""
[providers.llama]
kind = "openai"
base_url = "{fakes.openai.url}"
"""
            + _model("smol", "llama", "a", extra='fallbacks = ["t/plain", "t/deepseek"]')
            + _model("plain", "llama", "b", "[]")
            + _model("deepseek", "openrouter", "deepseek/deepseek-chat:free")
        ),
        source="fallbacks.toml",
    )
    fakes.openai.script(Reply(fault=Fault.status(503)), Reply(fault=Fault.status(503)), Reply(fault=Fault.status(503)))
    fakes.openrouter.script(_tool_call_reply())
    settings = Settings(**fakes.settings_overrides())  # type: ignore[arg-type]
    with (
        serve_in_thread(create_app(settings, catalogue)) as url,
        openai.OpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0) as sdk,
    ):
        raw = sdk.chat.completions.with_raw_response.create(
            model="t/smol", messages=[{"role": "user", "content": "hi"}], tools=[WEATHER_TOOL]
        )
    assert raw.headers["x-modelgate-model"] == "t/deepseek"
    assert all(r.json["model"] == "a" for r in fakes.openai.requests)  # t/plain ("b") never called
    assert raw.parse().choices[0].finish_reason == "tool_calls"


# --- Ollama: whole tool calls, format, base64 images ----------------------------------------------------


def test_ollama_whole_tool_calls_stream_as_pieces_with_generated_ids(client: openai.OpenAI, fakes: Fakes) -> None:
    second = ToolCallScript(name="get_weather", arguments='{"city": "Bern"}')
    fakes.ollama.script(Reply(tokens=(), tool_calls=(CALL, second), finish="tool_calls"))
    pieces = []
    finish = None
    stream = client.chat.completions.create(
        model="t/llava", messages=[{"role": "user", "content": "Weather?"}], tools=[WEATHER_TOOL], stream=True
    )
    for chunk in stream:
        for choice in chunk.choices:
            pieces += choice.delta.tool_calls or []
            finish = choice.finish_reason or finish
    assert finish == "tool_calls"  # Ollama says "stop"
    assert [p.index for p in pieces] == [0, 1]
    ids = [p.id or "" for p in pieces]
    assert all(i.startswith("call_") for i in ids) and len(set(ids)) == 2
    assert [json.loads((p.function and p.function.arguments) or "") for p in pieces] == [
        json.loads(ARGUMENTS),
        {"city": "Bern"},
    ]
    assert fakes.ollama.last.json["tools"] == [WEATHER_TOOL]


def test_ollama_tool_calls_of_a_non_streamed_call_come_in_one_whole_reply(client: openai.OpenAI, fakes: Fakes) -> None:
    fakes.ollama.script(Reply(tokens=(), tool_calls=(CALL,), finish="tool_calls", usage=(17, 6)))
    completion = client.chat.completions.create(
        model="t/llava", messages=[{"role": "user", "content": "Weather?"}], tools=[WEATHER_TOOL]
    )
    assert fakes.ollama.last.json["stream"] is False and fakes.ollama.last.json["tools"] == [WEATHER_TOOL]
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"  # Ollama says "stop"
    calls = choice.message.tool_calls or []
    assert len(calls) == 1 and calls[0].id.startswith("call_") and calls[0].function.name == "get_weather"
    assert json.loads(calls[0].function.arguments) == json.loads(ARGUMENTS)
    assert completion.usage is not None and (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (
        17,
        6,
    )


def test_ollama_second_turn_sends_its_own_message_shapes(client: openai.OpenAI, fakes: Fakes) -> None:
    fakes.ollama.script(Reply(tokens=["21 degrees."]))
    completion = client.chat.completions.create(model="t/llava", messages=SECOND_TURN, tools=[WEATHER_TOOL])
    assert completion.choices[0].message.content == "21 degrees."
    sent = fakes.ollama.last.json["messages"]
    # The call keeps its id and the result names it (api/types.go ``ToolCall.ID``, ``Message.ToolCallID``), as
    # Ollama's own OpenAI layer passes them on (openai/openai.go ``FromChatRequest``).
    assert sent[1] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"id": "call_9", "function": {"name": "get_weather", "arguments": json.loads(ARGUMENTS)}}],
    }
    assert sent[2] == {"role": "tool", "content": "21", "tool_name": "get_weather", "tool_call_id": "call_9"}


@pytest.mark.parametrize("stream", [True, False])
def test_ollama_tool_loop_links_each_result_to_its_call_by_ollamas_id(
    client: openai.OpenAI, fakes: Fakes, stream: bool
) -> None:
    """Two calls of one function: only the id tells their results apart (Cohere's renderer, model/renderers/cohere.go
    ``resolveResultID``, rendered a result without ``tool_call_id`` with an empty id, linked to no call)."""
    bern = ToolCallScript(name="get_weather", arguments='{"city": "Bern"}', id="call_k3x9q2za")
    fakes.ollama.script(Reply(tokens=(), tool_calls=(CALL, bern), finish="tool_calls"), Reply(tokens=["Both mild."]))
    messages: Any = [{"role": "user", "content": "Weather in Zürich and Bern?"}]
    if stream:
        chunks = client.chat.completions.create(model="t/llava", messages=messages, tools=[WEATHER_TOOL], stream=True)
        calls = [
            {"id": p.id, "type": "function", "function": {"name": "get_weather", "arguments": p.function.arguments}}
            for chunk in chunks
            for choice in chunk.choices
            for p in choice.delta.tool_calls or []
            if p.function is not None
        ]
    else:
        message = client.chat.completions.create(model="t/llava", messages=messages, tools=[WEATHER_TOOL])
        calls = [c.model_dump() for c in message.choices[0].message.tool_calls or []]
    assert [c["id"] for c in calls] == ["call_w1", "call_k3x9q2za"]  # Ollama's own ids
    messages += [
        {"role": "assistant", "content": None, "tool_calls": calls},
        {"role": "tool", "tool_call_id": "call_k3x9q2za", "content": "18"},
        {"role": "tool", "tool_call_id": "call_w1", "content": "21"},
    ]
    client.chat.completions.create(model="t/llava", messages=messages, tools=[WEATHER_TOOL])
    sent = fakes.ollama.last.json["messages"]
    assert [c["id"] for c in sent[1]["tool_calls"]] == ["call_w1", "call_k3x9q2za"]
    assert [(m["tool_name"], m["tool_call_id"], m["content"]) for m in sent[2:]] == [
        ("get_weather", "call_k3x9q2za", "18"),
        ("get_weather", "call_w1", "21"),
    ]


def test_ollama_tool_choice_none_offers_no_tools(client: openai.OpenAI, fakes: Fakes) -> None:
    client.chat.completions.create(
        model="t/llava", messages=[{"role": "user", "content": "hi"}], tools=[WEATHER_TOOL], tool_choice="none"
    )
    assert "tools" not in fakes.ollama.last.json


def test_tool_controls_ollama_cannot_enforce_are_reported(client: openai.OpenAI) -> None:
    messages: Any = [{"role": "user", "content": "hi"}]
    forced = client.chat.completions.with_raw_response.create(
        model="t/llava", messages=messages, tools=[WEATHER_TOOL], tool_choice="required", parallel_tool_calls=False
    )
    assert forced.headers["x-modelgate-dropped-params"] == "parallel_tool_calls,tool_choice"
    plain = client.chat.completions.with_raw_response.create(
        model="t/llava", messages=messages, tools=[WEATHER_TOOL], tool_choice="auto"
    )
    assert "x-modelgate-dropped-params" not in plain.headers


#: Tool model → the tool controls its kind carries (the chat-completions kinds pass every one on; Workers AI takes
#: tool_choice but no parallel_tool_calls; Ollama neither).
TOOL_CONTROLS = {
    "t/smol": {"tool_choice", "parallel_tool_calls"},
    "t/qwen": {"tool_choice", "parallel_tool_calls"},
    "t/deepseek": {"tool_choice", "parallel_tool_calls"},
    "t/cf": {"tool_choice"},
    "t/llava": set(),
}


@pytest.mark.parametrize("model", list(TOOL_CONTROLS))
def test_supported_parameters_list_the_tool_controls_the_provider_carries(
    client: openai.OpenAI, fakes: Fakes, model: str
) -> None:
    """``/v1/models`` promises what a call gets: a control it lists is carried, one it does not is reported dropped."""
    supported = set(client.models.retrieve(model).model_extra["supported_parameters"])  # type: ignore[index]
    assert supported & {"tools", "tool_choice", "parallel_tool_calls"} == {"tools"} | TOOL_CONTROLS[model]
    raw = client.chat.completions.with_raw_response.create(
        model=model,
        messages=[{"role": "user", "content": "hi"}],
        tools=[WEATHER_TOOL],
        tool_choice="required",
        parallel_tool_calls=False,
    )
    raw.parse()
    dropped = set(filter(None, raw.headers.get("x-modelgate-dropped-params", "").split(",")))
    assert dropped == {"tool_choice", "parallel_tool_calls"} - supported


NAMED_CHOICE: Any = {"type": "function", "function": {"name": "get_weather"}}


@pytest.mark.parametrize("choice", ["required", NAMED_CHOICE, "auto"])
def test_cloudflare_tool_choice_is_sent_as_workers_ai_provider_sends_it(
    client: openai.OpenAI, fakes: Fakes, choice: Any
) -> None:
    """``workers-ai-provider`` (utils.ts ``prepareToolsAndToolChoice``) sends ``tool_choice`` on ``/ai/run/``, the
    named function in the OpenAI form, which Workers AI enforces: it is carried, not reported. Its tools have no
    ``parallel_tool_calls``, which stays reported."""
    fakes.cloudflare.script(_tool_call_reply())
    raw = client.chat.completions.with_raw_response.create(
        model="t/cf",
        messages=[{"role": "user", "content": "Weather?"}],
        tools=[WEATHER_TOOL],
        tool_choice=choice,
        parallel_tool_calls=False,
    )
    assert raw.headers["x-modelgate-dropped-params"] == "parallel_tool_calls"
    sent = fakes.cloudflare.last.json
    assert sent["tool_choice"] == choice and sent["tools"] == [WEATHER_TOOL]
    assert raw.parse().choices[0].finish_reason == "tool_calls"


def test_cloudflare_tool_choice_none_offers_no_tools(client: openai.OpenAI, fakes: Fakes) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="t/cf", messages=[{"role": "user", "content": "hi"}], tools=[WEATHER_TOOL], tool_choice="none"
    )
    assert "x-modelgate-dropped-params" not in raw.headers
    sent = fakes.cloudflare.last.json
    assert "tools" not in sent and "tool_choice" not in sent


#: A strict function tool, as ``openai.pydantic_function_tool`` builds one (``parse`` then reads its arguments).
STRICT_TOOL: Any = {"type": "function", "function": {**WEATHER_TOOL["function"], "strict": True}}


@pytest.mark.parametrize(("model", "fake"), [("t/llava", "ollama"), ("t/cf", "cloudflare")])
def test_strict_tools_ollama_and_cloudflare_cannot_enforce_are_reported(
    client: openai.OpenAI, fakes: Fakes, model: str, fake: str
) -> None:
    """Their tools have no ``strict`` (ollama-python ``Tool.Function``: name, description, parameters): the
    arguments are not held to the schema, so the caller is told, and the field is not sent to be ignored."""
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "hi"}], tools=[STRICT_TOOL]
    )
    assert raw.headers["x-modelgate-dropped-params"] == "tools.function.strict"
    assert [tool["function"] for tool in fakes[fake].last.json["tools"]] == [WEATHER_TOOL["function"]]


def test_strict_tools_reach_a_chat_completions_upstream(client: openai.OpenAI, fakes: Fakes) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="t/deepseek", messages=[{"role": "user", "content": "hi"}], tools=[STRICT_TOOL]
    )
    assert "x-modelgate-dropped-params" not in raw.headers
    assert fakes.openrouter.last.json["tools"] == [STRICT_TOOL]


def test_ollama_format_is_the_schema_or_json(client: openai.OpenAI, fakes: Fakes) -> None:
    fakes.ollama.script(Reply(tokens=['{"city": "Bern", "degrees": 19}']), Reply(tokens=["{}"]))
    completion = client.chat.completions.parse(
        model="t/llava", messages=[{"role": "user", "content": "Weather?"}], response_format=Weather
    )
    assert completion.choices[0].message.parsed == Weather(city="Bern", degrees=19)
    assert fakes.ollama.last.json["format"]["properties"].keys() == {"city", "degrees"}
    client.chat.completions.create(
        model="t/llava", messages=[{"role": "user", "content": "JSON"}], response_format={"type": "json_object"}
    )
    assert fakes.ollama.last.json["format"] == "json"


def test_ollama_images_go_as_base64(client: openai.OpenAI, fakes: Fakes) -> None:
    content: Any = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
    ]
    client.chat.completions.create(model="t/llava", messages=[{"role": "user", "content": content}])
    assert fakes.ollama.last.json["messages"] == [
        {"role": "user", "content": "What is this?", "images": ["iVBORw0KGgo="]}
    ]


def test_ollama_refuses_a_remote_image_url(client: openai.OpenAI, fakes: Fakes) -> None:
    content: Any = [{"type": "image_url", "image_url": {"url": "https://example.org/cat.png"}}]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="t/llava", messages=[{"role": "user", "content": content}])
    body = caught.value.body
    assert isinstance(body, dict)
    assert "t/llava" in body["message"] and "data: URLs" in body["message"]
    assert "does not fetch" in body["message"]
    assert fakes.ollama.requests == []


def _data_url(media_type: str, data: bytes) -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def _look_at(url: str) -> Any:
    image = {"type": "image_url", "image_url": {"url": url}}
    return [{"role": "user", "content": [{"type": "text", "text": "What?"}, image]}]


#: A JPEG's and a GIF's first bytes.
JPEG_START, GIF_START = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", b"GIF89a\x01\x00\x01\x00"


@pytest.mark.parametrize(
    "url",
    [
        _data_url("image/gif", GIF_START),
        _data_url("image/svg+xml", b"<svg xmlns='http://www.w3.org/2000/svg'/>"),
        _data_url("image/heic", b"\x00\x00\x00\x18ftypheic"),
    ],
    ids=["gif", "svg", "heic"],
)
def test_ollama_refuses_an_image_type_it_cannot_read_before_calling(
    client: openai.OpenAI, fakes: Fakes, url: str
) -> None:
    """Ollama reads PNG, JPEG and WebP (its own OpenAI layer takes no other); sent anyway, its runner failed with a
    500 ("image: unknown format"), a 502 here counted against Ollama's health."""
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="t/llava", messages=_look_at(url))
    body = caught.value.body
    assert isinstance(body, dict)
    assert "t/llava" in body["message"] and "PNG, JPEG and WebP" in body["message"]
    assert fakes.ollama.requests == []


@pytest.mark.parametrize("model", ["t/llava", "t/deepseek", "t/smol"])
@pytest.mark.parametrize(
    ("url", "words"),
    [
        (_data_url("image/png", b"hello, this is text"), "says image/png, but its data is no PNG, JPEG, GIF or WebP"),
        (_data_url("image/jpeg", b""), "says image/jpeg, but its data is no PNG"),
        ("data:image/png;base64,iVBORw0K*Ggo=", "not valid base64"),
        ("data:image/png;base64,iVBORw0KG", "not valid base64"),  # one character past a whole group
    ],
    ids=["text", "empty", "not-base64", "truncated"],
)
def test_image_data_that_is_no_image_is_a_400_before_any_call(
    client: openai.OpenAI, fakes: Fakes, model: str, url: str, words: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=model, messages=_look_at(url))
    body = caught.value.body
    assert isinstance(body, dict)
    assert words in body["message"] and "messages[0].content[1]" in body["message"]
    assert all(fake.requests == [] for fake in fakes.all())


def test_unpadded_base64_reaches_ollama_padded(client: openai.OpenAI, fakes: Fakes) -> None:
    """Go's base64 (Ollama's ``images``, ``[]byte`` in api/types.go) takes no data without its ``=`` padding."""
    fakes.ollama.script(Reply(tokens=["A PNG."]))
    reply = client.chat.completions.create(model="t/llava", messages=_look_at("data:image/png;base64,iVBORw0KGgo"))
    assert reply.choices[0].message.content == "A PNG."
    assert fakes.ollama.last.json["messages"][0]["images"] == ["iVBORw0KGgo="]


@pytest.mark.parametrize("model", ["t/deepseek", "t/smol"])
def test_an_image_labelled_as_another_format_goes_on_as_its_own(
    client: openai.OpenAI, fakes: Fakes, model: str
) -> None:
    """A JPEG sent as image/png: a provider that checks the label against the bytes (Anthropic's, behind
    OpenRouter) refuses it; the bytes say what it is."""
    _fake(fakes, model).script(Reply(tokens=["A photo."]))
    client.chat.completions.create(model=model, messages=_look_at(_data_url("image/png", JPEG_START)))
    sent = _fake(fakes, model).last.json["messages"][0]["content"][1]["image_url"]["url"]
    assert sent == _data_url("image/jpeg", JPEG_START)


# --- Cloudflare: function calling and JSON mode, one whole reply ----------------------------------------


def test_cloudflare_tool_call(client: openai.OpenAI, fakes: Fakes) -> None:
    fakes.cloudflare.script(_tool_call_reply())
    pieces = []
    finish = None
    stream = client.chat.completions.create(
        model="t/cf", messages=[{"role": "user", "content": "Weather?"}], tools=[WEATHER_TOOL], stream=True
    )
    for chunk in stream:
        for choice in chunk.choices:
            pieces += choice.delta.tool_calls or []
            finish = choice.finish_reason or finish
    assert finish == "tool_calls"
    assert len(pieces) == 1 and (pieces[0].id or "").startswith("call_")
    assert pieces[0].function is not None and pieces[0].function.name == "get_weather"
    assert json.loads(pieces[0].function.arguments or "") == json.loads(ARGUMENTS)
    sent = fakes.cloudflare.last.json
    assert "stream" not in sent  # Workers AI answers tool calls whole
    assert sent["tools"] == [WEATHER_TOOL]


def test_a_non_streamed_cloudflare_tool_call_is_one_whole_envelope(client: openai.OpenAI, fakes: Fakes) -> None:
    fakes.cloudflare.script(Reply(tokens=(), tool_calls=(CALL,), finish="tool_calls", usage=(30, 9)))
    completion = client.chat.completions.create(
        model="t/cf", messages=[{"role": "user", "content": "Weather?"}], tools=[WEATHER_TOOL]
    )
    sent = fakes.cloudflare.last.json
    assert "stream" not in sent and sent["tools"] == [WEATHER_TOOL]
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert len(calls) == 1 and calls[0].id.startswith("call_") and calls[0].function.name == "get_weather"
    assert json.loads(calls[0].function.arguments) == json.loads(ARGUMENTS)
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (30, 9)


def test_cloudflare_second_turn(client: openai.OpenAI, fakes: Fakes) -> None:
    fakes.cloudflare.script(Reply(tokens=["21 degrees."]))
    completion = client.chat.completions.create(model="t/cf", messages=SECOND_TURN, tools=[WEATHER_TOOL])
    assert completion.choices[0].message.content == "21 degrees."
    assert completion.choices[0].finish_reason == "stop"
    sent = fakes.cloudflare.last.json["messages"]
    assert sent[1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": ARGUMENTS}
    # "call_9" is off the schema's pattern ([a-zA-Z0-9]{9}): the call and its result get one derived from it, alike.
    call_id = sent[1]["tool_calls"][0]["id"]
    assert re.fullmatch(r"[a-zA-Z0-9]{9}", call_id)
    assert sent[2] == {"role": "tool", "content": "21", "name": "get_weather", "tool_call_id": call_id}


@pytest.mark.parametrize("model", ["t/cf", "t/cf-mistral"])
def test_cloudflare_tool_results_name_their_call(client: openai.OpenAI, fakes: Fakes, model: str) -> None:
    """A tool result carries its call's ``tool_call_id``, as workers-ai-provider sends it: Mistral-3 refuses one without
    ("Must be supplied for tool calls for Mistral-3", the model's input schema)."""
    fakes.cloudflare.script(_tool_call_reply(), Reply(tokens=["21 degrees."]))
    messages: Any = [{"role": "user", "content": "Weather?"}]
    first = client.chat.completions.create(model=model, messages=messages, tools=[WEATHER_TOOL])
    calls = first.choices[0].message.tool_calls or []
    assert len(calls) == 1
    messages += [
        {"role": "assistant", "content": None, "tool_calls": [c.model_dump() for c in calls]},
        {"role": "tool", "tool_call_id": calls[0].id, "content": "21"},
    ]
    second = client.chat.completions.create(model=model, messages=messages, tools=[WEATHER_TOOL])
    assert second.choices[0].message.content == "21 degrees."
    sent = fakes.cloudflare.last.json["messages"]
    assert sent[1]["tool_calls"][0]["id"] == calls[0].id
    assert sent[2] == {"role": "tool", "content": "21", "name": "get_weather", "tool_call_id": calls[0].id}


def test_cloudflare_json_mode(client: openai.OpenAI, fakes: Fakes) -> None:
    fakes.cloudflare.script(Reply(tokens=['{"city": "Bern",', ' "degrees": 19}']))
    completion = client.chat.completions.parse(
        model="t/cf", messages=[{"role": "user", "content": "Weather?"}], response_format=Weather
    )
    assert completion.choices[0].message.parsed == Weather(city="Bern", degrees=19)
    sent = fakes.cloudflare.last.json["response_format"]
    assert sent["type"] == "json_schema"
    assert sent["json_schema"]["properties"].keys() == {"city", "degrees"}


BARE_SCHEMA: Any = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


@pytest.mark.parametrize(
    ("schema", "sent", "dropped"),
    [
        # The name and description go into the schema as its title and description: nothing is lost.
        (BARE_SCHEMA, {**BARE_SCHEMA, "title": "weather_report", "description": "The weather asked about"}, None),
        # The schema's own are kept, never overwritten: a description of the request's own so lost is reported.
        (
            {**BARE_SCHEMA, "title": "Weather", "description": "A city's weather"},
            {**BARE_SCHEMA, "title": "Weather", "description": "A city's weather"},
            "response_format.json_schema.description",
        ),
        (
            {**BARE_SCHEMA, "description": "The weather asked about"},
            {**BARE_SCHEMA, "title": "weather_report", "description": "The weather asked about"},
            None,
        ),
    ],
)
def test_cloudflare_carries_the_schemas_name_and_description_in_the_schema(
    client: openai.OpenAI, fakes: Fakes, schema: Any, sent: Any, dropped: str | None
) -> None:
    """Workers AI takes a bare schema; its own AI SDK provider folds the format's name and description into it as the
    schema's ``title`` and ``description`` (``buildJsonSchemaPayload``, cloudflare/ai#559), unless it has its own."""
    fakes.cloudflare.script(Reply(tokens=['{"city": "Bern"}']))
    json_schema: Any = {"name": "weather_report", "description": "The weather asked about", "schema": schema}
    raw = client.chat.completions.with_raw_response.create(
        model="t/cf",
        messages=[{"role": "user", "content": "Weather?"}],
        response_format={"type": "json_schema", "json_schema": json_schema},
    )
    assert json.loads(raw.parse().choices[0].message.content or "") == {"city": "Bern"}
    assert fakes.cloudflare.last.json["response_format"] == {"type": "json_schema", "json_schema": sent}
    assert raw.headers.get("x-modelgate-dropped-params") == dropped


# --- TGI: no tools; structured output through grammar ----------------------------------------------------


def test_tgi_refuses_tools_naming_the_model(client: openai.OpenAI, fakes: Fakes) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="t/tgi", messages=[{"role": "user", "content": "hi"}], tools=[WEATHER_TOOL]
        )
    body = caught.value.body
    assert isinstance(body, dict)
    assert "t/tgi" in body["message"] and "tool calling" in body["message"]
    assert fakes.huggingface.requests == []


def test_tgi_structured_output_is_a_grammar(client: openai.OpenAI, fakes: Fakes) -> None:
    fakes.huggingface.script(Reply(tokens=['{"city": "Bern", ', '"degrees": 19}']))
    completion = client.chat.completions.parse(
        model="t/tgi", messages=[{"role": "user", "content": "Weather?"}], response_format=Weather
    )
    assert completion.choices[0].message.parsed == Weather(city="Bern", degrees=19)
    grammar = fakes.huggingface.last.json["parameters"]["grammar"]
    assert grammar["type"] == "json"
    assert grammar["value"]["required"] == ["city", "degrees"]


@pytest.mark.parametrize(
    "response_format",
    [{"type": "json_object"}, {"type": "json_schema", "json_schema": {"name": "anything"}}],
    ids=["json_object", "json_schema_without_schema"],
)
def test_tgi_any_json_object_is_a_regex_of_any_object(
    client: openai.OpenAI, fakes: Fakes, response_format: Any
) -> None:
    """TGI refuses a JSON grammar without ``properties`` (its fake, as router/src/validation.rs does): "any object"
    goes as the regex outlines-core makes of ``{"type": "object"}``, which takes objects and nothing else."""
    fakes.huggingface.script(Reply(tokens=['{"city": "Bern"}']))
    completion = client.chat.completions.create(
        model="t/tgi", messages=[{"role": "user", "content": "Weather?"}], response_format=response_format
    )
    assert completion.choices[0].message.content == '{"city": "Bern"}'
    grammar = fakes.huggingface.last.json["parameters"]["grammar"]
    assert grammar["type"] == "regex"
    any_object = re.compile(grammar["value"])
    for text in ("{}", '{"a": 1, "b": [true, null, "x"]}', '{"a":{"b":[1.5e+3,"c"]},"d":[[1],{"e":null}]}'):
        assert any_object.fullmatch(text), text
    for text in ("[1]", '"x"', "1", '{"a": 1,}', '{"a" 1}', "{'a': 1}"):
        assert not any_object.fullmatch(text), text


def test_a_non_streamed_tgi_call_asks_generate_for_one_whole_reply(client: openai.OpenAI, fakes: Fakes) -> None:
    fakes.huggingface.script(Reply(tokens=["It is ", "21 degrees."], usage=(40, 3)), Reply(tokens=["x"]))
    completion = client.chat.completions.create(model="t/tgi", messages=[{"role": "user", "content": "Weather?"}])
    sent = fakes.huggingface.last
    assert sent.raw_path == "/generate" and "stream" not in sent.json
    assert completion.choices[0].message.content == "It is 21 degrees."
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (40, 3)
    with client.chat.completions.create(
        model="t/tgi", messages=[{"role": "user", "content": "Weather?"}], stream=True
    ) as stream:
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "x"
    assert fakes.huggingface.last.raw_path == "/generate_stream"  # a stream stays a stream


# --- image limits ------------------------------------------------------------------------------------------


def _image(decoded_bytes: int) -> Any:
    data = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * (decoded_bytes - 8)).decode()  # a PNG's first bytes
    return {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}}


@pytest.mark.parametrize(
    ("images", "limit", "words"),
    [
        ([120], 100, ["per image", "100 bytes"]),
        ([72, 72, 72], 150, ["per request", "150 bytes"]),
    ],
)
def test_image_limits_are_a_413_naming_the_limit(fakes: Fakes, images: list[int], limit: int, words: list[str]) -> None:
    settings = Settings(**fakes.settings_overrides(), max_image_bytes=100, max_images_bytes=150)  # type: ignore[arg-type]
    content = [{"type": "text", "text": "Look"}, *(_image(size) for size in images)]
    with (
        serve_in_thread(create_app(settings, tools_catalogue(fakes))) as url,
        openai.OpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0) as sdk,
    ):
        with pytest.raises(openai.APIStatusError) as caught:
            sdk.chat.completions.create(model="t/deepseek", messages=[{"role": "user", "content": content}])
        assert caught.value.status_code == 413
        body = caught.value.body
        assert isinstance(body, dict)
        for word in words:
            assert word in body["message"]
        assert fakes.openrouter.requests == []
        # Within the limits the same request goes through.
        within = [content[0], _image(60), _image(60)]
        sdk.chat.completions.create(model="t/deepseek", messages=[{"role": "user", "content": within}])
    assert len(fakes.openrouter.requests) == 1
    assert str(limit) in caught.value.body["message"]  # type: ignore[index]


@pytest.mark.parametrize("stream", [False, True])
def test_gemini_parallel_calls_streamed_without_index_stay_apart(
    client: openai.OpenAI, fakes: Fakes, stream: bool
) -> None:
    """Google's OpenAI compatibility API streams each call whole in a delta of its own, without ``index``
    (``FakeOpenAI.gemini``; @ai-sdk/openai-compatible's chunk schema: "google does not send index"): each is a call
    of its own, numbered in order, never the arguments of the first one run together."""
    fakes.openai.gemini = True
    second = ToolCallScript(name="get_weather", arguments='{"city": "Bern"}', id="call_w2")
    fakes.openai.script(Reply(tokens=(), tool_calls=(CALL, second), finish="tool_calls"))
    body: Any = {
        "model": "t/smol",
        "messages": [{"role": "user", "content": "Zürich and Bern?"}],
        "tools": [WEATHER_TOOL],
    }
    if not stream:
        calls = client.chat.completions.create(**body).choices[0].message.tool_calls or []
        got = [(c.id, c.function.name, c.function.arguments) for c in calls]
    else:
        pieces = [
            p
            for chunk in client.chat.completions.create(**body, stream=True)
            for c in chunk.choices
            for p in c.delta.tool_calls or ()
        ]
        assert [p.index for p in pieces] == [0, 1]
        got = [(p.id, p.function and p.function.name, p.function and p.function.arguments) for p in pieces]
    assert got == [("call_w1", "get_weather", ARGUMENTS), ("call_w2", "get_weather", '{"city": "Bern"}')]
