"""``POST /v1/chat/completions`` request checks, through the official SDK: each refusal is a 400 in
OpenAI's error shape naming the field. None of these reach a provider (no credentials are set)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from modelgate.app import create_app
from modelgate.settings import Settings
from tests.servers import serve_in_thread

QWEN = "qwen/Qwen2.5-72B-Instruct"  # max_new_tokens = 512 in the default catalogue
HELLO = [{"role": "user", "content": "Hello"}]
GEMMA = "google/gemma-2-27b-it"  # no capabilities in the default catalogue
TOOL_G = {"type": "function", "function": {"name": "g"}}

#: A PNG's first bytes: enough to be taken for one.
PNG_SIGNATURE = "data:image/png;base64,iVBORw0KGgo="


@pytest.fixture(scope="module")
def client() -> Iterator[openai.OpenAI]:
    with (
        serve_in_thread(create_app(Settings.from_env({}))) as url,
        openai.OpenAI(base_url=f"{url}/v1", api_key="test-key", max_retries=0) as sdk,
    ):
        yield sdk


def refused(client: openai.OpenAI, **fields: Any) -> openai.BadRequestError:
    fields.setdefault("model", QWEN)
    fields.setdefault("messages", HELLO)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(**fields)
    error = caught.value
    assert error.status_code == 400
    assert isinstance(error.body, dict)
    assert error.body["type"] == "invalid_request_error"
    return error


@pytest.mark.parametrize(
    ("fields", "param", "words"),
    [
        ({"max_tokens": 513}, "max_tokens", ["513", "512"]),
        ({"max_completion_tokens": 100_000}, "max_completion_tokens", ["100000", "512"]),
        ({"max_tokens": 0}, "max_tokens", ["greater than or equal to 1"]),
        ({"temperature": 2.5}, "temperature", ["less than or equal to 2"]),
        ({"temperature": -0.1}, "temperature", ["greater than or equal to 0"]),
        ({"top_p": 1.01}, "top_p", ["less than or equal to 1"]),
        ({"presence_penalty": 2.1}, "presence_penalty", ["less than or equal to 2"]),
        ({"frequency_penalty": -2.1}, "frequency_penalty", ["greater than or equal to -2"]),
        # Bounds on hostile input whatever the upstream takes (the upstream's own limit: test_stop_sequences.py).
        ({"stop": ["END"] * 65}, "stop", ["at most 64 items", "not 65"]),
        ({"stop": ["END", "x" * 1001]}, "stop.1", ["at most 1000 characters", "got 1001"]),
        ({"n": 2}, "n", ["n must be 1"]),
        (
            {"model": GEMMA, "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
            "tools",
            [GEMMA, "tool calling", "'tools'"],
        ),
        ({"tool_choice": "required"}, "tool_choice", ["only allowed when tools are given"]),
        (
            {"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": TOOL_G},
            "tool_choice",
            ["'g' is not one of the tools"],
        ),
        ({"model": GEMMA, "response_format": {"type": "json_object"}}, "response_format", [GEMMA, "'json'"]),
        ({"response_format": {"type": "json_schema"}}, "response_format", ["json_schema: required"]),
        ({"logprobs": True}, "logprobs", ["not supported"]),
        ({"function_call": {"name": "f"}}, "function_call", ["deprecated function_call", "use tool_choice"]),
        ({"messages": []}, "messages", ["at least 1"]),
    ],
)
def test_out_of_range_or_unsupported_fields_are_named(
    client: openai.OpenAI, fields: dict[str, Any], param: str, words: list[str]
) -> None:
    error = refused(client, **fields)
    assert isinstance(error.body, dict)
    assert error.body["param"] == param
    for word in words:
        assert word in error.body["message"]


@pytest.mark.parametrize(
    ("messages", "words"),
    [
        (
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": PNG_SIGNATURE}}]}],
            ["Qwen2.5-72B-Instruct", "image input", "'vision'"],
        ),
        (
            [
                {"role": "user", "content": "hi"},
                {
                    "role": "user",
                    "content": [{"type": "input_audio", "input_audio": {"data": "AA==", "format": "wav"}}],
                },
            ],
            ["messages[1].content[0]", "input_audio"],
        ),
        ([{"role": "tool", "content": "42"}], ["messages[0].tool_call_id: required"]),
        (
            [{"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "call_nope", "content": "42"}],
            ["messages[1].tool_call_id", "'call_nope'", "no tool call of an earlier assistant message"],
        ),
        (
            [
                {
                    "role": "user",
                    "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": ""}}],
                }
            ],
            ["messages[0].tool_calls", "only assistant messages"],
        ),
        (
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}],
            ["messages[0].content[0]", "data: URL or an https: URL"],
        ),
        ([{"role": "function", "content": "42", "name": "f"}], ["messages[0]", "deprecated function role"]),
        ([{"role": "user"}], ["messages[0].content: required"]),
    ],
)
def test_unsupported_message_content_is_refused(
    client: openai.OpenAI, messages: list[dict[str, Any]], words: list[str]
) -> None:
    error = refused(client, messages=messages)
    assert isinstance(error.body, dict)
    assert error.body["param"] == "messages"
    for word in words:
        assert word in error.body["message"]


@pytest.mark.parametrize(
    ("fields", "param", "message"),
    [
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": 5}]}]},
            "messages.0.content.0.image_url",
            "Input should be a valid dictionary",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": 5, "text": "x"}]}]},
            "messages.0.content.0.type",
            "Input should be a valid string",
        ),
        (  # named, not repeated: a refusal of an unknown type quoted the whole value back
            {"messages": [{"role": "user", "content": [{"type": "Q" * 20_000, "text": "x"}]}]},
            "messages.0.content.0.type",
            "String should have at most 64 characters",
        ),
        ({"tool_choice": "sometimes"}, "tool_choice", "Input should be 'auto', 'none' or 'required'"),
        (
            {"tools": [TOOL_G], "tool_choice": {"type": "function", "function": {"name": "bad name"}}},
            "tool_choice.function.name",
            "String should match pattern",
        ),
    ],
)
def test_a_union_field_error_names_the_field_the_client_sent(
    client: openai.OpenAI, fields: dict[str, Any], param: str, message: str
) -> None:
    """Found from outside: a bad content part was reported as ``messages.0.content.str: Input should be a valid
    string`` (the first union member pydantic tried), and ``tool_choice`` errors under pydantic's type tags."""
    error = refused(client, **fields)
    assert isinstance(error.body, dict)
    assert error.body["param"] == param
    assert error.body["message"].startswith(f"Invalid request: {param}: {message}")
    assert "QQQQ" not in error.body["message"]


