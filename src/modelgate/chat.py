"""Provider-neutral chat types: what a route hands to a provider, and what a provider yields back.

Routes parse their wire format (AI SDK body, OpenAI body) into a ``ChatRequest``; providers turn it
into their own protocol and yield ``StreamEvent``s; encoders turn those into the client's protocol.
A failure is never an event: providers *raise* a ``ModelgateError`` (also mid-stream) and the
stream runner turns it into the client protocol's error part.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

Role = Literal["system", "user", "assistant", "tool"]
FinishReason = Literal["stop", "length", "content-filter", "tool-calls", "error", "other", "unknown"]
#: What a model may declare it supports (a catalogue entry's ``capabilities``); ``json`` is structured output.
Capability = Literal["tools", "json", "vision", "reasoning"]
#: How hard a reasoning model thinks: the values openai-python 3.57 allows (``types/shared/reasoning_effort.py``),
#: for ``reasoning_effort`` (Chat Completions) and ``reasoning.effort`` (Responses) alike. Not every model takes
#: every value; each provider sends it in its own wire form or reports it as dropped.
ReasoningEffort = Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"]


@dataclass(frozen=True, slots=True)
class Image:
    """An image input: a ``data:`` URL (inline, base64) or an ``https:`` URL. modelgate never fetches a URL:
    a provider that needs the bytes takes only inline images."""

    url: str
    #: OpenAI's ``detail`` hint (``auto``, ``low``, ``high``), passed on where the protocol has it.
    detail: str | None = None

    @property
    def inline(self) -> tuple[str, str] | None:
        """``(media type, base64 data)`` of a ``data:`` URL; None for a remote URL."""
        if not self.url.startswith("data:"):
            return None
        head, _, data = self.url[5:].partition(",")
        return head.removesuffix(";base64"), data


@dataclass(frozen=True, slots=True)
class CacheBreak:
    """A prompt-caching breakpoint after the part before it in ``Message.parts``: a content part's ``cache_control``
    (Anthropic's, which OpenRouter passes on to Anthropic and Gemini models; openrouter.ai/docs/features/
    prompt-caching), asking that the prompt up to and including that part be cached. ``ttl``: Anthropic's ``5m``
    (its default) or ``1h``."""

    ttl: Literal["5m", "1h"] | None = None

    def wire(self) -> dict[str, str]:
        return {"type": "ephemeral"} | ({"ttl": self.ttl} if self.ttl else {})


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A call the assistant made: ``arguments`` is the JSON text the model wrote (not parsed: it may be invalid)."""

    id: str
    name: str
    arguments: str
    #: What the upstream attached to the call for the model to read back on the next turn, carried unread: Gemini's
    #: thought signature, ``extra_content: {"google": {"thought_signature"}}`` on Google's OpenAI compatibility API
    #: (ai.google.dev/gemini-api/docs/thought-signatures: Gemini 3 refuses a turn whose calls come back without it).
    extra: Mapping[str, Any] | None = None


#: An opaque reasoning block (OpenRouter's ``reasoning_details`` entry: ``reasoning.text``, ``.summary``,
#: ``.encrypted``, …), carried unread and unchanged.
ReasoningDetail = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Message:
    role: Role
    content: str
    #: Image inputs of a user message, after its text (providers take text and images apart, or in this order).
    images: tuple[Image, ...] = ()
    #: An assistant message's tool calls (its ``content`` may then be empty).
    tool_calls: tuple[ToolCall, ...] = ()
    #: A ``tool`` message: the id of the call it answers.
    tool_call_id: str | None = None
    #: The text and image parts in the client's order, when some text follows an image ("compare this" image
    #: "with this" image) or a part carries a ``CacheBreak`` (each after its part); None when the text comes first
    #: and nothing is to be cached. Protocols with content parts (Chat Completions) send this order; the others take
    #: the text and the images apart.
    parts: tuple[str | Image | CacheBreak, ...] | None = None
    #: OpenAI's ``name`` of a system, user or assistant message: which participant said it (two users of one
    #: conversation are told apart by it). Sent where the protocol has it, reported as dropped elsewhere.
    name: str | None = None
    #: An assistant message's reasoning blocks as the upstream gave them, in order (OpenRouter's
    #: ``reasoning_details``): handed back so that the model goes on from its own reasoning after a tool call
    #: (openrouter.ai/docs "Preserving reasoning": Anthropic's and Gemini's reasoning models need them then).
    reasoning_details: tuple[ReasoningDetail, ...] = ()

    @property
    def cache_breaks(self) -> bool:
        return self.parts is not None and any(isinstance(part, CacheBreak) for part in self.parts)


