"""What ``/api/status`` reports: each provider's and model's health, from real traffic and free probes.

Two sources, neither of which costs a billed call:

- **traffic**: ``gateway.open_stream`` records every upstream attempt (ok or failed, time to first
  token) and every mid-stream failure into a rolling window per provider and per model;
- **probes**: a background task (``Prober``, started by the app's lifespan) calls each configured
  provider's ``probe()`` — its free model listing (the OpenAI-style ``GET {base}/models`` of OpenRouter
  and OpenAI-compatible servers, Ollama's ``/api/tags``, Cloudflare's model search), never a
  generation — at start and then every ``settings.probe_interval`` seconds, each under its own deadline
  (``probe_timeout`` of the provider's catalogue entry). Requests read the last results; no request
  ever awaits a probe. A provider that answers its listing is back: the probe closes its circuit
  breaker (``Breakers.probe_succeeded``; not one blocked for the account) and clears its run of failed attempts.

Status rules (first that applies), per provider:

``unconfigured``  its credentials are missing;
``down``          its circuit breaker is open; or the last probe failed and no reply succeeded since;
                  or its last ``DOWN_AFTER`` attempts (within the window) all failed without an answer
                  (unreachable: an answered failure, such as one model's 429 or 503, is that model's);
``unknown``       no evidence yet: no probe has answered and no request was sent (just after start,
                  or with probes off until the first request; ``last_checked_at`` is then null);
``degraded``      at least ``MIN_SAMPLES`` attempts in the window and an error rate of at least
                  ``DEGRADED_ERROR_RATE``; or a median time to first token of ``SLOW_TTFT`` or more;
``ok``            otherwise: the last probe answered, or the traffic is healthy.

Per model the same on the model's own traffic (every failure of it counts), plus: ``down`` when its
provider is, when its own circuit breaker is open or its pool's (``Provider.quota_pool``: OpenRouter's ``:free``
models, blocked together for the account), or when the last probe listed the provider's models
and this one's upstream id was not among them (the reason says so); ``unknown`` while its provider is
and it has no traffic of its own; ``degraded`` when its provider is.

Overall: ``unknown`` while every provider in use (configured) is; otherwise ``ok`` when every one
with evidence is ``ok``, ``down`` when all are ``down``, else ``degraded``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import statistics
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from modelgate.errors import ModelgateError
from modelgate.providers import PROVIDERS, ProbeResult, Provider

if TYPE_CHECKING:
    from modelgate.app import GatewayState
    from modelgate.catalogue import Catalogue, CatalogueModel
    from modelgate.resilience import Breakers, CircuitBreaker
    from modelgate.settings import Settings

log = logging.getLogger("modelgate.status")

Status = Literal["ok", "degraded", "down", "unknown", "unconfigured"]

#: Seconds of traffic the rates and medians look at.
WINDOW = 300.0
MIN_SAMPLES = 5
DEGRADED_ERROR_RATE = 0.25
SLOW_TTFT = 10.0
DOWN_AFTER = 3
#: Samples kept per provider and per model (bounds memory whatever the traffic).
MAX_SAMPLES = 200


@dataclass(slots=True)
class _Sample:
    at: float
    ok: bool
    ttft: float | None


@dataclass(slots=True)
class _Signals:
    """The traffic of one provider or one model."""

    samples: deque[_Sample] = field(default_factory=lambda: deque(maxlen=MAX_SAMPLES))
    consecutive_failures: int = 0
    last_failure: str | None = None
    last_failure_at: float = 0.0
    last_success_at: float = 0.0
    last_seen_wall: float | None = None

    def record(
        self, now: float, wall: float, ok: bool, ttft: float | None, reason: str | None, *, streak: bool = True
    ) -> None:
        """``streak``: a failure continues the run of failed attempts; False: it breaks the run as an answer
        does (a provider that answered about one model is not down), yet counts in the error rate."""
        self.samples.append(_Sample(now, ok, ttft))
        self.last_seen_wall = wall
        if ok:
            self.consecutive_failures = 0
            self.last_success_at = now
        else:
            self.consecutive_failures = self.consecutive_failures + 1 if streak else 0
            self.last_failure = reason
            self.last_failure_at = now

    def verdict(self, now: float) -> tuple[Status, str | None]:
        if self.consecutive_failures >= DOWN_AFTER and now - self.last_failure_at <= WINDOW:
            return "down", f"the last {self.consecutive_failures} attempts failed: {self.last_failure}"
        recent = [s for s in self.samples if now - s.at <= WINDOW]
        if len(recent) >= MIN_SAMPLES:
            failed = sum(1 for s in recent if not s.ok)
            rate = failed / len(recent)
            if rate >= DEGRADED_ERROR_RATE:
                return "degraded", f"{failed} of the last {len(recent)} attempts failed (last: {self.last_failure})"
        ttfts = [s.ttft for s in recent if s.ttft is not None]
        if ttfts:
            median = statistics.median(ttfts)
            if median >= SLOW_TTFT:
                return "degraded", f"slow: median time to first token {median:.1f} s"
        return "ok", None

    def summary(self, now: float) -> dict[str, Any]:
        recent = [s for s in self.samples if now - s.at <= WINDOW]
        ttfts = [s.ttft for s in recent if s.ttft is not None]
        return {
            "requests": len(recent),
            "error_rate": round(sum(1 for s in recent if not s.ok) / len(recent), 3) if recent else None,
            "ttft_p50_ms": round(statistics.median(ttfts) * 1000, 1) if ttfts else None,
        }


@dataclass(frozen=True, slots=True)
class _Probe:
    at: float
    wall: float
    reachable: bool
    detail: str | None
    #: Upstream model ids the provider listed, or None when the probe cannot tell.
    available: frozenset[str] | None


class StatusBoard:
    """Health signals of one app (on ``GatewayState.status``); cheap to record, read by ``/api/status``."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.wall = wall
        self._providers: dict[str, _Signals] = {}
        self._models: dict[str, _Signals] = {}
        self._probes: dict[str, _Probe] = {}

    # -- recording (called on the request path: keep it O(1)) --

    def record(
        self,
        provider: str,
        model: str,
        *,
        ok: bool,
        ttft: float | None = None,
        reason: str | None = None,
        provider_wide: bool = True,
    ) -> None:
        """One attempt's outcome. ``provider_wide=False``: a failure the upstream answered about this model
        (``resilience.provider_wide``), which counts in the provider's error rate, not in its run of failures."""
        now, wall = self.clock(), self.wall()
        self._providers.setdefault(provider, _Signals()).record(now, wall, ok, ttft, reason, streak=provider_wide)
        self._models.setdefault(model, _Signals()).record(now, wall, ok, ttft, reason)

    def record_probe(self, provider: str, result: ProbeResult) -> None:
        signals = self._providers.get(provider)
        if result.reachable and signals is not None:
            # It answered: a run of failed attempts before this no longer says it is down.
            signals.consecutive_failures = 0
        self._probes[provider] = _Probe(
            at=self.clock(),
            wall=self.wall(),
            reachable=result.reachable,
            detail=result.detail,
            available=result.available_models,
        )

    def retain(self, catalogue: Catalogue) -> None:
        """Forget the providers and models ``catalogue`` no longer has (at each catalogue swap).

        ``/api/status`` reads only the current catalogue's, so the records of every catalogue served since
        start would otherwise pile up. A request still in flight on a forgotten one records it again when it
        ends; the next reload forgets that too. Each dict is rebuilt and assigned whole: tests swap catalogues
        from their own thread while the loop records."""
        providers = set(catalogue.instances)
        models = {model.id for model in catalogue.models}
        self._providers = {name: s for name, s in list(self._providers.items()) if name in providers}
        self._probes = {name: p for name, p in list(self._probes.items()) if name in providers}
        self._models = {model_id: s for model_id, s in list(self._models.items()) if model_id in models}

    # -- reading --

    def snapshot(
        self, catalogue: Catalogue, settings: Settings, breakers: Breakers, scrub: Callable[[str], str] = str
    ) -> dict[str, Any]:
        now = self.clock()
        providers: dict[str, dict[str, Any]] = {}
        for name, instance in catalogue.instances.items():  # the seed's four, then further instances
            missing = settings.missing_credentials(name, instance.credential_variables)
            status, reason = self._provider_status(name, now, missing, breakers)
            providers[name] = {
                "status": status,
                "last_checked_at": self._last_checked(self._providers.get(name), self._probes.get(name)),
                "reason": scrub(reason) if reason else None,
                **(self._providers.get(name) or _Signals()).summary(now),
            }
        models: dict[str, dict[str, Any]] = {}
        for model in catalogue.models:
            pool = PROVIDERS[catalogue.instance(model.provider).protocol].quota_pool(model.upstream_model)
            status, reason = self._model_status(model, now, providers[model.provider], breakers, pool)
            models[model.id] = {
                "provider": model.provider,
                "status": status,
                "last_checked_at": self._last_checked(self._models.get(model.id), self._probes.get(model.provider)),
                "reason": scrub(reason) if reason else None,
            }
        used = {m.provider for m in catalogue.models}
        overall = _overall(p["status"] for n, p in providers.items() if n in used)
        return {"status": overall, "providers": providers, "models": models}

    def _provider_status(
        self, name: str, now: float, missing: list[str], breakers: Breakers
    ) -> tuple[Status, str | None]:
        if missing:
            return "unconfigured", f"set {' and '.join(missing)}"
        breaker = breakers.peek(name)
        if breaker is not None and breaker.is_open():
            return "down", _circuit_open(breaker)
        signals = self._providers.get(name)
        probe = self._probes.get(name)
        if probe is not None and not probe.reachable:
            recovered = signals is not None and signals.last_success_at > probe.at
            if not recovered:
                return "down", f"probe failed: {probe.detail or 'unreachable'}"
        if signals is None:
            if probe is None:
                return "unknown", "no evidence yet: no probe has answered and no request was sent"
            return "ok", None
        return signals.verdict(now)

    def _model_status(
        self, model: CatalogueModel, now: float, provider: dict[str, Any], breakers: Breakers, pool: str | None
    ) -> tuple[Status, str | None]:
        """``pool``: the pool of models sharing a quota ``model`` is in (``Provider.quota_pool``), if any."""
        if provider["status"] in ("unconfigured", "down"):
            return provider["status"], f"provider {model.provider} is {provider['status']}: {provider['reason']}"
        own = breakers.peek_model(model.provider, model.upstream_model)
        for breaker in (breakers.peek_pool(model.provider, pool) if pool else None, own):
            if breaker is not None and breaker.is_open():
                return "down", _circuit_open(breaker)
        probe = self._probes.get(model.provider)
        if probe is not None and probe.available is not None and model.upstream_model not in probe.available:
            return "down", f"{model.provider} does not list the model '{model.upstream_model}'"
        signals = self._models.get(model.id)
        if signals is None and provider["status"] == "unknown":
            return "unknown", f"provider {model.provider} is unknown: {provider['reason']}"
        status, reason = signals.verdict(now) if signals is not None else ("ok", None)
        if status == "ok" and provider["status"] == "degraded":
            return "degraded", f"provider {model.provider} is degraded: {provider['reason']}"
        return status, reason

    def _last_checked(self, signals: _Signals | None, probe: _Probe | None) -> str | None:
        times = [t for t in (signals.last_seen_wall if signals else None, probe.wall if probe else None) if t]
        return _iso(max(times)) if times else None


