"""The ``POST /v1/responses`` body (OpenAI's ``ResponseCreateParams``) and its translation to ``modelgate.chat``.

Function tools, ``tool_choice``, ``text.format`` and ``input_image`` parts become the chat types
``/v1/chat/completions`` builds (``Tool``, ``ToolChoice``, ``ResponseFormat``, ``Image``, within the same image
limits); ``function_call`` / ``function_call_output`` items become an assistant message's ``tool_calls`` and
``tool`` messages. A call's output may hold images (Codex's ``view_image`` answers so): chat tool messages take only
text, so they follow the call results in a user message that names the call. So every provider kind handles them
as it does for Chat Completions, and a model without the capability gets the same 400 naming it. Shapes follow
openai-python's ``types/responses`` (3.57): tools are flat (``{"type": "function", "name", "parameters", ...}``),
not nested under ``function``.

Stateless: whatever needs a stored response (``store: true``, ``previous_response_id``, ``conversation``,
``item_reference`` items, ``background``, stored ``prompt``s) is a 400 that says so. An absent ``store`` means
"not stored": OpenAI's server default is ``true``, but the SDKs leave the field out, and refusing every request
that does not say ``store: false`` would refuse nearly all of them for a promise nobody asked us to keep. What
the chat types cannot carry (hosted tools such as ``web_search``, files, audio) is a 400 naming the field and
the model: never silently ignored. ``reasoning.effort`` is Chat Completions' ``reasoning_effort``: every provider
kind sends it in its own form or reports it as dropped.

What a reasoning model attached to its reply for itself (OpenRouter's reasoning blocks, Gemini's thought signatures
on tool calls) comes back in a replayed ``reasoning`` item's ``encrypted_content``, a token modelgate made
(``modelgate.reasoning_token``), and goes back on the assistant message and its calls (``_RoundTrip``). The
``reasoning.encrypted_content`` ``include`` is honoured: such a token comes whenever a reply has any (asked or not,
``encoders.responses``). Other reasoning items (their text, another server's ``encrypted_content``) are not replayed:
the chat types have no place for them.

Extra output no provider kind makes, whose absence leaves the answer as asked, is accepted and reported as
dropped (``unmade_extras``): a reasoning summary (``reasoning.summary``, Codex sends ``auto``) and
``text.verbosity: "medium"`` (OpenAI's default). Other ``include`` values and verbosities are refused: they ask for
data or an answer the client would not get.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from modelgate.catalogue import CatalogueModel
from modelgate.chat import (
    CacheBreak,
    ChatRequest,
    Image,
    Message,
    ReasoningDetail,
    ReasoningEffort,
    ResponseFormat,
    Role,
    Tool,
    ToolCall,
    ToolChoice,
    content_message,
)
from modelgate.errors import BadRequest
from modelgate.images import ImageBudget
from modelgate.reasoning_token import decode, made_here
from modelgate.routes.openai_input import (
    MAX_TOOLS,
    CacheControl,
    FunctionName,
    NamedFunction,
    NamedToolChoice,
    to_tool_choice,
)
from modelgate.routes.openai_request import (
    DEFAULT_VERBOSITY,
    SERVER_HINTS,
    ServerHints,
    call_params,
    field_names,
    not_carried,
)
from modelgate.settings import Settings
from modelgate.wire import MAX_REASONING_DETAILS, WireJSON, WireText, WireWord

#: Our ``GenerationParams`` fields → this API's request fields (the Chat Completions route has its own).
RESPONSES_PARAMS: Mapping[str, tuple[str, ...]] = {
    "max_new_tokens": ("max_output_tokens",),
    "temperature": ("temperature",),
    "top_p": ("top_p",),
    "reasoning_effort": ("reasoning.effort",),
}

#: Fields reported as dropped: the server hints both APIs share, and two Responses has (``metadata`` is not here:
#: it is echoed in the response, as OpenAI's).
NOT_CARRIED = (*SERVER_HINTS, "access_programs", "image")
#: The one ``include`` value accepted: the reasoning for its maker to read back in a later turn, which is what Codex
#: asks beside every ``reasoning`` (``codex-rs/core/src/client.rs``): modelgate's token (``reasoning_token``).
ENCRYPTED_REASONING = "reasoning.encrypted_content"
#: A replayed reasoning item's ``encrypted_content`` made by another server, named dropped (``_RoundTrip``).
_FOREIGN_REASONING = "input.reasoning.encrypted_content"
#: The reasoning fields accepted and reported: summaries (and their deprecated name) no provider kind makes.
_SUMMARY_FIELDS = ("summary", "generate_summary")

_NOT_STORED = "responses are not stored"
#: What a tool message whose output had images says of them: they are in the next user message.
_IMAGES_FOLLOW = "(The image output follows in the next user message.)"
#: ``developer`` is the newer name of ``system``.
_ROLES: Mapping[str, Role] = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
#: Content parts that carry text: the caller's (``input_text``) and an earlier answer's (``output_text``).
_TEXT_PARTS = frozenset({"input_text", "output_text", "text"})
#: Content parts the chat types have no place for.
_MEDIA_PARTS = {"input_file": "file", "input_audio": "audio"}
#: ``input_image`` ``detail`` values the providers' protocols have (OpenAI's newer ``original`` is not one).
_DETAILS = frozenset({"auto", "low", "high"})
#: Input items of hosted and custom tools' calls and results (``ResponseInputItem``): only function tools are
#: carried.
_TOOL_ITEMS = frozenset(
    {
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


#: Where a client known to send such a tool by default turns it off: Codex sends the hosted ``web_search`` unless told
#: not to (the ``cached`` default).
_TOOL_SETTINGS: Mapping[str, str] = {"web_search": ' (Codex: web_search = "disabled" in config.toml)'}


class InputPart(BaseModel):
    """``ResponseInputText``/``ResponseOutputText``/``ResponseInputImage``/…: the fields of the parts we carry."""

    model_config = ConfigDict(extra="ignore")

    type: WireWord
    text: WireText | None = None
    refusal: WireText | None = None
    image_url: WireText | None = Field(default=None, description="A data: URL (base64) or an https: URL")
    detail: WireWord | None = None
    file_id: WireText | None = None
    #: A prompt-caching breakpoint, as OpenRouter's Responses API takes it on a content block.
    cache_control: CacheControl | None = None


def _text_or_list(value: Any) -> str:
    return "str" if isinstance(value, str) else "list"  # type names: error locations drop them (app._field)


#: A string or a list of parts, validated as the one it is: an error names that one, not both union members.
TextOrParts = Annotated[
    Annotated[WireText, Tag("str")] | Annotated[list[InputPart], Tag("list")], Discriminator(_text_or_list)
]


class InputItem(BaseModel):
    """A message (``EasyInputMessage``, ``Message``, an earlier ``ResponseOutputMessage``), a ``function_call``
    (``ResponseFunctionToolCall``), a ``function_call_output`` or another item; only ``type``, the message
    fields and the function call fields are read (ids, status, phase are ignored)."""

    model_config = ConfigDict(extra="ignore")

    type: WireWord | None = None
    role: WireWord | None = None
    content: TextOrParts | None = None
    call_id: WireText | None = Field(default=None, max_length=256)
    #: A function call's name: held to OpenAI's pattern, as on /v1/chat/completions (it is sent upstream).
    name: FunctionName | None = None
    arguments: WireText | None = Field(default=None, description="The JSON text the model wrote")
    output: TextOrParts | None = Field(default=None, description="A function call's result")
    #: A ``reasoning`` item's opaque reasoning: modelgate's own token (``modelgate.reasoning_token``) is read back.
    encrypted_content: WireText | None = None


TextOrItems = Annotated[
    Annotated[WireText, Tag("str")] | Annotated[list[InputItem], Tag("list")], Discriminator(_text_or_list)
]


class ToolParam(BaseModel):
    """``FunctionTool``, flat (not nested under ``function`` as in Chat Completions), or a ``namespace`` of them.
    Other tool types (``web_search``, ``file_search``, ``mcp``, …) parse here only to be refused by name; the
    function tool fields we cannot carry (``defer_loading``, ``output_schema``, …) are kept as extras to be
    refused."""

    model_config = ConfigDict(extra="allow")

    type: WireWord
    name: FunctionName | None = None
    description: WireText | None = None
    parameters: WireJSON | None = Field(default=None, description="The arguments' JSON Schema")
    strict: bool | None = None
    #: A ``namespace``'s own tools (``NamespaceToolParam``; Codex sends its sub-agent tools so).
    tools: list[ToolParam] | None = Field(default=None, max_length=MAX_TOOLS)


class ToolChoiceParam(BaseModel):
    """``ToolChoiceFunction`` (``{"type": "function", "name": …}``); other types are refused by name."""

    model_config = ConfigDict(extra="allow")

    type: WireWord
    name: FunctionName | None = None


class TextFormat(BaseModel):
    """``ResponseFormatTextConfig``: ``text``, ``json_object``, or ``json_schema`` with its fields flat."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    type: Literal["text", "json_object", "json_schema"]
    name: WireText | None = Field(default=None, pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: WireText | None = None
    schema_: WireJSON | None = Field(default=None, alias="schema")
    strict: bool | None = None


class TextConfig(BaseModel):
    model_config = ConfigDict(extra="ignore")

    format: TextFormat | None = None
    verbosity: WireWord | None = None


class ReasoningConfig(BaseModel):
    """OpenAI's ``Reasoning``: ``effort`` is carried; ``summary`` (and the deprecated ``generate_summary``) is
    reported as dropped; any field a newer SDK adds is kept only to be refused."""

    model_config = ConfigDict(extra="allow")

    effort: ReasoningEffort | None = None
    summary: WireText | None = None
    generate_summary: WireText | None = None


class ResponsesRequest(ServerHints):
    """OpenAI's ``ResponseCreateParams``. Unknown fields are named as dropped, as on ``/v1/chat/completions``;
    the ones below that we cannot honour are declared only to be refused (``refuse_stateful``,
    ``_refuse_unsupported``)."""

    model_config = ConfigDict(extra="allow")

    model: WireText = Field(min_length=1, description="A catalogue id, publisher/name")
    input: TextOrItems = Field(
        description="A user message, or items: messages (text, images), function_call, function_call_output"
    )
    instructions: WireText | None = Field(default=None, description="Sent as a system message before the input")
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stream: bool | None = Field(default=False, description="null is false, as the SDKs' types allow")
    metadata: dict[WireText, WireText] | None = Field(default=None, description="Echoed in the response; not forwarded")
    parallel_tool_calls: bool | None = None
    store: bool | None = Field(default=None, description="Only false (or absent): responses are not stored")
    previous_response_id: WireText | None = None
    conversation: Any = None
    background: bool | None = None
    background_options: Any = None
    prompt: Any = None
    tools: list[ToolParam] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: Literal["auto", "none", "required"] | ToolChoiceParam | None = None
    text: TextConfig | None = None
    reasoning: ReasoningConfig | None = None
    cache_control: CacheControl | None = Field(
        default=None, description="Automatic prompt caching, as OpenRouter's Responses API takes it"
    )
    include: list[WireText] | None = None
    max_tool_calls: int | None = None
    top_logprobs: int | None = None
    truncation: WireText | None = None
    context_management: Any = None
    moderation: Any = None
    # Accepted only so that they can be reported as dropped (``NOT_CARRIED``).
    image: Any = None
    access_programs: Any = None


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
        (
            "background_options",
            body.background_options is not None,
            f"{_NOT_STORED}; background responses are not supported",
        ),
        ("prompt", body.prompt is not None, "stored prompts are not supported; send the instructions and input"),
    ]
    for param, refused, reason in refusals:
        if refused:
            raise BadRequest(f"{param}: {reason}", param=param)


