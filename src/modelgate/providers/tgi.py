"""Text Generation Inference (TGI) at ``POST {base}/generate_stream`` (providers.md §1): the ``huggingface`` kind
with ``api = "tgi"``, for a self-hosted TGI or a dedicated Inference Endpoint.

The prompt is rendered here with the model's official chat template (``modelgate.templates``) and
sent as ``inputs``; the reply streams one ``data:{…}`` event per token, with no ``[DONE]``: the event
carrying ``generated_text`` is the end, and a stream that closes without it was truncated (§1.5).
TGI answers 200 before validating, so errors (``validation``, ``overloaded``, ``generation``) arrive as
events with a top-level ``error``; every event is checked for one (§1.6, pitfall 1). The end token is
flagged ``special`` and is never part of the reply — filtered by the flag, never by a regex on ``<…>``.
DeepSeek-R1's generation prompt opens a ``<think>`` block, so its reply starts in reasoning.

Structured output is TGI's guidance: ``parameters.grammar = {"type": "json", "value": <schema>}``. TGI refuses a
schema without ``properties`` at its top ("Grammar must have a 'properties' field", router/src/validation.rs), and
given ``properties`` it allows only those: no schema asks it for *any* object. So a ``json_object`` request (or a
``json_schema`` without a schema) sends ``{"type": "regex", "value": …}`` with the regex TGI's own compiler,
outlines-core, makes of ``{"type": "object"}`` (``any_object``). ``/generate_stream`` has no tools (TGI's tool
calling lives on its Chat Completions route, which this ``api`` does not use), so a TGI model has no
``tools`` capability: such a request is refused with a 400 naming the model before any call.

A caller that wants the reply whole (``complete``) gets it from ``POST {base}/generate`` (the same body; TGI's
``GenerateResponse``: ``generated_text`` and ``details`` — ``finish_reason``, ``generated_tokens``), read into the
events its stream would have given. The non-streamed ``details`` has no ``input_length``: the prompt's token count
is the ``x-prompt-tokens`` header TGI sets on every ``/generate`` reply (router/src/server.rs
``generate_internal``). Errors there are real statuses with TGI's body, ``error_type`` mapped as in a stream.

The health probe is TGI's free ``GET /info`` (router/src/lib.rs ``Info``): it answers while the server
runs and states ``max_total_tokens``, the bound on prompt + reply that ``check-config --online`` checks
``truncate + max_new_tokens`` against. TGI serves one model whatever the catalogue calls it (its
``model_id`` may be a local path), so every model routed to the instance counts as served.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import orjson

from modelgate.chat import Capability, ChatRequest, Finish, FinishReason, StreamEvent, TextDelta, Usage, token_count
from modelgate.errors import UpstreamError
from modelgate.providers._http import (
    ErrorDetail,
    HttpProvider,
    ListedModel,
    Upstream,
    context_window,
    estimate_tokens,
    estimated_time,
    parse_json,
    text_field,
)
from modelgate.reasoning import ReasoningSplitter
from modelgate.sse import SSEDecoder
from modelgate.templates import get_template, render_prompt

if TYPE_CHECKING:
    from modelgate.catalogue import CatalogueModel
    from modelgate.providers.base import ProbeResult

_FINISH: dict[str, FinishReason] = {"eos_token": "stop", "stop_sequence": "stop", "length": "length"}

#: TGI ``error_type`` → the HTTP status TGI gives it on non-stream routes (router/src/server.rs), except
#: ``overloaded``: TGI says 429, but it is the model's queue that is full, not our rate: 503.
ERROR_TYPES = {"validation": 422, "overloaded": 503, "generation": 424, "template_error": 422}


def read_error(status: int, body: bytes) -> ErrorDetail:
    payload = parse_json(body)
    return ErrorDetail(
        str(payload["error"]),
        retry_after=estimated_time(payload),  # the hosted API's cold start (503 "currently loading")
        # ``/generate``'s statuses: its ``overloaded`` 429 is a full queue, as in a stream (``ERROR_TYPES``).
        status=ERROR_TYPES.get(str(payload.get("error_type"))),
    )


# outlines-core's regexes for JSON values (src/json_schema/types.rs, at the revision TGI's router/Cargo.toml pins:
# dottxt-ai/outlines-core ba10c619), and the whitespace it allows between tokens.
_STRING = r'"([^"\\\x00-\x1F\x7F-\x9F]|\\["\\])*"'
_INTEGER = r"(-)?(0|[1-9][0-9]*)"
_NUMBER = r"((-)?(0|[1-9][0-9]*))(\.[0-9]+)?([eE][+-][0-9]+)?"
_BOOLEAN = r"(true|false)"
_NULL = "null"
_SPACE = r"[ ]?"
#: How deep outlines-core nests an unconstrained object's values (its ``depth`` default).
_DEPTH = 2


def _object_regex(depth: int) -> str:
    """outlines-core ``parse_object_type`` for ``{"type": "object", "depth": depth}`` (no other keyword)."""
    values = [_STRING, _NUMBER, _BOOLEAN, _NULL]
    if depth > 0:
        values += [_object_regex(depth - 1), _array_regex(depth - 1)]
    member = f"{_STRING}{_SPACE}:{_SPACE}({'|'.join(values)})"
    return rf"\{{{_SPACE}({member}({_SPACE},{_SPACE}{member}){{0,}})?{_SPACE}\}}"


def _array_regex(depth: int) -> str:
    """outlines-core ``parse_array_type`` for ``{"type": "array", "depth": depth}`` (no ``items``)."""
    values = [_BOOLEAN, _NULL, _NUMBER, _INTEGER, _STRING]
    if depth > 0:
        values += [_object_regex(depth - 1), _array_regex(depth - 1)]
    item = "|".join(values)
    return rf"\[{_SPACE}(({item})(,{_SPACE}({item})){{0,}})?{_SPACE}\]"


@functools.cache
def any_object() -> str:
    """The regex of any JSON object, as TGI would compile ``{"type": "object"}`` if its validation let that schema
    through (objects nested ``_DEPTH`` deep): a ``json_object`` request's grammar."""
    return _object_regex(_DEPTH)


