"""StreamEvents → the OpenAI Responses API: one ``response`` object, or its typed server-sent events.

Pinned to the ``openai`` Python SDK's pydantic types (``openai.types.responses``, 3.57), which are the truth
for every field: ``Response``, ``ResponseOutputMessage`` + ``ResponseOutputText`` / ``ResponseOutputRefusal``,
``ResponseReasoningItem``, ``ResponseFunctionToolCall``, ``ResponseUsage`` and the stream events.
``tests/test_responses_encoder.py`` validates every frame against them; the AI SDK's ``@ai-sdk/openai`` reads the
same frames in ``tests/test_responses_node.py``.

A streamed reply is ``response.created``, ``response.in_progress``, then per output item
``response.output_item.added``, ``response.content_part.added``, its deltas, ``….done``,
``response.content_part.done``, ``response.output_item.done``, and last ``response.completed`` (or
``response.incomplete`` when the model hit ``max_output_tokens`` or a content filter) carrying the whole
response with its usage. Every event has ``event:`` set to its type and a ``sequence_number`` counting from 0;
there is no ``[DONE]`` (OpenAI sends none, and the AI SDK would try to parse it as JSON).

A refusal (``RefusalDelta``: OpenAI's ``refusal`` beside a null ``content``) is a ``refusal`` content part of the
``message`` item (``{"type": "refusal", "refusal": ...}``), streamed as ``response.refusal.delta`` and
``response.refusal.done`` between its ``response.content_part.added``/``.done``, as OpenAI answers one: so a
client tells a refusal from an answer, and the SDKs' ``output_text`` (the ``output_text`` parts only) leaves it
out. Text and refusal in one reply are two parts of the one message, in the order they came
(``content_index`` 0, 1, ...).

A tool call (``ToolCallDelta`` pieces of one ``index``) is a ``function_call`` item: ``response.output_item.added``
(``call_id``, ``name``, its ``namespace`` if the request offered the function in one, empty ``arguments``),
``response.function_call_arguments.delta`` per fragment, then
``response.function_call_arguments.done`` and ``response.output_item.done`` with the whole ``arguments``. Calls
stay open until the reply finishes (or text follows them), so pieces of two calls may interleave as upstreams
send them; each piece finds its item by ``index``. A reply that only calls tools has no ``message`` item, as
OpenAI's: the AI SDK reads the ``tool-calls`` finish from the presence of a ``function_call``.

Reasoning (``ReasoningDelta``) becomes a ``reasoning`` output item whose ``content`` holds ``reasoning_text``,
streamed as ``response.reasoning_text.delta``/``.done``: OpenAI's shape for raw reasoning (its open-weight
models), not ``summary``, which would claim a summary we never made. Clients that read only summaries
(the AI SDK) show an empty reasoning part; none mixes it into the answer.

What the model attached to its reply for itself to read back (reasoning blocks, ``ReasoningDelta.details``; a tool
call's ``extra_content``, ``ToolCallDelta.extra``) goes out in one more ``reasoning`` item after all the others, with
no summary or text and its ``encrypted_content`` a token of ``modelgate.reasoning_token``: OpenAI's place for opaque
reasoning a client replays, which Codex and the SDKs keep (a ``function_call`` item has no field for it). It comes
whether or not the request's ``include`` asked for ``reasoning.encrypted_content``: nothing is stored here, so without
it the next turn of a tool loop is refused upstream (openai-python's ``ResponseReasoningItem``: encrypted_content "is
populated by default"). Streamed: its ``response.output_item.added`` and ``.done``, both whole, before the closing
event. Its blocks and extras count toward ``MAX_HELD_OUTPUT``; more than ``MAX_REASONING_DETAILS`` blocks fail the
reply, as on ``/v1/chat/completions``.

A failure after the first byte is an ``error`` event, then ``response.failed`` with ``response.error``. The
``error`` event carries OpenAI's flat ``code``/``message``/``param`` and the same again under ``error``: the
nested copy is what AI SDK 5's ``@ai-sdk/openai`` 2.x parses (it ignores the flat one and ``response.failed``),
and makes openai-python raise ``APIError`` on it, as it does for an error in a chat completion stream.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from modelgate.chat import (
    Finish,
    ReasoningDelta,
    ReasoningDetail,
    RefusalDelta,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    Usage,
)
from modelgate.encoders.base import close, ended_early, failure_message, log
from modelgate.errors import ModelgateError, UpstreamError, UpstreamProtocolError
from modelgate.observer import current_observation
from modelgate.push_lane import Lane, register_encoder
from modelgate.reasoning_token import Carried, encode
from modelgate.wire import MAX_REASONING_DETAILS

MEDIA_TYPE = "text/event-stream"
#: ``X-Accel-Buffering: no`` keeps nginx-style proxies from batching tokens.
HEADERS: Mapping[str, str] = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

_ENDED_WITH_ERROR = "the provider ended the reply with an error"

#: The most characters of output (text, refusal, reasoning and tool-call arguments together) a streamed response
#: holds for its closing event, which repeats the whole output: past it the stream ends with ``response.failed``.
#: A model's largest reply is about 128k output tokens (the most any API offers), some 0.5M characters at ~4 a
#: token: this is eight times that, and the default ``upstream_max_event_bytes``, so one event the reader lets
#: through fits. Unbounded, an upstream streaming without end (a broken or hostile server, a model looping under a
#: huge ``max_output_tokens``, no ``upstream_max_stream_seconds`` by default) grew the held output with the stream,
#: where the chat completion and AI SDK streams hold nothing. At most 4 bytes a character in memory.
MAX_HELD_OUTPUT = 4 * 1024 * 1024
_TOO_LONG = (
    f"the reply passed {MAX_HELD_OUTPUT} characters of output, the most a streamed response holds"
    " (its closing event repeats the whole output); ask for less output or stream /v1/chat/completions"
)

_TOO_MANY_DETAILS = f"more than {MAX_REASONING_DETAILS} reasoning_details"

#: Finish reasons that end a reply early: the response is ``incomplete`` with this reason
#: (``IncompleteDetails.reason``), which the SDKs map back to a ``length`` / ``content-filter`` finish.
_INCOMPLETE = {"length": "max_output_tokens", "content-filter": "content_filter"}

#: The nested error's ``type``, as ``/v1`` error bodies name them (``error_bodies.openai_error``).
_ERROR_TYPES = {"rate_limit_exceeded": "rate_limit_error"}

#: Items with content parts of text; a ``function_call`` item holds its arguments instead.
TextKind = Literal["message", "reasoning"]
ItemKind = Literal["message", "reasoning", "function_call"]
_ID_PREFIXES: Mapping[ItemKind, str] = {"message": "msg", "reasoning": "rs", "function_call": "fc"}
#: Content parts: a message's ``output_text`` (``ResponseOutputText``) and ``refusal`` (``ResponseOutputRefusal``),
#: a reasoning item's ``reasoning_text``.
PartKind = Literal["output_text", "refusal", "reasoning_text"]
#: The field of a part, and of its ``….done`` event, that holds the part's text.
_TEXT_FIELD: Mapping[PartKind, str] = {"output_text": "text", "refusal": "refusal", "reasoning_text": "text"}


@dataclass(frozen=True, slots=True)
class ResponseHead:
    """What every snapshot of one response repeats: its id, creation time and the request's settings."""

    response_id: str
    created_at: int
    model: str
    instructions: str | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    #: Echoed as the request gave them (``ToolChoice``, ``FunctionTool``s, ``ResponseFormatTextConfig``).
    tool_choice: str | Mapping[str, Any] = "auto"
    tools: tuple[Mapping[str, Any], ...] = ()
    #: The namespace of each function offered in one (``namespace`` tools): its calls name it.
    namespaces: Mapping[str, str] = field(default_factory=dict)
    text_format: Mapping[str, Any] = field(default_factory=lambda: {"type": "text"})
    parallel_tool_calls: bool = True
    metadata: Mapping[str, str] | None = None
    user: str | None = None
    #: The request's ``reasoning.effort``, echoed as ``Response.reasoning`` (``Reasoning``: no summary is made).
    reasoning_effort: str | None = None

    @classmethod
    def new(cls, model: str, created_at: int, **settings: Any) -> ResponseHead:
        return cls(response_id=f"resp_{uuid.uuid4().hex}", created_at=created_at, model=model, **settings)


