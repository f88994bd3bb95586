"""``POST /v1/chat/completions`` end to end: the official ``openai`` SDK (sync and async) → modelgate on a
loopback port → the fake upstreams of ``tests/fakes`` speaking each provider's real protocol."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pydantic
import pytest

from modelgate.app import create_app
from modelgate.catalogue import load_catalogue
from modelgate.settings import Settings
from tests.fakes import PROMPT_TOKENS, Fakes, Fault, Reply
from tests.servers import serve_in_thread

#: One catalogue model per provider, and where that provider's request carries the sampling values.
MODELS = {
    "huggingface": "qwen/Qwen2.5-72B-Instruct",
    "cloudflare": "cloudflare/llama-3.3-70b-instruct-fp8-fast",
    "openrouter": "openrouter/deepseek-chat",
    "ollama": "ollama/rwkv-6-world",
}
PROVIDERS = list(MODELS)


def _flat(body: dict[str, Any]) -> dict[str, Any]:
    return {"max": body.get("max_tokens"), "temperature": body.get("temperature"), "seed": body.get("seed")}


def _ollama(body: dict[str, Any]) -> dict[str, Any]:
    o = body.get("options", {})
    return {"max": o.get("num_predict"), "temperature": o.get("temperature"), "seed": o.get("seed")}


#: provider → the sampling values its fake received, under neutral names.
UPSTREAM_PARAMS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "huggingface": _flat,
    "cloudflare": _flat,
    "openrouter": _flat,
    "ollama": _ollama,
}

TOKENS = ["Hel", "lo", ", wörld", " 😀 <b>&</b>"]
TEXT = "".join(TOKENS)
MESSAGES: list[Any] = [
    {"role": "developer", "content": "Be terse."},
    {"role": "user", "content": [{"type": "text", "text": "Say hello"}]},
]


@pytest.fixture
def service(fakes: Fakes) -> Iterator[str]:
    with serve_in_thread(create_app(Settings.from_env(fakes.env()))) as url:
        yield url


@pytest.fixture
def client(service: str) -> Iterator[openai.OpenAI]:
    with sdk(service) as client:
        yield client


def sdk(url: str, **options: Any) -> openai.OpenAI:
    options.setdefault("api_key", "test-key")
    return openai.OpenAI(base_url=f"{url}/v1", max_retries=0, **options)


def async_sdk(url: str, **options: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="test-key", max_retries=0, **options)


# --- one model of each provider ------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_non_streamed_completion(client: openai.OpenAI, fakes: Fakes, provider: str) -> None:
    fakes[provider].script(Reply(tokens=TOKENS, usage=(13, 4)))
    raw = client.chat.completions.with_raw_response.create(
        model=MODELS[provider], messages=MESSAGES, max_tokens=7, temperature=0.3, seed=42, user="someone"
    )
    completion = raw.parse()
    assert raw.headers["x-modelgate-model"] == MODELS[provider]
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == MODELS[provider]
    assert len(completion.choices) == 1
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == TEXT
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (13, 4)
    assert completion.usage.total_tokens == 17
    # The call's values replaced the catalogue's defaults upstream; `user` was not forwarded.
    sent = fakes[provider].last.json
    assert UPSTREAM_PARAMS[provider](sent) == {"max": 7, "temperature": 0.3, "seed": 42}
    assert "someone" not in str(sent)
    assert "Be terse." in str(sent) and "Say hello" in str(sent)


#: The kinds whose non-streamed call asks the upstream for one JSON reply (``Provider.complete``).
ONE_JSON_REPLY = {"huggingface", "openrouter", "ollama", "cloudflare"}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_non_streamed_call_asks_the_upstream_for_one_json_reply(
    client: openai.OpenAI, fakes: Fakes, provider: str
) -> None:
    fakes[provider].script(Reply(tokens=TOKENS), Reply(tokens=TOKENS))
    completion = client.chat.completions.create(model=MODELS[provider], messages=MESSAGES)
    whole = fakes[provider].last.json
    with client.chat.completions.create(model=MODELS[provider], messages=MESSAGES, stream=True) as stream:
        streamed_text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    streamed = fakes[provider].last.json
    assert completion.choices[0].message.content == streamed_text == TEXT
    assert streamed["stream"] is True
    if provider in ONE_JSON_REPLY:
        # Workers AI's default is not to stream, and its own client sends no ``stream``.
        assert whole.get("stream") is (None if provider == "cloudflare" else False)
        assert "stream_options" not in whole  # a whole reply carries its usage unasked
    else:
        assert whole["stream"] is True


def test_a_workers_ai_model_answering_in_the_openai_format_is_relayed_whole_and_streamed(
    client: openai.OpenAI, fakes: Fakes
) -> None:
    """Newer Workers AI models answer Chat Completions chunks and a chat.completion inside Cloudflare's transport."""
    fakes.cloudflare.default = Reply(tokens=["It", " is", " 4."], usage=(9, 3), options={"openai_format": True})
    whole = client.chat.completions.create(model=MODELS["cloudflare"], messages=MESSAGES)
    assert "stream" not in fakes.cloudflare.last.json
    assert whole.choices[0].message.content == "It is 4." and whole.choices[0].finish_reason == "stop"
    assert whole.usage is not None and (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (9, 3)
    stream = client.chat.completions.create(
        model=MODELS["cloudflare"], messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert fakes.cloudflare.last.json["stream"] is True
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "It is 4."
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3


def test_a_whole_reply_without_usage_is_estimated_and_says_so(client: openai.OpenAI, fakes: Fakes) -> None:
    fakes.openrouter.script(Reply(tokens=["four words of text"], usage=None))
    raw = client.chat.completions.with_raw_response.create(model=MODELS["openrouter"], messages=MESSAGES)
    assert fakes.openrouter.last.json["stream"] is False
    assert raw.headers["x-modelgate-usage"] == "estimated"
    usage = raw.http_response.json()["usage"]
    assert usage["estimated"] is True
    assert usage["completion_tokens"] == 5  # 18 characters, ~4 a token


def test_stream_null_is_a_whole_reply(client: openai.OpenAI, fakes: Fakes) -> None:
    # The SDKs' non-streaming params type it ``Optional[Literal[False]]``.
    completion = client.chat.completions.create(model=MODELS["openrouter"], messages=MESSAGES, stream=None)
    assert completion.choices[0].message.content
    assert fakes.openrouter.last.json["stream"] is False


def test_an_upstream_error_status_on_a_whole_reply_maps_as_on_a_stream(client: openai.OpenAI, fakes: Fakes) -> None:
    fakes.openrouter.script(Reply(tokens=["x"], fault=Fault.status(402, message="Insufficient credits")))
    with pytest.raises(openai.InternalServerError, match=r"payment required.*Insufficient credits") as caught:
        client.chat.completions.create(model=MODELS["openrouter"], messages=MESSAGES)
    assert caught.value.status_code == 502
    assert fakes.openrouter.last.json["stream"] is False


@pytest.mark.parametrize("provider", PROVIDERS)
def test_streamed_completion_with_usage(service: str, fakes: Fakes, provider: str) -> None:
    fakes[provider].script(Reply(tokens=TOKENS, usage=(13, 4)))

    async def main() -> list[openai.types.chat.ChatCompletionChunk]:
        async with async_sdk(service) as client:
            stream = await client.chat.completions.create(
                model=MODELS[provider],
                messages=MESSAGES,
                stream=True,
                stream_options={"include_usage": True},
                max_completion_tokens=9,
            )
            return [chunk async for chunk in stream]

    chunks = asyncio.run(main())
    assert len({(c.id, c.created, c.model) for c in chunks}) == 1
    assert chunks[0].model == MODELS[provider]
    assert chunks[0].choices[0].delta.role == "assistant"
    *content, finish, usage = chunks
    assert "".join(c.choices[0].delta.content or "" for c in content) == TEXT
    assert all(c.choices[0].finish_reason is None and c.usage is None for c in content)
    assert finish.choices[0].finish_reason == "stop"
    assert finish.choices[0].delta.content is None and finish.choices[0].delta.role is None
    assert usage.choices == []
    assert usage.usage is not None
    assert (usage.usage.prompt_tokens, usage.usage.completion_tokens, usage.usage.total_tokens) == (13, 4, 17)
    assert UPSTREAM_PARAMS[provider](fakes[provider].last.json)["max"] == 9


def test_stream_without_include_usage_has_no_usage_chunk(client: openai.OpenAI, fakes: Fakes) -> None:
    with client.chat.completions.create(model=MODELS["ollama"], messages=MESSAGES, stream=True) as stream:
        chunks = list(stream)
    assert all(len(c.choices) == 1 and c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello, world!"


def test_stream_ends_with_done_on_the_wire(service: str) -> None:
    body = {"model": MODELS["ollama"], "messages": MESSAGES, "stream": True}
    with httpx.stream("POST", f"{service}/v1/chat/completions", json=body) as response:
        raw = response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-accel-buffering"] == "no"
    assert raw.endswith(b'"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n')


def test_length_finish_and_auto_usage(client: openai.OpenAI, fakes: Fakes) -> None:
    fakes.ollama.script(Reply(tokens=["a", "b"], finish="length"))
    completion = client.chat.completions.create(model=MODELS["ollama"], messages=MESSAGES, max_tokens=2)
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (PROMPT_TOKENS, 2)


def test_reasoning_is_kept_apart_from_content(client: openai.OpenAI, fakes: Fakes) -> None:
    reply = Reply(tokens=["4"], reasoning=["2+2", " is 4"])
    fakes.openrouter.script(reply, reply)
    completion = client.chat.completions.create(model=MODELS["openrouter"], messages=MESSAGES)
    message = completion.choices[0].message
    assert message.content == "4"
    assert message.model_extra == {"reasoning_content": "2+2 is 4"}
    with client.chat.completions.create(model=MODELS["openrouter"], messages=MESSAGES, stream=True) as stream:
        deltas = [c.choices[0].delta for c in stream if c.choices]
    assert "".join((d.model_extra or {}).get("reasoning_content", "") for d in deltas) == "2+2 is 4"
    assert "".join(d.content or "" for d in deltas) == "4"


def usage_whole_and_streamed(client: openai.OpenAI, fakes: Fakes, reply: Reply) -> tuple[Any, Any]:
    """The usage of ``reply`` through /v1, asked whole and then streamed (with ``include_usage``)."""
    fakes.openrouter.script(reply, reply)
    whole = client.chat.completions.create(model=MODELS["openrouter"], messages=MESSAGES).usage
    with client.chat.completions.create(
        model=MODELS["openrouter"], messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    ) as stream:
        [streamed] = [chunk.usage for chunk in stream if chunk.usage is not None]
    return whole, streamed


def test_reasoning_tokens_the_provider_reports_are_in_the_usage(client: openai.OpenAI, fakes: Fakes) -> None:
    reply = Reply(tokens=["4"], reasoning=["2+2", " is 4"], usage=(20, 3), options={"reasoning_tokens": 2})
    for usage in usage_whole_and_streamed(client, fakes, reply):
        assert usage is not None and usage.completion_tokens_details is not None
        assert usage.completion_tokens_details.reasoning_tokens == 2


def test_prompt_tokens_the_provider_served_from_its_cache_are_in_the_usage(client: openai.OpenAI, fakes: Fakes) -> None:
    reply = Reply(tokens=["4"], usage=(1200, 1), options={"cached_tokens": 1024})
    for usage in usage_whole_and_streamed(client, fakes, reply):
        assert usage is not None and usage.prompt_tokens_details is not None
        assert usage.prompt_tokens_details.cached_tokens == 1024


def test_a_refusal_is_the_messages_refusal_streamed_and_whole(client: openai.OpenAI, fakes: Fakes) -> None:
    """OpenAI's models refuse in ``refusal`` beside a null ``content``; ``chat.completions.parse`` reads it there."""
    reply = Reply(tokens=["I can't", " help with that."], options={"refusal": True})
    fakes.openrouter.script(reply, reply, reply)
    message = client.chat.completions.create(model=MODELS["openrouter"], messages=MESSAGES).choices[0].message
    assert (message.content, message.refusal) == (None, "I can't help with that.")
    with client.chat.completions.create(model=MODELS["openrouter"], messages=MESSAGES, stream=True) as stream:
        deltas = [c.choices[0].delta for c in stream if c.choices]
    assert "".join(d.refusal or "" for d in deltas) == "I can't help with that."
    assert not "".join(d.content or "" for d in deltas)

    class Answer(pydantic.BaseModel):
        value: int

    parsed = client.chat.completions.parse(model=MODELS["openrouter"], messages=MESSAGES, response_format=Answer)
    assert parsed.choices[0].message.refusal == "I can't help with that." and parsed.choices[0].message.parsed is None


def test_a_refusal_sent_back_is_the_assistants_text(client: openai.OpenAI, fakes: Fakes) -> None:
    """The usual loop appends the reply's message (null content, ``refusal``) to the conversation; a refusal
    content part likewise. The provider sees the words the model said."""
    fakes.openrouter.script(Reply(tokens=["I can't", " help with that."], options={"refusal": True}))
    model = MODELS["openrouter"]
    refusal = client.chat.completions.create(model=model, messages=MESSAGES).choices[0].message
    messages: list[Any] = [
        *MESSAGES,
        refusal,
        {"role": "user", "content": "Why not?"},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "It is against the rules."}]},
        {"role": "user", "content": "Say hi then"},
    ]
    client.chat.completions.create(model=model, messages=messages)
    sent = fakes.openrouter.last.json["messages"]
    assert sent[2] == {"role": "assistant", "content": "I can't help with that."}
    assert sent[4] == {"role": "assistant", "content": "It is against the rules."}


