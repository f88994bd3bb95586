"""The ``openai`` kind (any OpenAI-compatible server) against the fake OpenAI-compatible server over loopback HTTP."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import aiohttp
import httpx
import pytest

from modelgate.catalogue import CatalogueModel
from modelgate.chat import ChatRequest, Finish, GenerationParams, TextDelta, ToolCallDelta, Usage
from modelgate.errors import UpstreamAuthError, UpstreamBadRequest, UpstreamError, UpstreamProtocolError
from modelgate.providers import PROVIDERS, Connection, Provider, new_session
from modelgate.providers._http import Upstream, estimate_tokens
from modelgate.providers.chat_completions import ChatCompletionsStream, read_error
from modelgate.providers.openai import OpenAICompatible
from modelgate.templates import render_prompt
from tests.fakes import Fakes, Fault, Reply
from tests.fakes.contract import ESTIMATED_PROMPT, MESSAGES, ProviderContract, catalogue_model, collect
from tests.fakes.openai_compatible import CONTEXT_WINDOW as OPENAI_CONTEXT_WINDOW

_ENVELOPE = ("model", "messages", "stream", "stream_options")
CONTEXT_EXCEEDED = (
    "This model's maximum context length is 2048 tokens. However, you requested 2600 tokens "
    "(2088 in the messages, 512 in the completion). Please reduce the length of the messages or completion."
)


def llama_model() -> CatalogueModel:
    """A catalogue model as an ``openai`` instance would serve it (no template: the server applies its own)."""
    return dataclasses.replace(
        catalogue_model("ollama/rwkv-6-world"), provider="llama", upstream_model="HuggingFaceTB/SmolLM2-135M-Instruct"
    )


class TestOpenAICompatible(ProviderContract):
    provider = OpenAICompatible
    model_id = "ollama/rwkv-6-world"  # its parameters: max_new_tokens 500, the rest -1 or TGI-only
    expected_params: ClassVar[dict[str, Any]] = {"max_tokens": 500}

    def sent_params(self, recorded_json: Any) -> dict[str, Any]:
        return {k: v for k, v in recorded_json.items() if k not in _ENVELOPE}

    def make(self, http: aiohttp.ClientSession, base_url: str, **kw: Any) -> Provider:
        provider = super().make(http, base_url, **kw)
        if kw.get("credentials"):  # the contract's wrong-credentials case: the instance names its key variable
            connection = dataclasses.replace(provider.connection, key_variable=next(iter(kw["credentials"])))
            provider = OpenAICompatible(connection, http)
        return provider

    @pytest.mark.anyio
    async def test_wrong_credentials_are_an_auth_error(self, fakes: Fakes) -> None:
        fakes.openai.token = "sk-local"
        got = await self.run(fakes, credentials={"LLAMA_KEY": "wrong-value"})
        assert isinstance(got.error, UpstreamAuthError)
        assert "wrong-value" not in got.error.message and "LLAMA_KEY" in got.error.message

    @pytest.mark.anyio
    async def test_the_key_of_api_key_env_is_sent_and_none_without_one(self, fakes: Fakes) -> None:
        await self.run(fakes)
        assert "authorization" not in fakes.openai.last.headers  # a local server needs none
        fakes.openai.token = "sk-local"
        got = await self.run(fakes, credentials={"LLAMA_KEY": "sk-local"})
        assert got.error is None
        assert fakes.openai.last.headers["authorization"] == "Bearer sk-local"

    @pytest.mark.anyio
    async def test_only_standard_fields_are_sent_the_rest_reported(self, fakes: Fakes) -> None:
        params = GenerationParams(
            max_new_tokens=16,
            temperature=0.5,
            top_p=0.8,
            repetition_penalty=1.3,  # llama.cpp's server reads repeat_penalty: sent as this, it would be lost
            typical_p=0.4,
            truncate=100,
            stop=("\n",),
            seed=7,
            presence_penalty=0.1,
            frequency_penalty=0.2,
        )
        async with new_session() as http:
            provider = self.make(http, fakes.openai.url)
            got = await collect(provider.stream(llama_model(), ChatRequest(MESSAGES, params)))
            assert provider.dropped_params(params) == ["repetition_penalty", "truncate", "typical_p"]
        assert got.error is None
        sent = fakes.openai.last.json
        assert sent["model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
        assert sent["stream_options"] == {"include_usage": True}
        assert self.sent_params(sent) == {
            "max_tokens": 16,
            "temperature": 0.5,
            "top_p": 0.8,
            "stop": ["\n"],
            "seed": 7,
            "presence_penalty": 0.1,
            "frequency_penalty": 0.2,
        }

    @pytest.mark.anyio
    async def test_extra_params_map_a_parameter_to_the_servers_own_name(self, fakes: Fakes) -> None:
        params = GenerationParams(max_new_tokens=8, repetition_penalty=1.3, typical_p=0.5)
        connection = Connection(fakes.openai.url, extra_params={"repetition_penalty": "repeat_penalty"})
        async with new_session() as http:
            provider = OpenAICompatible(connection, http)
            got = await collect(provider.stream(llama_model(), ChatRequest(MESSAGES, params)))
            assert provider.dropped_params(params) == ["typical_p"]
        assert got.error is None
        assert self.sent_params(fakes.openai.last.json) == {"max_tokens": 8, "repeat_penalty": 1.3}

    @pytest.mark.anyio
    async def test_max_new_tokens_can_be_sent_as_max_completion_tokens(self, fakes: Fakes) -> None:
        """OpenAI's reasoning models (o-series, GPT-5) answer ``max_tokens`` with a 400 and take only
        ``max_completion_tokens``: every call to them failed, the catalogue's ``max_new_tokens`` being always set."""
        fakes.openai.refuses_max_tokens = True
        params = GenerationParams(max_new_tokens=8)
        async with new_session() as http:
            refused = await collect(
                OpenAICompatible(Connection(fakes.openai.url), http).stream(
                    llama_model(), ChatRequest(MESSAGES, params)
                )
            )
            assert isinstance(refused.error, UpstreamBadRequest)
            assert "Use 'max_completion_tokens' instead" in refused.error.message
            connection = Connection(fakes.openai.url, extra_params={"max_new_tokens": "max_completion_tokens"})
            provider = OpenAICompatible(connection, http)
            got = await collect(provider.stream(llama_model(), ChatRequest(MESSAGES, params)))
            whole = await collect(provider.complete(llama_model(), ChatRequest(MESSAGES, params)))
            assert provider.dropped_params(params) == []
        assert got.error is None and whole.error is None, (got.error, whole.error)
        assert self.sent_params(fakes.openai.last.json) == {"max_completion_tokens": 8}

    @pytest.mark.anyio
    async def test_reported_usage_is_presented_as_reported(self, fakes: Fakes) -> None:
        got = await self.run(fakes, Reply(tokens=["a"], usage=(31, 1)))
        assert got.finish.usage == Usage(31, 1)

    @pytest.mark.anyio
    async def test_a_server_that_reports_none_gets_an_estimate_with_template_overhead(self, fakes: Fakes) -> None:
        # llama.cpp's server sends no usage on a stream, even when asked.
        got = await self.run(fakes, Reply(tokens=["a", "b"], options={"never_usage": True}))
        assert got.finish.usage == Usage(ESTIMATED_PROMPT, 2, estimated=True)
        # More than the bare text (36 characters ≈ 9 tokens): the chat template's markers count too.
        assert ESTIMATED_PROMPT > 9

    @pytest.mark.anyio
    async def test_a_template_in_the_catalogue_makes_the_estimate_count_as_the_server(self, fakes: Fakes) -> None:
        # The server applies its own template; naming it in the catalogue lets the estimate count it too.
        model = dataclasses.replace(llama_model(), template="chatml")
        fakes.openai.script(Reply(tokens=["a"], options={"never_usage": True}))
        async with new_session() as http:
            got = await collect(self.make(http, fakes.openai.url).stream(model, ChatRequest(MESSAGES)))
        assert got.finish.usage == Usage(estimate_tokens(render_prompt("chatml", MESSAGES)), 1, estimated=True)
        assert "<|im_start|>" not in str(fakes.openai.last.json)  # the messages go as they are

    @pytest.mark.anyio
    async def test_context_length_exceeded_is_a_400_with_the_servers_reason(self, fakes: Fakes) -> None:
        # llama-cpp-python's server (llama_cpp/server/errors.py): HTTP 400, code context_length_exceeded.
        fault = Fault.status(400, message=CONTEXT_EXCEEDED, code="context_length_exceeded")
        got = await self.run(fakes, Reply(fault=fault))
        assert isinstance(got.error, UpstreamBadRequest)
        assert got.error.status == 400 and not got.error.transient
        assert CONTEXT_EXCEEDED in got.error.message and "context_length_exceeded" in got.error.message

    @pytest.mark.anyio
    async def test_in_stream_error_event(self, fakes: Fakes) -> None:
        got = await self.run(fakes, Reply(tokens=["a", "b"], fault=Fault.error_after(1, message="engine died")))
        assert got.text == "a"
        assert type(got.error) is UpstreamError and "engine died" in got.error.message
        assert got.error.status == 502

    @pytest.mark.anyio
    async def test_probe_lists_the_servers_models(self, fakes: Fakes) -> None:
        async with new_session() as http:
            result = await self.make(http, fakes.openai.url).probe([llama_model()])
        assert result is not None and result.reachable
        assert result.available_models == frozenset({"HuggingFaceTB/SmolLM2-135M-Instruct"})
        assert result.context_lengths == {"HuggingFaceTB/SmolLM2-135M-Instruct": OPENAI_CONTEXT_WINDOW}
        assert fakes.openai.listings[-1].path == "/v1/models"
        assert fakes.openai.requests == []


