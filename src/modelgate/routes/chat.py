"""The chat endpoints ``GET /models`` advertises, and their two alias forms.

- ``POST /api/ai/{provider}/{name}/chat``            the advertised form (``endpoints`` of ``/models``)
- ``POST /api/ai/{publisher}/{name}/chat``           the router form
- ``POST /api/ai/huggingface/{publisher}/{name}/chat``

All three resolve through ``Catalogue.resolve_route``, the same table ``/models`` is checked
against at load, so a listed model is always routable. The body is what the AI SDK's ``useChat``
sends (v4: ``content`` strings; v5: ``parts``); unknown fields are ignored. Images come as AI SDK 5 ``file``
parts with an image ``mediaType`` or AI SDK 4 ``experimental_attachments`` (checked by ``images.ImageBudget``).
The reply streams in the protocol the client reads (``encoders.choose_protocol``): what ``?protocol=`` or
``Accept`` asks for, else the UI message stream for an AI SDK 5+ body and the data stream for an AI SDK 4 one.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, fields
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.responses import Response

from modelgate.app import gateway
from modelgate.catalogue import CatalogueModel
from modelgate.chat import ChatRequest, GenerationParams, Image, Message, content_message
from modelgate.encoders import ENCODERS, choose_protocol
from modelgate.errors import BadRequest
from modelgate.gateway import StreamStart
from modelgate.images import ImageBudget
from modelgate.limits import admit
from modelgate.relay_response import RelayResponse
from modelgate.routes.opening import open_for_client
from modelgate.schema import ErrorResponse
from modelgate.settings import Settings
from modelgate.wire import shown_word

router = APIRouter(tags=["chat"])

#: Part types of AI SDK 5 messages that carry no prompt text and are skipped, not refused. ``data-*`` parts
#: (an app's own data) are skipped too, as the AI SDK's ``convertToModelMessages`` skips them by default.
_IGNORED_PART_TYPES = frozenset({"step-start", "reasoning", "source-url", "source-document"})

#: Model parameters a client may add beside the messages (``useChat({ body: { temperature } })``): ours, OpenAI's
#: and the AI SDK's call settings. This route's parameters are the catalogue's (the seed's contract), so these are
#: not used: they are reported as dropped rather than lost.
BODY_PARAMETERS = frozenset(
    {
        *(param.name for param in fields(GenerationParams)),
        "max_tokens",
        "max_completion_tokens",
        "top_k",
        "maxOutputTokens",
        "topP",
        "topK",
        "presencePenalty",
        "frequencyPenalty",
        "stopSequences",
    }
)

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (400, 401, 403, 404, 429, 502, 503, 504)
}


class _IncomingMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: str
    #: The message's id in the client (``UIMessage.id``): a reply continuing an assistant message keeps it.
    id: Any = None
    content: Any = None
    parts: Any = None
    #: AI SDK 4's files of a user message: ``[{"name", "contentType", "url"}]``.
    experimental_attachments: Any = None


class _IncomingBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    messages: list[_IncomingMessage]
    trigger: Any = None

    def is_ai_sdk_5(self) -> bool:
        """Sent by AI SDK 5+ ``useChat``: its transport adds ``trigger``, and its messages carry ``parts``
        only. AI SDK 4.2+ also sends ``parts``, but always beside a ``content`` string: still v4."""
        return self.trigger is not None or any(
            message.parts is not None and not isinstance(message.content, str) for message in self.messages
        )


@dataclass(frozen=True, slots=True)
class ChatBody:
    messages: tuple[Message, ...]
    #: The body came from AI SDK 5+ (it reads only the UI message stream).
    ai_sdk_5: bool
    #: The id of the assistant message the reply continues (the last message is the assistant's), else None.
    continues: str | None = None
    #: Model parameters the body set (``BODY_PARAMETERS``): not used, reported as dropped.
    unused_params: tuple[str, ...] = ()


def _message_parts(index: int, message: _IncomingMessage, budget: ImageBudget) -> list[str | Image]:
    """The texts and images of a message in the order sent: AI SDK 5 ``text`` and ``file`` parts, or AI SDK 4's
    ``content`` then its ``experimental_attachments``."""
    where = f"messages[{index}]"
    attached: list[str | Image] = list(_attachments(where, message, budget))
    if message.content is not None:
        if not isinstance(message.content, str):
            raise BadRequest(f"{where}.content must be a string", data={"field": f"{where}.content"})
        return [message.content, *attached]
    if message.parts is None:
        raise BadRequest(f"{where} has neither content nor parts", data={"field": where})
    if not isinstance(message.parts, list):
        raise BadRequest(f"{where}.parts must be a list", data={"field": f"{where}.parts"})
    parts = attached
    for j, part in enumerate(message.parts):
        kind = part.get("type") if isinstance(part, dict) else None
        if not isinstance(kind, str):  # a list or an object is not hashable: never look it up
            raise BadRequest(f"{where}.parts[{j}] needs a string type", data={"field": f"{where}.parts[{j}].type"})
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise BadRequest(f"{where}.parts[{j}].text must be a string", data={"field": f"{where}.parts[{j}]"})
            parts.append(text)
        elif kind == "file" and message.role == "user":
            parts.append(_image(f"{where}.parts[{j}]", part.get("mediaType"), part.get("url"), budget))
        elif kind in _IGNORED_PART_TYPES or kind.startswith("data-"):
            continue
        elif kind.startswith("tool-") or kind == "dynamic-tool":
            # Dropping them would hide a call and its result from the model; this route declares no tools.
            raise BadRequest(
                f"{where}.parts[{j}]: tool parts are not supported here (this route offers the model no tools); "
                "use /v1/chat/completions with tools",
                data={"field": f"{where}.parts[{j}].type"},
            )
        else:
            raise BadRequest(
                f"{where}.parts[{j}]: part type {shown_word(kind)} is not supported "
                "(only text, and image files from the user)",
                data={"field": f"{where}.parts[{j}].type"},
            )
    return parts


def _attachments(where: str, message: _IncomingMessage, budget: ImageBudget) -> list[Image]:
    files = message.experimental_attachments
    if files is None:
        return []
    if not isinstance(files, list) or message.role != "user":
        raise BadRequest(
            f"{where}.experimental_attachments must be a list, on a user message",
            data={"field": f"{where}.experimental_attachments"},
        )
    return [
        _image(
            f"{where}.experimental_attachments[{j}]",
            file.get("contentType") if isinstance(file, dict) else None,
            file.get("url") if isinstance(file, dict) else None,
            budget,
        )
        for j, file in enumerate(files)
    ]


def _image(where: str, media_type: Any, url: Any, budget: ImageBudget) -> Image:
    # AI SDK 7's FileUIPart.mediaType may be the top-level type alone ("image"), as its providers read it.
    if not isinstance(media_type, str) or media_type.partition("/")[0] != "image":
        raise BadRequest(
            f"{where}: a file is not supported unless it is an image (media type {shown_word(media_type)})",
            data={"field": where},
        )
    if not isinstance(url, str) or not url:
        raise BadRequest(f"{where}.url must be a data: or https: URL", data={"field": f"{where}.url"})
    return budget.image(url, where)


_ROLES = ("system", "user", "assistant")


def _object(required: list[str], properties: dict[str, Any]) -> dict[str, Any]:
    """A JSON Schema object with ``required`` among its ``properties``."""
    return {"type": "object", "required": required, "properties": properties}


_STRING: dict[str, Any] = {"type": "string"}
_IMAGE_MEDIA_TYPE: dict[str, Any] = {"type": "string", "pattern": "^image(/|$)"}

#: The body both routes take, for ``/openapi.json`` (the routes read the raw bytes to give their own messages,
#: so FastAPI cannot derive it): what ``parse_chat_body`` accepts, AI SDK 4 and 5 alike.
_MESSAGE = _object(
    ["role"],
    {
        "role": {"type": "string", "enum": list(_ROLES)},
        "id": {
            "type": "string",
            "description": "AI SDK 5: the message's id; a reply to a conversation ending with an assistant message "
            "continues that message and names its id",
        },
        "content": {"type": "string", "description": "AI SDK 4: the message's text"},
        "parts": {
            "type": "array",
            "description": "AI SDK 5: text parts, and image file parts of a user message (data: or https: URLs); "
            "step-start, reasoning, source and data-* parts are skipped",
            "items": {
                "oneOf": [
                    _object(["type", "text"], {"type": {"const": "text"}, "text": _STRING}),
                    _object(
                        ["type", "mediaType", "url"],
                        {"type": {"const": "file"}, "mediaType": _IMAGE_MEDIA_TYPE, "url": _STRING},
                    ),
                ]
            },
        },
        "experimental_attachments": {
            "type": "array",
            "description": "AI SDK 4: image files of a user message",
            "items": _object(
                ["contentType", "url"], {"name": _STRING, "contentType": _IMAGE_MEDIA_TYPE, "url": _STRING}
            ),
        },
    },
)
AI_SDK_REQUEST_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "title": "AI SDK chat request",
                **_object(
                    ["messages"],
                    {
                        "messages": {"type": "array", "minItems": 1, "items": _MESSAGE},
                        "trigger": {
                            "type": "string",
                            "description": "Sent by AI SDK 5 useChat (submit-message, regenerate-message): the "
                            "reply is then the UI message stream",
                        },
                        "id": {"type": "string", "description": "The chat's id (accepted, not used)"},
                    },
                ),
            }
        }
    },
}


def parse_chat_body(
    raw: bytes,
    *,
    max_messages: int,
    max_image_bytes: int = Settings.max_image_bytes,
    max_images_bytes: int = Settings.max_images_bytes,
) -> ChatBody:
    """The AI SDK body → messages and its SDK generation, or ``BadRequest`` saying exactly what is wrong."""
    try:
        decoded = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if "surrogate in string" in str(exc):  # a "\\ud800" escape: JSON's grammar, but no Unicode text (as /v1)
            raise BadRequest(
                "The request body contains a lone surrogate; send valid Unicode", data={"reason": str(exc)}
            ) from None
        raise BadRequest("The request body is not valid JSON", data={"reason": str(exc)}) from None
    if not isinstance(decoded, dict):
        raise BadRequest("The request body must be a JSON object with a 'messages' list")
    try:
        body = _IncomingBody.model_validate(decoded)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise BadRequest(f"Invalid request body: {field}: {first['msg']}", data={"field": field}) from None
    if not body.messages:
        raise BadRequest("messages must not be empty", data={"field": "messages"})
    if len(body.messages) > max_messages:
        raise BadRequest(
            f"Too many messages: {len(body.messages)} (the limit is {max_messages})",
            data={"field": "messages", "limit": max_messages},
        )
    messages = []
    budget = ImageBudget(max_image_bytes, max_images_bytes)
    for i, message in enumerate(body.messages):
        if message.role not in _ROLES:
            raise BadRequest(
                f"messages[{i}].role {shown_word(message.role)} is not one of {', '.join(_ROLES)}",
                data={"field": f"messages[{i}].role"},
            )
        parts = _message_parts(i, message, budget)
        messages.append(content_message(message.role, parts, separator=""))  # type: ignore[arg-type]
    return ChatBody(
        messages=tuple(messages),
        ai_sdk_5=body.is_ai_sdk_5(),
        continues=_continued_id(body.messages[-1]),
        unused_params=tuple(sorted(name for name in BODY_PARAMETERS if decoded.get(name) is not None)),
    )


#: A client's message id we echo in the stream (and name in log lines): printable ASCII, no spaces.
_MESSAGE_ID = re.compile(r"[!-~]{1,256}")


def _continued_id(last: _IncomingMessage) -> str | None:
    """The id of the assistant message a reply continues: what AI SDK 5+ ``useChat`` posts when the conversation
    ends with the assistant's message (``sendMessage()`` without a message, e.g. to go on after a finish for
    ``length``). Its ``start`` chunk must name that message, as ``streamText().toUIMessageStreamResponse`` does
    (``getResponseUIMessageId``); under a new id ``useChat`` appends a second message holding a copy of the
    first one's parts. AI SDK 4 continues the last assistant message by itself (``processChatResponse``)."""
    if last.role == "assistant" and isinstance(last.id, str) and _MESSAGE_ID.fullmatch(last.id):
        return last.id
    return None


