"""The run-time keys' tables, in the ledger's database (SQLite or PostgreSQL, SQLAlchemy 2's async Core).

Created by step 2 of ``usage_store.MIGRATIONS``. ``modelgate_keys`` holds one row per key: its SHA-256
digest (never the key), name, model globs, limits, budget (JSON, as ``budget_rules.Budget`` fields) and
times. ``modelgate_key_revision`` is one row, one counter, bumped in the transaction of every change
to a run-time key: what each instance polls (``runtime_keys.RuntimeKeys``) to learn that something
changed with one cheap read. Imported with the database, never at import of the service.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from modelgate.auth import ApiKey
from modelgate.runtime_keys import SOURCE_API, SOURCE_ENV, SOURCE_FILE, KeyRecord

metadata = MetaData()

keys = Table(
    "modelgate_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(64), nullable=False),
    Column("source", String(8), nullable=False),
    Column("digest", String(64), nullable=False, unique=True),
    Column("models", JSON, nullable=False),
    Column("requests_per_minute", Integer),
    Column("concurrent_streams", Integer),
    Column("budget", JSON),
    Column("created_at", Float(precision=53), nullable=False),
    Column("updated_at", Float(precision=53), nullable=False),
    Column("expires_at", Float(precision=53)),
    Column("revoked_at", Float(precision=53)),
    Column("previous_digest", String(64)),
    Column("previous_until", Float(precision=53)),
)

key_revision = Table(
    "modelgate_key_revision",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("revision", BigInteger, nullable=False),
)


def create_key_tables(connection: Connection) -> None:
    """Migration step 2 (``usage_store.MIGRATIONS``)."""
    metadata.create_all(connection)
    connection.execute(insert(key_revision).values(id=1, revision=0))


def _record(row: Any) -> KeyRecord:
    values = row._asdict()
    values["models"] = tuple(values["models"])
    return KeyRecord(**values)


_FIELDS = [field.name for field in fields(KeyRecord)]
_COLUMNS = [keys.c[name] for name in _FIELDS]


class KeyStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    # -- what every instance polls -----------------------------------------------------------------

    async def revision(self) -> int:
        async with self.engine.connect() as conn:
            return int((await conn.execute(select(key_revision.c.revision))).scalar_one())

    async def runtime_records(self) -> list[KeyRecord]:
        """Every run-time key, revoked and expired ones included (they keep keys required)."""
        return await self._select(keys.c.source == SOURCE_API)

    # -- the admin API ------------------------------------------------------------------------------

    async def records(self) -> list[KeyRecord]:
        return await self._select()

    async def get(self, key_id: str) -> KeyRecord | None:
        found = await self._select(keys.c.id == key_id)
        return found[0] if found else None

    async def create(self, record: KeyRecord) -> bool:
        """Store ``record`` unless an active key has its name (then False, nothing written).

        The revision is bumped first: that write locks its one row (PostgreSQL) or the database (SQLite) until
        the commit, so concurrent creates, on this instance or another, check the names one after the other
        (a check in its own query let twenty creates of one name in at once, all active)."""
        async with self.engine.begin() as conn:
            await _bump(conn)
            if await _active_name(conn, record.name, record.created_at):
                await conn.rollback()
                return False
            await conn.execute(insert(keys).values(**_values(record)))
            return True

    async def revoke(self, key_id: str, now: float) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(keys)
                .where(keys.c.id == key_id, keys.c.source == SOURCE_API, keys.c.revoked_at.is_(None))
                .values(revoked_at=now, updated_at=now, previous_until=None)
            )
            await _bump(conn)

    async def rotate(self, key_id: str, replaced: str, digest: str, now: float, previous_until: float | None) -> bool:
        """A new digest for the record; the old one works until ``previous_until`` (None: not at all).

        Only while the record is not revoked and its digest is still ``replaced`` (the one the caller read), else
        False and nothing written: a rotation that read the record before another rotation or a revoke changed it
        would answer 200 for a lost update, or with a new key for a revoked record that never works."""
        async with self.engine.begin() as conn:
            changed = await conn.execute(
                update(keys)
                .where(
                    keys.c.id == key_id,
                    keys.c.source == SOURCE_API,
                    keys.c.digest == replaced,
                    keys.c.revoked_at.is_(None),
                )
                .values(
                    digest=digest,
                    previous_digest=keys.c.digest if previous_until is not None else None,
                    previous_until=previous_until,
                    updated_at=now,
                )
            )
            if changed.rowcount != 1:
                await conn.rollback()
                return False
            await _bump(conn)
            return True

    # -- the keys file and MODELGATE_API_KEYS, listed beside the run-time keys ------------------------

    async def import_local(self, local: Sequence[tuple[ApiKey, str]], now: float) -> None:
        """Upsert this instance's file and environment keys; mark the file/env rows no longer there revoked.

        These rows are for listing: enforcement of these keys comes from each instance's own file, so
        importing them bumps no revision. A run-time key with the same id is left alone (the file's
        entry is enforced, ``runtime_keys.compose``).
        """
        async with self.engine.begin() as conn:
            existing = {row.id: row for row in await conn.execute(select(keys.c.id, keys.c.source, keys.c.revoked_at))}
            for key, source in local:
                values = {
                    "name": key.name,
                    "source": source,
                    "digest": key.digest.hex(),
                    "models": list(key.models),
                    "requests_per_minute": key.requests_per_minute,
                    "concurrent_streams": key.concurrent_streams,
                    "budget": key.budget.model_dump(exclude_none=True) if key.budget else None,
                    "revoked_at": None,
                }
                row = existing.get(key.key_id)
                if row is None:
                    await conn.execute(insert(keys).values(id=key.key_id, created_at=now, updated_at=now, **values))
                elif row.source != SOURCE_API:
                    await conn.execute(update(keys).where(keys.c.id == key.key_id).values(updated_at=now, **values))
            present = {key.key_id for key, _ in local}
            gone = [
                row.id
                for row in existing.values()
                if row.source in (SOURCE_FILE, SOURCE_ENV) and row.id not in present and row.revoked_at is None
            ]
            if gone:
                await conn.execute(update(keys).where(keys.c.id.in_(gone)).values(revoked_at=now, updated_at=now))

    async def _select(self, *conditions: Any) -> list[KeyRecord]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(*_COLUMNS).where(*conditions).order_by(keys.c.created_at, keys.c.id))
            return [_record(row) for row in rows]


def _values(record: KeyRecord) -> dict[str, Any]:
    values = {name: getattr(record, name) for name in _FIELDS}
    values["models"] = list(record.models)
    return values


async def _active_name(conn: AsyncConnection, name: str, now: float) -> bool:
    """Whether a key that works at ``now`` is named ``name`` (``KeyRecord.status`` "active", in SQL)."""
    found = await conn.execute(
        select(keys.c.id)
        .where(keys.c.name == name, keys.c.revoked_at.is_(None))
        .where(or_(keys.c.expires_at.is_(None), keys.c.expires_at > now))
        .limit(1)
    )
    return found.first() is not None


async def _bump(conn: AsyncConnection) -> None:
    # A counter, not a timestamp: instances with skewed clocks still see every change (runtime_keys.py).
    await conn.execute(update(key_revision).where(key_revision.c.id == 1).values(revision=key_revision.c.revision + 1))
