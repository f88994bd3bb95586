"""Hypothesis against the parsers that take outside bytes: the SSE and NDJSON decoders, Ollama's stream
parser, the AI SDK chat body and the catalogue file.

The properties: any split of the bytes gives the same result as the whole; nothing but the documented
error ever escapes; a bad input gives one readable line, not a traceback. Seeded and bounded
(``tests/fuzzing.py``); the figures of a run are in the README ("Fuzzing").
"""

from __future__ import annotations

import copy
import json
import re
import tomllib
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from pydantic import ValidationError

from modelgate.catalogue import default_catalogue_path, load_catalogue, parse_catalogue
from modelgate.chat import ChatRequest, Finish, Message, ReasoningDelta, TextDelta
from modelgate.errors import BadRequest, CatalogueError, UpstreamError
from modelgate.providers._http import Connection, Upstream
from modelgate.providers.chat_completions import ChatCompletionsStream
from modelgate.providers.chat_completions import read_error as read_chat_error
from modelgate.providers.ollama import OllamaStream, read_error
from modelgate.routes.chat import parse_chat_body
from modelgate.routes.openai_input import to_messages
from modelgate.routes.openai_request import ChatCompletionRequest
from modelgate.sse import NDJSONDecoder, ServerSentEvent, SSEDecoder, format_sse
from tests.fuzzing import fuzz

# --- splitting bytes ----------------------------------------------------------------------------------


@st.composite
def splits(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """``data`` cut at any points (empty pieces included: a read may return nothing new)."""
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=12)))
    pieces, start = [], 0
    for cut in cuts:
        pieces.append(data[start:cut])
        start = cut
    pieces.append(data[start:])
    return pieces


def decode_sse(pieces: list[bytes]) -> list[ServerSentEvent]:
    decoder = SSEDecoder()
    events = [event for piece in pieces for event in decoder.feed(piece)]
    return events + decoder.flush()


# --- SSE ------------------------------------------------------------------------------------------------

_EOL = st.sampled_from([b"\n", b"\r\n", b"\r"])
#: Field values: any text without a line break (a break would end the field).
_VALUE = st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=20)


@st.composite
def sse_lines(draw: st.DrawFn) -> bytes:
    """A stream as providers write it: fields, comments and blank lines, with mixed line endings."""
    line = st.one_of(
        _VALUE.map(lambda v: b"data: " + v.encode()),
        _VALUE.map(lambda v: b"data:" + v.encode()),
        _VALUE.map(lambda v: b"event: " + v.encode()),
        _VALUE.map(lambda v: b"id: " + v.encode()),
        _VALUE.map(lambda v: b":" + v.encode()),
        st.just(b"retry: 1500"),
        st.just(b"data"),
        st.just(b""),
    )
    lines = draw(st.lists(st.tuples(line, _EOL), max_size=25))
    return b"".join(text + eol for text, eol in lines)


@fuzz(250)
@given(data=st.data(), stream=sse_lines())
def test_sse_any_split_gives_the_same_events(data: st.DataObject, stream: bytes) -> None:
    whole = decode_sse([stream])
    assert decode_sse(data.draw(splits(stream))) == whole
    # One byte at a time: a CRLF, a field name, a multi-byte character cut everywhere.
    assert decode_sse([stream[i : i + 1] for i in range(len(stream))]) == whole


@fuzz(300)
@given(data=st.data(), payloads=st.lists(st.text(st.characters(blacklist_categories=("Cs",))), max_size=8))
def test_sse_format_then_decode_round_trips(data: st.DataObject, payloads: list[str]) -> None:
    stream = b"".join(format_sse(p) for p in payloads)
    expected = [ServerSentEvent(re.sub(r"\r\n|\r|\n", "\n", p)) for p in payloads]
    assert decode_sse(data.draw(splits(stream))) == expected


