"""Provider-neutral chat types: what a route hands to a provider, and what a provider yields back.

Routes parse their wire format (AI SDK body, OpenAI body) into a ``ChatRequest``; providers turn it
into their own protocol and yield ``StreamEvent``s; encoders turn those into the client's protocol.
A failure is never an event: providers *raise* a ``ModelgateError`` (also mid-stream) and the
stream runner turns it into the client protocol's error part.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

Role = Literal["system", "user", "assistant"]
FinishReason = Literal["stop", "length", "content-filter", "tool-calls", "error", "other", "unknown"]


@dataclass(frozen=True, slots=True)
class Message:
    role: Role
    content: str


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
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})  # type: ignore[arg-type]

    def set_fields(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self.__slots__ if getattr(self, name) is not None}


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """One call. Routes pass only the caller's own ``params`` (overrides); the gateway merges them onto the
    catalogue defaults of whichever model answers, so a fallback gets its own defaults, never the primary's.
    Providers always receive the merged parameters."""

    messages: tuple[Message, ...]
    params: GenerationParams = field(default_factory=GenerationParams)


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    #: True when the upstream did not report usage and we counted ourselves.
    estimated: bool = False
    #: Of ``completion_tokens``, those spent reasoning: only when the upstream reports it (never counted by us).
    reasoning_tokens: int | None = None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    text: str


@dataclass(frozen=True, slots=True)
class Finish:
    reason: FinishReason
    usage: Usage | None = None


StreamEvent = TextDelta | ReasoningDelta | Finish