def interleaved(parts: Sequence[str | Image | CacheBreak]) -> bool:
    """Whether some text follows an image (the order then says something a text-then-images protocol loses)."""
    first_image = next((index for index, part in enumerate(parts) if isinstance(part, Image)), len(parts))
    return any(isinstance(part, str) for part in parts[first_image:])


def content_message(role: Role, parts: Sequence[str | Image | CacheBreak], *, separator: str, **fields: Any) -> Message:
    """A message of ``parts`` (texts and images in the client's order, each maybe followed by a ``CacheBreak``): its
    text joined by ``separator``, its images, and the parts themselves only when they say more than "the text, then
    the images"."""
    texts = [part for part in parts if isinstance(part, str)]
    images = tuple(part for part in parts if isinstance(part, Image))
    kept = interleaved(parts) or any(isinstance(part, CacheBreak) for part in parts)
    ordered = tuple(parts) if kept else None
    return Message(role=role, content=separator.join(texts), images=images, parts=ordered, **fields)


@dataclass(frozen=True, slots=True)
class Tool:
    """A function the model may call; ``parameters`` is its arguments' JSON Schema."""

    name: str
    description: str | None = None
    parameters: Mapping[str, Any] | None = None
    #: OpenAI's ``strict`` (arguments follow the schema exactly), passed on where the protocol has it.
    strict: bool | None = None


@dataclass(frozen=True, slots=True)
class NamedTool:
    """``tool_choice`` naming the one function the model must call."""

    name: str


ToolChoice = Literal["auto", "none", "required"] | NamedTool


@dataclass(frozen=True, slots=True)
class ResponseFormat:
    """Structured output: any JSON object (``json_object``) or one following ``schema`` (``json_schema``)."""

    type: Literal["json_object", "json_schema"]
    schema: Mapping[str, Any] | None = None
    name: str | None = None
    #: What the schema is for (``json_schema.description``): guidance for the model, where the protocol has it.
    description: str | None = None
    strict: bool | None = None


@dataclass(frozen=True, slots=True)
class GenerationParams:
    """Sampling parameters for one call. ``None`` means "leave it to the provider".

    The catalogue's ``-1`` sentinel is turned into ``None`` exactly once, in ``from_catalogue``.
    """

    max_new_tokens: int | None = None
    temperature: float | None = None
    typical_p: float | None = None
    repetition_penalty: float | None = None
    truncate: int | None = None
    top_p: float | None = None
    stop: tuple[str, ...] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    #: Never a catalogue default: only a caller's ``reasoning_effort`` / ``reasoning.effort`` sets it.
    reasoning_effort: ReasoningEffort | None = None

    @classmethod
    def from_catalogue(
        cls,
        *,
        max_new_tokens: int,
        typical_p: float,
        repetition_penalty: float,
        truncate: int,
        temperature: float | None = None,
    ) -> GenerationParams:
        def sentinel(value: float) -> float | None:
            return None if value == -1 else value

        return cls(
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            typical_p=sentinel(typical_p),
            repetition_penalty=sentinel(repetition_penalty),
            truncate=truncate,
        )

    def merged(self, **overrides: object) -> GenerationParams:
        """These defaults with the non-None overrides of one call applied."""
        # Not ``dataclasses.replace``: this runs for every call, and ``replace`` walks the dataclass's field
        # objects with three calls per field.
        get = overrides.get
        return GenerationParams(
            *[value if (value := get(name)) is not None else getattr(self, name) for name in self.__slots__]  # type: ignore[arg-type]
        )

    def set_fields(self) -> dict[str, object]:
        return {name: value for name in self.__slots__ if (value := getattr(self, name)) is not None}