@fuzz(300)
@given(data=st.data(), stream=st.binary(max_size=400))
def test_sse_any_bytes_never_raise_and_give_text(data: st.DataObject, stream: bytes) -> None:
    events = decode_sse(data.draw(splits(stream)))
    assert events == decode_sse([stream])
    assert all(isinstance(e.data, str) and isinstance(e.event, str) for e in events)


# --- NDJSON ---------------------------------------------------------------------------------------------


def decode_ndjson(pieces: list[bytes]) -> list[bytes]:
    decoder = NDJSONDecoder()
    return [line for piece in pieces for line in decoder.feed(piece)] + decoder.flush()


@fuzz(300)
@given(data=st.data(), stream=st.binary(max_size=400))
def test_ndjson_any_split_gives_the_same_lines(data: st.DataObject, stream: bytes) -> None:
    lines = decode_ndjson(data.draw(splits(stream)))
    assert lines == decode_ndjson([stream])
    assert all(line and b"\n" not in line for line in lines)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@st.composite
def ollama_lines(draw: st.DrawFn) -> list[Any]:
    """Ollama's NDJSON objects, well-formed or with any field replaced by any JSON value."""
    content = st.text(max_size=10)
    good = st.one_of(
        st.builds(lambda c: {"message": {"role": "assistant", "content": c}, "done": False}, content),
        st.builds(lambda c: {"message": {"role": "assistant", "content": "", "thinking": c}, "done": False}, content),
        st.builds(
            lambda r, p, e: {"done": True, "done_reason": r, "prompt_eval_count": p, "eval_count": e},
            st.sampled_from(["stop", "length", "load"]),
            st.integers(0, 10**6),
            st.integers(0, 10**6),
        ),
        st.builds(lambda m: {"error": m}, st.text(max_size=20)),
    )
    return draw(st.lists(st.one_of(good, good.flatmap(_one_field_replaced), _JSON), max_size=8))