@pytest.mark.anyio
async def test_errors_name_the_instance(fakes: Fakes) -> None:
    fakes.openai.script(Reply(fault=Fault.status(500)))
    async with new_session() as http:
        provider = OpenAICompatible(Connection(fakes.openai.url, name="llama"), http)
        got = await collect(provider.stream(llama_model(), ChatRequest(MESSAGES)))
    assert got.error is not None and "(llama)" in got.error.message


def test_registered() -> None:
    assert PROVIDERS["openai"] is OpenAICompatible


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"error":{"message":"bad","type":"invalid_request_error","param":null,"code":null}}', "bad"),
        (b'{"error":"Model X is not supported by provider Y"}', "Model X is not supported by provider Y"),  # HF router
        (b'{"object":"error","message":"too long","type":"BadRequestError","code":400}', "too long"),  # older vLLM
        (b'{"detail":"Not Found"}', "Not Found"),  # FastAPI
        (b'{"error":{"message":"no","code":"context_length_exceeded"}}', "no (context_length_exceeded)"),
        # OpenRouter relaying a serving provider's refusal: its own body in metadata.raw (JSON text or not).
        (
            b'{"error":{"code":400,"message":"Provider returned error","metadata":{"provider_name":"DeepInfra",'
            b'"raw":"{\\"error\\":{\\"message\\":\\"max context is 32768 tokens\\",\\"code\\":400}}"}}}',
            "Provider returned error: DeepInfra: max context is 32768 tokens",
        ),
        (
            b'{"error":{"code":502,"message":"Provider returned error","metadata":{"raw":"upstream gateway timeout"}}}',
            "Provider returned error: upstream gateway timeout",
        ),
    ],
)
def test_error_bodies_of_the_servers_in_the_field(body: bytes, message: str) -> None:
    assert read_error(400, body).message == message