@dataclass(slots=True)
class _Part:
    """One content part of a message or reasoning item: its kind and its text so far."""

    kind: PartKind
    index: int
    text: list[str] = field(default_factory=list)

    def as_output(self, text: str | None = None) -> dict[str, Any]:
        """The part holding ``text`` (default: all of its text so far)."""
        text = "".join(self.text) if text is None else text
        if self.kind == "output_text":
            return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}
        return {"type": self.kind, _TEXT_FIELD[self.kind]: text}


@dataclass(slots=True)
class _Item:
    kind: ItemKind
    id: str
    output_index: int
    #: A ``function_call``'s arguments' fragments.
    text: list[str] = field(default_factory=list)
    #: A message's or reasoning item's content parts; the last one is open while the item is.
    parts: list[_Part] = field(default_factory=list)
    status: str = "in_progress"
    call_id: str = ""
    name: str = ""
    namespace: str | None = None
    #: A reasoning item's opaque round-trip data (``modelgate.reasoning_token``).
    encrypted_content: str | None = None

    def delta_prefix(self, part: _Part) -> bytes:
        """A delta event of ``part`` up to its text: built once per part, so a token costs one ``dumps``."""
        kind = part.kind
        head = {"type": f"response.{kind}.delta", "item_id": self.id, "output_index": self.output_index}
        logprobs = b',"logprobs":[]' if kind == "output_text" else b""
        return (
            f"event: response.{kind}.delta\ndata: ".encode()
            + orjson.dumps(head)[:-1]
            + b',"content_index":'
            + str(part.index).encode()
            + logprobs
            + b',"delta":'
        )

    def as_output(self, *, with_content: bool = True) -> dict[str, Any]:
        if self.kind == "function_call":
            arguments = "".join(self.text) if with_content else ""
            call = {
                "id": self.id,
                "type": "function_call",
                "call_id": self.call_id,
                "name": self.name,
                "arguments": arguments,
                "status": self.status,
            }
            return call if self.namespace is None else {**call, "namespace": self.namespace}
        content = [part.as_output() for part in self.parts] if with_content else []
        if self.kind == "message":
            return {"id": self.id, "type": "message", "role": "assistant", "status": self.status, "content": content}
        reasoning = {"id": self.id, "type": "reasoning", "status": self.status, "summary": [], "content": content}
        return (
            reasoning if self.encrypted_content is None else {**reasoning, "encrypted_content": self.encrypted_content}
        )