def build_parameters(request: ChatRequest) -> dict[str, Any]:
    """``parameters`` for TGI, within TGI's validation ranges (§1.3, pitfall 6)."""
    p = request.params
    params: dict[str, Any] = {}
    if p.max_new_tokens is not None:
        params["max_new_tokens"] = p.max_new_tokens
    if p.temperature is not None:
        if p.temperature > 0:
            params["temperature"] = p.temperature
        else:
            params["do_sample"] = False  # temperature 0 means greedy; TGI rejects 0 itself
    # top_p / typical_p are exclusive ranges in TGI: 1.0 (no filtering) is rejected, so it is omitted,
    # which means the same; top_p 0 means "only the most likely token", i.e. greedy.
    if p.top_p is not None:
        if 0 < p.top_p < 1:
            params["top_p"] = p.top_p
        elif p.top_p <= 0:
            params["do_sample"] = False
    if p.typical_p is not None and 0 < p.typical_p < 1:
        params["typical_p"] = p.typical_p
    if p.repetition_penalty is not None:
        params["repetition_penalty"] = p.repetition_penalty
    if p.frequency_penalty is not None:
        params["frequency_penalty"] = p.frequency_penalty
    if p.truncate is not None:
        params["truncate"] = p.truncate
    if p.stop is not None:
        params["stop"] = list(p.stop)
    if p.seed is not None:
        params["seed"] = p.seed
    # The hosted route defaults return_full_text to true (the prompt echoed back, pitfall 5);
    # details carries the usage of a stream.
    fmt = request.response_format
    if fmt is not None:
        if fmt.type == "json_schema" and fmt.schema is not None:
            params["grammar"] = {"type": "json", "value": fmt.schema}
        else:
            params["grammar"] = {"type": "regex", "value": any_object()}
    params["return_full_text"] = False
    params["details"] = True
    return params