def _refuse_unsupported(body: ResponsesRequest, model: CatalogueModel) -> None:
    """What the chat types cannot carry: a 400 naming the field and the model, never ignored."""
    named = f"(model '{model.id}')"
    reasoning = body.reasoning or ReasoningConfig()
    verbosity = body.text.verbosity if body.text is not None else None
    uncarried = sorted(value for value in body.include or () if value != ENCRYPTED_REASONING)
    refusals: list[tuple[str, bool, str]] = [
        (
            "text.verbosity",
            verbosity not in (None, DEFAULT_VERBOSITY),
            f"'{verbosity}' is not supported {named}; only the default, '{DEFAULT_VERBOSITY}'",
        ),
        *(
            (f"reasoning.{name}", value is not None, f"not supported {named}; only reasoning.effort is carried")
            for name, value in (reasoning.model_extra or {}).items()
        ),
        (
            "max_tool_calls",
            body.max_tool_calls is not None,
            f"no provider can be held to a number of tool calls {named}",
        ),
        ("include", bool(uncarried), f"{', '.join(uncarried)}: cannot be included {named}"),
        ("top_logprobs", body.top_logprobs is not None, f"log probabilities are not supported {named}"),
        ("truncation", body.truncation not in (None, "disabled"), "only 'disabled' is supported (input is not cut)"),
        ("context_management", body.context_management is not None, f"input is not compacted {named}"),
        ("moderation", body.moderation is not None, f"moderation is not supported {named}"),
    ]
    for param, refused, reason in refusals:
        if refused:
            raise BadRequest(f"{param}: {reason}", param=param)


