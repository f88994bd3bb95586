"""``/v1/responses`` read by the AI SDK core (Node, ``tests/js/responses.mjs``): ``generateText`` and
``streamText`` with ``createOpenAI({ baseURL })(model)``, whose default model speaks the Responses API.

Two pairs: ``v7`` = ai@7 + @ai-sdk/openai@4 (current), ``v5`` = ai@5 + @ai-sdk/openai@2 (AI SDK 5). Each
validates every event against its own zod schemas, so a wrong field fails here."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from modelgate.app import create_app
from modelgate.settings import Settings
from tests.fakes import PROMPT_TOKENS, Fakes, Fault, Reply
from tests.node_parsers import JS_DIR, _run, requires_node_parsers
from tests.servers import serve_in_thread

_HAS_PROVIDER = (JS_DIR / "node_modules" / "@ai-sdk" / "openai" / "package.json").is_file()
pytestmark = [
    pytest.mark.node,
    requires_node_parsers,
    pytest.mark.skipif(
        not _HAS_PROVIDER, reason="tests/js/node_modules lacks @ai-sdk/openai (run: cd tests/js && npm ci)"
    ),
]

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
    return _run("responses.mjs", sdk, base_url, model, mode, json.dumps(options or {}))


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
