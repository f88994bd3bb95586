"""Python clients for a modelgate service: the catalogue and streaming chat.

``ModelgateClient`` (sync) and ``AsyncModelgateClient`` mirror each other::

    with ModelgateClient("http://127.0.0.1:8000") as client:
        catalogue = client.get_models()              # the seed's ModelsResponse, validated
        client.endpoints("openrouter")               # ["/api/ai/openrouter/deepseek-chat/chat", ...]
        for chunk in client.chat("qwen/Qwen2.5-72B-Instruct", "Hello"):
            print(chunk, end="")

Chat reads the Vercel AI SDK data stream v1 (one ``<code>:<JSON>`` part per line; see
``modelgate.encoders.data``): ``0:`` text is yielded, ``g:`` reasoning and other parts are skipped,
``3:`` raises ``ModelgateStreamError``, ``d:`` finishes. Lines are split on ``\\n`` only: the JSON may
hold U+2028 and friends, which ``str.splitlines`` (and so ``httpx.Response.iter_lines``) would split on.
A non-2xx answer raises ``ModelgateAPIError`` with the seed's ``statusCode``/``statusMessage``; a service that
cannot be reached (refused, a name that does not resolve, a timeout, a connection broken before the answer is whole)
``ModelgateConnectionError``, httpx's exception as its ``__cause__``, its text cleaned of the API key and of a
password in the URL. Every failure is a ``ModelgateClientError`` (or a ``ValueError`` for a malformed argument).
What the client reads from a server is bounded like what the server reads from an upstream: a line of
the stream over ``MAX_LINE_BYTES``, an error body over ``MAX_ERROR_BYTES`` and a ``GET /models`` document
over ``MAX_DOCUMENT_BYTES`` (counted decoded: a gzip bomb stops there) stop the read (a broken or hostile
server cannot make the caller buffer without end).
Depends only on the leaves (``schema``), never on the server modules.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import httpx
from pydantic import ValidationError

from modelgate.redact import Redactor, shown_url, url_secrets
from modelgate.schema import ModelsResponse

DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=10.0)
MODELS_PATH = "/api/models"
#: The longest stream line the client buffers: far above any part modelgate sends (one token's text).
MAX_LINE_BYTES = 8 * 1024 * 1024
#: How much of an error body is read: modelgate's errors are a few hundred bytes.
MAX_ERROR_BYTES = 64 * 1024
#: The longest whole answer read (decoded): a catalogue of thousands of models is a few megabytes.
MAX_DOCUMENT_BYTES = 32 * 1024 * 1024

Messages = Sequence[Mapping[str, Any]] | str


class ModelgateClientError(Exception):
    """Base of the errors the client raises."""


class ModelgateAPIError(ModelgateClientError):
    """The service answered with a non-2xx status. Carries the seed's error fields."""

    def __init__(self, status_code: int, status_message: str, data: Any = None) -> None:
        super().__init__(f"{status_code} {status_message}")
        self.status_code = status_code
        self.statusCode = status_code  # the seed's wire name
        self.statusMessage = status_message  # the seed's wire name
        self.data = data

    @classmethod
    def from_response(cls, response: httpx.Response, content: bytes | None = None) -> ModelgateAPIError:
        """Read the seed shape (or OpenAI's ``{"error": {...}}``) from the first ``MAX_ERROR_BYTES`` of
        ``content`` (default: the whole, already read body); fall back to the reason phrase."""
        content = (response.content if content is None else content)[:MAX_ERROR_BYTES]
        message = response.reason_phrase or "HTTP error"
        data: Any = None
        try:
            body = json.loads(content)
        except ValueError:
            body = None
            text = content.decode("utf-8", "replace").strip()
            if text:
                message = text[:500]
        if isinstance(body, dict):
            if isinstance(body.get("statusMessage"), str):
                message = body["statusMessage"]
                data = body.get("data")
            elif isinstance(body.get("error"), dict) and isinstance(body["error"].get("message"), str):
                message = body["error"]["message"]
                data = body["error"]
        # One line, whatever the server wrote (an HTML page, a message with line breaks).
        return cls(response.status_code, " ".join(message.split()) or message, data)


class ModelgateConnectionError(ModelgateClientError):
    """The service could not be reached, or the connection failed before its answer was whole: refused, a name that
    does not resolve, a timeout, a cut. httpx's exception is the ``__cause__``. A reply stream cut after it began is a
    ``ModelgateStreamError``."""