#: Two participants of one conversation, told apart by OpenAI's message ``name`` (openai-python
#: ``ChatCompletionUserMessageParam.name``, and the system, developer and assistant messages' own).
NAMED: list[Any] = [
    {"role": "system", "content": "Answer the one who asked.", "name": "host"},
    {"role": "user", "content": "I am hungry.", "name": "alice"},
    {"role": "user", "content": "Who is hungry?", "name": "bob"},
]


def test_message_names_reach_a_chat_completions_upstream(client: openai.OpenAI, fakes: Fakes) -> None:
    raw = client.chat.completions.with_raw_response.create(model=MODELS["openrouter"], messages=NAMED)
    raw.parse()
    assert [m.get("name") for m in fakes.openrouter.last.json["messages"]] == ["host", "alice", "bob"]
    assert "x-modelgate-dropped-params" not in raw.headers


@pytest.mark.parametrize("provider", ["ollama", "cloudflare"])
def test_message_names_a_provider_cannot_carry_are_reported(client: openai.OpenAI, fakes: Fakes, provider: str) -> None:
    raw = client.chat.completions.with_raw_response.create(model=MODELS[provider], messages=NAMED)
    raw.parse()
    assert raw.headers["x-modelgate-dropped-params"].split(",") == ["messages.name"]
    assert all("name" not in m for m in fakes[provider].last.json["messages"])


