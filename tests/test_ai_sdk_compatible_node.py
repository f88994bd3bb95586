"""``/v1/chat/completions`` read by the Vercel AI SDK's ``@ai-sdk/openai-compatible`` 3.0.92 with ai@7 (Node,
``tests/js/ai-sdk-openai.mjs``, SDK ``compatible``), created as Cline's SDK creates it for an OpenAI-compatible
provider (``createOpenAICompatible({ name, baseURL, apiKey, includeUsage: true })``).

What it sends (vercel/ai ``packages/openai-compatible/src/chat/openai-compatible-chat-language-model.ts``
``getArgs``): ``model``, ``messages``, the call's settings only when given, ``tools`` with ``tool_choice: "auto"``,
``response_format`` ``json_object`` (``json_schema`` only with ``supportsStructuredOutputs``), and on a stream
``stream_options.include_usage``. What it needs back: every chunk passes its zod ``chunkBaseSchema`` (or the error
schema), a tool call's first piece has ``id`` and ``function.name``, usage in a chunk of its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from modelgate.app import create_app
from modelgate.settings import Settings
from tests.fakes import Fakes, Fault, Reply
from tests.fakes._base import ToolCallScript
from tests.node_parsers import requires_js_package, requires_node_parsers, run_ai_sdk_openai
from tests.servers import serve_in_thread
from tests.test_reasoning_round_trip import round_trip_catalogue

pytestmark = [pytest.mark.node, requires_node_parsers, requires_js_package("@ai-sdk/openai-compatible")]

#: The default catalogue's Hugging Face model with tools and structured output.
MODEL = "qwen/Qwen2.5-72B-Instruct"
TOKENS = ["Hel", "lo", "!"]


@pytest.fixture
def v1(fakes: Fakes) -> Iterator[str]:
    with serve_in_thread(create_app(Settings.from_env(fakes.env()))) as url:
        yield f"{url}/v1"


def compatible(v1: str, mode: str) -> dict[str, Any]:
    result = run_ai_sdk_openai("compatible", v1, MODEL, mode)
    assert "error" not in result, result
    return result


@pytest.mark.parametrize("mode", ["generate", "stream"])
def test_ai_sdk_openai_compatible_reads_text_and_usage(v1: str, fakes: Fakes, mode: str) -> None:
    fakes.huggingface.script(Reply(tokens=TOKENS, usage=(21, 3)))
    result = compatible(v1, mode)
    assert result["text"] == "".join(TOKENS)
    assert result["finishReason"] == "stop"
    # On a stream, from the usage chunk (``"choices": []``) that ``includeUsage`` asked for.
    assert result["usage"] == {"inputTokens": 21, "outputTokens": 3, "totalTokens": 24}
    assert result.get("errors", []) == []


@pytest.mark.parametrize("mode", ["tools", "tools-stream"])
def test_ai_sdk_openai_compatible_runs_a_tool_loop(v1: str, fakes: Fakes, mode: str) -> None:
    call = ToolCallScript(name="get_weather", arguments='{"city": "Zürich"}', id="call_w1")
    fakes.huggingface.script(Reply(tokens=[], finish="tool_calls", tool_calls=[call]), Reply(tokens=["Sunny"]))
    result = compatible(v1, mode)
    assert result["text"] == "Sunny" and result["finishReason"] == "stop"
    calls = result["steps"][0]["toolCalls"] if mode == "tools" else result["toolCalls"]
    assert calls == [{"toolCallId": "call_w1", "toolName": "get_weather", "input": {"city": "Zürich"}}]
    second = fakes.huggingface.last.json["messages"]
    assert second[-1] == {"role": "tool", "tool_call_id": "call_w1", "content": "21 degrees in Zürich"}


def test_ai_sdk_openai_compatible_structured_output(v1: str, fakes: Fakes) -> None:
    fakes.huggingface.script(Reply(tokens=['{"city": "Zürich", ', '"degrees": 21}']))
    result = compatible(v1, "object")
    assert result["object"] == {"city": "Zürich", "degrees": 21}
    assert fakes.huggingface.last.json["response_format"] == {"type": "json_object"}


def test_ai_sdk_openai_compatible_second_turn(v1: str, fakes: Fakes) -> None:
    fakes.huggingface.script(Reply(tokens=["Hi"]), Reply(tokens=["Again"]))
    result = compatible(v1, "two-turn")
    assert (result["text"], result["secondText"]) == ("Hi", "Again")
    assert [m["role"] for m in fakes.huggingface.last.json["messages"]] == ["user", "assistant", "user"]


def test_ai_sdk_openai_compatible_sees_a_failure_after_the_first_byte(v1: str, fakes: Fakes) -> None:
    """The error event before ``[DONE]`` fails its chunk schema's first branch and passes its error schema: the SDK
    reports it as an error part after the text that came, never as a clean finish."""
    fakes.huggingface.script(Reply(tokens=TOKENS, fault=Fault.error_after(2, message="boom")))
    result = run_ai_sdk_openai("compatible", v1, MODEL, "stream")
    assert result["text"] == "".join(TOKENS[:2])
    assert [error["message"] for error in result["errors"]] == [
        "Upstream provider error (huggingface): failed with status 500: boom"
    ]


@pytest.mark.parametrize("mode", ["tools", "tools-stream"])
def test_ai_sdk_openai_compatible_hands_a_gemini_thought_signature_back(fakes: Fakes, mode: str) -> None:
    """Gemini 3 on Google's OpenAI compatibility API (an ``openai`` instance): the SDK reads the call's
    ``extra_content.google.thought_signature`` (into the tool call's provider metadata) and sends it back on the call
    in the next step (``convert-to-openai-compatible-chat-messages.ts``); the fake, as Gemini 3, refuses the step
    without it."""
    fakes.openai.gemini = True
    call = ToolCallScript(name="get_weather", arguments='{"city": "Zürich"}', id="call_w1")
    fakes.openai.script(Reply(tokens=[], finish="tool_calls", tool_calls=[call]), Reply(tokens=["Sunny"]))
    settings = Settings(**fakes.settings_overrides())  # type: ignore[arg-type]
    with serve_in_thread(create_app(settings, round_trip_catalogue(fakes))) as url:
        result = run_ai_sdk_openai("compatible", f"{url}/v1", "t/gemini", mode)
    assert "error" not in result, result
    assert (result["text"], result["finishReason"]) == ("Sunny", "stop")
    signature = fakes.openai.server.signatures["call_w1"]
    sent = fakes.openai.last.json["messages"][1]["tool_calls"][0]
    assert sent["extra_content"] == {"google": {"thought_signature": signature}}
