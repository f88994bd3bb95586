"""Every stream ends with a finish or an explicit error: a matrix, from outside (a real server, a hostile upstream).

For each wire protocol modelgate reads (Chat Completions SSE as the ``openai``, Hugging Face router and OpenRouter
kinds send it; TGI's ``/generate_stream``; Ollama's NDJSON; Workers AI's SSE, native and in the OpenAI format), the
upstream (``tests/fakes/hostile.py``) sends one valid, complete reply — a few tokens, some of them multi-byte, a
finish, usage where the protocol has it, its terminator — cut at a spread of byte offsets: every event boundary,
mid-event, mid-UTF-8 character, just before and inside the terminator, and after it; framed until the connection
closes (only the parser can tell a cut) and chunked (the HTTP layer can); or it goes silent instead of closing.

For each client route (``/api/ai/...`` with the UI message stream and the data stream, ``/v1/chat/completions`` and
``/v1/responses``, streamed and not) the client must get: for a complete reply, exactly one proper finish and the
whole text; for a reply cut before the upstream's own end, exactly one explicit error in the route's shape (or a
5xx error body when nothing had been streamed yet), never a finish; always a properly terminated HTTP body (the
last chunk: httpx refuses an unterminated one), within a few seconds; and the server keeps serving (``/health``).

A Chat Completions reply is complete once its ``finish_reason`` chunk has come: the usage chunk and ``[DONE]`` may
be missing (cut, or the upstream silent), as openai-python and the AI SDK read such a stream, and as servers that
send no ``[DONE]`` have existed (TGI until mid-2024, llama-box, ik_llama.cpp). The usage is then the gateway's
estimate, marked so, unless the chunk that reported it had come.

One gateway serves the whole module. Each case is named by a marker in the prompt, which the upstream's one
dispatching script finds in the request body, so cases may run concurrently (the silent ones do).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import threading
import tomllib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import orjson
import pytest

from modelgate.app import create_app
from modelgate.catalogue import parse_catalogue
from modelgate.settings import Settings
from tests.catalogue_files import model_toml
from tests.fakes.hostile import HostileUpstream, Received
from tests.servers import serve_in_thread

#: The text every complete reply carries: multi-byte characters so that a cut can fall inside one.
TOKENS = ("Hé", "llo ", "wörld 🌍")
TEXT = "".join(TOKENS)
PROMPT_TOKENS, COMPLETION_TOKENS = 7, len(TOKENS)
#: Upstream timeouts of every provider instance: small, so a silent upstream costs the test about a second (and
#: yet roomy for a busy two-core machine, where the upstream, the gateway and the client share one process).
FIRST_TOKEN_TIMEOUT = 1.0
IDLE_TIMEOUT = 0.5
#: How long a silent upstream stays silent (far beyond the timeouts above) before it closes.
SILENCE = 5.0
#: The pause between two events of a trickled reply.
TRICKLE = 0.005
#: The longest a client waits for a whole answer: beyond it, the gateway hung.
CLIENT_TIMEOUT = 10.0


# --- the complete replies, one per wire protocol --------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """One protocol's complete reply: the streamed body event by event, and the whole (non-streamed) body."""

    events: tuple[bytes, ...]
    content_type: str
    whole: bytes
    #: Headers of the whole reply beyond its content type.
    whole_headers: tuple[tuple[str, str], ...] = ()
    #: Bytes at the stream's end that may be missing from a complete reply (NDJSON's last newline: the record
    #: before it is whole, ``sse.NDJSONDecoder.flush``).
    optional_tail: int = 0
    #: The event after which a cut reply is complete (Chat Completions: the ``finish_reason`` chunk); None: the
    #: last one (less ``optional_tail``).
    finish_event: int | None = None

    @property
    def body(self) -> bytes:
        return b"".join(self.events)

    @property
    def complete_from(self) -> int:
        """The fewest bytes of ``body`` that make a complete reply."""
        if self.finish_event is None:
            return len(self.body) - self.optional_tail
        return len(b"".join(self.events[: self.finish_event + 1]))

    @property
    def usage_from(self) -> int:
        """The fewest bytes of ``body`` that carry the reported usage (before it, the finish has an estimate)."""
        reporting = [number for number, event in enumerate(self.events) if b'"usage"' in event]
        return len(b"".join(self.events[: reporting[-1] + 1])) if reporting else self.complete_from


def sse(payload: object) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def completion_chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [choice]}


