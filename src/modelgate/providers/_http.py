"""Upstream HTTP plumbing shared by the adapters, so each adapter only knows its own protocol.

An adapter describes one call (URL, JSON body, headers) and supplies two protocol pieces:

* a ``StreamParser``: a synchronous, incremental parser fed raw body chunks, returning the
  ``StreamEvent``s they complete; an error reported *inside* the stream (or a broken frame) is kept in
  its ``failure`` as an ``UpstreamError``, raised here once the events before it are delivered;
* an ``ErrorReader``: turns a non-2xx body into an ``ErrorDetail`` (the provider's message, and any
  retry hint or status correction its body carries).

Everything else lives here, once: the HTTP client (aiohttp, ``new_session``), sending, the three
timeouts, the status → exception mapping, and the translation of every aiohttp/OS exception into the
``modelgate.errors`` tree (``raise ... from exc``), before the response *and* while its body is read.

Why aiohttp and not httpx: a gateway relays hundreds of concurrent streams through one pool, and
httpx 0.28 spends most of its time in its pool's quadratic assignment pass (encode/httpcore#1035) plus
anyio/h11 machinery per chunk; aiohttp reads a chunk for 6-10x less CPU (bench/README.md, *clients*).

The reply is yielded in **batches**: every event one network read completed, together, so the layers
above pay their per-message costs (generator hops, encoding, one ASGI ``send``) once per read, not once
per token. When tokens arrive faster than we relay them, reads get bigger and batches longer.

Timeouts (no total deadline by default — a healthy long stream may run for minutes):

* ``connect_timeout``: the TCP/TLS connect (aiohttp's own connect timeout).
* ``first_token_timeout``: one deadline from sending the request until the parser produced its first
  event. It covers the response headers and every byte before the first token, so a keep-alive
  comment (TGI writes ``:`` every 15 s while a request is queued) cannot keep a stuck request alive.
* ``idle_timeout``: once events flow, the longest wait for the next *event*. Bytes that complete none
  (comments, blank lines, empty chunks) are not progress and re-arm nothing.
* ``max_stream_seconds`` (optional, off by default): the whole reply.
* ``whole_reply_timeout``: a non-streamed call (``fetch``) shows no progress until the server generated all
  of it and sends its status line, so that wait is bounded by the generation's length, not a first token's.

What a hostile or broken upstream cannot do to the worker (issue 11):

* send a compressed body: we ask for ``identity``, never inflate (``auto_decompress=False``) and refuse
  a reply that is encoded anyway (a 1 MB gzip body can inflate to gigabytes);
* send more than ``max_event_bytes`` without completing an event: that bounds one line, one SSE event,
  one NDJSON record and any run of comments alike, in every adapter, without the adapters knowing;
* starve the event loop: aiohttp hands out buffered data without suspending, so the loop yields every
  ``YIELD_EVERY`` bytes;
* put a credential into a client's reply: every error built here passes through ``Upstream.clean``.

Both deadlines are one ``Deadline`` per stream (``modelgate/deadline.py``: one timer, re-armed lazily),
not a timeout object per chunk. Closing the event generator before the reply finished (the client went away) closes the
upstream connection, which cancels the generation upstream; a reply that finished returns its
connection to the pool.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import math
import ssl
import time
from abc import abstractmethod
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import certifi
import orjson

from modelgate.chat import Finish, Message, StreamEvent
from modelgate.deadline import Deadline
from modelgate.errors import (
    ALL_MODELS,
    MAX_RETRY_AFTER,
    BadRequest,
    UpstreamAuthError,
    UpstreamBadRequest,
    UpstreamContentFlagged,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from modelgate.providers.base import Connection, ProbeResult, Provider
from modelgate.push_lane import PUSH_SUPPORTED, Carry, current_lane
from modelgate.redact import Redactor, url_secrets
from modelgate.templates import render_prompt
from modelgate.tracing import upstream_trace_headers

#: Upstream error messages are clipped to this many characters before they reach a client or a log.
MAX_MESSAGE = 500
#: How many of a content filter's reasons an error names, and how long each may be (OpenRouter's are category names
#: such as ``harassment``): a client's error body and a log line stay small whatever the upstream sends.
MAX_FLAGGED_REASONS = 16
MAX_FLAGGED_REASON = 100
#: How much of an unreadable part of a reply its protocol error quotes for the caller (``Upstream.protocol_error``).
QUOTED_CHARACTERS = 120
#: How much of a non-2xx body is read to find the provider's message.
MAX_ERROR_BODY = 64 * 1024
#: After the ``Finish``, how long the end of the body (the chunked terminator, usually in the same read
#: as the last event) may take, and how many bytes of it are read, so the connection can be reused.
TAIL_GRACE = 0.25
MAX_TAIL = 64 * 1024
#: The largest model listing a probe reads (OpenRouter's, the largest, is a few hundred KB).
MAX_LISTING = 32 * 1024 * 1024
#: The read loop hands the event loop a turn after this many bytes: aiohttp returns buffered data
#: without suspending, so a fast upstream could otherwise keep every other request (and /health) waiting.
YIELD_EVERY = 256 * 1024


def new_session() -> aiohttp.ClientSession:
    """The upstream HTTP client: one keep-alive pool the app shares between its providers."""
    connector = aiohttp.TCPConnector(
        # No pool cap: concurrent streams are bounded by our own limits, and a capped pool would
        # queue a stream behind others for their whole length.
        limit=0,
        limit_per_host=0,
        # The Mozilla CA bundle (certifi), as httpx used: HTTPS to the providers verifies the same way
        # whether or not the host has a system CA store (slim containers often do not).
        ssl=ssl.create_default_context(cafile=certifi.where()),
    )
    return aiohttp.ClientSession(
        connector=connector,
        # No total timeout: each call sets its connect timeout, the stream deadlines are ours.
        timeout=aiohttp.ClientTimeout(total=None),
        # Cookies an API sets (Cloudflare's bot cookie) must not travel from one caller's call to the next.
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
        # Never inflate: we ask for identity, and a reply compressed anyway is refused (``encoding``), as
        # a few KB of gzip can inflate to gigabytes in one read (a decompression bomb).
        auto_decompress=False,
    )


def encoding(response: aiohttp.ClientResponse) -> str | None:
    """The reply's content coding when it is not identity (we never inflate one: see ``new_session``)."""
    value = response.headers.get("Content-Encoding", "").strip().lower()
    return value if value and value != "identity" else None


