"""The SSE decoder/encoder and the NDJSON splitter: spec cases, and every possible chunk boundary."""

from __future__ import annotations

import pytest

from modelgate.sse import NDJSONDecoder, ServerSentEvent, SSEDecoder, format_sse


def decode(*chunks: bytes) -> list[ServerSentEvent]:
    decoder = SSEDecoder()
    events: list[ServerSentEvent] = []
    for chunk in chunks:
        events += decoder.feed(chunk)
    return events + decoder.flush()


def every_split(stream: bytes) -> list[list[bytes]]:
    """The stream cut once at every offset, and byte by byte."""
    cuts = [[stream[:i], stream[i:]] for i in range(len(stream) + 1)]
    return [*cuts, [stream[i : i + 1] for i in range(len(stream))]]


def test_data_with_and_without_the_space_are_the_same_event() -> None:
    assert decode(b'data:{"a":1}\n\ndata: {"a":1}\n\n') == [ServerSentEvent('{"a":1}'), ServerSentEvent('{"a":1}')]


def test_only_one_space_is_stripped_and_the_prefix_is_not_a_character_set() -> None:
    # lstrip("data:") would eat the leading "a", "t" and ":" of these values.
    assert decode(b"data:  two spaces\n\ndata:atad:\n\n") == [
        ServerSentEvent(" two spaces"),
        ServerSentEvent("atad:"),
    ]


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_all_three_line_endings(eol: bytes) -> None:
    stream = b"data: one" + eol + eol + b"data: two" + eol + b"data: lines" + eol + eol
    assert decode(stream) == [ServerSentEvent("one"), ServerSentEvent("two\nlines")]


def test_comments_are_ignored_and_never_dispatch() -> None:
    stream = b": OPENROUTER PROCESSING\n\n:\n\ndata: [DONE]\n\n"
    assert decode(stream) == [ServerSentEvent("[DONE]")]


def test_multi_line_data_joins_with_newline_and_empty_data_lines_count() -> None:
    assert decode(b"data: a\ndata\ndata:\ndata: b\n\n") == [ServerSentEvent("a\n\n\nb")]
    assert decode(b"data\n\n") == [ServerSentEvent("")]


def test_event_id_and_retry_fields() -> None:
    decoder = SSEDecoder()
    events = decoder.feed(b"event: ping\nid: 7\nretry: 1500\ndata: x\n\ndata: y\n\nid: bad\0id\nevent: e\n\n")
    assert events == [ServerSentEvent("x", "ping", "7"), ServerSentEvent("y", "message", "7")]
    assert decoder.retry == 1500
    # The event type resets after a blank line even when nothing was dispatched.
    assert decoder.feed(b"data: z\n\n") == [ServerSentEvent("z", "message", "7")]


def test_unknown_fields_are_ignored() -> None:
    assert decode(b"foo: bar\ndata: x\nbaz\n\n") == [ServerSentEvent("x")]


def test_an_error_line_is_an_error_event() -> None:
    """llama.cpp's server (2025 builds) writes a failure as ``error: {…}``: not a spec field, but dropped, lost."""
    assert decode(b'error: {"code":400}\n\ndata: [DONE]\n\n') == [
        ServerSentEvent('{"code":400}', "error"),
        ServerSentEvent("[DONE]"),
    ]


def test_an_unterminated_event_is_discarded_at_the_end() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: complete\n\ndata: partial\n") == [ServerSentEvent("complete")]
    assert decoder.pending
    assert decoder.flush() == []
    assert not decoder.pending


STREAM = (
    b": keep-alive\r\n\r\n"
    b'data:{"token":"h\xc3\xa9"}\r\n\r\n'
    b"data: caf\xc3\xa9 \xf0\x9f\x99\x82\n"
    b"data: \xe4\xb8\xad\xe6\x96\x87\n\n"
    b"event: end\rdata: [DONE]\r\r"
)
EXPECTED = [
    ServerSentEvent('{"token":"hé"}'),
    ServerSentEvent("café 🙂\n中文"),
    ServerSentEvent("[DONE]", "end"),
]


