"""Cloudflare Workers AI ``POST /accounts/{id}/ai/run/{model}``: bare SSE events until ``[DONE]`` (providers.md §2).

The stream has no envelope and no finish reason: ``{"response": "…"}`` fragments (``p`` is padding,
ignored), then a separate ``{"response": "", "usage": {…}}`` event on newer models, then
``data: [DONE]``. ``[DONE]`` means "stop", or "length" when the completion used exactly
``max_tokens`` (the only hint Cloudflare gives). Errors use the v4 envelope
``{"success": false, "errors": [{"code", "message"}]}``, and the code says more than the status
(§2.5). The input schema rejects unknown properties, so ``typical_p`` and ``truncate``, which it does
not have, are never sent (and reported as dropped). So is a reasoning effort: each model has its own input schema,
and only some have one — gpt-oss as ``reasoning: {"effort"}`` beside a Responses-style ``input`` (its model page,
``@cloudflare/workers-types`` ``GPT_OSS_120B_Responses``), not beside the ``messages`` sent here; a few others
(GLM, Kimi, QwQ) as ``reasoning_effort`` (``workers-ai-provider`` 3.1.12) — and a model without one refuses
the whole request.

Function calling and JSON mode (Workers AI "traditional function calling" and "JSON Mode"; the shapes of
Cloudflare's own AI SDK provider, ``workers-ai-provider``): ``tools`` as OpenAI defines them, ``tool_choice`` as
that provider sends it to every model on ``/ai/run/`` since 3.1.3 (a mode, or since 3.2.0 one function in the
OpenAI form, which Workers AI enforces server-side: its changelog, cloudflare/ai#429, #560, #575; ``none`` offers no
tools), ``response_format: {"type": "json_schema", "json_schema": <schema>}``, the bare schema with the format's
name and description in it as its ``title`` and ``description`` (``titled_schema``; ``json_object`` is sent as the
schema of any object). JSON mode does not stream, and the official provider does not stream tool calls either, so
a call with tools or a response format is sent without ``stream``, as is every call whose caller wants the reply
whole (``complete``): the whole envelope
``{"result": {"response", "tool_calls": [{"name", "arguments": {…}}], "usage"}, "success": true}`` becomes the
events a stream would have given (``response`` is an object when JSON mode parsed it; it is sent on as JSON text;
``workers-ai-provider``'s ``doGenerate`` reads the same fields). Tool calls come without ids: each gets a generated
one; some models put OpenAI-shaped calls there instead (``{"id", "type", "function": {"name", "arguments"}}``), read
as the official provider reads them, with their own ids. A past call goes back as the assistant's OpenAI-shaped
``tool_calls``, a tool result as ``{"role": "tool", "name", "tool_call_id", "content"}`` (as ``workers-ai-provider``
sends it; the input schemas: "Must be supplied for tool calls for Mistral-3", pattern ``[a-zA-Z0-9]{9}``).

Images (a model declaring ``vision``: ``@cf/meta/llama-4-scout-17b-16e-instruct``,
``@cf/mistralai/mistral-small-3.1-24b-instruct``, ``@cf/google/gemma-3-12b-it``,
``@cf/meta/llama-3.2-11b-vision-instruct``, …) go as OpenAI ``image_url`` parts of the user message's content, each
a ``data:`` URL: the vision models' input schemas take content parts ``{"type", "text"?, "image_url"?: {"url"}}``,
the url an "image uri with data (e.g. data:image/jpeg;base64,/9j/...). HTTP URL will not be accepted"
(``@cloudflare/workers-types``, types/defines/ai.d.ts in cloudflare/workerd). Only llama-3.2-11b-vision also has a
top-level ``image`` byte array, which the others' schemas lack; Cloudflare's own AI SDK provider stopped sending
it for the parts in 3.1.4 ("enabling vision for models like Llama 4 Scout and Kimi K2.5"; cloudflare/ai 054ccb8,
``convert-to-workersai-chat-messages.ts``), several images per message included. A remote URL is refused (400):
Workers AI does not fetch it, and modelgate never fetches a URL a client names.

Newer models (Qwen3, gpt-oss, …) answer in the OpenAI format instead, in the same transport: stream events are
Chat Completions chunks (``choices[0].delta``: ``content``, ``reasoning_content``, ``tool_calls``; the usage in a
chunk of its own) and a whole reply's ``result`` is a ``chat.completion`` (``choices[0].message``,
``finish_reason``). ``workers-ai-provider`` reads both formats in both places (its ``streaming.ts`` and
``extractContent``), and so does modelgate: such a payload is read by the Chat Completions parser, finish reason
included.

Some models do not stream on ``/ai/run/`` (GPT-OSS, Kimi): to ``stream: true`` they answer a 200 ``application/json``
envelope with an empty result, no events. Cloudflare's own provider then sends the same call without streaming and
relays that whole reply (``workers-ai-provider`` utils.ts ``createRun``: "Some models (e.g. GPT-OSS) don't support
streaming via the /ai/run/ endpoint and return a JSON response with empty result instead of SSE. Retry without
streaming"), and so does modelgate (``NotStreamed``, ``Cloudflare.stream``), which also remembers the model so that
its next streamed calls are sent whole at once. An envelope with ``success: false`` is the error it says, and one
whose result holds a reply is read as it is: neither is asked again.
"""

