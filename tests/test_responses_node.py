"""``/v1/responses`` read by the AI SDK core (Node, ``tests/js/ai-sdk-openai.mjs``): ``generateText`` and
``streamText`` with ``createOpenAI({ baseURL })(model)``, whose default model speaks the Responses API.

Two pairs: ``v7`` = ai@7 + @ai-sdk/openai@4 (current), ``v5`` = ai@5 + @ai-sdk/openai@2 (AI SDK 5). Each
validates every event against its own zod schemas, so a wrong field fails here. The tool tests run the SDK's
own agent loop (``tool({ inputSchema: z.object(...) })``, ``stopWhen: stepCountIs(2)``) over function calls."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from modelgate.app import create_app
from modelgate.settings import Settings
from tests.fakes import PROMPT_TOKENS, Fakes, Fault, Reply
from tests.fakes._base import FakeUpstream, ToolCallScript
from tests.node_parsers import requires_js_package, requires_node_parsers, run_ai_sdk_openai
from tests.servers import serve_in_thread
from tests.test_openai_tools import tools_catalogue

pytestmark = [pytest.mark.node, requires_node_parsers, requires_js_package("@ai-sdk/openai")]

MODEL = "ollama/rwkv-6-world"
SDKS = ["v7", "v5"]
STATELESS = {"providerOptions": {"openai": {"store": False}}}


@pytest.fixture
def v1(fakes: Fakes) -> Iterator[str]:
    with serve_in_thread(create_app(Settings.from_env(fakes.env()))) as url:
        yield f"{url}/v1"


def ai_sdk(
    sdk: str, base_url: str, mode: str, options: dict[str, Any] | None = None, *, model: str = MODEL
) -> dict[str, Any]:
    return run_ai_sdk_openai(sdk, base_url, model, mode, options)


@pytest.mark.parametrize("sdk", SDKS)
def test_generate_text(v1: str, fakes: Fakes, sdk: str) -> None:
    fakes.ollama.script(Reply(tokens=["Hel", "lo"], usage=(13, 2)))
    result = ai_sdk(sdk, v1, "generate")
    assert "error" not in result, result
    assert result["text"] == "Hello"
    assert result["finishReason"] == "stop"
    assert result["usage"] == {"inputTokens": 13, "outputTokens": 2, "totalTokens": 15}
    assert result["responseId"].startswith("resp_") and result["responseModel"] == MODEL
    assert fakes.ollama.last.json["messages"] == [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Say hello"},
    ]


@pytest.mark.parametrize("sdk", SDKS)
def test_stream_text(v1: str, fakes: Fakes, sdk: str) -> None:
    fakes.ollama.script(Reply(tokens=["Hel", "lo", "!"]))
    result = ai_sdk(sdk, v1, "stream")
    assert result["errors"] == []
    assert result["text"] == "Hello!"
    assert result["finishReason"] == "stop"
    assert result["usage"] == {"inputTokens": PROMPT_TOKENS, "outputTokens": 3, "totalTokens": PROMPT_TOKENS + 3}
    parts = result["parts"]
    assert parts.index("text-start") < parts.index("text-delta") < parts.index("text-end") < parts.index("finish")


@pytest.mark.parametrize("sdk", SDKS)
def test_reasoning_stays_out_of_the_text(v1: str, fakes: Fakes, sdk: str) -> None:
    fakes.openrouter.script(Reply(tokens=["4"], reasoning=["2+2", " is 4"]))  # OpenRouter's delta.reasoning
    result = ai_sdk(sdk, v1, "stream", model="openrouter/deepseek-chat")
    assert result["text"] == "4" and result["errors"] == []
    # A reasoning item the SDK opens and closes; its raw text is reasoning_text, which the SDK does not show.
    assert result["parts"].index("reasoning-start") < result["parts"].index("reasoning-end")


REFUSAL = Reply(tokens=["I can't", " help."], options={"refusal": True})  # OpenAI's ``refusal``, content null


@pytest.mark.parametrize("mode", ["generate", "stream"])
def test_a_refusal_is_text_with_a_content_filter_finish(v1: str, fakes: Fakes, mode: str) -> None:
    """AI SDK 7 (@ai-sdk/openai 4.x) reads the ``refusal`` part and ``response.refusal.delta`` as text and
    finishes with ``content-filter``: a refusal is not mistaken for an answer."""
    fakes.openrouter.script(REFUSAL)
    result = ai_sdk("v7", v1, mode, model="openrouter/deepseek-chat")
    assert "error" not in result and result.get("errors", []) == [], result
    assert result["text"] == "I can't help."
    assert result["finishReason"] == "content-filter"


def test_ai_sdk_5_does_not_read_a_refusal(v1: str, fakes: Fakes) -> None:
    """@ai-sdk/openai 2.x (AI SDK 5) models no refusal, as it reads OpenAI's own: its stream skips
    ``response.refusal.*`` as unknown chunks (no error, no text), and its schema of a whole response takes only
    ``output_text`` parts, so ``generateText`` fails on the ``refusal`` part. Pinned here, as README says."""
    fakes.openrouter.script(REFUSAL, REFUSAL)
    streamed = ai_sdk("v5", v1, "stream", model="openrouter/deepseek-chat")
    assert streamed["errors"] == [] and streamed["text"] == "" and streamed["finishReason"] == "stop"
    assert streamed["parts"].index("text-start") < streamed["parts"].index("text-end")
    whole = ai_sdk("v5", v1, "generate", model="openrouter/deepseek-chat")
    assert whole["error"]["message"] == "Invalid JSON response"
    assert '"type":"refusal"' in whole["error"]["responseBody"]


@pytest.mark.parametrize("sdk", SDKS)
def test_a_reply_cut_by_max_output_tokens_finishes_with_length(v1: str, fakes: Fakes, sdk: str) -> None:
    fakes.ollama.script(Reply(tokens=["a", "b"], finish="length"))
    result = ai_sdk(sdk, v1, "generate", {"maxOutputTokens": 2})
    assert result["finishReason"] == "length"
    assert fakes.ollama.last.json["options"]["num_predict"] == 2


@pytest.mark.parametrize("sdk", SDKS)
def test_an_error_after_the_first_byte_is_an_error_part(v1: str, fakes: Fakes, sdk: str) -> None:
    fakes.ollama.script(Reply(tokens=["one", " two"], fault=Fault.error_after(1)))
    result = ai_sdk(sdk, v1, "stream")
    assert result["text"] == "one"
    [error] = result["errors"]
    assert "ollama" in error["message"] and error["code"] == "server_error"
    assert "error" in result["parts"]
    # AI SDK 7 reads response.failed as an error finish; AI SDK 5 does not know the event and says "unknown".
    assert result["finishReason"] == ("error" if sdk == "v7" else "unknown")


@pytest.mark.parametrize("sdk", SDKS)
def test_an_upstream_rate_limit_is_an_api_call_error(v1: str, fakes: Fakes, sdk: str) -> None:
    fakes.ollama.script(Reply(fault=Fault.status(429, retry_after=7)))
    result = ai_sdk(sdk, v1, "generate")
    assert result["error"]["statusCode"] == 429


@pytest.mark.parametrize("sdk", SDKS)
def test_a_conversation_works_when_the_app_says_store_false(v1: str, fakes: Fakes, sdk: str) -> None:
    fakes.ollama.script(Reply(tokens=["Hi"]), Reply(tokens=["Hi again"]))
    result = ai_sdk(sdk, v1, "two-turn", STATELESS)
    assert "error" not in result, result
    assert result["secondText"] == "Hi again"
    assert [(m["role"], m["content"]) for m in fakes.ollama.last.json["messages"]] == [
        ("user", "Say hello"),
        ("assistant", "Hi"),
        ("user", "Again"),
    ]


@pytest.mark.parametrize("sdk", SDKS)
def test_a_conversation_by_reference_is_refused_saying_what_to_do(v1: str, fakes: Fakes, sdk: str) -> None:
    """By default the provider sends an earlier answer as an ``item_reference`` (it assumes OpenAI stored it):
    a 400 that names the fix, never an answer made without the history."""
    result = ai_sdk(sdk, v1, "two-turn")
    assert result["text"] == "Hello, world!"
    assert result["error"]["statusCode"] == 400
    assert "item_reference" in result["error"]["message"]
    assert "store = false" in result["error"]["message"]
    assert len(fakes.ollama.requests) == 1


# --- tools: the SDK's agent loop (a tool call, the SDK runs the tool, the model answers) -------------------


@pytest.fixture
def tools_v1(fakes: Fakes) -> Iterator[str]:
    settings = Settings(**fakes.settings_overrides())  # type: ignore[arg-type]
    with serve_in_thread(create_app(settings, tools_catalogue(fakes))) as url:
        yield f"{url}/v1"


#: OpenRouter streams the arguments in fragments; Ollama's calls arrive whole.
TOOL_MODELS = {"t/deepseek": "openrouter", "t/llava": "ollama"}
ZURICH = ToolCallScript(name="get_weather", arguments='{"city": "Zürich"}', id="call_z")
#: AI SDK 7 sends an earlier call back whole; AI SDK 5 (@ai-sdk/openai 2.x) by reference unless told
#: ``store: false`` (``test_a_tool_loop_by_reference_is_refused_saying_what_to_do``).
LOOP_OPTIONS: dict[str, dict[str, Any]] = {"v7": {}, "v5": STATELESS}


def _tool_loop_checks(fake: FakeUpstream) -> None:
    """The second request carries the call and the tool's result, in the kind's own chat shapes."""
    first, second = (r.json for r in fake.requests)
    assert [t["function"]["name"] for t in first["tools"]] == ["get_weather"]
    assert first["tools"][0]["function"]["parameters"]["properties"] == {"city": {"type": "string"}}
    messages = second["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool"]
    assert messages[2]["content"] == "21 degrees in Zürich"


@pytest.mark.parametrize("model", list(TOOL_MODELS))
@pytest.mark.parametrize("sdk", SDKS)
def test_generate_text_runs_a_tool_loop(tools_v1: str, fakes: Fakes, sdk: str, model: str) -> None:
    fake = fakes[TOOL_MODELS[model]]
    fake.script(Reply(tokens=(), tool_calls=(ZURICH,), finish="tool_calls"), Reply(tokens=["It is 21", " degrees."]))
    result = ai_sdk(sdk, tools_v1, "tools", LOOP_OPTIONS[sdk], model=model)
    assert "error" not in result, result
    first, second = result["steps"]
    assert first["finishReason"] == "tool-calls"
    [call] = first["toolCalls"]
    assert (call["toolName"], call["input"]) == ("get_weather", {"city": "Zürich"})
    assert first["toolResults"] == ["21 degrees in Zürich"]
    assert second["finishReason"] == "stop" and result["text"] == "It is 21 degrees."
    _tool_loop_checks(fake)


@pytest.mark.parametrize("model", list(TOOL_MODELS))
@pytest.mark.parametrize("sdk", SDKS)
def test_stream_text_runs_a_tool_loop(tools_v1: str, fakes: Fakes, sdk: str, model: str) -> None:
    fake = fakes[TOOL_MODELS[model]]
    fake.script(Reply(tokens=(), tool_calls=(ZURICH,), finish="tool_calls"), Reply(tokens=["It is 21", " degrees."]))
    result = ai_sdk(sdk, tools_v1, "tools-stream", LOOP_OPTIONS[sdk], model=model)
    assert result["errors"] == []
    assert [(c["toolName"], c["input"]) for c in result["toolCalls"]] == [("get_weather", {"city": "Zürich"})]
    assert json.loads(result["inputDeltas"]) == {"city": "Zürich"}  # the arguments, streamed as input deltas
    assert result["toolResults"] == ["21 degrees in Zürich"]
    assert result["text"] == "It is 21 degrees."
    assert result["stepFinishes"] == ["tool-calls", "stop"]
    parts = result["parts"]
    assert parts.index("tool-input-start") < parts.index("tool-call") < parts.index("tool-result")
    assert parts.index("tool-result") < parts.index("text-delta")
    _tool_loop_checks(fake)


def test_a_tool_loop_by_reference_is_refused_saying_what_to_do(tools_v1: str, fakes: Fakes) -> None:
    """Without ``store: false`` AI SDK 5 sends the call back as an ``item_reference``: a 400 naming the fix."""
    fakes.openrouter.script(Reply(tokens=(), tool_calls=(ZURICH,), finish="tool_calls"))
    result = ai_sdk("v5", tools_v1, "tools", model="t/deepseek")
    assert result["error"]["statusCode"] == 400
    assert "store = false" in result["error"]["message"]
    assert len(fakes.openrouter.requests) == 1


# --- structured output and images ----------------------------------------------------------------------------


@pytest.mark.parametrize("sdk", SDKS)
def test_output_object_is_structured_output(tools_v1: str, fakes: Fakes, sdk: str) -> None:
    fakes.openrouter.script(Reply(tokens=['{"city": "Zürich",', ' "degrees": 21}']))
    result = ai_sdk(sdk, tools_v1, "object", model="t/deepseek")
    assert "error" not in result, result
    assert result["object"] == {"city": "Zürich", "degrees": 21}
    sent = fakes.openrouter.last.json["response_format"]
    assert sent["type"] == "json_schema"
    assert sent["json_schema"]["schema"]["properties"].keys() == {"city", "degrees"}


@pytest.mark.parametrize(("model", "kind"), [("t/deepseek", "openrouter"), ("t/llava", "ollama")])
@pytest.mark.parametrize("sdk", SDKS)
def test_an_image_part_reaches_the_provider(tools_v1: str, fakes: Fakes, sdk: str, model: str, kind: str) -> None:
    result = ai_sdk(sdk, tools_v1, "image", model=model)
    assert result["text"] == "Hello, world!", result
    png = "iVBORw0KGgo="  # the script's 8 PNG signature bytes, base64
    [message] = fakes[kind].last.json["messages"]
    if kind == "ollama":
        assert message == {"role": "user", "content": "What is this?", "images": [png]}
    else:
        assert message["content"] == [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}},
        ]
