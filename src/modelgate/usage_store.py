"""The ledger's database: SQLite (aiosqlite) or PostgreSQL (asyncpg) through SQLAlchemy 2's async Core.

Imported only when a ledger starts (``ledger.Ledger.start``): SQLAlchemy costs ~0.1 s to import.

**Migrations** are a short list of numbered steps and a ``modelgate_migrations`` table holding the
numbers applied. Alembic would bring a script directory, an ``env.py`` and its own config to
package and load for one table; the steps here are run at start by every instance, each in the
transaction that records it, so several instances starting at once apply each step exactly once
(PostgreSQL: under a transaction-scoped advisory lock; SQLite: its single writer, with a retry for
the instance that lost the race). A new step is appended, never edited.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Insert,
    Integer,
    MetaData,
    String,
    Table,
    event,
    func,
    insert,
    inspect,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from modelgate.catalogue import MAX_MODEL_ID, MAX_PROVIDER_NAME
from modelgate.key_store import create_key_tables
from modelgate.ledger import UsageRecord

#: A record's columns. (Not ``dataclasses.asdict``: it deep-copies every value, one row per request.)
_RECORD_FIELDS = tuple(f.name for f in fields(UsageRecord))

metadata = MetaData()

usage = Table(
    "modelgate_usage",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("ts", Float(precision=53), nullable=False),
    Column("request_id", String(128), nullable=False),
    Column("key_id", String(32)),
    # As long as the catalogue lets them be (it refuses longer names).
    Column("model", String(MAX_MODEL_ID), nullable=False),
    Column("requested_model", String(MAX_MODEL_ID), nullable=False),
    Column("provider", String(MAX_PROVIDER_NAME), nullable=False),
    Column("status", Integer, nullable=False),
    Column("outcome", String(16)),
    Column("prompt_tokens", Integer),
    Column("completion_tokens", Integer),
    Column("reasoning_tokens", Integer),
    Column("cached_tokens", Integer),  # migration 3; NULL: not reported (and every row from before it)
    Column("usage_estimated", Boolean, nullable=False),
    Column("ttft_ms", Float),
    Column("duration_ms", Float, nullable=False),
    Column("cost", Float(precision=53)),
    Column("record_id", String(32)),  # migration 4; NULL in every row from before it (NULLs never conflict)
    Index("modelgate_usage_ts", "ts"),
    Index("modelgate_usage_key_ts", "key_id", "ts"),
)

#: One row per record: a batch written again after its commit's answer was lost skips the rows it already wrote.
record_id_index = Index("modelgate_usage_record_id", usage.c.record_id, unique=True)

migrations_table = Table(
    "modelgate_migrations",
    MetaData(),
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("applied_at", Float(precision=53), nullable=False),
)


def _create_usage(connection: Connection) -> None:
    usage.create(connection)


def _add_usage_columns(*names: str) -> Callable[[Connection], None]:
    """A step adding columns of ``usage`` to a table created before them. Step 1 creates the table as
    ``usage`` is now, columns included, so a database created since has them: each is added only if missing."""

    def step(connection: Connection) -> None:
        present = {column["name"] for column in inspect(connection).get_columns(usage.name)}
        for name in names:
            if name not in present:
                column = usage.c[name]
                kind = column.type.compile(dialect=connection.dialect)
                connection.execute(text(f"ALTER TABLE {usage.name} ADD COLUMN {name} {kind}"))

    return step


def _add_record_ids(connection: Connection) -> None:
    _add_usage_columns("record_id")(connection)
    record_id_index.create(connection, checkfirst=True)  # step 1 made it already in a database created since


#: (version, step). Append only: a released step is never changed.
MIGRATIONS: Sequence[tuple[int, Callable[[Connection], None]]] = (
    (1, _create_usage),
    (2, create_key_tables),  # run-time keys (key_store.py)
    (3, _add_usage_columns("cached_tokens")),  # prompt-cache hits (NULL in the rows before)
    (4, _add_record_ids),  # a unique id per row: a batch retried after a lost commit answer is written once
)


def async_url(url: str) -> str:
    """``postgresql://…`` / ``sqlite:///…`` as written by people → the async driver SQLAlchemy should use."""
    parsed = make_url(url.replace("postgres://", "postgresql://", 1))  # the short form Heroku & co. hand out
    backend = parsed.get_backend_name()
    drivers = {"postgresql": "asyncpg", "sqlite": "aiosqlite"}
    if backend not in drivers:
        raise ValueError(f"unsupported database {backend!r}: use postgresql://… or sqlite:///…")
    return parsed.set(drivername=f"{backend}+{drivers[backend]}").render_as_string(hide_password=False)


@dataclass(frozen=True, slots=True)
class UsageFilter:
    key_id: str | None = None
    model: str | None = None
    provider: str | None = None
    since: float | None = None  #: Unix time, inclusive
    until: float | None = None  #: Unix time, exclusive
    limit: int = 100  #: newest rows to return (the totals and groups count all matching rows)


@dataclass(frozen=True, slots=True)
class UsageTotals:
    requests: int
    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int
    cached_tokens: int  #: of ``prompt_tokens``; rows that do not know theirs count 0
    cost: float | None  #: None when no matching row has a cost


@dataclass(frozen=True, slots=True)
class UsageGroup:
    key_id: str | None
    model: str
    provider: str
    totals: UsageTotals


@dataclass(frozen=True, slots=True)
class UsageReport:
    totals: UsageTotals
    groups: list[UsageGroup]
    records: list[UsageRecord]