def _one_field_replaced(item: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """``item`` with one of its fields (or its message's) set to any JSON value."""
    fields = [(k,) for k in item] + [("message", k) for k in item.get("message", {})]

    def replaced(where: tuple[str, ...], value: Any) -> dict[str, Any]:
        changed = copy.deepcopy(item)
        target = changed if len(where) == 1 else changed["message"]
        target[where[-1]] = value
        return changed

    return st.builds(replaced, st.sampled_from(fields), _JSON)


def run_ollama(pieces: list[bytes]) -> tuple[list[Any], UpstreamError | None]:
    """Feed ``pieces`` as ``Upstream.stream`` does: stop at the final line or a failure, else ``end()``."""
    # Parsing never touches the HTTP session: the upstream is only asked to build errors.
    upstream = Upstream("ollama", Connection("http://127.0.0.1:9"), cast(Any, None), read_error)
    parser = OllamaStream(upstream, ChatRequest(messages=(Message(role="user", content="Hi"),)))
    events: list[Any] = []
    for piece in pieces:
        events += parser.feed(piece)
        if parser.done or parser.failure is not None:
            return events, parser.failure
    return events + parser.end(), parser.failure


@fuzz(150)
@given(data=st.data(), items=ollama_lines())
def test_ollama_stream_any_split_same_events_and_only_upstream_errors(data: st.DataObject, items: list[Any]) -> None:
    stream = b"".join(orjson.dumps(item) + data.draw(st.sampled_from([b"\n", b"\r\n"])) for item in items)
    whole = run_ollama([stream])
    events, failure = run_ollama(data.draw(splits(stream)))
    assert (events, failure and failure.message) == (whole[0], whole[1] and whole[1].message)
    assert failure is None or isinstance(failure, UpstreamError)
    assert (failure is None) == any(isinstance(e, Finish) for e in events)
    assert all(isinstance(e, TextDelta | ReasoningDelta | Finish) for e in events)
    assert all(isinstance(e.text, str) for e in events if isinstance(e, TextDelta | ReasoningDelta))
    assert all(isinstance(e.usage.prompt_tokens, int) for e in events if isinstance(e, Finish) and e.usage)


@fuzz(300)
@given(data=st.data(), stream=st.binary(max_size=300))
def test_ollama_stream_any_bytes_fail_as_an_upstream_error(data: st.DataObject, stream: bytes) -> None:
    _, failure = run_ollama(data.draw(splits(stream)))
    assert failure is None or isinstance(failure, UpstreamError)
    assert "Traceback" not in (failure.message if failure else "")


# --- Chat Completions ------------------------------------------------------------------------------------

#: What a hostile server may put where OpenRouter's ``reasoning_details`` and Gemini's ``extra_content`` go, and where
#: an error goes: any JSON, and the shapes past the bounds (``wire.opaque_object``) hand-made, which Hypothesis's small
#: values would not reach.
_PAST_BOUNDS = st.sampled_from(
    [
        [{"type": "reasoning.text", "text": "a"}] * 10_000,
        [{"a": {"a": {"a": {"a": {"a": {"a": {"a": {"a": {"a": {"a": 1}}}}}}}}}}],
        [1, "two", None, [3]],
        orjson.loads(b"[" * 300 + b"]" * 300),  # read (orjson: 1024 levels), but not written (255)
        {"type": "reasoning.text"},
        [],
    ]
)
_ANY = _JSON | _PAST_BOUNDS


@st.composite
def chat_chunks(draw: st.DrawFn) -> list[Any]:
    """Chat Completions chunks, well-formed (text, ``reasoning_details``, a tool call with ``extra_content``, an
    error, a finish) or with any field of their delta, call or error replaced by any JSON value."""
    text = st.text(max_size=10)

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    def call(extra: Any) -> dict[str, Any]:
        return {"index": 0, "id": "c1", "function": {"name": "f", "arguments": "{}"}, "extra_content": extra}

    good = st.one_of(
        st.builds(lambda c: chunk({"content": c}), text),
        st.builds(lambda c: chunk({"reasoning_details": [{"type": "reasoning.text", "text": c}]}), text),
        st.builds(lambda e: chunk({"tool_calls": [call(e)]}), st.just({"google": {"thought_signature": "s"}})),
        st.builds(lambda m: {"error": {"message": m, "code": 429, "metadata": {"headers": {}}}}, text),
        st.just(chunk({}, "stop")),
    )
    replaced = st.one_of(
        st.builds(lambda v: chunk({"reasoning_details": v}), _ANY),
        st.builds(lambda v: chunk({"tool_calls": [call(v)]}), _ANY),
        st.builds(lambda v: {"error": v}, _ANY),
        st.builds(lambda v: {"error": {"message": "m", "code": 429, "metadata": v}}, _ANY),
        st.builds(lambda v: {"error": {"message": "m", "metadata": {"headers": v}}}, _ANY),
        st.builds(lambda v: {"error": {"message": "m", "metadata": {"raw": v}}}, _ANY),
        st.builds(lambda v: {"error": {"message": "m", "metadata": {"headers": {"X-RateLimit-Reset": v}}}}, _ANY),
    )
    return draw(st.lists(st.one_of(good, replaced, _JSON), max_size=6))


def run_chat(pieces: list[bytes]) -> tuple[list[Any], UpstreamError | None]:
    """Feed ``pieces`` as ``Upstream.stream`` does (``run_ollama``); an error ``end()`` raises is the failure."""
    upstream = Upstream("local", Connection("http://127.0.0.1:9"), cast(Any, None), read_chat_error)
    parser = ChatCompletionsStream(upstream, ChatRequest(messages=(Message(role="user", content="Hi"),)))
    events: list[Any] = []
    for piece in pieces:
        events += parser.feed(piece)
        if parser.done or parser.failure is not None:
            return events, parser.failure
    try:
        return events + parser.end(), parser.failure
    except UpstreamError as exc:
        return events, exc


@fuzz(200)
@given(data=st.data(), items=chat_chunks())
def test_chat_completions_stream_of_any_chunks_fails_only_as_an_upstream_error(
    data: st.DataObject, items: list[Any]
) -> None:
    stream = b"".join(b"data: " + json.dumps(item).encode() + b"\n\n" for item in items)  # orjson stops at 255
    events, failure = run_chat(data.draw(splits(stream)))
    assert failure is None or isinstance(failure, UpstreamError)
    assert "Traceback" not in (failure.message if failure else "")
    assert all(isinstance(e.text, str) for e in events if isinstance(e, TextDelta | ReasoningDelta))


@fuzz(200)
@given(
    item=st.one_of(
        st.builds(lambda v: {"error": v}, _ANY),
        st.builds(lambda v: {"error": {"message": "Provider returned error", "metadata": {"raw": v}}}, _ANY),
        chat_chunks().map(lambda items: items[0] if items else {"error": []}),
    )
)
def test_chat_completions_200_of_one_json_body_fails_only_as_an_upstream_error(item: Any) -> None:
    """A 200 to a streamed call whose body is one JSON document, no event (``_not_a_stream``): an ``error`` in it of
    any shape (a list, a number: a hostile server's) is an upstream error, never another exception (a 500)."""
    _, failure = run_chat([json.dumps(item).encode()])
    assert failure is None or isinstance(failure, UpstreamError)


@st.composite
def chat_completion_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """A /v1/chat/completions body whose fields this route hands back or on unread (an assistant message's
    ``reasoning_details``, a tool call's ``extra_content``) or bounds per upstream (``stop``) are any JSON value,
    values past the bounds included."""
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    if draw(st.booleans()):
        call["extra_content"] = draw(_ANY)
    assistant: dict[str, Any] = {"role": draw(st.sampled_from(["assistant", "user"])), "content": "x"}
    if draw(st.booleans()):
        assistant["tool_calls"] = [call]
    if draw(st.booleans()):
        assistant["reasoning_details"] = draw(_ANY)
    body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}, assistant]}
    if draw(st.booleans()):
        body["stop"] = draw(_ANY | st.lists(st.text(max_size=3), min_size=60, max_size=70))
    return body