@pytest.mark.anyio
async def test_an_older_vllm_in_stream_error_object_is_raised() -> None:
    async with new_session() as http:
        upstream = Upstream("llama", Connection("http://127.0.0.1:9"), http, read_error)
        parser = ChatCompletionsStream(upstream, ChatRequest(MESSAGES))
        events = parser.feed(
            b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n'
            b'data: {"object":"error","message":"engine overloaded","type":"ServiceUnavailable","code":503}\n\n'
        )
    assert events == [TextDelta("a")]
    assert isinstance(parser.failure, UpstreamError) and parser.failure.status == 503


def test_the_fake_sends_stream_usage_only_when_asked(fakes: Fakes) -> None:
    """As vLLM, OpenAI and the HF router do (OpenRouter's fake, like OpenRouter, always sends it)."""
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    plain = httpx.post(fakes.openai.url + "/chat/completions", json=body).text
    asked = httpx.post(
        fakes.openai.url + "/chat/completions", json={**body, "stream_options": {"include_usage": True}}
    ).text
    assert '"prompt_tokens"' not in plain and '"usage"' not in plain
    assert '"choices":[],"usage":{"prompt_tokens"' in asked


@pytest.mark.anyio
async def test_tool_calls_without_ids_get_one_and_a_stop_after_them_means_tool_calls() -> None:
    """Some servers (llama.cpp builds) send no call id and finish with "stop": clients answer a call by its id
    and look for finish reason tool_calls."""
    async with new_session() as http:
        upstream = Upstream("llama", Connection("http://127.0.0.1:9"), http, read_error)
        parser = ChatCompletionsStream(upstream, ChatRequest(MESSAGES))
        events = parser.feed(
            b'data: {"choices":[{"delta":{"tool_calls":[{"index":0,"function":'
            b'{"name":"f","arguments":"{\\"a\\""}}]}}]}\n\n'
            b'data: {"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":":1}"}}]}}]}\n\n'
            b'data: {"choices":[{"delta":{},"finish_reason":"stop"}]}\n\n'
            b"data: [DONE]\n\n"
        )
    first, second, finish = events
    assert isinstance(first, ToolCallDelta) and isinstance(second, ToolCallDelta)
    assert (first.index, first.name, first.arguments) == (0, "f", '{"a"')
    assert first.id is not None and first.id.startswith("call_")
    assert (second.id, second.name, second.arguments) == (None, None, ":1}")
    assert isinstance(finish, Finish) and finish.reason == "tool-calls"