def unmade_extras(body: ResponsesRequest) -> tuple[str, ...]:
    """Extra output the request asks for that no provider kind makes and whose absence leaves the answer as asked
    (the rest is refused by ``_refuse_unsupported``): named in the dropped-parameters header."""
    reasoning = body.reasoning or ReasoningConfig()
    summaries = tuple(f"reasoning.{name}" for name in _SUMMARY_FIELDS if getattr(reasoning, name) is not None)
    verbosity = ("text.verbosity",) if body.text is not None and body.text.verbosity is not None else ()
    return summaries + verbosity


def to_tools(body: ResponsesRequest, model: CatalogueModel) -> tuple[Tool, ...]:
    """The function tools, a ``namespace``'s among them under their own names: the chat types have no namespaces,
    and a call names its namespace again on the way back (``tool_namespaces``). So each name must be one tool's."""
    tools: list[Tool] = []
    named: dict[str, str] = {}
    for where, param in _functions(body.tools or ()):
        tool = _function_tool(param, where, model)
        if tool.name in named:
            raise BadRequest(
                f"{where}.name: '{tool.name}' is also {named[tool.name]}; a call could not tell them apart",
                param="tools",
            )
        named[tool.name] = where
        tools.append(tool)
    if len(tools) > MAX_TOOLS:
        raise BadRequest(
            f"tools: {len(tools)} functions (with those in namespaces) are more than the limit of {MAX_TOOLS}",
            param="tools",
        )
    return tuple(tools)