def stream_headers(start: StreamStart) -> dict[str, str]:
    # Dropped catalogue defaults are reported here (unlike on /v1): this endpoint's request *is* the
    # catalogue's parameters (the seed's contract), so they are what the caller asked for.
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "X-Modelgate-Model": start.model.id}
    if start.dropped_params:
        headers["X-Modelgate-Dropped-Params"] = ",".join(start.dropped_params)
    return headers


async def answer(request: Request, model: CatalogueModel, protocol: str | None) -> Response:
    """The reply to a chat request for ``model`` (resolved from the path), in the protocol the client reads."""
    state = gateway(request)
    # The body size and read time are bounded once for every route, by observer.RequestObserver (413/408).
    raw = await request.body()
    settings = state.settings
    incoming = parse_chat_body(
        raw,
        max_messages=settings.max_messages,
        max_image_bytes=settings.max_image_bytes,
        max_images_bytes=settings.max_images_bytes,
    )
    encoder = ENCODERS[choose_protocol(protocol, request.headers.get("accept"), ai_sdk_5_body=incoming.ai_sdk_5)]
    admission = await admit(state, request, model)  # key policy (403), limits (429); held until the reply ends
    chat = ChatRequest(messages=incoming.messages, not_carried=incoming.unused_params)
    start = await open_for_client(request, state, model, chat, admission)
    message_id = incoming.continues or f"msg-{uuid.uuid4().hex[:24]}"
    body: AsyncIterator[bytes] = encoder.encode(start.events, message_id=message_id)
    return RelayResponse(body, media_type=encoder.media_type, headers={**encoder.headers, **stream_headers(start)})


