"""OpenAI Chat Completions over SSE: the one wire format the ``openai``, Hugging Face router and OpenRouter
kinds share (STYLE habit 2: the connection is injected, the protocol is parsed once, here).

Request (openai-python ``resources/chat/completions``; huggingface_hub ``InferenceClient.chat_completion``):
``POST {base}/chat/completions`` with ``model``, ``messages``, ``stream: true`` and
``stream_options: {"include_usage": true}`` — servers that honour it (the HF router, vLLM, OpenAI) then send
a last chunk with ``choices: []`` and ``usage``; others (llama.cpp's server) send none on a stream, and the
usage is then estimated and marked so. Each kind names the ``GenerationParams`` it can carry and under
which wire names; what it cannot carry is reported as dropped, never sent under a name the server ignores.

Tools, structured output and images cross as the OpenAI reference has them (``tools``, ``tool_choice``,
``parallel_tool_calls``, ``response_format``, ``image_url`` content parts, assistant ``tool_calls``, ``tool``
messages). A streamed tool call is ``delta.tool_calls[]`` pieces (``index``; ``id``, ``type``, ``function.name``
on a call's first piece; ``function.arguments`` fragments, as OpenAI, vLLM and OpenRouter stream them; Google's
OpenAI compatibility API streams each call whole, with no ``index``: numbered in order, ``_call_index``).

Reply: ``data: {chat.completion.chunk}`` events (comments skipped by the SSE decoder), ``delta.content``;
reasoning in ``delta.reasoning_content`` (DeepSeek, vLLM, llama.cpp) or ``delta.reasoning`` (OpenRouter), or
as a leading ``<think>…</think>`` block in the content (models whose server does not split it);
``finish_reason`` on the last choice chunk, usage on it or in a chunk of its own, then ``data: [DONE]``.
A failure after the status line is a chunk with a top-level ``error`` (OpenAI, OpenRouter, vLLM and the HF
router all send ``{"error": {"message", "code"?, ...}}``; ``code`` an HTTP status or a string; TGI's Messages
API ``http_status_code`` instead, or before 2.4.1 a text ``error`` beside ``error_type``) — raised as the matching
error once the events before it are delivered.
"""

from __future__ import annotations

import dataclasses
import functools
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import aclosing, suppress
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar

import aiohttp
import orjson

from modelgate.chat import (
    CacheBreak,
    Capability,
    ChatRequest,
    Finish,
    FinishReason,
    Image,
    Message,
    NamedTool,
    ReasoningDelta,
    ReasoningDetail,
    RefusalDelta,
    ResponseFormat,
    StreamEvent,
    TextDelta,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    Usage,
    interleaved,
    reported_usage,
)
from modelgate.errors import UpstreamError, UpstreamProtocolError
from modelgate.providers._http import (
    ErrorDetail,
    HttpProvider,
    Upstream,
    estimate_prompt_tokens,
    estimate_tokens,
    estimated_time,
    json_message,
    openai_listing,
    parse_json,
    seconds_until_epoch_ms,
    text_field,
)
from modelgate.providers.base import Connection, ProbeResult
from modelgate.providers.tgi import ERROR_TYPES as TGI_ERROR_TYPES
from modelgate.reasoning import ReasoningSplitter
from modelgate.sse import SSEDecoder
from modelgate.wire import MAX_REASONING_DETAILS, opaque_object

if TYPE_CHECKING:
    from modelgate.catalogue import CatalogueModel

_FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool-calls",
    "function_call": "tool-calls",
    "content_filter": "content-filter",
    "error": "error",
    # vLLM (v1 FinishReason.ABORT: "aborted for another reason", e.g. its POST /pause) and SGLang (FINISH_ABORT,
    # /abort_request) end a reply they cut so: never a whole answer.
    "abort": "error",
}
#: Reads what a request cost, in USD, from a usage object that carries it (OpenRouter's ``usage.cost``), or None.
CostReader = Callable[[Mapping[str, Any]], float | None]
#: A string error ``code`` (or OpenRouter's ``metadata.error_type``) → the HTTP status it means.
_ERROR_CODES = {
    "rate_limit_exceeded": 429,
    "provider_unavailable": 503,
    "context_length_exceeded": 400,
    "invalid_request_error": 400,
    "model_not_found": 404,
    # The HF router's 400 for a model none of the account's enabled providers serves ("The requested model 'x' is not
    # supported by any provider you have enabled."): the catalogue's model is not served, the request is not wrong.
    "model_not_supported": 404,
}
#: TGI's Chat Completions stream error is ``{"error": {"message", "http_status_code": 422}}``, 422 whatever failed
#: (router/src/infer/mod.rs ``into_openai_event``): right for a refused request, not for the failures TGI answers
#: with another status on its other routes (router/src/server.rs), told apart only by the message's start.
_TGI_FAILURES = {"Model is overloaded": 503, "Request failed during generation": 424, "Incomplete generation": 500}
#: The fields every Chat Completions server takes (the OpenAI API reference), by our parameter names.
#: ``reasoning_effort`` is openai-python's ``CompletionCreateParams.reasoning_effort``; vLLM and the HF router
#: (huggingface.co/docs/inference-providers/guides/gpt-oss: "reasoning effort controls") take it as it is.
STANDARD_FIELDS: Mapping[str, str] = MappingProxyType(
    {
        "max_new_tokens": "max_tokens",
        "temperature": "temperature",
        "top_p": "top_p",
        "stop": "stop",
        "seed": "seed",
        "presence_penalty": "presence_penalty",
        "frequency_penalty": "frequency_penalty",
        "reasoning_effort": "reasoning_effort",
    }
)