def _functions(params: Sequence[ToolParam]) -> list[tuple[str, ToolParam]]:
    """Each tool with where it was sent; a namespace stands for its own tools."""
    found: list[tuple[str, ToolParam]] = []
    for index, param in enumerate(params):
        where = f"tools[{index}]"
        if param.type != "namespace":
            found.append((where, param))
            continue
        if param.name is None:
            raise BadRequest(f"{where}.name: required", param="tools")
        if not param.tools:
            raise BadRequest(f"{where}.tools: a namespace needs at least one tool", param="tools")
        # A namespace is its name, description and tools (``NamespaceToolParam``): anything more is not ignored.
        extras = {**(param.model_extra or {}), "parameters": param.parameters, "strict": param.strict}
        unsupported = sorted(name for name, value in extras.items() if value is not None)
        if unsupported:
            raise BadRequest(f"{where}: {field_names(unsupported)}: not a namespace's field", param="tools")
        found += [(f"{where}.tools[{inner}]", tool) for inner, tool in enumerate(param.tools)]
    return found


def _function_tool(tool: ToolParam, where: str, model: CatalogueModel) -> Tool:
    if tool.type != "function":
        raise BadRequest(
            f"{where}: tools of type '{tool.type}' are not supported (model '{model.id}'); send function tools"
            + _TOOL_SETTINGS.get(tool.type, ""),
            param="tools",
        )
    if tool.name is None:
        raise BadRequest(f"{where}.name: required", param="tools")
    extras = {**(tool.model_extra or {}), "tools": tool.tools}
    unsupported = sorted(name for name, value in extras.items() if value is not None)
    if unsupported:
        raise BadRequest(f"{where}: {field_names(unsupported)}: not supported (model '{model.id}')", param="tools")
    return Tool(name=tool.name, description=tool.description, parameters=tool.parameters, strict=tool.strict)


