"""Ollama ``POST /api/chat``: NDJSON lines until ``done: true`` (providers.md §4).

Ollama applies the model's own chat template, so messages go as they are. ``think: true`` is sent only
for models the catalogue marks ``capabilities = ["reasoning"]``: Ollama refuses it for any other model
(400 "… does not support thinking"), and only thinks — ``message.thinking``, a reasoning part here —
when asked (ollama-python ``Client.chat(think=…)``; api/types.go ``ChatRequest.Think``). Errors before the stream
have a real status and ``{"error": "…"}``; after lines were sent, the status stays 200 and one more
line ``{"error": "…"}`` ends the stream (§4.5). Its JSON escapes ``<>&`` as ``\\u003c…`` (Go), which
only a real JSON parser reads right.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import orjson

from modelgate.chat import ChatRequest, Finish, FinishReason, ReasoningDelta, StreamEvent, TextDelta, Usage
from modelgate.errors import UpstreamError
from modelgate.providers._http import ErrorDetail, HttpProvider, ListedModel, Upstream, body_message, parse_json
from modelgate.providers.base import ProbeResult
from modelgate.sse import NDJSONDecoder

if TYPE_CHECKING:
    from modelgate.catalogue import CatalogueModel

_DONE_REASONS: dict[str, FinishReason] = {"stop": "stop", "length": "length", "load": "other", "unload": "other"}


def read_error(status: int, body: bytes) -> ErrorDetail:
    payload = parse_json(body)
    return ErrorDetail(str(payload["error"]))


def build_body(model: CatalogueModel, request: ChatRequest) -> dict[str, Any]:
    p = request.params
    option_values = {
        "num_predict": p.max_new_tokens,
        "temperature": p.temperature,
        "typical_p": p.typical_p,
        "repeat_penalty": p.repetition_penalty,
        # Not TGI's "keep the last N prompt tokens", but the closest knob Ollama has: the context
        # window, beyond which Ollama itself truncates the prompt from the front (providers.md §4.2).
        "num_ctx": p.truncate,
        "top_p": p.top_p,
        "stop": list(p.stop) if p.stop is not None else None,
        "seed": p.seed,
        "presence_penalty": p.presence_penalty,
        "frequency_penalty": p.frequency_penalty,
    }
    body: dict[str, Any] = {
        "model": model.upstream_model,
        "messages": [{"role": m.role, "content": m.content} for m in request.messages],
        "stream": True,
    }
    if "reasoning" in model.capabilities:
        body["think"] = True
    options = {key: value for key, value in option_values.items() if value is not None}
    if options:
        body["options"] = options
    return body


def _text(value: object) -> str:
    """A text field as Ollama sends it; anything else is a broken line (a ``TypeError``, mapped below)."""
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _count(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"expected an integer count, got {type(value).__name__}")
    return value


class OllamaStream:
    """Incremental parser of one ``/api/chat`` NDJSON reply."""

    __slots__ = ("_lines", "_upstream", "done", "failure")

    def __init__(self, upstream: Upstream) -> None:
        self._upstream = upstream
        self._lines = NDJSONDecoder()
        self.done = False
        self.failure: UpstreamError | None = None

    def feed(self, chunk: bytes) -> list[StreamEvent]:
        return self._parse(self._lines.feed(chunk))

    def end(self) -> list[StreamEvent]:
        events = self._parse(self._lines.flush())
        if not self.done and self.failure is None:
            self.failure = self._upstream.truncated()
        return events

    def _parse(self, lines: list[bytes]) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        try:
            for line in lines:
                try:
                    item = orjson.loads(line)
                    message = item.get("message")
                    if "error" in item:
                        # A late error (status already 200): the runner failed mid-generation.
                        raise self._upstream.error_for(500, ErrorDetail(str(item["error"])))
                    if message:
                        if message.get("thinking"):
                            events.append(ReasoningDelta(_text(message["thinking"])))
                        if message.get("content"):
                            events.append(TextDelta(_text(message["content"])))
                    if item.get("done"):
                        reason = _DONE_REASONS.get(item.get("done_reason") or "stop", "other")
                        # Zero-valued metrics are omitted (Go omitempty), so a missing count is 0.
                        usage = Usage(_count(item.get("prompt_eval_count", 0)), _count(item.get("eval_count", 0)))
                        events.append(Finish(reason, usage))
                        self.done = True
                        break
                except (orjson.JSONDecodeError, AttributeError, TypeError) as exc:
                    message_text = body_message(line)[:120]
                    raise self._upstream.protocol_error(f"unreadable NDJSON line: {message_text}") from exc
        except UpstreamError as exc:
            self.failure = exc  # raised once ``events`` are delivered
        return events


class Ollama(HttpProvider):
    name = "ollama"
    read_error = staticmethod(read_error)
    supported_params: ClassVar[frozenset[str]] = frozenset(
        {
            "max_new_tokens",
            "temperature",
            "typical_p",
            "repetition_penalty",
            "truncate",
            "top_p",
            "stop",
            "seed",
            "presence_penalty",
            "frequency_penalty",
        }
    )

    def stream(self, model: CatalogueModel, request: ChatRequest) -> AsyncIterator[Sequence[StreamEvent]]:
        return self.upstream.stream(
            f"{self.connection.base_url}/api/chat",
            functools.partial(build_body, model, request),
            OllamaStream(self.upstream),
            headers={"Accept": "application/x-ndjson"},
            model=model.upstream_model,
        )

    async def probe(self, models: list[CatalogueModel]) -> ProbeResult | None:
        def names(listing: Any) -> Iterator[ListedModel]:
            # The tags list no context window (only /api/show per model does, and not as a served limit).
            for entry in listing["models"]:
                for name in {entry.get("name"), entry.get("model")} - {None}:
                    yield name, None
                    # "llama3.2" and "llama3.2:latest" are the same model to Ollama.
                    yield name.removesuffix(":latest"), None

        return await self.upstream.probe_listing(f"{self.connection.base_url}/api/tags", names)