#: Prompt-caching breakpoints as Roo Code and Cline send them for Anthropic models through OpenRouter (the system
#: prompt's one text part), and as OpenRouter's prompt-caching page shows them: on the book, not on the question
#: after it, so that another question about the same book reads the cache.
CACHED: list[Any] = [
    {"role": "system", "content": [{"type": "text", "text": "You are Roo.", "cache_control": {"type": "ephemeral"}}]},
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "Given the book below:"},
            {"type": "text", "text": "HUGE TEXT BODY", "cache_control": {"type": "ephemeral", "ttl": "1h"}},
            {"type": "text", "text": "Name all the characters."},
        ],
    },
]


def test_prompt_caching_breakpoints_reach_openrouter_on_their_parts(client: openai.OpenAI, fakes: Fakes) -> None:
    raw = client.chat.completions.with_raw_response.create(model=MODELS["openrouter"], messages=CACHED)
    raw.parse()
    assert fakes.openrouter.last.json["messages"] == [
        {
            "role": "system",
            "content": [{"type": "text", "text": "You are Roo.", "cache_control": {"type": "ephemeral"}}],
        },
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Given the book below:"},
                {"type": "text", "text": "HUGE TEXT BODY", "cache_control": {"type": "ephemeral", "ttl": "1h"}},
                {"type": "text", "text": "Name all the characters."},
            ],
        },
    ]
    assert "x-modelgate-dropped-params" not in raw.headers


