"""``encoders.responses``: every frame validated against the ``openai`` SDK's own pydantic types (the truth for
each field), the event order, the sequence numbers, and how each kind of ending is reported."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any, get_args

import orjson
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import BaseModel

from modelgate.chat import (
    Finish,
    FinishReason,
    ReasoningDelta,
    RefusalDelta,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    Usage,
)
from modelgate.encoders.responses import ResponseHead, ResponseStreamEncoder, collect_response
from modelgate.errors import ModelgateError, UpstreamError, UpstreamRateLimited, UpstreamUnavailable
from modelgate.sse import SSEDecoder

#: Each stream event's SDK class by its ``type`` (the SDK's union is discriminated by its own machinery, not
#: pydantic's: validating against the union would list every member's complaint).
EVENT_TYPES: dict[str, type[BaseModel]] = {
    member.model_fields["type"].annotation.__args__[0]: member  # type: ignore[union-attr]
    for member in get_args(get_args(ResponseStreamEvent)[0])
}
HEAD = ResponseHead(response_id="resp_1", created_at=1_700_000_000, model="acme/tiny", instructions="Be terse.")
USAGE = Usage(prompt_tokens=7, completion_tokens=3)


def _clock() -> float:
    return 1_700_000_001.5


async def _batches(
    events: Sequence[StreamEvent], error: Exception | None = None
) -> AsyncIterator[Sequence[StreamEvent]]:
    for event in events:
        yield [event]
    if error is not None:
        raise error


def _stream(
    events: Sequence[StreamEvent], error: Exception | None = None, *, unvalidated: tuple[str, ...] = ()
) -> list[dict[str, Any]]:
    """The encoder's SSE body, decoded; each event (but the ``unvalidated`` types) checked against its SDK type."""

    async def main() -> bytes:
        encoder = ResponseStreamEncoder(HEAD, provider="ollama", clock=_clock)
        return b"".join([chunk async for chunk in encoder.encode(_batches(events, error))])

    body = asyncio.run(main())
    decoded = []
    decoder = SSEDecoder()
    for sse in decoder.feed(body) + decoder.flush():
        payload = orjson.loads(sse.data)
        assert sse.event == payload["type"]  # the `event:` line names the type, as OpenAI sends it
        if payload["type"] not in unvalidated:
            EVENT_TYPES[payload["type"]].model_validate(payload)  # the SDK's types: a wrong or missing field fails
        decoded.append(payload)
    assert [e["sequence_number"] for e in decoded] == list(range(len(decoded)))
    assert b"[DONE]" not in body
    return decoded


def _types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


TEXT_EVENTS = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


def test_a_text_reply_is_the_documented_event_sequence() -> None:
    events = _stream([TextDelta("Hel"), TextDelta("lo"), Finish("stop", USAGE)])
    assert _types(events) == TEXT_EVENTS
    created, in_progress, added, part_added, d1, d2, text_done, part_done, item_done, completed = events
    assert created["response"]["status"] == in_progress["response"]["status"] == "in_progress"
    assert created["response"]["output"] == [] and created["response"]["usage"] is None
    item_id = added["item"]["id"]
    assert item_id.startswith("msg_") and added["item"]["status"] == "in_progress" and added["item"]["content"] == []
    assert all(e["item_id"] == item_id and e["output_index"] == 0 for e in (part_added, d1, d2, text_done, part_done))
    assert part_added["part"] == {"type": "output_text", "annotations": [], "logprobs": [], "text": ""}
    assert [d1["delta"], d2["delta"]] == ["Hel", "lo"]
    assert text_done["text"] == part_done["part"]["text"] == "Hello"
    assert item_done["item"]["status"] == "completed"
    response = Response.model_validate(completed["response"])
    assert response.id == "resp_1" and response.status == "completed" and response.output_text == "Hello"
    assert response.instructions == "Be terse."
    assert response.completed_at == 1_700_000_001
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens, response.usage.total_tokens) == (7, 3, 10)
    assert response.usage.output_tokens_details.reasoning_tokens == 0


