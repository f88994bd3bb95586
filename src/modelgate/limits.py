"""Admission: auth, policy and limits for one chat request, in ``admit``.

Limits (over one → ``RateLimited``, 429 with ``Retry-After``):

- per key: ``requests_per_minute`` (a sliding window: at most N admitted requests in any 60 s;
  ``Retry-After`` = seconds until the oldest leaves the window) and ``concurrent_streams``;
- per provider (``[providers.X] max_concurrency``) and per model (``max_concurrency``): caps that
  protect the upstream. Concurrency is held for the whole request — the stream included — and
  released when it ends, fails or the client goes away (``Retry-After: 1``).

A fallback is admitted like a direct call to it (``Admission.admit_fallback``): the key's policy
first, then the fallback's own provider and model slots, taken before it is tried, while the failed
model's are given back. The key's own limits (its window and stream slot) are one per request,
whichever model answers.

Counters live behind ``LimitBackend`` (``limit_store.py``): ``MemoryBackend`` (default; one process) or
``RedisBackend`` (``limit_store_redis.py``, ``MODELGATE_REDIS_URL``), where one Lua script checks and takes
every limit of a request atomically using the Redis server's clock, so limits hold across workers and
instances. A concurrency slot is a lease with a TTL that its holder renews while the stream runs: a crashed
instance's slots free themselves after ``lease_ttl`` instead of leaking forever.

A key's budget (``budgets.py``) is the other thing an ``Admission`` holds: reserved when the request's
``ChatRequest`` is known (``Admission.reserve_budget``, first thing in ``gateway.open_stream``) and
settled in ``Admission.release``; its counters live beside these (``Limiter.budgets``).
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Callable, Container, Sequence
from typing import TYPE_CHECKING

from starlette.requests import Request

from modelgate import budgets
from modelgate.auth import Principal, may_call, on_request_end, request_principal
from modelgate.budget_rules import Budget
from modelgate.budget_store import MemoryCounters
from modelgate.budget_store_redis import RedisCounters
from modelgate.budgets import Budgets, Reservation
from modelgate.errors import Forbidden, ModelgateError, RateLimited
from modelgate.limit_store import Lease, LimitBackend, MemoryBackend, Plan, Slot, Window
from modelgate.limit_store_redis import RedisBackend
from modelgate.observer import current_observation

if TYPE_CHECKING:
    from modelgate.app import GatewayState
    from modelgate.catalogue import Catalogue, CatalogueModel
    from modelgate.chat import ChatRequest
    from modelgate.observer import Observation
    from modelgate.settings import Settings

log = logging.getLogger("modelgate.limits")

WINDOW_SECONDS = 60.0


# --- the limiter --------------------------------------------------------------------------------------


class Limiter:
    """Turns the configured limits for (key, model) into a ``Plan`` and runs it on a backend."""

    def __init__(self, backend: LimitBackend) -> None:
        self.backend = backend
        #: Per-key budgets, counted in the same store: Redis when the limits are shared, else this process.
        self.budgets = Budgets(
            RedisCounters(lambda: backend.client, backend.prefix, backend)
            if isinstance(backend, RedisBackend)
            else MemoryCounters()
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> Limiter:
        if settings.redis_url:
            return cls(RedisBackend(settings.redis_url))
        return cls(MemoryBackend())

    async def start(self) -> None:
        await self.backend.start()
        self.budgets.start()

    def when_store_lost(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when the shared store (Redis) is found to have lost its data, budgets' counters included:
        at the admission that finds it, before that request holds any budget."""
        if isinstance(self.backend, RedisBackend):
            self.backend.lost = callback

    async def stop(self) -> None:
        await self.budgets.stop()
        await self.backend.stop()

    async def problem(self) -> str | None:
        """What keeps the counter store from counting (``/ready`` reports it), or None."""
        return await self.backend.problem()

    def plan(self, principal: Principal, model: CatalogueModel, catalogue: Catalogue) -> Plan:
        """Every limit of a direct call by ``principal`` to ``model``."""
        key = self.key_plan(principal)
        return Plan(key.window, key.slots + self.model_slots(model, catalogue))

    @staticmethod
    def key_plan(principal: Principal) -> Plan:
        """The caller's own limits: counted once per request, whichever model answers it."""
        window: Window | None = None
        slots: list[Slot] = []
        key = principal.key
        if key is not None:
            if key.requests_per_minute is not None:
                window = Window(
                    f"rpm:{key.key_id}",
                    key.requests_per_minute,
                    WINDOW_SECONDS,
                    f"Rate limit exceeded: key '{key.name}' allows {key.requests_per_minute} requests per minute",
                )
            if key.concurrent_streams is not None:
                slots.append(
                    Slot(
                        f"streams:key:{key.key_id}",
                        key.concurrent_streams,
                        f"Too many concurrent streams: key '{key.name}' allows {key.concurrent_streams} at a time",
                    )
                )
        return Plan(window, tuple(slots))

    @staticmethod
    def model_slots(model: CatalogueModel, catalogue: Catalogue) -> tuple[Slot, ...]:
        """The caps that protect ``model``'s upstream: held by whichever request ``model`` is answering."""
        slots: list[Slot] = []
        provider_cap = catalogue.provider_entry(model.provider).max_concurrency
        if provider_cap is not None:
            slots.append(
                Slot(
                    f"streams:provider:{model.provider}",
                    provider_cap,
                    f"Provider '{model.provider}' is at its concurrency limit ({provider_cap} streams)",
                )
            )
        if model.max_concurrency is not None:
            slots.append(
                Slot(
                    f"streams:model:{model.id}",
                    model.max_concurrency,
                    f"Model '{model.id}' is at its concurrency limit ({model.max_concurrency} streams)",
                )
            )
        return tuple(slots)

    async def acquire(self, principal: Principal, model: CatalogueModel, catalogue: Catalogue) -> Lease | None:
        """Take every limit for this request, or raise ``RateLimited``. ``None``: nothing to release."""
        plan = self.plan(principal, model, catalogue)
        lease_id = uuid.uuid4().hex
        await self.take(plan, lease_id)
        return Lease(lease_id, tuple(slot.key for slot in plan.slots)) if plan.slots else None

    async def take(self, plan: Plan, lease_id: str) -> None:
        """Count ``plan`` under ``lease_id`` (all of it or nothing), or raise ``RateLimited``."""
        if plan.empty:
            return
        try:
            denied = await self.backend.acquire(plan, lease_id)
        except self.backend.errors as exc:
            # Fail closed: admitting unmetered would break the limits operators rely on.
            log.error("rate-limit store unavailable: %s", type(exc).__name__)
            raise ModelgateError("Rate-limit store unavailable; try again shortly", status=503) from exc
        if denied is not None:
            retry_after = max(1, math.ceil(denied.retry_after))
            raise RateLimited(denied.limit.message, retry_after=retry_after, data={"retryAfter": retry_after})

    async def uncount(self, window: Window, lease_id: str) -> None:
        """Give back ``lease_id``'s place in ``window``, as a request refused at admission never took one."""
        try:
            await self.backend.uncount(window, lease_id)
        except self.backend.errors as exc:  # it leaves the window within its 60 s anyway
            log.warning("could not give back a requests-per-minute admission: %s", type(exc).__name__)

    async def release(self, lease: Lease) -> None:
        try:
            await self.backend.release(lease)
        except self.backend.errors as exc:
            # The lease TTL frees the slot anyway.
            log.warning("could not release a concurrency lease: %s", type(exc).__name__)