class StreamParser(Protocol):
    """One provider's stream protocol, fed incrementally. One instance per call."""

    #: True once the parser has emitted the ``Finish``; the body is not read further.
    done: bool
    #: The stream's failure, found after the events ``feed`` returned with it (the same network read may
    #: carry tokens and then the provider's error: the tokens are delivered, then this is raised).
    failure: UpstreamError | None

    def feed(self, chunk: bytes) -> list[StreamEvent]: ...

    def end(self) -> list[StreamEvent]:
        """The body ended. Returns the final events, or raises ``UpstreamProtocolError`` (truncated)."""
        ...


@dataclass(frozen=True, slots=True)
class ErrorDetail:
    """What a provider's error body says, read by that provider's ``ErrorReader``."""

    message: str
    #: Seconds until a retry may succeed, from the body (HF ``estimated_time``, OpenRouter's reset).
    retry_after: float | None = None
    #: The status the body really means, when it says more than the HTTP status (Cloudflare 10000 = auth).
    status: int | None = None
    #: Overrides whether a retry may cure it (Cloudflare 3036: a 429 that lasts until tomorrow).
    transient: bool | None = None
    #: A content filter refused the input, for these reasons (OpenRouter's moderation ``reasons``): the client's to
    #: change (``UpstreamContentFlagged``), whatever the HTTP status.
    flagged: tuple[str, ...] | None = None
    #: Who refused a ``flagged`` input, as the message says it: the model's moderation, or the account's guardrail.
    flagged_by: str = "flagged by moderation"
    #: The failure the body names when its status would say another (Cloudflare 5016, a licence to accept, comes
    #: under 403, which would read as refused credentials): raised with ``message`` as it is, which says the remedy.
    error: type[UpstreamError] | None = None
    #: The body says the whole server is failing, not the one model (Ollama's full request queue): counted against
    #: the provider's breaker (``resilience.provider_wide``), so its other models are not sent to it meanwhile.
    provider_wide: bool = False
    #: The body says the account is refused, not this call or model (out of credits, a daily quota used up):
    #: ``errors.ALL_MODELS`` or the pool of models it holds for (``UpstreamError.account_block``). Never retried:
    #: the provider's models are blocked until ``retry_after`` (the upstream's reset) or the breaker's cooldown.
    account_block: str | None = None


ErrorReader = Callable[[int, bytes], ErrorDetail]


def text_field(value: object) -> str:
    """A text field of an upstream's reply; anything else (a number, an object) makes the reply unreadable (a
    ``TypeError``, which each parser maps to a protocol error): passed on, it broke every client's stream."""
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def estimate_tokens(text: str) -> int:
    """A token count for when the upstream reports none (the result is marked ``estimated``).

    About four characters per token: the rule of thumb OpenAI and Hugging Face document for English
    text with BPE tokenizers. It is a display figure for usage, never used to enforce limits.
    """
    return tokens_of_characters(len(text))


