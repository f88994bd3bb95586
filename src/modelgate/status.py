"""What ``/api/status`` reports: each provider's and model's health, from real traffic and free probes.

Two sources, neither of which costs a billed call:

- **traffic**: ``gateway.open_stream`` records every upstream attempt (ok or failed, time to first
  token) and every mid-stream failure into a rolling window per provider and per model;
- **probes**: a background task (``Prober``, started by the app's lifespan) calls each configured
  provider's ``probe()`` — a model listing, Ollama's tags, never a generation — every
  ``settings.probe_interval`` seconds, each under its own deadline (``probe_timeout`` of the
  provider's catalogue entry). Requests read the last results; no request ever awaits a probe.

Status rules (first that applies), per provider:

``unconfigured``  its credentials are missing;
``down``          its circuit breaker is open; or the last probe failed and no reply succeeded since;
                  or its last ``DOWN_AFTER`` attempts (within the window) all failed;
``degraded``      at least ``MIN_SAMPLES`` attempts in the window and an error rate of at least
                  ``DEGRADED_ERROR_RATE``; or a median time to first token of ``SLOW_TTFT`` or more;
``ok``            otherwise (also before anything was seen: ``last_checked_at`` is then null).

Per model the same on the model's own traffic, plus: ``down`` when its provider is, or when the last
probe listed the provider's models and this one's upstream id was not among them; ``degraded`` when
its provider is.
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
from modelgate.providers import ProbeResult

if TYPE_CHECKING:
    from modelgate.app import GatewayState
    from modelgate.catalogue import Catalogue, CatalogueModel
    from modelgate.resilience import Breakers
    from modelgate.settings import Settings

log = logging.getLogger("modelgate.status")

Status = Literal["ok", "degraded", "down", "unconfigured"]

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

    def record(self, now: float, wall: float, ok: bool, ttft: float | None, reason: str | None) -> None:
        self.samples.append(_Sample(now, ok, ttft))
        self.last_seen_wall = wall
        if ok:
            self.consecutive_failures = 0
            self.last_success_at = now
        else:
            self.consecutive_failures += 1
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
        self, provider: str, model: str, *, ok: bool, ttft: float | None = None, reason: str | None = None
    ) -> None:
        now, wall = self.clock(), self.wall()
        self._providers.setdefault(provider, _Signals()).record(now, wall, ok, ttft, reason)
        self._models.setdefault(model, _Signals()).record(now, wall, ok, ttft, reason)

    def record_probe(self, provider: str, result: ProbeResult) -> None:
        self._probes[provider] = _Probe(
            at=self.clock(),
            wall=self.wall(),
            reachable=result.reachable,
            detail=result.detail,
            available=result.available_models,
        )

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
            status, reason = self._model_status(model, now, providers[model.provider])
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
            return (
                "down",
                f"circuit open for {breaker.remaining_cooldown():.0f} s more after repeated failures: {breaker.reason}",
            )
        signals = self._providers.get(name)
        probe = self._probes.get(name)
        if probe is not None and not probe.reachable:
            recovered = signals is not None and signals.last_success_at > probe.at
            if not recovered:
                return "down", f"probe failed: {probe.detail or 'unreachable'}"
        if signals is None:
            return "ok", None
        return signals.verdict(now)

    def _model_status(self, model: CatalogueModel, now: float, provider: dict[str, Any]) -> tuple[Status, str | None]:
        if provider["status"] in ("unconfigured", "down"):
            return provider["status"], f"provider {model.provider} is {provider['status']}: {provider['reason']}"
        probe = self._probes.get(model.provider)
        if probe is not None and probe.available is not None and model.upstream_model not in probe.available:
            return "down", f"{model.provider} does not list the model '{model.upstream_model}'"
        signals = self._models.get(model.id)
        status, reason = signals.verdict(now) if signals is not None else ("ok", None)
        if status == "ok" and provider["status"] == "degraded":
            return "degraded", f"provider {model.provider} is degraded: {provider['reason']}"
        return status, reason

    def _last_checked(self, signals: _Signals | None, probe: _Probe | None) -> str | None:
        times = [t for t in (signals.last_seen_wall if signals else None, probe.wall if probe else None) if t]
        return _iso(max(times)) if times else None


def _overall(statuses: Iterable[str]) -> str:
    values = [s for s in statuses if s != "unconfigured"]
    if not values or all(s == "ok" for s in values):
        return "ok"
    if all(s == "down" for s in values):
        return "down"
    return "degraded"


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# --- the background probes ----------------------------------------------------------------------


class Prober:
    """Probes every configured provider each ``interval`` seconds, in the background.

    The first round runs one interval after start, not at once: a just-started service (or a test)
    then sends upstream nothing it did not ask for.
    """

    def __init__(self, state: GatewayState, interval: float) -> None:
        self.state = state
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.interval > 0 and self._task is None:
            self._task = asyncio.create_task(self._run(), name="modelgate-probes")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.probe_all()
            except Exception:  # the loop must survive anything one round does
                log.exception("health probe round failed")

    async def probe_all(self) -> None:
        catalogue = self.state.catalogue
        by_provider: dict[str, list[CatalogueModel]] = {}
        for model in catalogue.models:
            by_provider.setdefault(model.provider, []).append(model)
        await asyncio.gather(*(self._probe(name, models) for name, models in by_provider.items()))

    async def _probe(self, name: str, models: list[CatalogueModel]) -> None:
        if self.state.missing_credentials(name):
            return  # unconfigured: a probe would only fail authentication
        provider = self.state.providers.get(name)
        if provider is None:
            return
        deadline = self.state.catalogue.provider_entry(name).probe_timeout
        result: ProbeResult | None
        try:
            async with asyncio.timeout(deadline):
                result = await provider.probe(models)
        except TimeoutError:
            result = ProbeResult(reachable=False, detail=f"no answer within {deadline:g} s")
        except ModelgateError as exc:
            result = ProbeResult(reachable=False, detail=exc.message)
        except Exception as exc:  # a probe bug must not read as "ok", nor kill the loop
            log.warning("health probe of %s raised %s", name, type(exc).__name__, exc_info=exc)
            result = ProbeResult(reachable=False, detail=f"probe error ({type(exc).__name__})")
        if result is not None:
            self.state.status.record_probe(name, result)
