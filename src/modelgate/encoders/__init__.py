"""Output encoders: StreamEvents → the bytes of one client protocol.

``ENCODERS`` holds the Vercel AI SDK protocols the ``/api/ai/...`` chat routes speak, by the name
``?protocol=`` selects; each module names the SDK version it is pinned to:

* ``data`` (default) data stream protocol v1, AI SDK 4 ``useChat`` (``encoders/data.py``)
* ``text``           plain text stream (``encoders/text.py``)
* ``ui``             UI message stream v1 over SSE, AI SDK 5+ ``useChat`` (``encoders/ui.py``)
* ``ui-strict``      the same without the fields ``ai`` 5.0.0 to 5.0.91's strict chunk schemas reject

The OpenAI facade's encoder (``encoders/openai.py``) has its own shape and is not in this registry.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from modelgate.encoders.base import Encoder
from modelgate.encoders.data import DataStreamEncoder
from modelgate.encoders.text import TextStreamEncoder
from modelgate.encoders.ui import UIMessageStreamEncoder
from modelgate.errors import BadRequest

DEFAULT_PROTOCOL = "data"

ENCODERS: Mapping[str, Encoder] = MappingProxyType(
    {
        "data": DataStreamEncoder(),
        "text": TextStreamEncoder(),
        "ui": UIMessageStreamEncoder(),
        "ui-strict": UIMessageStreamEncoder(strict=True),
    }
)

_EVENT_STREAM = "text/event-stream"


def choose_protocol(query_protocol: str | None, accept: str | None, *, ai_sdk_5_body: bool = False) -> str:
    """The protocol for one request, so that a client gets the stream it can read without asking:

    1. ``?protocol=`` wins;
    2. else an ``Accept`` naming ``text/event-stream`` decides: ``ui``, or ``data`` when it refuses it (``q=0``);
    3. else the body's shape: an AI SDK 5+ body (``ai_sdk_5_body``, see ``routes/chat.py``) gets ``ui``,
       the only stream AI SDK 5+ ``useChat`` reads (it ignores a data stream without a word);
    4. else ``data``, what AI SDK 4 ``useChat`` (and the original front-end) reads.
    """
    if query_protocol is not None:
        if query_protocol not in ENCODERS:
            raise BadRequest(
                f"Unknown protocol {query_protocol!r} (use one of: {', '.join(sorted(ENCODERS))})",
                data={"field": "protocol", "allowed": sorted(ENCODERS)},
                param="protocol",
            )
        return query_protocol
    wants_event_stream = _event_stream_wanted(accept) if accept is not None else None
    if wants_event_stream is not None:
        return "ui" if wants_event_stream else DEFAULT_PROTOCOL
    return "ui" if ai_sdk_5_body else DEFAULT_PROTOCOL


def _event_stream_wanted(accept: str) -> bool | None:
    """True when ``Accept`` names ``text/event-stream``, False when it refuses it (``q=0``), None when silent."""
    for media_range in accept.split(","):
        media_type, *params = (piece.strip() for piece in media_range.split(";"))
        if media_type.lower() != _EVENT_STREAM:
            continue
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q" and _is_zero(value.strip()):
                return False
        return True
    return None


def _is_zero(quality: str) -> bool:
    try:
        return float(quality) == 0
    except ValueError:
        return False


__all__ = ["DEFAULT_PROTOCOL", "ENCODERS", "Encoder", "choose_protocol"]
