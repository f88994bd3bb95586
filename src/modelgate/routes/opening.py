"""Open a reply for an HTTP client: ``gateway.open_stream``, given up when the client leaves first.

Until the first token the route is awaiting ``open_stream`` (connect, retries, fallbacks, the first
upstream event: up to two first-token timeouts, minutes), and nothing else listens to the client: a
client that left kept its concurrency slots and the upstream call for all that time (issue 11, #9).
``open_for_client`` watches ``receive()`` for ``http.disconnect`` meanwhile; when it comes first the
opening is cancelled — which closes the upstream request — and ``ClientDisconnected`` ends the request,
so ``AccessMiddleware`` releases the slots at once. The graceful-shutdown ``Drain`` may cut the wait
too (503), and bounds the reply that follows (``Drain.bounded``), for every output protocol alike.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

from starlette.requests import Request
from starlette.types import Receive

from modelgate.app import GatewayState
from modelgate.catalogue import CatalogueModel
from modelgate.chat import ChatRequest
from modelgate.drain import ShuttingDown
from modelgate.errors import ModelgateError
from modelgate.gateway import StreamStart, open_stream


class ClientDisconnected(ModelgateError):
    """The client left before the reply started (logged as nginx's 499; nobody reads the answer)."""

    status = 499

    def __init__(self) -> None:
        super().__init__("The client closed the connection before the reply started")


async def open_for_client(
    request: Request, state: GatewayState, model: CatalogueModel, chat: ChatRequest
) -> StreamStart:
    """``open_stream``, unless the client disconnects or the server's shutdown limit passes first.

    The request body must have been read (what ``receive`` says next is then only a disconnect).
    """
    drain = state.drain
    opening = asyncio.create_task(open_stream(state, model, chat))  # copies the context: the observation
    leaving = asyncio.create_task(_disconnect(request.receive))
    try:
        with drain.cuts(opening):
            await asyncio.wait((opening, leaving), return_when=asyncio.FIRST_COMPLETED)
    finally:
        leaving.cancel()
        if not opening.done():
            opening.cancel()  # the client left, or this request was cancelled: stop the upstream call
            await asyncio.wait((opening,))  # until it is closed; its outcome is read below
    left = leaving.done() and not leaving.cancelled() and leaving.exception() is None
    if opening.cancelled():
        if drain.was_cut(opening):
            raise ShuttingDown()
        raise ClientDisconnected()
    start = opening.result()  # raises the opening's own error (a 4xx/5xx for the client)
    if left:  # the first token and the disconnect came together: nobody will read this reply
        await _close(start.events)
        raise ClientDisconnected()
    return replace(start, events=drain.bounded(start.events))


async def _close(events: AsyncIterator[object]) -> None:
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        await aclose()


async def _disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
