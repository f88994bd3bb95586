"""AI SDK output encoders: golden bytes per protocol, the ending of every stream, protocol choice."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from typing import get_args

import orjson
import pytest

from modelgate.chat import Finish, FinishReason, ReasoningDelta, StreamEvent, TextDelta, Usage
from modelgate.encoders import DEFAULT_PROTOCOL, ENCODERS, choose_protocol
from modelgate.encoders import data as data_stream
from modelgate.encoders import text as text_stream
from modelgate.encoders import ui as ui_stream
from modelgate.errors import BadRequest, UpstreamUnavailable

USAGE = Usage(prompt_tokens=31, completion_tokens=4)
OVERLOADED = UpstreamUnavailable("huggingface", "Model is overloaded")


class Source:
    """An event source like the gateway's: yields ``events`` in batches of ``batch`` (one upstream read
    each), then raises ``error`` if given; records closing."""

    def __init__(self, events: Sequence[StreamEvent], error: BaseException | None = None, batch: int = 1) -> None:
        self.events = events
        self.error = error
        self.batch = batch
        self.closed = False

    async def __call__(self) -> AsyncIterator[Sequence[StreamEvent]]:
        try:
            for start in range(0, len(self.events), self.batch):
                yield self.events[start : start + self.batch]
            if self.error is not None:
                raise self.error
        finally:
            self.closed = True


def encode_chunks(
    protocol: str, events: Sequence[StreamEvent], error: BaseException | None = None, *, batch: int = 1
) -> list[bytes]:
    source = Source(events, error, batch)

    async def collect() -> list[bytes]:
        chunks = [chunk async for chunk in ENCODERS[protocol].encode(source(), message_id="msg-1")]
        # Checked inside the loop: at asyncio.run's end, shutdown_asyncgens would close it for us anyway.
        assert source.closed, "the encoder must close its event source"
        return chunks

    return asyncio.run(collect())


def encode(protocol: str, events: Sequence[StreamEvent], error: BaseException | None = None) -> bytes:
    return b"".join(encode_chunks(protocol, events, error))


REPLY = [TextDelta("It"), TextDelta(" is"), TextDelta(" 4"), Finish("stop", USAGE)]
THINKING = [ReasoningDelta("2+2"), ReasoningDelta(" is 4."), TextDelta("4"), Finish("stop", USAGE)]


# --- data stream protocol v1 -------------------------------------------------------------------------


def test_data_constants_are_the_protocols() -> None:
    encoder = ENCODERS["data"]
    assert encoder.media_type == data_stream.MEDIA_TYPE == "text/plain; charset=utf-8"
    assert dict(encoder.headers) == {"X-Vercel-AI-Data-Stream": "v1"}


def test_data_normal_reply() -> None:
    assert encode("data", REPLY) == (
        b'f:{"messageId":"msg-1"}\n'
        b'0:"It"\n'
        b'0:" is"\n'
        b'0:" 4"\n'
        b'e:{"finishReason":"stop","usage":{"promptTokens":31,"completionTokens":4},"isContinued":false}\n'
        b'd:{"finishReason":"stop","usage":{"promptTokens":31,"completionTokens":4}}\n'
    )


def test_data_reply_with_reasoning() -> None:
    assert encode("data", THINKING) == (
        b'f:{"messageId":"msg-1"}\n'
        b'g:"2+2"\n'
        b'g:" is 4."\n'
        b'0:"4"\n'
        b'e:{"finishReason":"stop","usage":{"promptTokens":31,"completionTokens":4},"isContinued":false}\n'
        b'd:{"finishReason":"stop","usage":{"promptTokens":31,"completionTokens":4}}\n'
    )


def test_data_error_mid_stream_after_text() -> None:
    assert encode("data", REPLY[:2], OVERLOADED) == (
        b'f:{"messageId":"msg-1"}\n0:"It"\n0:" is"\n3:"Upstream provider error (huggingface): Model is overloaded"\n'
    )


def test_data_error_before_any_text() -> None:
    assert encode("data", [], OVERLOADED) == (
        b'f:{"messageId":"msg-1"}\n3:"Upstream provider error (huggingface): Model is overloaded"\n'
    )


def test_data_estimated_usage_is_an_annotation_before_the_finish() -> None:
    body = encode("data", [TextDelta("Hi"), Finish("length", Usage(12, 1, estimated=True))])
    assert body == (
        b'f:{"messageId":"msg-1"}\n'
        b'0:"Hi"\n'
        b'8:[{"usageEstimated":true}]\n'
        b'e:{"finishReason":"length","usage":{"promptTokens":12,"completionTokens":1},"isContinued":false}\n'
        b'd:{"finishReason":"length","usage":{"promptTokens":12,"completionTokens":1}}\n'
    )


def test_data_unknown_usage_is_left_out() -> None:
    body = encode("data", [TextDelta("Hi"), Finish("stop")])
    assert body.endswith(b'e:{"finishReason":"stop","isContinued":false}\nd:{"finishReason":"stop"}\n')


@pytest.mark.parametrize("reason", get_args(FinishReason))
def test_data_finish_reasons_are_the_sdks_hyphenated_values(reason: FinishReason) -> None:
    lines = encode("data", [Finish(reason, USAGE)]).splitlines()
    assert orjson.loads(lines[-2][2:])["finishReason"] == reason
    assert orjson.loads(lines[-1][2:])["finishReason"] == reason
    assert reason in {"stop", "length", "content-filter", "tool-calls", "error", "other", "unknown"}


def test_data_every_part_is_one_line_whatever_the_text() -> None:
    tricky = 'line1\nline2\r\n"quoted" \\ tab\t \u2028 ünï 🙂 </script>'
    body = encode("data", [TextDelta(tricky), ReasoningDelta(tricky), Finish("stop", USAGE)])
    lines = body.split(b"\n")
    assert lines[-1] == b""  # every part ends with \n, the body ends on a part boundary
    assert b"\r" not in body
    assert orjson.loads(lines[1][2:]) == tricky
    assert orjson.loads(lines[2][2:]) == tricky
    assert len(lines) == 6


def test_data_empty_deltas_send_nothing() -> None:
    assert encode("data", [TextDelta(""), ReasoningDelta(""), Finish("stop")]) == (
        b'f:{"messageId":"msg-1"}\ne:{"finishReason":"stop","isContinued":false}\nd:{"finishReason":"stop"}\n'
    )


# --- plain text -----------------------------------------------------------------------------------------


def test_text_constants() -> None:
    assert ENCODERS["text"].media_type == text_stream.MEDIA_TYPE == "text/plain; charset=utf-8"
    assert dict(ENCODERS["text"].headers) == {}


def test_text_normal_reply_is_the_raw_text() -> None:
    assert encode("text", REPLY) == b"It is 4"


def test_text_leaves_reasoning_out() -> None:
    assert encode("text", THINKING) == b"4"


def test_text_error_mid_stream_is_a_visible_line() -> None:
    assert encode("text", REPLY[:2], OVERLOADED) == (
        b"It is\n[error: Upstream provider error (huggingface): Model is overloaded]"
    )


def test_text_error_before_any_text() -> None:
    assert encode("text", [], OVERLOADED) == b"\n[error: Upstream provider error (huggingface): Model is overloaded]"


def test_text_a_reply_the_provider_ended_with_an_error_says_so() -> None:
    # OpenRouter's finish_reason "error": the data and UI streams say it in their finish part; text has only text.
    assert encode("text", [TextDelta("It is"), Finish("error")]) == (
        b"It is\n[error: the provider ended the reply with an error]"
    )


def test_text_is_utf8() -> None:
    assert encode("text", [TextDelta("ünï 🙂"), Finish("stop")]) == "ünï 🙂".encode()


# --- UI message stream v1 -------------------------------------------------------------------------------


def test_ui_constants_are_the_protocols() -> None:
    encoder = ENCODERS["ui"]
    assert encoder.media_type == ui_stream.MEDIA_TYPE == "text/event-stream"
    assert dict(encoder.headers) == {"x-vercel-ai-ui-message-stream": "v1"}


def test_ui_normal_reply() -> None:
    assert encode("ui", REPLY) == (
        b'data: {"type":"start","messageId":"msg-1"}\n\n'
        b'data: {"type":"start-step"}\n\n'
        b'data: {"type":"text-start","id":"text-1"}\n\n'
        b'data: {"type":"text-delta","id":"text-1","delta":"It"}\n\n'
        b'data: {"type":"text-delta","id":"text-1","delta":" is"}\n\n'
        b'data: {"type":"text-delta","id":"text-1","delta":" 4"}\n\n'
        b'data: {"type":"text-end","id":"text-1"}\n\n'
        b'data: {"type":"finish-step"}\n\n'
        b'data: {"type":"finish","finishReason":"stop","messageMetadata":{"finishReason":"stop",'
        b'"usage":{"inputTokens":31,"outputTokens":4,"totalTokens":35}}}\n\n'
        b"data: [DONE]\n\n"
    )


def test_ui_reply_with_reasoning() -> None:
    assert encode("ui", THINKING) == (
        b'data: {"type":"start","messageId":"msg-1"}\n\n'
        b'data: {"type":"start-step"}\n\n'
        b'data: {"type":"reasoning-start","id":"reasoning-1"}\n\n'
        b'data: {"type":"reasoning-delta","id":"reasoning-1","delta":"2+2"}\n\n'
        b'data: {"type":"reasoning-delta","id":"reasoning-1","delta":" is 4."}\n\n'
        b'data: {"type":"reasoning-end","id":"reasoning-1"}\n\n'
        b'data: {"type":"text-start","id":"text-2"}\n\n'
        b'data: {"type":"text-delta","id":"text-2","delta":"4"}\n\n'
        b'data: {"type":"text-end","id":"text-2"}\n\n'
        b'data: {"type":"finish-step"}\n\n'
        b'data: {"type":"finish","finishReason":"stop","messageMetadata":{"finishReason":"stop",'
        b'"usage":{"inputTokens":31,"outputTokens":4,"totalTokens":35}}}\n\n'
        b"data: [DONE]\n\n"
    )


def test_ui_error_mid_stream_after_text() -> None:
    assert encode("ui", REPLY[:1], OVERLOADED) == (
        b'data: {"type":"start","messageId":"msg-1"}\n\n'
        b'data: {"type":"start-step"}\n\n'
        b'data: {"type":"text-start","id":"text-1"}\n\n'
        b'data: {"type":"text-delta","id":"text-1","delta":"It"}\n\n'
        b'data: {"type":"error","errorText":"Upstream provider error (huggingface): Model is overloaded"}\n\n'
        b"data: [DONE]\n\n"
    )


def test_ui_error_before_any_text() -> None:
    assert encode("ui", [], OVERLOADED) == (
        b'data: {"type":"start","messageId":"msg-1"}\n\n'
        b'data: {"type":"start-step"}\n\n'
        b'data: {"type":"error","errorText":"Upstream provider error (huggingface): Model is overloaded"}\n\n'
        b"data: [DONE]\n\n"
    )


def test_ui_estimated_usage_and_finish_reason_travel_as_message_metadata() -> None:
    body = encode("ui", [TextDelta("Hi"), Finish("length", Usage(12, 1, estimated=True))])
    finish = orjson.loads(body.split(b"\n\n")[-3].removeprefix(b"data: "))
    assert finish == {
        "type": "finish",
        "finishReason": "length",
        "messageMetadata": {
            "finishReason": "length",
            "usage": {"inputTokens": 12, "outputTokens": 1, "totalTokens": 13},
            "usageEstimated": True,
        },
    }


def test_ui_reported_reasoning_and_cached_tokens_are_in_the_usage_metadata() -> None:
    usage = Usage(12, 5, reasoning_tokens=3, cached_tokens=8)
    body = encode("ui", [ReasoningDelta("hm"), TextDelta("Hi"), Finish("stop", usage)])
    finish = orjson.loads(body.split(b"\n\n")[-3].removeprefix(b"data: "))
    assert finish["messageMetadata"]["usage"] == {
        "inputTokens": 12,
        "outputTokens": 5,
        "totalTokens": 17,
        "reasoningTokens": 3,
        "cachedInputTokens": 8,
    }


def test_ui_unknown_usage_is_left_out() -> None:
    body = encode("ui", [Finish("content-filter")])
    assert body.endswith(
        b'data: {"type":"finish-step"}\n\n'
        b'data: {"type":"finish","finishReason":"content-filter",'
        b'"messageMetadata":{"finishReason":"content-filter"}}\n\n'
        b"data: [DONE]\n\n"
    )


def test_ui_unknown_finish_reason_is_other_on_the_chunk_and_itself_in_the_metadata() -> None:
    finish = orjson.loads(encode("ui", [Finish("unknown")]).split(b"\n\n")[-3].removeprefix(b"data: "))
    assert finish == {"type": "finish", "finishReason": "other", "messageMetadata": {"finishReason": "unknown"}}


def test_ui_strict_sends_only_what_ai_5_0_0_allows() -> None:
    """``ui-strict`` is ``ui`` less the top-level ``finishReason`` (unknown to ai 5.0.0 to 5.0.91's strict schemas)."""
    strict, loose = encode("ui-strict", REPLY), encode("ui", REPLY)
    assert strict == loose.replace(b'"type":"finish","finishReason":"stop",', b'"type":"finish",')
    assert strict != loose
    assert ENCODERS["ui-strict"].headers == ENCODERS["ui"].headers


def test_ui_alternating_reasoning_and_text_opens_a_new_part_each_time() -> None:
    body = encode(
        "ui", [ReasoningDelta("a"), TextDelta("b"), ReasoningDelta("c"), TextDelta(""), TextDelta("d"), Finish("stop")]
    )
    chunks = [orjson.loads(c.removeprefix(b"data: ")) for c in body.split(b"\n\n")[:-2]]
    assert [(c["type"], c.get("id")) for c in chunks] == [
        ("start", None),
        ("start-step", None),
        ("reasoning-start", "reasoning-1"),
        ("reasoning-delta", "reasoning-1"),
        ("reasoning-end", "reasoning-1"),
        ("text-start", "text-2"),
        ("text-delta", "text-2"),
        ("text-end", "text-2"),
        ("reasoning-start", "reasoning-3"),
        ("reasoning-delta", "reasoning-3"),
        ("reasoning-end", "reasoning-3"),
        ("text-start", "text-4"),
        ("text-delta", "text-4"),
        ("text-end", "text-4"),
        ("finish-step", None),
        ("finish", None),
    ]


def test_ui_every_chunk_is_one_event_whatever_the_text() -> None:
    tricky = 'a\n\nb\r\n"c" \u2028 🙂'
    body = encode("ui", [TextDelta(tricky), Finish("stop")])
    events = body.split(b"\n\n")
    assert all(e.startswith(b"data: ") and b"\n" not in e and b"\r" not in e for e in events[:-1])
    assert orjson.loads(events[3].removeprefix(b"data: "))["delta"] == tricky


# --- every protocol: how streams end -------------------------------------------------------------------


@pytest.mark.parametrize("protocol", sorted(ENCODERS))
def test_a_foreign_exception_is_a_generic_error_and_its_text_never_leaks(
    protocol: str, caplog: pytest.LogCaptureFixture
) -> None:
    secret = RuntimeError("connect to https://user:hunter2@example.invalid failed")
    with caplog.at_level(logging.WARNING, logger="modelgate.encoders"):
        body = encode(protocol, [TextDelta("It")], secret)
    assert b"Internal Server Error" in body
    assert b"hunter2" not in body
    assert "hunter2" not in caplog.text
    assert "RuntimeError" in caplog.text


@pytest.mark.parametrize("protocol", sorted(ENCODERS))
def test_events_ending_without_a_finish_end_the_stream_with_an_error(protocol: str) -> None:
    body = encode(protocol, [TextDelta("It")])
    assert b"The reply ended before it finished" in body


@pytest.mark.parametrize("protocol", sorted(ENCODERS))
def test_events_after_the_finish_are_not_sent(protocol: str) -> None:
    assert encode(protocol, [TextDelta("It"), Finish("stop"), TextDelta("late")]).count(b"late") == 0


@pytest.mark.parametrize("protocol", sorted(ENCODERS))
def test_closing_the_encoder_closes_the_event_source(protocol: str) -> None:
    """A client that goes away closes the response body iterator; the upstream must be closed with it."""
    source = Source([TextDelta("a"), TextDelta("b"), TextDelta("c"), Finish("stop")])

    async def read_one_then_leave() -> None:
        body = ENCODERS[protocol].encode(source(), message_id="msg-1")
        await anext(body)
        await anext(body)
        assert not source.closed
        await body.aclose()  # type: ignore[attr-defined]
        assert source.closed

    asyncio.run(read_one_then_leave())


# --- protocol choice ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "accept", "expected"),
    [
        (None, None, "data"),
        (None, "*/*", "data"),
        (None, "text/plain", "data"),
        (None, "text/event-stream", "ui"),
        (None, "application/json, Text/Event-Stream;q=0.9", "ui"),
        (None, "text/event-stream;q=0", "data"),
        ("text", "text/event-stream", "text"),
        ("data", "text/event-stream", "data"),
        ("ui", None, "ui"),
        ("ui-strict", None, "ui-strict"),
    ],
)
def test_choose_protocol(query: str | None, accept: str | None, expected: str) -> None:
    assert choose_protocol(query, accept) == expected


