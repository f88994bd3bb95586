"""Every error modelgate raises, with the HTTP status it maps to at the boundary.

::

    ModelgateError                      500  base; `status`, `message`, `data`
    ├── CatalogueError                       invalid catalogue file (never served; refuses to start)
    ├── BadRequest                      400  malformed or out-of-range input; `data` says what
    ├── Unauthorized                    401  missing or unknown API key
    ├── Forbidden                       403  the key may not use this model
    ├── NotFound                        404  unknown path or model
    ├── MethodNotAllowed                405  carries `allow`
    ├── PayloadTooLarge                 413
    ├── RateLimited                     429  our own limits; carries `retry_after`
    ├── ProviderNotConfigured           503  credentials missing; names the variable to set
    └── UpstreamError                   502  the provider failed; carries `provider`
        ├── UpstreamAuthError           502  the provider refused our credentials
        ├── UpstreamAgreementRequired   403  the model's licence must be accepted first; the message says how
        ├── UpstreamRateLimited         429  the provider said 429; carries `retry_after`
        ├── UpstreamUnavailable         503  the provider said 503 / overloaded; `retry_after`
        ├── UpstreamBadRequest          400  the provider rejected the request as invalid
        │   └── UpstreamContentFlagged  400  its content filter refused the input; carries `reasons`
        ├── UpstreamTimeout             504  no first byte (or no next chunk) in time
        └── UpstreamProtocolError       502  the provider broke its own protocol (truncated stream…)

Foreign exceptions (aiohttp, OS errors, json) are translated into this tree in one place per layer, with
``raise ... from exc``; routes never see them. ``transient`` marks what a retry may cure. ``account_block`` marks an
upstream's refusal of the whole account (``ALL_MODELS``, or a pool of its models). ``public_reason`` is what a
view anyone may read (``/api/status``) shows of a failure: the message, less the upstream reply bytes an
``UpstreamError`` quotes for its caller.
"""

from __future__ import annotations

import math
from typing import Any