def error_detail(error: Any) -> tuple[int | None, ErrorDetail]:
    """An ``error`` value (an object ``{"code", "message", "type", "metadata"?}`` or a plain string) →
    (the HTTP status it means, if it says one; the detail)."""
    if isinstance(error, str):
        return None, ErrorDetail(error)
    if not isinstance(error, dict):  # a hostile server's list or number: shown as text, as a body in no shape is
        return None, ErrorDetail(json_message(error))
    code = error.get("code")
    metadata = error.get("metadata")
    metadata = metadata if isinstance(metadata, dict) else {}
    if (flagged := _moderation(metadata, code) or _guardrail(error.get("message"), metadata, code)) is not None:
        return 403, flagged  # the status OpenRouter documents for it, also when it comes in a stream
    status = code if isinstance(code, int) and not isinstance(code, bool) else None
    if status is None and isinstance(code, str) and code.isdigit() and len(code) == 3:
        status = int(code)
    if status is not None and not 400 <= status <= 599:
        status = None  # not an HTTP error status (a 10**30 "status" broke the error body that names it)
    if status is None:
        status = _ERROR_CODES.get(str(code)) or _ERROR_CODES.get(str(metadata.get("error_type", "")))
    if status is None and "http_status_code" in error:
        status = _tgi_status(str(error.get("message", "")), error["http_status_code"])
    retry_after = None
    headers = metadata.get("headers")
    reset = headers.get("X-RateLimit-Reset") if isinstance(headers, dict) else None  # OpenRouter: epoch milliseconds
    if reset is not None:
        retry_after = seconds_until_epoch_ms(reset)
    message = str(error.get("message") or code or "unknown error")
    if isinstance(code, str) and not code.isdigit() and code not in message:
        message = f"{message} ({code})"  # e.g. context_length_exceeded: the reason a client can act on
    serving = _serving_provider_reason(metadata)
    if serving:
        message = f"{message}: {serving}"
    return status, ErrorDetail(message, retry_after=retry_after)


def _moderation(metadata: Any, code: Any) -> ErrorDetail | None:
    """OpenRouter's refusal of an input the model's moderation flagged: HTTP 403 with ``metadata: {reasons,
    flagged_input, provider_name, model_slug}`` (api_reference/errors-and-debugging, "Moderation errors"). The detail
    is built from the reasons and names alone: ``flagged_input`` is the user's own text (up to 100 characters) and
    OpenRouter's ``message`` is free text that might quote it, so neither is read, and neither reaches a reply or a
    log line."""
    if not isinstance(metadata, dict) or not isinstance(metadata.get("reasons"), list):
        return None
    if "flagged_input" not in metadata and code != 403:
        return None
    reasons = tuple(reason for reason in metadata["reasons"] if isinstance(reason, str))
    provider, model = (metadata.get(key) for key in ("provider_name", "model_slug"))
    required = f"{provider} requires it" if isinstance(provider, str) and provider else "the model requires it"
    if isinstance(model, str) and model:
        required += f" for {model}"
    return ErrorDetail(required, flagged=reasons)


#: What a block by one of the OpenRouter account's guardrails may name of its kind (the words OpenRouter's message
#: uses → the reason given): only these are shown, never the message, whose other words could quote the input.
_GUARDRAIL_KINDS: Mapping[str, str] = {"prompt injection": "prompt injection", "sensitive": "sensitive info"}


