"""The Ollama adapter against the fake Ollama server (NDJSON, Go-escaped JSON) over loopback HTTP."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import pytest

from modelgate.chat import ChatRequest, Finish, GenerationParams, Message, TextDelta, ToolCallDelta, Usage
from modelgate.errors import UpstreamBadRequest, UpstreamError, UpstreamProtocolError
from modelgate.providers import PROVIDERS, Connection, new_session
from modelgate.providers._http import Upstream
from modelgate.providers.ollama import Ollama, OllamaStream, read_error
from tests.fakes import Fakes, Fault, Reply
from tests.fakes._base import RecordedRequest, ToolCallScript
from tests.fakes.contract import ThinkTagsContract, catalogue_model, collect, free_port_url

#: What a parser estimates a prompt from, when the counts are unreadable.
REQUEST = ChatRequest(messages=(Message(role="user", content="Hi"),))


class TestOllama(ThinkTagsContract):
    provider = Ollama
    model_id = "ollama/rwkv-6-world"
    # The catalogue: max_new_tokens 500, typical_p -1, repetition_penalty -1, truncate 3596.
    expected_params: ClassVar[dict[str, Any]] = {"num_predict": 500, "num_ctx": 3596}

    def sent_params(self, recorded_json: Any) -> dict[str, Any]:
        return dict(recorded_json.get("options", {}))

    def asked_whole(self, recorded: RecordedRequest) -> bool:
        return recorded.path == "/api/chat" and recorded.json["stream"] is False

    @pytest.mark.anyio
    async def test_a_whole_reply_has_the_thinking_and_tool_calls_a_stream_has(self, fakes: Fakes) -> None:
        model = dataclasses.replace(
            catalogue_model(self.model_id), upstream_model="qwen3:0.6b", capabilities=frozenset({"reasoning"})
        )
        calls = (
            ToolCallScript("get_weather", '{"city": "Bern"}', id="call_a1b2c3d4"),
            ToolCallScript("get_time", "{}", id="call_e5f6g7h8"),
        )
        reply = Reply(reasoning=["hmm", " <ok>"], tokens=["<b>", "&", "</b>"], tool_calls=calls, finish="tool_calls")
        fakes.ollama.script(reply, reply)
        async with new_session() as http:
            provider = self.make(http, fakes.ollama.url)
            whole = await collect(provider.complete(model, self.request()))
            assert fakes.ollama.last.json["stream"] is False and fakes.ollama.last.json["think"] is True
            streamed = await collect(provider.stream(model, self.request()))
        for got in (whole, streamed):
            assert (got.reasoning, got.text) == ("hmm <ok>", "<b>&</b>")
            pieces = [e for e in got.events if isinstance(e, ToolCallDelta)]
            assert [(p.index, p.name, p.arguments) for p in pieces] == [
                (0, "get_weather", '{"city":"Bern"}'),
                (1, "get_time", "{}"),
            ]
            assert [p.id for p in pieces] == ["call_a1b2c3d4", "call_e5f6g7h8"]  # Ollama's ids
            assert got.finish.reason == "tool-calls"  # Ollama says "stop"
            assert got.finish.usage == Usage(11, 5)  # the scripted tokens, reasoning included

    @pytest.mark.anyio
    async def test_wrong_credentials_are_an_auth_error(self, fakes: Fakes) -> None:
        # A local Ollama has no credentials: nothing to refuse, and no Authorization header is sent.
        got = await self.run(fakes)
        assert got.text == "Hello, world!"
        assert "authorization" not in fakes.ollama.last.headers

    @pytest.mark.anyio
    async def test_request_shape(self, fakes: Fakes) -> None:
        await self.run(fakes)
        sent = fakes.ollama.last
        assert (sent.method, sent.path) == ("POST", "/api/chat")
        assert sent.json["model"] == "mollysama/rwkv-6-world:1.6b"
        assert sent.json["stream"] is True
        assert sent.json["messages"][0] == {"role": "system", "content": "You are terse."}
        assert [m["role"] for m in sent.json["messages"]] == ["system", "user", "assistant", "user"]
        # -1 in the catalogue means "leave it to the provider": the fields are absent, not -1.
        assert "typical_p" not in sent.json["options"] and "repeat_penalty" not in sent.json["options"]

    @pytest.mark.anyio
    async def test_every_parameter_maps_to_ollama_names(self, fakes: Fakes) -> None:
        params = GenerationParams(
            max_new_tokens=64,
            temperature=0.5,
            typical_p=0.2,
            repetition_penalty=1.1,
            truncate=2048,
            top_p=0.9,
            stop=("\n\n",),
            seed=42,
            presence_penalty=0.5,
            frequency_penalty=0.25,
        )
        async with new_session() as http:
            provider = self.make(http, fakes.ollama.url)
            got = await collect(provider.stream(catalogue_model(self.model_id), self.request(params)))
            assert provider.dropped_params(params) == []
        assert got.finish.reason == "stop"
        assert fakes.ollama.last.json["options"] == {
            "num_predict": 64,
            "temperature": 0.5,
            "typical_p": 0.2,
            "repeat_penalty": 1.1,
            "num_ctx": 2048,
            "top_p": 0.9,
            "stop": ["\n\n"],
            "seed": 42,
            "presence_penalty": 0.5,
            "frequency_penalty": 0.25,
        }

    @pytest.mark.anyio
    async def test_no_parameters_no_options(self, fakes: Fakes) -> None:
        async with new_session() as http:
            provider = self.make(http, fakes.ollama.url)
            await collect(provider.stream(catalogue_model(self.model_id), self.request(GenerationParams())))
        assert "options" not in fakes.ollama.last.json

    @pytest.mark.anyio
    async def test_a_reasoning_model_is_asked_to_think_and_its_thinking_is_reasoning(self, fakes: Fakes) -> None:
        model = dataclasses.replace(
            catalogue_model(self.model_id), upstream_model="qwen3:0.6b", capabilities=frozenset({"reasoning"})
        )
        fakes.ollama.script(Reply(reasoning=["hmm", " <ok>"], tokens=["<b>", "&", "</b>"]))
        async with new_session() as http:
            got = await collect(self.make(http, fakes.ollama.url).stream(model, self.request()))
        assert fakes.ollama.last.json["think"] is True
        assert got.reasoning == "hmm <ok>"
        assert got.text == "<b>&</b>"  # Go's \u003c escapes read right

    @pytest.mark.anyio
    async def test_other_models_never_get_think(self, fakes: Fakes) -> None:
        # Real Ollama refuses think for a model that cannot (400 "... does not support thinking").
        got = await self.run(fakes, Reply(reasoning=["hmm"], tokens=["ok"]))
        assert "think" not in fakes.ollama.last.json
        assert got.error is None and got.text == "ok" and got.reasoning == ""

    @pytest.mark.anyio
    async def test_think_for_a_model_that_cannot_is_refused_with_ollamas_message(self, fakes: Fakes) -> None:
        model = dataclasses.replace(catalogue_model(self.model_id), capabilities=frozenset({"reasoning"}))
        async with new_session() as http:
            got = await collect(self.make(http, fakes.ollama.url).stream(model, self.request()))
        assert isinstance(got.error, UpstreamBadRequest)
        assert "does not support thinking" in got.error.message

    @pytest.mark.anyio
    async def test_missing_counts_are_zero(self, fakes: Fakes) -> None:
        got = await self.run(fakes, Reply(tokens=["x"], usage=None))
        assert got.finish.usage == Usage(0, 0)
        got = await self.run(fakes, Reply(tokens=["x"], usage=(0, 1)))  # prompt served from the KV cache
        assert got.finish.usage == Usage(0, 1)

    @pytest.mark.anyio
    async def test_unknown_model_is_not_available_upstream(self, fakes: Fakes) -> None:
        fakes.ollama.models = {"llama3.2:latest"}
        got = await self.run(fakes)
        assert type(got.error) is UpstreamError
        assert "mollysama/rwkv-6-world:1.6b" in got.error.message and "not available upstream" in got.error.message
        assert not got.error.transient

    @pytest.mark.anyio
    async def test_400_is_a_bad_request_with_ollamas_message(self, fakes: Fakes) -> None:
        got = await self.run(fakes, Reply(fault=Fault.status(400, message='"rwkv" does not support chat')))
        assert isinstance(got.error, UpstreamBadRequest)
        assert '"rwkv" does not support chat' in got.error.message

    @pytest.mark.anyio
    async def test_late_error_line_keeps_its_message(self, fakes: Fakes) -> None:
        got = await self.run(fakes, Reply(tokens=["a", "b"], fault=Fault.error_after(1, message="runner died")))
        assert got.text == "a"
        assert isinstance(got.error, UpstreamError) and "runner died" in got.error.message

    @pytest.mark.anyio
    async def test_probe_lists_pulled_models(self, fakes: Fakes) -> None:
        fakes.ollama.models = {"mollysama/rwkv-6-world:1.6b", "llama3.2:latest"}
        async with new_session() as http:
            result = await self.make(http, fakes.ollama.url).probe([catalogue_model(self.model_id)])
            down = await self.make(http, free_port_url()).probe([catalogue_model(self.model_id)])
        assert result is not None and result.reachable
        assert result.available_models is not None
        assert {"mollysama/rwkv-6-world:1.6b", "llama3.2", "llama3.2:latest"} <= result.available_models
        assert result.context_lengths == {}  # the tags state no context window
        assert fakes.ollama.listings[-1].path == "/api/tags"
        assert down is not None and not down.reachable and "unreachable" in (down.detail or "")


def test_registered() -> None:
    assert PROVIDERS["ollama"] is Ollama


@pytest.mark.anyio
async def test_a_last_line_without_done_delivers_its_text_then_fails_as_truncated() -> None:
    async with new_session() as http:
        parser = OllamaStream(Upstream("ollama", Connection("http://127.0.0.1:9"), http, read_error), REQUEST)
        assert parser.feed(b'{"message":{"role":"assistant","content":"a"},"done":false}\n') == [TextDelta("a")]
        assert parser.feed(b'{"message":{"role":"assistant","content":"b"},"done":false}') == []
        assert parser.end() == [TextDelta("b")]
    assert isinstance(parser.failure, UpstreamProtocolError) and "truncated" in parser.failure.message


def test_a_tool_call_without_an_id_gets_one_of_ours() -> None:
    """Ollama versions before server/routes.go ``toolCallId`` send no id: the call still needs one to be answered."""
    parser = OllamaStream(Upstream("ollama", Connection("http://127.0.0.1:9"), None, read_error), REQUEST)  # type: ignore[arg-type]
    line = b'{"message":{"tool_calls":[{"function":{"name":"f","arguments":{}}}]},"done":false}\n'
    [call] = parser.feed(line)
    assert isinstance(call, ToolCallDelta) and call.id is not None and call.id.startswith("call_")
    assert (call.name, call.arguments) == ("f", "{}")


@pytest.mark.parametrize(
    "line",
    [
        b'{"message":{"content":true},"done":false}\n',
        b'{"message":{"thinking":["x"]},"done":false}\n',
        b'{"message":{"tool_calls":[{"function":{"name":5,"arguments":{}}}]},"done":false}\n',
    ],
)
def test_a_field_of_the_wrong_type_is_a_protocol_error_not_a_bad_event(line: bytes) -> None:
    parser = OllamaStream(Upstream("ollama", Connection("http://127.0.0.1:9"), None, read_error), REQUEST)  # type: ignore[arg-type]
    assert parser.feed(line) == []
    assert isinstance(parser.failure, UpstreamProtocolError)
    assert "unreadable NDJSON line" in parser.failure.message


@pytest.mark.parametrize(
    "counts",
    [
        '"prompt_eval_count":null',
        '"eval_count":true',
        '"prompt_eval_count":-1000000000,"eval_count":-3',
        '"prompt_eval_count":1180591620717411303424',
    ],
)
def test_counts_that_are_not_token_counts_are_estimated_not_trusted(counts: str) -> None:
    """A finished reply whose counts cannot be token counts is delivered, counted by us and marked so (negative
    counts refunded budgets; a 71-bit one broke the access line, the budget counters and the ledger)."""
    parser = OllamaStream(Upstream("ollama", Connection("http://127.0.0.1:9"), None, read_error), REQUEST)  # type: ignore[arg-type]
    line = '{"message":{"content":"Hello there"},"done":true,' + counts + "}\n"
    text, finish = parser.feed(line.encode())
    assert text == TextDelta("Hello there") and parser.failure is None
    assert isinstance(finish, Finish) and finish.usage.estimated
    assert finish.usage.completion_tokens == 3 and 0 < finish.usage.prompt_tokens < 100