def _circuit_open(breaker: CircuitBreaker) -> str:
    remaining = breaker.remaining_cooldown()
    if breaker.blocked is not None:  # one refusal of the account, not repeated failures
        return f"{breaker.blocks()} blocked for {remaining:.0f} s more (account-wide): {breaker.reason}"
    return f"circuit open for {remaining:.0f} s more after repeated failures: {breaker.reason}"


def _overall(statuses: Iterable[str]) -> str:
    values = [s for s in statuses if s != "unconfigured"]
    if values and all(s == "unknown" for s in values):
        return "unknown"
    known = [s for s in values if s != "unknown"]
    if all(s == "ok" for s in known):
        return "ok"
    if all(s == "down" for s in values):
        return "down"
    return "degraded"


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# --- the background probes ----------------------------------------------------------------------


class Prober:
    """Probes every configured provider at start, then each ``interval`` seconds, in the background.

    The first round runs at once: until a probe answers, ``/api/status`` can only say ``unknown``, and a
    model the provider does not list should show as ``down`` within seconds of start, not a minute later.
    For the same reason a catalogue reload (``wake``) starts a round at once.
    """

    def __init__(self, state: GatewayState, interval: float) -> None:
        self.state = state
        self.interval = interval
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    def start(self) -> None:
        if self.interval > 0 and self._task is None:
            self._task = asyncio.create_task(self._run(), name="modelgate-probes")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def wake(self) -> None:
        """Run the next round now (the catalogue changed: new models or providers to check).

        Safe from any thread (tests swap catalogues from theirs); a no-op when probes are off."""
        task = self._task
        if task is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closing: there is no next round
                task.get_loop().call_soon_threadsafe(self._wake.set)

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.probe_all()
            except Exception:  # the loop must survive anything one round does
                log.exception("health probe round failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)

    async def probe_all(self) -> None:
        """One round: probe every configured provider in use, record what each answered."""
        state = self.state
        for name, result in (await probe_catalogue(state, state.catalogue)).items():
            if result is None or name not in state.catalogue.instances:
                continue  # no probe, or a reload dropped the provider meanwhile: nobody would read it
            state.status.record_probe(name, result)
            if result.reachable:
                # It answered its listing, so it is back: no request should meet "provider in cooldown".
                state.breakers.probe_succeeded(name)


async def probe_catalogue(state: GatewayState, catalogue: Catalogue) -> dict[str, ProbeResult | None]:
    """Probe, concurrently, every provider the catalogue's models use and whose credentials are set.

    Keyed by provider, in the catalogue's order; None where the provider offers no probe. Providers
    without credentials are left out (a probe would only fail authentication). Never raises for a
    provider's failure: that is an unreachable result with the reason.
    """
    by_provider: dict[str, list[CatalogueModel]] = {}
    for model in catalogue.models:
        by_provider.setdefault(model.provider, []).append(model)
    names = [
        name
        for name in by_provider
        if not state.missing_credentials(name, catalogue) and state.providers.get(name) is not None
    ]
    results = await asyncio.gather(
        *(
            probe_one(state.providers[name], by_provider[name], catalogue.provider_entry(name).probe_timeout)
            for name in names
        )
    )
    return dict(zip(names, results, strict=True))


async def probe_one(provider: Provider, models: list[CatalogueModel], deadline: float) -> ProbeResult | None:
    """One free probe under its deadline; any failure is an unreachable result, never an exception."""
    try:
        async with asyncio.timeout(deadline):
            return await provider.probe(models)
    except TimeoutError:
        return ProbeResult(reachable=False, detail=f"no answer within {deadline:g} s")
    except ModelgateError as exc:
        return ProbeResult(reachable=False, detail=exc.message)
    except Exception as exc:  # a probe bug must not read as "ok", nor kill the loop
        name = provider.connection.name or provider.name
        log.warning("health probe of %s raised %s", name, type(exc).__name__, exc_info=exc)
        return ProbeResult(reachable=False, detail=f"probe error ({type(exc).__name__})")
