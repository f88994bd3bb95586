"""The Cloudflare Workers AI adapter against the fake (bare SSE events, usage event, [DONE]) over loopback HTTP."""

from __future__ import annotations

import asyncio
import json
import tomllib
from collections.abc import Iterator
from dataclasses import replace
from typing import Any, ClassVar

import anyio
import anyio.to_thread
import httpx
import openai
import orjson
import pytest

from modelgate.app import create_app
from modelgate.catalogue import CatalogueModel, parse_catalogue
from modelgate.chat import ChatRequest, Finish, GenerationParams, TextDelta, ToolCallDelta, Usage
from modelgate.errors import UpstreamBadRequest, UpstreamError, UpstreamProtocolError, UpstreamRateLimited
from modelgate.providers import PROVIDERS, new_session
from modelgate.providers._http import Upstream
from modelgate.providers.base import Connection
from modelgate.providers.cloudflare import Cloudflare, CloudflareStream, NotStreamed, read_error, read_whole
from modelgate.settings import Settings
from tests.fakes import PROMPT_TOKENS, Fakes, Fault, Reply
from tests.fakes._base import RecordedRequest, ToolCallScript
from tests.fakes.cloudflare import ACCOUNT, CONTEXT_WINDOW, EMPTY_RESULT, TOKEN
from tests.fakes.contract import ESTIMATED_PROMPT, MESSAGES, ThinkTagsContract, catalogue_model, collect, free_port_url
from tests.servers import serve_in_thread

PARAM_FIELDS = ("max_tokens", "temperature", "top_p", "repetition_penalty", "seed")
PARAM_FIELDS += ("presence_penalty", "frequency_penalty", "typical_p", "truncate", "stop")
#: A model that does not stream on ``/ai/run/``: a streamed call gets an empty envelope (the fake's ``unstreamed``).
GPT_OSS = "@cf/openai/gpt-oss-120b"


