"""Provider registry: catalogue ``provider`` value → adapter class. Adding a provider is one line here."""

from __future__ import annotations

from modelgate.providers._http import new_session
from modelgate.providers.base import Connection, ProbeResult, Provider
from modelgate.providers.cloudflare import Cloudflare
from modelgate.providers.huggingface import HuggingFace
from modelgate.providers.ollama import Ollama
from modelgate.providers.openrouter import OpenRouter

PROVIDERS: dict[str, type[Provider]] = {
    "huggingface": HuggingFace,
    "cloudflare": Cloudflare,
    "openrouter": OpenRouter,
    "ollama": Ollama,
}

__all__ = ["PROVIDERS", "Connection", "ProbeResult", "Provider", "new_session"]
