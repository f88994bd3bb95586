"""StreamEvents → the Vercel AI SDK **UI message stream protocol v1** (``ai`` ≥ 5.0, ``useChat`` of AI SDK 5/6).

Pinned to ``ai@5.0.0`` ``src/ui-message-stream/ui-message-chunks.ts`` (``uiMessageChunkSchema``),
``ui-message-stream-headers.ts`` and ``json-to-sse-transform-stream.ts``; ``tests/js`` checks our bytes
against ``ai@5.0.0`` and a current 5.x. Server-sent events, one JSON chunk per event, then ``[DONE]``:

    data: {"type":"start","messageId":"msg-…"}
    data: {"type":"start-step"}
    data: {"type":"reasoning-start","id":"reasoning-1"}       ┐ while ReasoningDeltas arrive
    data: {"type":"reasoning-delta","id":"reasoning-1","delta":"…"}
    data: {"type":"reasoning-end","id":"reasoning-1"}         ┘
    data: {"type":"text-start","id":"text-1"}                 ┐ while TextDeltas arrive
    data: {"type":"text-delta","id":"text-1","delta":"…"}
    data: {"type":"text-end","id":"text-1"}                   ┘
    data: {"type":"finish-step"}
    data: {"type":"finish","finishReason":"stop","messageMetadata":{"finishReason":"stop","usage":{…}}}
    data: [DONE]

A failure ends the stream with ``{"type":"error","errorText":…}`` and ``[DONE]`` (what ``streamText``'s
``toUIMessageStreamResponse`` sends; v5 forwards real messages).

The ``finish`` chunk carries ``finishReason`` at the top level, where ``useChat``'s ``onFinish`` reads it
(``ai`` ≥ 5.0.92, 6 and 7; ``unknown`` goes there as ``other``, the one value of ours that ``ai`` 6 and 7
reject). Usage has no field in this protocol: it travels, with the finish reason again,
as message metadata on ``finish``, with the AI SDK 5 usage names ``{"inputTokens","outputTokens",
"totalTokens"}`` and ``"usageEstimated": true`` when we counted.

Strict clients: ``ai`` 5.0.0 to 5.0.216 validate every chunk with zod ``strictObject`` (an unknown key makes
the client throw), and ``finishReason`` on ``finish`` only exists from 5.0.92, so ``ai`` 5.0.0 to 5.0.91 reject
that chunk. Their requests look exactly like later ones (nothing in a browser request names the version),
so they are not guessed at: ``strict=True`` (``?protocol=ui-strict``) leaves the field out and sends only
what ``ai@5.0.0``'s schemas allow; the finish reason is then in the message metadata alone.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from types import MappingProxyType
from typing import Final

import orjson

from modelgate.chat import Finish, ReasoningDelta, RefusalDelta, StreamEvent, TextDelta, ToolCallDelta
from modelgate.encoders.base import close, ended_early, failure_message
from modelgate.push_lane import register_encoder

MEDIA_TYPE: Final = "text/event-stream"
HEADER: Final = "x-vercel-ai-ui-message-stream"
HEADER_VALUE: Final = "v1"
HEADERS: Final[Mapping[str, str]] = MappingProxyType({HEADER: HEADER_VALUE})

DATA: Final = b"data: "
END_OF_EVENT: Final = b"\n\n"
DONE: Final = b"data: [DONE]\n\n"
START_STEP: Final = b'data: {"type":"start-step"}\n\n'
FINISH_STEP: Final = b'data: {"type":"finish-step"}\n\n'


def chunk(payload: dict[str, object]) -> bytes:
    return DATA + orjson.dumps(payload) + END_OF_EVENT


def error_chunks(message: str) -> bytes:
    return chunk({"type": "error", "errorText": message}) + DONE


def finish_metadata(finish: Finish) -> dict[str, object]:
    metadata: dict[str, object] = {"finishReason": finish.reason}
    if finish.usage is not None:
        usage = {
            "inputTokens": finish.usage.prompt_tokens,
            "outputTokens": finish.usage.completion_tokens,
            "totalTokens": finish.usage.total_tokens,
        }
        if finish.usage.reasoning_tokens is not None:  # AI SDK 5's LanguageModelUsage names, when reported
            usage["reasoningTokens"] = finish.usage.reasoning_tokens
        if finish.usage.cached_tokens is not None:
            usage["cachedInputTokens"] = finish.usage.cached_tokens
        metadata["usage"] = usage
        if finish.usage.estimated:
            metadata["usageEstimated"] = True
    return metadata


class _Part:
    """One open text or reasoning part with its prebuilt frames, so a delta costs one ``orjson.dumps(str)``."""

    __slots__ = ("delta_prefix", "end", "kind", "start")

    def __init__(self, kind: type[TextDelta | ReasoningDelta], number: int) -> None:
        name = "text" if kind is TextDelta else "reasoning"
        part_id = f"{name}-{number}"
        self.kind = kind
        self.start = f'data: {{"type":"{name}-start","id":"{part_id}"}}\n\n'.encode()
        self.delta_prefix = f'data: {{"type":"{name}-delta","id":"{part_id}","delta":'.encode()
        self.end = f'data: {{"type":"{name}-end","id":"{part_id}"}}\n\n'.encode()


_DELTA_END: Final = b"}" + END_OF_EVENT

#: ``ai`` 6 and 7 dropped ``unknown`` from the chunk's finish reason enum (and reject the chunk if it is
#: sent); ``other`` is in every version's enum. The metadata keeps our own value.
_CHUNK_FINISH_REASONS: Final[Mapping[str, str]] = MappingProxyType({"unknown": "other"})


class UIMessageStreamEncoder:
    media_type: str = MEDIA_TYPE
    headers: Mapping[str, str] = HEADERS

    def __init__(self, *, strict: bool = False) -> None:
        #: Only the fields ``ai@5.0.0``'s strict chunk schemas allow (no top-level ``finishReason``).
        self.strict = strict

    def finish_chunk(self, finish: Finish) -> bytes:
        payload: dict[str, object] = {"type": "finish"}
        if not self.strict:
            payload["finishReason"] = _CHUNK_FINISH_REASONS.get(finish.reason, finish.reason)
        payload["messageMetadata"] = finish_metadata(finish)
        return chunk(payload)

    async def encode(self, events: AsyncIterator[Sequence[StreamEvent]], *, message_id: str) -> AsyncIterator[bytes]:
        out = chunk({"type": "start", "messageId": message_id}) + START_STEP  # goes out with the first batch
        parts = _Parts()
        register_encoder(parts.deltas)  # the middle of the reply may be pushed (``push_lane``)
        try:
            async for batch in events:
                if batch and isinstance(last := batch[-1], Finish):  # a Finish is always the last event
                    out += parts.deltas(batch[:-1]) + parts.closing()
                    yield out + FINISH_STEP + self.finish_chunk(last) + DONE
                    return
                out += parts.deltas(batch)
                if out:
                    yield out
                    out = b""
            yield out + error_chunks(ended_early(message_id))
        except Exception as exc:
            yield out + error_chunks(failure_message(exc, message_id=message_id))
        finally:
            await close(events)


class _Parts:
    """The parts of one reply: the open one, closed when a delta of the other kind opens the next."""

    __slots__ = ("count", "part")

    def __init__(self) -> None:
        self.part: _Part | None = None
        self.count = 0

    def deltas(self, batch: Sequence[StreamEvent]) -> bytes:
        """The chunks of a batch of deltas (a batch without the ``Finish``)."""
        out: list[bytes] = []
        dumps = orjson.dumps
        part = self.part
        for event in batch:
            if isinstance(event, ToolCallDelta | Finish) or not event.text:  # /api/ai bodies carry no tools
                continue
            kind = type(event)
            if kind is RefusalDelta:
                kind = TextDelta  # the stream has no refusal part: the refusal's words are its text
            if part is not None and part.kind is kind:
                out.append(part.delta_prefix + dumps(event.text) + _DELTA_END)
                continue
            closing = part.end if part is not None else b""
            self.count += 1
            part = self.part = _Part(kind, self.count)
            out.append(closing + part.start + part.delta_prefix + dumps(event.text) + _DELTA_END)
        return b"".join(out)

    def closing(self) -> bytes:
        return self.part.end if self.part is not None else b""