@pytest.mark.parametrize("provider", ["huggingface", "ollama", "cloudflare"])
def test_prompt_caching_breakpoints_a_provider_cannot_carry_are_reported(
    client: openai.OpenAI, fakes: Fakes, provider: str
) -> None:
    """The HF router, Ollama and Workers AI document no ``cache_control``: the text goes as it would without it."""
    raw = client.chat.completions.with_raw_response.create(model=MODELS[provider], messages=CACHED)
    raw.parse()
    assert raw.headers["x-modelgate-dropped-params"].split(",") == ["messages.content.cache_control"]
    sent = fakes[provider].last.json["messages"]
    assert "cache_control" not in str(sent)
    assert [m["content"] for m in sent] == [
        "You are Roo.",
        "Given the book below:\nHUGE TEXT BODY\nName all the characters.",
    ]


#: ``cache_control`` values other than Anthropic's (``ephemeral``, ``ttl`` 5m or 1h), on a part or on the request, and
#: the 400's message for each: one closed shape, on every route that takes it.
REFUSED_CACHE_CONTROL = [
    ({"type": "persistent"}, "cache_control.type: Input should be 'ephemeral'"),
    ({"type": "ephemeral", "ttl": "1d"}, "cache_control.ttl: Input should be '5m' or '1h'"),
    ({"type": "ephemeral", "scope": "global"}, "cache_control.scope: Extra inputs are not permitted"),
    ("ephemeral", "cache_control: Input should be a valid dictionary or object"),
]