def _new_item(kind: ItemKind, output_index: int) -> _Item:
    return _Item(kind=kind, id=f"{_ID_PREFIXES[kind]}_{uuid.uuid4().hex}", output_index=output_index)


def usage_object(usage: Usage, *, had_reasoning: bool) -> dict[str, Any]:
    """``ResponseUsage``. The cache counts are required by the SDK types: ``cached_tokens`` is the provider's
    count when it reports one (OpenAI, OpenRouter, vLLM), else 0, as is ``cache_write_tokens`` (no provider
    modelgate speaks reports it). ``reasoning_tokens`` is the provider's count, else 0 for a reply without
    reasoning. For a reply with reasoning the provider did not count, the count is unknown, not a made-up number:
    ``output_tokens_details`` is ``null`` (the one field where we send less than the SDK type). Not
    ``{"reasoning_tokens": null}``: Codex (``codex-api/src/sse/responses.rs``) reads the details as optional but
    their count as an integer, and a ``response.completed`` it cannot parse fails the turn; the AI SDK's schema
    allows either."""
    reasoning = usage.reasoning_tokens
    if reasoning is None and not had_reasoning:
        reasoning = 0
    body: dict[str, Any] = {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens or 0, "cache_write_tokens": 0},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning} if reasoning is not None else None,
        "total_tokens": usage.total_tokens,
    }
    if usage.estimated:  # counted by us, as on /v1/chat/completions: a non-standard field SDKs keep
        body["estimated"] = True
    return body


