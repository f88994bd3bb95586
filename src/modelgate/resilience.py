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

Circuit breakers, one per provider and one per upstream model (``Breakers`` lives on ``GatewayState``)::

    closed ──N consecutive failures within `window` s──▶ open ──`cooldown` s──▶ half-open
      ▲                                                   ▲                       │ one trial call
      └────────────────────── trial succeeds ─────────────┴──── trial fails ──────┘

Each failure counts against one of the two (``provider_wide``). A call that got no HTTP answer at all
(connection refused or reset, DNS, TLS, a connect timeout: ``UpstreamError.connection_failed``) is the
provider's: every model behind that address fails the same way. What the upstream *answered* (a 429, a
503, any 5xx, a broken reply) or was too slow to answer (a first-token timeout; the connect has its own,
shorter ``connect_timeout``) is the model's: one OpenRouter model its serving provider rate-limits, or one
cold Hugging Face model answering 503 "currently loading", says nothing about the provider's other
models. OpenRouter documents its statuses per model ("502: your chosen model is down", "503: no available
model provider", https://openrouter.ai/docs/api/errors), and an Ollama 500 is one model's runner. So such
a failure opens only that model's breaker, and the provider, which answered, counts as up: a provider
that answers 5xx for every model trips each model's breaker in turn. The exception is an answer about the
whole server (``UpstreamError.provider_wide``): Ollama's 503 "server busy", its one request queue for all
models full (server/sched.go ``ErrMaxQueue``), is the provider's.

An answer that refuses the *account* (``UpstreamError.account_block``: out of credits, a daily allocation
used up) says every model behind it fails the same way until the account is topped up or the quota resets. It
does not wait for ``threshold`` failures: it *blocks* the provider's breaker at once (``ALL_MODELS``), or the
breaker of the pool of models that share the quota (OpenRouter's ``:free`` models, ``Provider.quota_pool``), for
the upstream's reset time (``retry_after``) or else the breaker's ``cooldown``, then lets one trial through as
usual. A probe does not end a block (a listing says nothing about credits), nor does an attempt that began
before it and answers now: only the reset and its trial do.

A successful probe of the provider's model listing (``status.Prober``) closes its open or half-open
provider breaker at once: the provider answers again, so calls should not keep failing fast until the
cooldown ends (a probe is free; a trial call is a user's request). It leaves the models' breakers alone: a
listing says nothing about a model's rate limit or whether it is warm.

While open (or while half-open with its trial in flight) calls fail fast with ``CircuitOpen``
("provider in cooldown" or "model in cooldown", ``Retry-After`` = the cooldown left), which the gateway
turns into a fallback when the model has one. Client errors (400, a refused 403, 404) say nothing about
the upstream's health and count against neither.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from modelgate.errors import (
    ALL_MODELS,
    ModelgateError,
    ProviderNotConfigured,
    UpstreamAgreementRequired,
    UpstreamAuthError,
    UpstreamBadRequest,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)

if TYPE_CHECKING:
    from modelgate.catalogue import Catalogue, ProviderEntry

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


def counts_as_failure(exc: BaseException) -> bool:
    """Failures that say the upstream is unwell (trip a breaker, lower its health).

    No answer at all, transient failures, broken protocol and 5xx do; a refused request, refused
    credentials or an unknown model (404) are about this call or this configuration: a cooldown would
    neither cure nor explain them. Which breaker a failure counts against is ``provider_wide``'s answer.
    """
    if not isinstance(exc, UpstreamError) or isinstance(exc, CircuitOpen):
        return False
    if exc.connection_failed or exc.transient or exc.account_block or isinstance(exc, UpstreamProtocolError):
        return True
    return (exc.upstream_status or 0) >= 500


def provider_wide(exc: BaseException) -> bool:
    """Whether a failure is the provider's as a whole (no HTTP answer came back, one about the whole server, or
    a refusal of its whole account), not the one model's."""
    return isinstance(exc, UpstreamError) and (
        exc.connection_failed or exc.provider_wide or exc.account_block == ALL_MODELS
    )


def outcome_of(exc: BaseException) -> str:
    """A bounded label for metrics and status: one word per kind of failure."""
    kinds: tuple[tuple[type[BaseException], str], ...] = (
        (CircuitOpen, "circuit_open"),
        (UpstreamTimeout, "timeout"),
        (UpstreamRateLimited, "rate_limited"),
        (UpstreamUnavailable, "unavailable"),
        (UpstreamBadRequest, "bad_request"),
        (UpstreamAuthError, "auth_error"),
        (UpstreamAgreementRequired, "agreement_required"),
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
    """The provider, or the model, is in cooldown. Not transient: retrying now would only hit the open breaker
    again. ``blocked``: the upstream refused the account (``CircuitBreaker.block``), and the message says so."""

    def __init__(
        self, provider: str, retry_after: float, *, model: str | None = None, blocked: str | None = None
    ) -> None:
        what = "provider" if model is None else "model"
        text = f"{what} in cooldown" if blocked is None else blocked
        super().__init__(provider, text, upstream_status=None, retry_after=retry_after, transient=False)
        self.model = model


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
    """One provider's breaker, or one upstream model's. Not thread-safe by design: it lives on one event loop.

    ``acquire`` hands the half-open trial its ``Trial``; the caller passes what ``acquire`` returned to
    ``release`` / ``record_failure``, so an attempt that started earlier (while closed) cannot free the trial's slot.
    """

    def __init__(
        self,
        provider: str,
        config: BreakerConfig,
        clock: Clock = time.monotonic,
        *,
        model: str | None = None,
        pool: str | None = None,
    ) -> None:
        self.provider = provider
        #: The upstream model id for a model's breaker, None for the provider's.
        self.model = model
        #: The pool of models sharing one quota, for a pool's breaker (``Provider.quota_pool``).
        self.pool = pool
        self.config = config
        self.clock = clock
        self.state = BreakerState.CLOSED
        self.failures = 0
        self._streak_started = 0.0
        self._opened_at = 0.0
        #: How long a block lasts (``block``); None: opened by failures, for the configured cooldown.
        self._blocked_for: float | None = None
        self._trial: Trial | None = None
        #: Why it opened (the last failure), for ``/api/status``.
        self.reason: str | None = None
        #: What the upstream said of the account when it blocked (``block``); None when not blocked.
        self.blocked: str | None = None

    def remaining_cooldown(self) -> float:
        if self.state is not BreakerState.OPEN:
            return 0.0
        cooldown = self.config.cooldown if self._blocked_for is None else self._blocked_for
        return max(0.0, self._opened_at + cooldown - self.clock())

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
                raise self._refusal(remaining)
            self.state = BreakerState.HALF_OPEN
        if self.state is BreakerState.HALF_OPEN:
            if self._trial is not None:
                raise self._refusal(self.config.cooldown)
            self._trial = Trial()
            return self._trial
        return None

    def _refusal(self, retry_after: float) -> CircuitOpen:
        blocked = None
        if self.blocked is not None:
            blocked = f"{self.blocks()} blocked for {retry_after:.0f} s more (account-wide): {self.blocked}"
        return CircuitOpen(self.provider, retry_after, model=self.model, blocked=blocked)

    def blocks(self) -> str:
        """The models this breaker stops, in words."""
        if self.model is not None:
            return "the model"
        return "every model" if self.pool is None else f"its {self.pool} models"

    def release(self, trial: Trial | None) -> None:
        """The attempt ended without a verdict (cancelled, or a failure that is not the provider's)."""
        self._end(trial)

    def record_success(self) -> None:
        """The provider answered (the trial, any other attempt, or a probe): closed, so no trial is out any more.

        Not while blocked and cooling down: an attempt that began before the block says nothing of the account now.
        """
        if self.blocked is not None and self.is_open():
            return
        self.state = BreakerState.CLOSED
        self.failures = 0
        self._trial = None
        self.reason = None
        self.blocked = None

    def block(self, reason: str, blocked: str, seconds: float | None) -> None:
        """The upstream refused the account (``UpstreamError.account_block``): open at once, without waiting for
        ``threshold`` failures, for ``seconds`` (its reset), else for the cooldown. ``blocked`` is what it said.

        A trial out now began before the block and its answer says nothing of the account (``record_success``
        ignores it): it stops being the trial, or the breaker would refuse every call after the reset waiting for it."""
        self._trial = None
        self._open(self.clock(), reason, seconds if seconds is not None else self.config.cooldown)
        self.blocked = blocked

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

    def idle(self) -> bool:
        """Closed with no failure counted and no trial out: it holds nothing a new breaker would not."""
        return self.state is BreakerState.CLOSED and self.failures == 0 and self._trial is None

    def _open(self, now: float, reason: str, blocked_for: float | None = None) -> None:
        self.state = BreakerState.OPEN
        self._opened_at = now
        self._blocked_for = blocked_for
        self.failures = 0
        self.reason = reason
        self.blocked = None


@dataclass(frozen=True, slots=True)
class Passage:
    """One attempt's tickets through the provider's breaker, its pool's and its model's (a half-open breaker's
    ``Trial``)."""

    provider: Trial | None
    model: Trial | None
    pool: Trial | None = None


class CallBreakers:
    """The breakers one model's calls pass: the provider's first, then its pool's (when the model shares a quota
    with others: ``Provider.quota_pool``), then the model's own."""

    __slots__ = ("model", "pool", "provider")

    def __init__(self, provider: CircuitBreaker, model: CircuitBreaker, pool: CircuitBreaker | None = None) -> None:
        self.provider = provider
        self.model = model
        self.pool = pool

    def acquire(self) -> Passage:
        """Call before each upstream attempt; raises ``CircuitOpen`` (the provider's, else the pool's, else the
        model's) to fail fast. Pass what it returns to ``record_success`` / ``record_failure`` / ``release``."""
        provider = self.provider.acquire()
        pool = None
        try:
            pool = self.pool.acquire() if self.pool is not None else None
            model = self.model.acquire()
        except CircuitOpen:
            # This attempt will not be a trial after all.
            self.provider.release(provider)
            if self.pool is not None:
                self.pool.release(pool)
            raise
        return Passage(provider, model, pool)

    def record_success(self) -> None:
        self.provider.record_success()
        if self.pool is not None:
            self.pool.record_success()
        self.model.record_success()

    def record_failure(self, exc: ModelgateError, passage: Passage) -> None:
        """The attempt failed with ``exc``: counted against the one breaker it belongs to, or against neither; a
        refusal of the account blocks the breaker of every model it holds for (``CircuitBreaker.block``)."""
        if not counts_as_failure(exc):
            self.release(passage)
        elif isinstance(exc, UpstreamError) and exc.account_block is not None:
            self.release(passage)  # no verdict on the breakers the block does not name
            self._blocked_by(exc.account_block).block(exc.public_reason, exc.public_detail, exc.retry_after)
        elif provider_wide(exc):
            self.provider.record_failure(exc.public_reason, passage.provider)
            self.model.release(passage.model)  # never reached: no verdict on the model
            if self.pool is not None:
                self.pool.release(passage.pool)
        else:
            self.model.record_failure(exc.public_reason, passage.model)
            # It answered, about this model: the provider itself is up, and the pool's quota was not the matter.
            self.provider.record_success()
            if self.pool is not None:
                self.pool.record_success()

    def _blocked_by(self, block: str) -> CircuitBreaker:
        """The breaker an account refusal blocks: the provider's, the pool's it names, else the model's own."""
        if block == ALL_MODELS:
            return self.provider
        if self.pool is not None and self.pool.pool == block:
            return self.pool
        return self.model

    def release(self, passage: Passage) -> None:
        """The attempt ended without a verdict (cancelled, or a failure that is nobody's health)."""
        self.provider.release(passage.provider)
        if self.pool is not None:
            self.pool.release(passage.pool)
        self.model.release(passage.model)


#: Model breakers kept at most. Only catalogue models reach an upstream and a catalogue swap forgets the breakers
#: of models it no longer has (``Breakers.retain``); this bounds what requests in flight across swaps bring back.
MAX_MODEL_BREAKERS = 4096


class Breakers:
    """The app's breakers, one per provider and one per upstream model, created on first use; config follows
    catalogue reloads (a model's breaker takes its provider's settings)."""

    def __init__(self, clock: Clock = time.monotonic, rng: random.Random | None = None) -> None:
        self.clock = clock
        #: Jitter source for retries (seedable in tests).
        self.rng = rng or random.Random()
        self._breakers: dict[str, CircuitBreaker] = {}
        #: Keyed by provider and upstream model id: two catalogue models naming one upstream model share its rate
        #: limit and its warm-up, so they share its breaker.
        self._models: dict[tuple[str, str], CircuitBreaker] = {}
        #: Keyed by provider and pool (``Provider.quota_pool``): the models of one pool share its quota.
        self._pools: dict[tuple[str, str], CircuitBreaker] = {}

    def get(self, provider: str, config: BreakerConfig | None = None) -> CircuitBreaker:
        breaker = self._breakers.get(provider)
        if breaker is None:
            breaker = self._breakers[provider] = CircuitBreaker(provider, config or BreakerConfig(), self.clock)
        elif config is not None:
            breaker.config = config
        return breaker

    def for_model(
        self, provider: str, upstream_model: str, config: BreakerConfig | None = None, *, pool: str | None = None
    ) -> CallBreakers:
        """The breakers a call of ``upstream_model`` on ``provider`` passes (``pool``: the model's
        ``Provider.quota_pool``)."""
        key = (provider, upstream_model)
        breaker = self._models.get(key)
        if breaker is None:
            if len(self._models) >= MAX_MODEL_BREAKERS:
                self._forget_models()
            breaker = CircuitBreaker(provider, config or BreakerConfig(), self.clock, model=upstream_model)
            self._models[key] = breaker
        elif config is not None:
            breaker.config = config
        shared = None
        if pool is not None:  # a handful per provider at most: never forgotten but with their provider
            shared = self._pools.get((provider, pool))
            if shared is None:
                shared = CircuitBreaker(provider, config or BreakerConfig(), self.clock, pool=pool)
                self._pools[provider, pool] = shared
            elif config is not None:
                shared.config = config
        return CallBreakers(self.get(provider, config), breaker, shared)

    def peek(self, provider: str) -> CircuitBreaker | None:
        return self._breakers.get(provider)

    def peek_model(self, provider: str, upstream_model: str) -> CircuitBreaker | None:
        return self._models.get((provider, upstream_model))

    def peek_pool(self, provider: str, pool: str) -> CircuitBreaker | None:
        return self._pools.get((provider, pool))

    def probe_succeeded(self, provider: str) -> None:
        """The provider answered its free listing (``status.Prober``): it is back, so an open or half-open
        provider breaker closes now instead of failing calls fast for the rest of its cooldown. Not one the
        upstream blocked for the account: a listing (OpenRouter's needs no key) says nothing about its credits."""
        breaker = self._breakers.get(provider)
        if breaker is not None and breaker.state is not BreakerState.CLOSED and breaker.blocked is None:
            breaker.record_success()

    def retain(self, catalogue: Catalogue) -> None:
        """Forget the breakers of providers and upstream models ``catalogue`` no longer has (at each catalogue swap).

        No new request can reach them, and the breakers of every catalogue served since start would otherwise
        pile up. A request in flight keeps the ``CallBreakers`` it holds, so its verdict lands where it did; a
        breaker it recreates by failing over is forgotten at the next swap. Both dicts are rebuilt and assigned
        whole: tests swap catalogues from their own thread while the loop creates breakers."""
        providers = set(catalogue.instances)
        models = {(model.provider, model.upstream_model) for model in catalogue.models}
        self._breakers = {name: b for name, b in list(self._breakers.items()) if name in providers}
        self._models = {key: b for key, b in list(self._models.items()) if key in models}
        self._pools = {key: b for key, b in list(self._pools.items()) if key[0] in providers}

    def _forget_models(self) -> None:
        """Make room: the idle breakers (a new one starts the same), or the oldest when none is idle.

        An attempt in flight with a breaker forgotten meanwhile records its verdict where nobody looks: a failure
        may go uncounted, never a cooldown cut short while idle breakers are there to forget first."""
        idle = [key for key, breaker in self._models.items() if breaker.idle()]
        for key in idle or [next(iter(self._models))]:
            del self._models[key]
