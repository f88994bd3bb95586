"""The usage ledger (``ledger.py``, ``usage_store.py``) on SQLite and on a real PostgreSQL.

Every chat request that reached an upstream is one row with the right tokens, whatever its end
(answered, failed mid-stream, cut by the client, failed before the first token); requests refused
before that have none. The rows are read back with the plain drivers (``sqlite3``, ``asyncpg``),
not through the code under test.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy.exc import OperationalError

import modelgate.ledger as ledger_module
from modelgate.app import create_app
from modelgate.catalogue import Catalogue, load_catalogue
from modelgate.ledger import Ledger
from modelgate.observer import Observation
from modelgate.settings import LEDGER_FILE, Settings, database_url
from modelgate.usage_store import UsageFilter, UsageReport
from tests.catalogue_files import model_toml, write_catalogue
from tests.cli_process import run_cli, serve_subprocess, wait_for
from tests.fakes import Fakes, Fault, Reply
from tests.postgres_proxy import CommitAnswerCutter
from tests.postgres_server import PostgresCluster, postgres_cluster
from tests.servers import serve_in_thread

TINY = "/api/ai/ollama/tiny/chat"
BODY = {"messages": [{"role": "user", "content": "Hi"}]}

PRICED = [
    model_toml("acme", "tiny", extra="[models.pricing]\ninput = 0.15\noutput = 0.6\n"),
    model_toml(
        "acme",
        "think",
        provider="openrouter",
        upstream="acme/think",
        extra="[models.pricing]\ninput = 1\noutput = 4\n",
    ),
    model_toml("acme", "free", upstream="free:1b"),
]


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresCluster]:
    with postgres_cluster() as cluster:
        yield cluster


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'usage.sqlite3'}"
    cluster: PostgresCluster = request.getfixturevalue("postgres")
    return cluster.create_database()


def ledger_rows(url: str, query: str = "SELECT * FROM modelgate_usage ORDER BY id") -> list[dict[str, Any]]:
    """Every row of the ledger (or what ``query`` selects), read with the plain driver."""
    if url.startswith("sqlite"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
            db.row_factory = sqlite3.Row
            return [dict(row) for row in db.execute(query)]

    async def fetch() -> list[dict[str, Any]]:
        connection = await asyncpg.connect(url)
        try:
            return [dict(row) for row in await connection.fetch(query)]
        finally:
            await connection.close()

    return asyncio.run(fetch())


def priced_settings(fakes: Fakes, tmp_path: Path, url: str, **extra: Any) -> Settings:
    path = write_catalogue(tmp_path / "catalogue.toml", *PRICED)
    return Settings(**fakes.settings_overrides(), config_path=path, database_url=url, probe_interval=0, **extra)


def post(client: httpx.Client, path: str, body: Any, request_id: str, **headers: str) -> httpx.Response:
    return client.post(path, json=body, headers={"X-Request-ID": request_id, **headers})


def test_every_chat_request_is_one_row_with_its_tokens(fakes: Fakes, tmp_path: Path, ledger_url: str) -> None:
    settings = priced_settings(fakes, tmp_path, ledger_url)
    app = create_app(settings, load_catalogue(settings.config_path))
    fakes.ollama.script(
        Reply(tokens=["a", "b", "c"], usage=(7, 3)),  # answered
        Reply(tokens=["a", "b", "c"], fault=Fault.error_after(2)),  # failed mid-stream
        Reply(tokens=["x"] * 200, delay=0.02),  # cut by the client
        Reply(fault=Fault.status(401, message="bad credentials")),  # failed before the first token
    )
    fakes.openrouter.script(
        Reply(reasoning=["hm"], tokens=["ok"], usage=(20, 9), options={"reasoning_tokens": 4}),
        Reply(tokens=["d"], usage=None),  # no usage reported: estimated
    )
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        assert post(client, TINY, BODY, "ok").status_code == 200
        assert post(client, TINY, BODY, "midway").status_code == 200
        with client.stream("POST", TINY, json=BODY, headers={"X-Request-ID": "cut"}) as cut:
            assert cut.status_code == 200
            next(cut.iter_raw())
        assert post(client, TINY, BODY, "upstream-refused").status_code >= 400
        v1 = {"model": "acme/think", "messages": BODY["messages"]}
        assert post(client, "/v1/chat/completions", v1, "v1").status_code == 200
        assert post(client, "/v1/chat/completions", {**v1, "stream": True}, "estimated").status_code == 200
        # Refused before any upstream: no rows.
        assert post(client, "/api/ai/ollama/nothing/chat", BODY, "unknown-model").status_code == 404
        assert post(client, TINY, {"messages": "no"}, "invalid").status_code == 400
        assert post(client, "/v1/chat/completions", {"model": "acme/nope", "messages": []}, "v1-bad").status_code >= 400
        # The cut stream's row is written when the server notices; wait for it through the API (which flushes).
        wait_for(
            lambda: any(r["request_id"] == "cut" for r in client.get("/api/usage").json()["records"]) or None,
            "the cut stream's row",
        )

    rows = {row["request_id"]: row for row in ledger_rows(ledger_url)}
    assert sorted(rows) == sorted(["ok", "midway", "cut", "upstream-refused", "estimated", "v1"])
    assert len(ledger_rows(ledger_url)) == 6  # each exactly once

    ok = rows["ok"]
    assert (ok["model"], ok["requested_model"], ok["provider"]) == ("acme/tiny", "acme/tiny", "ollama")
    assert (ok["status"], ok["outcome"], ok["prompt_tokens"], ok["completion_tokens"]) == (200, "ok", 7, 3)
    assert not ok["usage_estimated"]
    assert ok["cost"] == pytest.approx((7 * 0.15 + 3 * 0.6) / 1e6)
    assert ok["ttft_ms"] is not None and ok["duration_ms"] >= ok["ttft_ms"]
    assert ok["key_id"] is None

    assert (rows["midway"]["status"], rows["midway"]["outcome"]) == (200, "stream_error")
    assert (rows["cut"]["status"], rows["cut"]["outcome"]) == (200, "cancelled")
    refused = rows["upstream-refused"]
    assert refused["status"] >= 400 and refused["outcome"] is None
    assert (refused["prompt_tokens"], refused["cost"], refused["ttft_ms"]) == (None, None, None)

    estimated = rows["estimated"]
    assert estimated["usage_estimated"] and estimated["completion_tokens"] >= 1

    v1_row = rows["v1"]
    assert (v1_row["model"], v1_row["provider"], v1_row["outcome"]) == ("acme/think", "openrouter", "ok")
    assert (v1_row["prompt_tokens"], v1_row["completion_tokens"], v1_row["reasoning_tokens"]) == (20, 9, 4)
    assert v1_row["cost"] == pytest.approx((20 * 1 + 9 * 4) / 1e6)


#: acme/cache prices its prompt-cache reads; acme/think (PRICED) does not, so its cached tokens cost ``input``.
CACHE_PRICED = [
    *PRICED,
    model_toml(
        "acme",
        "cache",
        provider="openrouter",
        upstream="acme/cache",
        extra="[models.pricing]\ninput = 1\noutput = 4\ncached_input = 0.25\n",
    ),
]


def test_reported_cache_hits_are_stored_priced_and_summed(fakes: Fakes, tmp_path: Path, ledger_url: str) -> None:
    """The upstream's ``usage.prompt_tokens_details.cached_tokens`` reaches the row (0 when it reported none, NULL
    when it said nothing) and ``/api/usage``; the cost bills them at ``cached_input`` where the catalogue has one."""
    path = write_catalogue(tmp_path / "catalogue.toml", *CACHE_PRICED)
    settings = Settings(**fakes.settings_overrides(), config_path=path, database_url=ledger_url, probe_interval=0)
    fakes.openrouter.script(
        Reply(tokens=["a"], usage=(1200, 10), options={"cached_tokens": 1024}),  # hit
        Reply(tokens=["b"], usage=(1200, 10), options={"cached_tokens": 1000}),  # hit, streamed
        Reply(tokens=["c"], usage=(1200, 10), options={"cached_tokens": 0}),  # miss, reported as such
        Reply(tokens=["d"], usage=(1200, 10), options={"cached_tokens": 1024}),  # hit on a model without a cache price
    )
    fakes.ollama.script(Reply(tokens=["e"], usage=(7, 3)))  # Ollama reports no cache figure
    with serve_in_thread(create_app(settings, load_catalogue(path))) as url, httpx.Client(base_url=url) as client:
        chat = {"model": "acme/cache", "messages": BODY["messages"]}
        assert post(client, "/v1/chat/completions", chat, "hit").status_code == 200
        assert post(client, "/v1/chat/completions", {**chat, "stream": True}, "hit-stream").status_code == 200
        assert post(client, "/v1/chat/completions", chat, "miss").status_code == 200
        assert post(client, "/v1/chat/completions", {**chat, "model": "acme/think"}, "unpriced").status_code == 200
        assert post(client, TINY, BODY, "unknown").status_code == 200
        answer = client.get("/api/usage").json()

    rows = {row["request_id"]: row for row in ledger_rows(ledger_url)}
    assert {name: row["cached_tokens"] for name, row in rows.items()} == {
        "hit": 1024,
        "hit-stream": 1000,
        "miss": 0,
        "unpriced": 1024,
        "unknown": None,
    }
    costs = {
        "hit": ((1200 - 1024) * 1 + 1024 * 0.25 + 10 * 4) / 1e6,
        "hit-stream": ((1200 - 1000) * 1 + 1000 * 0.25 + 10 * 4) / 1e6,
        "miss": (1200 * 1 + 10 * 4) / 1e6,
        "unpriced": (1200 * 1 + 10 * 4) / 1e6,
        "unknown": (7 * 0.15 + 3 * 0.6) / 1e6,
    }
    assert {name: row["cost"] for name, row in rows.items()} == {name: pytest.approx(c) for name, c in costs.items()}

    assert answer["totals"]["cached_tokens"] == 1024 + 1000 + 0 + 1024
    assert answer["totals"]["prompt_tokens"] == 4 * 1200 + 7
    assert answer["totals"]["cost"] == pytest.approx(sum(costs.values()))
    groups = {g["model"]: (g["requests"], g["cached_tokens"], g["cost"]) for g in answer["groups"]}
    assert groups == {
        "acme/cache": (3, 2024, pytest.approx(costs["hit"] + costs["hit-stream"] + costs["miss"])),
        "acme/think": (1, 1024, pytest.approx(costs["unpriced"])),
        "acme/tiny": (1, 0, pytest.approx(costs["unknown"])),
    }
    assert {r["request_id"]: r["cached_tokens"] for r in answer["records"]} == {
        "hit": 1024,
        "hit-stream": 1000,
        "miss": 0,
        "unpriced": 1024,
        "unknown": None,
    }


#: ``modelgate_usage`` as migration step 1 created it before ``cached_tokens`` (step 3), by hand.
OLD_USAGE_TABLE = """CREATE TABLE modelgate_usage (
    id {id} PRIMARY KEY, ts DOUBLE PRECISION NOT NULL, request_id VARCHAR(128) NOT NULL, key_id VARCHAR(32),
    model VARCHAR(256) NOT NULL, requested_model VARCHAR(256) NOT NULL, provider VARCHAR(64) NOT NULL,
    status INTEGER NOT NULL, outcome VARCHAR(16), prompt_tokens INTEGER, completion_tokens INTEGER,
    reasoning_tokens INTEGER, usage_estimated BOOLEAN NOT NULL, ttft_ms FLOAT, duration_ms FLOAT NOT NULL,
    cost DOUBLE PRECISION)"""


def run_sql(url: str, *statements: str) -> None:
    """Run ``statements`` with the plain driver, in one transaction."""
    if url.startswith("sqlite"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
            for statement in statements:
                db.execute(statement)
        return

    async def run() -> None:
        connection = await asyncpg.connect(url)
        try:
            async with connection.transaction():
                for statement in statements:
                    await connection.execute(statement)
        finally:
            await connection.close()

    asyncio.run(run())


def test_a_ledger_from_before_cached_tokens_gets_the_column_on_open(tmp_path: Path, ledger_url: str) -> None:
    """A database written by the release before: its table lacks ``cached_tokens`` and its migrations table says
    step 1. Opening it adds the column (the old rows NULL: unknown), writes and reports new rows, and opening it
    again changes nothing. So for ``record_id`` (step 4): NULL in the old rows, which its unique index lets be."""
    sqlite = ledger_url.startswith("sqlite")
    old_row = (
        "INSERT INTO modelgate_usage (ts, request_id, model, requested_model, provider, status, outcome,"
        " prompt_tokens, completion_tokens, usage_estimated, duration_ms, cost)"
        f" VALUES ({time.time() - 60}, 'old', 'acme/cache', 'acme/cache', 'openrouter', 200, 'ok', 1200, 10,"
        f" {'0' if sqlite else 'FALSE'}, 12.5, 0.00124)"
    )
    run_sql(
        ledger_url,
        OLD_USAGE_TABLE.format(id="INTEGER" if sqlite else "BIGSERIAL"),
        "CREATE INDEX modelgate_usage_ts ON modelgate_usage (ts)",
        "CREATE INDEX modelgate_usage_key_ts ON modelgate_usage (key_id, ts)",
        "CREATE TABLE modelgate_migrations (version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)",
        f"INSERT INTO modelgate_migrations VALUES (1, {time.time() - 86400})",
        old_row,
        old_row.replace("'old'", "'older'").replace("1200, 10", "0, 0").replace("0.00124", "0"),
    )
    catalogue = load_catalogue(write_catalogue(tmp_path / "catalogue.toml", *CACHE_PRICED))

    def finished(request_id: str, cached: int | None) -> Observation:
        obs = Observation(request_id, time.perf_counter())
        obs.model, obs.provider, obs.prompt_tokens, obs.completion_tokens = "acme/cache", "openrouter", 1200, 10
        obs.cached_tokens = cached
        return obs

    async def scenario(request_id: str, cached: int | None) -> UsageReport:
        ledger = Ledger(ledger_url, scrub=str, flush_interval=3600)
        await ledger.start()
        try:
            ledger.record(finished(request_id, cached), 200, None, catalogue)
            return await ledger.report(UsageFilter())
        finally:
            await ledger.stop()

    report = asyncio.run(scenario("new", 1024))
    rows = {row["request_id"]: row for row in ledger_rows(ledger_url)}
    assert (rows["old"]["cached_tokens"], rows["old"]["cost"]) == (None, pytest.approx(0.00124))
    assert (rows["new"]["cached_tokens"], rows["new"]["cost"]) == (1024, pytest.approx((176 + 256 + 40) / 1e6))
    assert report.totals.requests == 3 and report.totals.cached_tokens == 1024
    assert {r.request_id: r.cached_tokens for r in report.records} == {"old": None, "older": None, "new": 1024}
    assert (rows["old"]["record_id"], rows["older"]["record_id"]) == (None, None)
    assert len(rows["new"]["record_id"]) == 32

    report = asyncio.run(scenario("again", 0))  # reopened: every step is recorded, nothing is applied twice
    assert report.totals.requests == 4 and report.totals.cached_tokens == 1024
    assert ledger_rows(ledger_url)[-1]["cached_tokens"] == 0
    versions = ledger_rows(ledger_url, "SELECT version FROM modelgate_migrations ORDER BY version")
    assert [row["version"] for row in versions] == [1, 2, 3, 4]
    index_query = (
        "SELECT sql AS definition FROM sqlite_master WHERE name = 'modelgate_usage_record_id'"
        if sqlite
        else "SELECT indexdef AS definition FROM pg_indexes WHERE indexname = 'modelgate_usage_record_id'"
    )
    [index] = ledger_rows(ledger_url, index_query)
    assert "UNIQUE INDEX" in index["definition"].upper() and "record_id" in index["definition"]


def test_a_fallback_row_names_both_models(fakes: Fakes, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'usage.sqlite3'}"
    path = write_catalogue(
        tmp_path / "catalogue.toml",
        model_toml("acme", "tiny", extra='fallbacks = ["acme/free"]\n'),
        model_toml("acme", "free", upstream="free:1b"),
    )
    settings = Settings(**fakes.settings_overrides(), config_path=path, database_url=url, probe_interval=0)
    fakes.ollama.script(Reply(fault=Fault.status(404, message="no such model")), Reply(tokens=["y"], usage=(5, 1)))
    with serve_in_thread(create_app(settings, load_catalogue(path))) as base:
        assert httpx.post(base + TINY, json=BODY, headers={"X-Request-ID": "fb"}).status_code == 200
    [row] = ledger_rows(url)
    assert (row["requested_model"], row["model"], row["completion_tokens"]) == ("acme/tiny", "acme/free", 1)


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_sigterm_loses_no_rows(fakes: Fakes, tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    """A real ``modelgate serve``: rows wait in memory (an hour between writes), a stream is still open
    when SIGTERM comes; after the process exits every request is in the database."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'usage.sqlite3'}"
    else:
        url = request.getfixturevalue("postgres").create_database()
    path = write_catalogue(tmp_path / "catalogue.toml", *PRICED)
    env = {**fakes.env(), "MODELGATE_DATABASE_URL": url, "MODELGATE_LEDGER_FLUSH_INTERVAL": "3600"}
    fakes.ollama.script(*[Reply(tokens=["a"], usage=(3, 1)) for _ in range(20)], Reply(tokens=["s"] * 40, delay=0.05))
    streamed: list[int] = []
    with serve_subprocess(["--config", str(path)], tmp_path, env=env) as served:
        ids = [str(uuid.uuid4()) for _ in range(20)]
        for request_id in ids:
            assert httpx.post(served.url + TINY, json=BODY, headers={"X-Request-ID": request_id}).status_code == 200
        assert ledger_rows(url) == []  # nothing written yet: everything waits for the next flush or shutdown
        opened = threading.Event()

        def slow_stream() -> None:
            with httpx.stream("POST", served.url + TINY, json=BODY, headers={"X-Request-ID": "in-flight"}) as r:
                streamed.append(r.status_code)
                opened.set()
                r.read()

        reader = threading.Thread(target=slow_stream)
        reader.start()
        assert opened.wait(30)
        served.signal(signal.SIGTERM)
        assert served.process.wait(timeout=60) in (0, -signal.SIGTERM)  # uvicorn re-raises it after shutdown
        reader.join(timeout=30)
    rows = ledger_rows(url)
    assert sorted(row["request_id"] for row in rows) == sorted([*ids, "in-flight"])
    assert {row["completion_tokens"] for row in rows if row["request_id"] != "in-flight"} == {1}
    assert streamed == [200]


