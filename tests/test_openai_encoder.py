"""Golden bytes of the OpenAI chunk encoder and the non-streamed completion (providers.md 5.3, 5.4)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import orjson
import pytest

from modelgate.chat import Finish, ReasoningDelta, StreamEvent, TextDelta, Usage
from modelgate.encoders.openai import ChunkEncoder, collect_completion
from modelgate.errors import ModelgateError, UpstreamError, UpstreamTimeout
from tests.servers import run

HEAD = (
    b'{"id":"chatcmpl-9f1c2a","object":"chat.completion.chunk","created":1740000000,'
    b'"model":"qwen/Qwen2.5-72B-Instruct","system_fingerprint":null,'
)


class Recorder:
    """An event source that records whether the consumer closed it (closing = upstream released)."""

    def __init__(self, events: Sequence[StreamEvent], error: Exception | None = None) -> None:
        self.events = events
        self.error = error
        self.closed = False

    async def _gen(self) -> AsyncIterator[Sequence[StreamEvent]]:
        try:
            for event in self.events:
                yield [event]  # one upstream read per event
            if self.error is not None:
                raise self.error
        finally:
            self.closed = True

    def __call__(self) -> AsyncIterator[Sequence[StreamEvent]]:
        return self._gen()


def encode(events: AsyncIterator[Sequence[StreamEvent]], *, include_usage: bool) -> bytes:
    encoder = ChunkEncoder(
        completion_id="chatcmpl-9f1c2a",
        created=1740000000,
        model="qwen/Qwen2.5-72B-Instruct",
        include_usage=include_usage,
    )

    async def drain() -> bytes:
        return b"".join([chunk async for chunk in encoder.encode(events)])

    result: bytes = run(drain())
    return result


def test_stream_with_usage_is_the_reference_exchange_byte_for_byte() -> None:
    source = Recorder([TextDelta("It"), TextDelta(" is"), TextDelta(" 4"), Finish("stop", Usage(31, 4))])
    body = encode(source(), include_usage=True)
    expected = b"".join(
        [
            b"data: " + HEAD + b'"choices":[{"index":0,"delta":{"role":"assistant","content":""},'
            b'"logprobs":null,"finish_reason":null}],"usage":null}\n\n',
            b"data: " + HEAD + b'"choices":[{"index":0,"delta":{"content":"It"},"logprobs":null,'
            b'"finish_reason":null}],"usage":null}\n\n',
            b"data: " + HEAD + b'"choices":[{"index":0,"delta":{"content":" is"},"logprobs":null,'
            b'"finish_reason":null}],"usage":null}\n\n',
            b"data: " + HEAD + b'"choices":[{"index":0,"delta":{"content":" 4"},"logprobs":null,'
            b'"finish_reason":null}],"usage":null}\n\n',
            b"data: " + HEAD + b'"choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}],'
            b'"usage":null}\n\n',
            b"data: "
            + HEAD
            + b'"choices":[],"usage":{"prompt_tokens":31,"completion_tokens":4,"total_tokens":35}}\n\n',
            b"data: [DONE]\n\n",
        ]
    )
    assert body == expected
    assert source.closed


def test_stream_without_usage_omits_usage_everywhere() -> None:
    body = encode(Recorder([TextDelta("hi"), Finish("length", Usage(3, 1))])(), include_usage=False)
    events = body.split(b"\n\n")
    assert events[-2:] == [b"data: [DONE]", b""]
    chunks = [orjson.loads(e.removeprefix(b"data: ")) for e in events[:-2]]
    assert all("usage" not in c for c in chunks)
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, "length"]
    assert chunks[1]["choices"][0]["delta"] == {"content": "hi"}


def test_tricky_text_round_trips_through_json() -> None:
    text = 'quote " backslash \\ newline \n unicode é 😀 </script> \u2028'
    body = encode(Recorder([TextDelta(text), Finish("stop")])(), include_usage=False)
    second = body.split(b"\n\n")[1]
    assert orjson.loads(second.removeprefix(b"data: "))["choices"][0]["delta"]["content"] == text


def test_finish_reasons_are_mapped_to_openai_names() -> None:
    for ours, theirs in [("content-filter", "content_filter"), ("tool-calls", "tool_calls"), ("other", "stop")]:
        body = encode(Recorder([Finish(ours)])(), include_usage=False)  # type: ignore[arg-type]
        finish = orjson.loads(body.split(b"\n\n")[1].removeprefix(b"data: "))
        assert finish["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": theirs}


def test_reasoning_goes_to_reasoning_content_never_content() -> None:
    body = encode(Recorder([ReasoningDelta("hmm"), TextDelta("4"), Finish("stop")])(), include_usage=False)
    deltas = [orjson.loads(e.removeprefix(b"data: "))["choices"][0]["delta"] for e in body.split(b"\n\n")[1:3]]
    assert deltas == [{"reasoning_content": "hmm"}, {"content": "4"}]


def test_error_after_start_is_an_error_event_then_done() -> None:
    failing = Recorder([TextDelta("par")], error=UpstreamTimeout("huggingface", "no token for 60 s"))
    body = encode(failing(), include_usage=True)
    events = body.split(b"\n\n")
    assert events[-3] == (
        b'data: {"error":{"message":"Upstream provider error (huggingface): no token for 60 s",'
        b'"type":"server_error","param":null,"code":null}}'
    )
    assert events[-2:] == [b"data: [DONE]", b""]
    assert b'finish_reason":"stop' not in body
    assert failing.closed


def test_a_stream_that_ends_without_finish_is_an_error_not_a_silent_end() -> None:
    body = encode(Recorder([TextDelta("par")])(), include_usage=False)
    assert b'"error":{"message":"the reply ended before it finished"' in body
    assert body.endswith(b"data: [DONE]\n\n")


def test_finish_with_error_reason_is_an_error_event() -> None:
    body = encode(Recorder([TextDelta("a"), Finish("error")])(), include_usage=False)
    assert b'"error":{"message":"the provider ended the reply with an error"' in body
    assert b'finish_reason":"error' not in body


def test_an_unexpected_exception_is_a_generic_error_event(caplog: pytest.LogCaptureFixture) -> None:
    body = encode(Recorder([], error=RuntimeError("secret detail"))(), include_usage=False)
    assert b'"message":"Internal Server Error"' in body
    assert b"secret detail" not in body
    assert body.endswith(b"data: [DONE]\n\n")
    assert "unexpected error while streaming a chat completion: RuntimeError" in caplog.text
    assert "secret detail" not in caplog.text


def test_collect_completion_builds_the_reference_object() -> None:
    source = Recorder([ReasoningDelta("think"), TextDelta("It is"), TextDelta(" 4."), Finish("stop", Usage(31, 4))])
    completion = run(
        collect_completion(
            source(), completion_id="chatcmpl-9f1c2a", created=1740000000, model="m/x", provider="huggingface"
        )
    )
    assert completion == {
        "id": "chatcmpl-9f1c2a",
        "object": "chat.completion",
        "created": 1740000000,
        "model": "m/x",
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "It is 4.", "refusal": None, "reasoning_content": "think"},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 31, "completion_tokens": 4, "total_tokens": 35},
    }
    assert source.closed


@pytest.mark.parametrize(
    ("events", "error", "message"),
    [
        ([TextDelta("a")], None, "the reply ended before it finished"),
        ([TextDelta("a"), Finish("error")], None, "the provider ended the reply with an error"),
        ([TextDelta("a")], UpstreamTimeout("ollama", "idle"), "idle"),
    ],
)
def test_collect_completion_raises_on_failures(
    events: list[StreamEvent], error: Exception | None, message: str
) -> None:
    with pytest.raises(ModelgateError) as caught:
        run(collect_completion(Recorder(events, error)(), completion_id="c", created=0, model="m", provider="ollama"))
    assert isinstance(caught.value, UpstreamError)
    assert message in caught.value.message
