"""Ollama ``POST /api/chat``: NDJSON lines until ``done: true`` (providers.md §4).

Ollama applies the model's own chat template, so messages go as they are. ``think: true`` is sent only
for models the catalogue marks ``capabilities = ["reasoning"]``: Ollama refuses it for any other model
(400 "… does not support thinking"), and only thinks — ``message.thinking``, a reasoning part here —
when asked (ollama-python ``Client.chat(think=…)``; api/types.go ``ChatRequest.Think``).

A caller's reasoning effort is ``think`` too: ``think`` is a bool or one of ``"low"``, ``"medium"``, ``"high"``,
``"max"`` (api/types.go ``ThinkValue.UnmarshalJSON``; "max" since Ollama 0.22, an older server refuses it with a
400 naming the value, which the caller then gets), so those levels go as they are to a reasoning model: the model's
renderer reads the level (gpt-oss, Qwen3.8, Glimmer), or thinks plainly. ``none`` is ``think: false`` (Ollama's
documented switch off, taken by every model). The other efforts (``minimal``, ``xhigh``) are no value Ollama has
(it refuses them with a 400), and a level asked of a model that cannot think would be refused: those are not sent
but reported as dropped (``Ollama.unenforced``), rather than rounded to a level the caller did not choose.

Errors before the stream have a real status and ``{"error": "…"}``; after lines were sent, the status stays 200 and
one more line ``{"error": "…"}`` ends the stream (§4.5). Its JSON escapes ``<>&`` as ``\\u003c…`` (Go), which only a
real JSON parser reads right.

A caller that wants the reply whole (``complete``) gets it as Ollama offers it: ``stream: false`` and one
``ChatResponse`` object — the final line's shape, with the whole ``message`` (content, thinking, tool calls) in it
(server/routes.go ``collectChatResponse``), read into the events its stream would have given. Ollama sends
nothing until the generation is over; a runner failing meanwhile is an error status, not a late line.

Tools, structured output and images (ollama-python ``_types.py``: ``ChatRequest.tools``/``format``,
``Message.images``/``tool_calls``/``tool_name``): ``tools`` as OpenAI defines them; ``format`` is the JSON
schema, or ``"json"`` for any object; images are base64 strings in the message's ``images`` — Ollama takes
bytes, not URLs, and modelgate fetches no URL a client names, so a remote image URL is refused (400), as is an
image of a type Ollama does not read (``IMAGE_TYPES``), which it would fail on with a 500 or a 400.
An assistant's tool call goes back with its id and its arguments as an object, a tool result as a ``tool`` message
naming the function (``tool_name``) and the call (``tool_call_id``; api/types.go ``Message.ToolCallID``, which
renderers such as Cohere's link results by, and Ollama's own OpenAI layer passes on). Ollama's tool calls arrive
whole (``message.tool_calls``, arguments an object, an ``id`` since server/routes.go ``toolCallId``): each becomes
one ``ToolCallDelta`` with that id (a generated one from versions without), and the reply finishes with
``tool-calls`` (Ollama says ``stop``).

A local Ollama takes no key; ollama.com's API and an Ollama behind an authenticating proxy take one as a bearer token,
which an instance names in ``api_key_env`` (``Ollama.key_header``).
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import orjson

from modelgate.chat import (
    TOOL_STRICT,
    Capability,
    ChatRequest,
    Finish,
    FinishReason,
    Message,
    ReasoningDelta,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    Usage,
    reported_usage,
)
from modelgate.errors import BadRequest, UpstreamAuthError, UpstreamError
from modelgate.providers._http import (
    ErrorDetail,
    HttpProvider,
    ListedModel,
    Upstream,
    estimate_prompt_tokens,
    parse_json,
    text_field,
    tokens_of_characters,
)
from modelgate.providers.base import ProbeResult
from modelgate.providers.chat_completions import wire_tool
from modelgate.reasoning import ReasoningSplitter
from modelgate.sse import NDJSONDecoder
from modelgate.wire import writable_json

if TYPE_CHECKING:
    from modelgate.catalogue import CatalogueModel

_DONE_REASONS: dict[str, FinishReason] = {"stop": "stop", "length": "length", "load": "other", "unload": "other"}
#: The thinking levels of Ollama's ``think`` (api/types.go ``ThinkValue.IsValid``; "max" since 0.22, #15787).
THINK_LEVELS = frozenset({"low", "medium", "high", "max"})
#: The images Ollama reads: its own OpenAI layer takes ``data:image/{jpeg,jpg,png,webp};base64,`` and no other
#: (openai/openai.go ``decodeImageURL``); WebP is decoded by Ollama itself (server/routes.go registers it,
#: llm/llama_server.go ``llamaServerMediaBytes`` turns it into PNG). ``images.ImageBudget`` labels JPEG image/jpeg.
IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/webp"})
#: Ollama's 503 when its one scheduler queue (``OLLAMA_MAX_QUEUE`` pending requests, for all models together) is
#: full (server/sched.go ``ErrMaxQueue``, answered by server/routes.go ``handleScheduleError``): the whole server
#: is busy, not the one model, so it counts against the provider's breaker (``ErrorDetail.provider_wide``).
SERVER_BUSY = "server busy, please try again.  maximum pending requests exceeded"
#: What a 401 with a ``signin_url`` means: the Ollama server is not signed in to ollama.com for a cloud model.
NOT_SIGNED_IN = "the Ollama server is not signed in to ollama.com for its cloud models: run `ollama signin` there"


def read_error(status: int, body: bytes) -> ErrorDetail:
    payload = parse_json(body)
    message = str(payload["error"])
    if status == 401 and "signin_url" in payload:
        # A local Ollama asked for a cloud model it cannot reach: it signs its calls to ollama.com with its own key,
        # and has none until its owner signs in (server/routes.go ChatHandler, server/cloud_proxy.go
        # writeCloudUnauthorized); no key of ours helps. The URL names that server and its key: not shown.
        return ErrorDetail(NOT_SIGNED_IN, error=UpstreamAuthError)
    return ErrorDetail(message, provider_wide=status == 503 and message == SERVER_BUSY)


def build_body(model: CatalogueModel, request: ChatRequest, *, stream: bool = True) -> dict[str, Any]:
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
    # A tool result names its function (``tool_name``); ours names the call, so look the call up.
    names = {call.id: call.name for m in request.messages for call in m.tool_calls}
    body: dict[str, Any] = {
        "model": model.upstream_model,
        "messages": [_message(m, names) for m in request.messages],
        "stream": stream,
    }
    think = effort_think(model, p.reasoning_effort)
    if think is None and "reasoning" in model.capabilities:
        think = True
    if think is not None:
        body["think"] = think
    if request.tools and request.tool_choice != "none":
        # Ollama has no tool_choice: "none" is honoured by not offering the tools; "required" and a named
        # function cannot be enforced and are left to the model (documented), as is a tool's strict.
        body["tools"] = [wire_tool(tool, strict=False) for tool in request.tools]
    fmt = request.response_format
    if fmt is not None:
        body["format"] = fmt.schema if fmt.type == "json_schema" and fmt.schema is not None else "json"
    options = {key: value for key, value in option_values.items() if value is not None}
    if options:
        body["options"] = options
    return body


def effort_think(model: CatalogueModel, effort: str | None) -> bool | str | None:
    """The ``think`` value that carries the caller's reasoning ``effort`` to ``model``; None where Ollama has none."""
    if effort == "none":
        return False
    return effort if effort in THINK_LEVELS and "reasoning" in model.capabilities else None


