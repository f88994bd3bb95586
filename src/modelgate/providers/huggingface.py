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

from typing import TYPE_CHECKING

from modelgate.providers.chat_completions import ChatCompletionsProvider

if TYPE_CHECKING:
    from modelgate.catalogue import CatalogueModel


class HuggingFaceRouter(ChatCompletionsProvider):
    name = "huggingface"
    key_variable = "HF_TOKEN"

    def upstream_model(self, model: CatalogueModel) -> str:
        routing = model.routing
        return f"{model.upstream_model}:{routing}" if routing and routing != "auto" else model.upstream_model
