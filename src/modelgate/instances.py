"""Provider instances: ``[providers.NAME]`` of the catalogue file, validated and resolved.

An instance has a ``kind`` (the wire protocol family: ``huggingface``, ``cloudflare``, ``openrouter``,
``ollama`` or ``openai``), a base URL and the name of the environment variable holding its key
(credentials never live in the file). The four seed names always exist, each an instance of its own
kind with today's variables; further instances are declared by name (a self-hosted TGI beside the HF
router, a vLLM or llama.cpp server, ...). ``Instance.protocol`` names the adapter that speaks it
(``providers.PROVIDERS``). Messages name the file, the instance and the field, as the catalogue's do.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from modelgate.errors import CatalogueError
from modelgate.schema import Endpoints
from modelgate.settings import CREDENTIAL_VARIABLES, DEFAULT_BASE_URLS, base_url_problem
from modelgate.wire import MAX_STOP_SEQUENCES, Count

#: The providers the seed's ``endpoints`` object knows, in its key order: instances that always exist.
PROVIDER_NAMES: tuple[str, ...] = tuple(Endpoints.__annotations__)

Kind = Literal["huggingface", "cloudflare", "openrouter", "ollama", "openai"]
#: Provider kinds: the wire protocol families an instance can speak.
KINDS: tuple[str, ...] = ("huggingface", "cloudflare", "openrouter", "ollama", "openai")
#: Hugging Face router policies; any other routing value names a serving provider ("together", ...).
ROUTING_POLICIES: tuple[str, ...] = ("auto", "fastest", "cheapest")
_ROUTING = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
#: Parameters outside the standard Chat Completions fields that an ``openai`` instance may map to its
#: server's own names (``extra_params``), e.g. llama.cpp's ``repeat_penalty``, vLLM's ``repetition_penalty``;
#: and ``max_new_tokens``, sent as ``max_tokens`` unless renamed (OpenAI's reasoning models refuse that name).
EXTRA_PARAMS: tuple[str, ...] = ("typical_p", "repetition_penalty", "truncate", "max_new_tokens")
#: Fields of a Chat Completions request modelgate writes itself (``providers.chat_completions``: the body's own and
#: the standard parameters' wire names): a parameter mapped onto one would replace it in every call.
REQUEST_FIELDS = frozenset(
    {
        *("model", "messages", "stream", "stream_options", "tools", "tool_choice", "parallel_tool_calls"),
        *("response_format", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop", "seed"),
        *("presence_penalty", "frequency_penalty", "reasoning_effort"),
    }
)
#: What ``max_new_tokens`` may be sent as among those: its own names on the wire.
TOKEN_LIMIT_FIELDS = frozenset({"max_tokens", "max_completion_tokens"})
#: Hosts whose Chat Completions take the token limit only as ``max_completion_tokens`` for some models (OpenAI's
#: o-series and GPT-5 answer ``max_tokens`` with a 400) and as that name for all: the default there.
MAX_COMPLETION_TOKENS_HOSTS = frozenset({"api.openai.com"})
#: Hosts whose Chat Completions take at most so many ``stop`` sequences: an ``openai`` instance's limit there. OpenAI's
#: API reference: "Up to 4 sequences"; more are a 400 (``array_above_max_length``, "Invalid 'stop': array too long.
#: Expected an array with maximum length 4, but got an array with length 5 instead.").
STOP_SEQUENCE_LIMITS: Mapping[str, int] = MappingProxyType({"api.openai.com": 4})


# Strict, as the rest of the catalogue file: a quoted number is a mistake, not something to coerce.
_closed = ConfigDict(extra="forbid", strict=True)


def check_routing(value: str | None) -> str | None:
    if value is not None and not _ROUTING.match(value):
        raise ValueError(
            f"{value!r} is not a routing policy ({', '.join(ROUTING_POLICIES)}) nor a provider name "
            "(lower-case letters, digits, '.', '_', '-')"
        )
    return value


#: The longest any of a provider's durations may be (a week): a finite number the event loop's timers can hold; ``inf``
#: or ``1e300`` seconds would fail when a request arms its timer, not when the file is read.
MAX_SECONDS = 7 * 86_400
Seconds = Annotated[float, Field(gt=0, le=MAX_SECONDS, allow_inf_nan=False)]


class ProviderEntry(BaseModel):
    model_config = _closed

    kind: Kind | None = Field(default=None, description="Wire protocol family; defaults to a seed name's own")
    api: Literal["router", "tgi"] | None = Field(default=None, description="huggingface kind only")
    base_url: str | None = None
    api_key_env: str | None = Field(default=None, description="The environment variable holding the bearer key")
    routing: str | None = Field(default=None, description="Hugging Face router policy: auto, fastest, cheapest, …")
    extra_params: dict[str, str] = Field(
        default_factory=dict,
        description="openai kind: catalogue parameters → the server's field names (beyond the standard fields; "
        "max_new_tokens too)",
    )
    max_stop_sequences: Annotated[
        int | None,
        Field(
            ge=1,
            le=MAX_STOP_SEQUENCES,
            description="How many stop sequences the server takes, where it refuses more (TGI's --max-stop-sequences, "
            "vLLM's VLLM_MAX_STOP_STRINGS); default: the kind's or the host's known limit, else none",
        ),
    ] = None
    connect_timeout: Seconds = 5.0
    first_token_timeout: Seconds = 60.0
    idle_timeout: Seconds = 60.0
    whole_reply_timeout: Annotated[
        Seconds, Field(description="Seconds a non-streamed call may take to be generated whole (its status line)")
    ] = 600.0
    max_concurrency: Annotated[Count | None, Field(gt=0)] = None
    # Resilience (see resilience.py): retries before the first event, then the circuit breakers (the
    # provider's and each of its models', all with these settings).
    max_retries: Annotated[int, Field(ge=0, le=10, description="Retries of a transient failure")] = 2
    retry_base_delay: Annotated[Seconds, Field(description="Backoff base, seconds (doubles per retry)")] = 0.25
    retry_max_delay: Annotated[Seconds, Field(description="Backoff cap; a longer Retry-After is not waited")] = 4.0
    breaker_threshold: Annotated[Count, Field(ge=1, description="Consecutive failures that open the breaker")] = 5
    breaker_window: Annotated[Seconds, Field(description="Seconds within which those failures count")] = 30.0
    breaker_cooldown: Annotated[Seconds, Field(description="Seconds the breaker stays open")] = 15.0
    probe_timeout: Annotated[Seconds, Field(description="Deadline of one health probe, seconds")] = 10.0

    @field_validator("routing")
    @classmethod
    def _routing(cls, value: str | None) -> str | None:
        return check_routing(value)

    @field_validator("extra_params")
    @classmethod
    def _known_params(cls, value: dict[str, str]) -> dict[str, str]:
        for name, wire in value.items():
            if name not in EXTRA_PARAMS:
                raise ValueError(f"{name!r} is not a parameter to map (one of: {', '.join(EXTRA_PARAMS)})")
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", wire):
                raise ValueError(f"{name}: {wire!r} is not a request field name")
            if wire in REQUEST_FIELDS and not (name == "max_new_tokens" and wire in TOKEN_LIMIT_FIELDS):
                raise ValueError(f"{name}: {wire!r} is a field modelgate writes itself; map to the server's own name")
        named = list(value.values())
        for wire in dict.fromkeys(named):
            if named.count(wire) > 1:
                raise ValueError(f"{wire!r} is named twice; each parameter needs a field of its own")
        return value

    @field_validator("api_key_env")
    @classmethod
    def _variable_name(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", value):
            raise ValueError(f"{value!r} is not an environment variable name (the key itself never goes here)")
        return value

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and (problem := base_url_problem(value)):
            raise ValueError(problem)
        return value


@dataclass(frozen=True, slots=True)
class Instance:
    """One ``[providers.NAME]``, resolved: what the app needs to build its provider adapter."""

    name: str
    kind: str
    #: Hugging Face only: "router" or "tgi"; None for the other kinds.
    api: str | None
    #: From the file, else the kind's default; None only where the environment must supply it.
    base_url: str | None
    #: Every variable that must be set for the instance to be configured (the bearer key last).
    credential_variables: tuple[str, ...]
    #: The variable holding the bearer key (None: the instance sends no key).
    key_variable: str | None
    routing: str | None
    entry: ProviderEntry
    #: ``openai`` kind: parameter → the server's field name, beyond the standard fields.
    extra_params: Mapping[str, str] = field(default_factory=dict)

    def wire_params(self, base_url: str) -> Mapping[str, str]:
        """``extra_params`` for a server at ``base_url`` (from the file or the environment): a host that needs it
        gets ``max_new_tokens`` as ``max_completion_tokens`` unless the file maps it."""
        if self.kind != "openai" or "max_new_tokens" in self.extra_params:
            return self.extra_params
        if urlsplit(base_url).hostname not in MAX_COMPLETION_TOKENS_HOSTS:
            return self.extra_params
        return {**self.extra_params, "max_new_tokens": "max_completion_tokens"}

    def stop_limit(self, base_url: str) -> int | None:
        """How many ``stop`` sequences the server at ``base_url`` (from the file or the environment) takes: the entry's
        ``max_stop_sequences``, else its host's known limit (``STOP_SEQUENCE_LIMITS``); None: the adapter's default."""
        if self.entry.max_stop_sequences is not None:
            return self.entry.max_stop_sequences
        if self.kind != "openai":
            return None
        return STOP_SEQUENCE_LIMITS.get(urlsplit(base_url).hostname or "")

    @property
    def protocol(self) -> str:
        """The registry key of the adapter speaking this instance's wire protocol."""
        return "tgi" if self.api == "tgi" else self.kind


