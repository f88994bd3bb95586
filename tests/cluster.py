"""Two ``modelgate serve`` processes sharing one real Redis and one real PostgreSQL: the scale-out topology.

Issue 14 asks budgets, revocations and the ledger to hold *across instances*; this runs that topology on
loopback, with the fake upstreams of ``tests/fakes`` behind both instances.

The API, small on purpose::

    def test_x(cluster_backends: Backends, fakes: Fakes, tmp_path: Path) -> None:
        catalogue = write_catalogue(tmp_path / "catalogue.toml", model_toml("acme", "tiny"), header=...)
        with running_cluster(cluster_backends, catalogue, tmp_path, env=fakes.env()) as cluster:
            a, b = cluster.urls                     # "http://127.0.0.1:PORT" of each instance
            ...
            assert cluster.sigterm(0) == -signal.SIGTERM  # SIGTERM instance 0, wait for its exit; its code
            cluster.instances[1].log()              # what instance 1 printed so far

- ``cluster_backends`` (a session fixture in ``tests/conftest.py``): one ``redis-server`` and one
  PostgreSQL cluster for the whole test session (``Backends``: ``.redis`` is a ``RedisProcess``,
  ``.postgres`` a ``PostgresCluster``). Skips when either binary is missing (``scripts/test.sh``
  installs both).
- ``running_cluster(backends, catalogue, tmp_path, *, env=None, instances=2)``: empties the Redis,
  creates a fresh PostgreSQL database (``cluster.database_url``), then starts the instances with
  ``--config catalogue``, ``MODELGATE_REDIS_URL`` and ``MODELGATE_DATABASE_URL`` pointing at them, the
  ledger flushed every 0.2 s, probes off, plus ``env`` (e.g. ``fakes.env()``, ``MODELGATE_ADMIN_KEY``).
  On exit every instance still running gets SIGTERM and is reaped.
- ``cluster.usage_rows()``: the ledger's rows in the shared database (``request_id``, ``key_id``,
  tokens…), read with SQLAlchemy's sync engine over the async driver's URL: what every instance wrote.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.cli_process import Served, serve_subprocess
from tests.postgres_server import PostgresCluster, postgres_cluster
from tests.redis_server import RedisProcess, redis_process


@dataclass(frozen=True)
class Backends:
    """The shared stores: started once per test session (the ``cluster_backends`` fixture)."""

    redis: RedisProcess
    postgres: PostgresCluster


@contextmanager
def running_backends() -> Iterator[Backends]:
    with redis_process() as redis, postgres_cluster() as postgres:
        yield Backends(redis, postgres)


@dataclass
class Cluster:
    backends: Backends
    database_url: str
    instances: list[Served] = field(default_factory=list)

    @property
    def redis_url(self) -> str:
        return self.backends.redis.url

    @property
    def urls(self) -> tuple[str, ...]:
        """The base URL of every instance, in start order."""
        return tuple(instance.url for instance in self.instances)

    def sigterm(self, index: int, timeout: float = 60.0) -> int:
        """SIGTERM instance ``index`` (as an orchestrator stops a replica) and wait for it; its exit code.

        A clean exit is ``-signal.SIGTERM``: uvicorn re-raises the signal once it has shut down (drained
        its responses, ran the lifespan's end, the ledger's last write included); the log says
        "Application shutdown complete."."""
        process = self.instances[index].process
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        return process.wait(timeout=timeout)

    def usage_rows(self) -> list[dict[str, Any]]:
        """Every ledger row in the shared database, oldest first."""
        return asyncio.run(_usage_rows(self.database_url))


async def _usage_rows(url: str) -> list[dict[str, Any]]:
    from sqlalchemy import select
    from sqlalchemy.ext.asyncio import create_async_engine

    from modelgate.usage_store import async_url, usage

    engine = create_async_engine(async_url(url))
    try:
        async with engine.connect() as conn:
            result = await conn.execute(select(usage).order_by(usage.c.ts, usage.c.id))
            return [dict(row._mapping) for row in result]
    finally:
        await engine.dispose()


@contextmanager
def running_cluster(
    backends: Backends,
    catalogue: Path,
    tmp_path: Path,
    *,
    env: dict[str, str] | None = None,
    instances: int = 2,
) -> Iterator[Cluster]:
    """``instances`` times ``modelgate serve`` on ``catalogue``, sharing ``backends`` (see the module docstring)."""
    _flush_redis(backends.redis)
    cluster = Cluster(backends, backends.postgres.create_database())
    shared = {
        "MODELGATE_REDIS_URL": backends.redis.url,
        "MODELGATE_DATABASE_URL": cluster.database_url,
        "MODELGATE_LEDGER_FLUSH_INTERVAL": "0.2",
        "MODELGATE_PROBE_INTERVAL": "0",
        **(env or {}),
    }
    with ExitStack() as stack:
        for index in range(instances):
            directory = tmp_path / f"instance-{index}"
            directory.mkdir(exist_ok=True)
            served = stack.enter_context(serve_subprocess(["--config", str(catalogue)], directory, env=shared))
            cluster.instances.append(served)
        yield cluster


def _flush_redis(redis: RedisProcess) -> None:
    """Forget the previous cluster's counters (the server lives for the whole session)."""
    import redis as redis_client

    client = redis_client.Redis.from_url(redis.url)
    try:
        client.flushall()
    finally:
        client.close()