from __future__ import annotations

import functools
import hashlib
import re
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Sequence
from contextlib import aclosing
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote

import orjson

from modelgate.chat import (
    SCHEMA_DESCRIPTION,
    TOOL_STRICT,
    Capability,
    ChatRequest,
    Finish,
    FinishReason,
    Message,
    ResponseFormat,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    Usage,
)
from modelgate.errors import ALL_MODELS, BadRequest, UpstreamAgreementRequired, UpstreamError, UpstreamProtocolError
from modelgate.providers._http import (
    ErrorDetail,
    HttpProvider,
    ListedModel,
    Upstream,
    context_window,
    estimate_prompt_tokens,
    parse_json,
    seconds_until_utc_midnight,
    text_field,
)
from modelgate.providers.base import Connection, ProbeResult
from modelgate.providers.chat_completions import (
    ChatCompletionsStream,
    keep_head,
    not_an_event_stream,
    openai_usage,
    wire_content,
    wire_tool,
    wire_tool_choice,
)
from modelgate.reasoning import ReasoningSplitter
from modelgate.sse import SSEDecoder

if TYPE_CHECKING:
    import aiohttp

    from modelgate.catalogue import CatalogueModel

#: Workers AI's default when ``max_tokens`` is not sent (§2.2).
DEFAULT_MAX_TOKENS = 256

#: Error codes whose meaning the HTTP status does not carry: code → (status meant, retry may cure it).
_CODES: dict[int, tuple[int, bool | None]] = {
    10000: (401, None),  # authentication error (sometimes under 403)
    7003: (401, None),  # "could not route to /accounts/…": the account id is wrong
    3040: (429, True),  # out of capacity: retry with backoff
    3036: (429, False),  # daily free allocation used up: no retry helps until tomorrow
    4006: (429, False),  # the same, as Workers AI words it now ("4006: you have used up your daily free allocation …")
    5007: (404, None),  # no such model
    3042: (404, None),  # invalid model id
}


#: The codes of a used-up daily free allocation: the account's ("10,000 Neurons per day" per account, any model), and
#: "All limits reset daily at 00:00 UTC" (developers.cloudflare.com/workers-ai/platform/pricing). Every model of the
#: account is blocked until then (``ErrorDetail.account_block``), not called one after another.
DAILY_ALLOCATION_USED_UP = frozenset({3036, 4006})
#: "Account blocked | 3023 | 403 | Service unavailable for account" (the same errors page): every model of the
#: account is refused alike, until the account's owner has it lifted; blocked for the breaker's cooldown each time.
ACCOUNT_BLOCKED = 3023

#: "Model agreement", 403, "User has not agreed to Llama3.2 model terms" (developers.cloudflare.com/workers-ai/platform/
#: errors); Workers AI words it "5016: Prior to using this model, you must submit the prompt 'agree'. By submitting
#: 'agree', you hereby agree to the … Community License …". The model's page: "send an initial request … with
#: "prompt": "agree". After that, you'll be able to use the model as normal." Accepting a licence is the account
#: owner's decision: modelgate says how, and never sends "agree" itself.
AGREEMENT_REQUIRED = 5016
_AGREEMENT_REMEDY = (
    "its licence has not been accepted for this Cloudflare account (Workers AI 5016). The account's owner accepts it "
    'once by sending the model the prompt "agree" (POST /accounts/{account_id}/ai/run/{model} with '
    '{"prompt": "agree"}, as the model\'s page on developers.cloudflare.com says); after that it answers as usual. '
    "Cloudflare said: "
)