def _instance(name: str, entry: ProviderEntry, source: str) -> Instance:
    where = f"{source}: providers.{name}"
    kind = entry.kind or (name if name in PROVIDER_NAMES else None)
    if kind is None:
        raise CatalogueError(
            f"{where}: kind: required for a provider that is not one of {', '.join(PROVIDER_NAMES)} "
            f"(one of: {', '.join(KINDS)})"
        )
    if entry.api is not None and kind != "huggingface":
        raise CatalogueError(f"{where}: api: only huggingface providers take an api (kind is {kind!r})")
    api = (entry.api or "router") if kind == "huggingface" else None
    if entry.extra_params and kind != "openai":
        raise CatalogueError(f"{where}: extra_params: only openai providers map parameters (kind is {kind!r})")
    if entry.routing is not None and api != "router":
        raise CatalogueError(
            f"{where}: routing: only the Hugging Face router routes (kind {kind!r}"
            + (f", api {api!r})" if api else ")")
        )
    if api == "router" and entry.base_url and entry.base_url.rstrip("/").endswith("/hf-inference"):
        # The text-generation route modelgate used before issue 10: the router's chat lives elsewhere now.
        raise CatalogueError(
            f"{where}: base_url: {entry.base_url!r} is Hugging Face's old text-generation route; the router's "
            f'Chat Completions are at {DEFAULT_BASE_URLS["huggingface"]} (set api = "tgi" for a TGI server)'
        )
    default_url = None if api == "tgi" else DEFAULT_BASE_URLS.get(kind)
    base_url = entry.base_url or default_url
    if base_url is None:
        what = 'huggingface api "tgi"' if api == "tgi" else f"kind {kind!r}"
        raise CatalogueError(f"{where}: base_url: required for {what} (there is no default)")
    variables = CREDENTIAL_VARIABLES[kind]
    key_variable = variables[-1] if variables else None
    if entry.api_key_env is not None:
        key_variable = entry.api_key_env
        variables = (*variables[:-1], key_variable)
    return Instance(
        name=name,
        kind=kind,
        api=api,
        base_url=base_url.rstrip("/"),
        credential_variables=tuple(variables),
        key_variable=key_variable,
        routing=entry.routing,
        entry=entry,
        extra_params=dict(entry.extra_params),
    )


def build_instances(declared: Mapping[str, ProviderEntry], source: str) -> dict[str, Instance]:
    """The seed's four names first (always present), then the further instances as declared."""
    names = list(PROVIDER_NAMES) + [name for name in declared if name not in PROVIDER_NAMES]
    return {name: _instance(name, declared.get(name) or ProviderEntry(), source) for name in names}