class ModelgateStreamError(ModelgateClientError):
    """The reply stream reported an error part (``3:``) or ended without finishing."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# --- the data stream v1 ---------------------------------------------------------------------------


class DataStreamDecoder:
    """Incremental ``<code>:<JSON>\\n`` splitter: bytes in, ``(code, value)`` parts out."""

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self._buffer = b""
        self._max_line_bytes = max_line_bytes

    def feed(self, chunk: bytes) -> list[tuple[str, Any]]:
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        if len(self._buffer) > self._max_line_bytes or any(len(line) > self._max_line_bytes for line in lines):
            raise ModelgateStreamError(f"a data stream line is longer than {self._max_line_bytes} bytes")
        return [part for line in lines if (part := self._parse(line)) is not None]

    def flush(self) -> list[tuple[str, Any]]:
        line, self._buffer = self._buffer, b""
        part = self._parse(line)
        return [] if part is None else [part]

    @staticmethod
    def _parse(line: bytes) -> tuple[str, Any] | None:
        line = line.rstrip(b"\r")
        if not line:
            return None
        code, sep, payload = line.partition(b":")
        if not sep:
            raise ModelgateStreamError(f"malformed data stream line: {line[:80]!r}")
        try:
            return code.decode("ascii"), json.loads(payload)
        except (UnicodeDecodeError, ValueError) as exc:
            raise ModelgateStreamError(f"malformed data stream line: {line[:80]!r}") from exc


class _ChatReply:
    """What the parts of one reply mean: text out, errors raised, the finish remembered."""

    def __init__(self) -> None:
        self.finished = False

    def texts(self, parts: list[tuple[str, Any]]) -> Iterator[str]:
        # A generator, so the text before an error part in the same chunk still reaches the caller.
        for code, value in parts:
            if self.finished and code in ("0", "3"):
                raise ModelgateStreamError("the reply stream went on after its finish part")
            if code == "0":
                if not isinstance(value, str):  # "0:null" was yielded as the text "None"
                    raise ModelgateStreamError(f"a text part that is not text: {_clip(value)}")
                yield value
            elif code == "3":
                raise ModelgateStreamError(value if isinstance(value, str) else f"an error part: {_clip(value)}")
            elif code == "d":
                self.finished = True

    def end(self) -> None:
        if not self.finished:
            raise ModelgateStreamError("the reply stream ended without a finish part")


# --- shared request building ----------------------------------------------------------------------


def _messages(messages: Messages) -> list[dict[str, Any]]:
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    return [dict(m) for m in messages]


def _clip(value: Any) -> str:
    return json.dumps(value)[:200]


def _chat_path(model: str) -> str:
    publisher, sep, name = model.partition("/")
    if not sep or not publisher or not name or "/" in name or {publisher, name} & {".", ".."}:
        raise ValueError(f"model must be 'publisher/name', got {model!r}")
    # Each part one quoted segment: "../v1" or "a/b#x" sent as written reached another path with the key.
    return f"/api/ai/{quote(publisher, safe='')}/{quote(name, safe='')}/chat"


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _endpoints(models: ModelsResponse, provider: str) -> list[str]:
    if provider not in models.endpoints:
        known = ", ".join(models.endpoints)
        raise ValueError(f"unknown provider {provider!r} (known: {known})")
    return list(models.endpoints[provider])  # type: ignore[literal-required]


def _models(response: httpx.Response, body: bytes) -> ModelsResponse:
    if not response.is_success:
        raise ModelgateAPIError.from_response(response, body)
    try:
        return ModelsResponse.model_validate_json(document(body))
    except ValidationError as exc:  # a pydantic error escaped the client's own errors
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "the body"
        raise ModelgateClientError(f"the answer is not a GET /models document: {where}: {first['msg']}") from None


def document(body: bytes) -> bytes:
    """``body`` read by ``read_up_to(…, MAX_DOCUMENT_BYTES)``, or an error saying it is longer."""
    if len(body) > MAX_DOCUMENT_BYTES:
        raise ModelgateClientError(f"the answer is longer than {MAX_DOCUMENT_BYTES} bytes")
    return body


def read_up_to(chunks: Iterator[bytes], limit: int) -> bytes:
    """The body, read until it is whole or longer than ``limit`` (then the read stops: more than ``limit``
    bytes come back, the rest is never read)."""
    parts: list[bytes] = []
    size = 0
    for chunk in chunks:
        parts.append(chunk)
        size += len(chunk)
        if size > limit:
            break
    return b"".join(parts)


async def async_read_up_to(chunks: AsyncIterator[bytes], limit: int) -> bytes:
    """``read_up_to`` of an async body."""
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        parts.append(chunk)
        size += len(chunk)
        if size > limit:
            break
    return b"".join(parts)


class _Base:
    def __init__(self, base_url: str, api_key: str | None, timeout: float | httpx.Timeout | None) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = DEFAULT_TIMEOUT if timeout is None else httpx.Timeout(timeout)
        self._headers = _headers(api_key)
        # httpx's texts quote what they were given; the key or a URL's password must not reach a message.
        self._redactor = Redactor([*([api_key] if api_key else []), *url_secrets(self.base_url)])

    def _url(self, path: str) -> str:
        return self.base_url + path

    def _describe(self, exc: httpx.HTTPError) -> str:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return self._redactor.scrub(text)

    @contextmanager
    def _transport(self) -> Iterator[None]:
        """httpx's errors inside as ``ModelgateConnectionError`` (``ModelgateStreamError`` passes through)."""
        try:
            yield
        except httpx.HTTPError as exc:
            where = shown_url(self.base_url)
            raise ModelgateConnectionError(f"cannot reach {where}: {self._describe(exc)}") from exc

    def _cut(self, exc: httpx.HTTPError) -> ModelgateStreamError:
        return ModelgateStreamError(f"the reply stream was cut: {self._describe(exc)}")

    def _chat_request(self, model: str, messages: Messages, params: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "url": self._url(_chat_path(model)),
            "params": {"protocol": "data"},
            "json": {"messages": _messages(messages), **params},
            "headers": self._headers,
            "timeout": self.timeout,
        }