@pytest.mark.parametrize(
    ("cache_control", "error"),
    REFUSED_CACHE_CONTROL,
)
def test_a_prompt_caching_breakpoint_other_than_anthropics_is_refused(
    service: str, fakes: Fakes, cache_control: Any, error: str
) -> None:
    part = {"type": "text", "text": "Hi", "cache_control": cache_control}
    body = {"model": MODELS["openrouter"], "messages": [{"role": "user", "content": [part]}]}
    response = httpx.post(f"{service}/v1/chat/completions", json=body, timeout=10)
    assert response.status_code == 400
    assert error in response.json()["error"]["message"]
    assert fakes.openrouter.requests == []


def test_automatic_prompt_caching_reaches_openrouter_at_the_top_level(client: openai.OpenAI, fakes: Fakes) -> None:
    """The request's own ``cache_control`` (OpenRouter's ``ChatRequest.cacheControl``, Anthropic's automatic
    caching) goes to OpenRouter as the client sent it: no part gets one it did not ask for."""
    raw = client.chat.completions.with_raw_response.create(
        model=MODELS["openrouter"],
        messages=MESSAGES,
        extra_body={"cache_control": {"type": "ephemeral", "ttl": "1h"}},
    )
    raw.parse()
    sent = fakes.openrouter.last.json
    assert sent["cache_control"] == {"type": "ephemeral", "ttl": "1h"}
    assert "cache_control" not in str(sent["messages"])
    assert "x-modelgate-dropped-params" not in raw.headers


@pytest.mark.parametrize("provider", ["huggingface", "ollama", "cloudflare"])
def test_automatic_prompt_caching_a_provider_cannot_carry_is_reported(
    client: openai.OpenAI, fakes: Fakes, provider: str
) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=MODELS[provider], messages=MESSAGES, extra_body={"cache_control": {"type": "ephemeral"}}
    )
    raw.parse()
    assert raw.headers["x-modelgate-dropped-params"].split(",") == ["cache_control"]
    assert "cache_control" not in str(fakes[provider].last.json)


@pytest.mark.parametrize(
    ("cache_control", "error"),
    REFUSED_CACHE_CONTROL,
)
def test_an_automatic_prompt_caching_directive_other_than_anthropics_is_refused(
    service: str, fakes: Fakes, cache_control: Any, error: str
) -> None:
    body = {"model": MODELS["openrouter"], "messages": MESSAGES, "cache_control": cache_control}
    response = httpx.post(f"{service}/v1/chat/completions", json=body, timeout=10)
    assert response.status_code == 400
    assert error in response.json()["error"]["message"]
    assert fakes.openrouter.requests == []