OPENAI_USAGE = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS, "total_tokens": 10}
CHAT_COMPLETIONS_EVENTS = (
    sse(completion_chunk({"role": "assistant", "content": ""})),
    *(sse(completion_chunk({"content": token})) for token in TOKENS),
    sse(completion_chunk({}, "stop")),
    sse({"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [], "usage": OPENAI_USAGE}),
    b"data: [DONE]\n\n",
)
CHAT_COMPLETION = orjson.dumps(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": TEXT}, "finish_reason": "stop"}],
        "usage": OPENAI_USAGE,
    }
)
#: The finish chunk's index in a Chat Completions stream ending with a usage chunk and [DONE].
CC_FINISH = len(CHAT_COMPLETIONS_EVENTS) - 3
CHAT_COMPLETIONS = Reply(CHAT_COMPLETIONS_EVENTS, "text/event-stream", CHAT_COMPLETION, finish_event=CC_FINISH)
#: A model that thinks aloud in its content: a leading ``<think>`` block, held back and split off as reasoning.
THINKING = ("<think>", "Hm, ", "wörld?</think>")
CHAT_COMPLETIONS_THINKING = Reply(
    (
        sse(completion_chunk({"role": "assistant", "content": ""})),
        *(sse(completion_chunk({"content": token})) for token in (*THINKING, *TOKENS)),
        *CHAT_COMPLETIONS_EVENTS[-3:],
    ),
    "text/event-stream",
    CHAT_COMPLETION.replace(TEXT.encode(), "".join((*THINKING, TEXT)).encode()),
    finish_event=1 + len(THINKING) + len(TOKENS),
)
#: OpenRouter: its keep-alive comments, and the usage on the finish chunk.
OPENROUTER = Reply(
    (
        b": OPENROUTER PROCESSING\n\n",
        *(sse(completion_chunk({"role": "assistant", "content": token})) for token in TOKENS),
        sse({**completion_chunk({}, "stop"), "usage": OPENAI_USAGE}),
        b"data: [DONE]\n\n",
    ),
    "text/event-stream",
    CHAT_COMPLETION,
    finish_event=1 + len(TOKENS),
)


def tgi_event(index: int, text: str, *, last: bool = False) -> bytes:
    token = {"id": index, "text": text, "logprob": -0.1, "special": False}
    details = {"finish_reason": "eos_token", "generated_tokens": COMPLETION_TOKENS, "input_length": PROMPT_TOKENS}
    payload = {"index": index, "token": token, "generated_text": TEXT if last else None, "details": None}
    if last:
        payload["details"] = details
    return b"data:" + orjson.dumps(payload) + b"\n\n"  # TGI writes no space after the colon, and no [DONE]


TGI = Reply(
    tuple(tgi_event(i, token, last=i == len(TOKENS)) for i, token in enumerate(TOKENS, 1)),
    "text/event-stream",
    orjson.dumps({"generated_text": TEXT, "details": {"finish_reason": "eos_token", "generated_tokens": 3}}),
    whole_headers=(("x-prompt-tokens", str(PROMPT_TOKENS)),),
)


def ollama_line(payload: dict[str, Any]) -> bytes:
    return orjson.dumps({"model": "m", "created_at": "2026-01-01T00:00:00Z", **payload}) + b"\n"


OLLAMA_DONE = {"done": True, "done_reason": "stop", "prompt_eval_count": PROMPT_TOKENS, "eval_count": 3}
OLLAMA = Reply(
    (
        *(ollama_line({"message": {"role": "assistant", "content": token}, "done": False}) for token in TOKENS),
        ollama_line({"message": {"role": "assistant", "content": ""}, **OLLAMA_DONE}),
    ),
    "application/x-ndjson",
    ollama_line({"message": {"role": "assistant", "content": TEXT}, **OLLAMA_DONE}),
    optional_tail=1,
)
CLOUDFLARE_USAGE = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS, "total_tokens": 10}
CLOUDFLARE = Reply(
    (
        *(sse({"response": token, "p": "abcdef"}) for token in TOKENS),
        sse({"response": "", "usage": CLOUDFLARE_USAGE}),
        b"data: [DONE]\n\n",
    ),
    "text/event-stream",
    orjson.dumps({"result": {"response": TEXT, "usage": CLOUDFLARE_USAGE}, "success": True, "errors": []}),
)
#: Newer Workers AI models (Qwen3, gpt-oss): Chat Completions chunks inside Cloudflare's stream.
CLOUDFLARE_OPENAI = Reply(
    CHAT_COMPLETIONS_EVENTS,
    "text/event-stream",
    orjson.dumps({"result": orjson.loads(CHAT_COMPLETION), "success": True, "errors": []}),
    finish_event=CC_FINISH,
)


