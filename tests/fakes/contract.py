"""What every provider adapter must do against its fake, over real loopback HTTP.

Each ``tests/test_provider_<name>.py`` subclasses ``ProviderContract`` (setting ``provider`` and
``model_id``) and adds its protocol-specific tests; the class is collected there, not here.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import aiohttp
import anyio
import anyio.to_thread
import pytest

from modelgate.catalogue import CatalogueModel, load_catalogue
from modelgate.chat import ChatRequest, Finish, GenerationParams, Message, ReasoningDelta, StreamEvent, TextDelta
from modelgate.errors import (
    UpstreamAuthError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from modelgate.providers import Connection, Provider, new_session
from tests.fakes import CREDENTIALS, Fakes, Fault, RecordedRequest, Reply
from tests.fakes._base import FakeUpstream

MESSAGES = (
    Message("system", "You are terse."),
    Message("user", "What is 2+2?"),
    Message("assistant", "4."),
    Message("user", "And 3+3?"),
)
#: The prompt estimate for ``MESSAGES`` when a server reports no usage: per message its text at ~4 characters
#: a token plus 4 tokens of template, and 3 to prime the reply (OpenAI's documented rule): 4 messages, 36 characters.
ESTIMATED_PROMPT = sum(4 + -(-len(m.content) // 4) for m in MESSAGES) + 3

#: Multi-byte characters of 2, 3 and 4 bytes, and Go-escaped characters for Ollama.
UNICODE_TOKENS = ("Ça", " fait", " 6 ", "€", " 🙂", " <b>&</b>", " 中文")


def catalogue_model(model_id: str) -> CatalogueModel:
    return load_catalogue().get(model_id)


def free_port_url() -> str:
    """A loopback URL nobody listens on (the port was free a moment ago)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@dataclass
class Collected:
    events: list[StreamEvent]
    error: BaseException | None = None

    @property
    def text(self) -> str:
        return "".join(e.text for e in self.events if isinstance(e, TextDelta))

    @property
    def reasoning(self) -> str:
        return "".join(e.text for e in self.events if isinstance(e, ReasoningDelta))

    @property
    def finish(self) -> Finish:
        assert self.error is None, f"the stream failed: {self.error!r}"
        assert self.events and isinstance(self.events[-1], Finish), self.events
        assert sum(isinstance(e, Finish) for e in self.events) == 1
        return self.events[-1]


async def collect(stream: AsyncIterator[Sequence[StreamEvent]]) -> Collected:
    """Every event until the end, or until the error (kept, so tests see what came before it).

    Checks the batch contract on the way: no empty batch, nothing after the batch with the ``Finish``.
    """
    events: list[StreamEvent] = []
    try:
        async for batch in stream:
            assert batch, "a provider never yields an empty batch"
            assert not any(isinstance(e, Finish) for e in events), "a batch came after the Finish"
            events.extend(batch)
    except UpstreamError as exc:
        return Collected(events, exc)
    return Collected(events)


