"""Cloudflare Workers AI ``POST /accounts/{id}/ai/run/{model}``: bare SSE events until ``[DONE]`` (providers.md §2).

The stream has no envelope and no finish reason: ``{"response": "…"}`` fragments (``p`` is padding,
ignored), then a separate ``{"response": "", "usage": {…}}`` event on newer models, then
``data: [DONE]``. ``[DONE]`` means "stop", or "length" when the completion used exactly
``max_tokens`` (the only hint Cloudflare gives). Errors use the v4 envelope
``{"success": false, "errors": [{"code", "message"}]}``, and the code says more than the status
(§2.5). The input schema rejects unknown properties, so ``typical_p`` and ``truncate``, which it does
not have, are never sent (and reported as dropped).
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote

import orjson

from modelgate.chat import ChatRequest, Finish, StreamEvent, TextDelta, Usage
from modelgate.errors import UpstreamError
from modelgate.providers._http import (
    ErrorDetail,
    HttpProvider,
    ListedModel,
    Upstream,
    context_window,
    estimate_prompt_tokens,
    parse_json,
)
from modelgate.providers.base import ProbeResult
from modelgate.sse import SSEDecoder

if TYPE_CHECKING:
    from modelgate.catalogue import CatalogueModel

#: Workers AI's default when ``max_tokens`` is not sent (§2.2).
DEFAULT_MAX_TOKENS = 256

#: Error codes whose meaning the HTTP status does not carry: code → (status meant, retry may cure it).
_CODES: dict[int, tuple[int, bool | None]] = {
    10000: (401, None),  # authentication error (sometimes under 403)
    7003: (401, None),  # "could not route to /accounts/…": the account id is wrong
    3040: (429, True),  # out of capacity: retry with backoff
    3036: (429, False),  # daily free allocation used up: no retry helps until tomorrow
    5007: (404, None),  # no such model
    3042: (404, None),  # invalid model id
}


def _detail(errors: Any) -> ErrorDetail:
    first = errors[0] if errors else {}
    code = first.get("code")
    message = str(first.get("message") or "unknown error")
    if code is not None and not message.startswith(f"{code}:"):
        message = f"{code}: {message}"
    status, transient = _CODES.get(code, (None, None)) if isinstance(code, int) else (None, None)
    return ErrorDetail(message, status=status, transient=transient)


def read_error(status: int, body: bytes) -> ErrorDetail:
    return _detail(parse_json(body)["errors"])


def search_listing(listing: Any) -> Iterator[ListedModel]:
    """The models of a model search, each with its ``context_window`` property (a numeric string)."""
    for entry in listing["result"]:
        properties = {p.get("property_id"): p.get("value") for p in entry.get("properties") or ()}
        yield entry["name"], context_window(properties.get("context_window"))


def build_body(request: ChatRequest) -> dict[str, Any]:
    p = request.params
    fields = {
        "max_tokens": p.max_new_tokens,
        "temperature": p.temperature,
        "top_p": p.top_p,
        "repetition_penalty": p.repetition_penalty,
        "seed": p.seed,
        "presence_penalty": p.presence_penalty,
        "frequency_penalty": p.frequency_penalty,
    }
    body: dict[str, Any] = {
        "messages": [{"role": m.role, "content": m.content} for m in request.messages],
        "stream": True,
    }
    body.update((key, value) for key, value in fields.items() if value is not None)
    return body


class CloudflareStream:
    """Incremental parser of one Workers AI SSE stream."""

    __slots__ = ("_events", "_fragments", "_request", "_upstream", "_usage", "done", "failure")

    def __init__(self, upstream: Upstream, request: ChatRequest) -> None:
        self._upstream = upstream
        self._request = request
        self._events = SSEDecoder()
        self._usage: Usage | None = None
        self._fragments = 0
        self.done = False
        self.failure: UpstreamError | None = None

    def feed(self, chunk: bytes) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        try:
            for event in self._events.feed(chunk):
                data = event.data
                if data == "[DONE]":
                    out.append(self._final())
                    self.done = True
                    break
                try:
                    payload = orjson.loads(data)
                    if payload.get("success") is False:  # an envelope error inside the stream [unconfirmed]
                        raise self._upstream.error_for(500, _detail(payload.get("errors")))
                    text = payload.get("response")
                    if text and isinstance(text, str):
                        self._fragments += 1
                        out.append(TextDelta(text))
                    usage = payload.get("usage")
                    if usage:
                        self._usage = Usage(int(usage["prompt_tokens"]), int(usage["completion_tokens"]))
                except (orjson.JSONDecodeError, AttributeError, TypeError, KeyError, ValueError) as exc:
                    raise self._upstream.protocol_error(f"unreadable stream event: {data[:120]}") from exc
        except UpstreamError as exc:
            self.failure = exc  # raised once ``out`` is delivered
        return out

    def end(self) -> list[StreamEvent]:
        raise self._upstream.truncated()  # no [DONE]: Cloudflare's only end marker never came

    def _final(self) -> Finish:
        usage = self._usage
        if usage is None:
            # Older deployments report nothing. Workers AI streams one token per event, so the
            # count of non-empty fragments is the completion; the prompt is ≈ 4 characters a token.
            usage = Usage(estimate_prompt_tokens(self._request.messages), self._fragments, estimated=True)
        limit = self._request.params.max_new_tokens or DEFAULT_MAX_TOKENS
        return Finish("length" if usage.completion_tokens == limit else "stop", usage)


class Cloudflare(HttpProvider):
    name = "cloudflare"
    read_error = staticmethod(read_error)
    supported_params: ClassVar[frozenset[str]] = frozenset(
        {
            "max_new_tokens",
            "temperature",
            "top_p",
            "repetition_penalty",
            "seed",
            "presence_penalty",
            "frequency_penalty",
        }
    )

    def _account_url(self) -> str:
        account = quote(self.connection.credentials.get("CLOUDFLARE_ACCOUNT_ID", ""), safe="")
        return f"{self.connection.base_url}/accounts/{account}/ai"

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.connection.api_key('CLOUDFLARE_API_TOKEN')}"}

    def stream(self, model: CatalogueModel, request: ChatRequest) -> AsyncIterator[Sequence[StreamEvent]]:
        # The model goes into the path as is, "@" and slashes included (§2.1): never percent-encoded.
        return self.upstream.stream(
            f"{self._account_url()}/run/{model.upstream_model}",
            functools.partial(build_body, request),
            CloudflareStream(self.upstream, request),
            headers={**self._auth(), "Accept": "text/event-stream"},
            model=model.upstream_model,
        )

    async def probe(self, models: list[CatalogueModel]) -> ProbeResult | None:
        # The model search listing is free (no inference, no neurons). One search per model keeps
        # the answer exact whatever the listing's page size.
        found: set[str] = set()
        windows: dict[str, int] = {}
        for term in [m.upstream_model for m in models if m.provider == self.name] or [""]:
            result = await self.upstream.probe_listing(
                f"{self._account_url()}/models/search?search={quote(term, safe='')}",
                search_listing,
                headers=self._auth(),
            )
            if not result.reachable or result.available_models is None:
                return result
            found |= result.available_models
            windows.update(result.context_lengths)
        return ProbeResult(reachable=True, available_models=frozenset(found), context_lengths=windows)