def test_unreported_reasoning_tokens_are_left_out_not_invented(client: openai.OpenAI, fakes: Fakes) -> None:
    fakes.ollama.script(Reply(tokens=["4"], reasoning=["2+2", " is 4"]))  # Ollama reports no such count
    raw = client.chat.completions.with_raw_response.create(model=MODELS["ollama"], messages=MESSAGES)
    assert set(raw.http_response.json()["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens"}


def test_catalogue_defaults_apply_when_the_call_sets_nothing(client: openai.OpenAI, fakes: Fakes) -> None:
    client.chat.completions.create(model=MODELS["ollama"], messages=MESSAGES)
    options = fakes.ollama.last.json["options"]
    assert options["num_predict"] == 500  # the catalogue's max_new_tokens
    assert "seed" not in options and "top_p" not in options


ALL_PARAMS: dict[str, Any] = {
    "max_tokens": 8,
    "temperature": 0.5,
    "top_p": 0.5,
    "stop": ["END"],
    "seed": 3,
    "presence_penalty": 0.1,
    "frequency_penalty": 0.2,
}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_dropped_parameters_header_agrees_with_supported_parameters(
    client: openai.OpenAI, fakes: Fakes, provider: str
) -> None:
    supported = client.models.retrieve(MODELS[provider]).model_extra["supported_parameters"]  # type: ignore[index]
    raw = client.chat.completions.with_raw_response.create(model=MODELS[provider], messages=MESSAGES, **ALL_PARAMS)
    raw.parse()
    dropped = set(filter(None, raw.headers.get("x-modelgate-dropped-params", "").split(",")))
    # Exactly the caller's fields the listing does not promise, under the caller's names; never a
    # catalogue default (Cloudflare and OpenRouter cannot carry the catalogue's typical_p and truncate).
    assert dropped == set(ALL_PARAMS) - set(supported)
    assert raw.headers["x-modelgate-model"] == MODELS[provider]


@pytest.mark.parametrize(
    ("provider", "defaults"), [("cloudflare", ["truncate", "typical_p"]), ("openrouter", ["truncate"])]
)
def test_catalogue_defaults_the_provider_cannot_carry_are_logged_not_reported(
    client: openai.OpenAI, fakes: Fakes, provider: str, defaults: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="modelgate.openai")
    raw = client.chat.completions.with_raw_response.create(model=MODELS[provider], messages=MESSAGES)
    raw.parse()
    assert "x-modelgate-dropped-params" not in raw.headers
    assert not set(defaults) & set(fakes[provider].last.json)  # still not sent
    assert [r.getMessage() for r in caplog.records if "catalogue defaults" in r.getMessage()] == [
        f"catalogue defaults of {MODELS[provider]} not carried by its provider: {', '.join(defaults)}"
    ]


def test_a_dropped_parameter_is_not_sent_upstream(client: openai.OpenAI, fakes: Fakes) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=MODELS["cloudflare"], messages=MESSAGES, stop=["END"], seed=3
    )
    raw.parse()
    assert "stop" in raw.headers["x-modelgate-dropped-params"].split(",")
    assert "stop" not in fakes.cloudflare.last.json
    assert fakes.cloudflare.last.json["seed"] == 3


# --- errors, as the SDK raises them ---------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_upstream_429_is_a_rate_limit_error_with_retry_after(client: openai.OpenAI, fakes: Fakes, stream: bool) -> None:
    fakes.ollama.script(Reply(fault=Fault.status(429, retry_after=7)))
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model=MODELS["ollama"], messages=MESSAGES, stream=stream)
    assert caught.value.status_code == 429
    assert caught.value.response.headers["retry-after"] == "7"
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["code"] == "rate_limit_exceeded"


@pytest.mark.parametrize(
    ("upstream", "status", "error_class"),
    [
        (400, 400, openai.BadRequestError),
        (401, 502, openai.InternalServerError),
        (500, 502, openai.InternalServerError),
        (503, 503, openai.InternalServerError),
    ],
)
def test_upstream_status_maps_to_an_sdk_error(
    client: openai.OpenAI, fakes: Fakes, upstream: int, status: int, error_class: type[openai.APIStatusError]
) -> None:
    fakes.ollama.default = Reply(fault=Fault.status(upstream))  # every attempt: the gateway retries 5xx
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model=MODELS["ollama"], messages=MESSAGES)
    assert type(caught.value) is error_class
    assert caught.value.status_code == status
    assert isinstance(caught.value.body, dict)
    assert set(caught.value.body) == {"message", "type", "param", "code"}
    assert caught.value.body["type"] == ("invalid_request_error" if status == 400 else "server_error")
    assert "ollama" in caught.value.body["message"]


