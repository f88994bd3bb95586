"""Load and validate the catalogue file into a frozen ``Catalogue``; resolve models; build ``/models``.

The catalogue file (TOML) is the only place models are declared. Loading does all the work once:
validation with messages that name the file, the model and the field; the ``GET /models`` document
with the seed's orders; its JSON body, gzip body and ETag; the route table that the chat routes
resolve through. Listing and calling share that table, so a listed model is always routable.

Providers are *instances*: ``[providers.NAME]`` with a ``kind`` (the wire protocol family), a base URL and
the name of the variable holding its key. The four seed names always exist, as instances of their own
kind; further instances (a self-hosted TGI, a vLLM or llama.cpp server, ...) are declared by name, and a
model's ``provider`` names the instance that serves it.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from modelgate.errors import CatalogueError, NotFound
from modelgate.instances import PROVIDER_NAMES, Instance, ProviderEntry, build_instances, check_routing
from modelgate.schema import ModelParameters
from modelgate.templates import TEMPLATE_NAMES
from modelgate.wire import Count

if TYPE_CHECKING:
    from modelgate.chat import GenerationParams

__all__ = [
    "PROVIDER_NAMES",
    "SAFE_SEGMENT",
    "Catalogue",
    "CatalogueModel",
    "Instance",
    "ModelEntry",
    "ProviderEntry",
    "default_catalogue_path",
    "describe_validation_error",
    "load_catalogue",
    "parse_catalogue",
]

#: A name usable as one URL path segment without escaping (and never "." or "..").
SAFE_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._~-]*$")

DEFAULT_CATALOGUE = "catalogue.toml"

#: Integers written for a number field (``repetition_penalty = 2``) must be exact as a double, as every JSON
#: client reads them.
MAX_EXACT_INT = 2**53
#: Lengths of the usage ledger's columns (usage_store.py): a longer name could not be recorded.
MAX_PROVIDER_NAME = 64
MAX_MODEL_ID = 256


def default_catalogue_path() -> Path:
    return Path(str(resources.files("modelgate").joinpath(DEFAULT_CATALOGUE)))


# --- the file's shape -------------------------------------------------------------------------

# Strict: a quoted "512" or a `true` where a number belongs is a mistake in the file, not something to coerce.
_closed = ConfigDict(extra="forbid", strict=True)


def _plain_number(value: object) -> object:
    # Checked before the int|float union so a wrong type gives one message, not one per union member.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"must be a number, got {value!r}")
    return value


def _finite(value: float) -> float:
    # TOML has inf and nan, and integers of any size: JSON has none of them (orjson writes inf as null,
    # refuses an integer past 64 bits), so GET /models and every cost sum would break.
    if isinstance(value, int):
        if abs(value) > MAX_EXACT_INT:
            raise ValueError(f"must be at most {MAX_EXACT_INT} in magnitude as an integer, got {_shown(value)}")
    elif not math.isfinite(value):
        raise ValueError(f"must be a finite number, got {value}")
    return value


def _shown(value: object) -> str:
    """``value`` for a message: an integer of hundreds of digits by its size (tomllib reads at most 4300)."""
    if isinstance(value, int) and abs(value) > MAX_EXACT_INT:
        digits = str(abs(value))
        if len(digits) > 24:
            return f"an integer of {len(digits)} digits"
    return repr(value)


#: A number as written in the file (ints stay ints, so ``-1`` is served as ``-1``), finite.
Number = Annotated[int | float, BeforeValidator(_plain_number), AfterValidator(_finite)]


class ParametersEntry(BaseModel):
    model_config = _closed

    max_new_tokens: Annotated[Count, Field(gt=0, description="Maximum number of tokens to generate")]
    typical_p: Annotated[Number, Field(description="In (0, 1), or -1 for the provider's default")]
    repetition_penalty: Annotated[Number, Field(description="> 0, or -1 for the provider's default")]
    truncate: Annotated[Count, Field(gt=0, description="Keep only the last N prompt tokens")]
    return_full_text: bool = False
    temperature: Annotated[Number | None, Field(ge=0)] = None

    @field_validator("typical_p")
    @classmethod
    def _typical_p(cls, value: float) -> float:
        if value != -1 and not 0 < value < 1:
            raise ValueError(f"must be in (0, 1) or -1, got {value}")
        return value

    @field_validator("repetition_penalty")
    @classmethod
    def _repetition_penalty(cls, value: float) -> float:
        if value != -1 and not value > 0:
            raise ValueError(f"must be > 0 or -1, got {value}")
        return value


class ConfigurationEntry(BaseModel):
    model_config = _closed

    model: Annotated[str, Field(min_length=1, description="The provider's model identifier")]
    parameters: ParametersEntry


class PricingEntry(BaseModel):
    """USD per million tokens, as providers publish them; the ledger's cost and ``/v1/models``' ``pricing``."""

    model_config = _closed

    input: Annotated[Number, Field(ge=0, description="USD per million prompt tokens")]
    output: Annotated[Number, Field(ge=0, description="USD per million completion tokens (reasoning included)")]
    cached_input: Annotated[
        Number | None,
        Field(ge=0, description="USD per million prompt tokens served from the provider's cache (default: input)"),
    ] = None

    @model_validator(mode="after")
    def _cache_is_a_discount(self) -> PricingEntry:
        # Budgets reserve a request's prompt at the input price before its cache hits are known
        # (budgets.estimate): a cache price above it would let the charge exceed the reservation.
        if self.cached_input is not None and self.cached_input > self.input:
            raise ValueError(f"cached_input ({self.cached_input:g}) is more than input ({self.input:g})")
        return self


class ModelEntry(BaseModel):
    model_config = _closed

    publisher: str
    name: str
    provider: str
    description: str = ""
    icon: str = ""
    type: Literal["instruct", "chat"]
    configuration: ConfigurationEntry
    template: str | None = Field(default=None, description="Chat template (huggingface text-generation only)")
    context_length: Annotated[Count | None, Field(gt=0)] = None
    fallbacks: list[str] = Field(default_factory=list, description="Other models tried in order")
    max_concurrency: Annotated[Count | None, Field(gt=0)] = None
    routing: str | None = Field(default=None, description="Hugging Face router policy; wins over the instance's")
    capabilities: list[Literal["tools", "json", "vision", "reasoning"]] = Field(default_factory=list)
    pricing: PricingEntry | None = Field(default=None, description="Prices per million tokens (optional)")

    @field_validator("publisher", "name")
    @classmethod
    def _safe_segment(cls, value: str) -> str:
        if not SAFE_SEGMENT.match(value):
            raise ValueError(f"{value!r} is not safe as a URL path segment (use letters, digits, '.', '_', '~', '-')")
        return value

    @model_validator(mode="after")
    def _id_length(self) -> ModelEntry:
        if len(self.publisher) + 1 + len(self.name) > MAX_MODEL_ID:  # the usage ledger's model column
            raise ValueError(f"publisher/name: longer than {MAX_MODEL_ID} characters")
        return self

    @field_validator("template")
    @classmethod
    def _known_template(cls, value: str | None) -> str | None:
        if value is not None and value not in TEMPLATE_NAMES:
            raise ValueError(f"unknown template {value!r} (known: {', '.join(TEMPLATE_NAMES)})")
        return value

    @field_validator("routing")
    @classmethod
    def _routing(cls, value: str | None) -> str | None:
        return check_routing(value)

    @field_validator("capabilities")
    @classmethod
    def _unique_capabilities(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("each capability at most once")
        return value


class ServerEntry(BaseModel):
    model_config = _closed

    cache_max_age: Annotated[Count, Field(ge=0)] = 60
    cors_origins: list[str] = Field(default_factory=lambda: ["*"])
    keys_file: str | None = None


class CatalogueFile(BaseModel):
    model_config = _closed

    models_order: list[str] | None = None
    server: ServerEntry = Field(default_factory=ServerEntry)
    providers: dict[str, ProviderEntry] = Field(default_factory=dict)
    models: list[ModelEntry] = Field(min_length=1)

    @field_validator("providers")
    @classmethod
    def _instance_names(cls, value: dict[str, ProviderEntry]) -> dict[str, ProviderEntry]:
        for name in value:
            if not SAFE_SEGMENT.match(name):
                raise ValueError(
                    f"provider {name!r}: the name is not safe as a URL path segment "
                    "(use letters, digits, '.', '_', '~', '-')"
                )
            if len(name) > MAX_PROVIDER_NAME:  # the usage ledger's provider column
                raise ValueError(f"provider {name!r}: the name is longer than {MAX_PROVIDER_NAME} characters")
        return value


# --- the loaded catalogue ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pricing:
    """USD per million tokens (``[models.pricing]``)."""

    input: float
    output: float
    cached_input: float | None = None  #: prompt tokens read from the provider's cache; None: at ``input``

    def cost(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int | None = None) -> float:
        """USD for one request, the one price rule of the ledger's ``cost`` and the budgets' USD.

        Reasoning tokens are part of ``completion_tokens``, billed as output; ``cached_tokens`` (None: not
        reported) are part of ``prompt_tokens``, billed at ``cached_input`` as providers bill cache reads
        (https://platform.openai.com/docs/guides/prompt-caching). A count past the prompt is capped at it.
        """
        if self.cached_input is None or not cached_tokens:
            return (prompt_tokens * self.input + completion_tokens * self.output) / 1_000_000
        cached = min(cached_tokens, prompt_tokens)
        return (
            (prompt_tokens - cached) * self.input + cached * self.cached_input + completion_tokens * self.output
        ) / 1_000_000


@dataclass(frozen=True, slots=True)
class CatalogueModel:
    publisher: str
    name: str
    provider: str
    description: str
    icon: str
    type: Literal["instruct", "chat"]
    upstream_model: str
    parameters: ModelParameters
    template: str | None
    context_length: int
    fallbacks: tuple[str, ...]
    max_concurrency: int | None
    #: Parameter values as written in the file (ints stay ints), in the seed's key order.
    wire_parameters: Mapping[str, Any]
    #: Hugging Face router policy (the model's, else its instance's); "auto" or None sends no suffix.
    routing: str | None = None
    capabilities: frozenset[str] = frozenset()
    pricing: Pricing | None = None

    @property
    def id(self) -> str:
        return f"{self.publisher}/{self.name}"

    @property
    def endpoint(self) -> str:
        return f"/api/ai/{self.provider}/{self.name}/chat"

    @property
    def defaults(self) -> GenerationParams:
        from modelgate.chat import GenerationParams  # the chat types: not needed to load and list the catalogue

        p = self.parameters
        return GenerationParams.from_catalogue(
            max_new_tokens=p.max_new_tokens,
            typical_p=p.typical_p,
            repetition_penalty=p.repetition_penalty,
            truncate=p.truncate,
            temperature=p.temperature,
        )

    def configuration(self) -> dict[str, Any]:
        """This model's entry under ``configurations`` in ``GET /models``."""
        return {
            "publisher": self.publisher,
            "name": self.name,
            "description": self.description,
            "icon": self.icon,
            "type": self.type,
            "configuration": {"model": self.upstream_model, "parameters": dict(self.wire_parameters)},
        }


@dataclass(frozen=True)
class Catalogue:
    """An immutable, validated catalogue. Reloading builds a new one and swaps the reference."""

    source: str
    #: In the order of the ``models`` list of ``GET /models``.
    models: tuple[CatalogueModel, ...]
    #: In declaration order (publishers by first appearance, models as written).
    declared: tuple[CatalogueModel, ...]
    providers: Mapping[str, ProviderEntry]
    server: ServerEntry
    #: Every provider instance by name: the seed's four, then the file's further ones.
    instances: Mapping[str, Instance] = field(default_factory=dict)
    by_id: Mapping[str, CatalogueModel] = field(init=False)
    #: ``/api/ai/{first}/{second}/chat`` → model: both the advertised form and the publisher form.
    routes: Mapping[tuple[str, str], CatalogueModel] = field(init=False)

    def __post_init__(self) -> None:
        if not self.instances:
            object.__setattr__(self, "instances", build_instances(self.providers, self.source))
        object.__setattr__(self, "by_id", {m.id: m for m in self.models})
        object.__setattr__(self, "routes", _route_table(self.source, self.models))

    # -- lookups --

    def get(self, model_id: str) -> CatalogueModel:
        try:
            return self.by_id[model_id]
        except KeyError:
            raise NotFound(f"The model '{model_id}' does not exist", data={"model": model_id}) from None

    def resolve_route(self, first: str, second: str, third: str | None = None) -> CatalogueModel:
        """Resolve ``/api/ai/{first}/{second}[/{third}]/chat``.

        Two segments: an advertised ``{provider}/{name}`` or a ``{publisher}/{name}``.
        Three: ``{provider}/{publisher}/{name}`` where the model is served by that provider.
        """
        if third is None:
            model = self.routes.get((first, second))
        else:
            model = self.by_id.get(f"{second}/{third}")
            if model is not None and model.provider != first:
                model = None
        if model is None:
            path = "/".join(s for s in (first, second, third) if s is not None)
            raise NotFound(f"No model is served at /api/ai/{path}/chat", data={"path": path})
        return model

    def provider_entry(self, provider: str) -> ProviderEntry:
        return self.providers.get(provider) or ProviderEntry()

    def instance(self, name: str) -> Instance:
        return self.instances[name]

    # -- the GET /models document, built once --

    @cached_property
    def document(self) -> dict[str, Any]:
        configurations: dict[str, dict[str, Any]] = {}
        for model in self.declared:
            configurations.setdefault(model.publisher, {})[model.name] = model.configuration()
        # The seed's four keys always, in its order; then one per further instance that serves a model.
        endpoints: dict[str, list[str]] = {name: [] for name in PROVIDER_NAMES}
        for model in self.models:
            endpoints.setdefault(model.provider, []).append(model.endpoint)
        return {"configurations": configurations, "models": [m.id for m in self.models], "endpoints": endpoints}

    @cached_property
    def body(self) -> bytes:
        return orjson.dumps(self.document)

    @cached_property
    def gzip_body(self) -> bytes:
        # mtime=0 keeps the bytes (and so the ETag of the gzip variant) stable across reloads.
        return gzip.compress(self.body, compresslevel=9, mtime=0)

    @cached_property
    def etag(self) -> str:
        return '"' + hashlib.sha256(self.body).hexdigest()[:32] + '"'


def _route_table(source: str, models: tuple[CatalogueModel, ...]) -> dict[tuple[str, str], CatalogueModel]:
    table: dict[tuple[str, str], CatalogueModel] = {}
    for model in models:
        for key in ((model.provider, model.name), (model.publisher, model.name)):
            other = table.get(key)
            if other is not None and other is not model:
                raise CatalogueError(
                    f"{source}: model '{model.id}': name: /api/ai/{key[0]}/{key[1]}/chat would also serve "
                    f"'{other.id}'; rename one of them"
                )
            table[key] = model
    return table


# --- loading ----------------------------------------------------------------------------------

_PARAMETER_ORDER = ("max_new_tokens", "typical_p", "repetition_penalty", "temperature", "truncate", "return_full_text")


def load_catalogue(path: Path | str | None = None) -> Catalogue:
    """Read, validate and build a catalogue. Raises ``CatalogueError`` with one clear message."""
    file = Path(path) if path is not None else default_catalogue_path()
    return parse_catalogue(read_toml(file), source=str(file))


def read_toml(file: Path, *, missing: str = "file not found") -> dict[str, Any]:
    """A TOML file (the catalogue, the keys file) as a dict, or ``CatalogueError`` with one line saying why not
    (``missing``: what to say when there is no such file)."""
    source = str(file)
    try:
        return tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CatalogueError(f"{source}: {missing}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CatalogueError(f"{source}: cannot read: {exc}") from None
    except ValueError as exc:  # a TOMLDecodeError, or an integer beyond Python's 4300 digits
        raise CatalogueError(f"{source}: not valid TOML: {exc}") from None
    except RecursionError:  # tomllib parses nested arrays and tables by recursion
        raise CatalogueError(f"{source}: not valid TOML: values nested too deeply") from None


def parse_catalogue(raw: dict[str, Any], *, source: str) -> Catalogue:
    try:
        parsed = CatalogueFile.model_validate(raw)
    except ValidationError as exc:
        raise CatalogueError(*_describe(exc, raw, source)) from None

    instances = build_instances(parsed.providers, source)
    declared: list[CatalogueModel] = []
    seen: dict[str, int] = {}
    for position, entry in enumerate(parsed.models, start=1):
        model = _build_model(entry, _model_instance(entry, instances, source), source)
        if model.id in seen:
            raise CatalogueError(
                f"{source}: model '{model.id}': publisher/name: declared twice (models #{seen[model.id]} and "
                f"#{position}); each publisher/name must be unique"
            )
        seen[model.id] = position
        declared.append(model)

    by_id = {m.id: m for m in declared}
    order = parsed.models_order if parsed.models_order is not None else [m.id for m in declared]
    ordered: list[CatalogueModel] = []
    for model_id in order:
        if model_id not in by_id:
            raise CatalogueError(f"{source}: models_order: names '{model_id}', which is not a declared model")
        if by_id[model_id] in ordered:
            raise CatalogueError(f"{source}: models_order: names '{model_id}' twice")
        ordered.append(by_id[model_id])
    skipped = [m.id for m in declared if m not in ordered]
    if skipped:
        raise CatalogueError(f"{source}: models_order: does not name {', '.join(repr(s) for s in skipped)}")

    for model in declared:
        for fallback in model.fallbacks:
            if fallback not in by_id:
                raise CatalogueError(f"{source}: model '{model.id}': fallbacks: '{fallback}' is not a declared model")
            if fallback == model.id:
                raise CatalogueError(f"{source}: model '{model.id}': fallbacks: a model cannot fall back to itself")

    return Catalogue(
        source=source,
        models=tuple(ordered),
        declared=tuple(declared),
        providers=parsed.providers,
        server=parsed.server,
        instances=instances,
    )


def _model_instance(entry: ModelEntry, instances: Mapping[str, Instance], source: str) -> Instance:
    """The instance serving ``entry``, after the checks that need both (template, routing, reasoning)."""
    where = f"{source}: model '{entry.publisher}/{entry.name}'"
    instance = instances.get(entry.provider)
    if instance is None:
        raise CatalogueError(
            f"{where}: provider: unknown provider {entry.provider!r} (known: {', '.join(instances)}; "
            "declare further ones as [providers.NAME] with a kind)"
        )
    if instance.kind == "huggingface":
        if instance.api == "tgi" and entry.template is None:
            raise CatalogueError(
                f'{where}: template: required for models of a huggingface provider with api "tgi" '
                f"({entry.provider!r}; one of: {', '.join(TEMPLATE_NAMES)})"
            )
    elif entry.template is not None and instance.kind != "openai":
        # On the router and an openai server the server applies its own template; ours only makes the usage
        # estimate count the prompt as the server will, when it reports no usage.
        raise CatalogueError(
            f"{where}: template: only huggingface and openai models take a template "
            f"(provider {entry.provider!r} is of kind {instance.kind!r})"
        )
    if entry.routing is not None and instance.api != "router":
        raise CatalogueError(
            f"{where}: routing: only models of a Hugging Face router provider route "
            f"(provider {entry.provider!r} is of kind {instance.kind!r}"
            + (f", api {instance.api!r})" if instance.api else ")")
        )
    return instance


def _build_model(entry: ModelEntry, instance: Instance, source: str) -> CatalogueModel:
    params = entry.configuration.parameters
    written = params.model_dump(exclude_none=True)
    wire = {key: written[key] for key in _PARAMETER_ORDER if key in written}
    where = f"{source}: model '{entry.publisher}/{entry.name}': configuration.parameters"
    # The file's checks should leave nothing the seed's model refuses; if one is missed, it is still one
    # line naming the file and the model, never a traceback (nor a failed reload that stops the watch).
    try:
        parameters = ModelParameters.model_validate(wire)
    except ValidationError as exc:
        problems = (f"{where}.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise CatalogueError(*problems) from None
    except Exception as exc:
        raise CatalogueError(f"{where}: {type(exc).__name__}: {exc}") from None
    return CatalogueModel(
        publisher=entry.publisher,
        name=entry.name,
        provider=entry.provider,
        description=entry.description,
        icon=entry.icon,
        type=entry.type,
        upstream_model=entry.configuration.model,
        parameters=parameters,
        template=entry.template,
        context_length=entry.context_length or params.truncate,
        fallbacks=tuple(entry.fallbacks),
        max_concurrency=entry.max_concurrency,
        wire_parameters=wire,
        routing=entry.routing or instance.routing,
        capabilities=frozenset(entry.capabilities),
        pricing=(
            Pricing(entry.pricing.input, entry.pricing.output, entry.pricing.cached_input)
            if entry.pricing is not None
            else None
        ),
    )


def describe_validation_error(
    exc: ValidationError, source: str, *, collection: str, label: Callable[[int], str], whole_entry: str = ""
) -> list[str]:
    """One readable line per problem: file, entry (``label(i)`` for item i of ``collection``), field, what is wrong.

    Shared by the catalogue and the keys file so both speak the same way about a bad file. ``whole_entry``
    stands where the field would for a check of a whole entry.
    """
    lines: list[str] = []
    for error in exc.errors():
        loc = list(error["loc"])
        where = ""
        if len(loc) >= 2 and loc[0] == collection and isinstance(loc[1], int):
            where = f"{label(loc[1])}: "
            loc = loc[2:]
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        elif error["type"] not in ("missing", "value_error") and isinstance(error.get("input"), str | int | float):
            message += f" (got {_shown(error['input'])})"
        entry_level = whole_entry if where else "(top level): "
        field_path = ".".join(str(part) for part in loc) + ": " if loc else entry_level
        line = f"{source}: {where}{field_path}{message}"
        if line not in lines:
            lines.append(line)
    return lines


def _describe(exc: ValidationError, raw: dict[str, Any], source: str) -> list[str]:
    # A model-level check (template vs provider) already starts its message with the field name.
    return describe_validation_error(exc, source, collection="models", label=lambda i: f"model {_model_label(raw, i)}")


def _model_label(raw: dict[str, Any], index: int) -> str:
    try:
        entry = raw["models"][index]
        return f"'{entry['publisher']}/{entry['name']}'"
    except (KeyError, IndexError, TypeError):
        return f"#{index + 1}"