def _parse(stream: bytes) -> tuple[list[Any], UpstreamError | None]:
    """``stream`` through the Chat Completions parser (a stream the HF router, OpenRouter and openai share)."""
    upstream = Upstream("llama", Connection("http://127.0.0.1:9"), None, read_error)  # type: ignore[arg-type]
    parser = ChatCompletionsStream(upstream, ChatRequest(MESSAGES))
    events = parser.feed(stream)
    return events, parser.failure


@pytest.mark.parametrize(
    "delta",
    [
        b'{"content":42}',
        b'{"content":["a","b"]}',
        b'{"reasoning_content":7}',
        b'{"refusal":{"a":1}}',
        b'{"tool_calls":[{"index":0,"id":7,"function":{"name":"f","arguments":"{}"}}]}',
        b'{"tool_calls":[{"index":0,"id":"c","function":{"name":5,"arguments":"{}"}}]}',
        b'{"tool_calls":[{"index":0,"id":"c","function":{"name":"f","arguments":5}}]}',
    ],
)
def test_a_text_field_that_is_not_text_is_a_protocol_error_not_passed_on(delta: bytes) -> None:
    """Found from outside: a number or an object as text went on to every client (a /v1 chunk openai-python
    rejects, a data-stream part the AI SDK throws on) or was a 500 where the text is joined."""
    events, failure = _parse(b'data: {"choices":[{"index":0,"delta":' + delta + b"}]}\n\n")
    assert events == []
    assert isinstance(failure, UpstreamProtocolError) and "unreadable stream chunk" in failure.message


def test_arguments_sent_as_an_object_are_passed_on_as_their_json_text() -> None:
    events, failure = _parse(
        b'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"c","function":'
        b'{"name":"f","arguments":{"city":"Bern"}}}]}}]}\n\n'
    )
    assert failure is None and isinstance(events[0], ToolCallDelta) and events[0].arguments == '{"city":"Bern"}'


@pytest.mark.parametrize(
    "usage",
    [
        b'{"prompt_tokens":-1000000,"completion_tokens":5}',
        b'{"prompt_tokens":1180591620717411303424,"completion_tokens":5}',
        b'{"prompt_tokens":3000000000,"completion_tokens":5}',
        b'{"prompt_tokens":"7","completion_tokens":5}',
        b'{"prompt_tokens":7}',
        b"null",
        b'"x"',
    ],
)
def test_usage_that_is_not_token_counts_is_estimated_and_the_reply_kept(usage: bytes) -> None:
    events, failure = _parse(
        b'data: {"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":"stop"}]}\n\n'
        b'data: {"choices":[],"usage":' + usage + b"}\n\ndata: [DONE]\n\n"
    )
    assert failure is None
    text, finish = events
    assert text == TextDelta("Hi") and isinstance(finish, Finish)
    assert finish.usage.estimated and 0 < finish.usage.prompt_tokens < 100 and finish.usage.completion_tokens == 1


def test_parts_of_the_usage_are_capped_at_their_whole() -> None:
    events, _ = _parse(
        b'data: {"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":"stop"}]}\n\n'
        b'data: {"choices":[],"usage":{"prompt_tokens":10,"completion_tokens":5,'
        b'"completion_tokens_details":{"reasoning_tokens":900},"prompt_tokens_details":{"cached_tokens":-4}}}\n\n'
        b"data: [DONE]\n\n"
    )
    finish = events[-1]
    assert isinstance(finish, Finish) and not finish.usage.estimated
    assert (finish.usage.reasoning_tokens, finish.usage.cached_tokens) == (5, None)


@pytest.mark.parametrize("code", [b"1000000000000000000000000000000", b'"1000000000000000000000000000000"', b"200"])
def test_an_error_code_that_is_no_error_status_is_not_taken_for_one(code: bytes) -> None:
    """A 31-digit ``code`` became the error's status and broke the error body naming it (a 500 on /api/ai)."""
    _, failure = _parse(b'data: {"error":{"message":"boom","code":' + code + b"}}\n\n")
    assert isinstance(failure, UpstreamError) and failure.status == 502 and "boom" in failure.message


def test_only_the_first_choice_is_the_answer() -> None:
    """n is 1: a second choice (a broken server's) was merged into the answer ("AB", the last one's finish)."""
    events, failure = _parse(
        b'data: {"choices":[{"index":0,"delta":{"content":"A"}},{"index":1,"delta":{"content":"B"}}]}\n\n'
        b'data: {"choices":[{"index":1,"delta":{},"finish_reason":"length"}]}\n\n'
        b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'
    )
    assert failure is None
    text, finish = events
    assert text == TextDelta("A") and isinstance(finish, Finish) and finish.reason == "stop"