def test_the_ledger_can_be_turned_off(fakes: Fakes) -> None:
    settings = Settings(**fakes.settings_overrides(), probe_interval=0)
    assert settings.database_url is None
    with serve_in_thread(create_app(settings)) as url:
        assert httpx.post(url + "/api/ai/ollama/rwkv-6-world/chat", json=BODY).status_code == 200
        answer = httpx.get(url + "/api/usage")
    assert answer.status_code == 404
    assert "ledger is off" in answer.json()["statusMessage"]


def test_an_unsupported_database_is_refused_before_serving() -> None:
    done = run_cli("serve", "--port", "0", "--database-url", "mysql://db.example/usage")
    assert done.returncode == 1
    assert "unsupported database URL scheme 'mysql'" in done.stderr
    assert "Traceback" not in done.stderr


def test_an_unreachable_database_does_not_stop_the_gateway(fakes: Fakes, tmp_path: Path) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, never listening: connections are refused
        url = f"postgresql://u:hunter2-secret@127.0.0.1:{port}/x"
        env = {**fakes.env(), "MODELGATE_DATABASE_URL": url}
        with serve_subprocess([], tmp_path, env=env) as served:
            assert httpx.post(served.url + "/api/ai/ollama/rwkv-6-world/chat", json=BODY).status_code == 200
            usage = httpx.get(served.url + "/api/usage")
            assert usage.status_code == 503
            assert "unavailable" in usage.json()["statusMessage"]
    log = served.log()
    assert "usage ledger: cannot open the database" in log
    assert "1 rows could not be written before shutdown" in log
    assert "hunter2-secret" not in log


