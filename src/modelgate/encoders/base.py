"""What every AI SDK output encoder shares: the ``Encoder`` contract and how a failure becomes a message.

An encoder turns the provider-neutral ``StreamEvent``s of one reply into the bytes of one client protocol.
The events come in batches (those one upstream network read completed); an encoder yields **one bytes
object per batch**, so the response costs one ASGI message and one socket write per upstream read, not
per token (the protocol's opening part travels with the first batch). It owns the ending: every stream
ends with the protocol's finish part or its error part, never silently, and whatever ends the stream
(finish, failure, or the client going away) closes ``events``, which closes the upstream response.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Protocol

from modelgate.chat import StreamEvent
from modelgate.errors import ModelgateError

log = logging.getLogger("modelgate.encoders")

#: What the client sees for a failure that is not a ``ModelgateError`` (a bug): never its text.
INTERNAL_ERROR = "Internal Server Error"
#: What the client sees when ``events`` ends without a ``Finish`` (a provider broke its contract).
ENDED_EARLY = "The reply ended before it finished"


class Encoder(Protocol):
    #: ``Content-Type`` of the response.
    media_type: str
    #: Protocol marker headers (not the no-buffering headers, which the routes add for every protocol).
    headers: Mapping[str, str]

    def encode(self, events: AsyncIterator[Sequence[StreamEvent]], *, message_id: str) -> AsyncIterator[bytes]: ...


def failure_message(exc: Exception, *, message_id: str) -> str:
    """The client-facing text for a failure raised by ``events`` mid-stream."""
    if isinstance(exc, ModelgateError):
        log.warning("stream %s ended with an error: %s", message_id, exc.message)
        return exc.message
    # Only the type: a foreign exception's text may carry URLs or headers we must not leak.
    log.error("stream %s failed unexpectedly: %s", message_id, type(exc).__name__)
    return INTERNAL_ERROR


def ended_early(message_id: str) -> str:
    log.warning("stream %s: events ended without a Finish", message_id)
    return ENDED_EARLY


async def close(events: AsyncIterator[Sequence[StreamEvent]]) -> None:
    """Close the event source (and so the upstream response), if it can be closed."""
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        await aclose()