class TestCloudflare(ThinkTagsContract):
    provider = Cloudflare
    model_id = "cloudflare/llama-3.3-70b-instruct-fp8-fast"
    # The catalogue: max_new_tokens 256, repetition_penalty 1.1; typical_p 0.2 and truncate are not carried.
    expected_params: ClassVar[dict[str, Any]] = {"max_tokens": 256, "repetition_penalty": 1.1}

    def sent_params(self, recorded_json: Any) -> dict[str, Any]:
        return {k: v for k, v in recorded_json.items() if k in PARAM_FIELDS}

    def asked_whole(self, recorded: RecordedRequest) -> bool:
        return "/ai/run/" in recorded.path and "stream" not in recorded.json  # Workers AI's default: not streamed

    @pytest.mark.anyio
    async def test_a_whole_reply_without_usage_is_estimated_and_says_so(self, fakes: Fakes) -> None:
        got = await self.run_whole(fakes, Reply(tokens=["It", " is", " 6."], usage=None))
        assert got.text == "It is 6."
        assert got.finish.reason == "stop"
        assert got.finish.usage == Usage(ESTIMATED_PROMPT, 0, estimated=True)

    @pytest.mark.anyio
    async def test_request_shape_and_unencoded_model_path(self, fakes: Fakes) -> None:
        await self.run(fakes)
        sent = fakes.cloudflare.last
        assert sent.method == "POST"
        assert sent.raw_path == "/client/v4/accounts/acct/ai/run/@cf/meta/llama-3.3-70b-instruct-fp8-fast"
        assert sent.headers["authorization"] == "Bearer cf_test"
        assert sent.json["stream"] is True
        assert sent.json["messages"][-1] == {"role": "user", "content": "And 3+3?"}

    @pytest.mark.anyio
    async def test_catalogue_parameters_cloudflare_cannot_carry_are_dropped_and_reported(self, fakes: Fakes) -> None:
        model = catalogue_model(self.model_id)
        async with new_session() as http:
            provider = self.make(http, fakes.cloudflare.url)
            got = await collect(provider.stream(model, self.request()))
            assert provider.dropped_params(model.defaults) == ["truncate", "typical_p"]
        assert got.error is None  # the fake rejects unknown properties as the real schema does
        assert "typical_p" not in fakes.cloudflare.last.json and "truncate" not in fakes.cloudflare.last.json

    @pytest.mark.anyio
    async def test_every_parameter_it_can_carry(self, fakes: Fakes) -> None:
        params = GenerationParams(
            max_new_tokens=64,
            temperature=0.5,
            repetition_penalty=1.1,
            top_p=0.9,
            seed=7,
            presence_penalty=0.5,
            frequency_penalty=-0.5,
            stop=("END",),
        )
        async with new_session() as http:
            provider = self.make(http, fakes.cloudflare.url)
            got = await collect(provider.stream(catalogue_model(self.model_id), self.request(params)))
            assert provider.dropped_params(params) == ["stop"]
        assert got.finish.reason == "stop"
        assert self.sent_params(fakes.cloudflare.last.json) == {
            "max_tokens": 64,
            "temperature": 0.5,
            "repetition_penalty": 1.1,
            "top_p": 0.9,
            "seed": 7,
            "presence_penalty": 0.5,
            "frequency_penalty": -0.5,
        }

    @pytest.mark.anyio
    async def test_old_style_events_without_usage_are_counted_and_marked_estimated(self, fakes: Fakes) -> None:
        got = await self.run(fakes, Reply(tokens=["a", "", "b"], usage=None, options={"padding": False}))
        assert got.text == "ab"
        # Two non-empty fragments; the prompt ≈ 4 characters a token, plus the template's per-message overhead.
        assert got.finish.usage == Usage(ESTIMATED_PROMPT, 2, estimated=True)

    @pytest.mark.anyio
    async def test_stream_without_done_is_truncated(self, fakes: Fakes) -> None:
        got = await self.run(fakes, Reply(tokens=["a", "b", "c"], fault=Fault.error_after(2)))
        assert got.text == "ab"
        assert isinstance(got.error, UpstreamProtocolError) and "truncated" in got.error.message

    @pytest.mark.anyio
    async def test_capacity_429_is_transient_daily_quota_429_is_not(self, fakes: Fakes) -> None:
        got = await self.run(fakes, Reply(fault=Fault.status(429)))
        assert isinstance(got.error, UpstreamRateLimited) and got.error.transient
        assert "3040" in got.error.message
        got = await self.run(fakes, Reply(fault=Fault.status(429, code=3036)))
        assert isinstance(got.error, UpstreamRateLimited) and not got.error.transient
        assert got.error.status == 429 and "3036" in got.error.message

    @pytest.mark.anyio
    @pytest.mark.parametrize("status", [429, 500])
    async def test_daily_allocation_used_up_under_its_current_code_is_not_retried(
        self, fakes: Fakes, status: int
    ) -> None:
        """Workers AI now says "4006: you have used up your daily free allocation of 10,000 neurons" (3036 was the
        code of the errors page): a 429 no retry cures until the allocation resets, whatever status carries it."""
        got = await self.run(fakes, Reply(fault=Fault.status(status, code=4006)))
        assert isinstance(got.error, UpstreamRateLimited) and not got.error.transient
        assert got.error.status == 429 and "4006" in got.error.message

    @pytest.mark.anyio
    async def test_auth_code_under_403_is_still_an_auth_error(self, fakes: Fakes) -> None:
        got = await self.run(fakes, Reply(fault=Fault.status(403, code=10000)))
        assert got.error is not None and type(got.error).__name__ == "UpstreamAuthError"
        assert "CLOUDFLARE_API_TOKEN" in got.error.message

    @pytest.mark.anyio
    async def test_schema_rejection_is_a_bad_request_with_cloudflares_message(self, fakes: Fakes) -> None:
        params = GenerationParams(temperature=9.0)  # outside 0..5
        async with new_session() as http:
            provider = self.make(http, fakes.cloudflare.url)
            got = await collect(provider.stream(catalogue_model(self.model_id), self.request(params)))
        assert isinstance(got.error, UpstreamBadRequest)
        assert "5006" in got.error.message and "temperature" in got.error.message

    @pytest.mark.anyio
    async def test_unknown_model_is_not_available_upstream(self, fakes: Fakes) -> None:
        fakes.cloudflare.models = {"@cf/meta/llama-3.1-8b-instruct"}
        got = await self.run(fakes)
        assert type(got.error) is UpstreamError
        assert "not available upstream" in got.error.message

    # -- newer models answer in the OpenAI format (workers-ai-provider reads both) ---------------------

    @pytest.mark.anyio
    async def test_an_openai_format_stream_is_read_with_reasoning_usage_and_finish(self, fakes: Fakes) -> None:
        reply = Reply(tokens=["It", " is", " 6."], reasoning=["Add", " them."], usage=(31, 5), finish="length")
        got = await self.run(fakes, replace(reply, options={"openai_format": True}))
        assert got.reasoning == "Add them." and got.text == "It is 6."
        assert got.finish == Finish("length", Usage(31, 5))

    @pytest.mark.anyio
    async def test_an_openai_format_stream_without_usage_is_counted_and_ends_at_its_finish(self, fakes: Fakes) -> None:
        got = await self.run(fakes, Reply(tokens=["a", "b"], usage=None, options={"openai_format": True}))
        assert got.text == "ab"
        assert got.finish == Finish("stop", Usage(ESTIMATED_PROMPT, 2, estimated=True))

    @pytest.mark.anyio
    async def test_an_openai_format_whole_reply_is_read_with_its_tool_calls(self, fakes: Fakes) -> None:
        call = ToolCallScript(name="add", arguments='{"a": 3, "b": 3}', id="call_cf_1")
        reply = Reply(tokens=[], tool_calls=[call], usage=(40, 9), finish="tool_calls", options={"openai_format": True})
        got = await self.run_whole(fakes, reply)
        calls = [e for e in got.events if isinstance(e, ToolCallDelta)]
        assert [(c.id, c.name, c.arguments) for c in calls] == [("call_cf_1", "add", '{"a": 3, "b": 3}')]
        assert got.finish == Finish("tool-calls", Usage(40, 9))

    @pytest.mark.anyio
    async def test_an_openai_format_whole_reply_carries_text_and_reasoning(self, fakes: Fakes) -> None:
        reply = Reply(tokens=["It", " is", " 6."], reasoning=["Add."], usage=(31, 4), options={"openai_format": True})
        got = await self.run_whole(fakes, reply)
        assert got.reasoning == "Add." and got.text == "It is 6."
        assert got.finish == Finish("stop", Usage(31, 4))

    # -- models that do not stream on /ai/run/ (GPT-OSS, Kimi): asked again without ``stream`` -----------

    def unstreamed_model(self) -> CatalogueModel:
        return replace(catalogue_model(self.model_id), upstream_model=GPT_OSS)

    @pytest.mark.anyio
    @pytest.mark.parametrize("openai_format", [False, True], ids=["legacy", "openai-format"])
    async def test_a_model_that_does_not_stream_is_asked_again_whole(self, fakes: Fakes, openai_format: bool) -> None:
        """Its 200 ``application/json`` envelope with an empty result is no truncated stream: the call goes again
        without ``stream`` (``workers-ai-provider`` utils.ts ``createRun``), and that whole reply is the stream."""
        reply = Reply(tokens=["It", " is", " 6."], usage=(31, 3), options={"openai_format": openai_format})
        fakes.cloudflare.script(reply)
        async with new_session() as http:
            got = await collect(self.make(http, fakes.cloudflare.url).stream(self.unstreamed_model(), self.request()))
        assert got.text == "It is 6."
        assert got.finish == Finish("stop", Usage(31, 3))
        first, second = fakes.cloudflare.requests
        assert first.json["stream"] is True
        assert "stream" not in second.json and second.json["messages"] == first.json["messages"]
        assert second.path == first.path == f"/client/v4/accounts/acct/ai/run/{GPT_OSS}"

    @pytest.mark.anyio
    async def test_a_model_known_not_to_stream_is_asked_whole_at_once(self, fakes: Fakes) -> None:
        fakes.cloudflare.script(Reply(tokens=["a"]), Reply(tokens=["b"]))
        async with new_session() as http:
            provider = self.make(http, fakes.cloudflare.url)
            first = await collect(provider.stream(self.unstreamed_model(), self.request()))
            second = await collect(provider.stream(self.unstreamed_model(), self.request()))
            other = await collect(provider.stream(catalogue_model(self.model_id), self.request()))
        assert (first.text, second.text, other.text) == ("a", "b", "Hello, world!")
        streamed = [request.json.get("stream") is True for request in fakes.cloudflare.requests]
        assert streamed == [True, False, False, True]  # learnt once; another model still streams

    @pytest.mark.anyio
    async def test_a_whole_call_to_a_model_that_does_not_stream_is_one_request(self, fakes: Fakes) -> None:
        fakes.cloudflare.script(Reply(tokens=["It", " is", " 6."], usage=(31, 3)))
        async with new_session() as http:
            got = await collect(self.make(http, fakes.cloudflare.url).complete(self.unstreamed_model(), self.request()))
        assert got.text == "It is 6." and got.finish == Finish("stop", Usage(31, 3))
        [sent] = fakes.cloudflare.requests
        assert "stream" not in sent.json

    @pytest.mark.anyio
    async def test_the_whole_calls_failure_is_the_streams(self, fakes: Fakes) -> None:
        fakes.cloudflare.script(Reply(fault=Fault.status(429, code=3036)))
        async with new_session() as http:
            got = await collect(self.make(http, fakes.cloudflare.url).stream(self.unstreamed_model(), self.request()))
        assert isinstance(got.error, UpstreamRateLimited) and "3036" in got.error.message
        assert got.events == [] and len(fakes.cloudflare.requests) == 2

    @pytest.mark.anyio
    async def test_a_stream_cancelled_during_the_whole_call_abandons_it(self, fakes: Fakes) -> None:
        fake = fakes.cloudflare
        fake.script(Reply(fault=Fault.hang()))
        async with new_session() as http:
            stream = self.make(http, fake.url).stream(self.unstreamed_model(), self.request())
            with pytest.raises(TimeoutError):  # the caller's deadline cancels the stream while the whole call waits
                await asyncio.wait_for(anext(aiter(stream)), 2.0)
            # Seen while our client (and its connection pool) is still open: the whole call itself was closed.
            assert await anyio.to_thread.run_sync(fake.wait_for_disconnects, 1) == 1
        assert len(fake.requests) == 2

    @pytest.mark.anyio
    async def test_probe_searches_the_free_model_listing(self, fakes: Fakes) -> None:
        model = catalogue_model(self.model_id)
        async with new_session() as http:
            result = await self.make(http, fakes.cloudflare.url).probe([model])
            fakes.cloudflare.models = {"@cf/meta/llama-3.1-8b-instruct"}
            missing = await self.make(http, fakes.cloudflare.url).probe([model])
            down = await self.make(http, free_port_url()).probe([model])
        assert result is not None and result.reachable
        assert result.available_models == frozenset({"@cf/meta/llama-3.3-70b-instruct-fp8-fast"})
        assert result.context_lengths == {"@cf/meta/llama-3.3-70b-instruct-fp8-fast": CONTEXT_WINDOW}
        assert fakes.cloudflare.listings[-1].path == "/client/v4/accounts/acct/ai/models/search"
        assert fakes.cloudflare.listings[-1].headers["authorization"] == "Bearer cf_test"
        assert fakes.cloudflare.requests == []  # a listing, never a generation
        assert missing is not None and missing.reachable and missing.available_models == frozenset()
        assert down is not None and not down.reachable

    @pytest.mark.anyio
    async def test_a_named_instance_probe_searches_its_own_models(self, fakes: Fakes) -> None:
        # ``[providers.cf-eu] kind = "cloudflare"``: its models name the instance, not the kind. Ours sorts after a
        # first page of 20 others, so a search for nothing in particular would not find it.
        ours = "@cf/zz/our-model"
        fakes.cloudflare.models = {f"@cf/aa/model-{i:02d}" for i in range(24)} | {ours}
        model = replace(catalogue_model(self.model_id), provider="cf-eu", upstream_model=ours)
        async with new_session() as http:
            provider = self.make(http, fakes.cloudflare.url)
            result = await Cloudflare(replace(provider.connection, name="cf-eu"), http).probe([model])
        assert result is not None and result.available_models == frozenset({ours})
        assert [listing.query for listing in fakes.cloudflare.listings] == ["search=@cf/zz/our-model"]


