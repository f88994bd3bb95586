"""Open a chat stream for a resolved catalogue model: the one path both ``/api/ai/...`` and ``/v1`` use.

``open_stream`` does everything that must happen *before the first byte reaches the client*:
credentials check, provider lookup, waiting for the first upstream event. Errors up to that point
raise (and become an HTTP error response); after it, they are raised from the returned iterator
and the encoder turns them into the client protocol's error part.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from modelgate.chat import ChatRequest, StreamEvent
from modelgate.errors import ProviderNotConfigured, UpstreamProtocolError

if TYPE_CHECKING:
    from modelgate.app import GatewayState
    from modelgate.catalogue import CatalogueModel


@dataclass
class StreamStart:
    #: The model that actually answers (differs from the requested one after a fallback).
    model: CatalogueModel
    #: Parameters that were set but that the answering provider cannot honour.
    dropped_params: list[str]
    #: The reply, first event included; raises ``ModelgateError`` on a mid-stream failure.
    events: AsyncIterator[StreamEvent]
    #: Models tried before ``model`` answered, with the error each gave (for logs and headers).
    attempts: list[tuple[str, str]] = field(default_factory=list)


async def open_stream(state: GatewayState, model: CatalogueModel, request: ChatRequest) -> StreamStart:
    """Start ``model``'s reply to ``request`` and wait for its first event."""
    missing = state.settings.missing_credentials(model.provider)
    if missing:
        raise ProviderNotConfigured(model.provider, missing)
    provider = state.providers[model.provider]
    upstream = provider.stream(model, request).__aiter__()
    try:
        first = await anext(upstream)
    except StopAsyncIteration:
        raise UpstreamProtocolError(model.provider, "the reply ended before it started") from None
    except BaseException:
        await _close(upstream)
        raise
    return StreamStart(
        model=model,
        dropped_params=provider.dropped_params(request.params),
        events=_prepend(first, upstream),
    )


async def _prepend(first: StreamEvent, rest: AsyncIterator[StreamEvent]) -> AsyncIterator[StreamEvent]:
    try:
        yield first
        async for event in rest:
            yield event
    finally:
        # Runs on normal end, on error, and when the client disconnects (the encoder is closed):
        # closing the provider's generator closes the upstream response.
        await _close(rest)


async def _close(iterator: AsyncIterator[StreamEvent]) -> None:
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()