@dataclass(frozen=True)
class Kind:
    """A provider instance of the served catalogue and the reply its upstream sends."""

    instance: str
    reply: Reply
    provider_toml: str
    model_extra: str = ""

    @property
    def model(self) -> str:
        return f"cut/{self.name}"

    @property
    def name(self) -> str:
        return self.instance.replace("_", "-")


KINDS = (
    Kind("openai_compatible", CHAT_COMPLETIONS, 'kind = "openai"'),
    Kind("openai_thinking", CHAT_COMPLETIONS_THINKING, 'kind = "openai"'),
    Kind("huggingface", CHAT_COMPLETIONS, ""),
    Kind("openrouter", OPENROUTER, ""),
    Kind("tgi", TGI, 'kind = "huggingface"\napi = "tgi"', model_extra='template = "chatml"\n'),
    Kind("ollama", OLLAMA, ""),
    Kind("cloudflare", CLOUDFLARE, ""),
    Kind("cloudflare_openai", CLOUDFLARE_OPENAI, 'kind = "cloudflare"'),
)
CREDENTIALS = {
    "HF_TOKEN": "hf_test",
    "OPENROUTER_API_KEY": "sk-or-test",
    "CLOUDFLARE_ACCOUNT_ID": "acct",
    "CLOUDFLARE_API_TOKEN": "cf-test",
}


def catalogue_text(base_url: str) -> str:
    # No retries and a breaker that never opens: each case is one upstream call, whatever the cases before it did.
    resilience = f"max_retries = 0\nbreaker_threshold = 1000000\nfirst_token_timeout = {FIRST_TOKEN_TIMEOUT}\n"
    resilience += f"idle_timeout = {IDLE_TIMEOUT}\nwhole_reply_timeout = {FIRST_TOKEN_TIMEOUT}\n"
    providers = "".join(
        f'[providers.{kind.instance}]\n{kind.provider_toml}\nbase_url = "{base_url}"\n{resilience}\n' for kind in KINDS
    )
    models = "".join(
        model_toml("cut", kind.name, provider=kind.instance, upstream="m", extra=kind.model_extra) for kind in KINDS
    )
    return providers + models


# --- the upstream: one dispatching script, a case per request -----------------------------------------------


Framing = Literal["close", "chunked", "chunked-ended", "length"]


@dataclass(frozen=True)
class Cut:
    """How one reply is sent: its first ``offset`` bytes, then a close (or ``silent``: nothing more, for a while).

    ``framing``: the body runs until the connection closes (only the parser can tell a cut), or is chunked (the
    last chunk is sent only after the whole reply; ``chunked-ended``: after a cut too, as a server whose
    generator stopped early may end it), or has a ``Content-Length`` (the whole reply's); ``trickle``:
    the bytes go event by event, a read each, rather than all at once."""

    label: str
    offset: int
    complete: bool
    #: The chunk reporting the usage came (or the reply reports none): a finish carries that usage, no estimate.
    usage_reported: bool = True
    silent: bool = False
    framing: Framing = "close"
    trickle: bool = False
    #: Send only this many bytes of the head (and no body): the connection ends, or goes silent, before a status.
    head_bytes: int | None = None


