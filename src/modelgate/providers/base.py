"""The one small contract every provider adapter implements.

A provider gets its connection (base URL, credentials, timeouts) and the shared HTTP client (an
``aiohttp.ClientSession``, ``providers._http.new_session``) injected; it knows only its own wire
protocol. ``stream()`` yields batches of ``StreamEvent``s, one non-empty batch per upstream network
read, and raises ``modelgate.errors`` exceptions, including mid-stream; it never lets an aiohttp or JSON
exception out. When it returns normally its last batch ends with exactly one ``Finish`` event. An adapter
passes ``Upstream.stream``'s batches on unchanged: the push lane (``push_lane.py``) carries the middle of a reply
from that reader to the client without passing through the adapter.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import aiohttp

from modelgate.chat import AUTO_CACHE_CONTROL, CACHE_CONTROL, Capability, ChatRequest, GenerationParams, StreamEvent
from modelgate.errors import BadRequest

if TYPE_CHECKING:
    from modelgate.catalogue import CatalogueModel


_FEATURES: Mapping[str, str] = {
    "tools": "tool calling",
    "json": "structured output (response_format)",
    "vision": "image input",
    "reasoning": "reasoning",
}


#: The request field that needs each capability (the error's ``param``).
_PARAMS: Mapping[str, str] = {
    "tools": "tools",
    "json": "response_format",
    "vision": "messages",
    "reasoning": "messages",
}


@dataclass(frozen=True)
class Connection:
    base_url: str
    credentials: Mapping[str, str] = field(default_factory=dict)
    connect_timeout: float = 5.0
    #: Seconds to wait for the first streamed byte of a reply.
    first_token_timeout: float = 60.0
    #: Seconds allowed between two events once the reply streams (bytes that complete no event, such as
    #: SSE comments, do not count as progress).
    idle_timeout: float = 60.0
    #: Seconds to wait for a whole (non-streamed) reply's status line, which a server sends once it has
    #: generated everything: the generation's whole length, not a first token's wait.
    whole_reply_timeout: float = 600.0
    #: The provider instance this connects (errors and logs name it); empty: the adapter's kind.
    name: str = ""
    #: Which of ``credentials`` is the bearer key (an instance's ``api_key_env``); None: the kind's own.
    key_variable: str | None = None
    #: ``openai`` kind: further parameters the instance's server takes, ours → its wire name (``extra_params``).
    extra_params: Mapping[str, str] = field(default_factory=dict)
    #: How many ``stop`` sequences the instance's server takes, as its entry or its host says (``Instance.stop_limit``);
    #: None: the protocol's own default (``Provider.max_stop_sequences``).
    max_stop_sequences: int | None = None

    def api_key(self, default_variable: str) -> str:
        """The bearer key: the instance's ``api_key_env`` value, else the kind's own variable's."""
        return self.credentials.get(self.key_variable or default_variable, "")

    def bearer(self, default_variable: str) -> dict[str, str]:
        """``Authorization: Bearer`` with ``api_key``; no header when there is no key (a local server takes none)."""
        key = self.api_key(default_variable)
        return {"Authorization": f"Bearer {key}"} if key else {}

    #: Bytes the reply may send without completing an event (a line, an SSE event, an NDJSON record).
    max_event_bytes: int = 4 * 1024 * 1024
    #: Seconds the whole reply may last; None: no limit.
    max_stream_seconds: float | None = None


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
    #: Registry key: the protocol (a provider kind, or "tgi"); the instance name is ``connection.name``.
    name: ClassVar[str]
    #: ``GenerationParams`` fields this provider's protocol can carry; others are dropped and reported.
    supported_params: ClassVar[frozenset[str]]

    #: Whether the protocol takes a content part's ``cache_control`` (a prompt-caching breakpoint, ``CacheBreak``)
    #: and the request's own (automatic caching, ``ChatRequest.cache``): OpenRouter documents both and passes them
    #: on. The other kinds' servers document none (OpenAI's own refuses a field it does not know), so there they are
    #: left out and reported (``lost_hints``).
    carries_cache_control: ClassVar[bool] = False
    #: Whether the upstream says what each reply cost (``Usage.cost``, read by the kind's ``read_cost``): a model it
    #: serves without catalogue prices may still cost money, which no budget can price before the call
    #: (``budgets.estimate``).
    reports_cost: ClassVar[bool] = False
    #: The capabilities this adapter can carry at all; a model has those of its catalogue entry that are here.
    capabilities: ClassVar[frozenset[Capability]] = frozenset({"reasoning"})
    #: Tool controls (``ChatRequest.tool_controls`` names) the protocol has no form for: left to the model, reported
    #: as dropped when a call sets them (``lost_tool_controls``) and not listed in ``/v1/models``.
    uncarried_tool_controls: ClassVar[frozenset[str]] = frozenset()
    #: How many ``stop`` sequences the protocol's servers take unless told otherwise, where they refuse more (TGI's
    #: ``--max-stop-sequences``); None: no limit known (Ollama, llama.cpp's server), any number is sent.
    max_stop_sequences: ClassVar[int | None] = None

    def __init__(self, connection: Connection, http: aiohttp.ClientSession) -> None:
        self.connection = connection
        self.http = http

    @staticmethod
    def quota_pool(upstream_model: str) -> str | None:
        """The pool of this kind's models that share one quota of the account with ``upstream_model`` (a refusal of
        the pool, ``UpstreamError.account_block``, blocks them all and no other), or None."""
        return None

    def model_capabilities(self, model: CatalogueModel) -> frozenset[Capability]:
        """What ``model`` supports through this provider: declared in its entry, and carried by the adapter."""
        return frozenset(c for c in self.capabilities if c in model.capabilities)

    @property
    def stop_limit(self) -> int | None:
        """How many ``stop`` sequences this instance's server takes (None: no limit known)."""
        configured = self.connection.max_stop_sequences
        return configured if configured is not None else self.max_stop_sequences

    def check(self, model: CatalogueModel, request: ChatRequest) -> None:
        """Refuse (``BadRequest``) a request ``model`` cannot serve here, before any upstream call.

        Adapters extend it with what only their protocol rules out (a remote image URL for Ollama)."""
        missing = sorted(request.needs() - self.model_capabilities(model))
        if missing:
            raise BadRequest(
                f"model '{model.id}' does not support {' or '.join(_FEATURES[c] for c in missing)}"
                f" (capability {', '.join(repr(c) for c in missing)})",
                data={"model": model.id, "capabilities": missing},
                param=_PARAMS[missing[0]],
            )
        stop, limit = request.params.stop, self.stop_limit
        if stop and limit is not None and len(stop) > limit and "stop" in self.carried_params:
            # Refused here, never cut to the limit: the sequences left out would let the model run past them.
            raise BadRequest(
                f"stop: model '{model.id}' takes at most {limit} stop sequences (its upstream refuses more), "
                f"got {len(stop)}",
                data={"model": model.id, "limit": limit},
                param="stop",
            )

    @property
    def carried_params(self) -> frozenset[str]:
        """The parameters this instance carries upstream: its kind's, plus any its entry maps."""
        return self.supported_params

    def model_params(self, model: CatalogueModel) -> frozenset[str]:
        """The parameters this instance carries for ``model`` (``supported_parameters`` in ``/v1/models``)."""
        return self.carried_params

    def dropped_params(self, params: GenerationParams) -> list[str]:
        """The set parameters this provider cannot honour, sorted (reported in a response header)."""
        carried = self.carried_params
        return sorted(name for name in params.set_fields() if name not in carried)

    def unenforced(self, model: CatalogueModel, request: ChatRequest) -> list[str]:
        """Request fields this call set that the protocol cannot enforce for ``model`` (reported with the dropped
        parameters, under their OpenAI names: ``tool_choice``, ``parallel_tool_calls``, a ``reasoning_effort``
        value the protocol has no form for)."""
        return []

    def lost_hints(self, request: ChatRequest) -> list[str]:
        """Hints of the caller's the protocol has no place for, which change no answer (a prompt-caching breakpoint:
        only what the call costs and how soon it starts); reported with the dropped parameters."""
        if self.carries_cache_control:
            return []
        lost = [CACHE_CONTROL] if request.cache_breaks() else []
        return lost + ([AUTO_CACHE_CONTROL] if request.cache is not None else [])

    def lost_tool_controls(self, request: ChatRequest) -> list[str]:
        """The tool controls ``request`` sets that this protocol cannot carry (``uncarried_tool_controls``)."""
        return [control for control in request.tool_controls() if control in self.uncarried_tool_controls]

    @abstractmethod
    def stream(self, model: CatalogueModel, request: ChatRequest) -> AsyncIterator[Sequence[StreamEvent]]:
        """Stream one reply in batches (the events of one network read each; never an empty one)."""

    def complete(self, model: CatalogueModel, request: ChatRequest) -> AsyncIterator[Sequence[StreamEvent]]:
        """The reply for a caller that wants it whole (``stream: false``), with ``stream``'s contract.

        Protocols that offer a non-streamed call override this to ask for one JSON reply (``Upstream.fetch``):
        one body to parse instead of a stream of chunks to parse and reassemble. By default, the stream."""
        return self.stream(model, request)

    async def probe(self, models: list[CatalogueModel]) -> ProbeResult | None:
        """A free health probe (no billed call). None when the provider offers none."""
        return None
