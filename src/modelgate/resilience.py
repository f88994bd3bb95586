"""Retry policy and circuit breakers: what ``gateway.open_stream`` consults before and after each attempt.

Only failures *before the first event* are retried or failed over; once a reply streams, an error is
reported in the stream and the gateway never switches models (a client would see two half-answers).

Retries: a ``transient`` error (connect error, 429, 502, 503, first-token timeout) is retried up to
``max_retries`` times with capped exponential backoff and full jitter, the AWS "Exponential Backoff
And Jitter" scheme (https://aws.amazon.com/blogs/architecture/exponential-backoff-and-jitter/):
``uniform(0, min(max_delay, base * 2**attempt))``. An upstream ``Retry-After`` is honoured as a floor
when it fits under ``retry_max_delay``; a longer one ends the retries at once (the client is waiting:
better to fall back, or to hand the client the upstream's Retry-After, than to hold the request for
minutes). A first-token timeout is retried at most once, because every such attempt already cost the
whole ``first_token_timeout``.

Circuit breaker, one per provider (``Breakers`` lives on ``GatewayState``)::

    closed ──N consecutive failures within `window` s──▶ open ──`cooldown` s──▶ half-open
      ▲                                                   ▲                       │ one trial call
      └────────────────────── trial succeeds ─────────────┴──── trial fails ──────┘

A successful probe of the provider's model listing (``status.Prober``) closes an open or half-open
breaker at once: the provider answers again, so calls should not keep failing fast until the cooldown
ends (a probe is free; a trial call is a user's request).

While open (or while half-open with its trial in flight) calls fail fast with ``UpstreamUnavailable``
("provider in cooldown", ``Retry-After`` = the cooldown left), which the gateway turns into a fallback
when the model has one. Client errors (400, bad credentials) say nothing about the provider's health and
never count against it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from modelgate.errors import (
    ModelgateError,
    ProviderNotConfigured,
    UpstreamAuthError,
    UpstreamBadRequest,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)

if TYPE_CHECKING:
    from modelgate.catalogue import ProviderEntry

Clock = Callable[[], float]


# --- retries ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_retries: int = 2
    base_delay: float = 0.25
    #: Caps both the backoff and the upstream ``Retry-After`` we are willing to wait for.
    max_delay: float = 4.0
    #: First-token timeouts are slow to find out; retry them at most this many times.
    max_timeout_retries: int = 1

    @classmethod
    def from_entry(cls, entry: ProviderEntry) -> RetryPolicy:
        return cls(max_retries=entry.max_retries, base_delay=entry.retry_base_delay, max_delay=entry.retry_max_delay)


class RetryBudget:
    """Decides, attempt after attempt for one model, whether and after how long to try again."""

    def __init__(self, policy: RetryPolicy, rng: random.Random) -> None:
        self.policy = policy
        self.rng = rng
        self.retries = 0
        self.timeouts = 0

    def next_delay(self, exc: BaseException) -> float | None:
        """Seconds to wait before retrying after ``exc``, or None when it must not be retried."""
        if not isinstance(exc, ModelgateError) or not exc.transient:
            return None
        if self.retries >= self.policy.max_retries:
            return None
        if isinstance(exc, UpstreamTimeout):
            if self.timeouts >= self.policy.max_timeout_retries:
                return None
            self.timeouts += 1
        backoff = self.rng.uniform(0.0, min(self.policy.max_delay, self.policy.base_delay * 2**self.retries))
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            if retry_after > self.policy.max_delay:
                return None
            backoff = max(backoff, float(retry_after))
        self.retries += 1
        return backoff


def may_fall_back(exc: BaseException) -> bool:
    """Whether another model could succeed where this failure happened.

    Any upstream failure qualifies (after its own retries) except a rejected request: the same
    request is just as invalid elsewhere. A provider without credentials is skipped too. This is about
    the requested model; a fallback's rejection only passes that fallback over (``gateway.open_stream``).

    An input a content filter refused (``UpstreamContentFlagged``, a kind of rejected request) is not sent on
    either: through OpenRouter another model would meet the same moderation, and a fallback on a provider with none
    might answer, but fallbacks are there for a model that cannot answer, not as a way around a provider's content
    policy; the client hears why, and may choose another model itself.
    """
    if isinstance(exc, UpstreamBadRequest):
        return False
    return isinstance(exc, UpstreamError | ProviderNotConfigured)


def counts_against_provider(exc: BaseException) -> bool:
    """Failures that say the provider is unwell (trip the breaker, lower its health).

    Transient failures, broken protocol and 5xx do; a refused request, refused credentials or an
    unknown model (404) are about this call or this configuration, and must not cut off the
    provider's other models.
    """
    if not isinstance(exc, UpstreamError) or isinstance(exc, CircuitOpen):
        return False
    return exc.transient or isinstance(exc, UpstreamProtocolError) or (exc.upstream_status or 0) >= 500


def outcome_of(exc: BaseException) -> str:
    """A bounded label for metrics and status: one word per kind of failure."""
    kinds: tuple[tuple[type[BaseException], str], ...] = (
        (CircuitOpen, "circuit_open"),
        (UpstreamTimeout, "timeout"),
        (UpstreamRateLimited, "rate_limited"),
        (UpstreamUnavailable, "unavailable"),
        (UpstreamBadRequest, "bad_request"),
        (UpstreamAuthError, "auth_error"),
        (UpstreamProtocolError, "protocol_error"),
        (UpstreamError, "upstream_error"),
        (ProviderNotConfigured, "unconfigured"),
    )
    for kind, label in kinds:
        if isinstance(exc, kind):
            return label
    return "error"


# --- circuit breaker ----------------------------------------------------------------------------


class CircuitOpen(UpstreamUnavailable):
    """The provider is in cooldown. Not transient: retrying now would only hit the open breaker again."""

    def __init__(self, provider: str, retry_after: float) -> None:
        super().__init__(
            provider, "provider in cooldown", upstream_status=None, retry_after=retry_after, transient=False
        )


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    threshold: int = 5
    window: float = 30.0
    cooldown: float = 15.0

    @classmethod
    def from_entry(cls, entry: ProviderEntry) -> BreakerConfig:
        return cls(threshold=entry.breaker_threshold, window=entry.breaker_window, cooldown=entry.breaker_cooldown)


class Trial:
    """The ticket of a half-open breaker's one trial attempt: only the attempt holding it may end the trial."""

    __slots__ = ()