def tokens_of_characters(count: int) -> int:
    """``estimate_tokens`` of a text of ``count`` characters (for a parser that counted them as they came)."""
    return math.ceil(count / 4)


#: A chat prompt is more than its texts: the template wraps each message in role markers and delimiters
#: and primes the reply. OpenAI documents ~4 tokens per message (role and delimiters) and 3 to prime the
#: reply (openai-cookbook, "How to count tokens with tiktoken", ``num_tokens_from_messages``).
TOKENS_PER_MESSAGE = 4
TOKENS_PER_REPLY = 3


def estimate_prompt_tokens(messages: Iterable[Message], template: str | None = None) -> int:
    """The prompt tokens a server would count for ``messages``, when it reports none (marked ``estimated``).

    With the model's chat template known, the rendered prompt is counted (its markers included, as the
    server tokenizes them); otherwise each message costs its text plus the documented per-message overhead.
    """
    messages = tuple(messages)
    if template:
        try:
            return estimate_tokens(render_prompt(template, messages))
        except BadRequest:
            pass  # a conversation the template refuses: fall back to the overhead rule
    return sum(TOKENS_PER_MESSAGE + estimate_tokens(m.content) for m in messages) + TOKENS_PER_REPLY


def parse_json(data: str | bytes) -> Any:
    """``orjson.loads`` whose failure is the JSON layer's, to be mapped by the caller."""
    return orjson.loads(data)


def body_message(body: bytes) -> str:
    """A short readable excerpt of a body that is not the provider's JSON error shape."""
    text = body.decode("utf-8", "replace").strip()
    return text[:MAX_MESSAGE] if text else "(empty body)"


def json_message(value: object) -> str:
    """A JSON value an error holds where text was due, as ``body_message`` shows a body: written back, clipped.
    Nested deeper than orjson writes (255 levels; it reads 1024), it is said so, not written."""
    try:
        return body_message(orjson.dumps(value))
    except TypeError:  # orjson.JSONEncodeError
        return "(a JSON value nested too deep to show)"


def retry_after_header(headers: Mapping[str, str]) -> float | None:
    """``Retry-After`` as seconds (RFC 9110: delay-seconds or an HTTP-date), at most ``MAX_RETRY_AFTER``."""
    value = headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, OverflowError):
            return None
    if math.isnan(seconds):
        return None
    # "inf" or "1e999" says "not soon": longer than any retry cap, so the 503 is handed on, with a day at most.
    return min(max(0.0, seconds), MAX_RETRY_AFTER)


def estimated_time(payload: Mapping[str, object]) -> float | None:
    """A cold model's wait beside its 503 (``{"error": "Model … is currently loading", "estimated_time": 120.0}``: TGI's
    hosted API, and the HF router's hf-inference backend) as seconds, at most ``MAX_RETRY_AFTER``."""
    estimated = payload.get("estimated_time")
    if not isinstance(estimated, int | float) or isinstance(estimated, bool) or not estimated >= 0:  # NaN too
        return None
    return min(float(estimated), MAX_RETRY_AFTER)


def seconds_until_epoch_ms(value: object) -> float | None:
    """OpenRouter's ``X-RateLimit-Reset`` (epoch **milliseconds**) as seconds from now, at most ``MAX_RETRY_AFTER``."""
    try:
        reset_ms = float(str(value))
    except ValueError:
        return None
    if math.isnan(reset_ms):
        return None
    return min(max(0.0, reset_ms / 1000 - time.time()), MAX_RETRY_AFTER)


def seconds_until_utc_midnight() -> float:
    """Seconds until the next 00:00 UTC, when a daily quota that says no reset of its own resets (Workers AI's,
    OpenRouter's ``:free`` one)."""
    now = time.time()
    return 86_400 - now % 86_400


#: One model of a listing: its upstream id and its context window in tokens (None when not stated).
ListedModel = tuple[str, int | None]


def context_window(value: object) -> int | None:
    """A listing's context-window field as a positive token count (a number or a numeric string), else None."""
    match value:
        case bool():
            return None
        case int() | float() if 0 < value < 2**63:
            return int(value) or None
        case str() if value.strip().isdigit():
            return int(value) or None
    return None


def openai_listing(listing: Any) -> Iterator[ListedModel]:
    """The models of an OpenAI-style listing, ``GET {base}/models`` → ``{"data": [{"id": ...}, ...]}``,
    as OpenRouter, the Hugging Face router and every OpenAI-compatible server answer it.

    The context window has no standard field; each server family names it its own way, read in order:
    ``context_length`` (OpenRouter, Together), ``max_model_len`` (vLLM), ``meta.n_ctx_train`` (llama.cpp's
    server), and for the Hugging Face router the smallest ``providers[].context_length`` (the router may
    pick any of its serving providers).
    """
    for entry in listing["data"]:
        yield entry["id"], _entry_window(entry)