def _detail(errors: Any) -> ErrorDetail:
    first = errors[0] if errors else {}
    code = first.get("code")
    message = str(first.get("message") or "unknown error")
    if code is not None and not message.startswith(f"{code}:"):
        message = f"{code}: {message}"
    if code == AGREEMENT_REQUIRED:
        return ErrorDetail(_AGREEMENT_REMEDY + message, status=403, transient=False, error=UpstreamAgreementRequired)
    status, transient = _CODES.get(code, (None, None)) if isinstance(code, int) else (None, None)
    if code in DAILY_ALLOCATION_USED_UP:
        text = f"the account's daily free allocation is used up until 00:00 UTC: {message}"
        return ErrorDetail(text, status=status, retry_after=seconds_until_utc_midnight(), account_block=ALL_MODELS)
    if code == ACCOUNT_BLOCKED:
        text = f"Workers AI refuses the Cloudflare account itself (see its dashboard): {message}"
        return ErrorDetail(text, status=status, account_block=ALL_MODELS)
    return ErrorDetail(message, status=status, transient=transient)


def read_error(status: int, body: bytes) -> ErrorDetail:
    return _detail(parse_json(body)["errors"])


def search_listing(listing: Any) -> Iterator[ListedModel]:
    """The models of a model search, each with its ``context_window`` property (a numeric string)."""
    for entry in listing["result"]:
        properties = {p.get("property_id"): p.get("value") for p in entry.get("properties") or ()}
        yield entry["name"], context_window(properties.get("context_window"))


def build_body(request: ChatRequest, *, stream: bool = True) -> dict[str, Any]:
    p = request.params
    fields = {
        "max_tokens": p.max_new_tokens,
        "temperature": p.temperature,
        "top_p": p.top_p,
        "repetition_penalty": p.repetition_penalty,
        "seed": p.seed,
        "presence_penalty": p.presence_penalty,
        "frequency_penalty": p.frequency_penalty,
    }
    names = {call.id: call.name for m in request.messages for call in m.tool_calls}
    body: dict[str, Any] = {"messages": [_message(m, names) for m in request.messages]}
    if not stream or whole_reply(request):
        if offers_tools(request):
            body["tools"] = [wire_tool(tool, strict=False) for tool in request.tools]  # no strict here
            if request.tool_choice is not None:
                body["tool_choice"] = wire_tool_choice(request.tool_choice)
        if request.response_format is not None:
            body["response_format"] = {"type": "json_schema", "json_schema": titled_schema(request.response_format)}
    else:
        body["stream"] = True
    body.update((key, value) for key, value in fields.items() if value is not None)
    return body


def titled_schema(fmt: ResponseFormat) -> dict[str, Any]:
    """The bare schema Workers AI takes (``json_object``: that of any object), with the format's ``name`` and
    ``description`` folded in as the schema's own ``title`` and ``description``, so they are not lost: as
    ``workers-ai-provider``'s ``buildJsonSchemaPayload`` does (cloudflare/ai#559, a360e7a). A title or description the
    schema has already is kept, never overwritten (a description so lost is reported: ``Cloudflare.unenforced``)."""
    schema = dict(fmt.schema) if fmt.type == "json_schema" and fmt.schema is not None else {"type": "object"}
    if fmt.name and "title" not in schema:
        schema["title"] = fmt.name
    if fmt.description and "description" not in schema:
        schema["description"] = fmt.description
    return schema


def offers_tools(request: ChatRequest) -> bool:
    # "none" is honoured by not offering the tools (no tool_choice a model could overlook).
    return bool(request.tools) and request.tool_choice != "none"


def whole_reply(request: ChatRequest) -> bool:
    """Tool calls and JSON mode come in one non-streamed reply."""
    return offers_tools(request) or request.response_format is not None


#: The input schemas' pattern for a message's ``tool_call_id`` (unanchored, as JSON Schema patterns are).
_CALL_ID = re.compile(r"[a-zA-Z0-9]{9}")


