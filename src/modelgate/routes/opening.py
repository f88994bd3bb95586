"""Open a reply for an HTTP client: ``gateway.open_stream``, given up when the client leaves first.

Until the first token the route is awaiting ``open_stream`` (connect, retries, fallbacks, the first
upstream event: up to two first-token timeouts, minutes), and nothing else listens to the client: a
client that left kept its concurrency slots and the upstream call for all that time (issue 11, #9).
``open_for_client`` watches ``receive()`` for ``http.disconnect`` meanwhile; when it comes first the
opening is cancelled — which closes the upstream request — and ``ClientDisconnected`` ends the request,
so ``AccessMiddleware`` releases the slots at once. A non-streamed ``/v1`` reply, collected whole before
its response starts, is watched the same way (``collect_for_client``) unless it arrived whole. The
graceful-shutdown ``Drain`` may cut the wait too (503), and bounds the reply that follows
(``Drain.bounded``), for every output protocol alike.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import replace
from typing import Any, TypeVar

from starlette.requests import Request

from modelgate.app import GatewayState
from modelgate.catalogue import CatalogueModel
from modelgate.chat import ChatRequest
from modelgate.drain import Drain, ShuttingDown
from modelgate.errors import ClientDisconnected
from modelgate.gateway import StreamStart, open_stream
from modelgate.limits import Admission
from modelgate.relay_response import ClientWatch

T = TypeVar("T")


async def open_for_client(
    request: Request,
    state: GatewayState,
    model: CatalogueModel,
    chat: ChatRequest,
    admission: Admission,
    *,
    whole: bool = False,
) -> StreamStart:
    """``open_stream``, unless the client disconnects or the server's shutdown limit passes first; the reply
    it returns ends at the shutdown limit too.

    The request body must have been read (what ``receive`` says next is then only a disconnect).
    """
    start = await unless_client_leaves(request, state.drain, open_stream(state, model, chat, admission, whole=whole))
    return replace(start, events=state.drain.bounded(start.events))


async def unless_client_leaves(request: Request, drain: Drain, work: Coroutine[Any, Any, T]) -> T:
    """``work``'s result; ``ClientDisconnected`` when the client leaves first, ``ShuttingDown`` when the
    shutdown limit passes first — either way ``work`` is cancelled (and so its upstream call closed).

    For what runs before a response starts: once it streams, the response watches the client. ``work`` runs in
    this task (its context: the request's observation); one small task listens for the client leaving and then
    cancels it, as the drain does when the limit passes.
    """
    task = asyncio.current_task()
    assert task is not None
    watch = ClientWatch(task)
    listener = asyncio.create_task(watch.listen(request.receive))
    try:
        with drain.cuts(task):
            result = await work
        if watch.left:
            task.uncancel()  # the client left as the work ended, which kept it: the response finds it gone
        return result
    except asyncio.CancelledError:
        if drain.was_cut(task):
            raise ShuttingDown() from None
        if watch.left and task.uncancel() == 0:
            raise ClientDisconnected() from None
        raise  # a cancellation from elsewhere (the server's) stands
    finally:
        watch.done = True
        listener.cancel()
        work.close()  # never started (cancelled at once) or already finished: no warning either way


async def collect_for_client(
    request: Request, state: GatewayState, start: StreamStart, collecting: Coroutine[Any, Any, T]
) -> T:
    """A non-streamed reply, collected before its response starts: the client is watched meanwhile, unless
    the reply is already all here (``start.complete``: a whole reply waits on nobody)."""
    if start.complete:
        return await collecting
    return await unless_client_leaves(request, state.drain, collecting)