def _guardrail(message: Any, metadata: Any, code: Any) -> ErrorDetail | None:
    """OpenRouter's refusal of a request one of the account's guardrails blocked before any model saw it: HTTP 403,
    ``"Request blocked: prompt injection patterns detected"`` with ``metadata: {patterns: [...]}`` (its OpenAPI
    spec's ``guardrail-blocked`` example; guides/features/guardrails: prompt injection and sensitive info "Block —
    the entire request is rejected with a 403"). Not refused credentials: this input was refused. ``patterns`` are
    the matched text, the user's own, so the detail counts them and names the guardrail's kind, nothing more."""
    if str(code) != "403" or not isinstance(message, str) or not message.startswith("Request blocked"):
        return None
    kinds = tuple(kind for word, kind in _GUARDRAIL_KINDS.items() if word in message.lower())
    patterns = metadata.get("patterns") if isinstance(metadata, dict) else None
    matched = len(patterns) if isinstance(patterns, list) else 0
    shown = f"{matched} matched pattern{'s' if matched != 1 else ''}, not repeated here; " if matched else ""
    reason = f"{shown}the guardrails are the provider account's own settings"
    return ErrorDetail(reason, flagged=kinds, flagged_by="blocked by a guardrail of the provider account")


def _tgi_status(message: str, stated: Any) -> int | None:
    for start, status in _TGI_FAILURES.items():
        if message.startswith(start):
            return status
    is_status = isinstance(stated, int) and not isinstance(stated, bool) and 400 <= stated <= 599
    return stated if is_status else None


def _serving_provider_reason(metadata: Any) -> str | None:
    """OpenRouter's ``"Provider returned error"`` carries the serving provider's own answer in ``metadata``
    (``provider_name``, ``raw``: its body, often JSON text): that is the reason a client can act on (a context
    window, a refused parameter). The caller cleans and clips it like any upstream text."""
    if not isinstance(metadata, dict) or "raw" not in metadata:
        return None
    raw = metadata["raw"]
    if isinstance(raw, str):
        with suppress(orjson.JSONDecodeError):
            raw = orjson.loads(raw)
    if isinstance(raw, dict):  # {"error": {"message"}}, {"error": "text"} or {"message"}
        inner = raw.get("error", raw)
        raw = inner.get("message", inner) if isinstance(inner, dict) else inner
    reason = raw if isinstance(raw, str) else json_message(raw)
    name = metadata.get("provider_name")
    return f"{name}: {reason}" if isinstance(name, str) and name else reason


def read_error(status: int, body: bytes) -> ErrorDetail:
    """A non-2xx body: ``{"error": {...}}`` or ``{"error": "text"}`` (HF router), vLLM's older
    ``{"object": "error", "message"}``, or FastAPI's ``{"detail": ...}``. The HF router's cold start carries its
    wait in ``estimated_time`` beside the error (seconds, as TGI's hosted API has it). A ``code`` that names what failed
    (``model_not_supported`` under a 400) says more than the HTTP status: it is the status the error means. Google's
    OpenAI compatibility API wraps its error in an array, ``[{"error": {"code", "message", "status"}}]``
    (google-gemini/gemini-cli issues #4635, #14438; Gemini 3's missing thought signature): read as the one error."""
    payload = parse_json(body)
    if isinstance(payload, list) and len(payload) == 1 and isinstance(payload[0], dict):
        payload = payload[0]
    if "error" not in payload and "message" not in payload:
        return ErrorDetail(str(payload["detail"]))
    error = payload.get("error", payload)
    meant, detail = error_detail(error)
    if (estimated := estimated_time(payload)) is not None:  # the HF router's cold start: a 503 "currently loading"
        detail = dataclasses.replace(detail, retry_after=estimated)
    code = error.get("code") if isinstance(error, dict) else None
    if isinstance(code, str) and code in _ERROR_CODES:
        return dataclasses.replace(detail, status=meant)
    return detail


def _image_part(image: Image, *, detail: bool) -> dict[str, Any]:
    url: dict[str, Any] = {"url": image.url}
    if detail and image.detail is not None:
        url["detail"] = image.detail
    return {"type": "image_url", "image_url": url}


