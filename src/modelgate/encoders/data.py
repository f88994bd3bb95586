"""StreamEvents → the Vercel AI SDK **data stream protocol v1** (``ai`` 4.1 to 4.3, ``@ai-sdk/ui-utils`` 1.x).

Pinned to ``ai@4.3.19`` (``packages/ui-utils/src/data-stream-parts.ts``, ``process-data-stream.ts``), the
protocol ``useChat`` of AI SDK 4 consumes by default and which ``tests/js`` checks our bytes against.
One part per line, ``<code>:<JSON>\\n``; no framing beyond the newline, end of body = end of message:

    f:{"messageId":"msg-…"}                       start_step (ai ≥ 4.1)
    g:"…"                                        reasoning (ai ≥ 4.1.1), once per ReasoningDelta
    0:"…"                                        text, once per TextDelta
    8:[{"usageEstimated":true}]                  message_annotations, only when we counted usage ourselves
    e:{"finishReason":…,"usage":{…},"isContinued":false}   finish_step
    d:{"finishReason":…,"usage":{…}}             finish_message
    3:"…"                                        error, instead of e/d, after which the body ends

``finishReason`` uses the SDK's hyphenated values (ours already are); ``usage`` is
``{"promptTokens","completionTokens"}`` and is left out when unknown (the protocol makes it optional).
Estimated usage is flagged with an ``8:`` annotation rather than an extra key, because the client's
parser accepts only the protocol's parts. Per token only the text is serialized (``orjson.dumps`` of
a ``str``); the part codes are prebuilt bytes. The parts of one batch of events go out as one chunk.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from types import MappingProxyType
from typing import Final

import orjson

from modelgate.chat import Finish, ReasoningDelta, StreamEvent, TextDelta
from modelgate.encoders.base import close, ended_early, failure_message
from modelgate.push_lane import register_encoder

MEDIA_TYPE: Final = "text/plain; charset=utf-8"
HEADER: Final = "X-Vercel-AI-Data-Stream"
HEADER_VALUE: Final = "v1"
HEADERS: Final[Mapping[str, str]] = MappingProxyType({HEADER: HEADER_VALUE})

TEXT: Final = b"0:"
ERROR: Final = b"3:"
MESSAGE_ANNOTATIONS: Final = b"8:"
FINISH_MESSAGE: Final = b"d:"
FINISH_STEP: Final = b"e:"
START_STEP: Final = b"f:"
REASONING: Final = b"g:"
NEWLINE: Final = b"\n"

USAGE_ESTIMATED: Final = MESSAGE_ANNOTATIONS + orjson.dumps([{"usageEstimated": True}]) + NEWLINE


def start_part(message_id: str) -> bytes:
    return START_STEP + orjson.dumps({"messageId": message_id}) + NEWLINE


def error_part(message: str) -> bytes:
    return ERROR + orjson.dumps(message) + NEWLINE


def finish_parts(finish: Finish) -> bytes:
    """``8:`` (if estimated), ``e:`` and ``d:`` for the end of the reply."""
    message: dict[str, object] = {"finishReason": finish.reason}
    annotation = b""
    if finish.usage is not None:
        message["usage"] = {
            "promptTokens": finish.usage.prompt_tokens,
            "completionTokens": finish.usage.completion_tokens,
        }
        if finish.usage.estimated:
            annotation = USAGE_ESTIMATED
    step = {**message, "isContinued": False}
    return annotation + FINISH_STEP + orjson.dumps(step) + NEWLINE + FINISH_MESSAGE + orjson.dumps(message) + NEWLINE


def deltas(batch: Sequence[StreamEvent]) -> bytes:
    """The parts of a batch of deltas (a batch without the ``Finish``): what every batch but the last is."""
    out: list[bytes] = []
    dumps = orjson.dumps
    for event in batch:
        if isinstance(event, TextDelta):  # a refusal too: the protocol has only text
            if event.text:
                out.append(TEXT + dumps(event.text) + NEWLINE)
        elif isinstance(event, ReasoningDelta) and event.text:
            out.append(REASONING + dumps(event.text) + NEWLINE)
        # a ToolCallDelta: /api/ai bodies carry no tools (issue 12 left them to /v1)
    return b"".join(out)


class DataStreamEncoder:
    media_type: str = MEDIA_TYPE
    headers: Mapping[str, str] = HEADERS

    async def encode(self, events: AsyncIterator[Sequence[StreamEvent]], *, message_id: str) -> AsyncIterator[bytes]:
        out = start_part(message_id)  # goes out with the first batch
        register_encoder(deltas)  # the middle of the reply may be pushed (``push_lane``)
        try:
            async for batch in events:
                if batch and isinstance(last := batch[-1], Finish):  # a Finish is always the last event
                    yield out + deltas(batch[:-1]) + finish_parts(last)
                    return
                out += deltas(batch)
                if out:
                    yield out
                    out = b""
            yield out + error_part(ended_early(message_id))
        except Exception as exc:
            yield out + error_part(failure_message(exc, message_id=message_id))
        finally:
            await close(events)