_Protocol = Annotated[
    str | None,
    Query(description="Output stream: data, text, ui or ui-strict; default: ui for an AI SDK 5+ body, else data"),
]
_Ignored = Annotated[str | None, Query(description="Accepted for compatibility; has no effect")]


#: The two route templates (``routes/direct.py`` answers them in front of the framework).
TWO_PART = "/api/ai/{first}/{second}/chat"
THREE_PART = "/api/ai/{provider}/{publisher}/{name}/chat"


@router.post(
    TWO_PART,
    responses=_ERRORS,
    summary="Chat with a catalogue model",
    openapi_extra={"requestBody": AI_SDK_REQUEST_BODY},
)
async def chat(
    request: Request,
    first: str,
    second: str,
    protocol: _Protocol = None,
    chat_id: _Ignored = None,
    is_playground: _Ignored = None,
) -> Response:
    """``first`` is the provider (as advertised) or the publisher; ``second`` the model name."""
    return await answer(request, gateway(request).catalogue.resolve_route(first, second), protocol)


@router.post(
    THREE_PART,
    responses=_ERRORS,
    summary="Chat with a model of a provider",
    openapi_extra={"requestBody": AI_SDK_REQUEST_BODY},
)
async def chat_by_provider_and_publisher(
    request: Request,
    provider: str,
    publisher: str,
    name: str,
    protocol: _Protocol = None,
    chat_id: _Ignored = None,
    is_playground: _Ignored = None,
) -> Response:
    return await answer(request, gateway(request).catalogue.resolve_route(provider, publisher, name), protocol)