def test_registered() -> None:
    assert PROVIDERS["cloudflare"] is Cloudflare


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b'{"response": "no envelope"}',
        b'{"result": {"response": "x", "tool_calls": [{"name": null, "arguments": {}}]}}',  # was sent on as "None"
    ],
)
def test_a_whole_reply_in_no_shape_workers_ai_sends_is_a_protocol_error(body: bytes) -> None:
    upstream = Upstream("cloudflare", Connection("http://127.0.0.1:9"), None, read_error)  # type: ignore[arg-type]
    request = ChatRequest(MESSAGES, GenerationParams())
    with pytest.raises(UpstreamProtocolError, match="unreadable reply"):
        read_whole(upstream, request, body)


@pytest.mark.parametrize(
    "usage",
    [
        '{"prompt_tokens": 1}',
        '{"prompt_tokens": -5, "completion_tokens": 2}',
        '{"prompt_tokens": 1180591620717411303424, "completion_tokens": 1}',
    ],
)
def test_counts_that_are_not_token_counts_are_estimated_not_trusted(usage: str) -> None:
    """A finished reply with unreadable counts is delivered, counted by us and marked so: negative counts refunded
    budgets and 2**70 broke the access line and the ledger."""
    upstream = Upstream("cloudflare", Connection("http://127.0.0.1:9"), None, read_error)  # type: ignore[arg-type]
    request = ChatRequest(MESSAGES, GenerationParams())
    body = b'{"result": {"response": "hello", "usage": ' + usage.encode() + b'}, "success": true}'
    *_, finish = read_whole(upstream, request, body)
    assert isinstance(finish, Finish) and finish.usage.estimated
    assert 0 < finish.usage.prompt_tokens < 100


