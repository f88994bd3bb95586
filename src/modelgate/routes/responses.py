"""``POST /v1/responses``: OpenAI's Responses API, stateless, over the same path as ``/v1/chat/completions``.

The request (``routes.responses_input``) becomes a ``ChatRequest`` and goes through ``routes.openai.open_reply``
(the catalogue resolver, keys, policy, limits, ``gateway.open_stream`` with its retries, fallbacks and
metrics); the events come back through ``encoders.responses``. Errors are ``modelgate.errors`` raised here,
rendered in OpenAI's ``{"error": {...}}`` shape by ``app.py`` as for every ``/v1`` path.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from modelgate.app import gateway
from modelgate.chat import CACHE_CONTROL, IMAGE_DETAIL, SCHEMA_DESCRIPTION, TOOL_STRICT
from modelgate.encoders.openai import USAGE_HEADER
from modelgate.encoders.responses import HEADERS as STREAM_HEADERS
from modelgate.encoders.responses import MEDIA_TYPE as STREAM_MEDIA_TYPE
from modelgate.encoders.responses import ResponseHead, ResponseStreamEncoder, collect_response
from modelgate.errors import BadRequest
from modelgate.relay_response import RelayResponse
from modelgate.routes.openai import JSONBodyRoute, open_reply
from modelgate.routes.opening import collect_for_client
from modelgate.routes.responses_input import (
    RESPONSES_PARAMS,
    ResponsesRequest,
    echo_text_format,
    echo_tool_choice,
    echo_tools,
    refuse_stateful,
    to_chat_request,
    tool_namespaces,
)

#: As on /v1/chat/completions: a body without Content-Type is read as JSON, another media type is a 415.
router = APIRouter(tags=["OpenAI compatible"], route_class=JSONBodyRoute)

JSON = "application/json"

#: The capability check (``Provider.check``) names Chat Completions' fields; these are this API's.
_OUR_PARAMS: Mapping[str, str] = {"response_format": "text.format", "messages": "input"}
#: The Chat Completions names of request fields a provider could not carry (``ChatRequest.bare_form_losses``) →
#: this API's, for the dropped-parameters header.
_OUR_NAMES: Mapping[str, str] = {
    SCHEMA_DESCRIPTION: "text.format.description",
    IMAGE_DETAIL: "input_image.detail",
    TOOL_STRICT: "tools.strict",
    CACHE_CONTROL: "input.content.cache_control",
}


@router.post("/v1/responses", summary="Create a model response (OpenAI Responses API, stateless), streamed or not")
async def create_response(body: ResponsesRequest, request: Request) -> Response:
    refuse_stateful(body)
    try:
        start, headers = await open_reply(
            request,
            body,
            body.model,
            lambda model, settings: to_chat_request(body, model, settings),
            RESPONSES_PARAMS,
            field_names=_OUR_NAMES,
            whole=not body.stream,
        )
    except BadRequest as exc:
        exc.param = _OUR_PARAMS.get(exc.param or "", exc.param)
        raise
    head = ResponseHead.new(
        start.model.id,
        int(time.time()),
        instructions=body.instructions,
        max_output_tokens=body.max_output_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        tool_choice=echo_tool_choice(body.tool_choice),
        tools=echo_tools(body),
        namespaces=tool_namespaces(body),
        text_format=echo_text_format(body),
        parallel_tool_calls=body.parallel_tool_calls is not False,
        metadata=body.metadata,
        user=body.user,
        # Echoed as applied: a provider without a form for it dropped it (and the header says so).
        reasoning_effort=None
        if body.reasoning is None or "reasoning_effort" in start.dropped_params
        else body.reasoning.effort,
    )
    provider = start.model.provider
    if body.stream:
        encoder = ResponseStreamEncoder(head, provider=provider)
        return RelayResponse(
            encoder.encode(start.events), media_type=STREAM_MEDIA_TYPE, headers={**STREAM_HEADERS, **headers}
        )
    collecting = collect_response(start.events, head, provider=provider)
    response = await collect_for_client(request, gateway(request), start, collecting)
    if (response.get("usage") or {}).get("estimated"):
        headers[USAGE_HEADER] = "estimated"
    return Response(orjson.dumps(response), media_type=JSON, headers=headers)
