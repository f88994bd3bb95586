"""Upstream HTTP plumbing shared by the adapters, so each adapter only knows its own protocol.

An adapter describes one call (URL, JSON body, headers) and supplies two protocol pieces:

* a ``StreamParser``: a synchronous, incremental parser fed raw body chunks, returning the
  ``StreamEvent``s they complete (it raises ``UpstreamError``s for errors reported *inside* the stream);
* an ``ErrorReader``: turns a non-2xx body into an ``ErrorDetail`` (the provider's message, and any
  retry hint or status correction its body carries).

Everything else lives here, once: sending, the three timeouts, the status → exception mapping, and
the translation of every httpx exception into the ``modelgate.errors`` tree (``raise ... from exc``),
before the response *and* while its body is iterated.

Timeouts (there is deliberately no total deadline — a healthy long stream may run for minutes):

* ``connect_timeout``: the TCP/TLS connect (httpx's own connect timeout).
* ``first_token_timeout``: one deadline from sending the request until the parser produced its first
  event. It covers the response headers and every byte before the first token, so a keep-alive
  comment (TGI writes ``:`` every 15 s while a request is queued) cannot keep a stuck request alive.
* ``idle_timeout``: once events flow, the longest wait for the next chunk.

Closing the event generator (the client went away) closes the upstream response, which closes the
connection, which cancels the generation upstream.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, cast

import httpx
import orjson

from modelgate.chat import Message, StreamEvent
from modelgate.errors import (
    UpstreamAuthError,
    UpstreamBadRequest,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from modelgate.providers.base import Connection, ProbeResult

#: Upstream error messages are clipped to this many characters before they reach a client or a log.
MAX_MESSAGE = 500
#: How much of a non-2xx body is read to find the provider's message.
MAX_ERROR_BODY = 64 * 1024


class StreamParser(Protocol):
    """One provider's stream protocol, fed incrementally. One instance per call."""

    #: True once the parser has emitted the ``Finish``; the body is not read further.
    done: bool

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


def estimate_prompt_tokens(messages: Iterable[Message]) -> int:
    return estimate_tokens("".join(message.content for message in messages))


def parse_json(data: str | bytes) -> Any:
    """``orjson.loads`` whose failure is the JSON layer's, to be mapped by the caller."""
    return orjson.loads(data)


def body_message(body: bytes) -> str:
    """A short readable excerpt of a body that is not the provider's JSON error shape."""
    text = body.decode("utf-8", "replace").strip()
    return text[:MAX_MESSAGE] if text else "(empty body)"