def error_code(exc: Exception) -> str:
    """``ResponseError.code``: of the SDK's literals, only these two describe a gateway-side failure."""
    return "rate_limit_exceeded" if isinstance(exc, ModelgateError) and exc.status == 429 else "server_error"


class ResponseBuilder:
    """One reply's output items, built from its events; the event payloads each step produces.

    Shared by the stream encoder (which sends the payloads) and ``collect_response`` (which keeps only the
    final ``response``), so both shapes come from one state machine.
    """

    def __init__(self, head: ResponseHead, provider: str) -> None:
        self.head = head
        self.provider = provider
        self.items: list[_Item] = []
        #: The open message or reasoning item (one at a time).
        self._open: _Item | None = None
        #: Open ``function_call`` items by the tool call's ``index``.
        self._calls: dict[int, _Item] = {}
        self.had_reasoning = False
        #: What the model attached for itself: its reasoning blocks, each call's ``extra_content`` by ``call_id``.
        self._details: list[ReasoningDetail] = []
        self._extras: dict[str, Any] = {}

    def response(
        self,
        status: str,
        *,
        usage: Usage | None = None,
        error: Mapping[str, Any] | None = None,
        incomplete_reason: str | None = None,
        completed_at: int | None = None,
    ) -> dict[str, Any]:
        h = self.head
        return {
            "id": h.response_id,
            "object": "response",
            "created_at": h.created_at,
            "status": status,
            "completed_at": completed_at,
            "error": dict(error) if error is not None else None,
            "incomplete_details": {"reason": incomplete_reason} if incomplete_reason is not None else None,
            "instructions": h.instructions,
            "max_output_tokens": h.max_output_tokens,
            "model": h.model,
            "output": [item.as_output() for item in self.items],
            "parallel_tool_calls": h.parallel_tool_calls,
            "previous_response_id": None,
            "reasoning": {"effort": h.reasoning_effort, "summary": None} if h.reasoning_effort is not None else None,
            "temperature": h.temperature,
            "text": {"format": dict(h.text_format)},
            "tool_choice": h.tool_choice if isinstance(h.tool_choice, str) else dict(h.tool_choice),
            "tools": [dict(tool) for tool in h.tools],
            "top_p": h.top_p,
            "truncation": "disabled",
            "usage": usage_object(usage, had_reasoning=self.had_reasoning) if usage is not None else None,
            "user": h.user,
            "metadata": dict(h.metadata) if h.metadata is not None else {},
        }

    def start(self) -> list[dict[str, Any]]:
        snapshot = self.response("in_progress")
        return [
            {"type": "response.created", "response": snapshot},
            {"type": "response.in_progress", "response": snapshot},
        ]

    def delta(self, part_kind: PartKind, text: str) -> tuple[list[dict[str, Any]], _Item, _Part]:
        """Payloads that must precede ``text`` (closing one item or part, opening another), and the item and
        part it joins: a message's text and refusal are parts of one message, each kept apart from the other."""
        kind: TextKind = "reasoning" if part_kind == "reasoning_text" else "message"
        out = self._close_calls("completed")
        if self._open is not None and self._open.kind != kind:
            out += self._close("completed")
        if self._open is None:
            out += self._add(kind, part_kind)
        item = self._open
        assert item is not None
        if item.parts[-1].kind != part_kind:
            out += self._close_part(item) + self._add_part(item, part_kind)
        part = item.parts[-1]
        part.text.append(text)
        if kind == "reasoning":
            self.had_reasoning = True
        return out, item, part

    def reasoning_details(self, details: Sequence[ReasoningDetail]) -> bool:
        """Reasoning blocks of the reply, for its last item (``finish``); whether they are within
        ``MAX_REASONING_DETAILS`` (past it, ``finish`` fails the reply)."""
        self._details += details
        self.had_reasoning = True
        return len(self._details) <= MAX_REASONING_DETAILS

    def tool_call(self, piece: ToolCallDelta) -> list[dict[str, Any]]:
        """Payloads for one piece of a tool call: its item's ``output_item.added`` (the first piece, which
        closes an open message or reasoning item), and an arguments delta when the piece has arguments."""
        out: list[dict[str, Any]] = []
        item = self._calls.get(piece.index)
        if item is None:
            if self._open is not None:
                out += self._close("completed")
            item = _new_item("function_call", len(self.items))
            # Every kind's adapter names the call on its first piece; an id is made only if one did not.
            item.call_id = piece.id or f"call_{uuid.uuid4().hex}"
            item.name = piece.name or ""
            item.namespace = self.head.namespaces.get(item.name)
            self.items.append(item)
            self._calls[piece.index] = item
            added = item.as_output(with_content=False)
            out.append({"type": "response.output_item.added", "output_index": item.output_index, "item": added})
        elif piece.name and not item.name:
            item.name = piece.name
            item.namespace = self.head.namespaces.get(item.name)
        if piece.extra is not None:
            self._extras[item.call_id] = piece.extra
        if piece.arguments:
            item.text.append(piece.arguments)
            where = {"item_id": item.id, "output_index": item.output_index}
            out.append({"type": "response.function_call_arguments.delta", **where, "delta": piece.arguments})
        return out

    def finish(self, finish: Finish, completed_at: int) -> list[dict[str, Any]]:
        reason = _INCOMPLETE.get(finish.reason)
        status = "incomplete" if reason is not None else "completed"
        carried = self._carried()  # before any item changes: it may fail the reply
        out: list[dict[str, Any]] = []
        if self._open is not None and self._open.kind != "message":
            out += self._close("completed")
        if not any(item.kind in ("message", "function_call") for item in self.items):
            out += self._add("message", "output_text")  # every response has its message or a call, if only empty
        if self._open is not None:
            out += self._close(status)
        out += self._close_calls(status)
        if carried:
            out += self._add_carrier(carried)
        response = self.response(
            status, usage=finish.usage, incomplete_reason=reason, completed_at=completed_at if reason is None else None
        )
        out.append({"type": f"response.{status}", "response": response})
        return out

    def _carried(self) -> Carried:
        if len(self._details) > MAX_REASONING_DETAILS:  # a stream's (``collect_response`` stops at once)
            raise UpstreamProtocolError(self.provider, _TOO_MANY_DETAILS)
        return Carried(details=tuple(self._details), calls=self._extras)

    def _add_carrier(self, carried: Carried) -> list[dict[str, Any]]:
        """The reasoning item that carries the reply's round-trip data, added and done at once (module docstring)."""
        item = _new_item("reasoning", len(self.items))
        item.status = "completed"
        item.encrypted_content = encode(carried)
        self.items.append(item)
        whole = {"output_index": item.output_index, "item": item.as_output()}
        return [{"type": "response.output_item.added", **whole}, {"type": "response.output_item.done", **whole}]

    def fail(self, message: str, code: str = "server_error") -> list[dict[str, Any]]:
        for item in [*self._calls.values(), *([self._open] if self._open is not None else [])]:
            item.status = "incomplete"
        self._open = None
        self._calls.clear()
        flat = {"code": code, "message": message, "param": None}
        return [
            {"type": "error", **flat, "error": {"type": _ERROR_TYPES.get(code, "server_error"), **flat}},
            {"type": "response.failed", "response": self.response("failed", error=flat)},
        ]

    def _close_calls(self, status: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for item in self._calls.values():  # in the order they were opened: their output_index order
            item.status = status
            arguments = "".join(item.text)
            where = {"item_id": item.id, "output_index": item.output_index}
            out += [
                {"type": "response.function_call_arguments.done", **where, "arguments": arguments},
                {"type": "response.output_item.done", "output_index": item.output_index, "item": item.as_output()},
            ]
        self._calls.clear()
        return out

    def _add(self, kind: TextKind, part_kind: PartKind) -> list[dict[str, Any]]:
        item = _new_item(kind, len(self.items))
        self.items.append(item)
        self._open = item
        added = {
            "type": "response.output_item.added",
            "output_index": item.output_index,
            "item": item.as_output(with_content=False),
        }
        return [added, *self._add_part(item, part_kind)]

    @staticmethod
    def _add_part(item: _Item, kind: PartKind) -> list[dict[str, Any]]:
        part = _Part(kind, len(item.parts))
        item.parts.append(part)
        where = {"item_id": item.id, "output_index": item.output_index, "content_index": part.index}
        return [{"type": "response.content_part.added", **where, "part": part.as_output("")}]

    @staticmethod
    def _close_part(item: _Item) -> list[dict[str, Any]]:
        """The open (last) part's ``….done`` (``ResponseTextDoneEvent``, ``ResponseRefusalDoneEvent``,
        ``ResponseReasoningTextDoneEvent``) and ``response.content_part.done``."""
        part = item.parts[-1]
        where = {"item_id": item.id, "output_index": item.output_index, "content_index": part.index}
        text = "".join(part.text)
        done: dict[str, Any] = {"type": f"response.{part.kind}.done", **where, _TEXT_FIELD[part.kind]: text}
        if part.kind == "output_text":
            done["logprobs"] = []
        return [done, {"type": "response.content_part.done", **where, "part": part.as_output(text)}]

    def _close(self, status: str) -> list[dict[str, Any]]:
        item = self._open
        assert item is not None
        self._open = None
        item.status = status
        return [
            *self._close_part(item),
            {"type": "response.output_item.done", "output_index": item.output_index, "item": item.as_output()},
        ]


def _part_kind(event: TextDelta | ReasoningDelta) -> PartKind:
    if isinstance(event, RefusalDelta):
        return "refusal"
    return "output_text" if isinstance(event, TextDelta) else "reasoning_text"


class ResponseStreamEncoder:
    """Encodes one reply as the Responses API's server-sent events; one instance per response."""

    def __init__(self, head: ResponseHead, *, provider: str, clock: Callable[[], float] = time.time) -> None:
        self._builder = ResponseBuilder(head, provider)
        self._provider = provider
        self._clock = clock
        self._sequence = 0
        self._prefixed: _Part | None = None
        self._prefix = b""
        #: Characters of output held (``MAX_HELD_OUTPUT``); past it, ``over`` and the rest of the reply is dropped.
        self._held = 0
        self.over = False
        self._lane: Lane | None = None

    def _frames(self, payloads: Sequence[dict[str, Any]]) -> bytes:
        out: list[bytes] = []
        for payload in payloads:
            payload["sequence_number"] = self._sequence
            self._sequence += 1
            out.append(b"event: " + payload["type"].encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n")
        return b"".join(out)

    def _delta(self, item: _Item, part: _Part, text: str) -> bytes:
        if part is not self._prefixed:
            self._prefixed, self._prefix = part, item.delta_prefix(part)
        sequence = self._sequence
        self._sequence += 1
        return self._prefix + orjson.dumps(text) + b',"sequence_number":' + str(sequence).encode() + b"}\n\n"

    def deltas(self, batch: Sequence[StreamEvent]) -> bytes:
        """The events of a batch of deltas (a batch without the ``Finish``): what every batch but the last is.

        Never raises for the reply's length (the push lane takes that for a bug of ours): the delta that would pass
        ``MAX_HELD_OUTPUT`` and all after it are dropped, ``over`` is set, and the lane is told to push no more;
        ``encode``, pulling, then ends the stream with ``response.failed``."""
        if self.over:
            return b""
        builder = self._builder
        out: list[bytes] = []
        for event in batch:
            if isinstance(event, TextDelta | ReasoningDelta):
                if event.text:
                    if not self._hold(len(event.text)):
                        break
                    before, item, part = builder.delta(_part_kind(event), event.text)
                    if before:  # an item or part closed and another opened
                        out.append(self._frames(before))
                    out.append(self._delta(item, part, event.text))
                if isinstance(event, ReasoningDelta) and event.details:
                    if not self._hold(len(orjson.dumps(event.details))):
                        break
                    builder.reasoning_details(event.details)
            elif isinstance(event, ToolCallDelta):
                # The name and id too: a call's are held, and each of up to ``MAX_TOOL_CALLS`` may be one long event.
                size = len(event.arguments or "") + len(event.name or "") + len(event.id or "")
                if event.extra is not None:
                    size += len(orjson.dumps(event.extra))
                if size and not self._hold(size):
                    break
                out.append(self._frames(builder.tool_call(event)))
        return b"".join(out)

    def _hold(self, size: int) -> bool:
        """Whether ``size`` more characters fit under ``MAX_HELD_OUTPUT`` (counted when they do)."""
        self._held += size
        if self._held <= MAX_HELD_OUTPUT:
            return True
        self.over = True
        if self._lane is not None:
            self._lane.ended = True
        return False

    def _ending(self, finish: Finish) -> bytes:
        builder = self._builder
        if finish.reason == "error":
            return self._frames(builder.fail(UpstreamError(self._provider, _ENDED_WITH_ERROR).message))
        return self._frames(builder.finish(finish, int(self._clock())))

    def _too_long(self) -> bytes:
        log.warning(
            "stream %s: the reply passed %d characters of output", self._builder.head.response_id, MAX_HELD_OUTPUT
        )
        message = UpstreamError(self._provider, _TOO_LONG).message
        if (obs := current_observation()) is not None:
            obs.cut_reason = message  # the relay, closed next, records it as the reply's error, not a client gone
        return self._frames(self._builder.fail(message))

    async def encode(self, events: AsyncIterator[Sequence[StreamEvent]]) -> AsyncIterator[bytes]:
        """The whole SSE body, one bytes per batch of events. A ``ModelgateError`` from ``events`` (or a
        stream that ends without a ``Finish``) becomes ``error`` + ``response.failed``: never a silent end."""
        builder = self._builder
        response_id = builder.head.response_id
        out = self._frames(builder.start())  # goes out with the first batch
        self._lane = register_encoder(self.deltas)  # the middle of the reply may be pushed (``push_lane``)
        try:
            async for batch in events:
                if batch and isinstance(last := batch[-1], Finish):  # a Finish is always the last event
                    out += self.deltas(batch[:-1])
                    out += self._too_long() if self.over else self._ending(last)
                    break
                out += self.deltas(batch)
                if self.over:  # in this batch, or in one the lane pushed
                    out += self._too_long()
                    break
                if out:
                    yield out
                    out = b""
            else:
                out += self._frames(builder.fail(ended_early(response_id)))
        except Exception as exc:
            out += self._frames(builder.fail(failure_message(exc, message_id=response_id), error_code(exc)))
        finally:
            await close(events)
        yield out


async def collect_response(
    events: AsyncIterator[Sequence[StreamEvent]],
    head: ResponseHead,
    *,
    provider: str,
    clock: Callable[[], float] = time.time,
) -> dict[str, Any]:
    """Drain ``events`` into one ``response`` object. Raises ``ModelgateError`` on a failure (an HTTP error,
    as the chat completion route does: a non-streamed reply has no partial result to hand back)."""
    builder = ResponseBuilder(head, provider)
    finish: Finish | None = None
    try:
        async for batch in events:
            for event in batch:
                if isinstance(event, TextDelta | ReasoningDelta):
                    if event.text:
                        builder.delta(_part_kind(event), event.text)
                    if (
                        isinstance(event, ReasoningDelta)
                        and event.details
                        and not builder.reasoning_details(event.details)
                    ):
                        raise UpstreamProtocolError(provider, _TOO_MANY_DETAILS)
                elif isinstance(event, ToolCallDelta):
                    builder.tool_call(event)
                else:
                    finish = event
                    break
            if finish is not None:
                break
    finally:
        await close(events)
    if finish is None:
        raise UpstreamProtocolError(provider, "the reply ended before it finished")
    if finish.reason == "error":
        raise UpstreamError(provider, _ENDED_WITH_ERROR)
    response: dict[str, Any] = builder.finish(finish, int(clock()))[-1]["response"]
    return response