#: Names of request fields a protocol may have no form for (``ChatRequest.bare_form_losses``).
SCHEMA_DESCRIPTION = "response_format.json_schema.description"
IMAGE_DETAIL = "image_url.detail"
MESSAGE_NAME = "messages.name"
#: A function tool's ``strict`` (its arguments held to its schema), by its Chat Completions name.
TOOL_STRICT = "tools.function.strict"
#: A content part's prompt-caching breakpoint (``CacheBreak``), by its Chat Completions name.
CACHE_CONTROL = "messages.content.cache_control"
#: The request's own ``cache_control`` (automatic prompt caching, ``ChatRequest.cache``), by its Chat Completions name.
AUTO_CACHE_CONTROL = "cache_control"


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """One call. Routes pass only the caller's own ``params`` (overrides); the gateway merges them onto the
    catalogue defaults of whichever model answers, so a fallback gets its own defaults, never the primary's.
    Providers always receive the merged parameters."""

    messages: tuple[Message, ...]
    params: GenerationParams = field(default_factory=GenerationParams)
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    #: Automatic prompt caching: the request-level ``cache_control``, a breakpoint the upstream itself puts on the
    #: last cacheable block (and moves on as the conversation grows). OpenRouter's ``ChatRequest.cacheControl``
    #: (@openrouter/sdk ``AnthropicCacheControlDirective``), Anthropic's automatic caching.
    cache: CacheBreak | None = None
    #: Fields the caller set that the route accepts but no provider kind carries (OpenAI's ``service_tier``,
    #: ``prompt_cache_key``, …), under the route's names: reported with the dropped parameters, never lost.
    not_carried: tuple[str, ...] = ()

    def tool_controls(self) -> list[str]:
        """The tool controls set beyond offering tools or not (``tool_choice`` ``required`` or a named function,
        ``parallel_tool_calls``, a tool's ``strict: true``), by their OpenAI names: what a protocol without them
        cannot enforce."""
        if not self.tools or self.tool_choice == "none":
            return []
        controls = [] if self.tool_choice in (None, "auto") else ["tool_choice"]
        controls += ["parallel_tool_calls"] if self.parallel_tool_calls is not None else []
        return controls + ([TOOL_STRICT] if any(tool.strict for tool in self.tools) else [])

    def without_declined_tools(self) -> ChatRequest:
        """This request without the tools its ``tool_choice: "none"`` declines, for a model that has no tool calling.

        Open WebUI and LangChain agents send their tools on every turn, "none" included; such a turn asks for no
        tool use, which a model without tools serves as asked (the tools are not reported as dropped: not using
        them is what the caller chose). A history of tool calls still needs the capability (``needs``)."""
        if not self.tools or self.tool_choice != "none":
            return self
        return replace(self, tools=(), tool_choice=None, parallel_tool_calls=None)

    def bare_form_losses(self) -> list[str]:
        """What a protocol taking a bare JSON schema and bare images (Ollama, Workers AI, TGI's grammar) cannot
        carry of this request, by its Chat Completions names: the schema's ``description`` (guidance for the
        model), an image's ``detail`` (the resolution it is read at, and so its cost) and a message's ``name``
        (their messages have only a role)."""
        lost = []
        if self.response_format is not None and self.response_format.description:
            lost.append(SCHEMA_DESCRIPTION)
        if any(image.detail not in (None, "auto") for message in self.messages for image in message.images):
            lost.append(IMAGE_DETAIL)
        if any(message.name is not None for message in self.messages):
            lost.append(MESSAGE_NAME)
        return lost

    def cache_breaks(self) -> bool:
        """Whether a content part asks for a prompt-caching breakpoint (``CacheBreak``)."""
        return any(message.cache_breaks for message in self.messages)

    def needs(self) -> frozenset[Capability]:
        """The capabilities a model must have to answer this request."""
        needed: set[Capability] = set()
        if self.tools or any(m.tool_calls or m.role == "tool" for m in self.messages):
            needed.add("tools")
        if self.response_format is not None:
            needed.add("json")
        if any(m.images for m in self.messages):
            needed.add("vision")
        return frozenset(needed)


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    #: True when the upstream did not report usage and we counted ourselves.
    estimated: bool = False
    #: Of ``completion_tokens``, those spent reasoning: only when the upstream reports it (never counted by us).
    reasoning_tokens: int | None = None
    #: Of ``prompt_tokens``, those the provider served from its prompt cache: only when it reports them.
    cached_tokens: int | None = None
    #: USD the upstream says it billed for the request (OpenRouter's ``usage.cost``), only when it says
    #: (``reported_cost``): the request's cost in the ledger and in its key's budget, over the catalogue's price.
    cost: float | None = None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


