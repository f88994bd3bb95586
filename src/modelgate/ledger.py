"""The usage ledger: one row per chat request, written to a database in batches, off the request path.

``Ledger.record`` is what the request observer calls when a chat request's response is over (the
same moment its access line is written, ``observer.RequestObserver._finish``): it builds a
``UsageRecord`` from the request's ``Observation`` and appends it to an in-memory list. Nothing
else happens on the request path: no database round trip, no lock, no await.

A background task writes the list every ``flush_interval`` seconds, or as soon as ``batch_size``
rows wait, in one transaction (``usage_store.py``). ``stop`` (the app's lifespan end: ``modelgate
serve`` gets there on SIGTERM and Ctrl-C, after the open responses ended) writes whatever is
left. What a crash can lose is what waited: at most ``flush_interval`` seconds of requests (or,
while the database is unreachable, every row kept for the next attempt).

The database layer (SQLAlchemy and a driver) is imported by the writer task once the app runs, in a
thread, never at import: ``modelgate --help``, the app factory and the start stay as fast as before.
A database that cannot be opened or written does not stop the service: rows wait in memory (up to
``MAX_PENDING``) and the writer tries again every ``flush_interval``, logging the problem.

Which requests get a row: every request that reached ``gateway.open_stream``, i.e. a chat request
that was authenticated, valid, resolved to a catalogue model and admitted. Its row is written
whatever happened next: answered (``outcome`` ``ok``), failed mid-stream (``stream_error``), cut by
the client (``cancelled``), or failed before the first token (no outcome, the HTTP status of the
error). Requests refused before that (401, 403, 404, 400, 413, 429) reached no upstream, cost
nothing and have no row; the access log has them.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from modelgate.errors import ModelgateError

if TYPE_CHECKING:
    from modelgate.catalogue import Catalogue, Pricing
    from modelgate.observer import Observation
    from modelgate.usage_store import UsageFilter, UsageReport, UsageStore

log = logging.getLogger("modelgate.ledger")

#: Rows kept in memory while the database cannot be written; past it the oldest are dropped (and logged).
MAX_PENDING = 100_000
#: Seconds between two log lines saying the database cannot be opened (it is retried every flush interval).
COMPLAINT_INTERVAL = 60.0
#: Seconds ``stop`` waits for a write in progress before it gives up on it.
STOP_WAIT = 10.0


class LedgerUnavailable(ModelgateError):
    status = 503
    transient = True

    def __init__(self) -> None:
        super().__init__("The usage ledger's database is unavailable; usage is kept and written when it is back")


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """One chat request, as the ledger stores it."""

    ts: float  #: Unix time the request arrived
    request_id: str
    key_id: str | None  #: ``auth.ApiKey.key_id`` (a digest prefix, never the key); None on an open service
    model: str  #: the model that answered (the requested one when none did)
    requested_model: str
    provider: str
    status: int  #: the HTTP status (200 for a stream, even one that failed mid-way)
    outcome: str | None  #: ok | stream_error | cancelled; None when no reply started
    prompt_tokens: int | None
    completion_tokens: int | None
    reasoning_tokens: int | None  #: of ``completion_tokens``; None when the upstream did not report it
    #: Of ``prompt_tokens``, the provider's prompt-cache hits: 0 when it reported none, None when it did not say
    #: (rows written before the column existed, upstreams that do not report them, estimated usage).
    cached_tokens: int | None
    usage_estimated: bool
    ttft_ms: float | None
    duration_ms: float
    cost: float | None  #: USD (``request_cost``): as the upstream reported it, else at the catalogue's prices
    #: Random, made once with the record (``new_record_id``), so a batch written again after its commit's answer was
    #: lost adds no row: the database keeps one per id. Not ``request_id``: a client chooses that one (and may reuse
    #: it). None in the rows written before the column existed (migration 4).
    record_id: str | None


def new_record_id() -> str:
    return os.urandom(16).hex()


def request_cost(obs: Observation, pricing: Pricing | None) -> float | None:
    """USD a finished request cost, the one rule of the ledger's ``cost`` and the budgets' USD charge: what the
    upstream reported it billed (OpenRouter's ``usage.cost``: what was really charged, also where the catalogue has
    no price or an outdated one, or the upstream routed to a dearer provider), else its usage at the catalogue's
    prices of the model that answered (``pricing``), else None (no price, or no usage known)."""
    if obs.reported_cost is not None:
        return obs.reported_cost
    if pricing is None or obs.prompt_tokens is None or obs.completion_tokens is None:
        return None
    return pricing.cost(obs.prompt_tokens, obs.completion_tokens, obs.cached_tokens)


class Ledger:
    """The batching writer (one per app, on ``GatewayState``) and the reader behind ``/api/usage``."""

    def __init__(
        self,
        url: str,
        *,
        scrub: Callable[[str], str],
        flush_interval: float = 1.0,
        batch_size: int = 500,
    ) -> None:
        self.url = url
        self.flush_interval = flush_interval
        self.batch_size = batch_size
        self._scrub = scrub
        self._pending: list[UsageRecord] = []
        self._store: UsageStore | None = None
        self._task: asyncio.Task[None] | None = None
        self._due: asyncio.Event | None = None
        self._writing: asyncio.Lock | None = None
        self._opening: asyncio.Lock | None = None
        self._complained_at = -COMPLAINT_INTERVAL
        #: Since when writes have been failing (monotonic), or None while they succeed.
        self._failing_since: float | None = None

    # -- the request path ------------------------------------------------------------------------

    def record(self, obs: Observation, status: int, key_id: str | None, catalogue: Catalogue) -> None:
        """Queue the row of one finished chat request (``obs.model`` is set). Never waits."""
        assert obs.model is not None and obs.provider is not None
        now = time.perf_counter()
        answered = catalogue.by_id.get(obs.model)
        cost = request_cost(obs, answered.pricing if answered is not None else None)
        self._pending.append(
            UsageRecord(
                ts=time.time() - (now - obs.started),
                request_id=self._scrub(obs.request_id) if obs.client_id else obs.request_id,
                key_id=key_id,
                model=obs.model,
                requested_model=obs.requested_model or obs.model,
                provider=obs.provider,
                status=status,
                outcome=obs.stream_outcome,
                prompt_tokens=obs.prompt_tokens,
                completion_tokens=obs.completion_tokens,
                reasoning_tokens=obs.reasoning_tokens,
                cached_tokens=obs.cached_tokens,
                usage_estimated=obs.usage_estimated,
                ttft_ms=obs.ttft_ms,
                duration_ms=round((now - obs.started) * 1000, 1),
                cost=cost,
                record_id=new_record_id(),
            )
        )
        if len(self._pending) >= self.batch_size and self._due is not None:
            self._due.set()

    # -- the background writer -------------------------------------------------------------------

    async def start(self) -> None:
        """Start the writer, which opens the database in the background: the service answers at once.

        SQLAlchemy and a driver take a noticeable part of a second to import (in a thread here, so the
        event loop keeps serving), and a database that is down must not keep the gateway down: its
        rows wait in memory and the writer tries again every ``flush_interval``.
        """
        self._due = asyncio.Event()
        self._writing = asyncio.Lock()
        self._opening = asyncio.Lock()
        self._task = asyncio.create_task(self._run(), name="modelgate-ledger")

    async def stop(self) -> None:
        """Write everything still queued, then close the database."""
        task, self._task = self._task, None
        if task is not None:
            await self._cancel_between_writes(task)
        if self._writing is None:  # never started
            return
        if await self._open():
            await self.flush()
        if self._pending:
            log.error("usage ledger: %d rows could not be written before shutdown and are lost", len(self._pending))
            self._pending = []
        if self._store is not None:
            await self._store.close()
            self._store = None

    async def _cancel_between_writes(self, task: asyncio.Task[None]) -> None:
        """Stop the writer once a write in progress is done: cancelled inside ``insert``, its batch (out of
        ``_pending`` by then) would be lost.
        A database that does not finish within ``STOP_WAIT`` seconds is not waited for."""
        assert self._writing is not None
        try:
            async with asyncio.timeout(STOP_WAIT):
                await self._writing.acquire()
        except TimeoutError:
            log.error("usage ledger: a write did not finish within %g s of shutdown; its rows may be lost", STOP_WAIT)
            task.cancel()
        else:
            try:
                task.cancel()
            finally:
                self._writing.release()
        await asyncio.gather(task, return_exceptions=True)

    async def _open(self) -> bool:
        """Open the database (and migrate it) unless it is open; False, logged, when it cannot be."""
        if self._store is not None:
            return True
        assert self._opening is not None
        async with self._opening:  # the writer and a reader may both want it open
            if self._store is not None:
                return True
            return await self._open_now()

    async def _open_now(self) -> bool:
        try:
            store_module = await asyncio.to_thread(importlib.import_module, "modelgate.usage_store")
            self._store = await store_module.open_store(self.url)
        except Exception as exc:
            now = time.monotonic()
            if now - self._complained_at >= COMPLAINT_INTERVAL:
                self._complained_at = now
                log.error(
                    "usage ledger: cannot open the database (%s: %s); %d rows wait, retrying every %g s",
                    type(exc).__name__,
                    self._scrub(_first_line(exc)),
                    len(self._pending),
                    self.flush_interval,
                )
            return False
        log.info("usage ledger: database open (%s)", self._store.engine.dialect.name)
        return True

    async def flush(self) -> None:
        """Write the queued rows now, in one transaction. On failure they stay queued for the next try; one whose
        commit reached the database but whose answer was lost (a cut connection, a timeout) is stored once
        anyway, as the database skips the records it has (``record_id``)."""
        if self._writing is None or not await self._open():  # not started, or the database is not there yet
            return
        async with self._writing:
            batch, self._pending = self._pending, []
            if not batch:
                return
            assert self._store is not None
            try:
                refused = await self._store.insert(batch)
            except Exception as exc:
                self._pending = batch + self._pending  # back in front of what arrived meanwhile, oldest first
                self._write_failed(exc)
                self._bound()
            else:
                self._write_succeeded(len(batch))
                if refused:  # values the database cannot hold: dropped, as they would hold back every later row
                    log.error(
                        "usage ledger: %d rows the database refused were not written (request ids %s)",
                        len(refused),
                        ", ".join(record.request_id for record in refused[:10]),
                    )

    def _write_failed(self, exc: Exception) -> None:
        """Say that writes fail once a minute, not every flush interval (a down database filled the log)."""
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        if now - self._complained_at >= COMPLAINT_INTERVAL:
            self._complained_at = now
            log.error(
                "usage ledger: writing %d rows failed (%s: %s); they wait, retried every %g s (logged once a minute)",
                len(self._pending),
                type(exc).__name__,
                self._scrub(_first_line(exc)),
                self.flush_interval,
            )

    def _write_succeeded(self, written: int) -> None:
        if self._failing_since is not None:
            log.warning(
                "usage ledger: the database is writable again after %.0f s; %d waiting rows written",
                time.monotonic() - self._failing_since,
                written,
            )
            self._failing_since = None
            self._complained_at = -COMPLAINT_INTERVAL  # the next outage is reported at once

    def _bound(self) -> None:
        """Drop the oldest waiting rows past ``MAX_PENDING`` (the database has been failing for long)."""
        dropped = len(self._pending) - MAX_PENDING
        if dropped > 0:
            del self._pending[:dropped]
            log.error("usage ledger: %d oldest rows dropped: the database has not been writable for too long", dropped)

    async def _run(self) -> None:
        assert self._due is not None
        await self._open()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._due.wait(), self.flush_interval)
            self._due.clear()
            if await self._open():
                await self.flush()
            else:
                self._bound()

    # -- reading ---------------------------------------------------------------------------------

    async def report(self, query: UsageFilter) -> UsageReport:
        """Totals, groups and the newest rows matching ``query``; this instance's queued rows included."""
        if not await self._open():
            raise LedgerUnavailable()
        await self.flush()
        assert self._store is not None
        try:
            return await self._store.report(query)
        except Exception as exc:  # opened once, gone since (README: 503 until it is back), not a 500
            log.error("usage ledger: reading failed (%s: %s)", type(exc).__name__, self._scrub(_first_line(exc)))
            raise LedgerUnavailable() from exc

    async def database(self) -> UsageStore | None:
        """The open database (opened now if need be) for the other tables in it (``key_store.py``);
        None before ``start`` or while it cannot be opened."""
        if self._opening is None:
            return None
        return self._store if await self._open() else None

    @property
    def pending(self) -> int:
        return len(self._pending)


def _first_line(exc: Exception) -> str:
    """The gist of a database error: SQLAlchemy appends the statement and every row's parameters."""
    return str(exc).partition("\n")[0]
