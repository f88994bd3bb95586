"""StreamEvents → the Vercel AI SDK **plain text stream protocol** (``ai`` 3.x to 5.x).

Pinned to ``ai@4.3.19`` ``processTextStream`` / ``streamText().toTextStreamResponse()`` and ``ai@5``
``TextStreamChatTransport``: the body is the raw assistant text, UTF-8, as it arrives; no framing, no
metadata, no finish part. The protocol has no reasoning or error channel, so:

* reasoning is not sent (a client of this protocol would show it as answer text);
* a failure after the stream started is appended as a visible line, ``\\n[error: <message>]``, since
  the status code has already gone out and silence would look like a complete answer; so is a reply the
  provider itself ended with an error (OpenRouter's ``finish_reason: "error"``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from types import MappingProxyType
from typing import Final

from modelgate.chat import Finish, StreamEvent, TextDelta
from modelgate.encoders.base import close, ended_early, failure_message
from modelgate.push_lane import register_encoder

MEDIA_TYPE: Final = "text/plain; charset=utf-8"
HEADERS: Final[Mapping[str, str]] = MappingProxyType({})


def error_line(message: str) -> bytes:
    return f"\n[error: {message}]".encode()


def deltas(batch: Sequence[StreamEvent]) -> bytes:
    """The text of a batch of deltas (a batch without the ``Finish``): reasoning and tool calls are not sent."""
    return "".join(event.text for event in batch if isinstance(event, TextDelta)).encode()


class TextStreamEncoder:
    media_type: str = MEDIA_TYPE
    headers: Mapping[str, str] = HEADERS

    async def encode(self, events: AsyncIterator[Sequence[StreamEvent]], *, message_id: str) -> AsyncIterator[bytes]:
        register_encoder(deltas)  # the middle of the reply may be pushed (``push_lane``)
        try:
            async for batch in events:
                if batch and isinstance(last := batch[-1], Finish):  # a Finish is always the last event
                    text = deltas(batch[:-1])
                    if last.reason == "error":  # the other protocols say it in their finish part
                        text += b"\n[error: the provider ended the reply with an error]"
                    if text:
                        yield text
                    return
                if text := deltas(batch):
                    yield text
            yield error_line(ended_early(message_id))
        except Exception as exc:
            yield error_line(failure_message(exc, message_id=message_id))
        finally:
            await close(events)