def test_async_sdk_gets_the_same_error_classes(service: str, fakes: Fakes) -> None:
    fakes.ollama.default = Reply(fault=Fault.status(500))

    async def main() -> None:
        async with async_sdk(service) as client:
            await client.chat.completions.create(model=MODELS["ollama"], messages=MESSAGES)

    with pytest.raises(openai.InternalServerError):
        asyncio.run(main())


def test_error_after_the_stream_started_is_raised_by_the_sdk(client: openai.OpenAI, fakes: Fakes) -> None:
    fakes.ollama.script(Reply(tokens=["one", " two", " three"], fault=Fault.error_after(2)))
    received: list[str] = []
    with pytest.raises(openai.APIError) as caught:
        stream = client.chat.completions.create(model=MODELS["ollama"], messages=MESSAGES, stream=True)
        for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")
    assert "".join(received) == "one two"
    assert "ollama" in caught.value.message
    assert isinstance(caught.value.body, dict) and caught.value.body["type"] == "server_error"


def test_a_dropped_upstream_connection_is_an_error_event_not_a_silent_end(client: openai.OpenAI, fakes: Fakes) -> None:
    fakes.ollama.script(Reply(tokens=["one", " two"], fault=Fault.drop_after(1)))
    with pytest.raises(openai.APIError, match="dropped mid-stream"):
        list(client.chat.completions.create(model=MODELS["ollama"], messages=MESSAGES, stream=True))


def test_non_streamed_failure_midway_is_a_502(client: openai.OpenAI, fakes: Fakes) -> None:
    # Asked for a whole reply, Ollama answers a runner failing mid-generation with an error status, which is retried
    # (nothing reached the client yet): it fails on every attempt here.
    fakes.ollama.default = Reply(tokens=["one", " two"], fault=Fault.error_after(1))
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model=MODELS["ollama"], messages=MESSAGES)
    assert caught.value.status_code == 502


def test_closing_the_stream_closes_the_upstream(client: openai.OpenAI, fakes: Fakes) -> None:
    fakes.ollama.script(Reply(tokens=["t"] * 50, delay=0.05))
    stream = client.chat.completions.create(model=MODELS["ollama"], messages=MESSAGES, stream=True)
    first = next(iter(stream))
    assert first.choices[0].delta.role == "assistant"
    stream.close()
    assert fakes.ollama.wait_for_disconnects(1) == 1


# --- timeouts: a short first-token timeout so the service gives up quickly ------------------------


@pytest.fixture
def impatient_service(fakes: Fakes, tmp_path: Path) -> Iterator[str]:
    config = tmp_path / "catalogue.toml"
    config.write_text(
        """
[providers.ollama]
first_token_timeout = 1
whole_reply_timeout = 2.5
max_retries = 0

[[models]]
publisher = "ollama"
name = "rwkv-6-world"
provider = "ollama"
type = "chat"
[models.configuration]
model = "mollysama/rwkv-6-world:1.6b"
[models.configuration.parameters]
max_new_tokens = 500
typical_p = -1
repetition_penalty = -1
truncate = 1000
"""
    )
    app = create_app(Settings.from_env(fakes.env()), load_catalogue(config))
    with serve_in_thread(app) as url:
        yield url


def test_a_hanging_upstream_is_an_sdk_timeout(impatient_service: str, fakes: Fakes) -> None:
    fakes.ollama.script(Reply(fault=Fault.hang()))
    with sdk(impatient_service, timeout=0.3) as client, pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(model=MODELS["ollama"], messages=MESSAGES)


def test_a_whole_reply_may_take_longer_than_the_first_token_timeout(impatient_service: str, fakes: Fakes) -> None:
    """Generated in ~1.5 s, each token 0.5 s after the last: a stream's first token would be in time, and so is
    the whole reply, whose status line comes once all of it is generated (the whole-reply timeout is 2.5 s)."""
    fakes.ollama.script(Reply(tokens=["one", " two", " three", " four"], delay=0.5))
    with sdk(impatient_service, timeout=30) as client:
        completion = client.chat.completions.create(model=MODELS["ollama"], messages=MESSAGES)
    assert completion.choices[0].message.content == "one two three four"
    assert fakes.ollama.last.json["stream"] is False


