"""``POST /v1/responses``: OpenAI's Responses API, stateless, over the same path as ``/v1/chat/completions``.

The request becomes a ``ChatRequest`` and goes through ``routes.openai.open_reply`` (the catalogue resolver,
keys, policy, limits, ``gateway.open_stream`` with its retries, fallbacks and metrics); the events come back
through ``encoders.responses``. Errors are ``modelgate.errors`` raised here, rendered in OpenAI's
``{"error": {...}}`` shape by ``app.py`` as for every ``/v1`` path.

Stateless: nothing is stored, so whatever needs an earlier response (``store: true``,
``previous_response_id``, ``conversation``, ``item_reference`` items, ``background``, stored ``prompt``s) is
a 400 that says so. An absent ``store`` means "not stored": OpenAI's server default is ``true``, but the
SDKs leave the field out, and refusing every request that does not say ``store: false`` would refuse nearly
all of them for a promise nobody asked us to keep. Features the chat types cannot carry yet (tools,
structured output, images, files) are a 400 naming the field and the model: never silently ignored.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response, StreamingResponse

from modelgate.catalogue import CatalogueModel
from modelgate.chat import ChatRequest, Message, Role
from modelgate.encoders.openai import USAGE_HEADER
from modelgate.encoders.responses import HEADERS as STREAM_HEADERS
from modelgate.encoders.responses import MEDIA_TYPE as STREAM_MEDIA_TYPE
from modelgate.encoders.responses import ResponseHead, ResponseStreamEncoder, collect_response
from modelgate.errors import BadRequest
from modelgate.routes.openai import call_params, open_reply

router = APIRouter(tags=["OpenAI compatible"])

JSON = "application/json"

#: Our ``GenerationParams`` fields → this API's request fields (the Chat Completions route has its own).
RESPONSES_PARAMS: Mapping[str, tuple[str, ...]] = {
    "max_new_tokens": ("max_output_tokens",),
    "temperature": ("temperature",),
    "top_p": ("top_p",),
}

_NOT_STORED = "responses are not stored"
#: ``developer`` is the newer name of ``system``.
_ROLES: Mapping[str, Role] = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
#: Content parts that carry text: the caller's (``input_text``) and an earlier answer's (``output_text``).
_TEXT_PARTS = frozenset({"input_text", "output_text", "text"})
_MEDIA_PARTS = {"input_image": "image", "input_file": "file", "input_audio": "audio"}
#: Input items of tool calls and their results (``ResponseInputItem``): not carried until tools are.
_TOOL_ITEMS = frozenset(
    {
        "function_call",
        "function_call_output",
        "custom_tool_call",
        "custom_tool_call_output",
        "computer_call",
        "computer_call_output",
        "file_search_call",
        "web_search_call",
        "code_interpreter_call",
        "image_generation_call",
        "local_shell_call",
        "local_shell_call_output",
        "shell_call",
        "shell_call_output",
        "apply_patch_call",
        "apply_patch_call_output",
        "mcp_call",
        "mcp_list_tools",
        "mcp_approval_request",
        "mcp_approval_response",
        "tool_search_call",
        "tool_search_output",
    }
)


# --- the request ----------------------------------------------------------------------------------


class InputPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str
    text: str | None = None
    refusal: str | None = None


class InputItem(BaseModel):
    """A message (``EasyInputMessage``, ``Message``, an earlier ``ResponseOutputMessage``) or another item;
    only ``type`` and the message fields are read (ids, status, phase are ignored)."""

    model_config = ConfigDict(extra="ignore")

    type: str | None = None
    role: str | None = None
    content: str | list[InputPart] | None = None


class TextFormat(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str


class TextConfig(BaseModel):
    model_config = ConfigDict(extra="ignore")

    format: TextFormat | None = None
    verbosity: str | None = None


class ReasoningConfig(BaseModel):
    model_config = ConfigDict(extra="ignore")

    effort: str | None = None
    summary: str | None = None
    generate_summary: str | None = None


class ResponsesRequest(BaseModel):
    """OpenAI's ``ResponseCreateParams``. Unknown fields are ignored, as on ``/v1/chat/completions``; the ones
    below that we cannot honour are declared only to be refused (``refuse_stateful``, ``_refuse_unsupported``)."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, description="A catalogue id, publisher/name")
    input: str | list[InputItem] = Field(description="A user message, or message items with text content")
    instructions: str | None = Field(default=None, description="Sent as a system message before the input")
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stream: bool = False
    metadata: dict[str, str] | None = Field(default=None, description="Echoed in the response; not forwarded")
    user: str | None = Field(default=None, description="Accepted; not forwarded to providers")
    parallel_tool_calls: bool | None = None
    store: bool | None = Field(default=None, description="Only false (or absent): responses are not stored")
    previous_response_id: str | None = None
    conversation: Any = None
    background: bool | None = None
    prompt: Any = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    text: TextConfig | None = None
    reasoning: ReasoningConfig | None = None
    include: list[str] | None = None
    top_logprobs: int | None = None
    truncation: str | None = None