def _message(message: Message, names: dict[str, str]) -> dict[str, Any]:
    wire: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.images:
        wire["images"] = [inline[1] for image in message.images if (inline := image.inline) is not None]
    if message.tool_calls:
        wire["tool_calls"] = [
            {"id": c.id, "function": {"name": c.name, "arguments": orjson.loads(c.arguments or "{}")}}
            for c in message.tool_calls
        ]
    if message.tool_call_id is not None:
        if message.tool_call_id in names:
            wire["tool_name"] = names[message.tool_call_id]
        wire["tool_call_id"] = message.tool_call_id
    return wire


class OllamaStream:
    """Incremental parser of one ``/api/chat`` NDJSON reply."""

    __slots__ = ("_calls", "_chars", "_lines", "_request", "_separated", "_splitter", "_upstream", "done", "failure")

    def __init__(self, upstream: Upstream, request: ChatRequest) -> None:
        self._upstream = upstream
        self._request = request
        #: Characters of text so far: the completion's estimate when the counts are unreadable.
        self._chars = 0
        self._lines = NDJSONDecoder()
        self._calls = 0
        # Ollama separates reasoning (``message.thinking``) when asked to think; otherwise, and in versions
        # before it could, a reasoning model writes its leading <think> block into the content.
        self._splitter = ReasoningSplitter()
        self._separated = False
        self.done = False
        self.failure: UpstreamError | None = None

    def feed(self, chunk: bytes) -> list[StreamEvent]:
        return self._parse(self._lines.feed(chunk))

    def whole(self, raw: bytes) -> list[StreamEvent]:
        """A non-streamed reply: one object, the stream's last line with the whole message in it."""
        events = self._parse([raw])
        if self.failure is not None:
            raise self.failure
        if not self.done:
            raise self._upstream.truncated()
        return events

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
                            self._separated = True
                            thought = text_field(message["thinking"])
                            self._chars += len(thought)
                            events.append(ReasoningDelta(thought))
                        if message.get("content"):
                            text = text_field(message["content"])
                            self._chars += len(text)
                            events.extend((TextDelta(text),) if self._separated else self._splitter.feed(text))
                        for call in message.get("tool_calls") or ():
                            events.append(self._tool_call(call))
                    if item.get("done"):
                        reason = _DONE_REASONS.get(item.get("done_reason") or "stop", "other")
                        if reason == "stop" and self._calls:
                            reason = "tool-calls"
                        # Zero-valued metrics are omitted (Go omitempty), so a missing count is 0; unreadable
                        # counts are estimated as for a server that reports none.
                        usage = reported_usage(item.get("prompt_eval_count", 0), item.get("eval_count", 0))
                        if usage is None:
                            prompt = estimate_prompt_tokens(self._request.messages)
                            usage = Usage(prompt, tokens_of_characters(self._chars), estimated=True)
                        events.extend(self._splitter.flush())
                        events.append(Finish(reason, usage))
                        self.done = True
                        break
                except (orjson.JSONDecodeError, AttributeError, TypeError, KeyError) as exc:
                    raise self._upstream.protocol_error("unreadable NDJSON line", quoted=line.strip()) from exc
        except UpstreamError as exc:
            self.failure = exc  # raised once ``events`` are delivered
        return events

    def _tool_call(self, call: Any) -> ToolCallDelta:
        """A whole call (arguments an object) as one piece, with Ollama's id (one of ours from a version without)."""
        function = call["function"]
        index = self._calls
        self._calls += 1
        arguments = function.get("arguments") or {}
        text = arguments if isinstance(arguments, str) else orjson.dumps(arguments).decode()
        call_id = text_field(call.get("id") or "") or f"call_{uuid.uuid4().hex[:24]}"
        return ToolCallDelta(index=index, id=call_id, name=text_field(function["name"]), arguments=text)


