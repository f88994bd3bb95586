"""Keys managed at run time: records in the ledger's database, kept in every instance's key ring.

The key ring an instance enforces (``GatewayState.keys``) is made of three sources:

- ``MODELGATE_API_KEYS`` and the keys file (``auth.load_keyring``): read at start and on reload, as
  before. They are also *imported* into the database (rows with ``source`` ``env`` / ``file``) so
  ``GET /admin/keys`` lists every key that works; the file stays authoritative for them (the API
  refuses to revoke or rotate them, and an instance enforces its own file, never these rows).
- run-time keys (``source`` ``api``), created, revoked and rotated through ``/admin/keys``
  (``routes/admin_keys.py``): only their SHA-256 digests are stored.

**No database on the request path.** A background task (``RuntimeKeys._run``) reads one number every
``MODELGATE_KEY_REFRESH_INTERVAL`` seconds (default 1): the keys table's revision, which every change
bumps in its own transaction (a counter, not a clock, so instances with skewed clocks never miss a
change). When it moved, the task reads the run-time keys and swaps a new ``KeyRing`` in with one
reference assignment; requests keep reading the ring in memory. A revocation therefore stops the key
on every instance within one interval plus one query; the instance that made the change applies it
before it answers.

**Fail closed.** Once any run-time key was ever created (revoked ones included), keys stay required
even if no key is left: revoking the last key must not open the service. With ``MODELGATE_ADMIN_KEY``
set, an instance reads the database's keys before it serves (for up to ``FIRST_LOAD_TIMEOUT``) and,
until it has, requires a key — an instance whose database is down at start refuses run-time keys rather
than admitting anyone.

SQLAlchemy is imported with the database (``key_store.py``, through ``ledger.Ledger.database``), never here.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from modelgate.auth import ApiKey, KeyRing, key_digest
from modelgate.budget_rules import Budget

if TYPE_CHECKING:
    from modelgate.key_store import KeyStore
    from modelgate.ledger import Ledger

log = logging.getLogger("modelgate.keys")

#: Seconds an instance with ``MODELGATE_ADMIN_KEY`` waits at start for the database's keys.
FIRST_LOAD_TIMEOUT = 10.0
#: Seconds between two log lines saying the database cannot be read (it is retried every interval).
COMPLAINT_INTERVAL = 60.0
#: Prefix of the keys ``/admin/keys`` makes, so a leaked one is recognisable (e.g. by secret scanners).
KEY_PREFIX = "mg-"

#: Where a key record comes from.
SOURCE_API = "api"
SOURCE_FILE = "file"
SOURCE_ENV = "env"


def new_secret() -> str:
    """A fresh key: 256 random bits, URL-safe (printable ASCII without spaces, as ``auth`` requires)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def digest_hex(secret: str) -> str:
    return key_digest(secret).hex()


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One key as the database holds it: its digest, never the key."""

    id: str
    name: str
    source: str  #: api | file | env
    digest: str  #: hex SHA-256 of the current key
    models: tuple[str, ...]
    requests_per_minute: int | None
    concurrent_streams: int | None
    budget: dict[str, Any] | None  #: as ``budget_rules.Budget`` fields; stored as JSON
    created_at: float  #: Unix time
    updated_at: float
    expires_at: float | None = None
    revoked_at: float | None = None
    #: After a rotation with a grace period: the old key's digest, and until when it still works.
    previous_digest: str | None = None
    previous_until: float | None = None

    def status(self, now: float) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"

    def api_keys(self, now: float) -> list[ApiKey]:
        """The keys this record lets in at ``now``: the current one, and the previous one in its grace period."""
        if self.status(now) != "active":
            return []
        digests = [self.digest]
        if self.previous_digest and self.previous_until is not None and self.previous_until > now:
            digests.append(self.previous_digest)
        return [
            ApiKey(
                digest=bytes.fromhex(digest),
                name=self.name,
                models=self.models,
                requests_per_minute=self.requests_per_minute,
                concurrent_streams=self.concurrent_streams,
                budget=Budget.model_validate(self.budget) if self.budget else None,
                id=self.id,
            )
            for digest in digests
        ]

    def next_change(self, now: float) -> float | None:
        """When this record's keys change without a database write (expiry, end of a grace period)."""
        moments = [t for t in (self.expires_at, self.previous_until) if t is not None and t > now]
        return min(moments, default=None)


def local_sources(ring: KeyRing, env_keys: Sequence[str]) -> list[tuple[ApiKey, str]]:
    """Each key of the file-and-environment ring with where it came from (the file wins a shared key)."""
    env_digests = {key_digest(value) for value in env_keys}
    return [
        (key, SOURCE_ENV if key.name.startswith("env-") and key.digest in env_digests else SOURCE_FILE)
        for key in ring.keys
    ]


