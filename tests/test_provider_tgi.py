"""The TGI adapter (huggingface kind, api = "tgi") against the fake TGI (``data:`` without space, no [DONE]) over
loopback HTTP."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from modelgate.chat import ChatRequest, Finish, GenerationParams, Message, TextDelta, Usage
from modelgate.errors import (
    BadRequest,
    UpstreamBadRequest,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamUnavailable,
)
from modelgate.providers import PROVIDERS, new_session
from modelgate.providers._http import Upstream
from modelgate.providers.base import Connection
from modelgate.providers.tgi import TGI, TGIStream, read_error
from modelgate.templates import render_prompt
from tests.fakes import Fakes, Fault, Reply
from tests.fakes._base import RecordedRequest
from tests.fakes.contract import MESSAGES, WholeReplyContract, catalogue_model, collect
from tests.fakes.huggingface import TGI_MAX_TOTAL_TOKENS


class TestTGI(WholeReplyContract):
    provider = TGI
    model_id = "qwen/Qwen2.5-72B-Instruct"
    # The catalogue: max_new_tokens 512, typical_p 0.2, repetition_penalty 1.1, truncate 32267.
    expected_params: ClassVar[dict[str, Any]] = {
        "max_new_tokens": 512,
        "typical_p": 0.2,
        "repetition_penalty": 1.1,
        "truncate": 32267,
        "return_full_text": False,
        "details": True,
    }

    def sent_params(self, recorded_json: Any) -> dict[str, Any]:
        return dict(recorded_json["parameters"])

    def asked_whole(self, recorded: RecordedRequest) -> bool:
        return recorded.raw_path == "/generate" and "stream" not in recorded.json

    @pytest.mark.anyio
    async def test_a_whole_reply_counts_the_prompt_from_tgis_header(self, fakes: Fakes) -> None:
        got = await self.run_whole(fakes, Reply(tokens=["a", "b"], usage=(123, 3)))
        assert got.text == "ab"
        assert got.finish.usage == Usage(123, 3)  # details has no input_length on /generate: x-prompt-tokens does
        sent = fakes.huggingface.last.json
        assert sent["inputs"] == render_prompt("chatml", MESSAGES) and sent["parameters"]["details"] is True

    @pytest.mark.anyio
    async def test_a_whole_reply_without_details_is_estimated(self, fakes: Fakes) -> None:
        got = await self.run_whole(fakes, Reply(tokens=["four words of text"], usage=None))
        prompt = render_prompt("chatml", MESSAGES)
        assert got.finish.usage == Usage(-(-len(prompt) // 4), 5, estimated=True)  # 18 characters, ~4 a token

    @pytest.mark.anyio
    @pytest.mark.parametrize(
        ("error_type", "expected", "transient"),
        [
            ("validation", UpstreamBadRequest, False),
            ("overloaded", UpstreamUnavailable, True),  # TGI's 429: its queue is full, as in a stream
            ("generation", UpstreamError, False),
        ],
    )
    async def test_error_types_of_a_whole_reply_map_as_in_a_stream(
        self, fakes: Fakes, error_type: str, expected: type[UpstreamError], transient: bool
    ) -> None:
        got = await self.run_whole(fakes, Reply(tokens=["a", "b", "c"], fault=Fault.error_after(2, code=error_type)))
        assert type(got.error) is expected
        assert got.error.transient is transient
        assert got.events == []

    @pytest.mark.anyio
    async def test_a_whole_deepseek_r1_reply_starts_in_reasoning(self, fakes: Fakes) -> None:
        model_id = "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B"
        fakes.huggingface.script(Reply(tokens=["Let", " me", " think.", "</think>", "\n\n", "6"]))
        async with new_session() as http:
            provider = self.make(http, fakes.huggingface.url)
            request = ChatRequest(MESSAGES, catalogue_model(model_id).defaults)
            got = await collect(provider.complete(catalogue_model(model_id), request))
        assert self.asked_whole(fakes.huggingface.last)
        assert (got.reasoning, got.text) == ("Let me think.", "6")

    async def stream_with(self, fakes: Fakes, model_id: str, request: ChatRequest) -> Any:
        async with new_session() as http:
            provider = self.make(http, fakes.huggingface.url)
            return await collect(provider.stream(catalogue_model(model_id), request))

    @pytest.mark.anyio
    async def test_request_shape(self, fakes: Fakes) -> None:
        await self.run(fakes)
        sent = fakes.huggingface.last
        assert sent.method == "POST"
        assert sent.raw_path == "/generate_stream"  # TGI serves one model: the route names none
        assert sent.headers["authorization"] == "Bearer hf_test"
        assert sent.json["stream"] is True
        assert sent.json["inputs"] == render_prompt("chatml", MESSAGES)
        assert sent.json["inputs"].startswith("<|im_start|>system\nYou are terse.<|im_end|>\n")

    @pytest.mark.anyio
    async def test_the_special_end_token_is_not_text_but_html_is(self, fakes: Fakes) -> None:
        got = await self.run(fakes, Reply(tokens=["<p>", "Hi", "</p>"], options={"eos": "<|im_end|>"}))
        assert got.text == "<p>Hi</p>"
        assert got.finish.reason == "stop"

    @pytest.mark.anyio
    async def test_every_parameter_within_tgi_ranges(self, fakes: Fakes) -> None:
        params = GenerationParams(
            max_new_tokens=64,
            temperature=0.7,
            typical_p=0.5,
            repetition_penalty=1.2,
            truncate=1000,
            top_p=0.9,
            stop=("\n\n", "END"),
            seed=2**63,  # TGI seeds are uint64
            frequency_penalty=0.5,
            presence_penalty=0.5,
        )
        async with new_session() as http:
            provider = self.make(http, fakes.huggingface.url)
            got = await collect(provider.stream(catalogue_model(self.model_id), self.request(params)))
            assert provider.dropped_params(params) == ["presence_penalty"]
        assert got.error is None
        assert self.sent_params(fakes.huggingface.last.json) == {
            "max_new_tokens": 64,
            "temperature": 0.7,
            "typical_p": 0.5,
            "repetition_penalty": 1.2,
            "truncate": 1000,
            "top_p": 0.9,
            "stop": ["\n\n", "END"],
            "seed": 2**63,
            "frequency_penalty": 0.5,
            "return_full_text": False,
            "details": True,
        }

    @pytest.mark.anyio
    async def test_values_tgi_rejects_are_translated_not_sent(self, fakes: Fakes) -> None:
        # The fake validates like TGI: temperature 0, top_p 1.0 or typical_p 1.0 would be a validation error.
        params = GenerationParams(max_new_tokens=8, temperature=0.0, top_p=1.0, typical_p=1.0)
        got = await self.stream_with(fakes, self.model_id, self.request(params))
        assert got.error is None
        assert self.sent_params(fakes.huggingface.last.json) == {
            "max_new_tokens": 8,
            "do_sample": False,
            "return_full_text": False,
            "details": True,
        }

    @pytest.mark.anyio
    async def test_validation_error_event_under_200_is_a_bad_request(self, fakes: Fakes) -> None:
        params = GenerationParams(max_new_tokens=8, stop=("a", "b", "c", "d", "e"))  # TGI allows 4
        got = await self.stream_with(fakes, self.model_id, self.request(params))
        assert isinstance(got.error, UpstreamBadRequest)
        assert "stop" in got.error.message and got.events == []

    @pytest.mark.anyio
    @pytest.mark.parametrize(
        ("error_type", "expected", "transient"),
        [
            ("validation", UpstreamBadRequest, False),
            ("overloaded", UpstreamUnavailable, True),
            ("generation", UpstreamError, False),
            ("incomplete_generation_stream", UpstreamProtocolError, True),
        ],
    )
    async def test_error_events_mid_stream(
        self, fakes: Fakes, error_type: str, expected: type[UpstreamError], transient: bool
    ) -> None:
        got = await self.run(fakes, Reply(tokens=["a", "b", "c"], fault=Fault.error_after(2, code=error_type)))
        assert got.text == "ab"
        assert type(got.error) is expected
        assert got.error.transient is transient

    @pytest.mark.anyio
    async def test_a_stream_without_generated_text_is_truncated(self, fakes: Fakes) -> None:
        got = await self.run(fakes, Reply(tokens=["a", "b"], options={"no_end": True}))
        assert got.text == "ab"
        assert isinstance(got.error, UpstreamProtocolError) and "truncated" in got.error.message

    @pytest.mark.anyio
    async def test_without_details_usage_is_estimated(self, fakes: Fakes) -> None:
        got = await self.run(fakes, Reply(tokens=["a", "b"], usage=None))
        assert got.text == "ab"
        prompt = render_prompt("chatml", MESSAGES)
        # Three token events (two + the end token); the prompt ≈ 4 characters a token.
        assert got.finish.usage == Usage(-(-len(prompt) // 4), 3, estimated=True)
        assert got.finish.reason == "stop"

    @pytest.mark.anyio
    async def test_cold_start_503_retry_after_comes_from_estimated_time(self, fakes: Fakes) -> None:
        got = await self.run(fakes, Reply(fault=Fault.status(503, retry_after=170.3)))
        assert isinstance(got.error, UpstreamUnavailable)
        assert got.error.retry_after == pytest.approx(170.3)
        assert "currently loading" in got.error.message

    @pytest.mark.anyio
    async def test_deepseek_r1_reply_starts_in_reasoning(self, fakes: Fakes) -> None:
        model_id = "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B"
        fakes.huggingface.script(Reply(tokens=["Let", " me", " think.", "</th", "ink>", "\n\n", "6"]))
        got = await self.stream_with(fakes, model_id, ChatRequest(MESSAGES, catalogue_model(model_id).defaults))
        assert got.reasoning == "Let me think."
        assert got.text == "6"  # the blank lines after </think> only separated it
        sent = fakes.huggingface.last.json
        assert sent["inputs"].endswith("<\uff5cAssistant\uff5c><think>\n")  # full-width bars
        assert sent["parameters"]["temperature"] == 0.6

    @pytest.mark.anyio
    async def test_a_conversation_the_template_refuses_is_a_bad_request_before_any_call(self, fakes: Fakes) -> None:
        model_id = "mistralai/Mistral-7B-Instruct-v0.3"
        request = ChatRequest((Message("user", "a"), Message("user", "b")))
        async with new_session() as http:
            stream = self.make(http, fakes.huggingface.url).stream(catalogue_model(model_id), request)
            with pytest.raises(BadRequest, match="alternate"):
                await anext(aiter(stream))
        assert fakes.huggingface.requests == []

    @pytest.mark.anyio
    async def test_the_probe_reads_info_for_the_served_window(self, fakes: Fakes) -> None:
        model = catalogue_model(self.model_id)
        async with new_session() as http:
            result = await self.make(http, fakes.huggingface.url).probe([model])
        assert result is not None
        assert result.reachable
        assert result.available_models == {model.upstream_model}
        assert result.context_lengths == {model.upstream_model: TGI_MAX_TOTAL_TOKENS}
        assert fakes.huggingface.requests == []  # a probe is a listing call, never counted as a request
        (sent,) = fakes.huggingface.listings
        assert (sent.method, sent.raw_path) == ("GET", "/info")
        assert sent.headers["authorization"] == "Bearer hf_test"

    @pytest.mark.anyio
    async def test_a_probe_of_what_is_not_tgi_is_reachable_with_a_reason(self, fakes: Fakes) -> None:
        # The fake router's root answers /info with 404 on its OpenAI-compatible side: unreachable, with why.
        async with new_session() as http:
            result = await self.make(http, fakes.openrouter.url).probe([catalogue_model(self.model_id)])
        assert result is not None
        assert not result.reachable
        assert result.detail


def test_registered() -> None:
    assert PROVIDERS["tgi"] is TGI


def _tgi() -> TGIStream:
    upstream = Upstream("tgi", Connection("http://127.0.0.1:9"), None, read_error)  # type: ignore[arg-type]
    parser = TGIStream(upstream, "m", None)
    parser.inputs = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    return parser


@pytest.mark.parametrize("finish_reason", [b'["eos_token"]', b'{"a":1}'])
def test_a_whole_reply_whose_finish_reason_is_no_text_is_other_not_a_500(finish_reason: bytes) -> None:
    """Found from outside: an unhashable finish_reason was a TypeError outside the parser's guard (a 500)."""
    raw = b'{"generated_text":"Hello","details":{"finish_reason":' + finish_reason + b',"generated_tokens":2}}'
    text, finish = _tgi().whole(raw)
    assert text == TextDelta("Hello") and isinstance(finish, Finish) and finish.reason == "other"


@pytest.mark.parametrize(
    ("details", "header"),
    [
        (b'{"finish_reason":"eos_token","generated_tokens":-2,"input_length":-7}', ""),
        (b'{"finish_reason":"eos_token","generated_tokens":1180591620717411303424}', "99999999999999999999999"),
    ],
)
def test_counts_that_are_not_token_counts_are_estimated(details: bytes, header: str) -> None:
    parser = _tgi()
    parser.headers({"x-prompt-tokens": header})
    *_, finish = parser.whole(b'{"generated_text":"Hello","details":' + details + b"}")
    assert isinstance(finish, Finish) and finish.usage.estimated
    assert 0 < finish.usage.prompt_tokens < 100 and 0 < finish.usage.completion_tokens < 100