def test_an_error_envelope_under_a_2xx_status_is_the_error_it_says() -> None:
    upstream = Upstream("cloudflare", Connection("http://127.0.0.1:9"), None, read_error)  # type: ignore[arg-type]
    body = b'{"result": null, "success": false, "errors": [{"code": 3040, "message": "Capacity exceeded"}]}'
    with pytest.raises(UpstreamRateLimited, match="3040: Capacity exceeded"):
        read_whole(upstream, ChatRequest(MESSAGES, GenerationParams()), body)


def stream_body(body: bytes, *chunks: bytes) -> CloudflareStream:
    """A parser fed ``body`` (then ``chunks``), as a 200 to a streamed call brought it."""
    upstream = Upstream("cloudflare", Connection("http://127.0.0.1:9"), None, read_error)  # type: ignore[arg-type]
    parser = CloudflareStream(upstream, ChatRequest(MESSAGES, GenerationParams()))
    for chunk in (body, *chunks):
        assert parser.feed(chunk) == []
    return parser


@pytest.mark.parametrize(
    "body",
    [orjson.dumps(EMPTY_RESULT), b'{"result": {}, "success": true}', b'{"result": null, "success": true}'],
    ids=["null-response", "empty", "null"],
)
def test_an_empty_envelope_to_a_streamed_call_means_the_model_does_not_stream(body: bytes) -> None:
    with pytest.raises(NotStreamed):
        stream_body(body[:9], body[9:]).end()


