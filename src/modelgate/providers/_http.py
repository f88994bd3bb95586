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

Timeouts (there is deliberately no total deadline — a healthy long stream may run for minutes):

* ``connect_timeout``: the TCP/TLS connect (aiohttp's own connect timeout).
* ``first_token_timeout``: one deadline from sending the request until the parser produced its first
  event. It covers the response headers and every byte before the first token, so a keep-alive
  comment (TGI writes ``:`` every 15 s while a request is queued) cannot keep a stuck request alive.
* ``idle_timeout``: once events flow, the longest wait for the next chunk.

Both deadlines are one ``Deadline`` per stream (``modelgate/deadline.py``: one timer, re-armed lazily),
not a timeout object per chunk. Closing the event generator before the reply finished (the client went away) closes the
upstream connection, which cancels the generation upstream; a reply that finished returns its
connection to the pool.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import ssl
import time
from abc import abstractmethod
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import certifi
import orjson
from aiohttp.http_exceptions import ContentEncodingError, DecompressSizeError

from modelgate.chat import Message, StreamEvent
from modelgate.deadline import Deadline
from modelgate.errors import (
    BadRequest,
    UpstreamAuthError,
    UpstreamBadRequest,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from modelgate.providers.base import Connection, ProbeResult, Provider
from modelgate.templates import render_prompt

#: Upstream error messages are clipped to this many characters before they reach a client or a log.
MAX_MESSAGE = 500
#: How much of a non-2xx body is read to find the provider's message.
MAX_ERROR_BODY = 64 * 1024
#: After the ``Finish``, how long the end of the body (the chunked terminator, usually in the same read
#: as the last event) may take, and how many bytes of it are read, so the connection can be reused.
TAIL_GRACE = 0.25
MAX_TAIL = 64 * 1024


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
    )


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


ErrorReader = Callable[[int, bytes], ErrorDetail]


def estimate_tokens(text: str) -> int:
    """A token count for when the upstream reports none (the result is marked ``estimated``).

    About four characters per token: the rule of thumb OpenAI and Hugging Face document for English
    text with BPE tokenizers. It is a display figure for usage, never used to enforce limits.
    """
    return math.ceil(len(text) / 4)


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


def retry_after_header(headers: Mapping[str, str]) -> float | None:
    """``Retry-After`` as seconds (RFC 9110: delay-seconds or an HTTP-date)."""
    value = headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def seconds_until_epoch_ms(value: object) -> float | None:
    """OpenRouter's ``X-RateLimit-Reset`` (epoch **milliseconds**) as seconds from now."""
    try:
        reset_ms = float(str(value))
    except ValueError:
        return None
    return max(0.0, reset_ms / 1000 - time.time())


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
        self._secrets = tuple(v for v in connection.credentials.values() if len(v) >= 4)

    # -- streaming ------------------------------------------------------------------------------

    async def stream(
        self,
        url: str,
        body: Callable[[], Mapping[str, Any]],
        parser: StreamParser,
        *,
        headers: Mapping[str, str],
        model: str,
    ) -> AsyncIterator[list[StreamEvent]]:
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
            payload = orjson.dumps(body())
            deadline.begin(first_deadline)
            try:
                response = await self.http.request(
                    "POST",
                    url,
                    data=payload,
                    # identity: a compressed event stream is buffered by whoever compresses it.
                    headers={"Content-Type": "application/json", "Accept-Encoding": "identity", **headers},
                    timeout=self._timeouts,
                    # A redirect is an error, as it was with httpx: never re-send the call (and its
                    # credentials) to wherever a response points.
                    allow_redirects=False,
                )
                if not 200 <= response.status < 300:
                    raise await self._status_error(response, model)
            except asyncio.CancelledError:
                if deadline.fired():
                    raise self._first_token_timeout() from None
                raise
            except (aiohttp.ClientError, OSError) as exc:
                raise self._transport_error(exc, started=False) from exc
            finally:
                deadline.end()

            read = response.content.readany
            idle = conn.idle_timeout
            started = False
            while True:
                if started:
                    deadline.begin_in(idle)
                else:
                    deadline.begin(first_deadline)
                try:
                    chunk = await read()
                except asyncio.CancelledError:
                    if deadline.fired():
                        if not started:
                            raise self._first_token_timeout() from None
                        raise UpstreamTimeout(
                            self.provider, f"the reply stalled: no data for {idle:g}s mid-stream"
                        ) from None
                    raise
                except (aiohttp.ClientError, OSError) as exc:
                    raise self._transport_error(exc, started=started) from exc
                finally:
                    deadline.end()
                # An empty chunk: the body ended.
                events = parser.feed(chunk) if chunk else parser.end()
                if events:
                    started = True
                    finished = parser.done or not chunk
                    yield events
                if parser.failure is not None:
                    raise parser.failure
                if finished or not chunk:
                    return
        finally:
            deadline.stop()
            if response is not None:
                await self._close(response, reuse=finished)

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
                    url, headers=dict(headers or {}), timeout=self._timeouts, allow_redirects=False
                ) as response:
                    body = await response.read()
                    if not 200 <= response.status < 300:
                        raise self.error_for(response.status, self._read_detail(response.status, body))
            return parse_json(body)
        except (aiohttp.ClientError, OSError) as exc:
            if isinstance(exc, TimeoutError) and not isinstance(exc, aiohttp.ClientError):
                # Our own deadline above (TimeoutError is an OSError).
                raise UpstreamTimeout(self.provider, "no answer from the listing in time") from None
            raise self._transport_error(exc, started=False) from exc
        except orjson.JSONDecodeError as exc:
            raise UpstreamProtocolError(self.provider, "the listing is not JSON") from exc

    async def probe_listing(self, url: str, names: Callable[[Any], Iterable[str]], **kw: Any) -> ProbeResult:
        """A probe from a free listing: reachable + the model ids ``names`` finds in it."""
        try:
            listing = await self.get_json(url, **kw)
            found = frozenset(names(listing))
        except UpstreamError as exc:
            return ProbeResult(reachable=False, detail=exc.message)
        except (KeyError, TypeError, AttributeError):
            return ProbeResult(reachable=True, detail="the model listing has an unexpected shape")
        return ProbeResult(reachable=True, available_models=found)

    # -- errors ---------------------------------------------------------------------------------

    def clean(self, message: str) -> str:
        """An upstream-supplied message, clipped, with any credential value it echoes removed."""
        for secret in self._secrets:
            if secret in message:
                message = message.replace(secret, "[redacted]")
        return message[:MAX_MESSAGE]

    def error_for(self, status: int, detail: ErrorDetail, *, model: str | None = None) -> UpstreamError:
        """The exception for an upstream failure with this status (HTTP, or meant by an in-stream error)."""
        name = self.provider
        status = detail.status or status
        message = self.clean(detail.message)
        cls: type[UpstreamError] = UpstreamError
        transient: bool | None = None
        if status == 401:
            # Never the upstream's text here: some echo (part of) the key they refused.
            variables = " and ".join(self.connection.credentials) or "its credentials"
            cls, text = UpstreamAuthError, f"our credentials were refused (HTTP 401); check {variables}"
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
        return error

    def protocol_error(self, message: str, *, transient: bool = False) -> UpstreamProtocolError:
        return UpstreamProtocolError(self.provider, message, transient=transient)

    def truncated(self) -> UpstreamProtocolError:
        return UpstreamProtocolError(self.provider, "the reply was truncated (the stream ended before it finished)")

    async def _status_error(self, response: aiohttp.ClientResponse, model: str) -> UpstreamError:
        body = b""
        while len(body) < MAX_ERROR_BODY:
            piece = await response.content.readany()
            if not piece:
                break
            body += piece
        status = response.status
        error = self.error_for(status, self._read_detail(status, body), model=model)
        if error.retry_after is None or response.headers.get("retry-after"):
            # An explicit Retry-After wins over hints in the body.
            header = retry_after_header(response.headers)
            if header is not None:
                error.retry_after = header
        return error

    def _read_detail(self, status: int, body: bytes) -> ErrorDetail:
        try:
            return self.read_error(status, body)
        except Exception:  # a body in no shape the provider documents: show it as text
            return ErrorDetail(body_message(body))

    def _first_token_timeout(self) -> UpstreamTimeout:
        return UpstreamTimeout(
            self.provider, f"no reply within {self.connection.first_token_timeout:g}s (first-token timeout)"
        )

    def _transport_error(self, exc: BaseException, *, started: bool) -> UpstreamError:
        """An aiohttp or OS failure of the call, as the error tree says it."""
        name = self.provider
        kind = type(exc).__name__
        if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
            return UpstreamError(name, f"unreachable ({kind})", transient=True)
        if isinstance(exc, TimeoutError):  # aiohttp's other timeouts are TimeoutErrors too
            return UpstreamTimeout(name, f"timed out ({kind})")
        if isinstance(exc, aiohttp.ClientPayloadError) and isinstance(
            exc.__cause__, ContentEncodingError | DecompressSizeError
        ):
            return UpstreamProtocolError(name, f"undecodable reply body ({kind})")
        if isinstance(exc, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError | OSError):
            where = "mid-stream" if started else "before the reply started"
            return UpstreamProtocolError(name, f"the connection dropped {where} ({kind})", transient=True)
        return UpstreamError(name, f"request failed ({kind})", transient=True)


class HttpProvider(Provider):
    """A provider whose calls all go through one ``Upstream``; a subclass names its error-body reader."""

    def __init__(self, connection: Connection, http: aiohttp.ClientSession) -> None:
        super().__init__(connection, http)
        self.upstream = Upstream(connection.name or self.name, connection, http, self.read_error)

    @staticmethod
    @abstractmethod
    def read_error(status: int, body: bytes) -> ErrorDetail:
        """An upstream error body as an ``ErrorDetail`` (each provider's own error shape)."""
