"""OpenAI Chat Completions over SSE: the one wire format the ``openai``, Hugging Face router and OpenRouter
kinds share (STYLE habit 2: the connection is injected, the protocol is parsed once, here).

Request (openai-python ``resources/chat/completions``; huggingface_hub ``InferenceClient.chat_completion``):
``POST {base}/chat/completions`` with ``model``, ``messages``, ``stream: true`` and
``stream_options: {"include_usage": true}`` — servers that honour it (the HF router, vLLM, OpenAI) then send
a last chunk with ``choices: []`` and ``usage``; others (llama.cpp's server) send none on a stream, and the
usage is then estimated and marked so. Each kind names the ``GenerationParams`` it can carry and under
which wire names; what it cannot carry is reported as dropped, never sent under a name the server ignores.

Reply: ``data: {chat.completion.chunk}`` events (comments skipped by the SSE decoder), ``delta.content``;
reasoning in ``delta.reasoning_content`` (DeepSeek, vLLM, llama.cpp) or ``delta.reasoning`` (OpenRouter), or
as a leading ``<think>…</think>`` block in the content (models whose server does not split it);
``finish_reason`` on the last choice chunk, usage on it or in a chunk of its own, then ``data: [DONE]``.
A failure after the status line is a chunk with a top-level ``error`` (OpenAI, OpenRouter, vLLM and the HF
router all send ``{"error": {"message", "code"?, ...}}``; ``code`` an HTTP status or a string) — raised as
the matching error once the events before it are delivered.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar

import aiohttp
import orjson

from modelgate.chat import ChatRequest, Finish, FinishReason, ReasoningDelta, StreamEvent, TextDelta, Usage
from modelgate.errors import UpstreamError
from modelgate.providers._http import (
    ErrorDetail,
    HttpProvider,
    Upstream,
    estimate_prompt_tokens,
    openai_listing,
    parse_json,
    seconds_until_epoch_ms,
)
from modelgate.providers.base import Connection, ProbeResult
from modelgate.reasoning import ReasoningSplitter
from modelgate.sse import SSEDecoder

if TYPE_CHECKING:
    from modelgate.catalogue import CatalogueModel

_FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool-calls",
    "function_call": "tool-calls",
    "content_filter": "content-filter",
    "error": "error",
}
#: A string error ``code`` (or OpenRouter's ``metadata.error_type``) → the HTTP status it means.
_ERROR_CODES = {
    "rate_limit_exceeded": 429,
    "provider_unavailable": 503,
    "context_length_exceeded": 400,
    "invalid_request_error": 400,
    "model_not_found": 404,
}
#: The fields every Chat Completions server takes (the OpenAI API reference), by our parameter names.
STANDARD_FIELDS: Mapping[str, str] = MappingProxyType(
    {
        "max_new_tokens": "max_tokens",
        "temperature": "temperature",
        "top_p": "top_p",
        "stop": "stop",
        "seed": "seed",
        "presence_penalty": "presence_penalty",
        "frequency_penalty": "frequency_penalty",
    }
)


def error_detail(error: Any) -> tuple[int | None, ErrorDetail]:
    """An ``error`` value (an object ``{"code", "message", "type", "metadata"?}`` or a plain string) →
    (the HTTP status it means, if it says one; the detail)."""
    if isinstance(error, str):
        return None, ErrorDetail(error)
    code = error.get("code")
    metadata = error.get("metadata") or {}
    status = code if isinstance(code, int) and not isinstance(code, bool) else None
    if status is None and isinstance(code, str) and code.isdigit():
        status = int(code)
    if status is None:
        status = _ERROR_CODES.get(str(code)) or _ERROR_CODES.get(str(metadata.get("error_type", "")))
    retry_after = None
    reset = (metadata.get("headers") or {}).get("X-RateLimit-Reset")  # OpenRouter: epoch milliseconds
    if reset is not None:
        retry_after = seconds_until_epoch_ms(reset)
    message = str(error.get("message") or code or "unknown error")
    if isinstance(code, str) and not code.isdigit() and code not in message:
        message = f"{message} ({code})"  # e.g. context_length_exceeded: the reason a client can act on
    return status, ErrorDetail(message, retry_after=retry_after)


def read_error(status: int, body: bytes) -> ErrorDetail:
    """A non-2xx body: ``{"error": {...}}`` or ``{"error": "text"}`` (HF router), vLLM's older
    ``{"object": "error", "message"}``, or FastAPI's ``{"detail": ...}``."""
    payload = parse_json(body)
    if "error" in payload:
        return error_detail(payload["error"])[1]
    if "message" in payload:
        return error_detail(payload)[1]
    return ErrorDetail(str(payload["detail"]))


def openai_usage(usage: Any) -> Usage:
    """An OpenAI-shaped ``usage`` object, with ``completion_tokens_details.reasoning_tokens`` when it is there."""
    details = usage.get("completion_tokens_details")
    reasoning = details.get("reasoning_tokens") if isinstance(details, dict) else None
    return Usage(
        int(usage["prompt_tokens"]),
        int(usage["completion_tokens"]),
        reasoning_tokens=reasoning if isinstance(reasoning, int) and not isinstance(reasoning, bool) else None,
    )