def _namespace_description(body: ResponsesRequest) -> tuple[str, ...]:
    """A namespace's own description has no place among chat tools (each function keeps its own): named dropped."""
    described = any(tool.type == "namespace" and tool.description for tool in body.tools or ())
    return ("tools.namespace.description",) if described else ()


def tool_namespaces(body: ResponsesRequest) -> dict[str, str]:
    """The namespace of each function offered in one: its calls name it (``ResponseFunctionToolCall.namespace``),
    which is how Codex finds the tool (``ToolName::new(namespace, name)`` in ``core/src/tools/router.rs``)."""
    return {
        tool.name: param.name
        for param in body.tools or ()
        if param.type == "namespace" and param.name is not None
        for tool in param.tools or ()
        if tool.name is not None
    }


def _tool_choice(body: ResponsesRequest, tools: tuple[Tool, ...], model: CatalogueModel) -> ToolChoice | None:
    choice = body.tool_choice
    if isinstance(choice, ToolChoiceParam):
        if choice.type != "function":
            raise BadRequest(
                f"tool_choice: type '{choice.type}' is not supported (model '{model.id}'); send 'auto', 'none', "
                "'required' or {'type': 'function', 'name': ...}",
                param="tool_choice",
            )
        if choice.name is None:
            raise BadRequest("tool_choice.name: required", param="tool_choice")
        # As for function tools: a field we would neither carry nor be able to echo is named, not ignored.
        unsupported = sorted(name for name, value in (choice.model_extra or {}).items() if value is not None)
        if unsupported:
            raise BadRequest(
                f"tool_choice: {', '.join(unsupported)}: not supported (model '{model.id}')", param="tool_choice"
            )
        # The Chat Completions shape, so that one function checks the name against the tools.
        return to_tool_choice(NamedToolChoice(type="function", function=NamedFunction(name=choice.name)), tools)
    return to_tool_choice(choice, tools)


def echo_tool_choice(choice: str | ToolChoiceParam | None) -> str | dict[str, Any]:
    if choice is None:
        return "auto"
    # Only the fields ``ToolChoiceFunction`` has: extras are the caller's, unchecked for what the encoder can write.
    return choice if isinstance(choice, str) else {"type": choice.type, "name": choice.name}


def to_response_format(body: ResponsesRequest) -> ResponseFormat | None:
    """``text.format`` → the ``ResponseFormat`` Chat Completions' ``response_format`` becomes."""
    spec = body.text.format if body.text is not None else None
    if spec is None or spec.type == "text":
        return None
    if spec.type == "json_object":
        return ResponseFormat(type="json_object")
    for name, value in (("name", spec.name), ("schema", spec.schema_)):
        if value is None:
            raise BadRequest(f"text.format.{name}: required for type json_schema", param="text.format")
    return ResponseFormat(
        type="json_schema", schema=spec.schema_, name=spec.name, description=spec.description, strict=spec.strict
    )


