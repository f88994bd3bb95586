"""What a reasoning model attached to its reply for itself, packed into one ``/v1/responses`` reasoning item's
``encrypted_content`` and read back from it on the next turn.

The Responses API has one field for opaque reasoning a client hands back, ``encrypted_content``
(``ResponseReasoningItem``), and none on a ``function_call`` item: typed clients keep no unknown field there (Codex's
``ResponseItem::FunctionCall`` is id, name, arguments, call_id; its ``ResponseItem::Reasoning`` keeps
``encrypted_content`` and replays it, ``codex-rs/protocol/src/models.rs``). So both kinds of round-trip data travel in
it: the reply's reasoning blocks (OpenRouter's ``reasoning_details``, ``Message.reasoning_details``) and each tool
call's ``extra_content`` (Gemini's thought signature, ``ToolCall.extra``), keyed by the call's ``call_id``.

The token: ``PREFIX`` then the base64url (unpadded) JSON ``{"details": [...], "calls": {call_id: {...}}}``. Not
encrypted nor signed: it holds what ``/v1/chat/completions`` hands the client in the clear, and the upstream checks its
own signatures. The prefix tells our tokens from another server's (OpenAI's own encrypted reasoning, from a
conversation begun there); ``decode`` holds ours to the bounds of the fields they stand for (``wire.opaque_object``
each, ``MAX_REASONING_DETAILS`` blocks, ``MAX_CARRIED_CALLS`` calls) and never quotes them in its reasons.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from modelgate.chat import ReasoningDetail
from modelgate.wire import MAX_REASONING_DETAILS, opaque_object

#: The version is in the prefix: a later format gets a new one, and this one stays readable.
PREFIX = "mg1."
#: The most tool calls one token speaks for: as many as a reply may make (``chat_completions.MAX_TOOL_CALLS``).
MAX_CARRIED_CALLS = 1024
#: The longest call id kept, as an input item's ``call_id`` is held to.
_MAX_CALL_ID = 256


@dataclass(frozen=True, slots=True)
class Carried:
    """One reply's round-trip data: its reasoning blocks in order, and each tool call's ``extra_content``."""

    details: tuple[ReasoningDetail, ...] = ()
    calls: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.details or self.calls)


def encode(carried: Carried) -> str:
    body: dict[str, Any] = {}
    if carried.details:
        body["details"] = list(carried.details)
    if carried.calls:
        body["calls"] = dict(carried.calls)
    return PREFIX + base64.urlsafe_b64encode(orjson.dumps(body)).rstrip(b"=").decode()


def made_here(token: str) -> bool:
    return token.startswith(PREFIX)


def decode(token: str) -> Carried:
    """The data of a token ``encode`` made; ``ValueError`` saying what is wrong with it, never quoting it."""
    packed = token[len(PREFIX) :]
    try:
        body = orjson.loads(base64.urlsafe_b64decode(packed + "=" * (-len(packed) % 4)))
    except (binascii.Error, ValueError):
        raise ValueError("it is not base64url of JSON, as modelgate writes it") from None
    if not isinstance(body, dict) or not set(body) <= {"details", "calls"}:
        raise ValueError("it does not hold what modelgate writes (details, calls)")
    details, calls = body.get("details", []), body.get("calls", {})
    if not isinstance(details, list) or len(details) > MAX_REASONING_DETAILS:
        raise ValueError(f"its details are not a list of at most {MAX_REASONING_DETAILS} reasoning blocks")
    if not isinstance(calls, dict) or len(calls) > MAX_CARRIED_CALLS:
        raise ValueError(f"its calls are not an object of at most {MAX_CARRIED_CALLS} calls")
    if any(len(call_id) > _MAX_CALL_ID for call_id in calls):
        raise ValueError(f"a call id is longer than {_MAX_CALL_ID} characters")
    try:
        return Carried(
            details=tuple(opaque_object(detail) for detail in details),
            calls={call_id: opaque_object(extra) for call_id, extra in calls.items()},
        )
    except (TypeError, ValueError) as exc:
        raise ValueError(f"a reasoning block or a call's extra_content: {exc}") from None