# --- sync -----------------------------------------------------------------------------------------


class ModelgateClient(_Base):
    """A blocking client. Pass ``http_client`` to reuse your own ``httpx.Client`` (it is not closed here)."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout | None = None,
        http_client: httpx.Client | None = None,
    ) -> None:
        super().__init__(base_url, api_key, timeout)
        self._owns_http = http_client is None
        self._http = http_client if http_client is not None else httpx.Client()

    def get_models(self) -> ModelsResponse:
        request = self._http.stream("GET", self._url(MODELS_PATH), headers=self._headers, timeout=self.timeout)
        with self._transport(), request as response:
            body = read_up_to(response.iter_bytes(), MAX_DOCUMENT_BYTES)
        return _models(response, body)

    def endpoints(self, provider: str) -> list[str]:
        return _endpoints(self.get_models(), provider)

    def chat(self, model: str, messages: Messages, **params: Any) -> Iterator[str]:
        """Stream the reply of ``model`` ("publisher/name") as text chunks."""
        request = self._chat_request(model, messages, params)
        decoder, reply = DataStreamDecoder(), _ChatReply()
        with self._transport(), self._http.stream("POST", **request) as response:
            if not response.is_success:
                raise ModelgateAPIError.from_response(response, read_up_to(response.iter_bytes(), MAX_ERROR_BYTES))
            try:
                for chunk in response.iter_bytes():
                    yield from reply.texts(decoder.feed(chunk))
            except httpx.TransportError as exc:  # the reply began: the stream broke, not the connection attempt
                raise self._cut(exc) from exc
            yield from reply.texts(decoder.flush())
        reply.end()

    def chat_text(self, model: str, messages: Messages, **params: Any) -> str:
        return "".join(self.chat(model, messages, **params))

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


# --- async ----------------------------------------------------------------------------------------


class AsyncModelgateClient(_Base):
    """The asyncio twin of ``ModelgateClient``; ``http_client`` is an ``httpx.AsyncClient`` you own."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout | None = None,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(base_url, api_key, timeout)
        self._owns_http = http_client is None
        self._http = http_client if http_client is not None else httpx.AsyncClient()

    async def get_models(self) -> ModelsResponse:
        request = self._http.stream("GET", self._url(MODELS_PATH), headers=self._headers, timeout=self.timeout)
        with self._transport():
            async with request as response:
                body = await async_read_up_to(response.aiter_bytes(), MAX_DOCUMENT_BYTES)
        return _models(response, body)

    async def endpoints(self, provider: str) -> list[str]:
        return _endpoints(await self.get_models(), provider)

    async def chat(self, model: str, messages: Messages, **params: Any) -> AsyncIterator[str]:
        """Stream the reply of ``model`` ("publisher/name") as text chunks."""
        request = self._chat_request(model, messages, params)
        decoder, reply = DataStreamDecoder(), _ChatReply()
        with self._transport():
            async with self._http.stream("POST", **request) as response:
                if not response.is_success:
                    error_body = await async_read_up_to(response.aiter_bytes(), MAX_ERROR_BYTES)
                    raise ModelgateAPIError.from_response(response, error_body)
                try:
                    async for chunk in response.aiter_bytes():
                        for text in reply.texts(decoder.feed(chunk)):
                            yield text
                except httpx.TransportError as exc:
                    raise self._cut(exc) from exc
                for text in reply.texts(decoder.flush()):
                    yield text
        reply.end()

    async def chat_text(self, model: str, messages: Messages, **params: Any) -> str:
        return "".join([chunk async for chunk in self.chat(model, messages, **params)])

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
