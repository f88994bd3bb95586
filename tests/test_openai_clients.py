"""Popular clients pointed at ``/v1`` with their defaults: each one's exact request, as its source builds it, sent to a
real server over the fakes, and its reply read the way that client reads it.

Sources read (what each sends by default and what it needs back):

- Open WebUI 0.12.4 (``open-webui`` on PyPI), an OpenAI-compatible connection: ``routers/openai.py``
  ``generate_chat_completion`` forwards the UI's chat body less ``metadata``; ``stream_options.include_usage`` only
  for a model given the ``usage`` capability, and removed from whole replies; ``utils/middleware.py``
  ``process_chat_payload``: function calling is ``native`` by default, and a chat from the UI then carries the
  builtin tools (``utils/tools.py`` ``get_builtin_tools``: ``get_current_timestamp``, ``search_chats``, ...) in
  ``tools``; ``routers/tasks.py``: titles, tags and follow-ups are whole replies. It reads the stream line by line
  (``data:`` lines, ``[DONE]``, ``choices[0].delta`` with ``tool_calls[].index``, a chunk without ``choices`` holding
  ``usage`` or ``error``) and ``data[].id`` / ``name`` of ``GET /models`` (``get_all_models``).
- LangChain ``langchain-openai`` 1.8.1, ``chat_models/base.py``: ``_default_params`` sends ``model`` and ``stream``,
  the rest only when set (``max_tokens`` renamed ``max_completion_tokens``); ``with_structured_output`` defaults to a
  strict ``json_schema`` named after the model class; its ``function_calling`` method names the tool in
  ``tool_choice`` beside ``parallel_tool_calls: false``; an AI message with tool calls goes back with ``content: null``.
- LiteLLM 1.110.2 (``openai/<model>``, ``api_base``) sends what it is given through openai-python; aider 0.86.2
  (``models.py`` ``send_completion``) gives it ``stream: true`` and ``temperature: 0``, and a function as one tool with
  a named ``tool_choice``.
- Continue (``core/llm/openaiTypeConverters.ts`` ``toChatBody``; ``packages/openai-adapters``
  ``OpenAI.modifyChatBody``): ``max_tokens`` (4096, ``DEFAULT_MAX_TOKENS``, unless configured),
  ``stream_options.include_usage``, ``parallel_tool_calls: false`` beside tools.
- Roo Code (``src/api/providers/openai.ts``): ``temperature: 0``, ``stream_options``, and in its native tool protocol
  ``tools``, ``tool_choice`` and ``parallel_tool_calls: false``.

The Vercel AI SDK's ``@ai-sdk/openai-compatible`` (also Cline's for such a provider) runs for real in
``test_ai_sdk_compatible_node.py``.

LangChain and LiteLLM were also run for real against such a server (outside the suite: neither is a test
dependency); the requests below are the ones they sent, and their replies are read by openai-python, which
``test_openai_*.py`` run.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from modelgate.app import create_app
from modelgate.settings import Settings
from tests.fakes import Fakes, Reply
from tests.fakes._base import ToolCallScript
from tests.servers import serve_in_thread

#: The default catalogue's models: one with tools and structured output (HF router, at most 512 completion tokens),
#: one without tools, one with a large completion limit (OpenRouter).
TOOLS_MODEL = "qwen/Qwen2.5-72B-Instruct"
PLAIN_MODEL = "google/gemma-2-27b-it"
LARGE_MODEL = "openrouter/deepseek-chat"

TOKENS = ["Hel", "lo", "!"]
WEATHER_CALL = ToolCallScript(name="get_weather", arguments='{"city": "Paris"}', id="call_w1")


@pytest.fixture
def service(fakes: Fakes) -> Iterator[str]:
    with serve_in_thread(create_app(Settings.from_env(fakes.env()))) as url:
        yield url


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as client:
        yield client


def data_lines(body: str) -> list[Any]:
    """The stream as Open WebUI reads it (``utils/middleware.py``): each ``data:`` line's JSON, up to ``[DONE]``."""
    events: list[Any] = []
    for line in body.splitlines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return events
        events.append(json.loads(data))
    raise AssertionError(f"no [DONE] in {body[-300:]!r}")


def text_of(events: list[Any]) -> str:
    return "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e.get("choices"))


def assert_nothing_dropped(response: httpx.Response) -> None:
    assert response.status_code == 200, response.text[:500]
    assert "x-modelgate-dropped-params" not in response.headers, response.headers


# --- Open WebUI --------------------------------------------------------------------------------------------------


