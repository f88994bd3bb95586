"""JSON a client nests deeper than the upstream serializer writes (orjson: 255 levels) is a 400 naming the field.

Found from outside: a tool's schema, a structured-output schema or an Ollama call's arguments ~250 levels deep
(2 KB of body) passed validation and failed as a 500 when the upstream request was written, or, on a streamed
``/v1/responses`` echoing the schema, cut a 200 stream before its first event (no ``response.failed``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from modelgate.app import create_app
from modelgate.settings import Settings
from modelgate.wire import MAX_JSON_DEPTH
from tests.fakes import Fakes, Reply
from tests.servers import serve_in_thread
from tests.test_openai_tools import tools_catalogue

#: model id → the fake of its kind: one per kind that takes schemas.
MODELS = {"t/smol": "openai", "t/llava": "ollama", "t/cf": "cloudflare"}


def nested(levels: int) -> dict[str, Any]:
    """A JSON Schema whose innermost object is ``levels`` objects deep."""
    value: dict[str, Any] = {"type": "string"}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


def tool(parameters: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": "f", "parameters": parameters}}


@pytest.fixture
def service(fakes: Fakes) -> Iterator[str]:
    settings = Settings(**fakes.settings_overrides())  # type: ignore[arg-type]
    with serve_in_thread(create_app(settings, tools_catalogue(fakes))) as url:
        yield url


def post(url: str, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(url + path, json=body, timeout=30)


def refused(response: httpx.Response, field: str) -> None:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert f"nested deeper than {MAX_JSON_DEPTH} levels" in error["message"] and field in error["message"]


MESSAGES = [{"role": "user", "content": "hi"}]
SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "x", "schema": nested(250)}}


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize(
    ("fields", "where"),
    [({"tools": [tool(nested(250))]}, "parameters"), ({"response_format": SCHEMA_FORMAT}, "schema")],
    ids=["tool", "response_format"],
)
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_chat_schema_too_deep_is_a_400_before_any_upstream_call(
    service: str, fakes: Fakes, model: str, fields: dict[str, Any], where: str, stream: bool
) -> None:
    response = post(service, "/v1/chat/completions", {"model": model, "messages": MESSAGES, "stream": stream, **fields})
    refused(response, where)
    assert fakes[MODELS[model]].requests == []


@pytest.mark.parametrize(
    "fields",
    [
        {"tools": [{"type": "function", "name": "f", "parameters": nested(250)}]},
        {"text": {"format": {"type": "json_schema", "name": "x", "schema": nested(250)}}},
    ],
    ids=["tool", "text.format"],
)
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_responses_schema_too_deep_is_a_400_not_a_cut_stream(
    service: str, fakes: Fakes, fields: dict[str, Any], stream: bool
) -> None:
    response = post(service, "/v1/responses", {"model": "t/llava", "input": "hi", "stream": stream, **fields})
    refused(response, "schema" if "text" in fields else "parameters")
    assert fakes.ollama.requests == []


def test_a_schema_as_deep_as_allowed_reaches_the_upstream_whole(service: str, fakes: Fakes) -> None:
    schema = nested(MAX_JSON_DEPTH)  # the tool object and its function wrap it: still writable
    fakes.openai.script(Reply(tokens=["ok"]))
    response = post(service, "/v1/chat/completions", {"model": "t/smol", "messages": MESSAGES, "tools": [tool(schema)]})
    assert response.status_code == 200, response.text
    assert fakes.openai.last.json["tools"][0]["function"]["parameters"] == schema
    fakes.ollama.script(Reply(tokens=["ok"]))
    format_ = {"type": "json_schema", "name": "x", "schema": schema}
    echoed = post(service, "/v1/responses", {"model": "t/llava", "input": "hi", "text": {"format": format_}})
    assert echoed.status_code == 200, echoed.text
    assert echoed.json()["text"]["format"]["schema"] == schema


def _deep_arguments(levels: int) -> str:
    return '{"a":' * levels + "1" + "}" * levels


@pytest.mark.parametrize("route", ["chat", "responses"])
def test_ollama_call_arguments_too_deep_are_a_400(service: str, fakes: Fakes, route: str) -> None:
    """Ollama takes a call's arguments as an object (the other kinds forward the text): parsed, they must be
    writable."""
    arguments = _deep_arguments(250)
    if route == "chat":
        call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": arguments}}
        history = [*MESSAGES, {"role": "assistant", "tool_calls": [call]}]
        body = {"messages": [*history, {"role": "tool", "tool_call_id": "c1", "content": "1"}]}
        response = post(service, "/v1/chat/completions", {"model": "t/llava", "tools": [tool(nested(2))], **body})
    else:
        items = [
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": arguments},
            {"type": "function_call_output", "call_id": "c1", "output": "1"},
        ]
        tools = [{"type": "function", "name": "f", "parameters": nested(2)}]
        response = post(service, "/v1/responses", {"model": "t/llava", "input": items, "tools": tools})
    refused(response, "the arguments of 'c1'")
    assert fakes.ollama.requests == []


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("where", ["reasoning_details", "extra_content"])
def test_carried_reasoning_and_call_extras_too_deep_are_a_400_naming_them(
    service: str, fakes: Fakes, model: str, where: str
) -> None:
    """What a client hands back unread (OpenRouter's reasoning blocks, Gemini's thought signature) is bounded
    (``wire.opaque_object``: 8 levels) on every kind, whether or not the kind carries it on."""
    call: dict[str, Any] = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    assistant: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": [call]}
    if where == "extra_content":
        call["extra_content"] = nested(250)
    else:
        assistant["reasoning_details"] = [nested(250)]
    messages = [*MESSAGES, assistant, {"role": "tool", "tool_call_id": "c1", "content": "1"}]
    response = post(service, "/v1/chat/completions", {"model": model, "messages": messages, "tools": [tool({})]})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert where in error["param"] and "nested deeper than 8 levels" in error["message"]
    assert fakes[MODELS[model]].requests == []


def test_a_namespace_tools_schema_too_deep_is_a_400(service: str, fakes: Fakes) -> None:
    namespace = {
        "type": "namespace",
        "name": "n",
        "tools": [{"type": "function", "name": "f", "parameters": nested(250)}],
    }
    response = post(service, "/v1/responses", {"model": "t/llava", "input": "hi", "tools": [namespace]})
    refused(response, "parameters")
    assert fakes.ollama.requests == []