@pytest.mark.parametrize("chunks", every_split(STREAM), ids=lambda c: "+".join(str(len(p)) for p in c)[:40])
def test_any_chunk_boundary_including_inside_crlf_and_utf8(chunks: list[bytes]) -> None:
    assert decode(*chunks) == EXPECTED


def test_a_cr_at_a_chunk_end_then_a_new_line_is_two_line_ends() -> None:
    # "\r" then "data" (no LF): the CR ended the line; nothing is swallowed.
    assert decode(b"data: a\r", b"\r", b"data: b\r", b"\n\r\n") == [ServerSentEvent("a"), ServerSentEvent("b")]


def test_a_cr_inside_a_chunk_does_not_swallow_the_next_chunks_lf() -> None:
    # Found by the parser fuzzer (ten times its CI cases): a CR line end followed by a partial line in the same chunk
    # was taken for the first half of a CRLF, so the next chunk's LF was dropped and with it the event's end.
    stream = b"data: x\revent: e\n\n"
    for chunks in every_split(stream):
        assert decode(*chunks) == [ServerSentEvent("x", "e")], chunks


def test_invalid_utf8_is_replaced_not_raised() -> None:
    assert decode(b"data: \xff\n\n") == [ServerSentEvent("\ufffd")]


def test_format_sse() -> None:
    assert format_sse('{"a":1}') == b'data: {"a":1}\n\n'
    assert format_sse(b"[DONE]") == b"data: [DONE]\n\n"
    assert format_sse("two\nlines") == b"data: two\ndata: lines\n\n"
    assert decode(format_sse("x\r\ny\n")) == [ServerSentEvent("x\ny\n")]


NDJSON = (
    b'{"message":{"content":"\\u003cthink\\u003e"},"done":false}\n'
    b'{"message":{"content":"caf\xc3\xa9 \xf0\x9f\x99\x82"},"done":false}\r\n'
    b"\n"
    b'{"done":true}\n'
)


@pytest.mark.parametrize("chunks", every_split(NDJSON), ids=lambda c: "+".join(str(len(p)) for p in c)[:40])
def test_ndjson_any_chunk_boundary(chunks: list[bytes]) -> None:
    decoder = NDJSONDecoder()
    lines: list[bytes] = []
    for chunk in chunks:
        lines += decoder.feed(chunk)
    lines += decoder.flush()
    assert lines == [
        b'{"message":{"content":"\\u003cthink\\u003e"},"done":false}',
        b'{"message":{"content":"caf\xc3\xa9 \xf0\x9f\x99\x82"},"done":false}',
        b'{"done":true}',
    ]


def test_ndjson_last_line_without_newline_is_flushed() -> None:
    decoder = NDJSONDecoder()
    assert decoder.feed(b'{"a":1}\n{"b"') == [b'{"a":1}']
    assert decoder.pending
    assert decoder.feed(b":2}") == []
    assert decoder.flush() == [b'{"b":2}']
    assert decoder.flush() == []


def test_an_empty_chunk_between_cr_and_lf_is_not_a_blank_line() -> None:
    decoder = SSEDecoder()
    events = decoder.feed(b"data: a\r") + decoder.feed(b"") + decoder.feed(b"\n") + decoder.feed(b"data: b\n\n")
    assert [e.data for e in events] == ["a\nb"]


@pytest.mark.parametrize("split", [0, 1, 2, 3, 5])
def test_a_leading_byte_order_mark_is_ignored_wherever_the_chunks_split(split: int) -> None:
    """WHATWG: one leading BOM is ignored. Read as part of a field name, it dropped the first event silently."""
    stream = b'\xef\xbb\xbfdata: {"a":1}\n\ndata: {"b":2}\n\n'
    decoder = SSEDecoder()
    events = decoder.feed(stream[:split]) + decoder.feed(stream[split:])
    assert [e.data for e in events] == ['{"a":1}', '{"b":2}']


def test_a_byte_order_mark_later_in_the_stream_is_data() -> None:
    events = SSEDecoder().feed(b"data: a\n\n\xef\xbb\xbfdata: b\n\n")
    assert [e.data for e in events] == ["a"]  # not a field the spec knows: ignored, as any unknown field