def _builtin_tool(name: str, description: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    parameters = {"type": "object", "properties": properties, "required": required}
    return {"type": "function", "function": {"name": name, "description": description, "parameters": parameters}}


#: Two of the builtin tools Open WebUI 0.12 puts in every chat from its UI (native function calling, the default).
OPEN_WEBUI_BUILTIN_TOOLS = [
    _builtin_tool("get_current_timestamp", "Get the current Unix timestamp in seconds.", {}, []),
    _builtin_tool(
        "search_chats",
        "Search the user's previous chat conversations by title and message content, excluding the current chat.",
        {
            "query": {"type": "string", "description": "The search query"},
            "count": {"type": "integer", "default": 5},
        },
        ["query"],
    ),
]


def open_webui_chat(model: str, **fields: Any) -> dict[str, Any]:
    """The body Open WebUI posts for a chat typed in its UI, once its middleware is done with it."""
    messages = [{"role": "system", "content": "User Context:\n"}, {"role": "user", "content": "Hi there"}]
    return {"stream": True, "model": model, "messages": messages, "tools": OPEN_WEBUI_BUILTIN_TOOLS, **fields}


def test_open_webui_chat_streams_with_its_builtin_tools_and_usage(
    service: str, http: httpx.Client, fakes: Fakes
) -> None:
    fakes.huggingface.script(Reply(tokens=TOKENS, usage=(21, 3)))
    body = open_webui_chat(TOOLS_MODEL, stream_options={"include_usage": True})
    response = http.post(f"{service}/v1/chat/completions", json=body)
    assert_nothing_dropped(response)
    assert "text/event-stream" in response.headers["content-type"]  # Open WebUI streams only such a reply
    events = data_lines(response.text)
    assert text_of(events) == "".join(TOKENS)
    assert events[-1]["choices"] == [] and events[-1]["usage"]["prompt_tokens"] == 21  # no choices: read as usage
    sent = fakes.huggingface.last.json
    assert [tool["function"]["name"] for tool in sent["tools"]] == ["get_current_timestamp", "search_chats"]


def test_open_webui_reads_a_streamed_tool_call_by_index(service: str, http: httpx.Client, fakes: Fakes) -> None:
    fakes.huggingface.script(Reply(tokens=[], finish="tool_calls", tool_calls=[WEATHER_CALL]))
    response = http.post(f"{service}/v1/chat/completions", json=open_webui_chat(TOOLS_MODEL))
    assert_nothing_dropped(response)
    pieces = [
        call
        for e in data_lines(response.text)
        if e.get("choices")
        for call in e["choices"][0]["delta"].get("tool_calls") or ()
    ]
    first = pieces[0]  # Open WebUI starts a call at a new index and keeps its id and name from there
    assert (first["index"], first["id"], first["function"]["name"]) == (0, "call_w1", "get_weather")
    assert all(piece["index"] == 0 for piece in pieces)
    assert json.loads("".join(piece["function"].get("arguments") or "" for piece in pieces)) == {"city": "Paris"}


def test_open_webui_builtin_tools_to_a_model_without_tools_are_a_clear_400(
    service: str, http: httpx.Client, fakes: Fakes
) -> None:
    """Native function calling sends its builtin tools to every model; one whose catalogue entry lacks ``tools``
    cannot take them. The refusal is JSON (Open WebUI shows a non-stream error body as the chat's error) naming the
    field, the model and the capability; Open WebUI's per-model "Builtin Tools" capability (or function calling
    "Legacy") stops it sending them."""
    response = http.post(f"{service}/v1/chat/completions", json=open_webui_chat(PLAIN_MODEL))
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["param"] == "tools" and error["type"] == "invalid_request_error"
    assert PLAIN_MODEL in error["message"] and "'tools'" in error["message"]
    assert not fakes.huggingface.requests


def test_open_webui_empty_tools_is_a_chat_without_tools(service: str, http: httpx.Client, fakes: Fakes) -> None:
    """Open WebUI 0.10 sent ``"tools": []`` when a chat had none (open-webui#26655, refused by vLLM): it asks for
    nothing, so a model without tools answers it."""
    response = http.post(f"{service}/v1/chat/completions", json=open_webui_chat(PLAIN_MODEL, tools=[]))
    assert_nothing_dropped(response)
    assert text_of(data_lines(response.text)) == "Hello, world!"
    assert "tools" not in fakes.huggingface.last.json


def test_open_webui_title_task_and_model_list(service: str, http: httpx.Client, fakes: Fakes) -> None:
    """A title (``routers/tasks.py``) is a whole reply; the model list is read for ``id`` and ``name``."""
    task = {"model": TOOLS_MODEL, "messages": [{"role": "user", "content": "### Task:\nGenerate a title"}]}
    response = http.post(f"{service}/v1/chat/completions", json={**task, "stream": False})
    assert_nothing_dropped(response)
    assert response.json()["choices"][0]["message"]["content"] == "Hello, world!"
    listing = http.get(f"{service}/v1/models").json()
    assert TOOLS_MODEL in {model["id"] for model in listing["data"]}
    assert all(isinstance(model["name"], str) and model["name"] for model in listing["data"])


# --- LangChain (langchain-openai), LiteLLM and aider, Continue, Roo Code -------------------------------------------

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city.",
        "parameters": {"properties": {"city": {"type": "string"}}, "required": ["city"], "type": "object"},
    },
}
CITY_SCHEMA = {
    "properties": {"city": {"title": "City", "type": "string"}},
    "required": ["city"],
    "title": "City",
    "type": "object",
    "additionalProperties": False,
}
HI = [{"content": "hi", "role": "user"}]
#: LangChain sends a tool loop's second turn so: the AI message's ``content: null`` beside its tool calls.
LANGCHAIN_SECOND_TURN = [
    {"content": "weather?", "role": "user"},
    {
        "content": None,
        "role": "assistant",
        "tool_calls": [
            {"type": "function", "id": "call_w1", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
        ],
    },
    {"content": "21", "role": "tool", "tool_call_id": "call_w1"},
]

#: client → (its exact body, fields that must reach the upstream as sent). Each answered 200 with nothing dropped.
DEFAULT_REQUESTS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "langchain-invoke": ({"model": TOOLS_MODEL, "stream": False, "messages": HI}, {}),
    "langchain-stream-usage": (
        {
            "model": TOOLS_MODEL,
            "stream": True,
            "messages": HI,
            "max_completion_tokens": 100,
            "stream_options": {"include_usage": True},
            "temperature": 0.2,
        },
        {"max_tokens": 100, "temperature": 0.2},
    ),
    "langchain-structured-output": (
        {
            "model": TOOLS_MODEL,
            "stream": False,
            "messages": [{"content": "x", "role": "user"}],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"schema": CITY_SCHEMA, "name": "City", "strict": True},
            },
        },
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "City", "schema": CITY_SCHEMA, "strict": True},
            }
        },
    ),
    "langchain-structured-output-function-calling": (
        {
            "model": TOOLS_MODEL,
            "stream": False,
            "messages": [{"content": "x", "role": "user"}],
            "parallel_tool_calls": False,
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "tools": [WEATHER_TOOL],
        },
        {"parallel_tool_calls": False, "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
    ),
    "langchain-tool-loop": (
        {"model": TOOLS_MODEL, "stream": True, "messages": LANGCHAIN_SECOND_TURN, "tools": [WEATHER_TOOL]},
        {},
    ),
    "aider-via-litellm": (
        {"model": TOOLS_MODEL, "messages": HI, "stream": True, "temperature": 0},
        {"temperature": 0},
    ),
    "aider-function": (
        {
            "model": TOOLS_MODEL,
            "messages": HI,
            "stream": True,
            "temperature": 0,
            "tools": [WEATHER_TOOL],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        },
        {"tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
    ),
    "continue-chat": (
        {
            "messages": HI,
            "model": LARGE_MODEL,
            "max_tokens": 4096,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
        {"max_tokens": 4096},
    ),
    "continue-agent": (
        {
            "messages": HI,
            "model": LARGE_MODEL,
            "max_tokens": 4096,
            "stream": True,
            "tools": [WEATHER_TOOL],
            "stream_options": {"include_usage": True},
            "parallel_tool_calls": False,
        },
        {"parallel_tool_calls": False},
    ),
    "roo-code": (
        {
            "model": TOOLS_MODEL,
            "temperature": 0,
            "messages": [{"role": "system", "content": "You are Roo."}, *HI],
            "stream": True,
            "stream_options": {"include_usage": True},
            "tools": [WEATHER_TOOL],
            "tool_choice": "auto",
            "parallel_tool_calls": False,
        },
        {"tool_choice": "auto", "parallel_tool_calls": False, "temperature": 0},
    ),
}


@pytest.mark.parametrize("client", list(DEFAULT_REQUESTS))
def test_a_clients_default_request_is_carried_whole(
    service: str, http: httpx.Client, fakes: Fakes, client: str
) -> None:
    body, carried = DEFAULT_REQUESTS[client]
    fake = fakes.openrouter if body["model"] == LARGE_MODEL else fakes.huggingface
    fake.script(Reply(tokens=['{"city": ', '"Paris"}']))
    response = http.post(f"{service}/v1/chat/completions", json=body)
    assert_nothing_dropped(response)
    if body["stream"]:
        events = data_lines(response.text)
        text = text_of(events)
        assert ("usage" in events[-1]) == ("stream_options" in body)
    else:
        text = response.json()["choices"][0]["message"]["content"]
    assert json.loads(text) == {"city": "Paris"}
    sent = fake.last.json
    assert {name: sent.get(name) for name in carried} == carried


def test_continue_default_max_tokens_above_a_models_limit_is_a_clear_400(
    service: str, http: httpx.Client, fakes: Fakes
) -> None:
    """Continue sends ``max_tokens: 4096`` unless a model's ``defaultCompletionOptions.maxTokens`` says otherwise;
    the Qwen model allows 512 (its ``max_completion_tokens`` in ``/v1/models``). As OpenAI's API does, that is a
    400 naming the field and the limit, not a silently shorter answer."""
    body = dict(DEFAULT_REQUESTS["continue-chat"][0], model=TOOLS_MODEL)
    response = http.post(f"{service}/v1/chat/completions", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "max_tokens" and "limit of 512" in error["message"]
    assert not fakes.huggingface.requests