class ChatCompletionsStream:
    """Incremental parser of one Chat Completions SSE stream."""

    __slots__ = (
        "_deltas",
        "_events",
        "_finish",
        "_request",
        "_separated",
        "_splitter",
        "_template",
        "_upstream",
        "_usage",
        "done",
        "failure",
    )

    def __init__(self, upstream: Upstream, request: ChatRequest, *, template: str | None = None) -> None:
        self._upstream = upstream
        self._request = request
        self._template = template
        self._events = SSEDecoder()
        # A leading <think> block in the content is reasoning, unless the server separates reasoning itself.
        self._splitter = ReasoningSplitter()
        self._separated = False
        self._finish: FinishReason | None = None
        self._usage: Usage | None = None
        self._deltas = 0
        self.done = False
        self.failure: UpstreamError | None = None

    def feed(self, chunk: bytes) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        try:
            for event in self._events.feed(chunk):
                data = event.data
                if data == "[DONE]":
                    out.extend(self._final())
                    self.done = True
                    break
                try:
                    payload = orjson.loads(data)
                    if "error" in payload or payload.get("object") == "error":
                        raise self._mid_stream_error(payload.get("error", payload))
                    usage = payload.get("usage")
                    if usage:
                        self._usage = openai_usage(usage)
                    for choice in payload.get("choices") or ():
                        self._choice(choice, out)
                except (orjson.JSONDecodeError, AttributeError, TypeError, KeyError, ValueError) as exc:
                    raise self._upstream.protocol_error(f"unreadable stream chunk: {data[:120]}") from exc
        except UpstreamError as exc:
            self.failure = exc  # raised once ``out`` is delivered
        return out

    def _choice(self, choice: Any, out: list[StreamEvent]) -> None:
        delta = choice.get("delta") or {}
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if reasoning:
            self._separated = True
            self._deltas += 1
            out.append(ReasoningDelta(reasoning))
        content = delta.get("content")
        if content:
            self._deltas += 1
            out.extend([TextDelta(content)] if self._separated else self._splitter.feed(content))
        reason = choice.get("finish_reason")
        if reason:
            self._finish = _FINISH.get(reason, "other")

    def end(self) -> list[StreamEvent]:
        if self._finish is None:
            raise self._upstream.truncated()
        # The finish chunk arrived but [DONE] did not: the reply itself is complete.
        return self._final()

    def _final(self) -> list[StreamEvent]:
        out: list[StreamEvent] = list(self._splitter.flush())
        usage = self._usage
        if usage is None:
            # Not reported (llama.cpp's server sends none on a stream): counted, and marked so. Servers
            # stream one token per delta, so the deltas count the completion.
            prompt = estimate_prompt_tokens(self._request.messages, self._template)
            usage = Usage(prompt, self._deltas, estimated=True)
        out.append(Finish(self._finish or "unknown", usage))
        return out

    def _mid_stream_error(self, error: Any) -> UpstreamError:
        status, detail = error_detail(error)
        return self._upstream.error_for(status or 502, detail)


class ChatCompletionsProvider(HttpProvider):
    """A kind speaking Chat Completions. Subclasses set what differs: the parameters they carry, the
    key's variable, extra body fields and headers, the model id they send."""

    read_error = staticmethod(read_error)
    #: ``GenerationParams`` field → the wire name this kind sends it under.
    fields: ClassVar[Mapping[str, str]] = STANDARD_FIELDS
    supported_params: ClassVar[frozenset[str]] = frozenset(STANDARD_FIELDS)
    #: The kind's own bearer-key variable (None: no key unless the instance names one).
    key_variable: ClassVar[str | None] = None
    extra_body: ClassVar[Mapping[str, Any]] = MappingProxyType({})
    extra_headers: ClassVar[Mapping[str, str]] = MappingProxyType({})
    #: Whether the listing needs the key (OpenRouter's is public: a probe must not spend a key on it).
    probe_with_key: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.supported_params = frozenset(cls.fields)

    def __init__(self, connection: Connection, http: aiohttp.ClientSession) -> None:
        super().__init__(connection, http)
        #: The kind's fields and the instance's own mapping (``extra_params``: llama.cpp's ``repeat_penalty``, …).
        self.wire_fields: Mapping[str, str] = {**self.fields, **connection.extra_params}

    @property
    def carried_params(self) -> frozenset[str]:
        return frozenset(self.wire_fields)

    def upstream_model(self, model: CatalogueModel) -> str:
        return model.upstream_model

    def build_body(self, model: CatalogueModel, request: ChatRequest) -> dict[str, Any]:
        values = request.params.set_fields()
        body: dict[str, Any] = {
            "model": self.upstream_model(model),
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "stream": True,
            "stream_options": {"include_usage": True},
            **self.extra_body,
        }
        for name, wire in self.wire_fields.items():
            if name in values:
                value = values[name]
                body[wire] = list(value) if isinstance(value, tuple) else value
        return body

    def headers(self) -> dict[str, str]:
        headers = {"Accept": "text/event-stream", **self.extra_headers}
        key = self.connection.api_key(self.key_variable or "")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def stream(self, model: CatalogueModel, request: ChatRequest) -> AsyncIterator[Sequence[StreamEvent]]:
        return self.upstream.stream(
            f"{self.connection.base_url}/chat/completions",
            functools.partial(self.build_body, model, request),
            ChatCompletionsStream(self.upstream, request, template=model.template),
            headers=self.headers(),
            model=self.upstream_model(model),
        )

    async def probe(self, models: list[CatalogueModel]) -> ProbeResult | None:
        # GET {base}/models: the free listing every Chat Completions server has (OpenAI, vLLM, llama.cpp,
        # the HF router, OpenRouter); ``data[].id`` are the ids a request names.
        headers = {k: v for k, v in self.headers().items() if k == "Authorization" and self.probe_with_key}
        return await self.upstream.probe_listing(f"{self.connection.base_url}/models", openai_listing, headers=headers)