def refuse_stateful(body: ResponsesRequest) -> None:
    """Whatever needs a stored response is a 400 before anything else is done."""
    refusals: list[tuple[str, bool, str]] = [
        ("store", body.store is True, f"{_NOT_STORED}; send store: false or leave it out"),
        (
            "previous_response_id",
            body.previous_response_id is not None,
            f"{_NOT_STORED}, so there is no earlier response to continue; send the whole conversation as input",
        ),
        ("conversation", body.conversation is not None, f"{_NOT_STORED}; conversations are not supported"),
        ("background", body.background is True, f"{_NOT_STORED}; background responses are not supported"),
        ("prompt", body.prompt is not None, "stored prompts are not supported; send the instructions and input"),
    ]
    for param, refused, reason in refusals:
        if refused:
            raise BadRequest(f"{param}: {reason}", param=param)


def _refuse_unsupported(body: ResponsesRequest, model: CatalogueModel) -> None:
    """What the chat types cannot carry yet: a 400 naming the field and the model, never ignored."""
    named = f"(model '{model.id}')"
    text_format = body.text.format.type if body.text is not None and body.text.format is not None else "text"
    reasoning = body.reasoning
    refusals: list[tuple[str, bool, str]] = [
        ("tools", bool(body.tools), f"tools are not supported yet {named}"),
        ("tool_choice", body.tool_choice not in (None, "auto", "none"), f"tools are not supported yet {named}"),
        (
            "text.format",
            text_format != "text",
            f"structured output ({text_format}) is not supported yet {named}; use {{'type': 'text'}}",
        ),
        ("text.verbosity", body.text is not None and body.text.verbosity is not None, f"not supported {named}"),
        (
            "reasoning",
            reasoning is not None and any((reasoning.effort, reasoning.summary, reasoning.generate_summary)),
            f"reasoning options (effort, summary) are not supported {named}",
        ),
        ("include", bool(body.include), f"{', '.join(body.include or ())}: cannot be included {named}"),
        ("top_logprobs", body.top_logprobs is not None, f"log probabilities are not supported {named}"),
        ("truncation", body.truncation not in (None, "disabled"), "only 'disabled' is supported (input is not cut)"),
    ]
    for param, refused, reason in refusals:
        if refused:
            raise BadRequest(f"{param}: {reason}", param=param)


def _messages(body: ResponsesRequest, model: CatalogueModel, max_messages: int) -> tuple[Message, ...]:
    messages: list[Message] = []
    if body.instructions is not None:
        messages.append(Message(role="system", content=body.instructions))
    if isinstance(body.input, str):
        messages.append(Message(role="user", content=body.input))
    else:
        for index, item in enumerate(body.input):
            message = _item_message(item, f"input[{index}]", model)
            if message is not None:
                messages.append(message)
    if not any(message.role != "system" for message in messages):
        raise BadRequest("input: at least one message is required", param="input")
    if len(messages) > max_messages:
        raise BadRequest(
            f"input: {len(messages)} messages are more than the limit of {max_messages}",
            param="input",
            data={"limit": max_messages},
        )
    return tuple(messages)


