"""One Server-Sent Events decoder/encoder and one NDJSON line splitter, both incremental.

The decoder follows the WHATWG "event stream interpretation" algorithm
(https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation), as
openai-python's ``SSEDecoder`` does: lines end in CRLF, LF or CR; a blank line dispatches; a line
starting with ``:`` is a comment (TGI's ``:`` keep-alive, OpenRouter's ``: OPENROUTER PROCESSING``);
``name:value`` loses exactly one optional space after the colon (TGI writes ``data:{…}``, the others
``data: {…}``); several ``data`` lines join with ``\\n``. Never ``payload.lstrip("data:")``: that strips
a set of characters, not a prefix. One liberty: an ``error:`` line, which the spec would ignore, is read as
``event: error`` with that data (llama.cpp's server wrote its failures so).

Both decoders take raw network chunks. They split on ASCII line terminators *before* decoding
UTF-8, so a chunk boundary anywhere — inside a line, between CR and LF, or inside a multi-byte
character — cannot corrupt text: only complete lines are ever decoded. An unterminated line waits in a
``bytearray`` and only each new chunk is searched for a terminator, so a line arriving in many chunks
costs linear time, not quadratic (the caller bounds how long a line may grow: ``providers._http``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["NDJSONDecoder", "SSEDecoder", "ServerSentEvent", "format_sse"]

_LINE_BREAK = re.compile(rb"\r\n|\r|\n")


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs a setattr call per field, per event
class ServerSentEvent:
    data: str
    event: str = "message"
    id: str | None = None


class SSEDecoder:
    """Bytes in, complete events out. One instance per stream."""

    __slots__ = ("_begun", "_data", "_event", "_last_id", "_partial", "_pending_cr", "retry")

    def __init__(self) -> None:
        self._begun = False  # a first line was read (the stream's leading BOM, if any, is behind us)
        self._partial = bytearray()  # the bytes of a line whose terminator has not arrived yet
        self._pending_cr = False  # the last chunk ended in CR: an LF starting the next one belongs to it
        self._data: list[str] = []
        self._event = ""
        self._last_id: str | None = None
        #: The last valid ``retry:`` value in milliseconds (kept for completeness; no provider sends it).
        self.retry: int | None = None

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        if not chunk:
            return []  # nothing new: above all, not the end of a CR waiting for its LF
        if self._pending_cr:
            self._pending_cr = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        complete = _complete_lines(self._partial, chunk)
        if complete is None:
            return []
        if not self._begun:
            # "One leading U+FEFF BYTE ORDER MARK character must be ignored": read as part of the first field's
            # name, it made the first event (the reply's first words) vanish without a trace.
            self._begun = True
            complete = complete.removeprefix(b"\xef\xbb\xbf")
        if b"\r" in complete:
            lines = _LINE_BREAK.split(complete)
            # A CR that ends the chunk may be the first half of a CRLF split across chunks; one followed by
            # more of the chunk (now ``_partial``) was a line ending of its own.
            self._pending_cr = complete.endswith(b"\r") and not self._partial
        else:
            lines = complete.split(b"\n")
        lines.pop()  # "": ``complete`` ends with a terminator
        events: list[ServerSentEvent] = []
        for line in lines:
            if line[:5] == b"data:":  # the hot path, inline: nearly every line of every provider
                value = line[6:] if line[5:6] == b" " else line[5:]
                self._data.append(value.decode("utf-8", "replace"))
            elif line:
                self._field(line)
            elif self._data:
                events.append(ServerSentEvent("\n".join(self._data), self._event or "message", self._last_id))
                self._data = []
                self._event = ""
            else:
                self._event = ""  # a blank line without data dispatches nothing
        return events

    def flush(self) -> list[ServerSentEvent]:
        """End of stream. Per the spec an event not closed by a blank line is discarded, never guessed."""
        self._partial.clear()
        self._pending_cr = False
        self._data = []
        self._event = ""
        return []

    @property
    def pending(self) -> bool:
        """True when the stream so far ends inside an event (what ``flush`` would discard)."""
        return bool(self._partial or self._data)

    def _field(self, line: bytes) -> None:
        """Any line but ``data:…`` (which ``feed`` reads itself)."""
        if line[:1] == b":":
            return  # comment
        name, colon, value = line.partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        if name == b"data":  # "data" with no colon: an empty data line
            self._data.append(value.decode("utf-8", "replace"))
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
        elif name == b"id":
            if b"\0" not in value:
                self._last_id = value.decode("utf-8", "replace")
        elif name == b"retry" and value.isdigit():
            self.retry = int(value)
        elif name == b"error":
            # Not a field of the spec, but how llama.cpp's server (2025 builds: ``server_sent_event(sink, "error",
            # …)``) writes a failure: read as ``event: error`` with its data, or the failure vanished unread.
            self._event = "error"
            self._data.append(value.decode("utf-8", "replace"))
        # any other field name is ignored, as the spec says


class NDJSONDecoder:
    """Bytes in, complete lines out (without their terminator; blank lines skipped). One per stream."""

    __slots__ = ("_partial",)

    def __init__(self) -> None:
        self._partial = bytearray()

    def feed(self, chunk: bytes) -> list[bytes]:
        complete = _complete_lines(self._partial, chunk, b"\n")
        if complete is None:
            return []
        lines = complete.split(b"\n")
        lines.pop()  # "": ``complete`` ends with a newline
        return [line.rstrip(b"\r") for line in lines if line and line != b"\r"]

    def flush(self) -> list[bytes]:
        """End of stream: a last line without its newline is still a complete JSON value."""
        rest = bytes(self._partial).strip()
        self._partial.clear()
        return [rest] if rest else []

    @property
    def pending(self) -> bool:
        return bool(self._partial.strip())


def _complete_lines(partial: bytearray, chunk: bytes, terminators: bytes = b"\n\r") -> bytes | None:
    """The complete lines that ``chunk`` finishes (``partial``'s bytes first), ending with the last
    terminator; what follows it becomes the new ``partial`` (updated in place). None when ``chunk``
    holds no terminator: it was only appended. ``partial`` holds no terminator, so only ``chunk`` is
    searched, and ``partial`` is copied once, when its line completes."""
    last = chunk.rfind(b"\n")
    if terminators != b"\n":  # (two searches beat a generator over the terminators: this runs per network read)
        last = max(last, chunk.rfind(b"\r"))
    if last < 0:
        partial += chunk
        return None
    end = last + 1
    complete = chunk if end == len(chunk) else chunk[:end]
    if partial:
        complete = bytes(partial) + complete
        partial.clear()
    if end < len(chunk):
        partial += chunk[end:]
    return complete


def format_sse(data: str | bytes) -> bytes:
    """One unnamed event: ``data: <data>\\n\\n`` (one ``data:`` line per line of ``data``)."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if b"\n" in raw or b"\r" in raw:
        return b"".join(b"data: " + line + b"\n" for line in _LINE_BREAK.split(raw)) + b"\n"
    return b"data: " + raw + b"\n\n"
