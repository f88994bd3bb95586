"""OpenRouter ``POST /chat/completions``: OpenAI-style SSE with comments and mid-stream errors (providers.md §3).

``: OPENROUTER PROCESSING`` comments are skipped by the SSE decoder; ``delta.reasoning`` is reasoning,
never content; usage comes on the finish chunk or in a separate last chunk (both accepted); a
failure after the status line is a chunk with a top-level ``error`` (``code`` an HTTP status number
or a string such as ``server_error``) — raised as the matching error; ``[DONE]`` ends the stream.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar

import orjson

from modelgate.chat import ChatRequest, Finish, FinishReason, ReasoningDelta, StreamEvent, TextDelta, Usage
from modelgate.errors import UpstreamError
from modelgate.providers._http import (
    ErrorDetail,
    HttpProvider,
    Upstream,
    estimate_prompt_tokens,
    parse_json,
    seconds_until_epoch_ms,
)
from modelgate.providers.base import ProbeResult
from modelgate.sse import SSEDecoder

if TYPE_CHECKING:
    from modelgate.catalogue import CatalogueModel

#: App attribution (providers.md §3.1); optional for OpenRouter, shown in its rankings. No
#: HTTP-Referer: the project has no public site to name, and inventing one would misattribute.
ATTRIBUTION: Mapping[str, str] = MappingProxyType({"X-Title": "modelgate"})

_FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool-calls",
    "content_filter": "content-filter",
    "error": "error",
}
#: ``metadata.error_type`` of a mid-stream error whose ``code`` is a string.
_ERROR_TYPES = {"rate_limit_exceeded": 429, "provider_unavailable": 503}


def _error_detail(error: Any) -> tuple[int | None, ErrorDetail]:
    """``{"code", "message", "metadata"?}`` → (status it means, detail)."""
    code = error.get("code")
    metadata = error.get("metadata") or {}
    status = code if isinstance(code, int) else None
    if status is None and isinstance(code, str) and code.isdigit():
        status = int(code)
    if status is None:
        status = _ERROR_TYPES.get(str(metadata.get("error_type", "")))
    retry_after = None
    reset = (metadata.get("headers") or {}).get("X-RateLimit-Reset")
    if reset is not None:
        retry_after = seconds_until_epoch_ms(reset)
    message = str(error.get("message") or code or "unknown error")
    return status, ErrorDetail(message, retry_after=retry_after)


def read_error(status: int, body: bytes) -> ErrorDetail:
    _, detail = _error_detail(parse_json(body)["error"])
    return detail


def build_body(model: CatalogueModel, request: ChatRequest) -> dict[str, Any]:
    p = request.params
    fields = {
        "max_tokens": p.max_new_tokens,
        "temperature": p.temperature,
        "top_p": p.top_p,
        "repetition_penalty": p.repetition_penalty,
        "stop": list(p.stop) if p.stop is not None else None,
        "seed": p.seed,
        "presence_penalty": p.presence_penalty,
        "frequency_penalty": p.frequency_penalty,
    }
    body: dict[str, Any] = {
        "model": model.upstream_model,
        "messages": [{"role": m.role, "content": m.content} for m in request.messages],
        "stream": True,
        # The legacy switch; current OpenRouter always sends usage on the last chunk anyway.
        "usage": {"include": True},
    }
    body.update((key, value) for key, value in fields.items() if value is not None)
    return body


def openai_usage(usage: Any) -> Usage:
    """An OpenAI-shaped ``usage`` object, with ``completion_tokens_details.reasoning_tokens`` when it is there."""
    details = usage.get("completion_tokens_details")
    reasoning = details.get("reasoning_tokens") if isinstance(details, dict) else None
    return Usage(
        int(usage["prompt_tokens"]),
        int(usage["completion_tokens"]),
        reasoning_tokens=reasoning if isinstance(reasoning, int) and not isinstance(reasoning, bool) else None,
    )


class OpenRouterStream:
    """Incremental parser of one OpenRouter chat-completion SSE stream."""

    __slots__ = ("_content_deltas", "_events", "_finish", "_request", "_upstream", "_usage", "done", "failure")

    def __init__(self, upstream: Upstream, request: ChatRequest) -> None:
        self._upstream = upstream
        self._request = request
        self._events = SSEDecoder()
        self._finish: FinishReason | None = None
        self._usage: Usage | None = None
        self._content_deltas = 0
        self.done = False
        self.failure: UpstreamError | None = None

    def feed(self, chunk: bytes) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        try:
            for event in self._events.feed(chunk):
                data = event.data
                if data == "[DONE]":
                    out.append(self._final())
                    self.done = True
                    break
                try:
                    payload = orjson.loads(data)
                    if "error" in payload:
                        raise self._mid_stream_error(payload["error"])
                    usage = payload.get("usage")
                    if usage:
                        self._usage = openai_usage(usage)
                    for choice in payload.get("choices") or ():
                        delta = choice.get("delta") or {}
                        reasoning = delta.get("reasoning")
                        if reasoning:
                            out.append(ReasoningDelta(reasoning))
                        content = delta.get("content")
                        if content:
                            self._content_deltas += 1
                            out.append(TextDelta(content))
                        reason = choice.get("finish_reason")
                        if reason:
                            self._finish = _FINISH.get(reason, "other")
                except (orjson.JSONDecodeError, AttributeError, TypeError, KeyError, ValueError) as exc:
                    raise self._upstream.protocol_error(f"unreadable stream chunk: {data[:120]}") from exc
        except UpstreamError as exc:
            self.failure = exc  # raised once ``out`` is delivered
        return out

    def end(self) -> list[StreamEvent]:
        if self._finish is None:
            raise self._upstream.truncated()
        # The finish chunk arrived but [DONE] did not: the reply itself is complete.
        return [self._final()]

    def _final(self) -> Finish:
        usage = self._usage
        if usage is None:
            # Counted, not reported: one content delta ≈ one token (OpenRouter streams per token).
            usage = Usage(estimate_prompt_tokens(self._request.messages), self._content_deltas, estimated=True)
        return Finish(self._finish or "unknown", usage)

    def _mid_stream_error(self, error: Any) -> UpstreamError:
        status, detail = _error_detail(error)
        return self._upstream.error_for(status or 502, detail)


class OpenRouter(HttpProvider):
    name = "openrouter"
    read_error = staticmethod(read_error)
    supported_params: ClassVar[frozenset[str]] = frozenset(
        {
            "max_new_tokens",
            "temperature",
            "top_p",
            "repetition_penalty",
            "stop",
            "seed",
            "presence_penalty",
            "frequency_penalty",
        }
    )

    def stream(self, model: CatalogueModel, request: ChatRequest) -> AsyncIterator[Sequence[StreamEvent]]:
        key = self.connection.credentials.get("OPENROUTER_API_KEY", "")
        return self.upstream.stream(
            f"{self.connection.base_url}/chat/completions",
            functools.partial(build_body, model, request),
            OpenRouterStream(self.upstream, request),
            headers={"Authorization": f"Bearer {key}", "Accept": "text/event-stream", **ATTRIBUTION},
            model=model.upstream_model,
        )

    async def probe(self, models: list[CatalogueModel]) -> ProbeResult | None:
        # GET /models is free and needs no key (§3.6).
        return await self.upstream.probe_listing(
            f"{self.connection.base_url}/models", lambda listing: (entry["id"] for entry in listing["data"])
        )