def test_an_error_envelope_to_a_streamed_call_is_the_error_it_says_not_a_model_that_does_not_stream() -> None:
    body = b'{"result": null, "success": false, "errors": [{"code": 3040, "message": "Capacity exceeded"}]}'
    with pytest.raises(UpstreamRateLimited, match="3040: Capacity exceeded") as raised:
        stream_body(body).end()
    assert not isinstance(raised.value, NotStreamed)


def test_a_whole_reply_to_a_streamed_call_is_read_not_asked_again() -> None:
    body = (
        b'{"result": {"response": "It is 6.", "usage": {"prompt_tokens": 9, "completion_tokens": 3}}, "success": true}'
    )
    events = stream_body(body).end()
    assert events == [TextDelta("It is 6."), Finish("stop", Usage(9, 3))]


@pytest.mark.parametrize(
    ("body", "message"),
    [(b"<html>busy</html>", "no event stream: <html>busy</html>"), (b'data: {"respo', "truncated")],
)
def test_a_body_neither_events_nor_an_envelope_is_a_protocol_error(body: bytes, message: str) -> None:
    with pytest.raises(UpstreamProtocolError, match=message) as raised:
        stream_body(body).end()
    assert not isinstance(raised.value, NotStreamed)


# -- end to end: a listed model that does not stream answers every kind of call ---------------------------------


