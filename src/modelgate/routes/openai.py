"""The OpenAI-compatible surface: ``GET /v1/models``, ``GET /v1/models/{id}``, ``POST /v1/chat/completions``.

Same catalogue resolver (``Catalogue.get``) and the same ``gateway.open_stream`` as ``/api/ai/...``:
this module only translates OpenAI's request into a ``ChatRequest`` and the events back (via
``encoders.openai``). Errors are raised from the ``modelgate.errors`` tree; ``app.py`` renders them in
OpenAI's ``{"error": {...}}`` shape for every ``/v1`` path.

Model objects carry extra fields next to OpenAI's four (``id``, ``object``, ``created``, ``owned_by``),
as OpenRouter's and LiteLLM's listings do: SDKs keep unknown fields.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable, Mapping
from decimal import Decimal
from html.parser import HTMLParser
from typing import Any, Literal

import orjson
from fastapi import APIRouter, Request
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.responses import Response

from modelgate.app import gateway
from modelgate.auth import may_call, request_principal, visible_models
from modelgate.catalogue import CatalogueModel, Pricing
from modelgate.chat import ChatRequest, GenerationParams, ReasoningEffort
from modelgate.encoders.openai import HEADERS as STREAM_HEADERS
from modelgate.encoders.openai import MEDIA_TYPE as STREAM_MEDIA_TYPE
from modelgate.encoders.openai import USAGE_HEADER, ChunkEncoder, collect_completion
from modelgate.errors import BadRequest, ModelgateError, NotFound
from modelgate.gateway import StreamStart
from modelgate.limits import admit
from modelgate.providers import Provider
from modelgate.relay_response import RelayResponse
from modelgate.routes.openai_input import (
    MAX_TOOLS,
    ChatMessage,
    ResponseFormatParam,
    ToolChoiceParam,
    ToolParam,
    to_messages,
    to_response_format,
    to_tool_choice,
    to_tools,
)
from modelgate.routes.opening import collect_for_client, open_for_client
from modelgate.settings import Settings
from modelgate.wire import WireInt, WireText


class UnsupportedMediaType(ModelgateError):
    status = 415


def json_media_type(content_type: str) -> bool:
    media = content_type.partition(";")[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def unsupported_media_type(declared: str) -> UnsupportedMediaType:
    return UnsupportedMediaType(
        f"The request body must be JSON: send 'Content-Type: application/json' (got '{declared[:100]}')"
    )


class JSONBodyRoute(APIRoute):
    """Reads a request body without ``Content-Type`` as JSON (as ``/api/ai`` does, and curl users expect);
    a body declared as something else is a 415 that says what to send, rather than a validation error
    about a "dictionary" the client never sent."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def json_body(request: Request) -> Response:
            if request.method in ("POST", "PUT", "PATCH"):
                declared = request.headers.get("content-type")
                if declared is None:
                    headers = [*request.scope["headers"], (b"content-type", b"application/json")]
                    request = Request({**request.scope, "headers": headers}, request.receive)
                elif not json_media_type(declared):
                    raise unsupported_media_type(declared)
            return await handler(request)

        return json_body


router = APIRouter(tags=["OpenAI compatible"], route_class=JSONBodyRoute)
log = logging.getLogger("modelgate.openai")

JSON = "application/json"

#: ``created`` of every model object. The catalogue records no dates; a constant keeps the listing
#: byte-stable across restarts and reloads (the value of the reference example, providers.md 5.5).
MODEL_CREATED = 1_700_000_000

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

#: OpenAI request fields no provider kind carries whose loss leaves the reply's shape as the client expects it:
#: hints to OpenAI's own servers (caching, service tier, abuse tracking, storage, predicted output). Accepted
#: and reported as dropped, like a ``reasoning_effort`` a kind has no form for; ``False`` asks for what happens
#: anyway (``store: false``, ``include_obfuscation: false``) and is not reported.
NOT_CARRIED = (
    "metadata",
    "prediction",
    "prompt_cache_key",
    "prompt_cache_options",
    "prompt_cache_retention",
    "safety_identifier",
    "service_tier",
    "store",
    "stream_options.include_obfuscation",
    "user",
)


# --- model objects ------------------------------------------------------------------------------


