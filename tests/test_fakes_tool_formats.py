"""The fakes' tool calls as the official ``openai`` SDK's types read them: each streamed chunk is a
``ChatCompletionChunk`` and a whole reply a ``ChatCompletion`` (so what modelgate parses is the real format,
not one the fakes and the adapter merely agree on)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from tests.fakes import Fakes, Reply
from tests.fakes._base import ToolCallScript
from tests.fakes.huggingface import TOKEN as HF_TOKEN
from tests.fakes.openrouter import TOKEN as OPENROUTER_TOKEN

CALL = ToolCallScript(name="get_weather", arguments='{"city": "Zürich", "days": 3}', id="call_7")

#: fake → (URL of its chat route, its key, a model it serves).
ROUTES = {
    "openai": (lambda f: f.openai.url, None, "HuggingFaceTB/SmolLM2-135M-Instruct"),
    "huggingface": (lambda f: f.huggingface.url + "/v1", HF_TOKEN, "Qwen/Qwen2.5-72B-Instruct"),
    "openrouter": (lambda f: f.openrouter.url, OPENROUTER_TOKEN, "deepseek/deepseek-chat:free"),
}


def _post(fakes: Fakes, name: str, stream: bool) -> httpx.Response:
    url, token, model = ROUTES[name]
    fakes[name].script(Reply(tokens=(), tool_calls=(CALL,), finish="tool_calls"))
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    return httpx.post(f"{url(fakes)}/chat/completions", json=body, headers=headers)


@pytest.mark.parametrize("name", list(ROUTES))
def test_streamed_tool_call_chunks_are_sdk_chunks(fakes: Fakes, name: str) -> None:
    response = _post(fakes, name, stream=True)
    chunks = [
        ChatCompletionChunk.model_validate(json.loads(line[len("data: ") :]))
        for line in response.text.splitlines()
        if line.startswith("data: {")
    ]
    pieces = [call for chunk in chunks for choice in chunk.choices for call in choice.delta.tool_calls or []]
    assert pieces[0].id == "call_7" and pieces[0].function is not None and pieces[0].function.name == "get_weather"
    assert len(pieces) > 2  # the arguments come in fragments
    assert "".join(p.function.arguments or "" for p in pieces if p.function) == CALL.arguments
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]


@pytest.mark.parametrize("name", list(ROUTES))
def test_whole_tool_call_reply_is_an_sdk_completion(fakes: Fakes, name: str) -> None:
    completion = ChatCompletion.model_validate(_post(fakes, name, stream=False).json())
    calls = completion.choices[0].message.tool_calls or []
    assert [(c.id, c.function.name, c.function.arguments) for c in calls] == [("call_7", "get_weather", CALL.arguments)]
    assert completion.choices[0].finish_reason == "tool_calls"