def compose(local: KeyRing, stored: Sequence[ApiKey], *, required: bool) -> KeyRing:
    """The ring an instance enforces: its own keys, then the run-time keys that do not clash with them."""
    local_digests = {key.digest for key in local.keys}
    local_ids = {key.key_id for key in local.keys}
    keys = list(local.keys)
    for key in stored:
        if key.digest in local_digests:
            continue  # the same key in the file or the environment: that entry (its models and limits) wins
        if key.key_id in local_ids:  # key_id names a key in logs, limits and the ledger: it must be one key
            log.warning("run-time key %s skipped: a key of the keys file has the same key_id", key.key_id)
            continue
        keys.append(key)
    return KeyRing(tuple(keys), required=required or local.required)


class RuntimeKeys:
    """Keeps the run-time keys of one instance current (see the module docstring)."""

    def __init__(
        self,
        ledger: Ledger,
        *,
        local: Callable[[], KeyRing],
        env_keys: Sequence[str],
        publish: Callable[[KeyRing], None],
        interval: float,
        fail_closed: bool,
        scrub: Callable[[str], str],
    ) -> None:
        self._ledger = ledger
        self._local = local
        self._env_keys = tuple(env_keys)
        self._publish = publish
        self.interval = interval
        self._fail_closed = fail_closed
        self._stored: tuple[ApiKey, ...] = ()
        self._required = fail_closed  # until the first load says whether run-time keys exist
        self._records: list[KeyRecord] = []
        self._revision: int | None = None
        #: When the ring must be rebuilt next (a load, an expiry, a grace period's end); None: not until a change.
        self._next_change: float | None = None
        self._published = False
        self._imported: KeyRing | None = None
        self._task: asyncio.Task[None] | None = None
        self._syncing = asyncio.Lock()
        self._store: KeyStore | None = None
        self._scrub = scrub
        self._complained_at = -COMPLAINT_INTERVAL

    def ring(self, local: KeyRing) -> KeyRing:
        """The ring to enforce with the file-and-environment ring ``local``."""
        return compose(local, self._stored, required=self._required)

    async def start(self) -> None:
        if self._fail_closed:  # know the keys before the first request (bounded: a down database must not hang us)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FIRST_LOAD_TIMEOUT):
                    while not await self.refresh():  # noqa: ASYNC110 (polls the database, not a flag)
                        await asyncio.sleep(self.interval)
        self._task = asyncio.create_task(self._run(), name="modelgate-keys")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._store = None  # the engine belongs to the ledger, which closes it

    async def store(self) -> KeyStore | None:
        """The key table's store on the ledger's database, or None while that cannot be opened."""
        if self._store is None:
            database = await self._ledger.database()
            if database is None:
                return None
            module = importlib.import_module("modelgate.key_store")  # SQLAlchemy is loaded by now
            self._store = module.KeyStore(database.engine)
        return self._store

    async def refresh(self) -> bool:
        """One sync now: import the local keys if they changed, reload the run-time keys if they did.
        False (logged) when the database cannot be read: the keys loaded last stay, expiries still apply."""
        async with self._syncing:
            try:
                loaded = await self._load()
            except Exception as exc:
                self._complain("cannot read the database", exc)
                loaded = False
            self._rebuild(time.time())
            return loaded

    async def _load(self) -> bool:
        store = await self.store()
        if store is None:
            return False
        local = self._local()
        if local is not self._imported:
            try:
                await store.import_local(local_sources(local, self._env_keys), now=time.time())
                self._imported = local
            except Exception as exc:  # listing only: it must not hold up revocations (retried next time)
                self._complain("cannot list the keys file's keys", exc)
        revision = await store.revision()
        if revision != self._revision:
            self._records = await store.runtime_records()
            self._revision = revision
            self._next_change = 0.0  # rebuild now
        return True

    def _rebuild(self, now: float) -> None:
        """Swap in a new ring when the records changed or one of them expired (no database needed)."""
        if self._next_change is None or now < self._next_change:
            return
        records = self._records
        stored = tuple(key for record in records for key in record.api_keys(now))
        changes = [moment for record in records if (moment := record.next_change(now)) is not None]
        self._next_change = min(changes, default=None)
        if stored == self._stored and self._required == bool(records) and self._published:
            return
        self._stored = stored
        self._required = bool(records)  # revoked ones count: keys stay required once managed here
        self._published = True
        self._publish(self.ring(self._local()))
        log.info("run-time keys: %d active (revision %s)", len(stored), self._revision)

    def _complain(self, what: str, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._complained_at >= COMPLAINT_INTERVAL:  # retried every interval: say so once a minute
            self._complained_at = now
            log.error(
                "run-time keys: %s (%s: %s); keeping the %d keys loaded, retrying",
                what,
                type(exc).__name__,
                self._scrub(_first_line(exc)),
                len(self._stored),
            )

    async def _run(self) -> None:
        while True:
            refreshing = asyncio.ensure_future(self.refresh())
            try:
                # A database that hangs (a lock, a network black hole) raises nothing for as long as it lasts:
                # expiries and grace ends, which need no database, are applied meanwhile all the same.
                while not refreshing.done():
                    await asyncio.wait((refreshing,), timeout=self.interval)
                    self._rebuild(time.time())
                refreshing.result()
            finally:
                refreshing.cancel()
            await asyncio.sleep(self.interval)


def _first_line(exc: Exception) -> str:
    return str(exc).partition("\n")[0]