class Ollama(HttpProvider):
    name = "ollama"
    capabilities: ClassVar[frozenset[Capability]] = frozenset({"tools", "json", "vision", "reasoning"})
    read_error = staticmethod(read_error)
    #: No tool_choice (only "none" is honoured, by not offering the tools), parallel_tool_calls nor strict here.
    uncarried_tool_controls: ClassVar[frozenset[str]] = frozenset({"tool_choice", "parallel_tool_calls", TOOL_STRICT})
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
            "reasoning_effort",
        }
    )

    def key_header(self) -> dict[str, str]:
        """The instance's key (``api_key_env``) as ollama.com's API takes it and ollama-python sends
        ``OLLAMA_API_KEY`` (docs/api/authentication.mdx, ollama-python ``_client.py``); nothing without one. (Ollama's
        Go client signs calls with a signed-in install's own key instead, api/client.go.)"""
        return self.connection.bearer("")

    def check(self, model: CatalogueModel, request: ChatRequest) -> None:
        super().check(model, request)
        for index, message in enumerate(request.messages):
            for image in message.images:
                inline = image.inline
                if inline is None:
                    raise BadRequest(
                        f"messages[{index}]: model '{model.id}' (Ollama) takes images only inline, as data: URLs; "
                        "modelgate does not fetch image URLs",
                        param="messages",
                    )
                if inline[0] not in IMAGE_TYPES:
                    raise BadRequest(
                        f"messages[{index}]: model '{model.id}' (Ollama) takes PNG, JPEG and WebP images, "
                        f"not {inline[0]}",
                        data={"model": model.id, "media_types": sorted(IMAGE_TYPES)},
                        param="messages",
                    )
            for call in message.tool_calls:
                try:
                    arguments = orjson.loads(call.arguments or "{}")
                except orjson.JSONDecodeError:
                    arguments = None
                if not isinstance(arguments, dict):
                    raise BadRequest(
                        f"messages[{index}].tool_calls: the arguments of '{call.id}' must be a JSON object for Ollama",
                        param="messages",
                    )
                try:  # sent as an object, not as the text the other kinds forward: it must be writable
                    writable_json(arguments)
                except ValueError as exc:
                    raise BadRequest(
                        f"messages[{index}].tool_calls: the arguments of '{call.id}': {exc}", param="messages"
                    ) from None

    def model_params(self, model: CatalogueModel) -> frozenset[str]:
        # Only a model that thinks takes a level (and "none" to a model that never thinks changes nothing).
        return self.carried_params if "reasoning" in model.capabilities else self.carried_params - {"reasoning_effort"}

    def unenforced(self, model: CatalogueModel, request: ChatRequest) -> list[str]:
        # No think value for every reasoning effort; the schema goes bare as ``format``, an image bare in ``images``.
        effort = request.params.reasoning_effort
        lost = effort is not None and effort_think(model, effort) is None
        return self.lost_tool_controls(request) + (["reasoning_effort"] if lost else []) + request.bare_form_losses()

    def stream(self, model: CatalogueModel, request: ChatRequest) -> AsyncIterator[Sequence[StreamEvent]]:
        return self.upstream.stream(
            f"{self.connection.base_url}/api/chat",
            functools.partial(build_body, model, request),
            OllamaStream(self.upstream, request),
            headers={"Accept": "application/x-ndjson", **self.key_header()},
            model=model.upstream_model,
        )

    def complete(self, model: CatalogueModel, request: ChatRequest) -> AsyncIterator[Sequence[StreamEvent]]:
        # ``stream: false``: one ChatResponse object (api/types.go), the message whole, ``done`` and the counts.
        return self.upstream.fetch(
            f"{self.connection.base_url}/api/chat",
            functools.partial(build_body, model, request, stream=False),
            OllamaStream(self.upstream, request).whole,
            headers={"Accept": "application/json", **self.key_header()},
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

        return await self.upstream.probe_listing(
            f"{self.connection.base_url}/api/tags", names, headers=self.key_header()
        )
