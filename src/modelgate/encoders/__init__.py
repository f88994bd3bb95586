"""Output encoders: StreamEvents → the bytes of one client protocol.

``ENCODERS`` holds the Vercel AI SDK protocols the ``/api/ai/...`` chat routes speak, by the name
``?protocol=`` selects; each module names the SDK version it is pinned to:

* ``data`` (default) data stream protocol v1, AI SDK 4 ``useChat`` (``encoders/data.py``)
* ``text``           plain text stream (``encoders/text.py``)
* ``ui``             UI message stream v1 over SSE, AI SDK 5+ ``useChat`` (``encoders/ui.py``)

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
    {"data": DataStreamEncoder(), "text": TextStreamEncoder(), "ui": UIMessageStreamEncoder()}
)

_EVENT_STREAM = "text/event-stream"


def choose_protocol(query_protocol: str | None, accept: str | None) -> str:
    """The protocol for one request: ``?protocol=`` wins; else ``Accept: text/event-stream`` means ``ui``
    (what AI SDK 5's transport reads); else ``data``, what the original front-end's ``useChat`` expects."""
    if query_protocol is not None:
        if query_protocol not in ENCODERS:
            raise BadRequest(
                f"Unknown protocol {query_protocol!r} (use one of: {', '.join(sorted(ENCODERS))})",
                data={"field": "protocol", "allowed": sorted(ENCODERS)},
                param="protocol",
            )
        return query_protocol
    if accept is not None and _accepts_event_stream(accept):
        return "ui"
    return DEFAULT_PROTOCOL


def _accepts_event_stream(accept: str) -> bool:
    for media_range in accept.split(","):
        media_type, *params = (piece.strip() for piece in media_range.split(";"))
        if media_type.lower() != _EVENT_STREAM:
            continue
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q" and _is_zero(value.strip()):
                return False  # explicitly refused (q=0)
        return True
    return False


def _is_zero(quality: str) -> bool:
    try:
        return float(quality) == 0
    except ValueError:
        return False


__all__ = ["DEFAULT_PROTOCOL", "ENCODERS", "Encoder", "choose_protocol"]
