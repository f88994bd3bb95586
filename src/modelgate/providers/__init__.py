"""Provider registry: wire protocol → adapter class. Adding a provider kind is one line here.

The key is a provider kind (``catalogue.KINDS``), except that the ``huggingface`` kind speaks two
protocols: its router (``"huggingface"``) and, with ``api = "tgi"``, TGI (``"tgi"``);
``catalogue.Instance.protocol`` names the key for an instance.
"""

from __future__ import annotations

from modelgate.providers._http import new_session
from modelgate.providers.base import Connection, ProbeResult, Provider
from modelgate.providers.cloudflare import Cloudflare
from modelgate.providers.huggingface import HuggingFaceRouter
from modelgate.providers.ollama import Ollama
from modelgate.providers.openai import OpenAICompatible
from modelgate.providers.openrouter import OpenRouter
from modelgate.providers.tgi import TGI

PROVIDERS: dict[str, type[Provider]] = {
    "huggingface": HuggingFaceRouter,
    "tgi": TGI,
    "cloudflare": Cloudflare,
    "openrouter": OpenRouter,
    "ollama": Ollama,
    "openai": OpenAICompatible,
}

__all__ = ["PROVIDERS", "Connection", "ProbeResult", "Provider", "new_session"]
