"""The parts of an OpenAI Chat Completions body beyond plain text, and their translation to ``modelgate.chat``:
messages with image parts and tool calls, ``tool`` messages, ``tools``, ``tool_choice`` and ``response_format``.

Shapes follow openai-python's ``types/chat`` (``ChatCompletionMessageParam``, ``ChatCompletionToolParam``,
``ChatCompletionToolChoiceOptionParam``, ``completion_create_params.ResponseFormat``). What a client defines
(tools, schemas) is closed (``extra="forbid"``: a misspelt field is an error, not a silently ignored one);
messages ignore unknown fields, because SDKs send a previous reply's message back as they got it (with
``refusal``, ``annotations``, ``audio``, ``reasoning_content``...). A content part's ``cache_control`` (a
prompt-caching breakpoint) is read, and closed. What a model attached to a reply for itself, a tool call's
``extra_content`` (Gemini's thought signature) and an assistant message's ``reasoning_details`` (OpenRouter's
reasoning blocks), is read as opaque objects, bounded (``wire.opaque_object``), for the upstream to read back.

Image bytes are bounded here, where a ``data:`` URL is first seen (``images.ImageBudget``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from modelgate.chat import (
    CacheBreak,
    Image,
    Message,
    NamedTool,
    ResponseFormat,
    Role,
    Tool,
    ToolCall,
    ToolChoice,
    content_message,
)
from modelgate.errors import BadRequest
from modelgate.images import ImageBudget
from modelgate.wire import MAX_REASONING_DETAILS, MAX_WORD, OpaqueJSON, WireJSON, WireText, unicode_text

_closed = ConfigDict(extra="forbid")
_open = ConfigDict(extra="ignore")

#: OpenAI's rule for function names (and so every SDK's).
FunctionName = Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$", description="Letters, digits, _ and -")]
#: OpenAI's limit on functions per request.
MAX_TOOLS = 128


class ImageURL(BaseModel):
    model_config = _closed

    url: WireText = Field(min_length=1, description="A data: URL (base64) or an https: URL")
    detail: Literal["auto", "low", "high"] | None = None


class CacheControl(BaseModel):
    """A prompt-caching breakpoint (``chat.CacheBreak``) as Roo Code, Cline and OpenRouter's docs send it: Anthropic's
    one type and its two lifetimes (openrouter.ai/docs/features/prompt-caching); anything else is a 400 naming it,
    not a hint passed on for an upstream to refuse."""

    model_config = _closed

    type: Literal["ephemeral"]
    ttl: Literal["5m", "1h"] | None = None


class ContentPart(BaseModel):
    """A text or image part (or an assistant's ``refusal``); other types (``input_audio``, ``file``) are refused
    by name."""

    model_config = _open

    type: str = Field(max_length=MAX_WORD)  # a refusal names it: no longer than a name the API has (``WireWord``)
    text: str | None = None
    refusal: str | None = None
    image_url: ImageURL | None = None
    cache_control: CacheControl | None = None


class FunctionCall(BaseModel):
    model_config = _open

    name: FunctionName
    arguments: WireText = Field(description="The JSON text the model wrote")


class ToolCallParam(BaseModel):
    model_config = _open

    id: WireText = Field(min_length=1, max_length=256)
    type: Literal["function"] = "function"
    function: FunctionCall
    extra_content: OpaqueJSON | None = Field(
        default=None, description="What the model attached to its call (Gemini's thought signature), as received"
    )


class ChatMessage(BaseModel):
    # OpenAI messages carry fields we do not use (annotations, audio, ...): ignored, as compatible servers do.
    model_config = _open

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    #: The participant's name (system, developer, user and assistant messages): sent on where the protocol
    #: has it, else reported as dropped (``ChatRequest.bare_form_losses``).
    name: WireText | None = None
    # An earlier reply's refusal (beside a null content), sent back with the conversation.
    refusal: WireText | None = None
    tool_calls: list[ToolCallParam] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_call_id: WireText | None = Field(default=None, max_length=256)
    function_call: Any = None
    reasoning_details: list[OpaqueJSON] | None = Field(
        default=None,
        max_length=MAX_REASONING_DETAILS,
        description="An assistant message's reasoning blocks (OpenRouter's), as the reply carried them",
    )

    @field_validator("content")
    @classmethod
    def _unicode(cls, value: str | list[ContentPart] | None) -> str | list[ContentPart] | None:
        # Checked once the union is resolved, so the error names `content`, not a union member.
        if isinstance(value, str):
            unicode_text(value)
        elif value is not None:
            for part in value:
                unicode_text(part.type)
                for text in (part.text, part.refusal):
                    if text is not None:
                        unicode_text(text)
        return value


class FunctionDefinition(BaseModel):
    model_config = _closed

    name: FunctionName
    description: WireText | None = None
    parameters: WireJSON | None = Field(default=None, description="The arguments' JSON Schema")
    strict: bool | None = None


class ToolParam(BaseModel):
    model_config = _closed

    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(BaseModel):
    model_config = _closed

    name: FunctionName


class NamedToolChoice(BaseModel):
    model_config = _closed

    type: Literal["function"]
    function: NamedFunction


class JSONSchemaFormat(BaseModel):
    model_config = _closed

    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: WireText | None = None
    schema_: WireJSON | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormatParam(BaseModel):
    model_config = _closed

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None


ToolChoiceParam = Literal["auto", "none", "required"] | NamedToolChoice

#: OpenAI's ``developer`` role is the newer name of ``system`` (o-series models).
_ROLES: Mapping[str, Role] = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
}


def to_messages(
    messages: list[ChatMessage], *, max_messages: int, max_image_bytes: int, max_images_bytes: int
) -> tuple[Message, ...]:
    """The messages as ``modelgate.chat`` has them; images within the limits (``Settings.max_image_bytes`` and
    ``max_images_bytes``, both checked after the body limit ``max_body_bytes``)."""
    if len(messages) > max_messages:
        raise BadRequest(
            f"messages: {len(messages)} messages are more than the limit of {max_messages}",
            param="messages",
            data={"limit": max_messages},
        )
    budget = ImageBudget(max_image_bytes, max_images_bytes)
    converted = tuple(_message(message, f"messages[{index}]", budget) for index, message in enumerate(messages))
    _refuse_orphan_results(converted)
    return converted


def _refuse_orphan_results(messages: tuple[Message, ...]) -> None:
    """A tool result must answer a call made earlier in the conversation (as OpenAI's API requires): providers
    that match results by position or name (Ollama) would otherwise hand the model an answer to nothing."""
    called: set[str] = set()
    for index, message in enumerate(messages):
        called.update(call.id for call in message.tool_calls)
        if message.role == "tool" and message.tool_call_id not in called:
            raise BadRequest(
                f"messages[{index}].tool_call_id: '{message.tool_call_id}' answers no tool call of an earlier "
                "assistant message",
                param="messages",
            )


def _message(message: ChatMessage, where: str, budget: ImageBudget) -> Message:
    if message.role == "function" or message.function_call is not None:
        raise BadRequest(f"{where}: the deprecated function role is not supported; use tools", param="messages")
    role = _ROLES[message.role]
    calls = tuple(
        ToolCall(id=call.id, name=call.function.name, arguments=call.function.arguments, extra=call.extra_content)
        for call in message.tool_calls or ()
    )
    if calls and role != "assistant":
        raise BadRequest(f"{where}.tool_calls: only assistant messages carry tool calls", param="messages")
    details = tuple(message.reasoning_details or ())
    if details and role != "assistant":
        raise BadRequest(f"{where}.reasoning_details: only assistant messages carry them", param="messages")
    if role == "tool":
        if not message.tool_call_id:
            raise BadRequest(f"{where}.tool_call_id: required on a tool message", param="messages")
    elif message.tool_call_id is not None:
        raise BadRequest(f"{where}.tool_call_id: only tool messages carry one", param="messages")
    # OpenAI's tool messages have no name; a function message (which had one) is refused above.
    name = message.name if role != "tool" else None
    content = message.content
    if content is None and role == "assistant" and message.refusal is not None:
        # A refusal is what the assistant said: the provider sees it as the assistant's text.
        content = message.refusal
    if content is None:
        if not calls:
            raise BadRequest(f"{where}.content: required", param="messages")
        return Message(role=role, content="", tool_calls=calls, name=name, reasoning_details=details)
    if isinstance(content, str):
        return Message(
            role=role,
            content=content,
            tool_calls=calls,
            tool_call_id=message.tool_call_id,
            name=name,
            reasoning_details=details,
        )
    parts: list[str | Image | CacheBreak] = []
    for index, part in enumerate(content):
        here = f"{where}.content[{index}]"
        if part.type == "text":
            if part.text is None:
                raise BadRequest(f"{here}.text: required", param="messages")
            parts.append(part.text)
        elif part.type == "refusal" and role == "assistant":
            if part.refusal is None:
                raise BadRequest(f"{here}.refusal: required", param="messages")
            parts.append(part.refusal)
        elif part.type == "image_url" and role == "user":
            if part.image_url is None:
                raise BadRequest(f"{here}.image_url: required", param="messages")
            parts.append(budget.image(part.image_url.url, here, detail=part.image_url.detail))
        else:
            allowed = {"user": "text and image_url", "assistant": "text and refusal"}.get(role, "text")
            raise BadRequest(
                f"{here}: content of type '{part.type}' is not supported in a {message.role} message; send {allowed}",
                param="messages",
            )
        if part.cache_control is not None:
            parts.append(CacheBreak(part.cache_control.ttl))
    # Text parts are separate paragraphs of one message; joined as vLLM's OpenAI server does.
    return content_message(
        role,
        parts,
        separator="\n",
        tool_calls=calls,
        tool_call_id=message.tool_call_id,
        name=name,
        reasoning_details=details,
    )


def to_tools(tools: list[ToolParam] | None) -> tuple[Tool, ...]:
    return tuple(
        Tool(
            name=t.function.name,
            description=t.function.description,
            parameters=t.function.parameters,
            strict=t.function.strict,
        )
        for t in tools or ()
    )


def to_tool_choice(choice: ToolChoiceParam | None, tools: tuple[Tool, ...]) -> ToolChoice | None:
    """A named function must be one of ``tools``; ``required`` or a name without tools is an error (as OpenAI's)."""
    if choice is None or (not tools and choice in ("auto", "none")):
        return None
    if not tools:
        raise BadRequest("tool_choice: only allowed when tools are given", param="tool_choice")
    if isinstance(choice, NamedToolChoice):
        name = choice.function.name
        if name not in {t.name for t in tools}:
            raise BadRequest(f"tool_choice: '{name}' is not one of the tools", param="tool_choice")
        return NamedTool(name)
    return choice


def to_response_format(value: ResponseFormatParam | None) -> ResponseFormat | None:
    if value is None or value.type == "text":
        return None
    if value.type == "json_object":
        return ResponseFormat(type="json_object")
    spec = value.json_schema
    if spec is None:
        raise BadRequest("response_format.json_schema: required for type json_schema", param="response_format")
    return ResponseFormat(
        type="json_schema", schema=spec.schema_, name=spec.name, description=spec.description, strict=spec.strict
    )