def wire_call_id(call_id: str) -> str:
    """A call's id as Workers AI takes it: as it is, or, when it has no nine letters and digits in a row (the schemas'
    pattern), nine hex digits derived from it, so that the call and its result still carry the same one."""
    return call_id if _CALL_ID.search(call_id) else hashlib.sha256(call_id.encode()).hexdigest()[:9]


def _message(message: Message, names: dict[str, str]) -> dict[str, Any]:
    # Images as ``image_url`` parts with their ``data:`` URL (``Cloudflare.check``: inline only); no ``detail``.
    wire: dict[str, Any] = {"role": message.role, "content": wire_content(message, detail=False)}
    if message.tool_calls:
        wire["tool_calls"] = [
            {"id": wire_call_id(c.id), "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in message.tool_calls
        ]
    if message.tool_call_id is not None:
        wire["name"] = names.get(message.tool_call_id, "")
        wire["tool_call_id"] = wire_call_id(message.tool_call_id)
    return wire


def read_whole(upstream: Upstream, request: ChatRequest, raw: bytes) -> list[StreamEvent]:
    """One non-streamed ``ai/run`` envelope as the events its stream would have given, ending with the ``Finish``."""
    try:
        envelope = orjson.loads(raw)
        if envelope.get("success") is False:  # an error under a 2xx status [never seen; the v4 envelope allows it]
            raise upstream.error_for(500, _detail(envelope.get("errors")))
        result = envelope["result"]
        if "choices" in result:  # the OpenAI format of newer models
            return ChatCompletionsStream(upstream, request).whole_reply(result, raw)
        out: list[StreamEvent] = []
        text = result.get("response")
        if isinstance(text, str) and text:
            splitter = ReasoningSplitter()  # a leading <think> block is reasoning, as in a stream
            out.extend([*splitter.feed(text), *splitter.flush()])
        elif text is not None and not isinstance(text, str):
            out.append(TextDelta(orjson.dumps(text).decode()))  # JSON mode: the parsed object, sent on as JSON text
        calls = result.get("tool_calls") or ()
        for index, call in enumerate(calls):
            # Some models put OpenAI-shaped calls here ({"id", "type", "function": {"name", "arguments"}});
            # workers-ai-provider (utils.ts processToolCall) reads that shape first, then the native one.
            function = call.get("function")
            native = not isinstance(function, dict)
            named = call if native else function
            arguments = named.get("arguments") or {}
            out.append(
                ToolCallDelta(
                    index=index,
                    id=(None if native else text_field(call.get("id") or "")) or f"call_{uuid.uuid4().hex[:24]}",
                    name=text_field(named["name"]),  # a null name was sent on as "None"
                    arguments=arguments if isinstance(arguments, str) else orjson.dumps(arguments).decode(),
                )
            )
        usage = result.get("usage")
        counted = (openai_usage(usage) if usage else None) or Usage(
            estimate_prompt_tokens(request.messages), 0, estimated=True
        )
    except (orjson.JSONDecodeError, AttributeError, TypeError, KeyError, ValueError) as exc:
        raise upstream.protocol_error("unreadable reply", quoted=raw) from exc
    limit = request.params.max_new_tokens or DEFAULT_MAX_TOKENS
    reason: FinishReason = "tool-calls" if calls else "length" if counted.completion_tokens == limit else "stop"
    out.append(Finish(reason, counted))
    return out


class NotStreamed(UpstreamProtocolError):
    """A streamed call answered with an empty v4 envelope and no event: the model does not stream on ``/ai/run/``
    (``Cloudflare.stream`` asks again without ``stream``)."""


def _answered(result: Any) -> bool:
    """Whether an envelope's ``result`` holds a reply (text, tool calls, OpenAI-format choices), not an empty one."""
    return isinstance(result, dict) and any(result.get(key) for key in ("response", "tool_calls", "choices"))


class CloudflareStream:
    """Incremental parser of one Workers AI SSE stream."""

    __slots__ = (
        "_events",
        "_fragments",
        "_head",
        "_openai",
        "_request",
        "_seen",
        "_splitter",
        "_upstream",
        "_usage",
        "done",
        "failure",
    )

    def __init__(self, upstream: Upstream, request: ChatRequest) -> None:
        self._upstream = upstream
        self._request = request
        self._events = SSEDecoder()
        self._usage: Usage | None = None
        self._fragments = 0
        #: The parser of a model that streams OpenAI-format chunks, from its first such chunk on.
        self._openai: ChatCompletionsStream | None = None
        # DeepSeek-R1's distills on Workers AI write their leading <think> block into ``response``.
        self._splitter = ReasoningSplitter()
        self.done = False
        self.failure: UpstreamError | None = None
        #: Whether any event arrived, and the body's first bytes until one does (a 200 that is a JSON envelope).
        self._seen = False
        self._head = bytearray()

    def feed(self, chunk: bytes) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        if not self._seen:
            keep_head(self._head, chunk)
        try:
            for event in self._events.feed(chunk):
                self._seen = True
                data = event.data
                if data == "[DONE]":
                    out.extend(self._openai.finish() if self._openai is not None else self._final())
                    self.done = True
                    break
                try:
                    payload = orjson.loads(data)
                    if payload.get("success") is False:  # an envelope error inside the stream [unconfirmed]
                        raise self._upstream.error_for(500, _detail(payload.get("errors")))
                    if self._openai is not None or "choices" in payload:
                        if self._openai is None:
                            self._openai = ChatCompletionsStream(self._upstream, self._request)
                        self._openai.read_chunk(payload, out)
                        continue
                    text = payload.get("response")
                    if text and isinstance(text, str):
                        self._fragments += 1
                        out.extend(self._splitter.feed(text))
                    usage = payload.get("usage")
                    if usage:
                        self._usage = openai_usage(usage) or self._usage  # unreadable: counted by us at the end
                except (orjson.JSONDecodeError, AttributeError, TypeError, KeyError, ValueError) as exc:
                    raise self._upstream.protocol_error("unreadable stream event", quoted=data) from exc
        except UpstreamError as exc:
            self.failure = exc  # raised once ``out`` is delivered
        if self._seen and self._head:
            self._head.clear()  # an event stream: nothing to read whole
        return out

    def end(self) -> list[StreamEvent]:
        if self._openai is not None:  # complete if its finish_reason came
            return self._openai.end()
        if not self._seen and self._head.strip():
            return self._not_a_stream(bytes(self._head))
        raise self._upstream.truncated()  # no [DONE]: Cloudflare's only end marker never came

    def _not_a_stream(self, head: bytes) -> list[StreamEvent]:
        """A body without an event. A v4 envelope is what it says: an error, a reply (read whole: asking again would
        be a second generation), or an empty result, ``NotStreamed``; anything else is no event stream."""
        try:
            envelope = orjson.loads(head)
        except orjson.JSONDecodeError:
            envelope = None
        if not isinstance(envelope, dict) or not ("result" in envelope or "success" in envelope):
            raise not_an_event_stream(self._upstream, head)
        if envelope.get("success") is not False and not _answered(envelope.get("result")):
            raise NotStreamed(self._upstream.provider, "the model answered a streamed call with an empty result")
        return read_whole(self._upstream, self._request, head)  # raises the error a ``success: false`` says

    def _final(self) -> list[StreamEvent]:
        """What a held-back tag turned out to be, then the ``Finish``."""
        out: list[StreamEvent] = list(self._splitter.flush())
        usage = self._usage
        if usage is None:
            # Older deployments report nothing. Workers AI streams one token per event, so the
            # count of non-empty fragments is the completion; the prompt is ≈ 4 characters a token.
            usage = Usage(estimate_prompt_tokens(self._request.messages), self._fragments, estimated=True)
        limit = self._request.params.max_new_tokens or DEFAULT_MAX_TOKENS
        out.append(Finish("length" if usage.completion_tokens == limit else "stop", usage))
        return out


class Cloudflare(HttpProvider):
    name = "cloudflare"
    capabilities: ClassVar[frozenset[Capability]] = frozenset({"tools", "json", "vision", "reasoning"})
    read_error = staticmethod(read_error)
    #: tool_choice is sent (build_body); no parallel_tool_calls nor strict in this protocol.
    uncarried_tool_controls: ClassVar[frozenset[str]] = frozenset({"parallel_tool_calls", TOOL_STRICT})
    supported_params: ClassVar[frozenset[str]] = frozenset(
        {
            "max_new_tokens",
            "temperature",
            "top_p",
            "repetition_penalty",
            "seed",
            "presence_penalty",
            "frequency_penalty",
        }
    )

    def __init__(self, connection: Connection, http: aiohttp.ClientSession) -> None:
        super().__init__(connection, http)
        #: Upstream models seen answering a streamed call with ``NotStreamed``: their streamed calls go whole at once
        #: (no wasted first request each time). Catalogue models only, so bounded by this instance's catalogue, and
        #: forgotten when a reload builds new providers (a model that learnt to stream is then streamed again).
        self._unstreamed: set[str] = set()

    def _account_url(self) -> str:
        account = quote(self.connection.credentials.get("CLOUDFLARE_ACCOUNT_ID", ""), safe="")
        return f"{self.connection.base_url}/accounts/{account}/ai"

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.connection.api_key('CLOUDFLARE_API_TOKEN')}"}

    def unenforced(self, model: CatalogueModel, request: ChatRequest) -> list[str]:
        # An image part goes without detail; the schema's description is carried in it unless it has its own.
        lost = request.bare_form_losses()
        fmt = request.response_format
        if fmt is not None and titled_schema(fmt).get("description") == fmt.description:
            lost = [name for name in lost if name != SCHEMA_DESCRIPTION]
        return self.lost_tool_controls(request) + lost

    def check(self, model: CatalogueModel, request: ChatRequest) -> None:
        super().check(model, request)  # a model without ``vision`` is refused any image there
        for index, image in ((i, image) for i, message in enumerate(request.messages) for image in message.images):
            if image.inline is None:  # its data was checked where it came in (``images.ImageBudget``)
                raise BadRequest(
                    f"messages[{index}]: model '{model.id}' (Cloudflare Workers AI) takes images only inline, as "
                    "data: URLs; modelgate does not fetch image URLs",
                    param="messages",
                )

    def stream(self, model: CatalogueModel, request: ChatRequest) -> AsyncIterator[Sequence[StreamEvent]]:
        if whole_reply(request) or model.upstream_model in self._unstreamed:
            return self.complete(model, request)  # tool calls, JSON mode and models that do not stream come whole
        return self._stream_or_whole(model, request)

    async def _stream_or_whole(
        self, model: CatalogueModel, request: ChatRequest
    ) -> AsyncIterator[Sequence[StreamEvent]]:
        """The stream, or for a model that does not stream on ``/ai/run/`` the whole reply, asked again without
        ``stream`` (``workers-ai-provider`` utils.ts ``createRun``)."""
        # The model goes into the path as is, "@" and slashes included (§2.1): never percent-encoded.
        events = self.upstream.stream(
            f"{self._account_url()}/run/{model.upstream_model}",
            functools.partial(build_body, request),
            CloudflareStream(self.upstream, request),
            headers={**self._auth(), "Accept": "text/event-stream"},
            model=model.upstream_model,
        )
        try:
            async with aclosing(events) as batches:
                async for batch in batches:
                    yield batch
            return
        except NotStreamed:
            # Raised only by a body without an event, so nothing was yielded: the whole reply is all the stream.
            self._unstreamed.add(model.upstream_model)
        async with aclosing(self.complete(model, request)) as whole:
            async for batch in whole:
                yield batch

    def complete(self, model: CatalogueModel, request: ChatRequest) -> AsyncGenerator[list[StreamEvent], None]:
        # No ``stream`` (its default is false, and the official client sends none): one v4 envelope.
        return self.upstream.fetch(
            f"{self._account_url()}/run/{model.upstream_model}",
            functools.partial(build_body, request, stream=False),
            functools.partial(read_whole, self.upstream, request),
            headers={**self._auth(), "Accept": "application/json"},
            model=model.upstream_model,
        )

    async def probe(self, models: list[CatalogueModel]) -> ProbeResult | None:
        # The model search listing is free (no inference, no neurons). One search per model keeps
        # the answer exact whatever the listing's page size. ``models`` are this instance's (a named
        # ``[providers.X] kind = "cloudflare"`` too).
        found: set[str] = set()
        windows: dict[str, int] = {}
        for term in [m.upstream_model for m in models] or [""]:
            result = await self.upstream.probe_listing(
                f"{self._account_url()}/models/search?search={quote(term, safe='')}",
                search_listing,
                headers=self._auth(),
            )
            if not result.reachable or result.available_models is None:
                return result
            found |= result.available_models
            windows.update(result.context_lengths)
        return ProbeResult(reachable=True, available_models=frozenset(found), context_lengths=windows)
