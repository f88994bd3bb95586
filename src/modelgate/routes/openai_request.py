"""OpenAI's Chat Completions request as ``POST /v1/chat/completions`` takes it, and what becomes of each field.

``ChatCompletionRequest`` is the body (pydantic); ``to_chat_request`` turns it into a ``ChatRequest``: the
messages, tools and response format through ``routes.openai_input``, the sampling fields through
``OPENAI_PARAMS`` (``call_params``). A field is carried, reported as dropped (``NOT_CARRIED``, unknown fields,
``dropped_by_caller``) or refused with a 400 naming it (``_refuse_unsupported``), never lost
(``tests/test_params_accounted.py``). ``routes.responses_input`` reads its own request with the same helpers.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from modelgate.catalogue import CatalogueModel
from modelgate.chat import CacheBreak, ChatRequest, GenerationParams, ReasoningEffort
from modelgate.errors import BadRequest
from modelgate.routes.openai_input import (
    MAX_TOOLS,
    CacheControl,
    ChatMessage,
    ResponseFormatParam,
    ToolChoiceParam,
    ToolParam,
    to_messages,
    to_response_format,
    to_tool_choice,
    to_tools,
)
from modelgate.settings import Settings
from modelgate.wire import MAX_STOP_CHARS, MAX_STOP_SEQUENCES, WireInt, WireText, WireWord, unicode_text

log = logging.getLogger("modelgate.openai")

#: The one mapping between our ``GenerationParams`` fields and OpenAI request fields. The request
#: parser, ``supported_parameters`` and the dropped-parameters header all read it. The first name is
#: the preferred one (OpenAI deprecated ``max_tokens`` in favour of ``max_completion_tokens``).
OPENAI_PARAMS: Mapping[str, tuple[str, ...]] = {
    "max_new_tokens": ("max_completion_tokens", "max_tokens"),
    "temperature": ("temperature",),
    "top_p": ("top_p",),
    "stop": ("stop",),
    "seed": ("seed",),
    "presence_penalty": ("presence_penalty",),
    "frequency_penalty": ("frequency_penalty",),
    "reasoning_effort": ("reasoning_effort",),
}

#: Request fields of both OpenAI APIs that tune OpenAI's own servers (end user, service tier, prompt caching, abuse
#: tracking, stream padding): no provider kind carries them and their loss leaves the reply's shape as the client
#: expects it, so they are accepted (``ServerHints``) and reported as dropped, like a ``reasoning_effort`` a kind has
#: no form for. ``False`` asks for what happens anyway (``include_obfuscation: false``) and is not reported.
SERVER_HINTS = (
    "prompt_cache_key",
    "prompt_cache_options",
    "prompt_cache_retention",
    "safety_identifier",
    "service_tier",
    "stream_options.include_obfuscation",
    "user",
)
#: Chat Completions' fields reported as dropped: the server hints, its ``metadata`` and predicted output, and
#: ``store`` (``store: false`` is what happens anyway).
NOT_CARRIED = (*SERVER_HINTS, "metadata", "prediction", "store")
#: OpenAI's default ``verbosity`` (``text.verbosity`` on /v1/responses): asking for it asks for an ordinary answer,
#: which every model gives, so it is accepted and reported as dropped; ``low``/``high`` ask for an answer no
#: provider here can be held to and are refused. Codex sends it for the models it knows to take one.
DEFAULT_VERBOSITY = "medium"


# --- chat completions: the request --------------------------------------------------------------


def _stop_sequence(value: str) -> str:
    # Checked after ``unicode_text``: pydantic's own ``max_length`` turns a lone surrogate into an opaque parse error.
    if len(unicode_text(value)) > MAX_STOP_CHARS:
        raise ValueError(f"a stop sequence may be at most {MAX_STOP_CHARS} characters long, got {len(value)}")
    return value


#: One ``stop`` sequence: text an upstream request can carry (``WireText``), at most ``MAX_STOP_CHARS`` long.
StopSequence = Annotated[str, AfterValidator(_stop_sequence)]


class StreamOptions(BaseModel):
    # Unknown options (vLLM's ``continuous_usage_stats``) are kept only to be named as dropped (``unknown_fields``).
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False
    #: OpenAI's padding of stream events against side channels: modelgate sends none (reported when asked).
    include_obfuscation: bool | None = None


class ServerHints(BaseModel):
    """The ``SERVER_HINTS`` fields, in both OpenAI request bodies: accepted only to be reported as dropped."""

    model_config = ConfigDict(extra="allow")

    user: WireText | None = Field(default=None, description="Accepted; not forwarded (reported as dropped)")
    service_tier: WireText | None = None
    prompt_cache_key: WireText | None = None
    prompt_cache_options: Any = None
    prompt_cache_retention: WireText | None = None
    safety_identifier: WireText | None = None
    stream_options: StreamOptions | None = None


class ChatCompletionRequest(ServerHints):
    """OpenAI's request body (providers.md 5.2). Unknown fields are not rejected: SDKs and agents send extras
    (a server's own sampling fields through openai-python's ``extra_body``), so this edge is deliberately open;
    they are kept (``extra="allow"``) only to be named as dropped (``unknown_fields``)."""

    model_config = ConfigDict(extra="allow")

    model: WireText = Field(min_length=1, description="A catalogue id, publisher/name")
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool | None = Field(default=False, description="null is false, as the SDKs' types allow")
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stop: tuple[StopSequence, ...] | None = Field(
        default=None,
        max_length=MAX_STOP_SEQUENCES,
        description="A string or a list of strings; as many as the model's upstream takes (README, Stop sequences)",
    )
    seed: WireInt | None = Field(default=None, description="A 64-bit integer")
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    reasoning_effort: ReasoningEffort | None = Field(
        default=None, description="How hard a reasoning model thinks; each provider takes it in its own form"
    )
    n: int | None = Field(default=None, ge=1, description="Only 1 is supported")
    tools: list[ToolParam] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: ToolChoiceParam | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormatParam | None = None
    cache_control: CacheControl | None = Field(
        default=None, description="Automatic prompt caching, as OpenRouter takes it for Anthropic models"
    )
    # Accepted only so that they can be refused with a clear message (see ``_refuse_unsupported``).
    functions: list[Any] | None = None
    function_call: Any = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    logit_bias: dict[str, Any] | None = None
    modalities: list[str] | None = None
    audio: Any = None
    web_search_options: Any = None
    moderation: Any = None
    verbosity: WireWord | None = Field(
        default=None, description="Only 'medium', OpenAI's default (reported as dropped)"
    )
    # Accepted only so that they can be reported as dropped (``NOT_CARRIED``).
    store: bool | None = None
    metadata: Any = None
    prediction: Any = None

    @field_validator("stop", mode="before")
    @classmethod
    def _stop(cls, value: object) -> object:
        # No limit of OpenAI's own (4) here: how many the upstream takes is its provider's check (``Provider.check``).
        if isinstance(value, str):
            return (value,)
        if isinstance(value, list):
            return tuple(value) or None
        return value


def _refuse_unsupported(body: ChatCompletionRequest) -> None:
    """Features we cannot serve are a clear 400, never silently ignored."""
    refusals: list[tuple[str, bool, str]] = [
        ("n", (body.n or 1) > 1, "only one choice per request is supported; n must be 1"),
        ("functions", bool(body.functions), "the deprecated functions are not supported; use tools"),
        (
            "function_call",
            body.function_call is not None,
            "the deprecated function_call is not supported; use tool_choice",
        ),
        ("logprobs", bool(body.logprobs), "log probabilities are not supported"),
        ("top_logprobs", body.top_logprobs is not None, "log probabilities are not supported"),
        ("logit_bias", bool(body.logit_bias), "logit_bias is not supported"),
        ("modalities", any(m != "text" for m in body.modalities or ()), "only text output is supported"),
        ("audio", body.audio is not None, "audio output is not supported"),
        # Each would leave out of the reply what the client asked to be in it (sources, a moderation verdict, a
        # shorter or longer answer), as on /v1/responses (``text.verbosity``).
        ("web_search_options", body.web_search_options is not None, "web search is not supported"),
        ("moderation", body.moderation is not None, "moderation is not supported"),
        (
            "verbosity",
            body.verbosity not in (None, DEFAULT_VERBOSITY),
            f"'{body.verbosity}' is not supported; only the default, '{DEFAULT_VERBOSITY}'",
        ),
    ]
    for param, refused, reason in refusals:
        if refused:
            raise BadRequest(f"{param}: {reason}", param=param)


def request_value(body: BaseModel, name: str) -> Any:
    """The request field ``name`` of ``body``; ``a.b`` is field ``b`` of its object ``a`` (None where unset)."""
    value: Any = body
    for part in name.split("."):
        value = getattr(value, part, None)
    return value


@functools.cache
def _top_level(name: str) -> str:
    """The request field a dotted name starts from: ``reasoning`` of ``reasoning.effort``. Every field the dropped
    and parameter names reach defaults to None or ``false``, so a name whose top-level field the client did not
    send (``model_fields_set``) is not read at all: a request sends few of the names each check walks."""
    return name.partition(".")[0]


def not_carried(body: BaseModel, names: Iterable[str]) -> tuple[str, ...]:
    """Of the fields ``names`` no provider carries, those ``body`` set to anything but null or ``false``; then
    the fields the route does not know (``unknown_fields``): top-level ones, and those of ``stream_options``."""
    given = body.model_fields_set
    known = tuple(
        name
        for name in names
        if _top_level(name) in given and (value := request_value(body, name)) is not None and value is not False
    )
    options = request_value(body, "stream_options") if "stream_options" in given else None
    nested = unknown_fields(options, prefix="stream_options.") if isinstance(options, BaseModel) else ()
    return known + unknown_fields(body) + nested


#: How many unknown fields the dropped-parameters header names (the first, sorted), and the form a name needs to
#: be named there at all: a header carries printable ASCII, a client's JSON key may be anything of any length.
MAX_NAMED_UNKNOWN = 16
_NAMEABLE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


def field_names(names: Sequence[str]) -> str:
    """A client's field names as a refusal shows them: those ``_NAMEABLE`` (the first ``MAX_NAMED_UNKNOWN``), the
    others counted, never repeated (a JSON key may be as long as the body)."""
    shown = [name for name in names if _NAMEABLE.fullmatch(name)][:MAX_NAMED_UNKNOWN]
    if hidden := len(names) - len(shown):
        shown.append(f"{hidden} more field{'s' if hidden != 1 else ''}")
    return ", ".join(shown)


def unknown_fields(body: BaseModel, *, prefix: str = "") -> tuple[str, ...]:
    """Fields ``body`` holds that the route does not know, e.g. vLLM's ``top_k`` or ``min_p`` sent with
    openai-python's ``extra_body``: no provider is sent them, so they are reported as dropped (as ``prefix`` +
    name), never ignored."""
    extra = body.model_extra
    if not extra:
        return ()
    return tuple(
        prefix + name for name in sorted(name for name in extra if _NAMEABLE.fullmatch(name))[:MAX_NAMED_UNKNOWN]
    )


def call_params(
    body: BaseModel, model: CatalogueModel, names: Mapping[str, tuple[str, ...]] = OPENAI_PARAMS
) -> GenerationParams:
    """This call's own values (the gateway applies them over the answering model's defaults), after checking
    the model's limits. ``names``: our field → the request's field names (each /v1 route has its own; a dotted
    name is a field of an object, the Responses API's ``reasoning.effort``)."""
    overrides: dict[str, object] = {}
    given = body.model_fields_set
    for field, aliases in names.items():
        for name in aliases:
            value = request_value(body, name) if _top_level(name) in given else None
            if value is not None:
                overrides[field] = value
                break
    limit = model.parameters.max_new_tokens
    for name in names.get("max_new_tokens", ()):
        value = getattr(body, name)
        if value is not None and value > limit:
            raise BadRequest(
                f"{name}: {value} is above the limit of {limit} completion tokens for model '{model.id}'",
                param=name,
                data={"limit": limit},
            )
    return GenerationParams(**overrides)  # type: ignore[arg-type]


#: The sampling parameters, which a catalogue may set as defaults (the other dropped names are request fields).
_PARAM_FIELDS = frozenset(field.name for field in dataclasses.fields(GenerationParams))


def dropped_by_caller(
    body: BaseModel,
    dropped: Iterable[str],
    *,
    model: str,
    names: Mapping[str, tuple[str, ...]] = OPENAI_PARAMS,
    fields: Mapping[str, str] = MappingProxyType({}),
) -> list[str]:
    """Of the parameters the answering provider could not carry, those this call set, under the names it used
    (``names`` for the sampling parameters, ``fields`` for request fields the route names otherwise).

    The rest are catalogue defaults the operator configured, not the caller's doing: they are not reported
    to the caller; the access log line lists every dropped parameter (``dropped_params``), and this debug
    line says which were defaults.
    """
    named: list[str] = []
    defaults: list[str] = []
    for field in dropped:
        if field not in _PARAM_FIELDS:  # a request field (``tool_choice``, an image's ``detail``): a caller set it
            named.append(fields.get(field, field))
            continue
        used = next((name for name in names.get(field, (field,)) if request_value(body, name) is not None), None)
        (named if used is not None else defaults).append(used or field)
    if defaults:
        log.debug("catalogue defaults of %s not carried by its provider: %s", model, ", ".join(sorted(defaults)))
    return sorted(named)


def to_chat_request(body: ChatCompletionRequest, model: CatalogueModel, settings: Settings) -> ChatRequest:
    _refuse_unsupported(body)
    tools = to_tools(body.tools)
    messages = to_messages(
        body.messages,
        max_messages=settings.max_messages,
        max_image_bytes=settings.max_image_bytes,
        max_images_bytes=settings.max_images_bytes,
    )
    return ChatRequest(
        messages=messages,
        params=call_params(body, model),
        tools=tools,
        tool_choice=to_tool_choice(body.tool_choice, tools),
        parallel_tool_calls=body.parallel_tool_calls if tools else None,
        response_format=to_response_format(body.response_format),
        cache=CacheBreak(body.cache_control.ttl) if body.cache_control is not None else None,
        # ``verbosity`` is here only at its default: other values were refused above.
        not_carried=not_carried(body, (*NOT_CARRIED, "verbosity")),
    )