def test_reasoning_is_its_own_output_item_before_the_message() -> None:
    events = _stream(
        [ReasoningDelta("2+2"), ReasoningDelta(" is 4"), TextDelta("4"), Finish("stop", USAGE)],
        unvalidated=("response.completed",),  # its reasoning count is unknown: null (checked below)
    )
    assert _types(events) == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.reasoning_text.delta",
        "response.reasoning_text.delta",
        "response.reasoning_text.done",
        "response.content_part.done",
        "response.output_item.done",
        *TEXT_EVENTS[2:5],
        *TEXT_EVENTS[6:],
    ]
    reasoning_done = events[8]["item"]
    assert reasoning_done["type"] == "reasoning" and reasoning_done["id"].startswith("rs_")
    assert reasoning_done["content"] == [{"type": "reasoning_text", "text": "2+2 is 4"}]
    assert reasoning_done["summary"] == []  # raw reasoning, not a summary we never made
    assert events[9]["output_index"] == 1
    response = Response.construct(**events[-1]["response"])  # as openai-python reads it (without validation)
    assert [item.type for item in response.output] == ["reasoning", "message"]
    assert response.output_text == "4"
    # Reasoning happened but this provider does not count it apart: unknown (null details), never a made-up 0; not
    # ``{"reasoning_tokens": null}``, which Codex cannot parse (tests/test_responses_codex.py).
    assert response.usage is not None and response.usage.output_tokens_details is None


def test_reasoning_tokens_the_provider_counted_are_reported() -> None:
    usage = Usage(prompt_tokens=7, completion_tokens=5, reasoning_tokens=4)
    events = _stream([ReasoningDelta("hm"), TextDelta("4"), Finish("stop", usage)])
    response = Response.model_validate(events[-1]["response"])  # complete to the SDK's type, the count included
    assert response.usage is not None and response.usage.output_tokens_details.reasoning_tokens == 4


def test_a_reply_without_text_still_has_its_message() -> None:
    events = _stream([Finish("stop", USAGE)])
    assert _types(events) == [*TEXT_EVENTS[:4], *TEXT_EVENTS[6:]]
    assert Response.model_validate(events[-1]["response"]).output_text == ""


def test_a_refusal_is_a_refusal_part_streamed_as_refusal_events() -> None:
    """OpenAI's shape for a refusal (``ResponseOutputRefusal``, ``ResponseRefusalDeltaEvent``/``DoneEvent``): a
    client tells it from an answer, and ``output_text`` (the ``output_text`` parts only) leaves it out."""
    events = _stream([RefusalDelta("I can't"), RefusalDelta(" help."), Finish("stop", USAGE)])
    assert _types(events) == [
        *TEXT_EVENTS[:4],
        "response.refusal.delta",
        "response.refusal.delta",
        "response.refusal.done",
        *TEXT_EVENTS[7:],
    ]
    added, part_added, d1, d2, refusal_done, part_done, item_done = events[2:9]
    item_id = added["item"]["id"]
    where = {"item_id": item_id, "output_index": 0, "content_index": 0}
    for event in (part_added, d1, d2, refusal_done, part_done):
        assert {key: event[key] for key in where} == where
    assert part_added["part"] == {"type": "refusal", "refusal": ""}
    assert [d1["delta"], d2["delta"]] == ["I can't", " help."]
    assert "logprobs" not in d1  # a refusal delta has none (output_text deltas do)
    assert refusal_done["refusal"] == "I can't help."
    assert part_done["part"] == item_done["item"]["content"][0] == {"type": "refusal", "refusal": "I can't help."}
    response = Response.model_validate(events[-1]["response"])
    [message] = response.output
    assert message.type == "message" and message.status == "completed"
    assert [part.model_dump() for part in message.content] == [{"type": "refusal", "refusal": "I can't help."}]
    assert response.output_text == ""  # not an answer