def retry_after_header(headers: httpx.Headers) -> float | None:
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
        http: httpx.AsyncClient,
        read_error: ErrorReader,
    ) -> None:
        self.provider = provider
        self.connection = connection
        self.http = http
        self.read_error = read_error
        # httpx bounds the connect and the request upload; reads are bounded by the first-token and
        # idle deadlines in ``stream`` instead (httpx has one read timeout, a stream needs two).
        self._timeouts = httpx.Timeout(
            connect=connection.connect_timeout,
            read=None,
            write=connection.idle_timeout,
            pool=connection.connect_timeout,
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
    ) -> AsyncIterator[StreamEvent]:
        """POST ``body()`` to ``url`` and yield what ``parser`` makes of the streamed reply.

        ``body`` is built on the first iteration, so an input the adapter refuses (a chat template's
        ``BadRequest``) is raised by the iterator like every other failure, not by the call.
        """
        conn = self.connection
        loop = asyncio.get_running_loop()
        deadline = loop.time() + conn.first_token_timeout
        request = self.http.build_request(
            "POST",
            url,
            content=orjson.dumps(body()),
            # identity: a compressed event stream is buffered by whoever compresses it.
            headers={"Content-Type": "application/json", "Accept-Encoding": "identity", **headers},
            timeout=self._timeouts,
        )
        response: httpx.Response | None = None
        chunks: AsyncGenerator[bytes, None] | None = None
        started = False
        try:
            try:
                async with asyncio.timeout_at(deadline):
                    response = await self.http.send(request, stream=True)
                    if not response.is_success:
                        raise await self._status_error(response, model)
            except TimeoutError:
                raise self._first_token_timeout() from None
            except httpx.HTTPError as exc:
                raise self._transport_error(exc, started=False) from exc

            # aiter_raw skips httpx's decoding layer; only an upstream that ignored our
            # Accept-Encoding: identity pays for the decoder.
            encoded = response.headers.get("content-encoding", "identity") != "identity"
            chunks = cast(AsyncGenerator[bytes, None], response.aiter_bytes() if encoded else response.aiter_raw())
            idle = conn.idle_timeout
            while True:
                try:
                    async with asyncio.timeout_at(deadline if not started else loop.time() + idle):
                        chunk = await anext(chunks, None)
                except TimeoutError:
                    if not started:
                        raise self._first_token_timeout() from None
                    raise UpstreamTimeout(
                        self.provider, f"the reply stalled: no data for {idle:g}s mid-stream"
                    ) from None
                except httpx.HTTPError as exc:
                    raise self._transport_error(exc, started=started) from exc
                if chunk is None:
                    for event in parser.end():
                        yield event
                    return
                events = parser.feed(chunk)
                if events:
                    started = True
                    for event in events:
                        yield event
                    if parser.done:
                        return
        finally:
            if chunks is not None:
                await chunks.aclose()
            if response is not None:
                await response.aclose()

    # -- listings (probes) ------------------------------------------------------------------------

    async def get_json(self, url: str, *, headers: Mapping[str, str] | None = None) -> Any:
        """GET a JSON listing, bounded by the connect and first-token timeouts. Raises the error tree."""
        conn = self.connection
        try:
            async with asyncio.timeout(conn.connect_timeout + conn.first_token_timeout):
                response = await self.http.get(url, headers=dict(headers or {}), timeout=self._timeouts)
                if not response.is_success:
                    raise self.error_for(response.status_code, self._read_detail(response, response.content))
                return parse_json(response.content)
        except TimeoutError:
            raise UpstreamTimeout(self.provider, "no answer from the listing in time") from None
        except httpx.HTTPError as exc:
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
            text, transient = f"failed (HTTP {status}): {message}", status >= 500
        error = cls(name, text, upstream_status=status, retry_after=detail.retry_after, transient=transient)
        if detail.transient is not None:
            error.transient = detail.transient
        return error

    def protocol_error(self, message: str, *, transient: bool = False) -> UpstreamProtocolError:
        return UpstreamProtocolError(self.provider, message, transient=transient)

    def truncated(self) -> UpstreamProtocolError:
        return UpstreamProtocolError(self.provider, "the reply was truncated (the stream ended before it finished)")

    async def _status_error(self, response: httpx.Response, model: str) -> UpstreamError:
        body = b""
        async for piece in response.aiter_bytes():
            body += piece
            if len(body) >= MAX_ERROR_BODY:
                break
        error = self.error_for(response.status_code, self._read_detail(response, body), model=model)
        if error.retry_after is None or response.headers.get("retry-after"):
            # An explicit Retry-After wins over hints in the body.
            header = retry_after_header(response.headers)
            if header is not None:
                error.retry_after = header
        return error

    def _read_detail(self, response: httpx.Response, body: bytes) -> ErrorDetail:
        try:
            return self.read_error(response.status_code, body)
        except Exception:  # a body in no shape the provider documents: show it as text
            return ErrorDetail(body_message(body))

    def _first_token_timeout(self) -> UpstreamTimeout:
        return UpstreamTimeout(
            self.provider, f"no reply within {self.connection.first_token_timeout:g}s (first-token timeout)"
        )

    def _transport_error(self, exc: httpx.HTTPError, *, started: bool) -> UpstreamError:
        name = self.provider
        kind = type(exc).__name__
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            return UpstreamError(name, f"unreachable ({kind})", transient=True)
        if isinstance(exc, httpx.TimeoutException):
            return UpstreamTimeout(name, f"timed out ({kind})")
        if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError | httpx.CloseError):
            where = "mid-stream" if started else "before the reply started"
            return UpstreamProtocolError(name, f"the connection dropped {where} ({kind})", transient=True)
        if isinstance(exc, httpx.DecodingError):
            return UpstreamProtocolError(name, f"undecodable reply body ({kind})")
        return UpstreamError(name, f"request failed ({kind})", transient=True)