class _RoundTrip:
    """The round-trip data of replayed ``reasoning`` items (``modelgate.reasoning_token``), back where the chat types
    keep it: the reasoning blocks on their turn's assistant message, a call's ``extra_content`` on the call of that
    ``call_id``.

    A reply's token comes in its last item, after its message and calls (``encoders.responses``), so its blocks
    belong to the assistant message before it (past the results of its calls, if a client put them first); a token
    before any (a client that moved it) waits for the next. Another server's ``encrypted_content`` (OpenAI's, from a
    conversation begun there) is no model's here to read: it is left out and named dropped, as reasoning items were
    before. A token of ours that does not read back is a 400: the turn would otherwise reach the upstream without
    what it needs, and be refused there for a reason the client could not see."""

    def __init__(self) -> None:
        self.calls: dict[str, Mapping[str, Any]] = {}
        self.foreign = False
        #: Blocks of a token that came before its turn, and where it was.
        self._pending: tuple[ReasoningDetail, ...] = ()
        self._pending_where = ""

    def read(self, item: InputItem, where: str, messages: list[Message]) -> None:
        token = item.encrypted_content
        if token is None:
            return
        if not made_here(token):
            self.foreign = True
            return
        try:
            carried = decode(token)
        except ValueError as exc:
            raise BadRequest(
                f"{where}.encrypted_content: not as modelgate made it ({exc}); send the reasoning item back as the "
                "response gave it",
                param="input",
            ) from None
        self.calls.update(carried.calls)
        if not carried.details:
            return
        turn = next((i for i in range(len(messages) - 1, -1, -1) if messages[i].role != "tool"), None)
        if turn is not None and messages[turn].role == "assistant":
            self._add(messages, turn, carried.details, where)
        else:
            self._pending += carried.details
            self._pending_where = where

    def settle(self, messages: list[Message]) -> None:
        """After an item: blocks waiting for their turn go on the assistant message it just made."""
        if self._pending and messages and messages[-1].role == "assistant":
            self._add(messages, len(messages) - 1, self._pending, self._pending_where)
            self._pending = ()

    def finish(self, messages: list[Message]) -> None:
        if self._pending:
            raise BadRequest(
                f"{self._pending_where}: a reasoning item modelgate made belongs beside the message or function_call "
                "items of its turn, and none follows it",
                param="input",
            )
        for index, message in enumerate(messages):
            if any(call.id in self.calls and call.extra is None for call in message.tool_calls):
                calls = tuple(
                    replace(call, extra=self.calls[call.id]) if call.id in self.calls and call.extra is None else call
                    for call in message.tool_calls
                )
                messages[index] = replace(message, tool_calls=calls)

    @staticmethod
    def _add(messages: list[Message], index: int, details: tuple[ReasoningDetail, ...], where: str) -> None:
        message = messages[index]
        blocks = (*message.reasoning_details, *details)
        if len(blocks) > MAX_REASONING_DETAILS:
            raise BadRequest(
                f"{where}.encrypted_content: more than {MAX_REASONING_DETAILS} reasoning blocks for one turn",
                param="input",
            )
        messages[index] = replace(message, reasoning_details=blocks)


def _messages(
    body: ResponsesRequest, model: CatalogueModel, settings: Settings, round_trip: _RoundTrip
) -> tuple[Message, ...]:
    max_messages = settings.max_messages
    budget = ImageBudget(settings.max_image_bytes, settings.max_images_bytes, param="input")
    messages: list[Message] = []
    called: set[str] = set()
    #: Images of the function call outputs just read, for the user message after them (``_ImagesAfterResults``).
    shown = _ImagesAfterResults()
    if body.instructions is not None:
        messages.append(Message(role="system", content=body.instructions))
    if isinstance(body.input, str):
        messages.append(Message(role="user", content=body.input))
    else:
        for index, item in enumerate(body.input):
            where = f"input[{index}]"
            if item.type == "function_call_output":
                messages.append(_function_call_output(item, where, called, budget, shown))
                continue
            if item.type == "reasoning":
                # Read before the images of call results are let out: a reply's token follows its calls.
                round_trip.read(item, where, messages)
                continue
            shown.flush(messages)
            if item.type == "function_call":
                call = _function_call(item, where)
                called.add(call.id)
                last = messages[-1] if messages else None
                if last is not None and last.role == "assistant":
                    # The calls of one turn (and the text before them) are one assistant message in chat form.
                    messages[-1] = replace(last, tool_calls=(*last.tool_calls, call))
                else:
                    messages.append(Message(role="assistant", content="", tool_calls=(call,)))
                round_trip.settle(messages)
                continue
            messages.append(_item_message(item, where, model, budget))
            round_trip.settle(messages)
        shown.flush(messages)
        round_trip.finish(messages)
    if not any(message.role != "system" for message in messages):
        raise BadRequest("input: at least one message is required", param="input")
    if len(messages) > max_messages:
        raise BadRequest(
            f"input: {len(messages)} messages are more than the limit of {max_messages}",
            param="input",
            data={"limit": max_messages},
        )
    return tuple(messages)