class ProviderContract:
    provider: ClassVar[type[Provider]]
    #: A catalogue model served by ``provider``.
    model_id: ClassVar[str]
    #: The upstream field names that carry the catalogue's parameters, for ``model_id``.
    expected_params: ClassVar[dict[str, Any]]

    # -- helpers --------------------------------------------------------------------------------

    def fake(self, fakes: Fakes) -> FakeUpstream:
        return fakes[self.provider.name]

    def base_url(self, fake: FakeUpstream) -> str:
        """The base URL the adapter is configured with (the HF router's is the fake's ``/v1``)."""
        return fake.url

    def sent_params(self, recorded_json: Any) -> dict[str, Any]:
        """The parameters as the fake received them, under the provider's names."""
        raise NotImplementedError

    def make(
        self,
        http: aiohttp.ClientSession,
        base_url: str,
        *,
        first_token_timeout: float = 10.0,
        idle_timeout: float = 10.0,
        whole_reply_timeout: float = 10.0,
        credentials: dict[str, str] | None = None,
    ) -> Provider:
        connection = Connection(
            base_url=base_url,
            credentials=dict(CREDENTIALS[self.provider.name]) if credentials is None else credentials,
            connect_timeout=5.0,
            first_token_timeout=first_token_timeout,
            idle_timeout=idle_timeout,
            whole_reply_timeout=whole_reply_timeout,
        )
        return self.provider(connection, http)

    def request(self, params: GenerationParams | None = None) -> ChatRequest:
        model = catalogue_model(self.model_id)
        return ChatRequest(MESSAGES, params if params is not None else model.defaults)

    async def run(self, fakes: Fakes, reply: Reply | None = None, **make: Any) -> Collected:
        fake = self.fake(fakes)
        if reply is not None:
            fake.script(reply)
        async with new_session() as http:
            provider = self.make(http, self.base_url(fake), **make)
            return await collect(provider.stream(catalogue_model(self.model_id), self.request()))

    # -- the contract ---------------------------------------------------------------------------

    @pytest.mark.anyio
    async def test_reply_text_usage_finish_and_catalogue_parameters(self, fakes: Fakes) -> None:
        got = await self.run(fakes, Reply(tokens=["It", " is", " 6."], usage=(31, 4)))
        assert got.text == "It is 6."
        assert got.finish.reason == "stop"
        assert got.finish.usage is not None
        assert (got.finish.usage.prompt_tokens, got.finish.usage.completion_tokens) == (31, 4)
        assert not got.finish.usage.estimated
        fake = self.fake(fakes)
        assert len(fake.requests) == 1
        assert self.sent_params(fake.last.json) == self.expected_params

    @pytest.mark.anyio
    async def test_length_finish(self, fakes: Fakes) -> None:
        got = await self.run(fakes, Reply(tokens=["a", "b"], finish="length"))
        assert got.text == "ab"
        assert got.finish.reason == "length"

    @pytest.mark.anyio
    @pytest.mark.parametrize("fault", [None, Fault.split_line(), Fault.split_utf8()], ids=["whole", "line", "utf8"])
    async def test_chunk_boundaries_never_corrupt_text(self, fakes: Fakes, fault: Fault | None) -> None:
        got = await self.run(fakes, Reply(tokens=UNICODE_TOKENS, fault=fault))
        assert got.text == "".join(UNICODE_TOKENS)
        assert got.finish.reason == "stop"

    @pytest.mark.anyio
    async def test_401_names_the_provider_and_never_the_credential(self, fakes: Fakes) -> None:
        got = await self.run(fakes, Reply(fault=Fault.status(401)))
        assert isinstance(got.error, UpstreamAuthError)
        assert got.error.status == 502
        assert self.provider.name in got.error.message
        for secret in CREDENTIALS[self.provider.name].values():
            assert secret not in got.error.message
            assert secret not in repr(got.error.data)
        assert got.events == []

    @pytest.mark.anyio
    async def test_wrong_credentials_are_an_auth_error(self, fakes: Fakes) -> None:
        """(Ollama, which has no credentials, overrides this.)"""
        wrong = {name: "wrong-value" for name in CREDENTIALS[self.provider.name]}
        got = await self.run(fakes, credentials=wrong)
        assert isinstance(got.error, UpstreamAuthError)
        assert got.error.status == 502 and "wrong-value" not in got.error.message
        for name in wrong:
            assert name in got.error.message  # says which variable to check

    @pytest.mark.anyio
    async def test_429_carries_retry_after(self, fakes: Fakes) -> None:
        got = await self.run(fakes, Reply(fault=Fault.status(429, retry_after=7)))
        assert isinstance(got.error, UpstreamRateLimited)
        assert got.error.status == 429
        assert got.error.retry_after == pytest.approx(7, abs=1)
        assert got.error.headers["Retry-After"] in {"6", "7", "8"}

    @pytest.mark.anyio
    async def test_500_is_a_transient_upstream_error(self, fakes: Fakes) -> None:
        got = await self.run(fakes, Reply(fault=Fault.status(500)))
        assert type(got.error) is UpstreamError
        assert got.error.status == 502 and got.error.transient
        assert got.error.upstream_status == 500

    @pytest.mark.anyio
    async def test_503_is_unavailable(self, fakes: Fakes) -> None:
        got = await self.run(fakes, Reply(fault=Fault.status(503, retry_after=5)))
        assert isinstance(got.error, UpstreamUnavailable)
        assert got.error.status == 503 and got.error.transient
        assert got.error.retry_after == pytest.approx(5, abs=1)

    @pytest.mark.anyio
    async def test_error_after_first_tokens_is_raised_mid_stream(self, fakes: Fakes) -> None:
        got = await self.run(fakes, Reply(tokens=["a", "b", "c", "d"], fault=Fault.error_after(2)))
        assert got.text == "ab"
        assert isinstance(got.error, UpstreamError)
        assert not any(isinstance(e, Finish) for e in got.events)

    @pytest.mark.anyio
    async def test_dropped_connection_mid_stream(self, fakes: Fakes) -> None:
        got = await self.run(fakes, Reply(tokens=["a", "b", "c", "d"], fault=Fault.drop_after(2)))
        assert got.text == "ab"
        assert isinstance(got.error, UpstreamProtocolError)
        assert "dropped" in got.error.message

    @pytest.mark.anyio
    async def test_a_connection_dropped_before_the_first_token_is_sent_once(self, fakes: Fakes) -> None:
        # The caller's retry policy decides whether to try again; the adapter never re-sends on its own (a
        # second generation, billed and thrown away).
        got = await self.run(fakes, Reply(tokens=["a", "b"], fault=Fault.drop_after(0)))
        assert isinstance(got.error, UpstreamProtocolError) and got.error.transient
        assert "dropped" in got.error.message
        assert got.events == []
        assert len(self.fake(fakes).requests) == 1

    @pytest.mark.anyio
    async def test_no_first_byte_in_time_is_a_504_and_abandons_the_call(self, fakes: Fakes) -> None:
        fake = self.fake(fakes)
        fake.script(Reply(fault=Fault.hang()))
        async with new_session() as http:
            provider = self.make(http, self.base_url(fake), first_token_timeout=0.3)
            got = await collect(provider.stream(catalogue_model(self.model_id), self.request()))
            # Seen while our client (and its connection pool) is still open: the call itself was closed.
            assert await anyio.to_thread.run_sync(fake.wait_for_disconnects, 1) == 1
        assert isinstance(got.error, UpstreamTimeout)
        assert got.error.status == 504 and "first-token" in got.error.message

    @pytest.mark.anyio
    async def test_slow_first_token_beyond_the_timeout_is_a_504(self, fakes: Fakes) -> None:
        got = await self.run(fakes, Reply(fault=Fault.slow_first(30)), first_token_timeout=0.3)
        assert isinstance(got.error, UpstreamTimeout)
        assert got.events == []

    @pytest.mark.anyio
    async def test_slow_first_token_within_the_timeout_streams(self, fakes: Fakes) -> None:
        got = await self.run(fakes, Reply(tokens=["late"], fault=Fault.slow_first(0.2)), first_token_timeout=30)
        assert got.text == "late"

    @pytest.mark.anyio
    async def test_stall_mid_stream_is_an_idle_timeout(self, fakes: Fakes) -> None:
        got = await self.run(fakes, Reply(tokens=["a", "b", "c"], fault=Fault.hang(after=2)), idle_timeout=1.0)
        assert got.text == "ab"
        assert isinstance(got.error, UpstreamTimeout)
        assert "mid-stream" in got.error.message

    @pytest.mark.anyio
    async def test_slow_but_steady_stream_is_never_cut(self, fakes: Fakes) -> None:
        # Each gap is under the idle timeout while the whole reply takes longer than it:
        # there is no total deadline.
        tokens = [f"t{i} " for i in range(10)]
        got = await self.run(fakes, Reply(tokens=tokens, delay=0.15), idle_timeout=1.0, first_token_timeout=1.0)
        assert got.text == "".join(tokens)

    @pytest.mark.anyio
    async def test_unreachable_upstream(self, fakes: Fakes) -> None:
        async with new_session() as http:
            provider = self.make(http, free_port_url())
            got = await collect(provider.stream(catalogue_model(self.model_id), self.request()))
        assert type(got.error) is UpstreamError
        assert got.error.transient and "unreachable" in got.error.message

    @pytest.mark.anyio
    async def test_closing_the_stream_early_disconnects_the_upstream(self, fakes: Fakes) -> None:
        fake = self.fake(fakes)
        fake.script(Reply(tokens=[f"t{i}" for i in range(200)], delay=0.02))
        async with new_session() as http:
            provider = self.make(http, self.base_url(fake))
            stream = provider.stream(catalogue_model(self.model_id), self.request())
            first = await anext(aiter(stream))
            assert first[0] == TextDelta("t0")
            await stream.aclose()  # type: ignore[attr-defined]
            # Seen while our client (and its connection pool) is still open: closing the stream did it.
            assert await anyio.to_thread.run_sync(fake.wait_for_disconnects, 1) == 1