def wire_content(message: Message, *, detail: bool = True, cache: bool = False) -> str | list[dict[str, Any]]:
    """A message's content as the OpenAI reference has it: its text, or with images text and ``image_url`` parts in
    the client's order (the text first when it came first). ``detail=False``: for a protocol whose image parts have
    only a ``url`` (``ChatRequest.bare_form_losses`` reports the detail). ``cache``: for a protocol taking a part's
    ``cache_control`` (OpenRouter): the message's parts as the client cut them, each breakpoint on its part; else
    the breakpoints are left out (``Provider.lost_hints`` reports them) and the message goes as if it had none."""
    ordered = message.parts
    if ordered is not None and not cache and message.cache_breaks:
        ordered = tuple(part for part in ordered if not isinstance(part, CacheBreak))
        ordered = ordered if interleaved(ordered) else None
    if ordered is not None:
        wire: list[dict[str, Any]] = []
        for part in ordered:
            if isinstance(part, CacheBreak):
                if wire:
                    wire[-1]["cache_control"] = part.wire()
            elif isinstance(part, str):
                wire.append({"type": "text", "text": part})
            else:
                wire.append(_image_part(part, detail=detail))
        return wire
    if message.images:
        parts: list[dict[str, Any]] = [{"type": "text", "text": message.content}] if message.content else []
        return parts + [_image_part(image, detail=detail) for image in message.images]
    return message.content


def wire_message(
    message: Message, *, cache: bool = False, extra_content: bool = False, reasoning_details: bool = False
) -> dict[str, Any]:
    """One message as the OpenAI reference has it (``wire_content``). ``extra_content``, ``reasoning_details``: for a
    kind whose upstream may read them back (``ChatCompletionsProvider``), a call's ``extra_content`` and the message's
    ``reasoning_details`` as the client handed them back; else they are left out."""
    wire: dict[str, Any] = {"role": message.role, "content": wire_content(message, cache=cache)}
    if message.name is not None:
        wire["name"] = message.name
    if message.tool_calls:
        if not (cache and message.cache_breaks):
            wire["content"] = message.content or None
        wire["tool_calls"] = [_wire_call(call, extra_content=extra_content) for call in message.tool_calls]
    if reasoning_details and message.reasoning_details:
        wire["reasoning_details"] = list(message.reasoning_details)
    if message.tool_call_id is not None:
        wire["tool_call_id"] = message.tool_call_id
    return wire