def _function_call(item: InputItem, where: str) -> ToolCall:
    """An earlier answer's call, as the assistant's ``tool_calls`` entry."""
    if not item.call_id or not item.name or item.arguments is None:
        missing = [name for name in ("call_id", "name", "arguments") if getattr(item, name) in (None, "")]
        raise BadRequest(f"{where}: a function_call item needs {', '.join(missing)}", param="input")
    return ToolCall(id=item.call_id, name=item.name, arguments=item.arguments)


class _ImagesAfterResults:
    """Images a function call returned (Codex's ``view_image`` answers with the image as its output), held for one
    user message after the run of tool messages: chat tool messages take only text, and a message between the
    results of one turn's calls would part them from their calls."""

    def __init__(self) -> None:
        self.parts: list[str | Image] = []

    def add(self, call_id: str, images: list[Image]) -> None:
        self.parts += [f"The image output of tool call {call_id}:", *images]

    def flush(self, messages: list[Message]) -> None:
        if self.parts:
            messages.append(content_message("user", self.parts, separator="\n"))
            self.parts = []


def _function_call_output(
    item: InputItem, where: str, called: set[str], budget: ImageBudget, shown: _ImagesAfterResults
) -> Message:
    if not item.call_id:
        raise BadRequest(f"{where}.call_id: required on a function_call_output item", param="input")
    if item.call_id not in called:
        # OpenAI's API refuses it too; providers that match results by position (Ollama) would not.
        raise BadRequest(f"{where}.call_id: '{item.call_id}' answers no earlier function_call item", param="input")
    output = item.output
    if output is None:
        raise BadRequest(f"{where}.output: required on a function_call_output item", param="input")
    if not isinstance(output, str):
        texts, images = [], []
        for index, part in enumerate(output):
            at = f"{where}.output[{index}]"
            if part.type == "input_image":
                # Sent in the user message after the results, so held to what a user message's image is.
                images.append(_image(part, at, "user", budget))
            elif part.type == "input_text" and part.text is not None:
                texts.append(part.text)
            else:
                raise BadRequest(
                    f"{at}: content of type '{part.type}' is not supported in a function call's output; send "
                    "input_text or input_image",
                    param="input",
                )
        if images:
            shown.add(item.call_id, images)
            texts.append(_IMAGES_FOLLOW)
        output = "\n".join(texts)
    return Message(role="tool", content=output, tool_call_id=item.call_id)


def _item_message(item: InputItem, where: str, model: CatalogueModel, budget: ImageBudget) -> Message:
    kind = item.type or "message"
    if kind == "item_reference":
        raise BadRequest(
            f"{where}: item_reference: {_NOT_STORED}, so earlier items cannot be referenced; send the items "
            "themselves (AI SDK: providerOptions.openai.store = false)",
            param="input",
        )
    if kind in _TOOL_ITEMS:
        raise BadRequest(
            f"{where}: {kind} items: only function tools are supported (model '{model.id}')", param="input"
        )
    if kind != "message":
        raise BadRequest(f"{where}: items of type '{kind}' are not supported", param="input")
    role = _ROLES.get(item.role or "")
    if role is None:
        raise BadRequest(f"{where}.role: must be one of {', '.join(_ROLES)}, got {item.role!r}", param="input")
    if item.content is None:
        raise BadRequest(f"{where}.content: required", param="input")
    if isinstance(item.content, str):
        return Message(role=role, content=item.content)
    # Parts are paragraphs of one message, joined as /v1/chat/completions joins text parts.
    return content_message(role, _parts(item.content, where, role, model, budget), separator="\n")


