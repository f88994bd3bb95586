"""Our AI SDK streams, served over a real loopback server, read by the AI SDK's own clients (Node).

The golden bytes in ``test_encoders.py`` pin what we send; these tests check that the real parsers
(ai@4.3.19 for the data stream, ai@5.0.0 and a current 5.x for the UI message stream) accept it and
assemble the message we meant. The last tests feed them deliberately broken streams, to show that a
protocol violation does fail here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from typing import get_args

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from modelgate.chat import Finish, FinishReason, ReasoningDelta, StreamEvent, TextDelta, Usage
from modelgate.encoders import ENCODERS
from modelgate.encoders import data as data_stream
from modelgate.encoders import ui as ui_stream
from modelgate.errors import ModelgateError, UpstreamUnavailable
from tests.node_parsers import NodeParserError, parse_data_stream, parse_ui_stream, requires_node_parsers
from tests.servers import serve_in_thread

pytestmark = [pytest.mark.node, requires_node_parsers]

USAGE = Usage(prompt_tokens=31, completion_tokens=4)
OVERLOADED = UpstreamUnavailable("huggingface", "Model is overloaded")
OVERLOADED_TEXT = "Upstream provider error (huggingface): Model is overloaded"
TRICKY = 'line\nbreak "quoted" \\ tab\t \u2028 ünïcödé 🙂 </think> 0:"not a part"'

SCENARIOS: dict[str, tuple[Sequence[StreamEvent], ModelgateError | None]] = {
    "reply": ([TextDelta("It"), TextDelta(" is"), TextDelta(" 4")], None),
    "reasoning": ([ReasoningDelta("2+2"), ReasoningDelta(" is 4."), TextDelta("4")], None),
    "error-after-text": ([TextDelta("It"), TextDelta(" is")], OVERLOADED),
    "error-before-text": ([], OVERLOADED),
    "estimated": ([TextDelta("Hi")], None),
    "tricky": ([ReasoningDelta(TRICKY), TextDelta(TRICKY)], None),
}

#: Hand-written bodies that break the protocols, each the kind of mistake an encoder could make.
BROKEN = {
    "data-old-code": (data_stream, b'f:{"messageId":"m"}\n1:"AI SDK 3 text code"\n'),
    "data-bad-json": (data_stream, b'0:"unterminated\n'),
    "ui-usage-on-finish": (
        ui_stream,
        b'data: {"type":"start"}\n\ndata: {"type":"finish","usage":{"inputTokens":1}}\n\ndata: [DONE]\n\n',
    ),
    "ui-delta-without-start": (
        ui_stream,
        b'data: {"type":"start"}\n\ndata: {"type":"text-delta","id":"t","delta":"x"}\n\ndata: [DONE]\n\n',
    ),
}


async def _events(scenario: str, reason: FinishReason, estimated: bool) -> AsyncIterator[Sequence[StreamEvent]]:
    """Batches as the gateway relays them: the first event alone, the rest together (one upstream read)."""
    events, error = SCENARIOS[scenario]
    if events:
        yield events[:1]
    if events[1:]:
        yield events[1:]
    if error is not None:
        raise error
    yield [Finish(reason, Usage(USAGE.prompt_tokens, USAGE.completion_tokens, estimated=estimated))]


async def _stream(request: Request) -> Response:
    protocol, scenario = request.path_params["protocol"], request.path_params["scenario"]
    encoder = ENCODERS[protocol]
    events = _events(scenario, request.query_params.get("reason", "stop"), scenario == "estimated")
    return StreamingResponse(
        encoder.encode(events, message_id="msg-test"), media_type=encoder.media_type, headers=dict(encoder.headers)
    )


async def _broken(request: Request) -> Response:
    module, body = BROKEN[request.path_params["name"]]
    return Response(body, media_type=module.MEDIA_TYPE, headers=dict(module.HEADERS))


async def _refused(request: Request) -> Response:
    return Response('{"statusCode":404,"statusMessage":"Model not found"}', status_code=404)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    app = Starlette(
        routes=[
            Route("/stream/{protocol}/{scenario}", _stream, methods=["POST"]),
            Route("/broken/{name}", _broken, methods=["POST"]),
            Route("/refused", _refused, methods=["POST"]),
        ]
    )
    with serve_in_thread(app) as url:
        yield url


# --- data stream protocol v1, ai@4.3.19 ------------------------------------------------------------------


def test_data_reply_is_what_use_chat_shows(server: str) -> None:
    result = parse_data_stream(f"{server}/stream/data/reply")
    assert result["status"] == 200
    assert result["headers"]["x-vercel-ai-data-stream"] == "v1"
    assert result["headers"]["content-type"] == "text/plain; charset=utf-8"
    assert result["text"] == "It is 4"
    assert result["errors"] == []
    assert result["startStep"] == {"messageId": "msg-test"}
    usage = {"promptTokens": 31, "completionTokens": 4}
    assert result["finishStep"] == {"finishReason": "stop", "usage": usage, "isContinued": False}
    assert result["finishMessage"] == {"finishReason": "stop", "usage": usage}
    chat = result["useChat"]
    assert chat["error"] is None
    assert chat["finish"] == {"finishReason": "stop", "usage": {**usage, "totalTokens": 35}}
    assert chat["message"]["id"] == "msg-test"
    assert chat["message"]["content"] == "It is 4"
    assert chat["message"]["annotations"] == []


def test_data_reasoning_becomes_the_messages_reasoning(server: str) -> None:
    result = parse_data_stream(f"{server}/stream/data/reasoning")
    assert result["reasoning"] == "2+2 is 4."
    assert result["text"] == "4"
    assert result["useChat"]["message"]["reasoning"] == "2+2 is 4."
    assert result["useChat"]["message"]["partTypes"] == ["step-start", "reasoning", "text"]


def test_data_error_after_text_throws_in_use_chat_and_keeps_the_text(server: str) -> None:
    result = parse_data_stream(f"{server}/stream/data/error-after-text")
    assert result["errors"] == [OVERLOADED_TEXT]
    assert result["useChat"]["error"] == OVERLOADED_TEXT
    assert result["useChat"]["message"]["content"] == "It is"
    assert result["finishMessage"] is None


def test_data_error_before_any_text(server: str) -> None:
    result = parse_data_stream(f"{server}/stream/data/error-before-text")
    assert result["partTypes"] == ["start_step", "error"]
    assert result["useChat"]["error"] == OVERLOADED_TEXT
    assert result["text"] == ""


def test_data_estimated_usage_arrives_as_a_message_annotation(server: str) -> None:
    result = parse_data_stream(f"{server}/stream/data/estimated")
    assert result["annotations"] == [{"usageEstimated": True}]
    assert result["useChat"]["message"]["annotations"] == [{"usageEstimated": True}]
    assert result["useChat"]["finish"]["usage"] == {"promptTokens": 31, "completionTokens": 4, "totalTokens": 35}


@pytest.mark.parametrize("reason", get_args(FinishReason))
def test_data_every_finish_reason_reaches_on_finish(server: str, reason: str) -> None:
    result = parse_data_stream(f"{server}/stream/data/reply?reason={reason}")
    assert result["useChat"]["finish"]["finishReason"] == reason


def test_data_text_round_trips_exactly(server: str) -> None:
    result = parse_data_stream(f"{server}/stream/data/tricky")
    assert result["text"] == TRICKY
    assert result["reasoning"] == TRICKY
    assert result["useChat"]["message"]["content"] == TRICKY


def test_data_non_2xx_is_returned_with_its_body(server: str) -> None:
    result = parse_data_stream(f"{server}/refused")
    assert result["status"] == 404
    assert result["body"] == '{"statusCode":404,"statusMessage":"Model not found"}'


# --- UI message stream v1, ai@5.0.0 (strict schemas) and a current 5.x -----------------------------------

SDKS = ["ai5", "ai5latest"]
#: What each SDK is served: ai@5.0.0 rejects the top-level finishReason, so it gets ``ui-strict``.
UI_PROTOCOL = {"ai5": "ui-strict", "ai5latest": "ui"}


@pytest.mark.parametrize("sdk", SDKS)
def test_ui_reply_is_what_use_chat_shows(server: str, sdk: str) -> None:
    result = parse_ui_stream(f"{server}/stream/{UI_PROTOCOL[sdk]}/reply", sdk=sdk)
    assert result["status"] == 200
    assert result["headers"]["x-vercel-ai-ui-message-stream"] == "v1"
    assert result["headers"]["content-type"].startswith("text/event-stream")
    assert result["text"] == "It is 4"
    assert result["errors"] == []
    assert result["message"]["id"] == "msg-test"
    assert result["message"]["partTypes"] == ["step-start", "text"]
    metadata = {"finishReason": "stop", "usage": {"inputTokens": 31, "outputTokens": 4, "totalTokens": 35}}
    assert result["message"]["metadata"] == metadata
    if sdk == "ai5":
        assert result["finish"] == {"type": "finish", "messageMetadata": metadata}
    else:  # the field useChat's onFinish reads (ai >= 5.0.92)
        assert result["finish"] == {"type": "finish", "finishReason": "stop", "messageMetadata": metadata}


@pytest.mark.parametrize("sdk", ["ai5latest", "ai6", "ai7"])
@pytest.mark.parametrize("reason", get_args(FinishReason))
def test_ui_finish_reason_reaches_current_ai_5_6_and_7(server: str, reason: str, sdk: str) -> None:
    result = parse_ui_stream(f"{server}/stream/ui/reply?reason={reason}", sdk=sdk)
    # "unknown" is not in ai 6 and 7's enum (they reject the chunk): it goes as "other", in every version.
    assert result["finish"]["finishReason"] == ("other" if reason == "unknown" else reason)
    assert result["message"]["metadata"]["finishReason"] == reason
    assert result["text"] == "It is 4"


def test_ui_parser_5_0_0_rejects_the_default_finish_so_it_has_ui_strict(server: str) -> None:
    """Why ``ui-strict`` exists: ai 5.0.0 to 5.0.91 throw on the top-level finishReason of ``ui``."""
    with pytest.raises(NodeParserError, match="chunk rejected"):
        parse_ui_stream(f"{server}/stream/ui/reply", sdk="ai5")


@pytest.mark.parametrize("sdk", SDKS)
def test_ui_reasoning_is_a_reasoning_part(server: str, sdk: str) -> None:
    result = parse_ui_stream(f"{server}/stream/{UI_PROTOCOL[sdk]}/reasoning", sdk=sdk)
    assert result["reasoning"] == "2+2 is 4."
    assert result["text"] == "4"
    assert result["message"]["partTypes"] == ["step-start", "reasoning", "text"]


@pytest.mark.parametrize("sdk", SDKS)
def test_ui_error_after_text(server: str, sdk: str) -> None:
    result = parse_ui_stream(f"{server}/stream/{UI_PROTOCOL[sdk]}/error-after-text", sdk=sdk)
    assert result["errors"] == [OVERLOADED_TEXT]
    assert result["text"] == "It is"
    assert result["finish"] is None
    assert result["raw"].endswith("data: [DONE]\n\n")


@pytest.mark.parametrize("sdk", SDKS)
def test_ui_error_before_any_text(server: str, sdk: str) -> None:
    result = parse_ui_stream(f"{server}/stream/{UI_PROTOCOL[sdk]}/error-before-text", sdk=sdk)
    assert result["chunkTypes"] == ["start", "start-step", "error"]
    assert result["errors"] == [OVERLOADED_TEXT]


@pytest.mark.parametrize("sdk", SDKS)
def test_ui_estimated_usage_is_flagged_in_the_metadata(server: str, sdk: str) -> None:
    result = parse_ui_stream(f"{server}/stream/{UI_PROTOCOL[sdk]}/estimated", sdk=sdk)
    assert result["message"]["metadata"]["usageEstimated"] is True


@pytest.mark.parametrize("sdk", SDKS)
def test_ui_text_round_trips_exactly(server: str, sdk: str) -> None:
    result = parse_ui_stream(f"{server}/stream/{UI_PROTOCOL[sdk]}/tricky", sdk=sdk)
    assert result["text"] == TRICKY
    assert result["reasoning"] == TRICKY


def test_ui_non_2xx_is_returned_with_its_body(server: str) -> None:
    result = parse_ui_stream(f"{server}/refused")
    assert result["status"] == 404
    assert result["body"] == '{"statusCode":404,"statusMessage":"Model not found"}'


# --- the real parsers do reject what breaks the protocols -----------------------------------------------


@pytest.mark.parametrize("name", ["data-old-code", "data-bad-json"])
def test_data_parser_rejects_a_broken_stream(server: str, name: str) -> None:
    with pytest.raises(NodeParserError, match="protocol violation"):
        parse_data_stream(f"{server}/broken/{name}")


def test_ui_parser_5_0_0_rejects_a_key_its_strict_schema_does_not_know(server: str) -> None:
    with pytest.raises(NodeParserError, match="chunk rejected"):
        parse_ui_stream(f"{server}/broken/ui-usage-on-finish", sdk="ai5")


@pytest.mark.parametrize("sdk", SDKS)
def test_ui_parser_rejects_a_delta_for_a_part_never_started(server: str, sdk: str) -> None:
    with pytest.raises(NodeParserError, match="protocol violation"):
        parse_ui_stream(f"{server}/broken/ui-delta-without-start", sdk=sdk)