def test_text_and_refusal_are_two_parts_of_one_message_in_order() -> None:
    events = _stream(
        [ReasoningDelta("hm"), TextDelta("Sure"), TextDelta("."), RefusalDelta("No."), Finish("stop", USAGE)],
        unvalidated=("response.completed",),  # its reasoning count is unknown: null
    )
    message_events = [e for e in events if e.get("output_index") == 1]
    assert _types(message_events) == [
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.content_part.added",
        "response.refusal.delta",
        "response.refusal.done",
        "response.content_part.done",
        "response.output_item.done",
    ]
    item_id = message_events[0]["item"]["id"]
    assert {e["item_id"] for e in message_events[1:-1]} == {item_id}
    assert [e["content_index"] for e in message_events[1:-1]] == [0, 0, 0, 0, 0, 1, 1, 1, 1]
    assert message_events[6]["part"] == {"type": "refusal", "refusal": ""}
    content = [
        {"type": "output_text", "annotations": [], "logprobs": [], "text": "Sure."},
        {"type": "refusal", "refusal": "No."},
    ]
    assert message_events[-1]["item"]["content"] == content
    response = Response.construct(**events[-1]["response"])  # as openai-python reads it (without validation)
    assert [item["type"] for item in events[-1]["response"]["output"]] == ["reasoning", "message"]
    assert events[-1]["response"]["output"][1]["content"] == content
    assert response.output_text == "Sure."


def test_collect_builds_the_same_refusal_parts_as_the_stream() -> None:
    events: list[StreamEvent] = [TextDelta("Sure"), RefusalDelta("No"), RefusalDelta("."), Finish("stop", USAGE)]

    def without_ids(response: dict[str, Any]) -> list[dict[str, Any]]:
        return [{key: value for key, value in item.items() if key != "id"} for item in response["output"]]

    collected = asyncio.run(collect_response(_batches(events), HEAD, provider="ollama", clock=_clock))
    streamed = _stream(events)[-1]["response"]
    assert without_ids(collected) == without_ids(streamed)
    response = Response.model_validate(collected)
    assert [part.type for part in response.output[0].content] == ["output_text", "refusal"]  # type: ignore[union-attr]
    assert response.output_text == "Sure"


def test_a_failure_during_a_refusal_keeps_its_part() -> None:
    events = _stream([RefusalDelta("I can")], UpstreamUnavailable("ollama", "overloaded"))
    assert _types(events)[-2:] == ["error", "response.failed"]
    response = Response.model_validate(events[-1]["response"])
    assert response.output[0].status == "incomplete"
    assert [part.model_dump() for part in response.output[0].content] == [  # type: ignore[union-attr]
        {"type": "refusal", "refusal": "I can"}
    ]


@pytest.mark.parametrize(
    ("reason", "incomplete"), [("length", "max_output_tokens"), ("content-filter", "content_filter")]
)
def test_a_cut_reply_is_incomplete_with_its_reason(reason: FinishReason, incomplete: str) -> None:
    events = _stream([TextDelta("a"), Finish(reason, USAGE)])
    assert events[-1]["type"] == "response.incomplete"
    response = Response.model_validate(events[-1]["response"])
    assert response.status == "incomplete"
    assert response.incomplete_details is not None and response.incomplete_details.reason == incomplete
    assert events[-2]["item"]["status"] == "incomplete"


@pytest.mark.parametrize(
    ("error", "code", "kind"),
    [
        (UpstreamUnavailable("ollama", "overloaded"), "server_error", "server_error"),
        (UpstreamRateLimited("ollama", "slow down"), "rate_limit_exceeded", "rate_limit_error"),
    ],
)
def test_a_failure_after_the_first_byte_is_an_error_then_response_failed(
    error: UpstreamError, code: str, kind: str
) -> None:
    events = _stream([TextDelta("par"), TextDelta("tial")], error)
    assert _types(events)[-2:] == ["error", "response.failed"]
    assert "response.completed" not in _types(events)
    failure, failed = events[-2:]
    assert failure["message"] == error.message and failure["code"] == code
    assert failure["error"] == {"type": kind, "code": code, "message": error.message, "param": None}
    response = Response.model_validate(failed["response"])
    assert response.status == "failed"
    assert response.error is not None and (response.error.code, response.error.message) == (code, error.message)
    assert response.output[0].type == "message" and response.output[0].status == "incomplete"
    assert response.output_text == "partial"