def _parts(
    content: list[InputPart], where: str, role: Role, model: CatalogueModel, budget: ImageBudget
) -> list[str | Image | CacheBreak]:
    """A message's texts and images, in the order sent, each followed by its prompt-caching breakpoint if it has one."""
    parts: list[str | Image | CacheBreak] = []
    for index, part in enumerate(content):
        at = f"{where}.content[{index}]"
        if part.type in _MEDIA_PARTS:
            raise BadRequest(
                f"{at}: {part.type}: {_MEDIA_PARTS[part.type]} input is not supported (model '{model.id}')",
                param="input",
            )
        parts.append(_image(part, at, role, budget) if part.type == "input_image" else _text(part, at))
        if part.cache_control is not None:
            parts.append(CacheBreak(part.cache_control.ttl))
    return parts


def _text(part: InputPart, where: str) -> str:
    if part.type == "refusal":  # an earlier answer's refusal is what the assistant said
        text = part.refusal
    elif part.type in _TEXT_PARTS:
        text = part.text
    else:
        raise BadRequest(f"{where}: content of type '{part.type}' is not supported; send input_text", param="input")
    if text is None:
        raise BadRequest(f"{where}: the part has no text", param="input")
    return text


def _image(part: InputPart, where: str, role: Role, budget: ImageBudget) -> Image:
    """An ``input_image`` part under the limits of ``/v1/chat/completions`` images (``images.ImageBudget``)."""
    if role != "user":
        raise BadRequest(f"{where}: input_image: images are only taken in user messages", param="input")
    if part.image_url is None:
        reason = "files are not stored; send the image as image_url" if part.file_id is not None else "required"
        raise BadRequest(f"{where}.image_url: {reason}", param="input")
    if part.detail is not None and part.detail not in _DETAILS:
        raise BadRequest(
            f"{where}.detail: '{part.detail}' is not supported; send one of {', '.join(sorted(_DETAILS))}",
            param="input",
        )
    return budget.image(part.image_url, where, detail=part.detail)


def to_chat_request(body: ResponsesRequest, model: CatalogueModel, settings: Settings) -> ChatRequest:
    _refuse_unsupported(body, model)
    tools = to_tools(body, model)
    round_trip = _RoundTrip()
    messages = _messages(body, model, settings, round_trip)
    # Another server's reasoning (``_RoundTrip``): named, as nothing here can read it.
    foreign = (_FOREIGN_REASONING,) if round_trip.foreign else ()
    return ChatRequest(
        messages=messages,
        params=call_params(body, model, RESPONSES_PARAMS),
        tools=tools,
        tool_choice=_tool_choice(body, tools, model),
        parallel_tool_calls=body.parallel_tool_calls if tools else None,
        response_format=to_response_format(body),
        cache=CacheBreak(body.cache_control.ttl) if body.cache_control is not None else None,
        not_carried=not_carried(body, NOT_CARRIED) + unmade_extras(body) + _namespace_description(body) + foreign,
    )


def echo_text_format(body: ResponsesRequest) -> dict[str, Any]:
    """``text.format`` as ``Response.text.format`` echoes it (``ResponseFormatTextConfig``)."""
    if body.text is None or body.text.format is None:
        return {"type": "text"}
    return body.text.format.model_dump(by_alias=True, exclude_none=True)


def echo_tools(body: ResponsesRequest) -> tuple[dict[str, Any], ...]:
    """The tools as ``Response.tools`` lists them (``FunctionTool``, ``NamespaceTool``)."""
    return tuple(_echo_tool(tool) for tool in body.tools or ())


def _echo_tool(tool: ToolParam) -> dict[str, Any]:
    if tool.type == "namespace":
        tools = [_echo_tool(inner) for inner in tool.tools or ()]
        return {"type": "namespace", "name": tool.name, "description": tool.description, "tools": tools}
    return {
        "type": "function",
        "name": tool.name,
        "description": tool.description,
        "parameters": tool.parameters,
        "strict": tool.strict,
    }