@fuzz(200)
@given(body=chat_completion_bodies())
def test_chat_completion_body_of_any_carried_values_is_read_or_a_400_naming_the_field(body: dict[str, Any]) -> None:
    """Parsed and converted as the route does: the result, or pydantic's refusal (the route's 400 naming the
    field's location), or a ``BadRequest`` naming the message; nothing else, and no value quoted past 200 chars."""
    try:
        request = ChatCompletionRequest.model_validate(body)
        to_messages(request.messages, max_messages=50, max_image_bytes=1 << 20, max_images_bytes=1 << 22)
    except ValidationError as exc:
        assert all(error["loc"] for error in exc.errors())
    except BadRequest as exc:
        assert exc.message.startswith("messages[") and len(exc.message) < 300


# --- the AI SDK chat body -------------------------------------------------------------------------------


def parsed_or_refused(raw: bytes) -> Any:
    try:
        messages = parse_chat_body(raw, max_messages=50).messages
    except BadRequest as exc:
        assert exc.status == 400
        assert exc.message and "\n" not in exc.message and "Traceback" not in exc.message
        return exc
    assert messages
    for message in messages:
        assert message.role in ("system", "user", "assistant") and isinstance(message.content, str)
        orjson.dumps(message.content)  # what an adapter will send upstream must be serializable
    return messages


_ROLE = st.sampled_from(["system", "user", "assistant"]) | st.text(max_size=6)
_PART = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=10)}),
    st.fixed_dictionaries(
        {"type": st.sampled_from(["step-start", "reasoning", "file", "tool-call", "tool-search", "data-x"])}
    ),
    st.fixed_dictionaries({"type": _JSON}),  # a list or an object as the type was a TypeError (unhashable)
    _JSON,
)
_MESSAGE = st.one_of(
    st.fixed_dictionaries({"role": _ROLE, "content": st.text(max_size=10)}),
    st.fixed_dictionaries({"role": _ROLE, "parts": st.lists(_PART, max_size=4)}),
    st.fixed_dictionaries({"role": _ROLE}, optional={"content": _JSON, "parts": _JSON, "id": _JSON}),
    _JSON,
)
_BODY = st.one_of(
    st.fixed_dictionaries({"messages": st.lists(_MESSAGE, max_size=4)}, optional={"id": _JSON, "trigger": _JSON}),
    _JSON,
)


