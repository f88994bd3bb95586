"""The OpenAI-compatible surface: ``GET /v1/models``, ``GET /v1/models/{id}``, ``POST /v1/chat/completions``.

Same catalogue resolver (``Catalogue.get``) and the same ``gateway.open_stream`` as ``/api/ai/...``:
the request becomes a ``ChatRequest`` in ``routes.openai_request``, the events go back through
``encoders.openai``. Errors are raised from the ``modelgate.errors`` tree; ``app.py`` renders them in
OpenAI's ``{"error": {...}}`` shape for every ``/v1`` path.

Model objects carry extra fields next to OpenAI's four (``id``, ``object``, ``created``, ``owned_by``),
as OpenRouter's and LiteLLM's listings do: SDKs keep unknown fields.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Coroutine, Mapping
from decimal import Decimal
from html.parser import HTMLParser
from types import MappingProxyType
from typing import Any, Literal

import orjson
from fastapi import APIRouter, Request
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field
from starlette.responses import Response

from modelgate.app import gateway
from modelgate.auth import may_call, request_principal, visible_models
from modelgate.catalogue import CatalogueModel, Pricing
from modelgate.chat import ChatRequest
from modelgate.encoders.openai import HEADERS as STREAM_HEADERS
from modelgate.encoders.openai import MEDIA_TYPE as STREAM_MEDIA_TYPE
from modelgate.encoders.openai import USAGE_HEADER, ChunkEncoder, collect_completion
from modelgate.errors import ModelgateError, NotFound
from modelgate.gateway import StreamStart
from modelgate.limits import admit
from modelgate.providers import Provider
from modelgate.relay_response import RelayResponse
from modelgate.routes.openai_request import OPENAI_PARAMS, ChatCompletionRequest, dropped_by_caller, to_chat_request
from modelgate.routes.opening import collect_for_client, open_for_client
from modelgate.settings import Settings


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

JSON = "application/json"
#: The parameters of this call its answering provider did not carry (the header the README documents).
DROPPED_HEADER = "X-Modelgate-Dropped-Params"

#: ``created`` of every model object. The catalogue records no dates; a constant keeps the listing
#: byte-stable across restarts and reloads (the value of the reference example, providers.md 5.5).
MODEL_CREATED = 1_700_000_000

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
        # Only the controls the protocol carries: a client reading the list (OpenRouter's) would count on the rest.
        names.update(n for n in CAPABILITY_PARAMS.get(capability, ()) if n not in provider.uncarried_tool_controls)
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
    if (stop_limit := max_stop_sequences(model, provider)) is not None:
        body["max_stop_sequences"] = stop_limit
    return body


def max_stop_sequences(model: CatalogueModel, provider: Provider | None) -> int | None:
    """How many ``stop`` sequences ``model``'s upstream takes, where it refuses more (None: no limit known, or no
    ``stop`` carried): what ``Provider.check`` holds a call to, so a client can size its list before sending it."""
    if provider is None or "stop" not in provider.model_params(model):
        return None
    return provider.stop_limit


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
    max_stop_sequences: int | None = Field(
        default=None, description="The most `stop` sequences a call may send; only where the upstream refuses more"
    )


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


# --- chat completions: the route ----------------------------------------------------------------


async def open_reply(
    request: Request,
    body: BaseModel,
    model_id: str,
    to_chat: Callable[[CatalogueModel, Settings], ChatRequest],
    param_names: Mapping[str, tuple[str, ...]] = OPENAI_PARAMS,
    *,
    field_names: Mapping[str, str] = MappingProxyType({}),
    whole: bool = False,
) -> tuple[StreamStart, dict[str, str]]:
    """What every ``/v1`` generation route does before its first byte: resolve ``model_id``, admit the call
    (key, policy 403, limits 429; slots held until the reply ends), build its ``ChatRequest`` with
    ``to_chat(model, settings)`` and open the reply (retries, fallbacks, metrics). Returns the stream and
    the ``X-Modelgate-*`` headers: the dropped parameters ``body`` set, under the route's own ``param_names`` (and
    ``field_names`` for request fields it names otherwise than Chat Completions).
    ``whole``: the reply is collected before the response starts (``gateway.open_stream``)."""
    state = gateway(request)
    model = state.catalogue.get(model_id)
    admission = await admit(state, request, model)  # key, policy (403), limits (429); held until the reply ends
    chat = to_chat(model, state.settings)
    start = await open_for_client(request, state, model, chat, admission, whole=whole)
    headers = {"X-Modelgate-Model": start.model.id}
    dropped = dropped_by_caller(body, start.dropped_params, model=start.model.id, names=param_names, fields=field_names)
    if dropped:
        headers[DROPPED_HEADER] = ",".join(dropped)
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