def test_a_whole_reply_is_bounded_by_the_whole_reply_timeout(impatient_service: str, fakes: Fakes) -> None:
    fakes.ollama.script(Reply(fault=Fault.hang()))
    with sdk(impatient_service, timeout=30) as client, pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model=MODELS["ollama"], messages=MESSAGES)
    assert caught.value.status_code == 504
    assert "no whole reply within 2.5s (whole-reply timeout)" in str(caught.value.body)


def test_a_hanging_upstream_is_a_504_from_the_gateway(impatient_service: str, fakes: Fakes) -> None:
    fakes.ollama.script(Reply(fault=Fault.hang()))
    with sdk(impatient_service, timeout=30) as client, pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model=MODELS["ollama"], messages=MESSAGES, stream=True)
    assert caught.value.status_code == 504
    assert fakes.ollama.wait_for_disconnects(1) == 1


# --- API keys -------------------------------------------------------------------------------------


def test_a_wrong_key_is_an_authentication_error(fakes: Fakes) -> None:
    app = create_app(Settings.from_env({**fakes.env(), "MODELGATE_API_KEYS": "right-key"}))
    with serve_in_thread(app) as url, sdk(url) as wrong, sdk(url, api_key="right-key") as right:
        with pytest.raises(openai.AuthenticationError) as caught:
            wrong.chat.completions.create(model=MODELS["ollama"], messages=MESSAGES)
        assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "invalid_api_key"
        assert right.chat.completions.create(model=MODELS["ollama"], messages=MESSAGES).choices[0].message.content
    assert len(fakes.ollama.requests) == 1


def test_a_model_the_key_may_not_use_is_forbidden_and_unlisted(fakes: Fakes, tmp_path: Path) -> None:
    models = "".join(
        f"""
[[models]]
publisher = "{publisher}"
name = "{name}"
provider = "ollama"
type = "chat"
[models.configuration]
model = "{name}:1b"
[models.configuration.parameters]
max_new_tokens = 100
typical_p = -1
repetition_penalty = -1
truncate = 1000
"""
        for publisher, name in [("open", "tiny"), ("closed", "small")]
    )
    (tmp_path / "keys.toml").write_text('[[keys]]\nkey = "narrow-key"\nmodels = ["open/*"]\n')
    (tmp_path / "catalogue.toml").write_text('[server]\nkeys_file = "keys.toml"\n' + models)
    app = create_app(Settings.from_env(fakes.env()), load_catalogue(tmp_path / "catalogue.toml"))
    with serve_in_thread(app) as url, sdk(url, api_key="narrow-key") as client:
        assert [m.id for m in client.models.list()] == ["open/tiny"]
        assert client.chat.completions.create(model="open/tiny", messages=MESSAGES).choices[0].message.content
        with pytest.raises(openai.PermissionDeniedError) as caught:
            client.chat.completions.create(model="closed/small", messages=MESSAGES)
        assert isinstance(caught.value.body, dict) and caught.value.body["type"] == "permission_error"
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve("closed/small")
    assert [r.json["model"] for r in fakes.ollama.requests] == ["tiny:1b"]


# --- the whole catalogue --------------------------------------------------------------------------


def test_every_catalogue_model_is_listed_and_answers(service: str, client: openai.OpenAI, fakes: Fakes) -> None:
    seed_ids = httpx.get(f"{service}/models").json()["models"]
    listed = [m.id for m in client.models.list()]
    assert sorted(listed) == sorted(seed_ids)
    for model_id in listed:
        completion = client.chat.completions.create(model=model_id, messages=MESSAGES, max_tokens=5)
        message = completion.choices[0].message
        # R1-Distill's prompt opens a <think> block, so a reply without </think> is all reasoning.
        answer = message.content or (message.model_extra or {}).get("reasoning_content")
        assert answer == "Hello, world!", model_id
        assert completion.model == model_id