@fuzz(300)
@given(body=_BODY)
def test_chat_body_any_json_is_parsed_or_refused_with_a_400(body: Any) -> None:
    parsed_or_refused(orjson.dumps(body))


@fuzz(300)
@given(raw=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_chat_body_any_bytes_are_parsed_or_refused_with_a_400(raw: bytes) -> None:
    parsed_or_refused(raw)


def test_chat_body_a_lone_surrogate_is_a_400() -> None:
    """The JSON escape of a lone surrogate is valid JSON but no UTF-8 text: refused, not sent upstream."""
    refused = parsed_or_refused(b'{"messages":[{"role":"user","content":"\\ud800"}]}')
    assert isinstance(refused, BadRequest)
    assert "lone surrogate" in refused.message and "valid Unicode" in refused.message  # the words /v1 uses


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ({"role": "Q" * 20_000, "content": "hi"}, "messages[0].role"),
        ({"role": "user", "parts": [{"type": "Q" * 20_000}]}, "messages[0].parts[0]"),
        ({"role": "user", "parts": [{"type": "file", "mediaType": "Q" * 20_000, "url": "x"}]}, "messages[0].parts[0]"),
    ],
    ids=["role", "part-type", "media-type"],
)
def test_chat_body_a_long_value_is_named_not_repeated(message: dict[str, Any], field: str) -> None:
    """A role, a part's type or a file's media type the route does not take was quoted whole in the 400 (20 000
    characters here, as many as the body holds): shown clipped, the field named."""
    refused = parsed_or_refused(orjson.dumps({"messages": [message]}))
    assert isinstance(refused, BadRequest)
    assert refused.message.startswith(field) and len(refused.message) < 300, refused.message[:300]


# --- the catalogue file ---------------------------------------------------------------------------------

_BUILT_IN: dict[str, Any] = tomllib.loads(default_catalogue_path().read_text(encoding="utf-8"))
_TOML_VALUE = st.recursive(
    st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*prefix, index))
    return found


_PATHS = _paths(_BUILT_IN)


def loaded_or_refused(load: Any, source: str) -> None:
    try:
        load()
    except CatalogueError as exc:
        message = str(exc)
        assert "Traceback" not in message
        for line in message.splitlines():  # one line per problem, each naming the file
            assert line.startswith(source), message


@fuzz(400)
@given(path=st.sampled_from(_PATHS), value=_TOML_VALUE, delete=st.booleans())
def test_catalogue_any_value_anywhere_is_loaded_or_refused_in_lines_naming_the_file(
    path: tuple[Any, ...], value: Any, delete: bool
) -> None:
    raw = copy.deepcopy(_BUILT_IN)
    parent = raw
    for step in path[:-1]:
        parent = parent[step]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    loaded_or_refused(lambda: parse_catalogue(raw, source="catalogue.toml"), "catalogue.toml")


@fuzz(150)
@given(data=st.data())
def test_catalogue_any_edit_of_the_file_is_loaded_or_refused_in_lines_naming_the_file(data: st.DataObject) -> None:
    text = default_catalogue_path().read_text(encoding="utf-8")
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(text)))
        cut = data.draw(st.integers(0, 8))
        text = text[:at] + data.draw(st.text(max_size=6)) + text[at + cut :]
    assume(text)
    _load_text(text)


def _load_text(text: str) -> None:
    directory = Path(_TMP.name)
    path = directory / "catalogue.toml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    loaded_or_refused(lambda: load_catalogue(path), str(path))


@pytest.fixture(autouse=True, scope="module")
def _tmp(tmp_path_factory: pytest.TempPathFactory) -> None:
    _TMP.name = str(tmp_path_factory.mktemp("fuzz-catalogue"))


class _TMP:
    name = ""
