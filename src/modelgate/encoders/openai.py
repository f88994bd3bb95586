"""StreamEvents → OpenAI Chat Completions: ``chat.completion.chunk`` SSE, or one ``chat.completion``.

Follows the OpenAI API reference for the chat completion and chunk objects, including
``stream_options.include_usage`` (the usage chunk with ``"choices": []`` after the finish chunk) and the
stream error convention that openai-python ``_streaming.py`` turns into ``APIError`` (a data payload with
an ``error`` key). The golden bytes in ``tests/test_openai_encoder.py`` pin the exact frames.

Non-standard, documented: reasoning text (``ReasoningDelta``) is sent as ``reasoning_content`` (in
``delta`` when streaming, in ``message`` otherwise), DeepSeek's API convention, so that reasoning never
mixes into ``content``. Clients that do not know the field ignore it. What the model attached for itself to read
back goes out as the upstream sent it, for the client to return on its next turn: its reasoning blocks as
``reasoning_details`` (OpenRouter's), a tool call's ``extra_content`` (Gemini's thought signature, as
``@ai-sdk/openai-compatible`` reads it).

Per-token cost: a content chunk is ``prefix + orjson.dumps(text) + suffix``, with prefix and suffix
built once per response; only the token text is serialized per event. The chunks of one batch of events
(one upstream read) go out together, as one write.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import orjson

from modelgate.chat import (
    Finish,
    FinishReason,
    ReasoningDelta,
    ReasoningDetail,
    RefusalDelta,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    Usage,
)
from modelgate.errors import ModelgateError, UpstreamError, UpstreamProtocolError
from modelgate.push_lane import register_encoder
from modelgate.wire import MAX_REASONING_DETAILS

log = logging.getLogger("modelgate.openai")

MEDIA_TYPE = "text/event-stream"
#: ``X-Accel-Buffering: no`` keeps nginx-style proxies from batching tokens.
HEADERS: Mapping[str, str] = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
DONE = b"data: [DONE]\n\n"

#: Our (AI SDK, hyphenated) finish reasons → OpenAI's. ``error`` is absent on purpose: a reply that
#: finished with an error is reported as an error, never as a normal end.
FINISH_REASONS: Mapping[FinishReason, str] = {
    "stop": "stop",
    "length": "length",
    "content-filter": "content_filter",
    "tool-calls": "tool_calls",
    "other": "stop",
    "unknown": "stop",
}

_ENDED_EARLY = "the reply ended before it finished"
_ENDED_WITH_ERROR = "the provider ended the reply with an error"


#: Response header saying the usage was counted by modelgate, not reported by the provider (non-stream
#: replies; a stream marks its usage chunk instead, the header being gone before the usage is known).
USAGE_HEADER = "X-Modelgate-Usage"


def usage_object(usage: Usage) -> dict[str, Any]:
    """OpenAI's usage object; ``completion_tokens_details.reasoning_tokens`` and
    ``prompt_tokens_details.cached_tokens`` only when the upstream reported them (a missing field says
    "unknown"; a 0 we made up would say "none"); an estimate (the provider reported none) carries
    ``"estimated": true``, a non-standard field SDKs keep."""
    body: dict[str, Any] = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }
    if usage.cached_tokens is not None:
        body["prompt_tokens_details"] = {"cached_tokens": usage.cached_tokens}
    if usage.reasoning_tokens is not None:
        body["completion_tokens_details"] = {"reasoning_tokens": usage.reasoning_tokens}
    if usage.estimated:
        body["estimated"] = True
    return body


def error_chunk(message: str) -> bytes:
    """The in-stream error event (OpenAI SDKs raise ``APIError`` on it)."""
    error = {"message": message, "type": "server_error", "param": None, "code": None}
    return b"data: " + orjson.dumps({"error": error}) + b"\n\n"


class ChunkEncoder:
    """Encodes one reply as ``chat.completion.chunk`` events; one instance per response."""

    def __init__(self, *, completion_id: str, created: int, model: str, include_usage: bool) -> None:
        self.include_usage = include_usage
        self._head: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": None,
        }
        # The head serialized without its closing brace, so choices can follow it.
        head = b"data: " + orjson.dumps(self._head)[:-1]
        # Only with include_usage do the earlier chunks carry "usage": null (reference 5.4).
        tail = b',"usage":null}\n\n' if include_usage else b"}\n\n"
        choice_tail = b'},"logprobs":null,"finish_reason":null}]' + tail
        self._content_prefix = head + b',"choices":[{"index":0,"delta":{"content":'
        self._reasoning_prefix = head + b',"choices":[{"index":0,"delta":{"reasoning_content":'
        self._refusal_prefix = head + b',"choices":[{"index":0,"delta":{"refusal":'
        self._delta_suffix = choice_tail

    def _chunk(self, choices: list[dict[str, Any]], usage: Usage | None = None, *, usage_chunk: bool = False) -> bytes:
        body: dict[str, Any] = {**self._head, "choices": choices}
        if usage_chunk:
            body["usage"] = usage_object(usage) if usage is not None else None
        elif self.include_usage:
            body["usage"] = None
        return b"data: " + orjson.dumps(body) + b"\n\n"

    def tool_call_chunk(self, delta: ToolCallDelta) -> bytes:
        """``delta.tool_calls``: the first piece of a call carries ``id``, ``type`` and ``function.name``."""
        call: dict[str, Any] = {"index": delta.index}
        function: dict[str, Any] = {"arguments": delta.arguments}
        if delta.id is not None:
            call["id"], call["type"] = delta.id, "function"
        if delta.name is not None:
            function = {"name": delta.name, **function}
        call["function"] = function
        if delta.extra is not None:
            call["extra_content"] = delta.extra
        return self._chunk([{"index": 0, "delta": {"tool_calls": [call]}, "logprobs": None, "finish_reason": None}])

    def role_chunk(self) -> bytes:
        delta = {"role": "assistant", "content": ""}
        return self._chunk([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}])

    def finish_chunks(self, finish: Finish) -> bytes:
        reason = FINISH_REASONS[finish.reason]
        out = self._chunk([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": reason}])
        if self.include_usage and finish.usage is not None:
            out += self._chunk([], finish.usage, usage_chunk=True)
        return out

    def deltas(self, batch: Sequence[StreamEvent]) -> bytes:
        """The chunks of a batch of deltas (a batch without the ``Finish``): what every batch but the last is."""
        out: list[bytes] = []
        dumps = orjson.dumps
        content_prefix, suffix = self._content_prefix, self._delta_suffix
        for event in batch:
            if isinstance(event, TextDelta):
                if event.text:
                    prefix = self._refusal_prefix if type(event) is RefusalDelta else content_prefix
                    out.append(prefix + dumps(event.text) + suffix)
            elif isinstance(event, ReasoningDelta):
                if event.details:
                    out.append(self.reasoning_details_chunk(event))
                elif event.text:
                    out.append(self._reasoning_prefix + dumps(event.text) + suffix)
            elif isinstance(event, ToolCallDelta):
                out.append(self.tool_call_chunk(event))
        return b"".join(out)

    def reasoning_details_chunk(self, event: ReasoningDelta) -> bytes:
        """Reasoning with its blocks (``delta.reasoning_details``, as OpenRouter streams them beside the text)."""
        delta: dict[str, Any] = {"reasoning_content": event.text} if event.text else {}
        delta["reasoning_details"] = event.details
        return self._chunk([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}])

    async def encode(self, events: AsyncIterator[Sequence[StreamEvent]]) -> AsyncIterator[bytes]:
        """The whole SSE body: role chunk, deltas, finish (+ usage) chunk, ``[DONE]``; one bytes per batch.

        A ``ModelgateError`` from ``events`` (or a stream that ends without ``Finish``) becomes an
        error event before ``[DONE]``: never a silent end.
        """
        out = self.role_chunk()  # goes out with the first batch
        register_encoder(self.deltas)  # the middle of the reply may be pushed (``push_lane``)
        finished = False
        try:
            async for batch in events:
                if batch and isinstance(last := batch[-1], Finish):  # a Finish is always the last event
                    out += self.deltas(batch[:-1])
                    out += error_chunk(_ENDED_WITH_ERROR) if last.reason == "error" else self.finish_chunks(last)
                    finished = True
                    break
                out += self.deltas(batch)
                if out:
                    yield out
                    out = b""
            if not finished:
                out += error_chunk(_ENDED_EARLY)
        except ModelgateError as exc:
            out += error_chunk(exc.message)
        except Exception as exc:
            # Only the type: a foreign exception's text may carry URLs or headers we must not leak.
            log.error("unexpected error while streaming a chat completion: %s", type(exc).__name__)
            out += error_chunk("Internal Server Error")
        finally:
            await _close(events)
        yield out + DONE


async def collect_completion(
    events: AsyncIterator[Sequence[StreamEvent]], *, completion_id: str, created: int, model: str, provider: str
) -> dict[str, Any]:
    """Drain ``events`` into one ``chat.completion`` object. Raises ``ModelgateError`` on a failure."""
    text: list[str] = []
    refusal: list[str] = []
    reasoning: list[str] = []
    details: list[ReasoningDetail] = []
    calls: dict[int, dict[str, Any]] = {}
    finish: Finish | None = None
    try:
        async for batch in events:
            for event in batch:
                if isinstance(event, TextDelta):
                    (refusal if type(event) is RefusalDelta else text).append(event.text)
                elif isinstance(event, ReasoningDelta):
                    reasoning.append(event.text)
                    details += event.details
                    if len(details) > MAX_REASONING_DETAILS:
                        raise UpstreamProtocolError(provider, f"more than {MAX_REASONING_DETAILS} reasoning_details")
                elif isinstance(event, ToolCallDelta):
                    _add_piece(calls, event)
                else:
                    finish = event
                    break
            if finish is not None:
                break
    finally:
        await _close(events)
    if finish is None:
        raise UpstreamProtocolError(provider, _ENDED_EARLY)
    if finish.reason == "error":
        raise UpstreamError(provider, _ENDED_WITH_ERROR)
    content = "".join(text)
    # OpenAI: content is null on a reply that only calls tools, or only refuses.
    message: dict[str, Any] = {
        "role": "assistant",
        "content": content or (None if calls or refusal else ""),
        "refusal": "".join(refusal) or None,
    }
    if calls:
        message["tool_calls"] = [calls[index] for index in sorted(calls)]
    if reasoning_text := "".join(reasoning):  # blocks without text (a signature) add none
        message["reasoning_content"] = reasoning_text
    if details:
        message["reasoning_details"] = details
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": FINISH_REASONS[finish.reason]}],
        "usage": usage_object(finish.usage) if finish.usage is not None else None,
    }


def _add_piece(calls: dict[int, dict[str, Any]], piece: ToolCallDelta) -> None:
    call = calls.setdefault(piece.index, {"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
    if piece.id is not None:
        call["id"] = piece.id
    if piece.name is not None:
        call["function"]["name"] = piece.name
    call["function"]["arguments"] += piece.arguments
    if piece.extra is not None:
        call.setdefault("extra_content", piece.extra)  # the first piece's, as @ai-sdk/openai-compatible keeps it


async def _close(events: AsyncIterator[Sequence[StreamEvent]]) -> None:
    # Closing the gateway's iterator closes the provider's generator and so the upstream response.
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        await aclose()