def build_body(model: CatalogueModel, request: ChatRequest, *, stream: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {
        "inputs": render_prompt(model.template or "", request.messages),
        "parameters": build_parameters(request),
    }
    if stream:
        body["stream"] = True  # /generate takes no ``stream`` (the route decides)
    return body


class TGIStream:
    """Incremental parser of one TGI token stream."""

    __slots__ = ("_events", "_model", "_splitter", "_tokens", "_upstream", "done", "failure", "inputs", "prompt_tokens")

    def __init__(self, upstream: Upstream, model: str, splitter: ReasoningSplitter | None) -> None:
        self._upstream = upstream
        self._model = model
        self._splitter = splitter
        self._events = SSEDecoder()
        self._tokens = 0
        self.done = False
        self.failure: UpstreamError | None = None
        #: The prompt sent, for a usage estimate when TGI reports none.
        self.inputs = ""
        #: The prompt's token count from ``x-prompt-tokens`` (a whole reply's ``details`` has no ``input_length``).
        self.prompt_tokens: int | None = None

    def feed(self, chunk: bytes) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        splitter = self._splitter
        try:
            for event in self._events.feed(chunk):
                try:
                    payload = orjson.loads(event.data)
                    if "error" in payload:
                        raise self._stream_error(payload)
                    token = payload.get("token")
                    if token is not None:
                        self._tokens += 1
                        text = text_field(token["text"])
                        if text and not token.get("special"):
                            if splitter is None:
                                out.append(TextDelta(text))
                            else:
                                out.extend(splitter.feed(text))
                    if payload.get("generated_text") is not None:
                        if splitter is not None:
                            out.extend(splitter.flush())
                        ended_on_special = bool(token and token.get("special"))
                        out.append(self._finish(payload.get("details"), ended_on_special=ended_on_special))
                        self.done = True
                        break
                except (orjson.JSONDecodeError, AttributeError, TypeError, KeyError) as exc:
                    raise self._upstream.protocol_error("unreadable stream event", quoted=event.data) from exc
        except UpstreamError as exc:
            self.failure = exc  # raised once ``out`` is delivered
        return out

    def end(self) -> list[StreamEvent]:
        raise self._upstream.truncated()  # no event with generated_text: TGI's end never came

    def headers(self, headers: Mapping[str, str]) -> None:
        """A whole reply's headers: TGI counts the prompt there."""
        value = headers.get("x-prompt-tokens", "")
        self.prompt_tokens = token_count(int(value)) if value.isdigit() and len(value) < 20 else None

    def whole(self, raw: bytes) -> list[StreamEvent]:
        """A ``/generate`` reply (``generated_text`` and ``details``) as the events its stream would have given;
        raises the ``UpstreamError`` an ``error`` body means."""
        try:
            payload = orjson.loads(raw)
            if isinstance(payload, list):  # TGI's compat route wraps the object in an array
                payload = payload[0]
            if "error" in payload:
                raise self._stream_error(payload)
            text = payload["generated_text"]
            if not isinstance(text, str):
                raise TypeError(f"generated_text is {type(text).__name__}")
            details = payload.get("details")
            if details is not None and not isinstance(details, dict):
                raise TypeError(f"details is {type(details).__name__}")
        except (orjson.JSONDecodeError, AttributeError, TypeError, KeyError, IndexError) as exc:
            raise self._upstream.protocol_error("unreadable reply", quoted=raw) from exc
        out: list[StreamEvent] = []
        if text:
            splitter = self._splitter
            out.extend([TextDelta(text)] if splitter is None else [*splitter.feed(text), *splitter.flush()])
        if details is None or token_count(details.get("generated_tokens")) is None:
            self._tokens = estimate_tokens(text)  # no count to read: the text's estimate
        out.append(self._finish(details, ended_on_special=False))
        return out

    def _finish(self, details: Any, *, ended_on_special: bool) -> Finish:
        if not details:
            # No details (an upstream that ignored details: true): an end token means a natural stop.
            reason: FinishReason = "stop" if ended_on_special else "unknown"
            return Finish(reason, Usage(estimate_tokens(self.inputs), self._tokens, estimated=True))
        finish = details.get("finish_reason")
        reason = _FINISH.get(finish, "other") if isinstance(finish, str) else "other"
        generated = token_count(details.get("generated_tokens"))
        prompt = token_count(details.get("input_length", self.prompt_tokens))
        completion = self._tokens if generated is None else generated
        if prompt is not None:
            return Finish(reason, Usage(prompt, completion, estimated=generated is None))
        return Finish(reason, Usage(estimate_tokens(self.inputs), completion, estimated=True))

    def _stream_error(self, payload: Any) -> UpstreamError:
        kind = str(payload.get("error_type") or "")
        message = str(payload["error"])
        if kind.startswith("incomplete_generation"):
            return self._upstream.protocol_error(f"the reply was truncated upstream: {message}", transient=True)
        return self._upstream.error_for(ERROR_TYPES.get(kind, 500), ErrorDetail(message), model=self._model)


class TGI(HttpProvider):
    name = "tgi"
    #: No tools and no images on /generate_stream; structured output through ``grammar``.
    capabilities: ClassVar[frozenset[Capability]] = frozenset({"json", "reasoning"})
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
            "frequency_penalty",
        }
    )
    #: TGI's launcher default (launcher/src/main.rs ``--max-stop-sequences``, ``default_value = "4"``); more are a 422,
    #: "`stop` supports up to 4 stop sequences. Given: 5" (router/src/validation.rs ``ValidationError::StopSequence``).
    max_stop_sequences = 4

    def unenforced(self, model: CatalogueModel, request: ChatRequest) -> list[str]:
        return request.bare_form_losses()  # the grammar is the bare schema

    def stream(self, model: CatalogueModel, request: ChatRequest) -> AsyncIterator[Sequence[StreamEvent]]:
        parser, body, auth = self._call(model, request, stream=True)
        # TGI serves one model: the route names none (§1.1); ``inputs`` carries the rendered prompt.
        return self.upstream.stream(
            f"{self.connection.base_url}/generate_stream",
            body,
            parser,
            headers={**auth, "Accept": "text/event-stream"},
            model=model.upstream_model,
        )

    def complete(self, model: CatalogueModel, request: ChatRequest) -> AsyncIterator[Sequence[StreamEvent]]:
        parser, body, auth = self._call(model, request, stream=False)
        return self.upstream.fetch(
            f"{self.connection.base_url}/generate",
            body,
            parser.whole,
            headers={**auth, "Accept": "application/json"},
            model=model.upstream_model,
            on_headers=parser.headers,
        )

    def _call(
        self, model: CatalogueModel, request: ChatRequest, *, stream: bool
    ) -> tuple[TGIStream, Callable[[], dict[str, Any]], dict[str, str]]:
        """What both calls share: the reply's parser, the body (built when sent; the parser keeps its prompt)
        and the authorization header."""
        template = get_template(model.template or "")
        splitter = ReasoningSplitter(starts_in_reasoning=True) if template.starts_in_reasoning else None
        parser = TGIStream(self.upstream, model.upstream_model, splitter)

        def body() -> dict[str, Any]:
            built = build_body(model, request, stream=stream)
            parser.inputs = built["inputs"]
            return built

        return parser, body, {"Authorization": f"Bearer {self.connection.api_key('HF_TOKEN')}"}

    async def probe(self, models: list[CatalogueModel]) -> ProbeResult | None:
        headers = self.connection.bearer("HF_TOKEN")

        def served(info: Any) -> list[ListedModel]:
            if not isinstance(info, dict) or not isinstance(info.get("model_id"), str):
                raise TypeError("not TGI's /info")
            window = context_window(info.get("max_total_tokens"))
            return [(model.upstream_model, window) for model in models]

        return await self.upstream.probe_listing(f"{self.connection.base_url}/info", served, headers=headers)
