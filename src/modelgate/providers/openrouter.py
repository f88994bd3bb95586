"""OpenRouter ``POST /chat/completions``: Chat Completions (``providers/chat_completions.py``) with its extras
(providers.md §3).

``: OPENROUTER PROCESSING`` comments are skipped by the SSE decoder; ``delta.reasoning`` is reasoning, never
content; a failure after the status line is a chunk with a top-level ``error`` (``code`` an HTTP status
number or a string such as ``server_error``, a 429's reset in ``metadata.headers``); usage comes on the
finish chunk or in a separate last chunk, with what the request cost (``billed_cost``). An input the moderation a
model requires has flagged is a 403 with the reasons (read as the client's refusal by ``chat_completions``). Beyond
the standard fields OpenRouter carries ``repetition_penalty`` to the serving provider, and takes its own
``usage: {include: true}`` switch.

Reasoning effort goes in OpenRouter's documented ``reasoning: {"effort": …}`` object
(openrouter.ai/docs/use-cases/reasoning-tokens: ``xhigh``, ``high``, ``medium``, ``low``, ``minimal`` or
``none``; its SDKs' ``ChatRequestEffort`` adds ``max``), which it normalises for each serving provider. It also
takes a top-level ``reasoning_effort`` as a shorthand, but the object is the form its reference documents.

An assistant message's ``reasoning_details`` go back as the client returned them (guides/best-practices/
reasoning-tokens, "Preserving Reasoning": "Pass back unmodified"; the blocks must match the model's output, in
order): with tool calls, Anthropic's and Gemini's reasoning models (whose thought signatures OpenRouter carries there,
never in ``extra_content``) go on from their own reasoning only with them.

Context compression is turned off on every call. OpenRouter's docs (guides/features/message-transforms: "All
OpenRouter endpoints with 8k (8,192 tokens) or less context length will default to using context compression. To
disable this, pass ``plugins: [{"id": "context-compression", "enabled": false}]``"; formerly ``transforms:
["middle-out"]``, off with ``transforms: []``) say a prompt too long for such an endpoint has its middle cut out and
the rest answered, silently: a reply to a prompt the client never sent. Off, it is OpenRouter's 400 naming the
window, as on every larger endpoint. Neither the catalogue nor a request can turn it back on.

A request with a ``response_format`` also sends ``provider: {"require_parameters": true}``. OpenRouter routes a
model's request to any of its serving providers, and "if this setting is omitted or set to false, then providers
will receive only the parameters they support, and ignore the rest" (its SDKs' ``ProviderPreferences.
requireParameters``; docs guides/features/structured-outputs: "To ensure your chosen model supports structured
outputs … set ``require_parameters: true``"): without it a provider without structured outputs answers in free
text, silently. Tools need no such switch (OpenRouter "will only route to providers that support tool use").
The switch covers every parameter sent: when no provider of the model takes them all, OpenRouter answers 404
("No endpoints found that can handle the requested parameters"), the model not available, never a broken answer.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar

from modelgate.chat import reported_cost
from modelgate.errors import ALL_MODELS
from modelgate.providers._http import ErrorDetail, parse_json, seconds_until_utc_midnight
from modelgate.providers.chat_completions import STANDARD_FIELDS, ChatCompletionsProvider
from modelgate.providers.chat_completions import read_error as read_chat_error

if TYPE_CHECKING:
    from modelgate.catalogue import CatalogueModel
    from modelgate.chat import ChatRequest

#: The request field that keeps OpenRouter from cutting the middle out of an over-long prompt (module docstring).
NO_CONTEXT_COMPRESSION: Mapping[str, Any] = MappingProxyType(
    {"plugins": ({"id": "context-compression", "enabled": False},)}
)

#: App attribution (providers.md §3.1); optional for OpenRouter, shown in its rankings. No
#: HTTP-Referer: the project has no public site to name, and inventing one would misattribute.
ATTRIBUTION: Mapping[str, str] = MappingProxyType({"X-Title": "modelgate"})


#: How OpenRouter's 400 names a model id it does not know (``{"error": {"message": "<id> is not a valid model ID",
#: "code": 400}}``): a ``:free`` variant withdrawn or a slug renamed, which is the catalogue's, not the caller's, fault.
UNKNOWN_MODEL = " is not a valid model ID"


#: OpenRouter's 402 for a request that alone costs more than the balance left ("This request requires more credits, or
#: fewer max_tokens. You requested up to 64000 tokens, but can only afford 2666."): a smaller one, or a cheaper model,
#: still passes. "can only afford 0" passes nothing.
_AFFORDABLE = re.compile(r"can only afford (\d+)")


def _out_of_credits(payload: Any) -> str | None:
    """What a 402 says of the account, when it refuses every model of it; None when it is about this request.

    OpenRouter (api_reference/limits.mdx, "Credit limits"; ``error.metadata.limit_source``): the account's balance
    (``openrouter_credits``; below zero it refuses even ``:free`` models) or the key's own credit limit
    (``openrouter_key_limit``) cannot pay, whichever model is asked. Not a request too big for the balance or the
    in-flight budget (``reason`` ``weight_exceeds_budget``, or "can only afford N" tokens), nor the in-flight budget
    itself (``openrouter_in_flight_budget``: settled in seconds, its ``Retry-After`` says when)."""
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict):
        return None
    metadata = error.get("metadata")
    metadata = metadata if isinstance(metadata, dict) else {}
    source, message = metadata.get("limit_source"), str(error.get("message") or "")
    if source == "openrouter_in_flight_budget" or metadata.get("reason") == "weight_exceeds_budget":
        return None
    affordable = _AFFORDABLE.search(message)
    if affordable is not None and int(affordable.group(1)) > 0:
        return None
    if source == "openrouter_key_limit":
        return "the API key's credit limit is used up (raise it, or wait for its reset)"
    return "the account is out of credits (add credits to bring its balance above zero)"


#: The pool of OpenRouter's ``:free`` variants: "every request against a :free model counts toward the account-wide
#: free-model rate limits. The limits apply to your OpenRouter account as a whole — they are not per model"
#: (OpenRouterTeam/docs guides/routing/model-variants/free), 20 requests a minute and 50 (or 1000) a day.
FREE_POOL = ":free"
#: How OpenRouter's 429 names those limits: "Rate limit exceeded: free-models-per-day. Add 10 credits to unlock 1000
#: free model requests per day", "...: free-models-per-day-high-balance.", "...: free-models-per-min." (issues of its
#: users: Gitlawb/openclaude#936 and #1549, n8n-io/n8n#19117); a serving provider's own 429 is one model's.
_FREE_LIMIT = "Rate limit exceeded: free-models-per-"
#: The window of the per-minute one: its reset is at most this far off.
_MINUTE = 60.0
_FREE_LIMIT_TEXT = "the account's quota of requests to :free models, for all of them together, is used up"


def read_error(status: int, body: bytes) -> ErrorDetail:
    """Chat Completions' error body; a 400 for an unknown model id means the model is not available upstream (404):
    not the client's bad request, and a fallback may serve it. A 402 that refuses the account refuses every model
    of it, and a 429 of the ``:free`` limits every ``:free`` model (``ErrorDetail.account_block``), until its
    X-RateLimit-Reset; without one the daily limit resets at 00:00 UTC (the SDKs' ``FreeModelDailyRequests``: "the
    counter resets at UTC midnight")."""
    detail = read_chat_error(status, body)
    if status == 400 and detail.status is None and detail.message.endswith(UNKNOWN_MODEL):
        return dataclasses.replace(detail, status=404)
    if status == 402 and (account := _out_of_credits(parse_json(body))) is not None:
        # Until the cooldown whatever reset it names: credits can be added at any time.
        text = f"{account}: {detail.message}"
        return dataclasses.replace(detail, message=text, retry_after=None, account_block=ALL_MODELS)
    if (detail.status or status) == 429 and detail.message.startswith(_FREE_LIMIT):
        reset = detail.retry_after
        if reset is None and detail.message.startswith(_FREE_LIMIT + "day"):
            reset = seconds_until_utc_midnight()
        elif reset is not None and detail.message.startswith(_FREE_LIMIT + "min"):
            reset = min(reset, _MINUTE)  # a reset further off is not this limit's: no :free model for a day
        text = f"{_FREE_LIMIT_TEXT}; its paid models still answer: {detail.message}"
        return dataclasses.replace(detail, message=text, retry_after=reset, account_block=FREE_POOL)
    return detail


def billed_cost(usage: Mapping[str, Any]) -> float | None:
    """What a request cost in USD, from OpenRouter's ``usage`` (cookbook/administration/usage-accounting: "cost: The
    total amount charged to your account", in credits, which OpenRouter counts in USD). A BYOK request (``is_byok``)
    is also billed by the serving provider to the account's own key, ``cost_details.upstream_inference_cost``, while
    ``cost`` is OpenRouter's fee on it (guides/overview/auth/byok); on any other request that field repeats ``cost``
    or is null, and is not added. None when ``cost`` is no price (``chat.reported_cost``)."""
    cost = reported_cost(usage.get("cost"))
    details = usage.get("cost_details")
    if cost is None or usage.get("is_byok") is not True or not isinstance(details, dict):
        return cost
    provider_charge = reported_cost(details.get("upstream_inference_cost"))
    return cost + provider_charge if provider_charge is not None else cost


class OpenRouter(ChatCompletionsProvider):
    name = "openrouter"
    key_variable = "OPENROUTER_API_KEY"
    fields: ClassVar[Mapping[str, str]] = MappingProxyType(
        {**STANDARD_FIELDS, "repetition_penalty": "repetition_penalty", "reasoning_effort": "reasoning.effort"}
    )
    # The legacy switch; current OpenRouter sends usage on the last chunk anyway (and honours
    # stream_options.include_usage, which every Chat Completions kind sends).
    extra_body: ClassVar[Mapping[str, Any]] = MappingProxyType({"usage": {"include": True}, **NO_CONTEXT_COMPRESSION})
    extra_headers = ATTRIBUTION
    probe_with_key = False  # GET /models is free and needs no key (§3.6)
    read_error = staticmethod(read_error)
    read_cost = staticmethod(billed_cost)
    reports_cost = True
    carries_cache_control = True
    carries_reasoning_details = True
    #: Its API reference (openrouter.ai/docs, OpenAPI ``ChatRequest.stop``: "Stop sequences (up to 4)",
    #: ``maxItems: 4``).
    max_stop_sequences = 4

    @staticmethod
    def quota_pool(upstream_model: str) -> str | None:
        return FREE_POOL if upstream_model.endswith(FREE_POOL) else None

    def build_body(self, model: CatalogueModel, request: ChatRequest, *, stream: bool = True) -> dict[str, Any]:
        body = super().build_body(model, request, stream=stream)
        if request.response_format is not None:  # only providers that honour it (module docstring)
            body.setdefault("provider", {})["require_parameters"] = True
        return body
