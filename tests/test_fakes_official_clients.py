"""The fakes checked by the providers' own official clients: a fake that drifts from its protocol fails here.

Each test points an official client (its HTTP code, its SSE/NDJSON reader and its pydantic types) at a
fake on loopback and compares what the client *parsed* with what the fake was scripted to say. A renamed
or retyped field is then either rejected by the client's types (TGI's ``StreamResponse`` needs ``token``,
Cloudflare's text result needs ``response``) or read as missing, which the value checks catch.

Clients: ``text-generation`` and ``huggingface_hub`` (TGI), ``openai`` (OpenRouter, the HF router, any
OpenAI-compatible server), ``ollama``, ``cloudflare`` (non-stream ``ai.run``, whose stream the SDK does
not parse).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import cloudflare
import huggingface_hub
import ollama
import openai
import pydantic
import pytest
import text_generation
from cloudflare.types.ai.ai_run_response import UnionMember8 as CloudflareTextResult
from text_generation.types import StreamResponse

from tests.fakes import CREDENTIALS, FakeHuggingFace, Fakes, Fault, Reply
from tests.fakes._base import Frames
from tests.fakes.cloudflare import ACCOUNT
from tests.fakes.cloudflare import TOKEN as CLOUDFLARE_TOKEN
from tests.fakes.huggingface import TOKEN as HF_TOKEN
from tests.fakes.openrouter import TOKEN as OPENROUTER_TOKEN
from tests.servers import serve_in_thread

pytestmark = [
    # text-generation 0.7 (its last release) still calls pydantic v1's ``.dict()`` on its request models.
    pytest.mark.filterwarnings(
        "ignore:The `dict` method is deprecated:pydantic.warnings.PydanticDeprecatedSince20:text_generation.client"
    ),
]

MESSAGES = [{"role": "user", "content": "What is 2+2?"}]
TOKENS = ["It", " is", " 4", "."]
REASONING = ["2+2", " makes 4"]

# -- Ollama: ollama.Client -------------------------------------------------------------------------------

NON_THINKING = "llama3.2:latest"
THINKING = "qwen3:0.6b"


@pytest.fixture
def ollama_client(fakes: Fakes) -> Iterator[ollama.Client]:
    with ollama.Client(host=fakes.ollama.root) as client:
        yield client


def test_ollama_stream_reads_text_finish_and_counts(fakes: Fakes, ollama_client: ollama.Client) -> None:
    fakes.ollama.script(Reply(tokens=TOKENS, usage=(26, 4), finish="length"))
    parts = list(ollama_client.chat(model=NON_THINKING, messages=MESSAGES, stream=True))
    assert [p.message.content for p in parts[:-1]] == TOKENS  # one line per token
    assert all(p.message.role == "assistant" and p.model == NON_THINKING for p in parts)
    assert [p.done for p in parts] == [False] * len(TOKENS) + [True]
    last = parts[-1]
    assert (last.done_reason, last.prompt_eval_count, last.eval_count) == ("length", 26, 4)
    assert all(p.message.thinking is None for p in parts)
    assert "think" not in fakes.ollama.last.json


@pytest.mark.parametrize(("think", "thinks"), [(True, True), (None, True), (False, False)])
def test_ollama_thinking_model_thinks_unless_told_not_to(
    fakes: Fakes, ollama_client: ollama.Client, think: bool | None, thinks: bool
) -> None:
    fakes.ollama.script(Reply(tokens=TOKENS, reasoning=REASONING))
    parts = list(ollama_client.chat(model=THINKING, messages=MESSAGES, stream=True, think=think))
    thinking = "".join(p.message.thinking or "" for p in parts)
    assert thinking == ("".join(REASONING) if thinks else "")
    assert "".join(p.message.content or "" for p in parts) == "".join(TOKENS)
    assert fakes.ollama.last.json.get("think") == think


def test_ollama_refuses_think_for_a_model_without_thinking(fakes: Fakes, ollama_client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        list(ollama_client.chat(model=NON_THINKING, messages=MESSAGES, stream=True, think=True))
    assert caught.value.status_code == 400
    assert caught.value.error == f'"{NON_THINKING}" does not support thinking'


def test_ollama_with_a_key_takes_ollama_api_key_as_ollama_python_sends_it(
    fakes: Fakes, monkeypatch: pytest.MonkeyPatch
) -> None:
    fakes.ollama.token = "ollama-key"
    with ollama.Client(host=fakes.ollama.root) as keyless, pytest.raises(ollama.ResponseError) as caught:
        keyless.chat(model=NON_THINKING, messages=MESSAGES)
    assert (caught.value.status_code, caught.value.error) == (401, "unauthorized")
    monkeypatch.setenv("OLLAMA_API_KEY", "ollama-key")  # read when the client is made
    with ollama.Client(host=fakes.ollama.root) as client:
        assert client.chat(model=NON_THINKING, messages=MESSAGES).message.content == "Hello, world!"
        assert [m.model for m in client.list().models] == list(fakes.ollama.listed())
    assert fakes.ollama.last.headers["authorization"] == "Bearer ollama-key"


def test_ollama_think_takes_the_levels_and_refuses_others(fakes: Fakes, ollama_client: ollama.Client) -> None:
    fakes.ollama.script(Reply(tokens=TOKENS, reasoning=REASONING))
    reply = ollama_client.chat(model=THINKING, messages=MESSAGES, think="max")
    assert reply.message.thinking == "".join(REASONING)
    with pytest.raises(ollama.ResponseError) as caught:
        ollama_client.chat(model=THINKING, messages=MESSAGES, think="xhigh")
    assert caught.value.status_code == 400
    assert caught.value.error.startswith('invalid think value: "xhigh" (must be "high", "medium", "low", "max"')


def test_ollama_non_thinking_model_never_sends_thinking(fakes: Fakes, ollama_client: ollama.Client) -> None:
    fakes.ollama.script(Reply(tokens=TOKENS, reasoning=REASONING))
    parts = list(ollama_client.chat(model=NON_THINKING, messages=MESSAGES, stream=True))
    assert all(p.message.thinking is None for p in parts)
    assert "".join(p.message.content or "" for p in parts) == "".join(TOKENS)


def test_ollama_non_stream_and_listing(fakes: Fakes, ollama_client: ollama.Client) -> None:
    fakes.ollama.script(Reply(tokens=TOKENS, reasoning=REASONING, usage=(26, 6)))
    client = ollama_client
    reply = client.chat(model=THINKING, messages=MESSAGES, stream=False, think=True)
    assert (reply.message.content, reply.message.thinking) == ("".join(TOKENS), "".join(REASONING))
    assert (reply.done, reply.done_reason, reply.prompt_eval_count, reply.eval_count) == (True, "stop", 26, 6)
    assert [m.model for m in client.list().models] == list(fakes.ollama.listed_by_default)


def test_ollama_errors_before_and_during_the_stream(fakes: Fakes, ollama_client: ollama.Client) -> None:
    client = ollama_client
    fakes.ollama.models = {NON_THINKING}
    with pytest.raises(ollama.ResponseError) as missing:
        list(client.chat(model="absent:7b", messages=MESSAGES, stream=True))
    assert missing.value.status_code == 404 and "absent:7b" in missing.value.error
    fakes.ollama.script(Reply(tokens=TOKENS, fault=Fault.error_after(2, message="llama runner died")))
    seen: list[str] = []
    with pytest.raises(ollama.ResponseError, match="llama runner died"):
        for part in client.chat(model=NON_THINKING, messages=MESSAGES, stream=True):
            seen.append(part.message.content or "")
    assert seen == TOKENS[:2]


# -- Cloudflare Workers AI: the cloudflare SDK (non-stream ai.run) ---------------------------------------

CLOUDFLARE_MODEL = "@cf/meta/llama-3.1-8b-instruct"


@pytest.fixture
def cloudflare_client(fakes: Fakes) -> Iterator[cloudflare.Cloudflare]:
    with cloudflare.Cloudflare(api_token=CLOUDFLARE_TOKEN, base_url=fakes.cloudflare.url, max_retries=0) as client:
        yield client


def test_cloudflare_run_result_is_the_sdks_text_generation_type(
    fakes: Fakes, cloudflare_client: cloudflare.Cloudflare
) -> None:
    fakes.cloudflare.script(Reply(tokens=TOKENS, usage=(30, 4)))
    result = cloudflare_client.ai.run(CLOUDFLARE_MODEL, account_id=ACCOUNT, messages=MESSAGES, max_tokens=64)
    # The SDK unwraps the v4 envelope's ``result``; its text-generation member needs ``response``.
    assert result is not None
    text = CloudflareTextResult.model_validate(result if isinstance(result, dict) else result.model_dump())
    assert text.response == "".join(TOKENS)
    assert text.usage is not None
    assert (text.usage.prompt_tokens, text.usage.completion_tokens, text.usage.total_tokens) == (30, 4, 34)
    assert fakes.cloudflare.last.json == {"messages": MESSAGES, "max_tokens": 64}


def test_cloudflare_errors_are_the_sdks_v4_envelope(fakes: Fakes, cloudflare_client: cloudflare.Cloudflare) -> None:
    client = cloudflare_client
    with pytest.raises(cloudflare.BadRequestError) as bad:
        client.ai.run(CLOUDFLARE_MODEL, account_id=ACCOUNT, messages=MESSAGES, max_tokens=0)
    body: Any = bad.value.body
    assert body["success"] is False and body["errors"][0]["code"] == 5006
    assert "max_tokens" in body["errors"][0]["message"]
    fakes.cloudflare.script(Reply(fault=Fault.status(429, retry_after=3)))
    with pytest.raises(cloudflare.RateLimitError) as limited:
        client.ai.run(CLOUDFLARE_MODEL, account_id=ACCOUNT, messages=MESSAGES)
    assert limited.value.body["errors"][0]["code"] == 3040  # type: ignore[index]
    with (
        cloudflare.Cloudflare(api_token="wrong", base_url=fakes.cloudflare.url, max_retries=0) as wrong,
        pytest.raises(cloudflare.AuthenticationError),
    ):
        wrong.ai.run(CLOUDFLARE_MODEL, account_id=ACCOUNT, messages=MESSAGES)


def test_cloudflare_model_search_pages_through_the_sdk(fakes: Fakes, cloudflare_client: cloudflare.Cloudflare) -> None:
    found = list(cloudflare_client.ai.models.list(account_id=ACCOUNT, search="llama"))
    names = [model["name"] if isinstance(model, dict) else model.name for model in found]  # type: ignore[attr-defined]
    assert names == list(fakes.cloudflare.listed_by_default)


# -- OpenRouter: the openai SDK --------------------------------------------------------------------------

OPENROUTER_MODEL = "deepseek/deepseek-chat:free"


@contextmanager
def openai_client(base_url: str, api_key: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0) as client:
        yield client


@pytest.fixture
def openrouter_client(fakes: Fakes) -> Iterator[openai.OpenAI]:
    with openai_client(fakes.openrouter.url, OPENROUTER_TOKEN) as client:
        yield client


def streamed(stream: Any, *, reasoning_field: str = "reasoning") -> tuple[str, str, str | None, Any]:
    """(text, reasoning, finish_reason, usage) as the SDK's ``ChatCompletionChunk`` objects carry them.

    Reasoning is not in the SDK's types: OpenRouter names it ``delta.reasoning``, vLLM and the HF router
    ``delta.reasoning_content``."""
    text, reasoning, finish, usage = [], [], None, None
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text.append(choice.delta.content or "")
            reasoning.append((choice.delta.model_extra or {}).get(reasoning_field) or "")
            finish = choice.finish_reason or finish
    return "".join(text), "".join(reasoning), finish, usage


def test_openrouter_stream_through_the_openai_sdk(fakes: Fakes, openrouter_client: openai.OpenAI) -> None:
    fakes.openrouter.script(Reply(tokens=TOKENS, reasoning=REASONING, usage=(31, 6), finish="length"))
    stream = openrouter_client.chat.completions.create(model=OPENROUTER_MODEL, messages=MESSAGES, stream=True)  # type: ignore[arg-type]
    text, reasoning, finish, usage = streamed(stream)
    assert (text, reasoning, finish) == ("".join(TOKENS), "".join(REASONING), "length")
    # OpenRouter sends usage on every stream, asked or not.
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (31, 6)


def test_openrouter_non_stream_and_listing_through_the_openai_sdk(
    fakes: Fakes, openrouter_client: openai.OpenAI
) -> None:
    fakes.openrouter.script(Reply(tokens=TOKENS))
    completion = openrouter_client.chat.completions.create(model=OPENROUTER_MODEL, messages=MESSAGES)  # type: ignore[arg-type]
    assert completion.choices[0].message.content == "".join(TOKENS)
    assert completion.choices[0].finish_reason == "stop"
    assert [m.id for m in openrouter_client.models.list()] == list(fakes.openrouter.listed_by_default)


def test_openrouter_errors_through_the_openai_sdk(fakes: Fakes, openrouter_client: openai.OpenAI) -> None:
    fakes.openrouter.script(Reply(fault=Fault.status(402)))
    with pytest.raises(openai.APIStatusError) as paying:
        openrouter_client.chat.completions.create(model=OPENROUTER_MODEL, messages=MESSAGES)  # type: ignore[arg-type]
    assert paying.value.status_code == 402 and "credits" in paying.value.message
    fakes.openrouter.script(Reply(tokens=TOKENS, fault=Fault.error_after(2, message="Provider disconnected")))
    stream = openrouter_client.chat.completions.create(model=OPENROUTER_MODEL, messages=MESSAGES, stream=True)  # type: ignore[arg-type]
    with pytest.raises(openai.APIError, match="Provider disconnected"):
        streamed(stream)
    with openai_client(fakes.openrouter.url, "wrong") as wrong, pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(model=OPENROUTER_MODEL, messages=MESSAGES)  # type: ignore[arg-type]


# -- TGI (self-hosted text-generation-inference): text-generation and huggingface_hub ---------------------


def tgi_url(fakes: Fakes) -> str:
    return fakes.huggingface.root


def test_tgi_stream_through_text_generation_client(fakes: Fakes) -> None:
    fakes.huggingface.script(Reply(tokens=TOKENS, usage=(31, 4)))
    client = text_generation.Client(tgi_url(fakes), headers={"Authorization": f"Bearer {HF_TOKEN}"})
    responses = list(client.generate_stream("<|im_start|>user\nHi<|im_end|>\n", max_new_tokens=16))
    assert all(isinstance(r, StreamResponse) for r in responses)
    assert [r.token.text for r in responses if not r.token.special] == TOKENS
    last = responses[-1]
    assert last.token.special and last.generated_text == "".join(TOKENS)
    assert last.details is not None
    assert (last.details.finish_reason, last.details.generated_tokens) == ("eos_token", 4)
    assert all(r.generated_text is None and r.details is None for r in responses[:-1])


@pytest.mark.anyio
async def test_tgi_stream_through_text_generation_async_client(fakes: Fakes) -> None:
    fakes.huggingface.script(Reply(tokens=TOKENS, usage=(31, 4)))
    client = text_generation.AsyncClient(tgi_url(fakes), headers={"Authorization": f"Bearer {HF_TOKEN}"})
    responses = [r async for r in client.generate_stream("Hi", max_new_tokens=16)]
    assert "".join(r.token.text for r in responses if not r.token.special) == "".join(TOKENS)
    assert responses[-1].details is not None and responses[-1].details.generated_tokens == 4


def test_tgi_length_finish_and_in_stream_error_through_text_generation_client(fakes: Fakes) -> None:
    client = text_generation.Client(tgi_url(fakes), headers={"Authorization": f"Bearer {HF_TOKEN}"})
    fakes.huggingface.script(Reply(tokens=TOKENS, finish="length"))
    last = list(client.generate_stream("Hi", max_new_tokens=4))[-1]
    assert last.details is not None and last.details.finish_reason == "length"
    assert last.generated_text == "".join(TOKENS) and not last.token.special
    fakes.huggingface.script(Reply(tokens=TOKENS, fault=Fault.error_after(2, code="overloaded")))
    with pytest.raises(text_generation.errors.OverloadedError, match="overloaded"):
        list(client.generate_stream("Hi", max_new_tokens=4))


def test_tgi_non_stream_details_through_text_generation_client(fakes: Fakes) -> None:
    # The client always asks for details on /generate and needs them (Response.details is required).
    fakes.huggingface.script(Reply(tokens=TOKENS, usage=(31, 4)))
    client = text_generation.Client(tgi_url(fakes), headers={"Authorization": f"Bearer {HF_TOKEN}"})
    response = client.generate("Hi", max_new_tokens=16)
    assert response.generated_text == "".join(TOKENS)
    assert (response.details.finish_reason, response.details.generated_tokens) == ("eos_token", 4)


def test_tgi_stream_through_huggingface_hub(fakes: Fakes) -> None:
    fakes.huggingface.script(Reply(tokens=TOKENS, usage=(31, 4)))
    client = huggingface_hub.InferenceClient(base_url=tgi_url(fakes), api_key=HF_TOKEN)
    outputs = list(client.text_generation("Hi", stream=True, details=True, max_new_tokens=16))
    assert all(isinstance(o, huggingface_hub.TextGenerationStreamOutput) for o in outputs)
    assert "".join(o.token.text for o in outputs if not o.token.special) == "".join(TOKENS)
    assert outputs[-1].details is not None
    assert (outputs[-1].details.finish_reason, outputs[-1].details.generated_tokens) == ("eos_token", 4)
    assert fakes.huggingface.last.json["parameters"]["details"] is True


# -- The HF router and any OpenAI-compatible server: the openai SDK and huggingface_hub's chat_completion -------

HF_MODEL = "Qwen/Qwen2.5-72B-Instruct"


@pytest.mark.parametrize("asked", [True, False], ids=["usage-asked", "usage-not-asked"])
def test_hf_router_stream_through_the_openai_sdk(fakes: Fakes, asked: bool) -> None:
    fakes.huggingface.script(Reply(tokens=TOKENS, reasoning=REASONING, usage=(31, 6), finish="length"))
    options: Any = {"stream_options": {"include_usage": True}} if asked else {}
    with openai_client(fakes.huggingface.root + "/v1", HF_TOKEN) as client:
        stream = client.chat.completions.create(model=HF_MODEL + ":fastest", messages=MESSAGES, stream=True, **options)  # type: ignore[call-overload]
        text, reasoning, finish, usage = streamed(stream, reasoning_field="reasoning_content")
    assert (text, reasoning, finish) == ("".join(TOKENS), "".join(REASONING), "length")
    # Like every OpenAI-compatible server but OpenRouter: stream usage only when asked for.
    if asked:
        assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (31, 6)
    else:
        assert usage is None
    assert fakes.huggingface.last.path == "/v1/chat/completions"


def test_hf_router_through_huggingface_hub_chat_completion(fakes: Fakes) -> None:
    fakes.huggingface.script(Reply(tokens=TOKENS, usage=(31, 4)))
    client = huggingface_hub.InferenceClient(base_url=fakes.huggingface.root + "/v1", api_key=HF_TOKEN)
    chunks = list(client.chat_completion(MESSAGES, model=HF_MODEL, stream=True, stream_options={"include_usage": True}))
    assert all(isinstance(c, huggingface_hub.ChatCompletionStreamOutput) for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "".join(TOKENS)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    usage = [c.usage for c in chunks if c.usage is not None]
    assert [(u.prompt_tokens, u.completion_tokens) for u in usage] == [(31, 4)]
    assert fakes.huggingface.last.json["model"] == HF_MODEL


def test_hf_per_model_chat_route_is_not_taken_by_tgi(fakes: Fakes) -> None:
    # huggingface_hub appends /v1/chat/completions to a model URL: the route real hf-inference serves.
    fakes.huggingface.script(Reply(tokens=TOKENS))
    client = huggingface_hub.InferenceClient(model=f"{fakes.huggingface.root}/models/{HF_MODEL}", api_key=HF_TOKEN)
    output = client.chat_completion(MESSAGES, max_tokens=16)
    assert output.choices[0].message.content == "".join(TOKENS)
    assert fakes.huggingface.last.path == f"/models/{HF_MODEL}/v1/chat/completions"


@pytest.mark.parametrize("asked", [True, False], ids=["usage-asked", "usage-not-asked"])
def test_openai_compatible_fake_through_the_openai_sdk(fakes: Fakes, asked: bool) -> None:
    model = fakes.openai.listed_by_default[0]
    fakes.openai.script(Reply(tokens=TOKENS, usage=(31, 4)))
    options: Any = {"stream_options": {"include_usage": True}} if asked else {}
    with openai_client(fakes.openai.url, "unused") as client:
        stream = client.chat.completions.create(model=model, messages=MESSAGES, stream=True, **options)  # type: ignore[call-overload]
        text, _, finish, usage = streamed(stream)
        assert [m.id for m in client.models.list()] == [model]
    assert (text, finish) == ("".join(TOKENS), "stop")
    assert (usage is not None) is asked


# -- the checks above can fail: a fake drifted on purpose is rejected by the same official client -----------


class _DriftedTGI(FakeHuggingFace):
    """TGI with ``token`` renamed in every stream event."""

    def render(self, reply: Reply, *, details: bool) -> Frames:
        frames = super().render(reply, details=details)

        def drift(items: list[bytes]) -> list[bytes]:
            return [frame.replace(b'"token":', b'"tok":') for frame in items]

        return Frames(drift(frames.preamble), drift(frames.tokens), drift(frames.trailer), drift(frames.error))


def test_a_drifted_tgi_fake_is_rejected_by_text_generation() -> None:
    with serve_in_thread(_DriftedTGI().app) as root:
        client = text_generation.Client(root, headers={"Authorization": f"Bearer {HF_TOKEN}"})
        # Not a StreamResponse, so the client reads it as an error payload, and it is not one either.
        with pytest.raises(KeyError):
            list(client.generate_stream("Hi", max_new_tokens=4))


def test_a_drifted_cloudflare_result_is_rejected_by_the_sdk_type() -> None:
    drifted = {"result_text": "".join(TOKENS), "tool_calls": []}
    with pytest.raises(pydantic.ValidationError, match="response"):
        CloudflareTextResult.model_validate(drifted)


def test_credentials_table_matches_the_fakes() -> None:
    # The tokens the official clients above send are the ones the fakes accept.
    assert CREDENTIALS["huggingface"] == {"HF_TOKEN": HF_TOKEN}
    assert CREDENTIALS["openrouter"] == {"OPENROUTER_API_KEY": OPENROUTER_TOKEN}
