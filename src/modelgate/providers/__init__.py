"""Provider registry: catalogue ``provider`` value → adapter class. Adding a provider is one line here."""

from __future__ import annotations

from modelgate.providers.base import Connection, ProbeResult, Provider

PROVIDERS: dict[str, type[Provider]] = {}

__all__ = ["PROVIDERS", "Connection", "ProbeResult", "Provider"]