class Admission:
    """What ``admit`` let in: the caller, and the slots its request holds until the request is over.

    One lease id covers them all. The key's slots stay for the whole request; the model side
    (provider and model caps) follows the model being tried, so a fallback holds its own caps and
    not the failed model's.
    """

    def __init__(self, principal: Principal, limiter: Limiter, catalogue: Catalogue) -> None:
        self.principal = principal
        self._limiter = limiter
        self._catalogue = catalogue
        self._lease_id = uuid.uuid4().hex
        self._key_slots: tuple[str, ...] = ()
        self._model_slots: tuple[str, ...] = ()
        self._reservation: Reservation | None = None
        #: A reservation sent to the budget store and not answered yet (see ``reserve_budget``).
        self._pending: Reservation | None = None
        self._obs: Observation | None = None
        #: The window of an admission the store failed to answer: it may hold this request's place (``_take``).
        self._uncounted: Window | None = None

    @property
    def held(self) -> tuple[str, ...]:
        return self._key_slots + self._model_slots

    async def admit_model(self, model: CatalogueModel) -> None:
        """The direct call: policy (``Forbidden``), then the key's and ``model``'s limits in one step."""
        self._check_policy(model)
        key = self._limiter.key_plan(self.principal)
        model_slots = self._limiter.model_slots(model, self._catalogue)
        await self._take(Plan(key.window, key.slots + model_slots), key.slots, model_slots)

    async def admit_fallback(self, model: CatalogueModel) -> None:
        """Move to ``model`` as if it were called directly: ``Forbidden`` if the key may not use it,
        ``RateLimited`` if its provider or model is at its cap. The failed model's slots are given
        back first: the request no longer uses that upstream, and a fallback on the same provider
        must not count this request twice.
        """
        self._check_policy(model)
        await self._give_back(self._model_slots)
        self._model_slots = ()
        model_slots = self._limiter.model_slots(model, self._catalogue)
        await self._take(Plan(None, model_slots), (), model_slots)

    @property
    def budget(self) -> Budget | None:
        """The caller's budget, if its key has one."""
        key = self.principal.key
        return key.budget if key is not None else None

    async def reserve_budget(
        self, calls: Sequence[tuple[CatalogueModel, ChatRequest]], billed_by_reply: Container[str] = frozenset()
    ) -> None:
        """Hold the most the request may cost in its key's budget, or raise ``RateLimited`` (429) when spent.

        ``calls``: the request as each model that may answer it would be sent (the requested model, admitted by
        ``admit_model``, and its fallbacks, each with its own defaults); the hold is the most any of them the key may
        use could cost. ``billed_by_reply``: the provider instances whose upstream says what each reply cost
        (``budgets.estimate``). Settled to the actual cost by ``release``."""
        key = self.principal.key
        if key is None or key.budget is None or self._reservation is not None or self._pending is not None:
            return
        most, prompt = budgets.worst_case(
            budgets.estimate(m, r, billed_by_reply=m.provider in billed_by_reply)
            for m, r in calls
            if may_call(self.principal, m.id)
        )
        self._obs = current_observation()
        reservation = self._limiter.budgets.reservation(key.key_id, key.budget, most, prompt)
        # Recorded before the store answers: a request cancelled meanwhile (its hold may be made in Redis, the
        # answer on its way back) still gives it back in ``release`` instead of holding it for HOLD_SECONDS.
        self._pending = reservation
        try:
            await self._limiter.budgets.hold(reservation, key.name)
        except ModelgateError as exc:
            # No reply reaches an upstream: the window's place is given back. Refused (429), nothing is held; a store
            # failing (503) may have held it, its answer lost on the way back: ``release`` gives it back then.
            if isinstance(exc, RateLimited):
                self._pending = None
            await self._uncount_window()
            raise
        self._pending, self._reservation = None, reservation

    async def release(self) -> None:
        """Give back everything held and charge the budget what the request cost (run once it is over)."""
        await self._give_back(self.held)
        self._key_slots = self._model_slots = ()
        uncounted, self._uncounted = self._uncounted, None
        if uncounted is not None:
            await self._limiter.uncount(uncounted, self._lease_id)
        reservation, self._reservation = self._reservation, None
        pending, self._pending = self._pending, None
        try:
            if reservation is not None:
                await self._limiter.budgets.settle(reservation, budgets.actual(self._obs, reservation, self._catalogue))
            elif pending is not None:  # cancelled while the store answered: no reply began, nothing to charge
                await self._limiter.budgets.give_back(pending)
        except ModelgateError as exc:  # sent again for a while, then its hold lapses; the ledger has its row
            log.warning("could not settle a budget charge (sent again shortly): %s", exc.message)

    async def _uncount_window(self) -> None:
        """A request the budget refused reaches no upstream: like one over a concurrency cap, it must not use up
        one of the key's ``requests_per_minute`` (a client retrying a busy budget each second locked itself out)."""
        window = self._limiter.key_plan(self.principal).window
        if window is not None:
            await self._limiter.uncount(window, self._lease_id)

    def _check_policy(self, model: CatalogueModel) -> None:
        if not may_call(self.principal, model.id):
            raise Forbidden(f"This API key may not use the model '{model.id}'", data={"model": model.id})

    async def _take(self, plan: Plan, key_slots: tuple[Slot, ...], model_slots: tuple[Slot, ...]) -> None:
        # Counted as held before the store answers: if the request is cancelled meanwhile, or the store fails
        # (it may have taken them, its answer lost on the way back), ``release`` still gives them back (releasing
        # a slot that was never taken changes nothing).
        self._key_slots += tuple(s.key for s in key_slots)
        self._model_slots += tuple(s.key for s in model_slots)
        try:
            await self._limiter.take(plan, self._lease_id)
        except RateLimited:  # refused: nothing was taken
            self._key_slots = tuple(k for k in self._key_slots if k not in {s.key for s in key_slots})
            self._model_slots = ()
            raise
        except ModelgateError:
            # The store failed (503), perhaps after counting the request, its answer lost on the way back: the client
            # was refused, so ``release`` gives back its place in the window too, as for a budget's refusal.
            self._uncounted = plan.window
            raise

    async def _give_back(self, slots: tuple[str, ...]) -> None:
        if slots:
            await self._limiter.release(Lease(self._lease_id, slots))


async def admit(state: GatewayState, request: Request, model: CatalogueModel) -> Admission:
    """Auth + policy + limits for one request to ``model``; call it before opening the stream.

    Raises ``Unauthorized`` (401), ``Forbidden`` (403) or ``RateLimited`` (429). Concurrency taken
    here is held until the request is over — its stream included — and then released. Hand the
    ``Admission`` to ``gateway.open_stream``: its fallbacks are admitted through it.
    """
    admission = Admission(request_principal(request), state.limiter, state.catalogue)
    on_request_end(request, admission.release)  # first: a request cancelled while admitted leaks nothing
    await admission.admit_model(model)
    return admission
