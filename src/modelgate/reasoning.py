"""Split a model's streamed text into reasoning (``<think>…</think>``) and answer, incrementally.

Reasoning models (DeepSeek-R1 and its distills, QwQ) write their chain of thought first, inside one
``<think>…</think>`` block, then the answer. Providers that do not separate it (TGI, Cloudflare, some
Ollama versions) stream the tags as plain text, split across tokens at any character (``<th`` + ``ink>``).

Rules, chosen to match how these models actually emit the block:

* One block, at the start. ``<think>`` opens it only before any other text (leading whitespace allowed);
  after the block, or once the answer has begun, tags are ordinary text, because an answer may well
  talk *about* ``<think>`` tags and must not be swallowed.
* ``starts_in_reasoning``: the prompt already opened the block (DeepSeek-R1-Distill's generation prompt
  ends in ``<think>\\n``), so the output begins inside it and only ``</think>`` appears; everything up to it
  is reasoning. A ``<think>`` the model writes anyway at the very start is swallowed, so both revisions of
  that template work.
* The blank lines between ``</think>`` and the answer are only the separator (R1 writes ``</think>\\n\\n``):
  they are dropped, so the answer does not start with empty lines; the first line's indentation stays.
  Everything else is kept as the model wrote it (the reasoning's own leading and trailing newlines too).
* A partial tag at the end of a feed is held back until the next feed (or ``flush``) decides it.
* Whitespace before the block, and after ``</think>``, is held back too (it is text or separator depending on
  what follows), but at most ``MAX_HELD`` characters of it: past that, the whitespace before the block goes out
  as the kind of text it is whatever follows, the blank lines after ``</think>`` are dropped as they would be,
  and a longer run without a line break begins the answer.
"""

from __future__ import annotations

import re
from enum import Enum

from modelgate.chat import ReasoningDelta, TextDelta

_OPEN = "<think>"
_CLOSE = "</think>"

Delta = TextDelta | ReasoningDelta

#: The most whitespace held back before the block or after ``</think>``. An upstream may stream whitespace without
#: end, and between deltas of another kind (a refusal, a tool call) the stream's byte limit (``max_event_bytes``,
#: counted only while no event comes) never sees it: held whole, it grew with the reply (and each feed rescanned it).
MAX_HELD = 4096

#: The blank lines at the start of the answer (whitespace-only lines, each ended by a line break).
_BLANK_LINES = re.compile(r"(?:[ \t]*\r?\n)+")


class _State(Enum):
    START = "start"  # nothing but whitespace seen yet: a <think> may still open the block
    REASONING = "reasoning"
    AFTER_CLOSE = "after_close"  # just after </think>: whitespace is held until the answer's first text
    ANSWER = "answer"  # the block is over (or never came): everything is text


class ReasoningSplitter:
    """Feed text as it streams; get back ``TextDelta``/``ReasoningDelta`` in order. Call ``flush`` at the end."""

    def __init__(self, *, starts_in_reasoning: bool = False) -> None:
        self._starts_in_reasoning = starts_in_reasoning
        self._state = _State.START
        self._pending = ""  # text held back: possibly the start of a tag

    @property
    def answering(self) -> bool:
        """The block is over (or never came): every further text is answer, as it comes."""
        return self._state is _State.ANSWER and not self._pending

    def feed(self, text: str) -> list[Delta]:
        if self._state is _State.ANSWER:  # the hot path once the answer streams: no buffering, no search
            return [TextDelta(text)] if text else []
        self._pending += text
        out: list[Delta] = []
        if self._state is _State.START:
            self._state = self._leave_start(out)
            if self._state is _State.START and len(self._pending) > MAX_HELD:
                self._release_lead(out)
        if self._state is _State.REASONING:
            self._scan_reasoning(out)
        if self._state is _State.AFTER_CLOSE:
            self._leave_after_close(out)
        elif self._state is _State.ANSWER and self._pending:
            out.append(TextDelta(self._pending))
            self._pending = ""
        return out

    def flush(self) -> list[Delta]:
        """Whatever is still held back, as the kind of text it was in."""
        pending, self._pending = self._pending, ""
        if not pending or self._state is _State.AFTER_CLOSE:  # (only whitespace after </think>: no answer)
            return []
        if self._state is _State.REASONING or (self._state is _State.START and self._starts_in_reasoning):
            return [ReasoningDelta(pending)]
        return [TextDelta(pending)]

    def _leave_start(self, out: list[Delta]) -> _State:
        """The state the pending text puts us in; a swallowed ``<think>`` and the whitespace before it go out."""
        body = self._pending.lstrip()
        if len(body) < len(_OPEN) and _OPEN.startswith(body):
            return _State.START  # only whitespace and maybe the beginning of "<think>": wait for more
        lead = self._pending[: len(self._pending) - len(body)]
        if body.startswith(_OPEN):
            self._pending = body[len(_OPEN) :]
            if lead:
                out.append(ReasoningDelta(lead) if self._starts_in_reasoning else TextDelta(lead))
            return _State.REASONING
        # No block opened here: the lead stays in _pending, as reasoning or as the answer's first text.
        return _State.REASONING if self._starts_in_reasoning else _State.ANSWER

    def _release_lead(self, out: list[Delta]) -> None:
        """Send the whitespace before a possible ``<think>`` now: it is the same kind of text whatever follows."""
        body = self._pending.lstrip()
        lead = self._pending[: len(self._pending) - len(body)]
        self._pending = body
        out.append(ReasoningDelta(lead) if self._starts_in_reasoning else TextDelta(lead))

    def _leave_after_close(self, out: list[Delta]) -> None:
        """Once the answer's first non-blank character is in, send it without the blank lines before it."""
        pending = self._pending
        if pending.isspace() or not pending:
            if len(pending) > MAX_HELD:  # drop the blank lines now; a longer run than that is the answer's text
                blank = _BLANK_LINES.match(pending)
                self._pending = pending = pending[blank.end() :] if blank else pending
                if len(pending) > MAX_HELD:
                    self._state = _State.ANSWER
                    self._pending = ""
                    out.append(TextDelta(pending))
            return  # all separator so far
        self._state = _State.ANSWER
        self._pending = ""
        blank = _BLANK_LINES.match(pending)
        out.append(TextDelta(pending[blank.end() :] if blank else pending))

    def _scan_reasoning(self, out: list[Delta]) -> None:
        pending = self._pending
        end = pending.find(_CLOSE)
        if end >= 0:
            if end:
                out.append(ReasoningDelta(pending[:end]))
            self._state = _State.AFTER_CLOSE
            self._pending = pending[end + len(_CLOSE) :]
            return
        keep = _partial_tag_length(pending, _CLOSE)
        if len(pending) > keep:
            out.append(ReasoningDelta(pending[: len(pending) - keep]))
        self._pending = pending[len(pending) - keep :]


def _partial_tag_length(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag`` (a tag cut by the stream)."""
    start = text.rfind("<", max(0, len(text) - len(tag) + 1))
    if start < 0:
        return 0
    suffix = text[start:]
    return len(suffix) if tag.startswith(suffix) else 0