def _wire_call(call: ToolCall, *, extra_content: bool) -> dict[str, Any]:
    wire = {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
    if extra_content and call.extra is not None:
        wire["extra_content"] = call.extra
    return wire


def wire_tool(tool: Tool, *, strict: bool = True) -> dict[str, Any]:
    """``strict=False``: for a protocol whose tools have no ``strict`` (``ChatRequest.tool_controls`` reports it)."""
    function: dict[str, Any] = {"name": tool.name}
    if tool.description is not None:
        function["description"] = tool.description
    if tool.parameters is not None:
        function["parameters"] = tool.parameters
    if strict and tool.strict is not None:
        function["strict"] = tool.strict
    return {"type": "function", "function": function}


def wire_tool_choice(choice: ToolChoice) -> str | dict[str, Any]:
    """A mode as it is; one function as OpenAI names it (``{"type": "function", "function": {"name"}}``)."""
    return {"type": "function", "function": {"name": choice.name}} if isinstance(choice, NamedTool) else choice


def wire_response_format(value: ResponseFormat) -> dict[str, Any]:
    if value.type == "json_object":
        return {"type": "json_object"}
    spec: dict[str, Any] = {"name": value.name or "response"}
    if value.description is not None:
        spec["description"] = value.description
    if value.schema is not None:
        spec["schema"] = value.schema
    if value.strict is not None:
        spec["strict"] = value.strict
    return {"type": "json_schema", "json_schema": spec}


def openai_usage(usage: Any) -> Usage | None:
    """An OpenAI-shaped ``usage`` object, with ``completion_tokens_details.reasoning_tokens`` and
    ``prompt_tokens_details.cached_tokens`` (OpenAI, OpenRouter, vLLM with prefix caching) when they are there;
    None when it holds no readable counts (``chat.reported_usage``: the reply is then counted by us)."""
    if not isinstance(usage, dict):
        return None
    return reported_usage(
        usage.get("prompt_tokens"),
        usage.get("completion_tokens"),
        reasoning=_detail(usage.get("completion_tokens_details"), "reasoning_tokens"),
        cached=_detail(usage.get("prompt_tokens_details"), "cached_tokens"),
    )


def _arguments(value: Any) -> str:
    """A call's arguments: the JSON text OpenAI sends, or an object some servers send parsed, as its text."""
    if not value:
        return ""
    return orjson.dumps(value).decode() if isinstance(value, dict) else text_field(value)


def _detail(details: Any, name: str) -> Any:
    return details.get(name) if isinstance(details, dict) else None


#: How much of a streamed reply's body is kept while no event has come (``ChatCompletionsStream._not_a_stream``).
HEAD_LIMIT = 256 * 1024
#: The most tool calls (distinct ``index`` values) one reply may make: far past any model's turn (OpenAI takes at
#: most 128 tools in a request). Every call is remembered for the rest of the reply (here, and whole by whoever
#: collects it), and a chunk naming a new index is a few dozen bytes: unbounded, an upstream numbering calls
#: without end grew that memory with the stream, never tripping the per-event limit.
MAX_TOOL_CALLS = 1024
#: Past the largest ``index`` a tool call may have: servers number calls 0, 1, 2…, and one past 64 bits could not
#: even be written to the client (``orjson`` refuses it: an "Internal Server Error" chunk, as if ours).
TOOL_INDEX_LIMIT = 2**31


def keep_head(head: bytearray, chunk: bytes) -> None:
    """Add ``chunk`` to the body's ``head``, up to ``HEAD_LIMIT`` bytes (a bytearray: a body trickled a byte at a
    time must not cost a copy of the whole head per byte)."""
    if len(head) < HEAD_LIMIT:
        head += chunk[: HEAD_LIMIT - len(head)]


def not_an_event_stream(upstream: Upstream, head: bytes) -> UpstreamProtocolError:
    """The error for a 200 to a streamed call whose body held no event, and no reply its parser reads: an event
    stream cut inside its first event is truncated; anything else is quoted."""
    if head.lstrip().startswith((b"data:", b":", b"event:")):
        return upstream.truncated()
    return upstream.protocol_error("the reply to a streamed call is no event stream", quoted=head)


class ChatCompletionsStream:
    """Incremental parser of one Chat Completions SSE stream."""

    __slots__ = (
        "_calls",
        "_deltas",
        "_events",
        "_finish",
        "_head",
        "_last_call",
        "_read_cost",
        "_request",
        "_separated",
        "_splitter",
        "_template",
        "_upstream",
        "_usage",
        "done",
        "ended",
        "failure",
        "seen",
    )

    def __init__(
        self,
        upstream: Upstream,
        request: ChatRequest,
        *,
        template: str | None = None,
        read_cost: CostReader | None = None,
    ) -> None:
        self._upstream = upstream
        self._request = request
        self._template = template
        #: The kind's reader of the cost its usage reports (``ChatCompletionsProvider.read_cost``), if it reports one.
        self._read_cost = read_cost
        self._events = SSEDecoder()
        # A leading <think> block in the content is reasoning, unless the server separates reasoning itself.
        self._splitter = ReasoningSplitter()
        self._separated = False
        self._finish: FinishReason | None = None
        self._usage: Usage | None = None
        self._deltas = 0
        #: Indexes of the tool calls seen so far.
        self._calls: set[int] = set()
        #: The index and id of the call the last tool-call piece belonged to (``_call_index``).
        self._last_call: tuple[int, str | None] | None = None
        self.done = False
        self.failure: UpstreamError | None = None
        #: Whether any event arrived (an empty 200 is how llama.cpp's server refuses a streamed request).
        self.seen = False
        #: The body's first bytes while no event has come: what a 200 that is no event stream said (``keep_head``).
        self._head = bytearray()
        #: Whether the body came to its end (not cut off by a dropped connection or a timeout).
        self.ended = False

    def feed(self, chunk: bytes) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        head = self._head
        if not self.seen:
            keep_head(head, chunk)
        try:
            for event in self._events.feed(chunk):
                self.seen = True
                data = event.data
                if data == "[DONE]":
                    out.extend(self._final())
                    self.done = True
                    break
                try:
                    payload = orjson.loads(data)
                    if event.event == "error":  # llama.cpp's ``error:`` line (``SSEDecoder``): the error itself
                        raise self._mid_stream_error(payload)
                    self.read_chunk(payload, out)
                except (orjson.JSONDecodeError, AttributeError, TypeError, KeyError, ValueError) as exc:
                    raise self._upstream.protocol_error("unreadable stream chunk", quoted=data) from exc
        except UpstreamError as exc:
            self.failure = exc  # raised once ``out`` is delivered
        if self.seen and head:
            head.clear()  # an event stream: nothing to quote
        return out

    def read_chunk(self, payload: Any, out: list[StreamEvent]) -> None:
        """One parsed chunk's events into ``out`` (Workers AI wraps such chunks in its own stream for some
        models). Raises the ``UpstreamError`` an ``error`` chunk means; a chunk in no known shape, a ``KeyError``
        or the like."""
        self._envelope(payload)
        for choice in payload.get("choices") or ():
            if choice.get("index", 0) == 0:  # n is 1: another choice (a broken server's) is not this answer
                self._choice(choice, out)

    def finish(self) -> list[StreamEvent]:
        """The events that end a stream whose end marker came (the usage, counted if not reported)."""
        return self._final()

    def _envelope(self, payload: Any) -> None:
        """What a chunk and a whole reply carry beside their choices: an error (raised) or the usage (kept)."""
        if "error" in payload or payload.get("object") == "error":
            raise self._mid_stream_error(payload)
        usage = payload.get("usage")
        if usage:
            counted = openai_usage(usage)
            if counted is not None and self._read_cost is not None and (cost := self._read_cost(usage)) is not None:
                counted = dataclasses.replace(counted, cost=cost)
            self._usage = counted or self._usage  # unreadable counts: counted by us at the end

    def _choice(self, choice: Any, out: list[StreamEvent]) -> None:
        # Text fields are checked (``text_field``): a number or an object went on to every client's stream.
        delta = choice.get("delta") or {}
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        blocks = delta.get("reasoning_details")
        details = self._reasoning_details(blocks) if blocks else ()  # a call per token only where there are some
        if reasoning or details:
            self._separated = True
            self._deltas += 1 if reasoning else 0  # a block without text (a signature) is no token
            out.append(ReasoningDelta(text_field(reasoning) if reasoning else "", details))
        refusal = delta.get("refusal")
        if refusal:
            self._deltas += 1
            out.append(RefusalDelta(text_field(refusal)))
        content = delta.get("content")
        if content:
            content = text_field(content)
            self._deltas += 1
            if self._separated or self._splitter.answering:
                out.append(TextDelta(content))
            else:
                out.extend(self._splitter.feed(content))
        for call in delta.get("tool_calls") or ():
            function = call.get("function") or {}
            call_id = text_field(call["id"]) if call.get("id") else None
            index = self._call_index(call.get("index"), call_id)
            if not 0 <= index < TOOL_INDEX_LIMIT:
                raise self._upstream.protocol_error(f"a tool call index out of range: {str(index)[:20]}")
            if index not in self._calls:
                if len(self._calls) >= MAX_TOOL_CALLS:
                    raise self._upstream.protocol_error(f"the reply made more than {MAX_TOOL_CALLS} tool calls")
                self._calls.add(index)
                # A server that sends no id (some llama.cpp builds) still gets one: clients answer by it.
                call_id = call_id or f"call_{uuid.uuid4().hex[:24]}"
            if call_id is not None or self._last_call is None or self._last_call[0] != index:
                self._last_call = (index, call_id)
            extra = call.get("extra_content")
            self._deltas += 1
            out.append(
                ToolCallDelta(
                    index=index,
                    id=call_id,
                    name=text_field(function["name"]) if function.get("name") else None,
                    arguments=_arguments(function.get("arguments")),
                    extra=None if extra is None else self._opaque(extra, "a tool call's extra_content"),
                )
            )
        reason = choice.get("finish_reason")
        if reason:
            self._finish = _FINISH.get(reason, "other")
            if self._finish == "stop" and self._calls:
                self._finish = "tool-calls"  # servers that say "stop" after tool calls; clients look for tool_calls

    def _call_index(self, index: Any, call_id: str | None) -> int:
        """A piece's call number: its ``index``. Google's OpenAI compatibility API sends none ("google does not send
        index", @ai-sdk/openai-compatible's chunk schema), streaming each call whole: there a piece with an id other
        than the last call's starts the next call, and a piece without one goes on with the last call."""
        if index is not None:
            return int(index)
        last = self._last_call
        if last is None:
            return 0
        if call_id is None or call_id == last[1]:
            return last[0]
        return max(self._calls) + 1

    def _reasoning_details(self, value: Any) -> tuple[ReasoningDetail, ...]:
        """A delta's (or a whole message's) ``reasoning_details``: OpenRouter's list of reasoning blocks, each an
        object kept as it came (openrouter.ai/docs "Reasoning Details API Shape"; the types ``reasoning.text``,
        ``.summary``, ``.encrypted`` and more in @openrouter/sdk's ``ReasoningDetailUnion``, unknown ones included)."""
        if not value:
            return ()
        if not isinstance(value, list):
            raise self._upstream.protocol_error("reasoning_details is not a list")
        if len(value) > MAX_REASONING_DETAILS:
            raise self._upstream.protocol_error(f"more than {MAX_REASONING_DETAILS} reasoning_details in one piece")
        return tuple(self._opaque(detail, "a reasoning_details entry") for detail in value)

    def _opaque(self, value: Any, what: str) -> dict[str, Any]:
        """``value`` bounded (``wire.opaque_object``); else a protocol error that never quotes it (it is the model's
        reasoning, for it alone to read back)."""
        try:
            return opaque_object(value)
        except (TypeError, ValueError) as exc:
            raise self._upstream.protocol_error(f"{what} is unreadable: {exc}") from exc

    def whole(self, raw: bytes) -> list[StreamEvent]:
        """A non-streamed reply (``chat.completion``: ``choices[].message``) as the events its stream would
        have been; raises the ``UpstreamError`` an ``error`` body means."""
        try:
            payload = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise self._unreadable(raw) from exc
        return self.whole_reply(payload, raw)

    def whole_reply(self, payload: Any, raw: bytes) -> list[StreamEvent]:
        """``whole`` for a reply already parsed from ``raw`` (Workers AI wraps one in its envelope's ``result``)."""
        try:
            self._envelope(payload)
            out: list[StreamEvent] = []
            for choice in payload["choices"]:
                if choice.get("index", 0) != 0:
                    continue  # as in a stream: only the first choice is the answer
                message = choice.get("message") or {}
                # The message is one delta holding everything; its tool calls are numbered by position.
                calls = [{**call, "index": i} for i, call in enumerate(message.get("tool_calls") or ())]
                self._choice({**choice, "delta": {**message, "tool_calls": calls}}, out)
        except (AttributeError, TypeError, KeyError, ValueError) as exc:
            raise self._unreadable(raw) from exc
        if self._finish is None:
            raise self._upstream.protocol_error("the reply has no finish_reason")
        if self._usage is None:
            # Not reported: counted from the text (a stream's estimate counts its deltas instead).
            self._deltas = sum(estimate_tokens(e.text) for e in out if isinstance(e, TextDelta | ReasoningDelta))
        return out + self._final()

    def _unreadable(self, raw: bytes) -> UpstreamProtocolError:
        return self._upstream.protocol_error("unreadable reply", quoted=raw)

    @property
    def received(self) -> bool:
        """Whether the body said anything: events, or bytes other than blank space."""
        return self.seen or bool(self._head.strip())

    def end(self) -> list[StreamEvent]:
        self.ended = True
        if not self.seen and self.received:
            return self._not_a_stream(bytes(self._head))
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

    def _not_a_stream(self, head: bytes) -> list[StreamEvent]:
        """A 200 to a streamed call whose body held no event: a whole ``chat.completion`` (a server that does
        not stream) is read as one, an ``error`` body is the error it says (a quota refusal under a 200); else
        the body's start is quoted. Never a second call: that would be a second generation, billed."""
        try:
            payload = orjson.loads(head)
        except orjson.JSONDecodeError:
            payload = None
        if isinstance(payload, dict) and "choices" in payload:
            return self.whole_reply(payload, head)
        if isinstance(payload, dict) and ("error" in payload or payload.get("object") == "error"):
            raise self._mid_stream_error(payload)
        raise not_an_event_stream(self._upstream, head)

    def _mid_stream_error(self, payload: Any) -> UpstreamError:
        """``payload``: a chunk with a top-level ``error``, or an error itself (vLLM's older ``object: error``)."""
        status, detail = error_detail(payload.get("error", payload))
        if status is None:
            # TGI before 2.4.1 (and its native stream): a text ``error`` beside its ``error_type``.
            status = TGI_ERROR_TYPES.get(str(payload.get("error_type")))
        return self._upstream.error_for(status or 502, detail)


class ChatCompletionsProvider(HttpProvider):
    """A kind speaking Chat Completions. Subclasses set what differs: the parameters they carry, the
    key's variable, extra body fields and headers, the model id they send."""

    read_error = staticmethod(read_error)
    #: ``GenerationParams`` field → the wire name this kind sends it under (``a.b``: field ``b`` of object ``a``).
    fields: ClassVar[Mapping[str, str]] = STANDARD_FIELDS
    supported_params: ClassVar[frozenset[str]] = frozenset(STANDARD_FIELDS)
    #: The kind's own bearer-key variable (None: no key unless the instance names one).
    key_variable: ClassVar[str | None] = None
    extra_body: ClassVar[Mapping[str, Any]] = MappingProxyType({})
    extra_headers: ClassVar[Mapping[str, str]] = MappingProxyType({})
    capabilities: ClassVar[frozenset[Capability]] = frozenset({"tools", "json", "vision", "reasoning"})
    #: Whether the listing needs the key (OpenRouter's is public: a probe must not spend a key on it).
    probe_with_key: ClassVar[bool] = True
    #: Whether a tool call's ``extra_content`` (Gemini's thought signature, on Google's OpenAI compatibility API)
    #: goes back upstream as the client returned it.
    carries_extra_content: ClassVar[bool] = False
    #: Whether an assistant message's ``reasoning_details`` (OpenRouter's reasoning blocks) go back upstream.
    carries_reasoning_details: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.supported_params = frozenset(cls.fields)

    def __init__(self, connection: Connection, http: aiohttp.ClientSession) -> None:
        super().__init__(connection, http)
        #: The kind's fields and the instance's own mapping (``extra_params``: llama.cpp's ``repeat_penalty``, …).
        self.wire_fields: Mapping[str, str] = {**self.fields, **connection.extra_params}

    @staticmethod
    def read_cost(usage: Mapping[str, Any]) -> float | None:
        """What a request cost in USD, as the kind's usage says (OpenRouter's ``usage.cost``); None: it does not say."""
        return None

    @property
    def carried_params(self) -> frozenset[str]:
        return frozenset(self.wire_fields)

    def upstream_model(self, model: CatalogueModel) -> str:
        return model.upstream_model

    def build_body(self, model: CatalogueModel, request: ChatRequest, *, stream: bool = True) -> dict[str, Any]:
        values = request.params.set_fields()
        messages = [
            wire_message(
                m,
                cache=self.carries_cache_control,
                extra_content=self.carries_extra_content,
                reasoning_details=self.carries_reasoning_details,
            )
            for m in request.messages
        ]
        body: dict[str, Any] = {"model": self.upstream_model(model), "messages": messages}
        # A non-streamed reply carries its usage without being asked.
        body |= {"stream": True, "stream_options": {"include_usage": True}} if stream else {"stream": False}
        body |= self.extra_body
        for name, wire in self.wire_fields.items():
            if name in values:
                value = values[name]
                # A dotted wire name is a field of an object (OpenRouter's ``reasoning.effort``).
                parent, _, leaf = wire.rpartition(".")
                target = body.setdefault(parent, {}) if parent else body
                target[leaf] = list(value) if isinstance(value, tuple) else value
        if request.tools:
            body["tools"] = [wire_tool(tool) for tool in request.tools]
            if request.tool_choice is not None:
                body["tool_choice"] = wire_tool_choice(request.tool_choice)
            if request.parallel_tool_calls is not None:
                body["parallel_tool_calls"] = request.parallel_tool_calls
        if request.response_format is not None:
            body["response_format"] = wire_response_format(request.response_format)
        if request.cache is not None and self.carries_cache_control:
            body["cache_control"] = request.cache.wire()
        return body

    def headers(self) -> dict[str, str]:
        return {"Accept": "text/event-stream", **self.extra_headers, **self.connection.bearer(self.key_variable or "")}

    async def stream(self, model: CatalogueModel, request: ChatRequest) -> AsyncIterator[Sequence[StreamEvent]]:
        url, headers, name = f"{self.connection.base_url}/chat/completions", self.headers(), self.upstream_model(model)
        body = functools.partial(self.build_body, model, request)
        parser = ChatCompletionsStream(self.upstream, request, template=model.template, read_cost=self.read_cost)
        try:
            async with aclosing(self.upstream.stream(url, body, parser, headers=headers, model=name)) as batches:
                async for batch in batches:
                    yield batch
        except UpstreamProtocolError as exc:
            if parser.received or not parser.ended:
                raise
            # llama-cpp-python's server answers a streamed request it refuses (a prompt over its context window)
            # with an empty 200; the same request not streamed gets the 400 and the server's reason. Only a body
            # that *ended* without an event: after a dropped connection or a timeout the call is sent no second
            # time (it would be a whole generation, billed and thrown away).
            once = {k: v for k, v in body().items() if k != "stream_options"} | {"stream": False}
            refusal = await self.upstream.refusal(url, once, headers=headers, model=name)
            if refusal is None:
                raise
            raise refusal from exc

    def complete(self, model: CatalogueModel, request: ChatRequest) -> AsyncIterator[Sequence[StreamEvent]]:
        # ``stream: false``: one ``chat.completion`` body (every Chat Completions server offers it).
        url, headers, name = f"{self.connection.base_url}/chat/completions", self.headers(), self.upstream_model(model)
        headers["Accept"] = "application/json"
        body = functools.partial(self.build_body, model, request, stream=False)
        parser = ChatCompletionsStream(self.upstream, request, template=model.template, read_cost=self.read_cost)
        return self.upstream.fetch(url, body, parser.whole, headers=headers, model=name)

    async def probe(self, models: list[CatalogueModel]) -> ProbeResult | None:
        # GET {base}/models: the free listing every Chat Completions server has (OpenAI, vLLM, llama.cpp,
        # the HF router, OpenRouter); ``data[].id`` are the ids a request names.
        headers = {k: v for k, v in self.headers().items() if k == "Authorization" and self.probe_with_key}
        return await self.upstream.probe_listing(f"{self.connection.base_url}/models", openai_listing, headers=headers)