_SUMS = (
    func.count().label("requests"),
    func.coalesce(func.sum(usage.c.prompt_tokens), 0).label("prompt_tokens"),
    func.coalesce(func.sum(usage.c.completion_tokens), 0).label("completion_tokens"),
    func.coalesce(func.sum(usage.c.reasoning_tokens), 0).label("reasoning_tokens"),
    func.coalesce(func.sum(usage.c.cached_tokens), 0).label("cached_tokens"),
    func.sum(usage.c.cost).label("cost"),
)


def _totals(row: Any) -> UsageTotals:
    cost = row.cost
    return UsageTotals(
        requests=int(row.requests),
        prompt_tokens=int(row.prompt_tokens),
        completion_tokens=int(row.completion_tokens),
        reasoning_tokens=int(row.reasoning_tokens),
        cached_tokens=int(row.cached_tokens),
        cost=None if cost is None else float(cost),
    )


def _refused_value(exc: DBAPIError) -> bool:
    """The database refused a value of the row (SQLSTATE class 22, data exception, or 23, integrity), not the
    connection: asyncpg's errors reach SQLAlchemy as a plain ``DBAPIError`` that carries the SQLSTATE."""
    if isinstance(exc, DataError | IntegrityError):
        return True
    code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    return isinstance(code, str) and code[:2] in ("22", "23")


def _insert_new_records(dialect: str) -> Insert:
    """``INSERT … ON CONFLICT (record_id) DO NOTHING``: the records the database has already are skipped, not
    refused (a refused row would be dropped, and the rest of its batch written row by row)."""
    dialect_insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return dialect_insert(usage).on_conflict_do_nothing(index_elements=[usage.c.record_id])


class UsageStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._insert_statement = _insert_new_records(engine.dialect.name)

    async def migrate(self) -> None:
        """Apply the steps this database lacks (see the module docstring)."""
        postgres = self.engine.dialect.name == "postgresql"
        for attempt in range(5):
            try:
                async with self.engine.begin() as conn:
                    if postgres:
                        # Held to the end of this transaction: one instance migrates, the others wait and see it done.
                        await conn.execute(text("SELECT pg_advisory_xact_lock(7305682011)"))
                    await conn.run_sync(_apply_migrations)
                return
            except DBAPIError:
                if postgres or attempt == 4:
                    raise
                await asyncio.sleep(0.2 * (attempt + 1))  # another SQLite process was migrating

    async def insert(self, records: Sequence[UsageRecord]) -> list[UsageRecord]:
        """Write ``records`` in one transaction. When the database refuses a value (one it cannot hold: too long,
        out of range), each row is written on its own, so one bad row does not hold back the others; the rows it
        refused are returned, not written. Any other failure (the database is down) raises, nothing written."""
        try:
            await self._insert(records)
        except (DBAPIError, OverflowError) as exc:
            # OverflowError: SQLite's driver refuses an integer past 64 bits before the database sees it, not as
            # a DBAPIError; raised on, the batch went back in front of the queue and no row was written again.
            if isinstance(exc, DBAPIError) and not _refused_value(exc):
                raise
            if len(records) == 1:
                return list(records)
            return [refused for record in records for refused in await self.insert((record,))]
        return []

    async def _insert(self, records: Sequence[UsageRecord]) -> None:
        async with self.engine.begin() as conn:
            rows = [{name: getattr(r, name) for name in _RECORD_FIELDS} for r in records]
            await conn.execute(self._insert_statement, rows)

    async def report(self, query: UsageFilter) -> UsageReport:
        conditions = []
        if query.key_id is not None:
            conditions.append(usage.c.key_id == query.key_id)
        if query.model is not None:
            conditions.append(usage.c.model == query.model)
        if query.provider is not None:
            conditions.append(usage.c.provider == query.provider)
        if query.since is not None:
            conditions.append(usage.c.ts >= query.since)
        if query.until is not None:
            conditions.append(usage.c.ts < query.until)
        group_columns = (usage.c.key_id, usage.c.model, usage.c.provider)
        columns = [c for c in usage.c if c.name != "id"]
        async with self.engine.connect() as conn:
            total = (await conn.execute(select(*_SUMS).where(*conditions))).one()
            grouped = await conn.execute(
                select(*group_columns, *_SUMS).where(*conditions).group_by(*group_columns).order_by(*group_columns)
            )
            groups = [UsageGroup(row.key_id, row.model, row.provider, _totals(row)) for row in grouped]
            newest = await conn.execute(
                select(*columns).where(*conditions).order_by(usage.c.ts.desc(), usage.c.id.desc()).limit(query.limit)
            )
            records = [UsageRecord(**row._asdict()) for row in newest]
        return UsageReport(totals=_totals(total), groups=groups, records=records)

    async def close(self) -> None:
        await self.engine.dispose()


def _apply_migrations(connection: Connection) -> None:
    migrations_table.create(connection, checkfirst=True)
    done = set(connection.execute(select(migrations_table.c.version)).scalars())
    for version, step in MIGRATIONS:
        if version not in done:
            step(connection)
            connection.execute(insert(migrations_table).values(version=version, applied_at=time.time()))


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL: readers (``/api/usage``) do not block the writer; busy_timeout: several workers share one file.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


async def open_store(url: str) -> UsageStore:
    """Connect to ``url`` and migrate. Raises on an unsupported URL or an unreachable database."""
    driver_url = async_url(url)
    database = make_url(driver_url).database
    if driver_url.startswith("sqlite") and database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)  # the default lives in a state dir
    engine = create_async_engine(driver_url, pool_pre_ping=True)
    if engine.dialect.name == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    store = UsageStore(engine)
    try:
        await store.migrate()
    except BaseException:
        await engine.dispose()
        raise
    return store