class _PlainText(HTMLParser):
    """Text of an HTML fragment as a browser lays it out: tags dropped, entities decoded, runs of
    source whitespace collapsed to one space, ``<br>`` and block ends as line breaks."""

    _BREAKS = frozenset({"br", "p", "div", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "table"})
    _HIDDEN = frozenset({"script", "style", "template"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._HIDDEN:
            self._hidden += 1
        elif tag in self._BREAKS:
            self.parts.append("\n")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._BREAKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._HIDDEN:
            self._hidden = max(0, self._hidden - 1)
        elif tag in self._BREAKS and tag != "br":
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.parts.append(re.sub(r"\s+", " ", data))


def plain_text(html: str) -> str:
    """The catalogue's HTML description as plain text (one line per ``<br>``, no blank-line runs)."""
    parser = _PlainText()
    parser.feed(html)
    parser.close()
    lines = [line.strip() for line in "".join(parser.parts).split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


#: The request fields a capability brings (OpenRouter's ``supported_parameters`` names).
CAPABILITY_PARAMS: Mapping[str, tuple[str, ...]] = {
    "tools": ("tools", "tool_choice", "parallel_tool_calls"),
    "json": ("response_format", "structured_outputs"),
}


def supported_parameters(model: CatalogueModel, provider: Provider | None) -> list[str]:
    """OpenAI request fields that ``provider`` (the model's instance) actually carries upstream for ``model``."""
    if provider is None:
        return []
    honoured = provider.model_params(model)
    names = {name for field, names in OPENAI_PARAMS.items() if field in honoured for name in names}
    for capability in provider.model_capabilities(model):
        names.update(CAPABILITY_PARAMS.get(capability, ()))
    return sorted(names)


def architecture(model: CatalogueModel, provider: Provider | None) -> dict[str, list[str]]:
    """OpenRouter's ``architecture`` modalities: image input only where the model takes it through ``provider``."""
    vision = provider is not None and "vision" in provider.model_capabilities(model)
    return {"input_modalities": ["text", "image"] if vision else ["text"], "output_modalities": ["text"]}


def default_parameters(model: CatalogueModel) -> dict[str, Any]:
    """The catalogue's parameters as written, ``-1`` ("provider default") as ``null``."""
    values: dict[str, Any] = {key: (None if value == -1 else value) for key, value in model.wire_parameters.items()}
    values.setdefault("temperature", None)
    return values


def model_object(model: CatalogueModel, provider: Provider | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": model.id,
        "object": "model",
        "created": MODEL_CREATED,
        "owned_by": model.publisher,
        "name": model.name,
        "description": plain_text(model.description),
        "type": model.type,
        "provider": model.provider,
        "endpoint": model.endpoint,
        "context_length": model.context_length,
        "max_completion_tokens": model.parameters.max_new_tokens,
        "supported_parameters": supported_parameters(model, provider),
        "architecture": architecture(model, provider),
        "default_parameters": default_parameters(model),
    }
    if model.pricing is not None:
        body["pricing"] = openrouter_pricing(model.pricing)
    return body


def openrouter_pricing(pricing: Pricing) -> dict[str, str]:
    """OpenRouter's listing shape (USD per token, as decimal strings), so its clients read it as they are.

    The catalogue writes prices per million tokens; ``Decimal`` keeps 0.15 → ``"0.00000015"`` exact.
    """

    def per_token(per_million: float) -> str:
        return format((Decimal(str(per_million)) / 1_000_000).normalize(), "f")

    shown = {"prompt": per_token(pricing.input), "completion": per_token(pricing.output)}
    if pricing.cached_input is not None:  # OpenRouter's name for the price of a prompt-cache read
        shown["input_cache_read"] = per_token(pricing.cached_input)
    return shown


class ModelPricing(BaseModel):
    prompt: str = Field(description="USD per prompt token (OpenRouter's shape)")
    completion: str = Field(description="USD per completion token, reasoning included")
    input_cache_read: str | None = Field(
        default=None, description="USD per prompt token served from the provider's cache, when the catalogue says"
    )


class ModelObject(BaseModel):
    """One model (for the OpenAPI document; the body is built by ``model_object``)."""

    id: str = Field(description="publisher/name, the value to send as `model`")
    object: Literal["model"]
    created: int
    owned_by: str = Field(description="The publisher")
    name: str = Field(description="Display name")
    description: str = Field(description="Plain text")
    type: Literal["instruct", "chat"]
    provider: str
    endpoint: str = Field(description="The model's /api/ai chat path")
    context_length: int
    max_completion_tokens: int = Field(description="Upper bound for max_tokens / max_completion_tokens")
    supported_parameters: list[str] = Field(description="OpenAI request fields this model's provider honours")
    architecture: dict[str, list[str]] = Field(description="input_modalities (image where it takes images)")
    default_parameters: dict[str, Any] = Field(description="The catalogue's parameters; null = provider default")
    pricing: ModelPricing | None = Field(default=None, description="Only for models the catalogue gives prices for")


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelObject]


@router.get("/v1/models", summary="List models (OpenAI shape)", responses={200: {"model": ModelList}})
async def list_models(request: Request) -> Response:
    state = gateway(request)
    models = visible_models(request_principal(request), state.catalogue)  # == what admit() allows
    data = [model_object(m, state.providers.get(m.provider)) for m in models]
    return Response(orjson.dumps({"object": "list", "data": data}), media_type=JSON)


@router.get("/v1/models/{model_id:path}", summary="One model (OpenAI shape)", responses={200: {"model": ModelObject}})
async def get_model(model_id: str, request: Request) -> Response:
    state = gateway(request)
    model = state.catalogue.get(model_id)
    if not may_call(request_principal(request), model.id):  # invisible to this key, as in /v1/models
        raise NotFound(f"The model '{model_id}' does not exist", data={"model": model_id})
    return Response(orjson.dumps(model_object(model, state.providers.get(model.provider))), media_type=JSON)


# --- chat completions: the request --------------------------------------------------------------


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False
    #: OpenAI's padding of stream events against side channels: modelgate sends none (reported when asked).
    include_obfuscation: bool | None = None


class ChatCompletionRequest(BaseModel):
    """OpenAI's request body (providers.md 5.2). Unknown fields are not rejected: SDKs and agents send extras
    (a server's own sampling fields through openai-python's ``extra_body``), so this edge is deliberately open;
    they are kept (``extra="allow"``) only to be named as dropped (``unknown_fields``)."""

    model_config = ConfigDict(extra="allow")

    model: WireText = Field(min_length=1, description="A catalogue id, publisher/name")
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool | None = Field(default=False, description="null is false, as the SDKs' types allow")
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stop: tuple[WireText, ...] | None = Field(default=None, description="A string or up to 4 strings")
    seed: WireInt | None = Field(default=None, description="A 64-bit integer")
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    reasoning_effort: ReasoningEffort | None = Field(
        default=None, description="How hard a reasoning model thinks; each provider takes it in its own form"
    )
    user: WireText | None = Field(default=None, description="Accepted; not forwarded (reported as dropped)")
    n: int | None = Field(default=None, ge=1, description="Only 1 is supported")
    tools: list[ToolParam] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: ToolChoiceParam | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormatParam | None = None
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
    verbosity: WireText | None = None
    # Accepted only so that they can be reported as dropped (``NOT_CARRIED``).
    store: bool | None = None
    metadata: Any = None
    service_tier: WireText | None = None
    prediction: Any = None
    prompt_cache_key: WireText | None = None
    prompt_cache_options: Any = None
    prompt_cache_retention: WireText | None = None
    safety_identifier: WireText | None = None

    @field_validator("stop", mode="before")
    @classmethod
    def _stop(cls, value: object) -> object:
        if isinstance(value, str):
            return (value,)
        if isinstance(value, list):
            if len(value) > 4:
                raise ValueError(f"at most 4 stop sequences are allowed, got {len(value)}")
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
        # Each would leave out of the reply what the client asked to be in it (sources, a moderation verdict), or
        # be refused as on /v1/responses (``text.verbosity``).
        ("web_search_options", body.web_search_options is not None, "web search is not supported"),
        ("moderation", body.moderation is not None, "moderation is not supported"),
        ("verbosity", body.verbosity is not None, "verbosity is not supported"),
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


def not_carried(body: BaseModel, names: Iterable[str]) -> tuple[str, ...]:
    """Of the fields ``names`` no provider carries, those ``body`` set to anything but null or ``false``; then
    the top-level fields the route does not know (``unknown_fields``)."""
    known = tuple(name for name in names if (value := request_value(body, name)) is not None and value is not False)
    return known + unknown_fields(body)


#: How many unknown fields the dropped-parameters header names (the first, sorted), and the form a name needs to
#: be named there at all: a header carries printable ASCII, a client's JSON key may be anything of any length.
MAX_NAMED_UNKNOWN = 16
_NAMEABLE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


def unknown_fields(body: BaseModel) -> tuple[str, ...]:
    """Top-level fields ``body`` holds that the route does not know, e.g. vLLM's ``top_k`` or ``min_p`` sent with
    openai-python's ``extra_body``: no provider is sent them, so they are reported as dropped, never ignored."""
    extra = body.model_extra
    if not extra:
        return ()
    return tuple(sorted(name for name in extra if _NAMEABLE.fullmatch(name))[:MAX_NAMED_UNKNOWN])


def call_params(
    body: BaseModel, model: CatalogueModel, names: Mapping[str, tuple[str, ...]] = OPENAI_PARAMS
) -> GenerationParams:
    """This call's own values (the gateway applies them over the answering model's defaults), after checking
    the model's limits. ``names``: our field → the request's field names (each /v1 route has its own; a dotted
    name is a field of an object, the Responses API's ``reasoning.effort``)."""
    overrides: dict[str, object] = {}
    for field, aliases in names.items():
        for name in aliases:
            value = request_value(body, name)
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


def dropped_by_caller(
    body: BaseModel, dropped: Iterable[str], *, model: str, names: Mapping[str, tuple[str, ...]] = OPENAI_PARAMS
) -> list[str]:
    """Of the parameters the answering provider could not carry, those this call set, under the names it used.

    The rest are catalogue defaults the operator configured, not the caller's doing: they are not reported
    to the caller; the access log line lists every dropped parameter (``dropped_params``), and this debug
    line says which were defaults.
    """
    named: list[str] = []
    defaults: list[str] = []
    for field in dropped:
        # A request field a provider cannot enforce (``tool_choice``) is reported under its own name.
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
        not_carried=not_carried(body, NOT_CARRIED),
    )


# --- chat completions: the route ----------------------------------------------------------------


async def open_reply(
    request: Request,
    body: BaseModel,
    model_id: str,
    to_chat: Callable[[CatalogueModel, Settings], ChatRequest],
    param_names: Mapping[str, tuple[str, ...]] = OPENAI_PARAMS,
    *,
    whole: bool = False,
) -> tuple[StreamStart, dict[str, str]]:
    """What every ``/v1`` generation route does before its first byte: resolve ``model_id``, admit the call
    (key, policy 403, limits 429; slots held until the reply ends), build its ``ChatRequest`` with
    ``to_chat(model, settings)`` and open the reply (retries, fallbacks, metrics). Returns the stream and
    the ``X-Modelgate-*`` headers: the dropped parameters ``body`` set, under the route's own ``param_names``.
    ``whole``: the reply is collected before the response starts (``gateway.open_stream``)."""
    state = gateway(request)
    model = state.catalogue.get(model_id)
    admission = await admit(state, request, model)  # key, policy (403), limits (429); held until the reply ends
    chat = to_chat(model, state.settings)
    start = await open_for_client(request, state, model, chat, admission, whole=whole)
    headers = {"X-Modelgate-Model": start.model.id}
    dropped = dropped_by_caller(body, start.dropped_params, model=start.model.id, names=param_names)
    if dropped:
        headers["X-Modelgate-Dropped-Params"] = ",".join(dropped)
    return start, headers


@router.post("/v1/chat/completions", summary="Chat completion (OpenAI shape), streamed or not")
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    start, headers = await open_reply(
        request, body, body.model, lambda model, settings: to_chat_request(body, model, settings), whole=not body.stream
    )
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        encoder = ChunkEncoder(
            completion_id=completion_id, created=created, model=start.model.id, include_usage=include_usage
        )
        return RelayResponse(
            encoder.encode(start.events), media_type=STREAM_MEDIA_TYPE, headers={**STREAM_HEADERS, **headers}
        )
    collecting = collect_completion(
        start.events, completion_id=completion_id, created=created, model=start.model.id, provider=start.model.provider
    )
    completion = await collect_for_client(request, gateway(request), start, collecting)
    if (completion.get("usage") or {}).get("estimated"):
        headers[USAGE_HEADER] = "estimated"
    return Response(orjson.dumps(completion), media_type=JSON, headers=headers)
