"""The one small contract every provider adapter implements.

A provider gets its connection (base URL, credentials, timeouts) and the shared HTTP client (an
``aiohttp.ClientSession``, ``providers._http.new_session``) injected; it knows only its own wire
protocol. ``stream()`` yields batches of ``StreamEvent``s, one non-empty batch per upstream network
read, and raises ``modelgate.errors`` exceptions, including mid-stream; it never lets an aiohttp or JSON
exception out. When it returns normally its last batch ends with exactly one ``Finish`` event.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import aiohttp

from modelgate.chat import ChatRequest, GenerationParams, StreamEvent

if TYPE_CHECKING:
    from modelgate.catalogue import CatalogueModel


@dataclass(frozen=True)
class Connection:
    base_url: str
    credentials: Mapping[str, str] = field(default_factory=dict)
    connect_timeout: float = 5.0
    #: Seconds to wait for the first streamed byte of a reply.
    first_token_timeout: float = 60.0
    #: Seconds allowed between two chunks once the reply streams; there is no total deadline.
    idle_timeout: float = 60.0


@dataclass(frozen=True)
class ProbeResult:
    """What a free probe (a model listing, never a generation) found upstream."""

    reachable: bool
    #: Upstream model ids that are available, or None when the probe cannot tell.
    available_models: frozenset[str] | None = None
    detail: str | None = None
    #: Upstream model id → its context window in tokens, for the listed models whose entry gives one.
    context_lengths: Mapping[str, int] = field(default_factory=dict)


class Provider(ABC):
    #: Registry key; equals the catalogue's ``provider`` value.
    name: ClassVar[str]
    #: ``GenerationParams`` fields this provider's protocol can carry; others are dropped and reported.
    supported_params: ClassVar[frozenset[str]]

    def __init__(self, connection: Connection, http: aiohttp.ClientSession) -> None:
        self.connection = connection
        self.http = http

    def dropped_params(self, params: GenerationParams) -> list[str]:
        """The set parameters this provider cannot honour, sorted (reported in a response header)."""
        return sorted(name for name in params.set_fields() if name not in self.supported_params)

    @abstractmethod
    def stream(self, model: CatalogueModel, request: ChatRequest) -> AsyncIterator[Sequence[StreamEvent]]:
        """Stream one reply in batches (the events of one network read each; never an empty one)."""

    async def probe(self, models: list[CatalogueModel]) -> ProbeResult | None:
        """A free health probe (no billed call). None when the provider offers none."""
        return None