def _item_message(item: InputItem, where: str, model: CatalogueModel) -> Message | None:
    kind = item.type or "message"
    if kind == "reasoning":
        # An earlier answer's reasoning, passed back with ``response.output``: models do not read their old
        # reasoning (OpenAI drops it from later turns too), and the chat types have no place for it.
        return None
    if kind == "item_reference":
        raise BadRequest(
            f"{where}: item_reference: {_NOT_STORED}, so earlier items cannot be referenced; send the items "
            "themselves (AI SDK: providerOptions.openai.store = false)",
            param="input",
        )
    if kind in _TOOL_ITEMS:
        raise BadRequest(f"{where}: {kind} items: tools are not supported yet (model '{model.id}')", param="input")
    if kind != "message":
        raise BadRequest(f"{where}: items of type '{kind}' are not supported", param="input")
    role = _ROLES.get(item.role or "")
    if role is None:
        raise BadRequest(f"{where}.role: must be one of {', '.join(_ROLES)}, got {item.role!r}", param="input")
    return Message(role=role, content=_content_text(item.content, where, model))


def _content_text(content: str | list[InputPart] | None, where: str, model: CatalogueModel) -> str:
    if content is None:
        raise BadRequest(f"{where}.content: required", param="input")
    if isinstance(content, str):
        return content
    texts = []
    for index, part in enumerate(content):
        at = f"{where}.content[{index}]"
        if part.type in _MEDIA_PARTS:
            raise BadRequest(
                f"{at}: {part.type}: {_MEDIA_PARTS[part.type]} input is not supported yet (model '{model.id}')",
                param="input",
            )
        if part.type == "refusal":  # an earlier answer's refusal is what the assistant said
            text = part.refusal
        elif part.type in _TEXT_PARTS:
            text = part.text
        else:
            raise BadRequest(f"{at}: content of type '{part.type}' is not supported; send input_text", param="input")
        if text is None:
            raise BadRequest(f"{at}: the part has no text", param="input")
        texts.append(text)
    # Parts are paragraphs of one message, joined as /v1/chat/completions joins text parts.
    return "\n".join(texts)


def to_chat_request(body: ResponsesRequest, model: CatalogueModel, *, max_messages: int) -> ChatRequest:
    _refuse_unsupported(body, model)
    return ChatRequest(messages=_messages(body, model, max_messages), params=call_params(body, model, RESPONSES_PARAMS))


# --- the route ------------------------------------------------------------------------------------


@router.post("/v1/responses", summary="Create a model response (OpenAI Responses API, stateless), streamed or not")
async def create_response(body: ResponsesRequest, request: Request) -> Response:
    refuse_stateful(body)
    start, headers = await open_reply(
        request,
        body,
        body.model,
        lambda model, max_messages: to_chat_request(body, model, max_messages=max_messages),
        RESPONSES_PARAMS,
    )
    head = ResponseHead.new(
        start.model.id,
        int(time.time()),
        instructions=body.instructions,
        max_output_tokens=body.max_output_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        tool_choice=body.tool_choice if body.tool_choice in ("auto", "none") else "auto",
        parallel_tool_calls=body.parallel_tool_calls is not False,
        metadata=body.metadata,
        user=body.user,
    )
    provider = start.model.provider
    if body.stream:
        encoder = ResponseStreamEncoder(head, provider=provider)
        return StreamingResponse(
            encoder.encode(start.events), media_type=STREAM_MEDIA_TYPE, headers={**STREAM_HEADERS, **headers}
        )
    response = await collect_response(start.events, head, provider=provider)
    if (response.get("usage") or {}).get("estimated"):
        headers[USAGE_HEADER] = "estimated"
    return Response(orjson.dumps(response), media_type=JSON, headers=headers)