def test_interleaved_pieces_of_two_calls_each_find_their_item() -> None:
    """Calls stay open until the finish, so pieces of two calls may alternate, as an upstream sends them."""
    events = _stream(
        [
            ToolCallDelta(0, "call_a", "f", '{"a"'),
            ToolCallDelta(1, "call_b", "g", '{"b"'),
            ToolCallDelta(0, arguments=": 1}"),
            ToolCallDelta(1, arguments=": 2}"),
            Finish("tool-calls", USAGE),
        ]
    )
    assert _types(events)[2:] == [
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    first, second = (e["item"] for e in events if e["type"] == "response.output_item.added")
    deltas = {e["delta"]: (e["item_id"], e["output_index"]) for e in events if e["type"].endswith(".delta")}
    assert deltas[": 1}"] == (first["id"], 0) and deltas[": 2}"] == (second["id"], 1)
    response = Response.model_validate(events[-1]["response"])
    assert [(i.call_id, i.name, i.arguments) for i in response.output] == [  # type: ignore[union-attr]
        ("call_a", "f", '{"a": 1}'),
        ("call_b", "g", '{"b": 2}'),
    ]
    assert response.status == "completed" and response.output_text == ""  # no empty message beside calls


def test_a_call_cut_by_the_token_limit_is_incomplete() -> None:
    events = _stream([ToolCallDelta(0, "call_a", "f", '{"a": '), Finish("length", USAGE)])
    done = [e for e in events if e["type"] == "response.output_item.done"]
    assert [e["item"]["status"] for e in done] == ["incomplete"]
    assert events[-1]["type"] == "response.incomplete"


def test_a_failure_during_a_call_marks_it_incomplete() -> None:
    events = _stream([ToolCallDelta(0, "call_a", "f", '{"a": ')], UpstreamUnavailable("ollama", "overloaded"))
    assert _types(events)[-2:] == ["error", "response.failed"]
    response = Response.model_validate(events[-1]["response"])
    assert [(item.type, item.status) for item in response.output] == [("function_call", "incomplete")]


def test_a_stream_that_ends_without_finish_fails_explicitly() -> None:
    events = _stream([TextDelta("cut")])
    assert _types(events)[-2:] == ["error", "response.failed"]
    assert "ended before it finished" in events[-2]["message"]


def test_a_finish_with_error_fails_naming_the_provider() -> None:
    events = _stream([TextDelta("x"), Finish("error")])
    assert _types(events)[-2:] == ["error", "response.failed"]
    assert "ollama" in events[-2]["message"]


def test_an_unexpected_exception_is_reported_without_its_text() -> None:
    events = _stream([TextDelta("x")], RuntimeError("secret http://internal:1234"))
    assert events[-2]["message"] == "Internal Server Error"
    assert "secret" not in str(events)


def test_collect_builds_the_same_response_object() -> None:
    async def main() -> dict[str, Any]:
        return await collect_response(
            _batches([ReasoningDelta("hm"), TextDelta("Hi"), Finish("stop", Usage(7, 3, reasoning_tokens=1))]),
            HEAD,
            provider="ollama",
            clock=_clock,
        )

    response = Response.model_validate(asyncio.run(main()))
    assert response.status == "completed" and response.output_text == "Hi"
    assert [item.type for item in response.output] == ["reasoning", "message"]
    assert response.usage is not None and response.usage.output_tokens_details.reasoning_tokens == 1


@pytest.mark.parametrize(
    ("events", "error", "message"),
    [
        ([TextDelta("x")], None, "ended before it finished"),
        ([TextDelta("x"), Finish("error")], None, "ended the reply with an error"),
        ([TextDelta("x")], UpstreamUnavailable("ollama", "overloaded"), "overloaded"),
    ],
)
def test_collect_raises_on_a_failure(events: list[StreamEvent], error: Exception | None, message: str) -> None:
    with pytest.raises(ModelgateError, match=message):
        asyncio.run(collect_response(_batches(events, error), HEAD, provider="ollama", clock=_clock))
