"""Hugging Face's router: OpenAI Chat Completions at ``POST {base}/chat/completions`` (the ``huggingface``
kind's default API, ``api = "router"``).

Both official clients send a chat model there: huggingface_hub 2.4 (``inference/_providers/__init__.py``
auto-router for the ``conversational`` task, ``_providers/_common.py`` ``BaseConversationalTask`` →
``/v1/chat/completions``) and ``@huggingface/inference`` 4.13 (``tasks/nlp/chatCompletionStream.ts`` →
``AutoRouterConversationalTask``, ``config.ts`` ``HF_ROUTER_AUTO_ENDPOINT``). The router picks a serving
provider, applies the model's chat template itself and streams OpenAI chunks, with usage when
``stream_options.include_usage`` asks. A ``:fastest``, ``:cheapest`` or ``:<provider>`` suffix on the model
id steers the choice (the catalogue's ``routing``; ``auto`` sends none).

Only the standard Chat Completions fields cross the router: ``typical_p``, ``repetition_penalty`` and
``truncate`` (TGI parameters) are reported as dropped. A self-hosted TGI keeps them: ``api = "tgi"``
(``providers/tgi.py``).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from modelgate.errors import ALL_MODELS
from modelgate.providers._http import ErrorDetail
from modelgate.providers.chat_completions import ChatCompletionsProvider
from modelgate.providers.chat_completions import read_error as read_chat_error

if TYPE_CHECKING:
    from modelgate.catalogue import CatalogueModel

#: How the router's 402 says the account's monthly included credits are spent: ``{"error": "You have exceeded your
#: monthly included credits for Inference Providers. Subscribe to PRO to get 20x more monthly included credits."}``
#: (huggingface/agents-course#386, and the ``402 Client Error: Payment Required for url:
#: https://router.huggingface.co/...`` huggingface_hub raises with it). The credits are the account's, for every
#: routed model ("shared among all members" of an organisation: hub-docs inference-providers/pricing.md).
CREDITS_USED_UP = "monthly included credits"


def read_error(status: int, body: bytes) -> ErrorDetail:
    """Chat Completions' error body; the 402 of spent monthly credits refuses every model of the account
    (``ErrorDetail.account_block``), until the breaker's cooldown: the router names no reset."""
    detail = read_chat_error(status, body)
    if status == 402 and CREDITS_USED_UP in detail.message:
        text = f"the account's monthly included credits for Inference Providers are spent: {detail.message}"
        return dataclasses.replace(detail, message=text, account_block=ALL_MODELS)
    return detail


class HuggingFaceRouter(ChatCompletionsProvider):
    name = "huggingface"
    key_variable = "HF_TOKEN"
    read_error = staticmethod(read_error)

    def upstream_model(self, model: CatalogueModel) -> str:
        routing = model.routing
        return f"{model.upstream_model}:{routing}" if routing and routing != "auto" else model.upstream_model