def _serve_catalogue(fakes: Fakes, text: str, source: str) -> Iterator[str]:
    """A service of the catalogue ``text`` (TOML) in front of the fakes, no probes: its URL while it runs."""
    settings = Settings(**fakes.settings_overrides(), probe_interval=0)  # type: ignore[arg-type]
    with serve_in_thread(create_app(settings, parse_catalogue(tomllib.loads(text), source=source))) as url:
        yield url


@pytest.fixture
def gpt_oss_service(fakes: Fakes) -> Iterator[str]:
    text = f"""
[[models]]
publisher = "openai"
name = "gpt-oss-120b"
provider = "cloudflare"
type = "chat"
[models.configuration]
model = "{GPT_OSS}"
[models.configuration.parameters]
max_new_tokens = 64
typical_p = -1
repetition_penalty = -1
truncate = 2048
"""
    yield from _serve_catalogue(fakes, text, "gpt-oss.toml")


ASK = [{"role": "user", "content": "And 3+3?"}]


def assert_asked_twice(fakes: Fakes) -> None:
    first, second = fakes.cloudflare.requests
    assert first.json["stream"] is True and "stream" not in second.json


def test_a_data_stream_from_a_model_that_does_not_stream(gpt_oss_service: str, fakes: Fakes) -> None:
    fakes.cloudflare.script(Reply(tokens=["It", " is", " 6."]))
    response = httpx.post(gpt_oss_service + "/api/ai/cloudflare/openai/gpt-oss-120b/chat", json={"messages": ASK})
    assert response.status_code == 200
    parts = [(line[:1], json.loads(line[2:])) for line in response.text.splitlines()]
    assert "".join(value for code, value in parts if code == "0") == "It is 6."
    [finish] = [value for code, value in parts if code == "d"]
    assert finish == {"finishReason": "stop", "usage": {"promptTokens": PROMPT_TOKENS, "completionTokens": 3}}
    assert_asked_twice(fakes)