def _entry_window(entry: Mapping[str, Any]) -> int | None:
    for value in (entry.get("context_length"), entry.get("max_model_len")):
        if (window := context_window(value)) is not None:
            return window
    meta = entry.get("meta")
    if isinstance(meta, Mapping) and (window := context_window(meta.get("n_ctx_train"))) is not None:
        return window
    providers = entry.get("providers")
    if isinstance(providers, list):
        windows = [w for p in providers if isinstance(p, Mapping) and (w := context_window(p.get("context_length")))]
        return min(windows) if windows else None
    return None


class Upstream:
    """One provider's connection to its upstream: sends calls, applies timeouts, maps failures."""

    def __init__(
        self,
        provider: str,
        connection: Connection,
        http: aiohttp.ClientSession,
        read_error: ErrorReader,
    ) -> None:
        self.provider = provider
        self.connection = connection
        self.http = http
        self.read_error = read_error
        # aiohttp bounds the connect; everything after it is bounded by the first-token and idle
        # deadlines in ``stream`` (a stream needs two read deadlines, aiohttp has one).
        self._timeouts = aiohttp.ClientTimeout(
            total=None, connect=connection.connect_timeout, sock_connect=connection.connect_timeout
        )
        # A base URL's user information travels too, as ``Authorization: Basic``.
        self._redactor = Redactor([*connection.credentials.values(), *url_secrets(connection.base_url)])

    # -- streaming ------------------------------------------------------------------------------

    async def stream(
        self,
        url: str,
        body: Callable[[], Mapping[str, Any]],
        parser: StreamParser,
        *,
        headers: Mapping[str, str],
        model: str,
    ) -> AsyncGenerator[list[StreamEvent], None]:
        """POST ``body()`` to ``url`` and yield what ``parser`` makes of the streamed reply, one
        non-empty batch per network read; the batch holding the ``Finish`` is the last.

        ``body`` is built on the first iteration, so an input the adapter refuses (a chat template's
        ``BadRequest``) is raised by the iterator like every other failure, not by the call.
        """
        conn = self.connection
        loop = asyncio.get_running_loop()
        first_deadline = loop.time() + conn.first_token_timeout
        deadline = Deadline(loop)
        response: aiohttp.ClientResponse | None = None
        finished = False
        try:
            deadline.begin(first_deadline)
            response = await self._post(url, orjson.dumps(body()), headers, model, deadline)
            read = response.content.readany
            idle = conn.idle_timeout
            max_event = conn.max_event_bytes
            stream_end = loop.time() + conn.max_stream_seconds if conn.max_stream_seconds else math.inf
            # Progress is an *event*, not a byte: comments, blank lines and empty chunks re-arm no
            # deadline and count towards ``max_event``, so an upstream cannot hold a stream open with them.
            next_deadline = first_deadline
            started = False
            quiet = 0  # bytes read since the parser last completed an event
            unyielded = 0  # bytes read since the event loop last had a turn
            pull = True  # the next bytes are read by this task (the first batch always is: it opens the response)
            while True:
                carry = None
                if not pull and (lane := current_lane()) is not None:
                    carry = Carry(
                        lane, parser, deadline, idle=idle, stream_end=stream_end, max_event=max_event, quiet=quiet
                    )
                pull = True
                deadline.begin(min(next_deadline, stream_end))
                cut: UpstreamError | None = None
                chunk = b""
                try:
                    if carry is None:
                        chunk = await read()
                    else:
                        await carry.run(response.content)
                except asyncio.CancelledError:
                    if not deadline.fired():
                        raise
                    overran = loop.time() >= stream_end
                    cut = self._deadline_error(started, overran=overran)
                except (aiohttp.ClientError, OSError) as exc:
                    overran = False
                    cut = self._transport_error(exc, started=started)
                    cut.__cause__ = exc
                finally:
                    deadline.end()
                if cut is not None:  # the reply may be whole all the same: then its end, as a close there gives
                    yield self._cut_short(parser, cut, whole_possible=started and not overran)
                    return
                if carry is not None:
                    # Handed back: a batch the layers above must see (its Finish, a failure after it), or bytes,
                    # an end or an error for the read below.
                    quiet, next_deadline = carry.quiet, deadline.when
                    if carry.error is not None:
                        raise carry.error
                    if carry.events:
                        finished = parser.done
                        yield carry.events
                        next_deadline = loop.time() + idle
                    if parser.failure is not None:
                        raise parser.failure
                    if finished:
                        return
                    if quiet > max_event:
                        raise self._event_limit_error(max_event)
                    continue
                # An empty chunk: the body ended.
                events = parser.feed(chunk) if chunk else parser.end()
                if events:
                    quiet = 0
                    started = True
                    finished = parser.done or not chunk
                    yield events
                    next_deadline = loop.time() + idle  # the consumer's time is not the upstream's
                    pull = not PUSH_SUPPORTED
                if parser.failure is not None:
                    raise parser.failure
                if finished or not chunk:
                    return
                quiet += len(chunk)
                if quiet > max_event:
                    raise self._event_limit_error(max_event)
                if loop.time() >= stream_end:
                    raise self._deadline_error(started, overran=True)
                unyielded += len(chunk)
                if unyielded >= YIELD_EVERY:
                    unyielded = 0
                    await asyncio.sleep(0)
        finally:
            deadline.stop()
            if response is not None:
                await self._close(response, reuse=finished)

    async def fetch(
        self,
        url: str,
        body: Callable[[], Mapping[str, Any]],
        read: Callable[[bytes], list[StreamEvent]],
        *,
        headers: Mapping[str, str],
        model: str,
        on_headers: Callable[[Mapping[str, str]], None] | None = None,
    ) -> AsyncGenerator[list[StreamEvent], None]:
        """POST ``body()`` for one whole (non-streamed) reply and yield what ``read`` makes of its body: one
        batch, ending with the ``Finish``. For a caller that wants the reply whole (``stream: false``), one
        JSON body is a fraction of the work of a stream of chunks to parse and reassemble. ``on_headers`` sees the
        reply's headers first (TGI's ``/generate`` counts the prompt only there).

        The same contract as ``stream`` (an iterator of batches; the error tree; the body built on the first
        iteration). The status line is the reply's first byte, and a server sends it once the whole reply is
        generated: it must come within ``whole_reply_timeout`` (and ``max_stream_seconds``, when set), a bound on
        the generation rather than on a first token; the body (one event, so at most ``max_event_bytes``) within
        ``idle_timeout`` after it.
        """
        conn = self.connection
        loop = asyncio.get_running_loop()
        deadline = Deadline(loop)
        response: aiohttp.ClientResponse | None = None
        finished = False
        try:
            # The shorter bound applies, and its error says which it was.
            wait, timed_out = conn.whole_reply_timeout, self._whole_reply_timeout
            if conn.max_stream_seconds and conn.max_stream_seconds < wait:
                wait, timed_out = conn.max_stream_seconds, lambda: self._deadline_error(False, overran=True)
            deadline.begin(loop.time() + wait)
            response = await self._post(url, orjson.dumps(body()), headers, model, deadline, timed_out=timed_out)
            if on_headers is not None:
                on_headers(response.headers)
            deadline.begin(loop.time() + conn.idle_timeout)
            try:
                raw = await self._read_at_most(response, conn.max_event_bytes)
            except asyncio.CancelledError:
                if deadline.fired():
                    raise self._deadline_error(True, overran=False) from None
                raise
            except (aiohttp.ClientError, OSError) as exc:
                raise self._transport_error(exc, started=False) from exc
            finally:
                deadline.end()
            if len(raw) > conn.max_event_bytes:
                raise self.protocol_error(f"the reply is larger than {conn.max_event_bytes} bytes")
            finished = response.content.is_eof()
            yield read(raw)
        finally:
            deadline.stop()
            if response is not None:
                await self._close(response, reuse=finished)

    async def _post(
        self,
        url: str,
        payload: bytes,
        headers: Mapping[str, str],
        model: str,
        deadline: Deadline,
        *,
        timed_out: Callable[[], UpstreamTimeout] | None = None,
    ) -> aiohttp.ClientResponse:
        """Send the call and wait for a 2xx status line (until ``deadline``, which the caller began; then the
        error is ``timed_out()``, by default the first-token timeout's)."""
        try:
            response = await self.http.request(
                "POST",
                url,
                data=payload,
                # identity: a compressed event stream is buffered by whoever compresses it.
                headers={
                    "Content-Type": "application/json",
                    "Accept-Encoding": "identity",
                    **headers,
                    **upstream_trace_headers(),
                },
                timeout=self._timeouts,
                # A redirect is an error, as it was with httpx: never re-send the call (and its
                # credentials) to wherever a response points.
                allow_redirects=False,
            )
            try:
                if not 200 <= response.status < 300:
                    raise await self._status_error(response, model)
                if (coding := encoding(response)) is not None:
                    raise self.protocol_error(f"the reply is {coding}-encoded although we asked for identity")
            except BaseException:
                response.close()
                raise
            return response
        except asyncio.CancelledError:
            if deadline.fired():
                raise (timed_out or self._first_token_timeout)() from None
            raise
        except (aiohttp.ClientError, OSError) as exc:
            raise self._transport_error(exc, started=False) from exc
        finally:
            deadline.end()

    async def _close(self, response: aiohttp.ClientResponse, *, reuse: bool) -> None:
        """After a finished reply, give the connection back to the pool once its body has ended (waiting
        ``TAIL_GRACE`` at most for the end); in every other case close it, which cancels the generation."""
        try:
            content = response.content
            if reuse and not content.is_eof():
                async with asyncio.timeout(TAIL_GRACE):
                    tail = 0
                    while tail <= MAX_TAIL:
                        piece = await content.readany()
                        if not piece:
                            break
                        tail += len(piece)
        except (TimeoutError, aiohttp.ClientError, OSError):
            pass  # no clean end: the connection is closed below instead of reused
        finally:
            # Once the body ended aiohttp has already released the connection to the pool; otherwise
            # this closes it.
            response.close()

    # -- listings (probes) ------------------------------------------------------------------------

    async def get_json(self, url: str, *, headers: Mapping[str, str] | None = None) -> Any:
        """GET a JSON listing, bounded by the connect and first-token timeouts. Raises the error tree."""
        conn = self.connection
        try:
            async with asyncio.timeout(conn.connect_timeout + conn.first_token_timeout):
                async with self.http.get(
                    url,
                    headers={"Accept-Encoding": "identity", **(headers or {})},
                    timeout=self._timeouts,
                    allow_redirects=False,
                ) as response:
                    if not 200 <= response.status < 300:
                        raise await self._status_error(response, None)
                    if (coding := encoding(response)) is not None:
                        raise self.protocol_error(f"the listing is {coding}-encoded although we asked for identity")
                    body = await self._read_at_most(response, MAX_LISTING)
                    if len(body) > MAX_LISTING:
                        raise self.protocol_error(f"the listing is larger than {MAX_LISTING} bytes")
            return parse_json(body)
        except (aiohttp.ClientError, OSError) as exc:
            if isinstance(exc, TimeoutError) and not isinstance(exc, aiohttp.ClientError):
                # Our own deadline above (TimeoutError is an OSError).
                raise UpstreamTimeout(self.provider, "no answer from the listing in time") from None
            raise self._transport_error(exc, started=False) from exc
        except orjson.JSONDecodeError as exc:
            raise UpstreamProtocolError(self.provider, "the listing is not JSON") from exc

    async def refusal(
        self, url: str, body: Mapping[str, Any], *, headers: Mapping[str, str], model: str
    ) -> UpstreamError | None:
        """POST ``body`` once (not streamed): the error its status means, or None if it is accepted or unreachable.

        Another try (three in all) only when a pooled connection turns out dead: the server may have closed
        those failed streams left behind (llama.cpp's server does, after the empty reply that prompts this call)."""
        conn = self.connection
        for attempt in (1, 2, 3):
            try:
                async with asyncio.timeout(conn.connect_timeout + conn.first_token_timeout):
                    async with self.http.post(
                        url,
                        data=orjson.dumps(body),
                        headers={"Content-Type": "application/json", **headers},
                        timeout=self._timeouts,
                        allow_redirects=False,
                    ) as response:
                        if 200 <= response.status < 300:
                            return None
                        return await self._status_error(response, model)
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):  # closed, or reset by the peer
                if attempt == 3:
                    return None
            except (aiohttp.ClientError, OSError):
                return None
        return None

    async def probe_listing(
        self, url: str, entries: Callable[[Any], Iterable[ListedModel]], *, headers: Mapping[str, str] | None = None
    ) -> ProbeResult:
        """A probe from a free listing: GET ``url``; ``entries`` reads the JSON into ``(model id, context
        window or None)`` pairs. Reachable with the ids and windows found, or unreachable with the reason."""
        try:
            listing = await self.get_json(url, headers=headers)
            found = list(entries(listing))
        except UpstreamError as exc:
            return ProbeResult(reachable=False, detail=exc.message)
        except (KeyError, TypeError, AttributeError):
            return ProbeResult(reachable=True, detail="the model listing has an unexpected shape")
        if not all(isinstance(model, str) for model, _ in found):
            return ProbeResult(reachable=True, detail="the model listing has an unexpected shape")
        return ProbeResult(
            reachable=True,
            available_models=frozenset(model for model, _ in found),
            context_lengths={model: window for model, window in found if window is not None},
        )

    # -- errors ---------------------------------------------------------------------------------

    def clean(self, message: str) -> str:
        """Upstream-supplied text as a client may see it: credentials removed (whole, partial, or as a
        ``Bearer`` token an upstream reflects), then clipped. Every error built here passes through it."""
        return self._redactor.scrub(message)[:MAX_MESSAGE]

    def error_for(self, status: int, detail: ErrorDetail, *, model: str | None = None) -> UpstreamError:
        """The exception for an upstream failure with this status (HTTP, or meant by an in-stream error)."""
        name = self.provider
        status = detail.status or status
        message = self.clean(detail.message)
        cls: type[UpstreamError] = UpstreamError
        transient: bool | None = None
        if detail.flagged is not None:
            reasons = tuple(self.clean(reason)[:MAX_FLAGGED_REASON] for reason in detail.flagged[:MAX_FLAGGED_REASONS])
            named = f" ({', '.join(reasons)})" if reasons else ""
            text = f"the input was {detail.flagged_by}{named}; {message}"
            return UpstreamContentFlagged(name, self.clean(text), reasons=reasons, upstream_status=status)
        if detail.error is not None:
            cls, text = detail.error, f"the model '{model}': {message}" if model else f"the model: {message}"
        elif status == 401:
            # Never the upstream's text here: some echo (part of) the key they refused. The key is refused whichever
            # model it asks for (OpenRouter's "401: Invalid credentials (... disabled/invalid API key)"): every model
            # of the provider is blocked meanwhile (``account_block``).
            variables = " and ".join(self.connection.credentials)
            cls = UpstreamAuthError
            if variables:
                text = f"our credentials were refused (HTTP 401); check {variables}"
            else:  # an instance that sends no key (an Ollama or OpenAI-compatible server) reached one that wants one
                text = "the server asks for a key (HTTP 401) and none is sent: name its variable in api_key_env"
            detail = dataclasses.replace(detail, account_block=ALL_MODELS)
        elif status == 403:
            cls, text = UpstreamAuthError, f"access denied (HTTP 403): {message}"
        elif status == 402:
            # Out of credits (Hugging Face, OpenRouter): a retry will not cure it, the account owner must.
            text, transient = f"payment required (HTTP 402): {message}", False
        elif status == 429:
            cls, text = UpstreamRateLimited, f"rate limited: {message}"
        elif status == 503:
            cls, text = UpstreamUnavailable, f"unavailable: {message}"
        elif status in (400, 413, 422):
            cls, text = UpstreamBadRequest, f"rejected the request: {message}"
        elif status == 404:
            what = f"the model '{model}'" if model else "the resource"
            text = f"{what} is not available upstream: {message}"
        elif status == 408:
            cls, text = UpstreamTimeout, f"timed out upstream: {message}"
        else:
            # 5xx: the provider's own failure, which a retry may cure; any other 4xx: it will not.
            text, transient = f"failed with status {status}: {message}", status >= 500
        error = cls(name, text, upstream_status=status, retry_after=detail.retry_after, transient=transient)
        if detail.transient is not None:
            error.transient = detail.transient
        error.provider_wide = detail.provider_wide
        if detail.account_block is not None:
            # Every model it blocks would fail the same way: no retry, the block waits for the reset.
            error.account_block, error.transient = detail.account_block, False
        return error

    def protocol_error(
        self, message: str, *, quoted: str | bytes | None = None, transient: bool = False
    ) -> UpstreamProtocolError:
        """A broken reply: ``message`` says what is wrong, ``quoted`` is the upstream's part it is wrong in (an event,
        a line, the body). The error's message, which its caller and the access log read, quotes the first
        ``QUOTED_CHARACTERS`` of it, cleaned; its ``public_reason``, which ``/api/status`` shows anyone, only counts
        its bytes: a model's output may echo the prompt of the caller it answers."""
        if quoted is None:
            return UpstreamProtocolError(self.provider, self.clean(message), transient=transient)
        size = len(quoted if isinstance(quoted, bytes) else quoted.encode("utf-8", "replace"))
        text = quoted[:QUOTED_CHARACTERS]
        excerpt = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
        return UpstreamProtocolError(
            self.provider,
            self.clean(f"{message}: {excerpt}"),
            transient=transient,
            public_reason=f"{message} ({size} bytes)",
        )

    def _event_limit_error(self, max_event: int) -> UpstreamProtocolError:
        return self.protocol_error(
            f"the reply sent more than {max_event} bytes without completing an event "
            "(a line, event or record over the limit, or endless non-data bytes)"
        )

    def truncated(self) -> UpstreamProtocolError:
        return UpstreamProtocolError(self.provider, "the reply was truncated (the stream ended before it finished)")

    async def _status_error(self, response: aiohttp.ClientResponse, model: str | None) -> UpstreamError:
        status = response.status
        coding = encoding(response)
        if coding is None:
            detail = self._read_detail(status, await self._read_at_most(response, MAX_ERROR_BODY))
        else:
            detail = ErrorDetail(f"({coding}-encoded error body, not read)")
        error = self.error_for(status, detail, model=model)
        if error.retry_after is None or response.headers.get("retry-after"):
            # An explicit Retry-After wins over hints in the body.
            header = retry_after_header(response.headers)
            if header is not None:
                error.retry_after = header
        return error

    @staticmethod
    async def _read_at_most(response: aiohttp.ClientResponse, limit: int) -> bytes:
        """The body, or its first ``limit`` bytes and a little more (then the caller knows it is longer)."""
        pieces: list[bytes] = []
        size = 0
        while size <= limit:
            piece = await response.content.readany()
            if not piece:
                break
            pieces.append(piece)
            size += len(piece)
        return b"".join(pieces)

    def _read_detail(self, status: int, body: bytes) -> ErrorDetail:
        try:
            return self.read_error(status, body)
        except Exception:  # a body in no shape the provider documents: show it as text
            return ErrorDetail(body_message(body))

    def _first_token_timeout(self) -> UpstreamTimeout:
        return UpstreamTimeout(
            self.provider, f"no reply within {self.connection.first_token_timeout:g}s (first-token timeout)"
        )

    def _cut_short(self, parser: StreamParser, cut: UpstreamError, *, whole_possible: bool) -> list[StreamEvent]:
        """The stream stopped (a deadline, a dropped connection, a body its HTTP framing says is short): ``cut``,
        unless the reply is already whole and only what follows its finish is missing (a Chat Completions finish
        chunk came, the usage chunk or ``[DONE]`` did not): then the parser's end, as a plain close there gives
        (a silence or a short chunked body there was an error, a close a finish)."""
        if not whole_possible:
            raise cut
        try:
            events = parser.end()
        except UpstreamError:
            raise cut from cut.__cause__
        # Some parsers' end reports a cut as their ``failure`` (Ollama's): only an end with the Finish is whole.
        if parser.failure is not None or not any(isinstance(event, Finish) for event in events):
            raise cut
        return events

    def _whole_reply_timeout(self) -> UpstreamTimeout:
        seconds = self.connection.whole_reply_timeout
        return UpstreamTimeout(self.provider, f"no whole reply within {seconds:g}s (whole-reply timeout)")

    def _deadline_error(self, started: bool, *, overran: bool) -> UpstreamTimeout:
        """Which of the stream's deadlines passed: the total duration, the first token, or the idle gap."""
        conn = self.connection
        if overran:
            return UpstreamTimeout(
                self.provider, f"the reply exceeded the maximum stream duration of {conn.max_stream_seconds:g}s"
            )
        if not started:
            return self._first_token_timeout()
        return UpstreamTimeout(self.provider, f"the reply stalled: no data for {conn.idle_timeout:g}s mid-stream")

    def _transport_error(self, exc: BaseException, *, started: bool) -> UpstreamError:
        """An aiohttp or OS failure of the call, as the error tree says it. Each is ``connection_failed``: the
        connection failed, whichever model was called (our own deadlines are not here: ``_deadline_error``)."""
        name = self.provider
        kind = type(exc).__name__
        if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
            return UpstreamError(name, f"unreachable ({kind})", transient=True, connection_failed=True)
        if isinstance(exc, TimeoutError):  # aiohttp's other timeouts are TimeoutErrors too
            return UpstreamTimeout(name, f"timed out ({kind})", connection_failed=True)
        if isinstance(exc, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError | OSError):
            where = "mid-stream" if started else "before the reply started"
            return UpstreamProtocolError(
                name, f"the connection dropped {where} ({kind})", transient=True, connection_failed=True
            )
        return UpstreamError(name, f"request failed ({kind})", transient=True, connection_failed=True)


class HttpProvider(Provider):
    """A provider whose calls all go through one ``Upstream``; a subclass names its error-body reader."""

    def __init__(self, connection: Connection, http: aiohttp.ClientSession) -> None:
        super().__init__(connection, http)
        self.upstream = Upstream(connection.name or self.name, connection, http, self.read_error)

    @staticmethod
    @abstractmethod
    def read_error(status: int, body: bytes) -> ErrorDetail:
        """An upstream error body as an ``ErrorDetail`` (each provider's own error shape)."""