@pytest.mark.postgres
def test_rows_wait_for_a_database_that_comes_later(fakes: Fakes, tmp_path: Path, postgres: PostgresCluster) -> None:
    url = postgres.url("appears_later")
    settings = priced_settings(fakes, tmp_path, url, ledger_flush_interval=0.05)
    fakes.ollama.script(Reply(tokens=["a"], usage=(2, 1)), Reply(tokens=["b"], usage=(2, 1)))
    with serve_in_thread(create_app(settings, load_catalogue(settings.config_path))) as base:
        for request_id in ("before", "meanwhile"):
            assert httpx.post(base + TINY, json=BODY, headers={"X-Request-ID": request_id}).status_code == 200
        assert httpx.get(base + "/api/usage").status_code == 503
        postgres.create_database("appears_later")

        def usage_once_open() -> dict[str, Any] | None:
            answer = httpx.get(base + "/api/usage")
            return answer.json() if answer.status_code == 200 else None

        answer = wait_for(usage_once_open, "the ledger to open")
        assert answer["totals"]["requests"] == 2
    assert sorted(row["request_id"] for row in ledger_rows(url)) == ["before", "meanwhile"]


@pytest.mark.postgres
@pytest.mark.timeout(120)
def test_a_database_that_stops_and_starts_again_loses_no_row_and_says_so_once(
    fakes: Fakes, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Found probing (PostgreSQL stopped under a running instance): ``/api/usage`` was a 500, not the README's 503,
    and every flush interval logged the failed write again. Chat keeps serving, the rows wait and are written
    when the database is back, and no log line or answer holds the URL's password."""
    password = "hunter2-pg-secret"
    with postgres_cluster() as cluster:  # its own: this test stops it
        url = cluster.create_database("outage").replace("@", f":{password}@", 1)  # trust auth ignores it
        settings = priced_settings(fakes, tmp_path, url, ledger_flush_interval=0.05)
        answers: list[httpx.Response] = []
        with (
            serve_in_thread(create_app(settings, load_catalogue(settings.config_path))) as base,
            httpx.Client(base_url=base, timeout=30) as client,
        ):
            answers.append(post(client, TINY, BODY, "before"))
            wait_for(lambda: httpx.get(base + "/api/usage").json()["totals"]["requests"] == 1, "the first row")
            cluster.stop()
            for index in range(3):
                started = time.monotonic()
                answers.append(post(client, TINY, BODY, f"while-down-{index}"))
                assert answers[-1].status_code == 200 and time.monotonic() - started < 5
            answers.append(client.get("/api/usage"))
            assert answers[-1].status_code == 503, answers[-1].text
            assert set(answers[-1].json()) == {"statusCode", "statusMessage"}
            time.sleep(0.5)  # ten flush intervals of failed writes
            assert caplog.text.count("rows failed") == 1, caplog.text
            cluster.start()

            def usage_once_back() -> dict[str, Any] | None:
                answer = client.get("/api/usage")
                return answer.json() if answer.status_code == 200 else None

            back = wait_for(usage_once_back, "the database back")
            assert back["totals"]["requests"] == 4
        assert sorted(row["request_id"] for row in ledger_rows(url)) == [
            "before",
            "while-down-0",
            "while-down-1",
            "while-down-2",
        ]
    assert "the database is writable again" in caplog.text
    assert password not in caplog.text
    assert not any(password in answer.text for answer in answers)


def test_default_database_beside_the_catalogue_or_in_the_state_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    catalogue = tmp_path / "conf" / "catalogue.toml"
    assert database_url(None, catalogue) == f"sqlite:///{tmp_path / 'conf' / LEDGER_FILE}"
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert database_url(None, None) == f"sqlite:///{tmp_path}/modelgate/{LEDGER_FILE}"
    with pytest.raises(ValueError, match="unsupported database URL scheme 'mysql'"):
        database_url("mysql://h/db", None)
    assert database_url("off", catalogue) is None
    assert database_url("postgresql://h/db", None) == "postgresql://h/db"
    env = {"MODELGATE_CONFIG": str(catalogue), "MODELGATE_DATABASE_URL": "sqlite:////tmp/x.db"}
    assert Settings.from_env(env).database_url == "sqlite:////tmp/x.db"
    assert Settings.from_env({"MODELGATE_CONFIG": str(catalogue)}).database_url == database_url(None, catalogue)


def test_rows_a_failed_write_kept_are_written_by_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The database refuses a write (its table renamed away by hand): the rows wait, bounded, and the next
    write after the table is back stores them in order."""
    url = f"sqlite:///{tmp_path / 'usage.sqlite3'}"
    catalogue = load_catalogue(write_catalogue(tmp_path / "catalogue.toml", *PRICED))
    monkeypatch.setattr(ledger_module, "MAX_PENDING", 3)

    def finished(request_id: str) -> Observation:
        obs = Observation(request_id, time.perf_counter())
        obs.model, obs.provider, obs.prompt_tokens, obs.completion_tokens = "acme/tiny", "ollama", 4, 2
        return obs

    def rename(old: str, new: str) -> None:
        with sqlite3.connect(tmp_path / "usage.sqlite3") as db:
            db.execute(f"ALTER TABLE {old} RENAME TO {new}")

    async def scenario() -> None:
        ledger = Ledger(url, scrub=str, flush_interval=3600)
        await ledger.start()
        ledger.record(finished("first"), 200, None, catalogue)
        await ledger.flush()
        rename("modelgate_usage", "elsewhere")
        for request_id in ("a", "b", "c", "d"):
            ledger.record(finished(request_id), 200, "k1", catalogue)
        await ledger.flush()
        assert ledger.pending == 3  # kept after the failed write, but the oldest dropped past MAX_PENDING
        rename("elsewhere", "modelgate_usage")
        await ledger.stop()

    asyncio.run(scenario())
    assert [row["request_id"] for row in ledger_rows(url)] == ["first", "b", "c", "d"]
    assert [row["cost"] for row in ledger_rows(url)] == [pytest.approx((4 * 0.15 + 2 * 0.6) / 1e6)] * 4
    assert "writing 4 rows failed" in caplog.text and "1 oldest rows dropped" in caplog.text


def test_a_write_in_progress_at_shutdown_is_finished_not_lost(tmp_path: Path) -> None:
    """``stop`` (SIGTERM) while the writer is inside a slow insert: the README's "writes every row left" holds for
    the batch being written too (cancelled there, it was neither written nor put back)."""
    url = f"sqlite:///{tmp_path / 'usage.sqlite3'}"
    catalogue = load_catalogue(write_catalogue(tmp_path / "catalogue.toml", *PRICED))

    def finished(request_id: str) -> Observation:
        obs = Observation(request_id, time.perf_counter())
        obs.model, obs.provider, obs.prompt_tokens, obs.completion_tokens = "acme/tiny", "ollama", 4, 2
        return obs

    async def scenario() -> None:
        ledger = Ledger(url, scrub=str, flush_interval=0.05)
        await ledger.start()
        store = await ledger.database()
        assert store is not None
        insert, writing = store.insert, asyncio.Event()

        async def slow_insert(records: Any) -> None:  # a database across a slow network
            writing.set()
            await asyncio.sleep(0.5)
            await insert(records)

        store.insert = slow_insert  # type: ignore[method-assign]
        for request_id in ("a", "b", "c"):
            ledger.record(finished(request_id), 200, None, catalogue)
        await writing.wait()  # the writer holds the three rows now
        await ledger.stop()

    asyncio.run(scenario())
    assert [row["request_id"] for row in ledger_rows(url)] == ["a", "b", "c"]


def tiny_request(request_id: str) -> Observation:
    obs = Observation(request_id, time.perf_counter())
    obs.model, obs.provider, obs.prompt_tokens, obs.completion_tokens = "acme/tiny", "ollama", 4, 2
    return obs


@pytest.mark.postgres
def test_a_batch_whose_commit_answer_is_lost_is_not_written_twice(postgres: PostgresCluster, tmp_path: Path) -> None:
    """The connection is cut after PostgreSQL committed a batch but before its answer reached the ledger: the
    writer sees a failed write and writes the batch again. Before, every row was then in the ledger twice, so
    ``/api/usage`` and the budgets restored from it counted those requests twice."""
    url = postgres.create_database()
    catalogue = load_catalogue(write_catalogue(tmp_path / "catalogue.toml", *PRICED))

    async def scenario() -> UsageReport:
        async with CommitAnswerCutter(postgres.port) as proxy:
            ledger = Ledger(url.replace(f":{postgres.port}/", f":{proxy.port}/"), scrub=str, flush_interval=3600)
            await ledger.start()
            try:
                assert await ledger.database() is not None  # opened and migrated before the cut is armed
                for request_id in ("a", "b", "c"):
                    ledger.record(tiny_request(request_id), 200, "k1", catalogue)
                proxy.cut_next_commit()
                await ledger.flush()
                assert (proxy.cuts, ledger.pending) == (1, 3)  # committed, but the ledger kept them as unwritten
                await ledger.flush()  # the retry
                assert ledger.pending == 0
                return await ledger.report(UsageFilter())
            finally:
                await ledger.stop()

    report = asyncio.run(scenario())
    assert [row["request_id"] for row in ledger_rows(url)] == ["a", "b", "c"]
    assert (report.totals.requests, report.totals.prompt_tokens, report.totals.completion_tokens) == (3, 12, 6)


def test_a_batch_committed_before_its_write_failed_is_not_written_twice(tmp_path: Path, ledger_url: str) -> None:
    """The same on either database, the lost answer as the driver reports it: the insert commits, then raises the
    error a connection reset or a timeout gives. The retry adds no row; the rows that arrived meanwhile are added."""
    catalogue = load_catalogue(write_catalogue(tmp_path / "catalogue.toml", *PRICED))

    async def scenario() -> UsageReport:
        ledger = Ledger(ledger_url, scrub=str, flush_interval=3600)
        await ledger.start()
        try:
            store = await ledger.database()
            assert store is not None
            insert = store._insert

            async def commit_then_lose_the_answer(records: Any) -> None:
                store._insert = insert  # type: ignore[method-assign]  # once
                await insert(records)
                raise OperationalError("COMMIT", None, ConnectionResetError("connection reset by peer"))

            store._insert = commit_then_lose_the_answer  # type: ignore[method-assign]
            for request_id in ("a", "b"):
                ledger.record(tiny_request(request_id), 200, "k1", catalogue)
            await ledger.flush()
            assert ledger.pending == 2
            ledger.record(tiny_request("c"), 200, "k1", catalogue)
            await ledger.flush()
            assert ledger.pending == 0
            return await ledger.report(UsageFilter())
        finally:
            await ledger.stop()

    report = asyncio.run(scenario())
    assert [row["request_id"] for row in ledger_rows(ledger_url)] == ["a", "b", "c"]
    assert (report.totals.requests, report.totals.prompt_tokens) == (3, 12)
    assert report.totals.cost == pytest.approx(3 * (4 * 0.15 + 2 * 0.6) / 1e6)


def write_one_batch(url: str, catalogue: Catalogue, rows: list[tuple[str, str, int]]) -> list[str]:
    """``rows`` (request id, provider, prompt tokens) flushed in one batch; the request ids then in the database."""

    async def scenario() -> None:
        ledger = Ledger(url, scrub=str, flush_interval=3600)
        await ledger.start()
        for request_id, provider, prompt in rows:
            obs = Observation(request_id, time.perf_counter())
            obs.model, obs.provider, obs.prompt_tokens, obs.completion_tokens = "acme/tiny", provider, prompt, 2
            ledger.record(obs, 200, None, catalogue)
        await ledger.flush()
        assert ledger.pending == 0
        await ledger.stop()

    asyncio.run(scenario())
    return [row["request_id"] for row in ledger_rows(url)]


@pytest.mark.postgres
def test_a_row_the_database_cannot_hold_does_not_hold_back_the_others(
    postgres: PostgresCluster, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """PostgreSQL refuses a value longer than its column (``provider`` is VARCHAR(64)); before, the whole batch
    went back to the queue and failed again on every write, so no row after it was ever written."""
    catalogue = load_catalogue(write_catalogue(tmp_path / "catalogue.toml", *PRICED))
    rows = [("a", "ollama", 4), ("too-long", "x" * 65, 4), ("c", "ollama", 4)]
    assert write_one_batch(postgres.create_database(), catalogue, rows) == ["a", "c"]
    assert "1 rows the database refused were not written (request ids too-long)" in caplog.text


def test_a_count_sqlite_cannot_hold_does_not_hold_back_the_others(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """SQLite's driver refuses an integer past 64 bits with a plain OverflowError, not a DBAPIError: the batch went
    back in front of the queue and no row was ever written again (found from outside, a hostile upstream's count;
    such counts are estimated where they are read now, this is the ledger's own guard)."""
    catalogue = load_catalogue(write_catalogue(tmp_path / "catalogue.toml", *PRICED))
    rows = [("a", "ollama", 4), ("huge", "ollama", 2**70), ("c", "ollama", 4)]
    assert write_one_batch(f"sqlite:///{tmp_path / 'usage.sqlite3'}", catalogue, rows) == ["a", "c"]
    assert "1 rows the database refused were not written (request ids huge)" in caplog.text


@pytest.mark.parametrize("cached", [5000, 2**40], ids=["past-the-prompt", "past-int4"])
def test_a_cache_count_past_the_prompt_is_capped_at_it_everywhere(
    fakes: Fakes, tmp_path: Path, ledger_url: str, cached: int
) -> None:
    """Cache hits are part of the prompt: an upstream that reports more of them than prompt tokens (a hostile or
    broken one; 2**40 is past PostgreSQL's INTEGER) has its count capped at the prompt where it is read, so the row
    is written (not refused by the database and lost), its cost is the one ``Pricing.cost`` charges, and neither the
    ledger nor the client is told of more cached tokens than the prompt had."""
    path = write_catalogue(tmp_path / "catalogue.toml", *CACHE_PRICED)
    settings = Settings(**fakes.settings_overrides(), config_path=path, database_url=ledger_url, probe_interval=0)
    fakes.openrouter.script(Reply(tokens=["a"], usage=(1200, 10), options={"cached_tokens": cached}))
    with serve_in_thread(create_app(settings, load_catalogue(path))) as url, httpx.Client(base_url=url) as client:
        chat = {"model": "acme/cache", "messages": BODY["messages"]}
        answer = post(client, "/v1/chat/completions", chat, "hostile")
        report = client.get("/api/usage").json()

    assert [row["request_id"] for row in ledger_rows(ledger_url)] == ["hostile"]  # written, not refused
    [row] = ledger_rows(ledger_url)
    assert (row["prompt_tokens"], row["cached_tokens"]) == (1200, 1200)
    assert row["cost"] == pytest.approx((1200 * 0.25 + 10 * 4) / 1e6)
    assert (report["totals"]["prompt_tokens"], report["totals"]["cached_tokens"]) == (1200, 1200)
    assert answer.status_code == 200
    assert answer.json()["usage"]["prompt_tokens_details"] == {"cached_tokens": 1200}