def test_a_v1_stream_from_a_model_that_does_not_stream(gpt_oss_service: str, fakes: Fakes) -> None:
    fakes.cloudflare.script(Reply(tokens=["It", " is", " 6."]))
    client = openai.OpenAI(base_url=gpt_oss_service + "/v1", api_key="unused", max_retries=0)
    chunks = list(
        client.chat.completions.create(
            model="openai/gpt-oss-120b", messages=ASK, stream=True, stream_options={"include_usage": True}
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "It is 6."
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    usage = chunks[-1].usage
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (PROMPT_TOKENS, 3)
    assert_asked_twice(fakes)


def test_a_v1_whole_reply_from_a_model_that_does_not_stream_is_one_request(gpt_oss_service: str, fakes: Fakes) -> None:
    fakes.cloudflare.script(Reply(tokens=["It", " is", " 6."]))
    client = openai.OpenAI(base_url=gpt_oss_service + "/v1", api_key="unused", max_retries=0)
    completion = client.chat.completions.create(model="openai/gpt-oss-120b", messages=ASK)
    assert completion.choices[0].message.content == "It is 6." and completion.choices[0].finish_reason == "stop"
    [sent] = fakes.cloudflare.requests
    assert "stream" not in sent.json


@pytest.mark.parametrize(
    ("call", "expected_id"),
    [
        # The native shape: no id, one is generated.
        ({"name": "get_weather", "arguments": {"city": "Paris"}}, None),
        # OpenAI-shaped calls in the legacy result, as workers-ai-provider's processToolCall reads them first.
        (
            {
                "id": "chatcmpl-tool-1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            },
            "chatcmpl-tool-1",
        ),
    ],
    ids=["native", "openai-shaped"],
)
def test_tool_calls_in_a_legacy_whole_reply_are_read_in_both_shapes(
    call: dict[str, Any], expected_id: str | None
) -> None:
    upstream = Upstream("cloudflare", Connection("http://127.0.0.1:9"), None, read_error)  # type: ignore[arg-type]
    usage = {"prompt_tokens": 200, "completion_tokens": 20, "total_tokens": 220}
    body = orjson.dumps({"result": {"response": None, "tool_calls": [call], "usage": usage}, "success": True})
    events = read_whole(upstream, ChatRequest(MESSAGES, GenerationParams()), body)
    [delta] = [e for e in events if isinstance(e, ToolCallDelta)]
    assert (delta.name, orjson.loads(delta.arguments)) == ("get_weather", {"city": "Paris"})
    assert delta.id == expected_id if expected_id else delta.id and delta.id.startswith("call_")
    assert isinstance(events[-1], Finish) and events[-1].reason == "tool-calls"


# -- a model whose licence the account has not accepted (Workers AI 5016) ------------------------------------------

VISION = "@cf/meta/llama-3.2-11b-vision-instruct"


@pytest.fixture
def licensed_service(fakes: Fakes) -> Iterator[str]:
    """A licensed model under a breaker that one failure counted against the provider would open."""
    text = f"""
[providers.cloudflare]
max_retries = 2
retry_base_delay = 0.01
breaker_threshold = 1

[[models]]
publisher = "meta"
name = "llama-3.2-11b-vision-instruct"
provider = "cloudflare"
type = "chat"
[models.configuration]
model = "{VISION}"
[models.configuration.parameters]
max_new_tokens = 64
typical_p = -1
repetition_penalty = -1
truncate = 2048
"""
    yield from _serve_catalogue(fakes, text, "licensed.toml")


def test_a_licence_not_accepted_is_a_403_saying_to_send_agree_not_an_auth_error_or_an_outage(
    licensed_service: str, fakes: Fakes
) -> None:
    """Workers AI's 5016 ("you must submit the prompt 'agree'") came as a 502 "access denied", which reads as refused
    credentials. It is a 403 naming the remedy, asked once (no retry cures it), and not held against the provider: its
    breaker stays closed and its status is not down. Once the owner has agreed, the model answers."""
    fakes.cloudflare.unagreed = {VISION}
    client = openai.OpenAI(base_url=licensed_service + "/v1", api_key="unused", max_retries=0)
    for _ in range(2):  # a second call, after a failure the breaker counted, would be refused without asking
        with pytest.raises(openai.PermissionDeniedError) as refused:
            client.chat.completions.create(model="meta/llama-3.2-11b-vision-instruct", messages=ASK)
        message = refused.value.message
        assert f"the model '{VISION}'" in message and 'the prompt "agree"' in message
        assert '{"prompt": "agree"}' in message and "5016" in message
        assert "credentials" not in message and "access denied" not in message
    assert len(fakes.cloudflare.requests) == 2  # one each: not retried
    status = httpx.get(licensed_service + "/api/status").json()
    assert status["providers"]["cloudflare"]["status"] != "down"
    metrics = httpx.get(licensed_service + "/metrics").text
    assert 'outcome="agreement_required"' in metrics

    agreed = httpx.post(
        f"{fakes.cloudflare.url}/accounts/{ACCOUNT}/ai/run/{VISION}",
        json={"prompt": "agree"},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert agreed.status_code == 200
    fakes.cloudflare.script(Reply(tokens=["It", " is", " 6."]))
    completion = client.chat.completions.create(model="meta/llama-3.2-11b-vision-instruct", messages=ASK)
    assert completion.choices[0].message.content == "It is 6."