#: The most tokens one request's usage report may count: what the ledger's INTEGER columns hold, and far past any
#: context window. Past it (2**70 was read as a 71-bit integer) a count broke the reply's access line, the budget
#: counters and every later ledger write.
MAX_REPORTED_TOKENS = 2**31 - 1


def _count(value: Any) -> int | None:
    """``value`` as a count: a whole number from 0 (a float that is one too; never a bool), else None."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def token_count(value: Any) -> int | None:
    """``value`` as a token count an upstream reported: a count up to ``MAX_REPORTED_TOKENS``, else None."""
    count = _count(value)
    return count if count is not None and count <= MAX_REPORTED_TOKENS else None


def reported_usage(prompt: Any, completion: Any, *, reasoning: Any = None, cached: Any = None) -> Usage | None:
    """An upstream's usage report, or None when its counts are not token counts (negative ones refunded budgets,
    huge ones broke them): the provider then counts itself, as for a report that never came. The reasoning and
    cached counts are parts of the completion and of the prompt: capped at them, dropped when unreadable."""
    prompt_tokens, completion_tokens = token_count(prompt), token_count(completion)
    if prompt_tokens is None or completion_tokens is None:
        return None
    return Usage(
        prompt_tokens,
        completion_tokens,
        reasoning_tokens=_part(reasoning, completion_tokens),
        cached_tokens=_part(cached, prompt_tokens),
    )


#: The most USD one request's reported cost may be: far past the price of any chat request today (a 200k-token prompt
#: and 100k tokens of output at the dearest per-token list prices come to under 100 USD). A larger figure is no price
#: but a broken (or hostile) report, which would spend a key's budget at once.
MAX_REPORTED_COST = 1000.0


def reported_cost(value: Any) -> float | None:
    """``value`` as the USD an upstream says a request cost: a finite number from 0 to ``MAX_REPORTED_COST`` (a JSON
    number: never a bool or a string), else None, and the catalogue's price counts, as for a report that never came.
    A negative one refunded a budget."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, int) and not 0 <= value <= MAX_REPORTED_COST:  # before float(): 10**400 overflows it
        return None
    cost = float(value)
    return cost if math.isfinite(cost) and 0.0 <= cost <= MAX_REPORTED_COST else None


def _part(value: Any, whole: int) -> int | None:
    """A count of part of ``whole``: at most ``whole`` (however large it was said to be); None if not a count."""
    count = _count(value)
    return None if count is None else min(count, whole)


# The deltas are made once per token: not frozen, since a frozen dataclass's __init__ pays an
# ``object.__setattr__`` call per field (~3x the cost of the plain one). Nothing changes an event once made.
@dataclass(slots=True)
class TextDelta:
    text: str


@dataclass(slots=True)
class RefusalDelta(TextDelta):
    """A model's refusal, which OpenAI's models give apart from the content (``refusal``): a text like any other
    for the protocols that have no place for it (the AI SDK streams), ``refusal`` on ``/v1/chat/completions``
    (where ``client.chat.completions.parse`` looks for it) and a ``refusal`` content part on ``/v1/responses``."""


@dataclass(slots=True)
class ReasoningDelta:
    text: str
    #: The reasoning blocks that came with this piece, as received (OpenRouter's ``delta.reasoning_details``; a whole
    #: reply's ``message.reasoning_details``), for the client to hand back; ``text`` may then be empty.
    details: tuple[ReasoningDetail, ...] = ()


@dataclass(frozen=True, slots=True)
class Finish:
    reason: FinishReason
    usage: Usage | None = None


@dataclass(slots=True)
class ToolCallDelta:
    """A piece of tool call number ``index`` (0-based, per reply): the first piece of a call carries its
    ``id`` and ``name``; ``arguments`` are fragments of its JSON text, to be concatenated in order."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""
    #: The call's opaque ``extra_content`` (``ToolCall.extra``), on the piece it came with.
    extra: Mapping[str, Any] | None = None


StreamEvent = TextDelta | ReasoningDelta | ToolCallDelta | Finish