@pytest.mark.parametrize(
    ("query", "accept", "expected"),
    [
        (None, None, "ui"),  # an AI SDK 5 body, nothing asked: the stream AI SDK 5 reads
        (None, "*/*", "ui"),  # what fetch sends by default
        ("data", None, "data"),  # ?protocol= still wins
        ("text", "text/event-stream", "text"),
        (None, "text/event-stream;q=0", "data"),  # an Accept that refuses the event stream still decides
    ],
)
def test_an_ai_sdk_5_body_gets_the_ui_stream_unless_asked_otherwise(
    query: str | None, accept: str | None, expected: str
) -> None:
    assert choose_protocol(query, accept, ai_sdk_5_body=True) == expected


def test_default_protocol_is_the_data_stream() -> None:
    assert DEFAULT_PROTOCOL == "data"
    assert set(ENCODERS) == {"data", "text", "ui", "ui-strict"}


@pytest.mark.parametrize("bad", ["sse", "", "DATA"])
def test_an_unknown_protocol_is_a_bad_request(bad: str) -> None:
    with pytest.raises(BadRequest) as caught:
        choose_protocol(bad, None)
    assert caught.value.status == 400
    assert caught.value.data == {"field": "protocol", "allowed": ["data", "text", "ui", "ui-strict"]}


# --- batches: one chunk per upstream read -------------------------------------------------------------


@pytest.mark.parametrize("protocol", sorted(ENCODERS))
@pytest.mark.parametrize("events", [REPLY, THINKING], ids=["reply", "thinking"])
def test_a_batch_is_one_chunk_with_the_same_bytes(protocol: str, events: list[StreamEvent]) -> None:
    one_by_one = encode_chunks(protocol, events)
    together = encode_chunks(protocol, events, batch=len(events))
    assert b"".join(together) == b"".join(one_by_one)
    assert len(together) == 1, "a whole reply in one upstream read goes out as one write"
    if protocol != "text":  # (text sends nothing for reasoning and the finish)
        # The opening part travels with the first batch instead of costing a write of its own.
        assert len(one_by_one) == len(events)


@pytest.mark.parametrize("protocol", sorted(ENCODERS))
def test_a_failure_after_a_batch_keeps_the_batch(protocol: str) -> None:
    events = [TextDelta("It"), TextDelta(" is")]
    assert b"".join(encode_chunks(protocol, events, OVERLOADED, batch=2)) == encode(protocol, events, OVERLOADED)