@dataclass(frozen=True)
class Sending:
    """One case: the reply's head fields, its body (event by event) and where it is cut."""

    content_type: str
    headers: tuple[tuple[str, str], ...]
    pieces: tuple[bytes, ...]
    cut: Cut

    def head(self) -> bytes:
        lines = ["HTTP/1.1 200 OK", f"Content-Type: {self.content_type}", "Connection: close"]
        lines += [f"{name}: {value}" for name, value in self.headers]
        if self.cut.framing.startswith("chunked"):
            lines.append("Transfer-Encoding: chunked")
        elif self.cut.framing == "length":
            lines.append(f"Content-Length: {sum(map(len, self.pieces))}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def sent_pieces(self) -> list[bytes]:
        """The body's first ``offset`` bytes: one piece, or (trickled) one per event."""
        body = b"".join(self.pieces)[: self.cut.offset]
        if not self.cut.trickle:
            return [body] if body else []
        out, start = [], 0
        for piece in self.pieces:
            if start < len(body):
                out.append(body[start : start + len(piece)])
            start += len(piece)
        return out

    def frame(self, piece: bytes) -> bytes:
        return b"%x\r\n%b\r\n" % (len(piece), piece) if self.cut.framing.startswith("chunked") else piece

    def last_chunk(self) -> bytes:
        """The chunked body's end, where this framing sends one."""
        if self.cut.silent or not self.cut.framing.startswith("chunked"):
            return b""
        whole = self.cut.offset >= sum(map(len, self.pieces))
        return b"0\r\n\r\n" if whole or self.cut.framing == "chunked-ended" else b""


class Cases:
    """What the upstream sends for each case marker (``case-N`` in the prompt)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counter = itertools.count()
        self._cases: dict[str, Sending] = {}

    def add(self, sending: Sending) -> str:
        marker = f"case-{next(self._counter)}"
        with self._lock:
            self._cases[marker] = sending
        return marker

    async def script(self, received: Received) -> AsyncIterator[bytes]:
        found = re.search(rb"case-\d+", received.body)
        assert found is not None, received.body[:200]
        with self._lock:
            sending = self._cases[found.group().decode()]
        if sending.cut.head_bytes is not None:
            yield sending.head()[: sending.cut.head_bytes]
            if sending.cut.silent:
                await asyncio.sleep(SILENCE)
            return
        yield sending.head()
        for number, piece in enumerate(sending.sent_pieces()):
            if number and sending.cut.trickle:
                await asyncio.sleep(TRICKLE)  # a read of its own for each event
            yield sending.frame(piece)
        if sending.cut.trickle:
            await asyncio.sleep(TRICKLE)  # and for the end: the close (or the silence) after what came is read
        yield sending.last_chunk()
        if sending.cut.silent:
            await asyncio.sleep(SILENCE)


# --- the cut points -----------------------------------------------------------------------------------------


def stream_cuts(reply: Reply) -> list[Cut]:
    """Every event boundary, the middle of every event, inside a multi-byte character, inside the terminator, the
    whole reply; a few of them chunked, with a length, or trickled event by event."""
    body, events = reply.body, reply.events
    offsets: dict[int, str] = {}
    start = 0
    for number, event in enumerate(events):
        offsets.setdefault(start, f"before-event-{number}")
        offsets.setdefault(start + len(event) // 2, f"mid-event-{number}")
        start += len(event)
    offsets.setdefault(len(body) - len(events[-1]) // 2, "mid-terminator")
    offsets.setdefault(len(body) - 1, "terminator-but-its-last-byte")
    offsets.setdefault(len(body), "whole")
    for character in ("é", "🌍"):
        at = body.find(character.encode()) + 1
        offsets.setdefault(at, f"inside-{character.encode().hex()}")
    cuts = [cut_at(reply, label, offset) for offset, label in sorted(offsets.items())]
    cuts += [Cut("no-head", 0, False, head_bytes=0), Cut("half-a-head", 0, False, head_bytes=20)]
    terminator = len(body) - len(events[-1])
    mid_reply = len(events[0]) + len(events[1]) // 2
    framings: list[tuple[Framing, bool]] = [("chunked", False), ("chunked-ended", False), ("length", False)]
    for framing, trickle in [*framings, ("close", True), ("chunked", True), ("chunked-ended", True)]:
        name = framing + ("-trickled" if trickle else "")
        cuts += [
            cut_at(reply, f"{name}-mid-reply", mid_reply, framing=framing, trickle=trickle),
            cut_at(reply, f"{name}-before-terminator", terminator, framing=framing, trickle=trickle),
            cut_at(reply, f"{name}-whole", len(body), framing=framing, trickle=trickle),
        ]
    if reply.finish_event is not None:  # between the finish chunk and what may follow it
        finished = reply.complete_from
        cuts += [cut_at(reply, "after-the-finish-chunk", finished)]
        cuts += [cut_at(reply, "chunked-after-the-finish-chunk", finished, framing="chunked")]
    return cuts


def cut_at(reply: Reply, label: str, offset: int, **how: Any) -> Cut:
    """``reply`` cut after ``offset`` bytes: complete or not, its usage reported or not, by where the cut falls."""
    return Cut(label, offset, offset >= reply.complete_from, usage_reported=offset >= reply.usage_from, **how)


def silent_cuts(reply: Reply) -> list[Cut]:
    """Silences at the start, mid-reply, before the terminator; and after the whole reply (the finish must not
    wait for the connection's end)."""
    events = reply.events
    terminator = len(reply.body) - len(events[-1])
    cuts = [
        Cut("silent-before-the-head", 0, False, silent=True, head_bytes=0),
        cut_at(reply, "silent-at-start", 0, silent=True),
        cut_at(reply, "silent-after-a-token", len(events[0]) + len(events[1]), silent=True),
        cut_at(reply, "silent-mid-event", len(events[0]) + len(events[1]) // 2, silent=True),
        cut_at(reply, "silent-before-terminator", terminator, silent=True),
        cut_at(reply, "silent-trickled-before-terminator", terminator, silent=True, trickle=True),
        cut_at(reply, "silent-chunked-before-terminator", terminator, silent=True, framing="chunked"),
        cut_at(reply, "silent-after-the-whole-reply", len(reply.body), silent=True),
        cut_at(reply, "silent-chunked-after-the-whole-reply", len(reply.body), silent=True, framing="chunked"),
    ]
    if reply.finish_event is not None:
        cuts += [cut_at(reply, "silent-after-the-finish-chunk", reply.complete_from, silent=True)]
    return cuts


def whole_cuts(reply: Reply) -> list[Cut]:
    """A non-streamed reply is one JSON body: cut nowhere, or anywhere before its end; or silent."""
    whole = reply.whole
    emoji = whole.find("🌍".encode())
    at = emoji + 2 if emoji >= 0 else whole.find("é".encode()) + 1
    cuts = [Cut("no-head", 0, False, head_bytes=0), Cut("half-a-head", 0, False, head_bytes=20)]
    cuts += [Cut("empty", 0, False), Cut("inside-a-character", at, False), Cut("half", len(whole) // 2, False)]
    cuts += [Cut("all-but-the-last-byte", len(whole.rstrip()) - 1, False), Cut("whole", len(whole), True)]
    for framing in ("chunked", "chunked-ended", "length"):
        cuts += [Cut(f"{framing}-half", len(whole) // 2, False, framing=framing)]
        cuts += [Cut(f"{framing}-whole", len(whole), True, framing=framing)]
    cuts += [Cut("silent-before-the-head", 0, False, silent=True, head_bytes=0)]
    cuts += [Cut("silent-before-the-body", 0, False, silent=True)]
    cuts += [Cut("silent-mid-body", len(whole) // 2, False, silent=True)]
    cuts += [Cut("silent-with-a-length-after-the-body", len(whole), True, silent=True, framing="length")]
    return cuts


# --- the client routes and what each must get -----------------------------------------------------------------


@dataclass
class Outcome:
    """What a client got: proper finishes, explicit errors, the text, and whether anything else was wrong."""

    finishes: int = 0
    errors: int = 0
    text: str = ""
    #: The reply's usage as the client saw it, when a finish carried one: (prompt, completion, estimated).
    usage: tuple[int, int, bool] | None = None
    problems: tuple[str, ...] = ()


def sse_events(body: str) -> list[tuple[str, str]]:
    """(event name, data) of a well-formed SSE body; a malformed one raises."""
    assert body.endswith("\n\n"), f"the body does not end with a whole event: {body[-80:]!r}"
    out = []
    for block in body[:-2].split("\n\n"):
        name, data = "message", []
        for line in block.split("\n"):
            field, _, value = line.partition(": ")
            if field == "event":
                name = value
            else:
                assert field == "data", f"unexpected line {line!r}"
                data.append(value)
        out.append((name, "\n".join(data)))
    return out


def read_ui(response: httpx.Response) -> Outcome:
    events = sse_events(response.text)
    problems = [] if events[-1][1] == "[DONE]" else ["no [DONE] at the end"]
    chunks = [orjson.loads(data) for _, data in events[:-1]]
    outcome = Outcome(problems=tuple(problems))
    for chunk in chunks:
        if chunk["type"] == "text-delta":
            outcome.text += chunk["delta"]
        elif chunk["type"] == "finish":
            outcome.finishes += 1
            usage = chunk["messageMetadata"]["usage"]
            estimated = chunk["messageMetadata"].get("usageEstimated", False)
            outcome.usage = (usage["inputTokens"], usage["outputTokens"], estimated)
        elif chunk["type"] == "error":
            outcome.errors += 1
    if chunks[-1]["type"] not in ("finish", "error"):
        outcome.problems += (f"the last chunk is {chunks[-1]['type']!r}",)
    return outcome


def read_data(response: httpx.Response) -> Outcome:
    assert response.text.endswith("\n"), response.text[-80:]
    lines = response.text[:-1].split("\n")
    outcome = Outcome()
    for line in lines:
        code, _, value = line.partition(":")
        payload = orjson.loads(value)
        if code == "0":
            outcome.text += payload
        elif code == "d":
            outcome.finishes += 1
            outcome.usage = (payload["usage"]["promptTokens"], payload["usage"]["completionTokens"], False)
        elif code == "3":
            outcome.errors += 1
    if outcome.usage is not None and '8:[{"usageEstimated":true}]' in lines:
        outcome.usage = (*outcome.usage[:2], True)
    if lines[-1][:2] not in ("d:", "3:"):
        outcome.problems += (f"the last part is {lines[-1][:40]!r}",)
    return outcome


def read_text(response: httpx.Response) -> Outcome:
    """The plain text stream: the text, then, for a failure, one ``\\n[error: …]`` line; a finish is the end."""
    text, marker, rest = response.text.partition("\n[error: ")
    if not marker:
        return Outcome(finishes=1, text=text)
    problems = () if rest.endswith("]") and "\n[error: " not in rest else (f"after the text: {rest!r}",)
    return Outcome(errors=1, text=text, problems=problems)


def read_chat_stream(response: httpx.Response) -> Outcome:
    events = sse_events(response.text)
    problems = [] if events[-1][1] == "[DONE]" else ["no [DONE] at the end"]
    outcome = Outcome(problems=tuple(problems))
    for _, data in events[:-1]:
        chunk = orjson.loads(data)
        if "error" in chunk:
            outcome.errors += 1
            continue
        if chunk.get("usage"):
            usage = chunk["usage"]
            outcome.usage = (usage["prompt_tokens"], usage["completion_tokens"], usage.get("estimated", False))
        for choice in chunk["choices"]:
            outcome.text += choice["delta"].get("content") or ""
            if choice["finish_reason"] is not None:
                outcome.finishes += 1
    return outcome


def read_responses_stream(response: httpx.Response) -> Outcome:
    events = sse_events(response.text)
    outcome = Outcome()
    for name, data in events:
        payload = orjson.loads(data)
        assert payload["type"] == name
        if name == "response.output_text.delta":
            outcome.text += payload["delta"]
        elif name in ("response.completed", "response.incomplete"):
            outcome.finishes += 1
            usage = payload["response"]["usage"]
            outcome.usage = (usage["input_tokens"], usage["output_tokens"], usage.get("estimated", False))
        elif name == "error":
            outcome.errors += 1
    if events[-1][0] not in ("response.completed", "response.failed"):
        outcome.problems += (f"the last event is {events[-1][0]!r}",)
    if outcome.errors and events[-1][0] != "response.failed":
        outcome.problems += ("an error without response.failed after it",)
    return outcome


def read_chat_completion(response: httpx.Response) -> Outcome:
    body = response.json()
    choice = body["choices"][0]
    usage = body["usage"]
    return Outcome(
        finishes=int(choice["finish_reason"] == "stop"),
        text=choice["message"]["content"],
        usage=(usage["prompt_tokens"], usage["completion_tokens"], usage.get("estimated", False)),
    )


def read_response(response: httpx.Response) -> Outcome:
    body = response.json()
    text = "".join(part["text"] for item in body["output"] if item["type"] == "message" for part in item["content"])
    usage = body["usage"]
    return Outcome(
        finishes=int(body["status"] == "completed"),
        text=text,
        usage=(usage["input_tokens"], usage["output_tokens"], usage.get("estimated", False)),
    )


@dataclass(frozen=True)
class Route:
    name: str
    streamed: bool
    request: Callable[[Kind, str], tuple[str, dict[str, Any]]]
    read: Callable[[httpx.Response], Outcome]
    content_type: str

    @property
    def openai(self) -> bool:
        """A ``/v1`` route: its error bodies are OpenAI's ``{"error": {...}}``, not the seed's shape."""
        return not self.name.startswith(("ui", "data", "text"))

    def error_message(self, body: Any) -> str:
        """The message of an error body in this route's shape; anything else raises."""
        if self.openai:
            message = body["error"]["message"]
        else:
            assert body["statusCode"] >= 500
            message = body["statusMessage"]
        assert isinstance(message, str) and message
        return message


def ai_sdk(protocol: str | None) -> Callable[[Kind, str], tuple[str, dict[str, Any]]]:
    def request(kind: Kind, marker: str) -> tuple[str, dict[str, Any]]:
        query = f"?protocol={protocol}" if protocol else ""
        # An AI SDK 5 body (``parts``): the UI message stream unless ``protocol`` says otherwise.
        body = {"messages": [{"id": "u1", "role": "user", "parts": [{"type": "text", "text": marker}]}]}
        return f"/api/ai/{kind.instance}/{kind.name}/chat{query}", body

    return request


def chat_completions(stream: bool) -> Callable[[Kind, str], tuple[str, dict[str, Any]]]:
    def request(kind: Kind, marker: str) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {
            "model": kind.model,
            "messages": [{"role": "user", "content": marker}],
            "stream": stream,
        }
        if stream:
            body["stream_options"] = {"include_usage": True}
        return "/v1/chat/completions", body

    return request


def responses(stream: bool) -> Callable[[Kind, str], tuple[str, dict[str, Any]]]:
    def request(kind: Kind, marker: str) -> tuple[str, dict[str, Any]]:
        return "/v1/responses", {"model": kind.model, "input": marker, "stream": stream}

    return request


ROUTES = (
    Route("ui", True, ai_sdk(None), read_ui, "text/event-stream"),
    Route("data", True, ai_sdk("data"), read_data, "text/plain"),
    Route("text", True, ai_sdk("text"), read_text, "text/plain"),
    Route("chat-completions-stream", True, chat_completions(True), read_chat_stream, "text/event-stream"),
    Route("chat-completions", False, chat_completions(False), read_chat_completion, "application/json"),
    Route("responses-stream", True, responses(True), read_responses_stream, "text/event-stream"),
    Route("responses", False, responses(False), read_response, "application/json"),
)


def verdict(route: Route, cut: Cut, response: httpx.Response) -> list[str]:
    """What is wrong with ``response`` to a reply cut as ``cut`` (nothing: an empty list)."""
    if response.status_code != 200:
        if cut.complete:
            return [f"HTTP {response.status_code} for a complete reply: {response.text[:200]}"]
        try:
            assert response.status_code >= 500
            route.error_message(response.json())
        except (AssertionError, KeyError, TypeError, ValueError):
            return [f"HTTP {response.status_code} {response.headers.get('content-type')}: {response.text[:200]}"]
        return []
    if not route.streamed and not cut.complete:
        return [f"a 200 for a cut reply: {response.text[:300]}"]
    if not response.headers.get("content-type", "").startswith(route.content_type):
        return [f"content type {response.headers.get('content-type')!r}"]
    try:
        outcome = route.read(response)
    except (AssertionError, KeyError, IndexError, TypeError, ValueError) as exc:
        return [f"unreadable ({type(exc).__name__}: {exc}): {response.text[-300:]!r}"]
    problems = list(outcome.problems)
    if not TEXT.startswith(outcome.text):
        problems.append(f"text {outcome.text!r} is no prefix of the reply's")
    if cut.complete:
        if (outcome.finishes, outcome.errors) != (1, 0):
            problems.append(f"{outcome.finishes} finishes and {outcome.errors} errors for a complete reply")
        if outcome.text != TEXT:
            problems.append(f"text {outcome.text!r} for a complete reply")
        if (
            outcome.usage is not None
            and cut.usage_reported
            and outcome.usage != (PROMPT_TOKENS, COMPLETION_TOKENS, False)
        ):
            problems.append(f"usage {outcome.usage} for a reply that reported its usage")
        if outcome.usage is not None and not cut.usage_reported and not outcome.usage[2]:
            problems.append(f"usage {outcome.usage} not marked estimated, for a reply cut before its usage")
    elif (outcome.finishes, outcome.errors) != (0, 1):
        problems.append(f"{outcome.finishes} finishes and {outcome.errors} errors for a cut reply")
    return [f"{problem} ({response.text[-200:]!r})" for problem in problems] if problems else []


# --- fixtures -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cases(hostile: HostileUpstream) -> Iterator[Cases]:
    cases = Cases()
    hostile.reset(cases.script)
    yield cases
    hostile.reset()


@pytest.fixture(scope="module")
def service(hostile: HostileUpstream, cases: Cases) -> Iterator[str]:
    catalogue = parse_catalogue(tomllib.loads(catalogue_text(hostile.url)), source="stream-endings.toml")
    settings = Settings.from_env(CREDENTIALS, probe_interval=0)
    with serve_in_thread(create_app(settings, catalogue)) as url:
        yield url


@pytest.fixture(scope="module")
def client(service: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service, timeout=CLIENT_TIMEOUT) as client:
        yield client


def case(cases: Cases, kind: Kind, route: Route, cut: Cut) -> tuple[str, dict[str, Any]]:
    reply = kind.reply
    if route.streamed:
        sending = Sending(reply.content_type, (), reply.events, cut)
    else:
        sending = Sending("application/json", reply.whole_headers, (reply.whole,), cut)
    return route.request(kind, cases.add(sending))


def run_case(client: httpx.Client, cases: Cases, kind: Kind, route: Route, cut: Cut) -> list[str]:
    path, body = case(cases, kind, route, cut)
    try:
        response = client.post(path, json=body)
    except httpx.HTTPError as exc:  # an unterminated body, a hang
        return [f"{cut.label}: {type(exc).__name__}: {exc}"]
    return [f"{cut.label} (offset {cut.offset}): {problem}" for problem in verdict(route, cut, response)]


def healthy(client: httpx.Client) -> None:
    assert client.get("/health").status_code == 200


# --- the matrix -----------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_unexpected_failure(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """An error part is not enough: one made of the gateway's own unexpected exception (a bug: an empty batch of
    events once raised IndexError in every encoder) reads as an explicit error to the client, so the log is read
    too."""
    with caplog.at_level(logging.ERROR, logger="modelgate"):
        yield
    unexpected = [
        r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR and "unexpected" in r.getMessage()
    ]
    assert not unexpected, unexpected[:5]


KIND_PARAMS = [pytest.param(kind, id=kind.name) for kind in KINDS]
ROUTE_PARAMS = [pytest.param(route, id=route.name) for route in ROUTES]


@pytest.mark.parametrize("route", ROUTE_PARAMS)
@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_a_cut_reply_ends_with_one_error_and_a_whole_one_with_one_finish(
    client: httpx.Client, cases: Cases, kind: Kind, route: Route
) -> None:
    cuts = [cut for cut in (stream_cuts if route.streamed else whole_cuts)(kind.reply) if not cut.silent]
    failures = [failure for cut in cuts for failure in run_case(client, cases, kind, route, cut)]
    assert not failures, "\n".join(failures)
    healthy(client)


@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_a_silent_upstream_never_holds_a_reply_open(service: str, cases: Cases, kind: Kind) -> None:
    """Silent before the end: one error, within the timeouts; silent after the whole reply: its finish, without
    waiting for the connection to end. All routes at once: each case waits out a timeout, so they run concurrently."""
    work = [
        (route, cut)
        for route in ROUTES
        for cut in (silent_cuts(kind.reply) if route.streamed else whole_cuts(kind.reply))
        if cut.silent
    ]

    async def one(http: httpx.AsyncClient, route: Route, cut: Cut) -> list[str]:
        path, body = case(cases, kind, route, cut)
        try:
            response = await http.post(path, json=body)
        except httpx.HTTPError as exc:
            return [f"{route.name} {cut.label}: {type(exc).__name__}: {exc}"]
        return [f"{route.name} {cut.label}: {problem}" for problem in verdict(route, cut, response)]

    async def all_at_once() -> list[str]:
        # Well within SILENCE: the gateway must give up on the upstream, not wait for it to close.
        async with httpx.AsyncClient(base_url=service, timeout=SILENCE - 1.5) as http:
            found = await asyncio.gather(*(one(http, route, cut) for route, cut in work))
        return [failure for failures in found for failure in failures]

    failures = asyncio.run(all_at_once())
    assert not failures, "\n".join(failures)
    with httpx.Client(base_url=service, timeout=CLIENT_TIMEOUT) as client:
        healthy(client)


@pytest.mark.anyio
async def test_a_dropped_connection_is_its_error_even_where_the_parsers_end_only_records_a_cut(
    hostile: HostileUpstream,
) -> None:
    """A connection dropped mid-record, after a first token, is handed to the parser's end in case the reply is
    whole (a Chat Completions finish chunk without its [DONE]); Ollama's end records a cut as its ``failure``
    instead of raising. A first version of that rule yielded the empty batch it returned, and every encoder failed
    on it (IndexError: an "internal error" part instead of the upstream's); the matrix caught it only when the
    gateway read slower than the close came. The consumer here reads slowly, so that happens every time."""
    from modelgate.chat import ChatRequest, Message
    from modelgate.errors import UpstreamError
    from modelgate.providers import Connection, new_session
    from modelgate.providers._http import Upstream
    from modelgate.providers.ollama import OllamaStream, read_error
    from tests.fakes.hostile import response_head

    first, second = OLLAMA.events[:2]

    async def script(_: Received) -> AsyncIterator[bytes]:
        yield response_head(200, {"Content-Type": "application/x-ndjson", "Transfer-Encoding": "chunked"})
        yield b"%x\r\n%b\r\n" % (len(first), first)
        half = second[: len(second) // 2]
        yield b"%x\r\n%b\r\n" % (len(half), half)  # then the close: no last chunk

    hostile.reset(script)
    request = ChatRequest([Message("user", "Hi")])
    batches: list[list[Any]] = []
    async with new_session() as http:
        upstream = Upstream("ollama", Connection(hostile.url), http, read_error)
        stream = upstream.stream(
            hostile.url + "/api/chat", lambda: {}, OllamaStream(upstream, request), headers={}, model="m"
        )
        with pytest.raises(UpstreamError, match="dropped mid-stream"):
            async for batch in stream:
                batches.append(batch)
                await asyncio.sleep(0.3)  # the rest and the close arrive meanwhile
    assert batches and all(batches), batches  # never an empty batch