class CircuitBreaker:
    """One provider's breaker. Not thread-safe by design: it lives on one event loop.

    ``acquire`` hands the half-open trial its ``Trial``; the caller passes what ``acquire`` returned to
    ``release`` / ``record_failure``, so an attempt that started earlier (while closed) cannot free the trial's slot.
    """

    def __init__(self, provider: str, config: BreakerConfig, clock: Clock = time.monotonic) -> None:
        self.provider = provider
        self.config = config
        self.clock = clock
        self.state = BreakerState.CLOSED
        self.failures = 0
        self._streak_started = 0.0
        self._opened_at = 0.0
        self._trial: Trial | None = None
        #: Why it opened (the last failure), for ``/api/status``.
        self.reason: str | None = None

    def remaining_cooldown(self) -> float:
        if self.state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self._opened_at + self.config.cooldown - self.clock())

    def is_open(self) -> bool:
        """Open and still cooling down (a half-open breaker waiting for its trial counts as closed here)."""
        return self.state is BreakerState.OPEN and self.remaining_cooldown() > 0

    def acquire(self) -> Trial | None:
        """Call before each upstream attempt; raises ``CircuitOpen`` to fail fast.

        Returns the ``Trial`` when this attempt is the half-open trial, else None: pass it to ``release`` or
        ``record_failure`` when the attempt ends.
        """
        if self.state is BreakerState.OPEN:
            remaining = self.remaining_cooldown()
            if remaining > 0:
                raise CircuitOpen(self.provider, remaining)
            self.state = BreakerState.HALF_OPEN
        if self.state is BreakerState.HALF_OPEN:
            if self._trial is not None:
                raise CircuitOpen(self.provider, self.config.cooldown)
            self._trial = Trial()
            return self._trial
        return None

    def release(self, trial: Trial | None) -> None:
        """The attempt ended without a verdict (cancelled, or a failure that is not the provider's)."""
        self._end(trial)

    def record_success(self) -> None:
        """The provider answered (the trial, any other attempt, or a probe): closed, so no trial is out any more."""
        self.state = BreakerState.CLOSED
        self.failures = 0
        self._trial = None
        self.reason = None

    def record_failure(self, reason: str, trial: Trial | None = None) -> None:
        now = self.clock()
        self._end(trial)
        if self.state is BreakerState.HALF_OPEN:
            self._open(now, reason)
            return
        if self.failures == 0 or now - self._streak_started > self.config.window:
            self.failures = 0
            self._streak_started = now
        self.failures += 1
        if self.failures >= self.config.threshold:
            self._open(now, reason)

    def _end(self, trial: Trial | None) -> None:
        if trial is not None and trial is self._trial:
            self._trial = None

    def _open(self, now: float, reason: str) -> None:
        self.state = BreakerState.OPEN
        self._opened_at = now
        self.failures = 0
        self.reason = reason


class Breakers:
    """The app's breakers, one per provider, created on first use; config follows catalogue reloads."""

    def __init__(self, clock: Clock = time.monotonic, rng: random.Random | None = None) -> None:
        self.clock = clock
        #: Jitter source for retries (seedable in tests).
        self.rng = rng or random.Random()
        self._breakers: dict[str, CircuitBreaker] = {}

    def get(self, provider: str, config: BreakerConfig | None = None) -> CircuitBreaker:
        breaker = self._breakers.get(provider)
        if breaker is None:
            breaker = self._breakers[provider] = CircuitBreaker(provider, config or BreakerConfig(), self.clock)
        elif config is not None:
            breaker.config = config
        return breaker

    def peek(self, provider: str) -> CircuitBreaker | None:
        return self._breakers.get(provider)

    def probe_succeeded(self, provider: str) -> None:
        """The provider answered its free listing (``status.Prober``): it is back, so an open or half-open
        breaker closes now instead of failing calls fast for the rest of its cooldown."""
        breaker = self._breakers.get(provider)
        if breaker is not None and breaker.state is not BreakerState.CLOSED:
            breaker.record_success()