def param_subset(values: dict[str, Any], names: Iterable[str]) -> dict[str, Any]:
    return {name: values[name] for name in names if name in values}


class WholeReplyContract(ProviderContract):
    """What ``Provider.complete`` (a caller that wants the reply whole) must do for a kind that asks its upstream for
    one JSON reply: the events a stream gives, the same error mapping, and the same deadlines — the whole reply's
    status line is its first byte, so it must come within ``first_token_timeout`` (``Upstream.fetch``)."""

    def asked_whole(self, recorded: RecordedRequest) -> bool:
        """Whether the fake was asked for one whole reply (``stream: false``, or the kind's non-streamed route)."""
        raise NotImplementedError

    async def run_whole(self, fakes: Fakes, reply: Reply | None = None, **make: Any) -> Collected:
        fake = self.fake(fakes)
        if reply is not None:
            fake.script(reply)
        async with new_session() as http:
            provider = self.make(http, self.base_url(fake), **make)
            got = await collect(provider.complete(catalogue_model(self.model_id), self.request()))
        assert fake.requests and self.asked_whole(fake.last)
        return got

    @pytest.mark.anyio
    async def test_a_whole_reply_is_one_batch_with_text_usage_and_finish(self, fakes: Fakes) -> None:
        async with new_session() as http:
            provider = self.make(http, self.base_url(self.fake(fakes)))
            self.fake(fakes).script(Reply(tokens=["It", " is", " 6."], usage=(31, 4)))
            batches = [batch async for batch in provider.complete(catalogue_model(self.model_id), self.request())]
        assert self.asked_whole(self.fake(fakes).last)
        assert len(batches) == 1
        got = Collected(list(batches[0]))
        assert got.text == "It is 6."
        assert got.finish.reason == "stop"
        assert got.finish.usage is not None and not got.finish.usage.estimated
        assert (got.finish.usage.prompt_tokens, got.finish.usage.completion_tokens) == (31, 4)
        assert self.sent_params(self.fake(fakes).last.json) == self.expected_params

    @pytest.mark.anyio
    async def test_a_whole_reply_keeps_every_character(self, fakes: Fakes) -> None:
        got = await self.run_whole(fakes, Reply(tokens=UNICODE_TOKENS))
        assert got.text == "".join(UNICODE_TOKENS)

    @pytest.mark.anyio
    async def test_a_whole_reply_cut_by_the_length_limit_says_so(self, fakes: Fakes) -> None:
        got = await self.run_whole(fakes, Reply(tokens=["a", "b"], finish="length"))
        assert got.text == "ab"
        assert got.finish.reason == "length"

    @pytest.mark.anyio
    async def test_an_error_status_on_a_whole_reply_maps_as_on_a_stream(self, fakes: Fakes) -> None:
        limited = await self.run_whole(fakes, Reply(fault=Fault.status(429, retry_after=7)))
        assert isinstance(limited.error, UpstreamRateLimited)
        assert limited.error.retry_after == pytest.approx(7, abs=1)
        failed = await self.run_whole(fakes, Reply(fault=Fault.status(500)))
        assert type(failed.error) is UpstreamError and failed.error.transient and failed.error.upstream_status == 500
        assert limited.events == failed.events == []

    @pytest.mark.anyio
    async def test_a_generation_failing_midway_is_an_error_with_nothing_before_it(self, fakes: Fakes) -> None:
        got = await self.run_whole(fakes, Reply(tokens=["a", "b", "c"], fault=Fault.error_after(2)))
        assert isinstance(got.error, UpstreamError) and self.provider.name in got.error.message
        assert got.events == []

    @pytest.mark.anyio
    async def test_a_connection_dropped_before_the_whole_reply_is_a_transient_error(self, fakes: Fakes) -> None:
        got = await self.run_whole(fakes, Reply(tokens=["a", "b", "c"], fault=Fault.drop_after(2)))
        assert isinstance(got.error, UpstreamProtocolError) and got.error.transient
        assert "dropped" in got.error.message and got.events == []

    @pytest.mark.anyio
    async def test_a_whole_reply_slower_than_the_whole_reply_timeout_is_a_504(self, fakes: Fakes) -> None:
        got = await self.run_whole(fakes, Reply(fault=Fault.slow_first(30)), whole_reply_timeout=0.3)
        assert isinstance(got.error, UpstreamTimeout) and "whole-reply timeout" in got.error.message
        assert got.events == []

    @pytest.mark.anyio
    async def test_a_whole_generation_within_the_whole_reply_timeout_is_served(self, fakes: Fakes) -> None:
        # Longer than the first-token and the idle timeout: a whole reply's generation is bounded by its own timeout.
        reply = Reply(tokens=["late", " but", " whole"], fault=Fault.slow_first(0.2), delay=0.2)
        got = await self.run_whole(fakes, reply, first_token_timeout=0.3, idle_timeout=0.3, whole_reply_timeout=30)
        assert got.text == "late but whole"

    @pytest.mark.anyio
    async def test_a_hung_whole_reply_is_a_504_and_abandons_the_call(self, fakes: Fakes) -> None:
        fake = self.fake(fakes)
        fake.script(Reply(fault=Fault.hang(after=1)))
        async with new_session() as http:
            provider = self.make(http, self.base_url(fake), whole_reply_timeout=0.3)
            got = await collect(provider.complete(catalogue_model(self.model_id), self.request()))
            # Seen while our client (and its connection pool) is still open: the call itself was closed.
            assert await anyio.to_thread.run_sync(fake.wait_for_disconnects, 1) == 1
        assert isinstance(got.error, UpstreamTimeout) and got.error.status == 504


class ThinkTagsContract(WholeReplyContract):
    """Providers whose models may write their reasoning into the text as a leading ``<think>`` block (Workers AI's
    legacy format, Ollama without ``think``): it is split out as reasoning, streamed and whole."""

    @pytest.mark.anyio
    async def test_a_leading_think_block_in_the_text_is_reasoning(self, fakes: Fakes) -> None:
        # A reasoning model whose server does not separate its thinking (DeepSeek-R1's distills): the tags arrive
        # as text, split anywhere; the blank lines after </think> only separate.
        tokens = ["<th", "ink>Let me", " see.</thi", "nk>\n\nHi", " there"]
        streamed = await self.run(fakes, Reply(tokens=tokens, usage=(9, 5)))
        whole = await self.run_whole(fakes, Reply(tokens=tokens, usage=(9, 5)))
        for got in (streamed, whole):
            assert (got.reasoning, got.text) == ("Let me see.", "Hi there")
            assert got.finish.reason == "stop"