class ModelgateError(Exception):
    status: int = 500
    transient: bool = False
    #: OpenAI's ``error.code`` under ``/v1`` when it says more than the status does (``error_bodies.openai_error``).
    code: str | None = None

    def __init__(self, message: str, *, data: Any = None, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.data = data
        if status is not None:
            self.status = status

    @property
    def headers(self) -> dict[str, str]:
        return {}

    @property
    def public_reason(self) -> str:
        return self.message


#: What ``str.splitlines`` splits on, written as escapes inside one problem's line.
_LINE_BREAKS = {ord(c): repr(c)[1:-1] for c in "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"}


class CatalogueError(ModelgateError):
    """The catalogue (or keys) file is invalid; the message names the file, the model and the field.

    One line per problem: a line break inside one (a quoted TOML key or a string value may hold any) is written as
    its escape, so every line still starts with the file's name.
    """

    def __init__(self, *problems: str) -> None:
        super().__init__("\n".join(problem.translate(_LINE_BREAKS) for problem in problems))


class BadRequest(ModelgateError):
    status = 400

    def __init__(self, message: str, *, data: Any = None, param: str | None = None) -> None:
        super().__init__(message, data=data)
        self.param = param


class Unauthorized(ModelgateError):
    status = 401


class Forbidden(ModelgateError):
    status = 403


class NotFound(ModelgateError):
    status = 404


class MethodNotAllowed(ModelgateError):
    status = 405

    def __init__(self, message: str, *, allow: list[str]) -> None:
        super().__init__(message)
        self.allow = allow

    @property
    def headers(self) -> dict[str, str]:
        return {"Allow": ", ".join(self.allow)}


class PayloadTooLarge(ModelgateError):
    status = 413


#: The longest ``Retry-After`` we take from an upstream, in seconds: a far-off (or infinite) one promises
#: nothing past a day.
MAX_RETRY_AFTER = 86_400.0
#: The longest we send: our own can be longer than an upstream's (a monthly budget resets in up to 31 days),
#: and a bounded number never overflows ``round`` or a header.
MAX_SENT_RETRY_AFTER = 366 * 86_400.0
#: ``UpstreamError.account_block`` of a refusal that holds for every model of the provider (the account is out of
#: credits, its daily allocation is used up, its key is refused).
ALL_MODELS = "every model"


class _RetryAfter:
    retry_after: float | None = None

    def retry_after_headers(self) -> dict[str, str]:
        if self.retry_after is None or math.isnan(self.retry_after):
            return {}
        return {"Retry-After": str(round(min(max(1.0, self.retry_after), MAX_SENT_RETRY_AFTER)))}


class RateLimited(_RetryAfter, ModelgateError):
    status = 429

    def __init__(self, message: str, *, retry_after: float | None = None, data: Any = None) -> None:
        super().__init__(message, data=data)
        self.retry_after = retry_after

    @property
    def headers(self) -> dict[str, str]:
        return self.retry_after_headers()


class ProviderNotConfigured(ModelgateError):
    status = 503

    def __init__(self, provider: str, variables: list[str]) -> None:
        # No variables: the instance itself is not (or no longer) in the catalogue.
        needed = f": set {' and '.join(variables)}" if variables else ""
        super().__init__(
            f"Provider '{provider}' is not configured{needed}", data={"provider": provider, "missing": variables}
        )
        self.provider = provider


class UpstreamError(_RetryAfter, ModelgateError):
    status = 502

    def __init__(
        self,
        provider: str,
        message: str,
        *,
        upstream_status: int | None = None,
        retry_after: float | None = None,
        transient: bool | None = None,
        connection_failed: bool = False,
        public_reason: str | None = None,
    ) -> None:
        prefix = f"Upstream provider error ({provider}): "
        super().__init__(prefix + message)
        #: ``public_reason`` without the prefix that names the provider.
        self.public_detail = message if public_reason is None else public_reason
        #: ``message`` without the upstream's bytes it quotes (a model's output can echo its caller's prompt).
        self._public_reason = prefix + self.public_detail
        self.provider = provider
        self.upstream_status = upstream_status
        self.retry_after = retry_after
        if transient is not None:
            self.transient = transient
        #: No HTTP answer came back: the connection itself failed (refused, reset, DNS, TLS, a connect timeout).
        #: Such a failure is the provider's as a whole, not the one model's (``resilience.provider_wide``).
        self.connection_failed = connection_failed
        #: The upstream answered, but about itself as a whole, not the one model (Ollama's "server busy"):
        #: also the provider's failure (``resilience.provider_wide``).
        self.provider_wide = False
        #: The upstream refused the call for the account, not for this call or model: every model of the provider
        #: (``ALL_MODELS``), or every one of a pool of its models sharing one quota (OpenRouter's ``:free`` models,
        #: ``Provider.quota_pool``), fails the same way until the account is topped up or the quota resets
        #: (``retry_after``, when the upstream says when). None: not such a refusal. ``resilience.CallBreakers``
        #: blocks them all at once, so no request walks through them one failing call after another.
        self.account_block: str | None = None
        self.data = {"provider": provider, "upstreamStatus": upstream_status}

    @property
    def headers(self) -> dict[str, str]:
        return self.retry_after_headers()

    @property
    def public_reason(self) -> str:
        return self._public_reason


class UpstreamAuthError(UpstreamError):
    pass


class UpstreamAgreementRequired(UpstreamError):
    """The provider serves this model only once its licence is accepted for the account (Workers AI 5016): neither
    refused credentials nor an outage, and no retry cures it; the account's owner must act, as the message says."""

    status = 403


class UpstreamRateLimited(UpstreamError):
    status = 429
    transient = True


class UpstreamUnavailable(UpstreamError):
    status = 503
    transient = True


class UpstreamBadRequest(UpstreamError):
    status = 400


class UpstreamContentFlagged(UpstreamBadRequest):
    """The provider's content filter refused the input (OpenRouter's moderation: a 403 with the ``reasons``). The
    client's to change, so a 400, and not the provider's failure (no retry, no fallback: ``resilience``).
    ``reasons`` are the filter's categories; the flagged text, the user's own, is never carried."""

    #: OpenRouter's ``error_type`` for it (api_reference/errors-and-debugging, "Content policy"), and the code
    #: OpenAI's Images API gives a prompt its safety system refuses.
    code = "content_policy_violation"

    def __init__(
        self, provider: str, message: str, *, reasons: tuple[str, ...], upstream_status: int | None = None
    ) -> None:
        super().__init__(provider, message, upstream_status=upstream_status, transient=False)
        self.reasons = reasons
        self.data = {**self.data, "reasons": list(reasons)}


class UpstreamTimeout(UpstreamError):
    status = 504
    transient = True


class UpstreamProtocolError(UpstreamError):
    pass


class ClientDisconnected(ModelgateError):
    """The client left before the reply started (logged as nginx's 499; nobody reads the answer)."""

    status = 499

    def __init__(self) -> None:
        super().__init__("The client closed the connection before the reply started")