def test_unknown_role_is_a_validation_error_naming_the_field(client: openai.OpenAI) -> None:
    error = refused(client, messages=[{"role": "robot", "content": "hi"}])
    assert isinstance(error.body, dict)
    assert error.body["param"] == "messages.0.role"


def test_unknown_model_is_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="qwen/Qwen9", messages=HELLO)  # type: ignore[call-overload]
    assert caught.value.body == {
        "message": "The model 'qwen/Qwen9' does not exist",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }


def test_valid_request_with_unknown_fields_passes_validation(client: openai.OpenAI) -> None:
    # No HF_TOKEN: a request that passed every check reaches the gateway, which says what to configure.
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(  # type: ignore[call-overload]
            model=QWEN,
            messages=[
                {"role": "developer", "content": "Be terse."},
                {"role": "user", "content": [{"type": "text", "text": "Hi"}], "name": "ann"},
            ],
            max_tokens=512,
            temperature=0,
            top_p=1,
            stop="END",
            seed=7,
            user="u-1",
            n=1,
            tool_choice="none",
            response_format={"type": "text"},
            store=False,
            extra_body={"some_future_field": {"x": 1}},
        )
    assert caught.value.status_code == 503
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["type"] == "server_error"
    assert "HF_TOKEN" in caught.value.body["message"]


def test_malformed_json_is_a_400_in_openai_shape(client: openai.OpenAI) -> None:
    response = httpx.post(
        f"{client.base_url}chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["type"] == "invalid_request_error"


def test_limits_are_checked_before_credentials(client: openai.OpenAI) -> None:
    # Even with the provider unconfigured, a bad value is the caller's 400, not our 503.
    refused(client, model="openrouter/llama-3.3-70b-instruct", max_tokens=2049)


def test_more_messages_than_the_service_allows_is_refused() -> None:
    app = create_app(Settings.from_env({}, max_messages=2))
    with serve_in_thread(app) as url, openai.OpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0) as client:
        error = refused(client, messages=HELLO * 3)
    assert isinstance(error.body, dict)
    assert error.body["param"] == "messages"
    assert "limit of 2" in error.body["message"]


def test_openai_errors_tell_the_sdk_whether_to_retry(fakes: Any) -> None:
    """An unconfigured provider (503) is final: the SDK must not retry it."""
    with serve_in_thread(create_app(Settings(base_url_overrides=fakes.base_urls()))) as url:
        response = httpx.post(
            url + "/v1/chat/completions",
            json={"model": "openrouter/deepseek-chat", "messages": [{"role": "user", "content": "hi"}]},
        )
    assert response.status_code == 503
    assert response.headers["x-should-retry"] == "false"
