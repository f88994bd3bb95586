"""Keys managed at run time (``runtime_keys.py``, ``key_store.py``, ``/admin/keys``, ``modelgate keys``), end to end.

Real servers on loopback, the fakes behind them, the database read back with the plain drivers where it
matters (the ledger's ``key_id`` after a rotation, no plaintext key stored).
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

import modelgate.runtime_keys as runtime_keys
from modelgate.app import create_app
from modelgate.auth import MAX_KEY_LIMIT, ApiKey, KeyRing, key_digest, load_keyring
from modelgate.catalogue import load_catalogue
from modelgate.errors import CatalogueError
from modelgate.key_store import KeyStore
from modelgate.runtime_keys import KeyRecord, compose, digest_hex, local_sources
from modelgate.settings import Settings
from modelgate.usage_store import open_store
from tests import test_ledger as ledger_tests
from tests.catalogue_files import write_catalogue
from tests.cli_process import run_cli, wait_for
from tests.fakes import Fakes, Reply
from tests.postgres_server import PostgresCluster
from tests.servers import serve_in_thread
from tests.test_ledger import BODY, PRICED, TINY, ledger_rows

ADMIN = "mg-admin-test-5c2e91"
FILE_KEY = "mg-file-key-77b0a3"


# The ledger tests' databases: a PostgreSQL cluster per module, and each test on SQLite and on PostgreSQL.
postgres = ledger_tests.postgres
ledger_url = ledger_tests.ledger_url


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def settings_for(fakes: Fakes, tmp_path: Path, database: str | None, **extra: Any) -> Settings:
    path = write_catalogue(tmp_path / "catalogue.toml", *PRICED, header=extra.pop("header", ""))
    values: dict[str, Any] = {
        **fakes.settings_overrides(),
        "config_path": path,
        "database_url": database,
        "probe_interval": 0,
        "admin_key": ADMIN,
        "key_refresh_interval": 0.2,
        **extra,
    }
    return Settings(**values)


def serve(settings: Settings) -> Any:
    return serve_in_thread(create_app(settings, load_catalogue(settings.config_path)))


def chat(client: httpx.Client, key: str | None, request_id: str = "") -> int:
    headers = {**(bearer(key) if key else {}), **({"X-Request-ID": request_id} if request_id else {})}
    return client.post(TINY, json=BODY, headers=headers).status_code


# --- the whole life of a key, on SQLite and PostgreSQL ------------------------------------------------


def test_create_list_rotate_revoke(fakes: Fakes, tmp_path: Path, ledger_url: str) -> None:
    database = ledger_url
    fakes.ollama.script(*[Reply(tokens=["a", "b"], usage=(6, 2)) for _ in range(10)])
    with serve(settings_for(fakes, tmp_path, database)) as url, httpx.Client(base_url=url, timeout=30) as client:
        assert chat(client, None) == 200  # no key anywhere yet: the service is open, as before

        created = client.post("/admin/keys", json={"name": "ci", "models": ["acme/t*"]}, headers=bearer(ADMIN))
        assert created.status_code == 201, created.text
        record = created.json()
        secret, key_id = record["key"], record["id"]
        assert secret.startswith("mg-") and key_id == hashlib.sha256(secret.encode()).hexdigest()[:12]
        assert (record["name"], record["source"], record["status"], record["models"]) == (
            "ci",
            "api",
            "active",
            ["acme/t*"],
        )

        # The creating instance lets the key in before answering; from now on a key is required.
        assert chat(client, secret, "with-first-key") == 200
        assert chat(client, None) == 401
        assert (
            client.post("/v1/chat/completions", json={"model": "acme/free", **BODY}, headers=bearer(secret)).status_code
            == 403
        )

        listed = client.get("/admin/keys", headers=bearer(ADMIN))
        assert listed.status_code == 200
        assert [(k["id"], k["status"]) for k in listed.json()["keys"]] == [(key_id, "active")]
        digest = key_digest(secret).hex()
        assert secret not in listed.text and digest not in listed.text and "key" not in listed.json()["keys"][0]
        one = client.get(f"/admin/keys/{key_id}", headers=bearer(ADMIN)).json()
        assert one == listed.json()["keys"][0]

        rotated = client.post(f"/admin/keys/{key_id}/rotate", headers=bearer(ADMIN))
        assert rotated.status_code == 200, rotated.text
        new_secret = rotated.json()["key"]
        assert new_secret != secret and rotated.json()["id"] == key_id
        assert chat(client, secret) == 401
        assert chat(client, new_secret, "with-rotated-key") == 200

        revoked = client.delete(f"/admin/keys/{key_id}", headers=bearer(ADMIN))
        assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
        assert chat(client, new_secret) == 401
        # Revoking the last key does not open the service again.
        assert chat(client, None) == 401
        assert client.get("/admin/keys/nope", headers=bearer(ADMIN)).status_code == 404

    rows = {row["request_id"]: row for row in ledger_rows(database)}
    # One record, one key_id in the ledger, before and after the rotation.
    assert rows["with-first-key"]["key_id"] == rows["with-rotated-key"]["key_id"] == key_id
    assert (rows["with-rotated-key"]["prompt_tokens"], rows["with-rotated-key"]["completion_tokens"]) == (6, 2)
    if database.startswith("sqlite"):  # the database holds digests, never a key
        dump = "\n".join(sqlite3.connect(database.removeprefix("sqlite:///")).iterdump())
        assert secret not in dump and new_secret not in dump and key_digest(new_secret).hex() in dump


def test_a_rotation_grace_period_keeps_the_old_key_until_it_ends(fakes: Fakes, tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'usage.sqlite3'}"
    with serve(settings_for(fakes, tmp_path, database)) as url, httpx.Client(base_url=url, timeout=30) as client:
        old = client.post("/admin/keys", json={"name": "app"}, headers=bearer(ADMIN)).json()
        answer = client.post(f"/admin/keys/{old['id']}/rotate", json={"grace_seconds": 2}, headers=bearer(ADMIN))
        new = answer.json()
        assert new["previous_key_until"] is not None
        assert chat(client, old["key"]) == 200 and chat(client, new["key"]) == 200
        wait_for(lambda: chat(client, old["key"]) == 401, "the grace period to end")
        assert chat(client, new["key"]) == 200


def test_an_expired_key_stops(fakes: Fakes, tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'usage.sqlite3'}"
    with serve(settings_for(fakes, tmp_path, database)) as url, httpx.Client(base_url=url, timeout=30) as client:
        soon = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() + 2))
        key = client.post("/admin/keys", json={"name": "brief", "expires_at": soon}, headers=bearer(ADMIN)).json()
        assert key["expires_at"] == soon + "Z"
        assert chat(client, key["key"]) == 200
        wait_for(lambda: chat(client, key["key"]) == 401, "the key to expire")
        assert client.get(f"/admin/keys/{key['id']}", headers=bearer(ADMIN)).json()["status"] == "expired"


# --- who may manage keys ----------------------------------------------------------------------------


def test_only_the_admin_key_manages_keys(fakes: Fakes, tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'usage.sqlite3'}"
    settings = settings_for(fakes, tmp_path, database, api_keys=("mg-chat-key-1",))
    with serve(settings) as url, httpx.Client(base_url=url, timeout=30) as client:
        for headers, status in (
            ({}, 401),
            ({"Authorization": "Basic abc"}, 401),
            (bearer("mg-wrong"), 401),
            (bearer("mg-chat-key-1"), 403),
        ):
            for method, path in (("GET", "/admin/keys"), ("POST", "/admin/keys"), ("DELETE", "/admin/keys/x")):
                answer = client.request(method, path, json={"name": "x"}, headers=headers)
                assert answer.status_code == status, (method, path, headers)
                body = answer.json()
                assert set(body) == {"statusCode", "statusMessage"} and body["statusCode"] == status
                assert "mg-chat-key-1" not in answer.text and ADMIN not in answer.text
        assert client.get("/admin/keys", headers=bearer(ADMIN)).status_code == 200
    # Without MODELGATE_ADMIN_KEY nobody may: 403, whatever is sent.
    with serve(settings_for(fakes, tmp_path, database, admin_key=None)) as url:
        answer = httpx.get(url + "/admin/keys", headers=bearer(ADMIN))
        assert answer.status_code == 403 and "MODELGATE_ADMIN_KEY" in answer.json()["statusMessage"]


def test_without_a_database_there_are_no_run_time_keys(fakes: Fakes, tmp_path: Path) -> None:
    with serve(settings_for(fakes, tmp_path, None)) as url:  # MODELGATE_DATABASE_URL=off
        answer = httpx.get(url + "/admin/keys", headers=bearer(ADMIN))
        assert answer.status_code == 404 and "MODELGATE_DATABASE_URL=off" in answer.json()["statusMessage"]
        assert httpx.post(url + TINY, json=BODY, timeout=30).status_code == 200  # open, as before


def test_bad_input_is_a_clear_400_or_409(fakes: Fakes, tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'usage.sqlite3'}"
    with serve(settings_for(fakes, tmp_path, database)) as url, httpx.Client(base_url=url, timeout=30) as client:
        for body, status, words in (
            ({"name": "x", "models": ["nobody/*"]}, 400, "matches no catalogue model"),
            ({"name": "x", "requests_per_minute": 0}, 400, "requests_per_minute"),
            ({"name": "x", "colour": "red"}, 400, "colour"),
            ({"name": "x", "budget": {"tokens_per_day": -5}}, 400, "budget"),
            # Found by the fuzzer: a limit past a 64-bit counter was a 500 (float overflow) before.
            ({"name": "x", "budget": {"usd_per_month": 1.3e308}}, 400, "usd_per_month"),
            ({"name": "x", "budget": {"tokens_per_day": 10**19}}, 400, "tokens_per_day"),
            ({"name": ""}, 400, "name"),
            ({"name": "x", "models": ["*"] * 257}, 400, "models"),  # each request matches every glob
            ({"name": "x", "expires_at": "2001-01-01T00:00:00Z"}, 400, "future"),
            ([], 400, "Invalid"),
        ):
            answer = client.post("/admin/keys", json=body, headers=bearer(ADMIN))
            assert answer.status_code == status, (body, answer.text)
            assert words in answer.json()["statusMessage"], answer.text
        assert client.post("/admin/keys", json={"name": "dup"}, headers=bearer(ADMIN)).status_code == 201
        assert client.post("/admin/keys", json={"name": "dup"}, headers=bearer(ADMIN)).status_code == 409
        rotate = client.post("/admin/keys/abc/rotate", json={"grace_seconds": -1}, headers=bearer(ADMIN))
        assert rotate.status_code == 400
        # Another media type is a 415 saying what to send (was a 400 about a "dictionary"), as on /v1.
        form = client.post("/admin/keys", data={"name": "x"}, headers=bearer(ADMIN))
        assert form.status_code == 415 and "Content-Type: application/json" in form.json()["statusMessage"]
        undeclared = client.post("/admin/keys", content=b'{"name": "curl"}', headers=bearer(ADMIN))
        assert undeclared.status_code == 201, undeclared.text  # no Content-Type: read as JSON
        assert client.get("/health").status_code == 200  # still serving


def test_concurrent_creates_of_one_name_make_one_key(fakes: Fakes, tmp_path: Path, ledger_url: str) -> None:
    """Found probing: the name was checked in one query and the key written in another, so twenty creates of one
    name sent at once all got a 201 and twenty active keys shared it (README: unique among active keys)."""

    async def create_many(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            return await asyncio.gather(
                *(client.post("/admin/keys", json={"name": "twin"}, headers=bearer(ADMIN)) for _ in range(20))
            )

    with serve(settings_for(fakes, tmp_path, ledger_url)) as url:
        answers = asyncio.run(create_many(url))
        assert sorted(answer.status_code for answer in answers) == [201] + [409] * 19, [a.text for a in answers]
        listed = httpx.get(url + "/admin/keys", headers=bearer(ADMIN), timeout=30).json()["keys"]
        assert [(key["name"], key["status"]) for key in listed] == [("twin", "active")]
        # A conflict writes nothing, and the name is free again once its key is revoked.
        [created] = [answer.json() for answer in answers if answer.status_code == 201]
        assert httpx.delete(f"{url}/admin/keys/{created['id']}", headers=bearer(ADMIN), timeout=30).status_code == 200
        again = httpx.post(url + "/admin/keys", json={"name": "twin"}, headers=bearer(ADMIN), timeout=30)
        assert again.status_code == 201, again.text


def test_a_rotation_replaces_only_the_key_it_read(fakes: Fakes, tmp_path: Path, ledger_url: str) -> None:
    """Found probing: a rotation read the record, then wrote its new key whatever had happened meanwhile. A
    rotation that had read the key before another rotation replaced it handed its caller a 200 for a lost update,
    and one that had read it before a revoke answered 200 with a key that never worked. The write now holds only
    while the record is still what the rotation read (``KeyStore.rotate``), else the rotation is a 409."""
    fakes.ollama.script(*[Reply(tokens=["a"], usage=(1, 1)) for _ in range(10)])

    def stale_rotation(key_id: str, read_key: str) -> bool:
        """A rotation that read the record while its key was ``read_key`` (another instance's, say)."""

        async def rotate() -> bool:
            database = await open_store(ledger_url)
            try:
                store = KeyStore(database.engine)
                return await store.rotate(key_id, digest_hex(read_key), digest_hex("mg-stale-rotation"), 1.0, None)
            finally:
                await database.close()

        return asyncio.run(rotate())

    with serve(settings_for(fakes, tmp_path, ledger_url)) as url, httpx.Client(base_url=url, timeout=30) as client:
        created = client.post("/admin/keys", json={"name": "spun"}, headers=bearer(ADMIN)).json()
        rotated = client.post(f"/admin/keys/{created['id']}/rotate", headers=bearer(ADMIN)).json()["key"]
        assert stale_rotation(created["id"], created["key"]) is False  # it read the key the rotation replaced
        time.sleep(0.5)  # two key refreshes: a write would have reached this instance
        assert chat(client, rotated) == 200 and chat(client, "mg-stale-rotation") == 401
        assert client.delete(f"/admin/keys/{created['id']}", headers=bearer(ADMIN)).status_code == 200
        assert stale_rotation(created["id"], rotated) is False  # it read the key active, before the revoke
        answer = client.post(f"/admin/keys/{created['id']}/rotate", headers=bearer(ADMIN))
        assert answer.status_code == 409 and "revoked" in answer.json()["statusMessage"], answer.text

        # Ten at once: each answer is a 200 or a 409 saying why, and of the keys handed out the last one works.
        async def rotate_many(key_id: str) -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=url, timeout=60) as many:
                return await asyncio.gather(
                    *(many.post(f"/admin/keys/{key_id}/rotate", headers=bearer(ADMIN)) for _ in range(10))
                )

        other = client.post("/admin/keys", json={"name": "spun-too"}, headers=bearer(ADMIN)).json()
        answers = asyncio.run(rotate_many(other["id"]))
        assert {a.status_code for a in answers} <= {200, 409}, [a.text for a in answers]
        assert all("changed meanwhile" in a.json()["statusMessage"] for a in answers if a.status_code == 409)
        handed_out = [a.json()["key"] for a in answers if a.status_code == 200]
        assert [chat(client, key) for key in handed_out].count(200) == 1, handed_out


@pytest.mark.parametrize(
    "expires_at", ["9999-12-31T23:59:59-14:00", "9999-12-31T23:59:59.999999", "9999-12-31T20:00:00-05:00"]
)
def test_an_expiry_past_the_last_writable_moment_is_a_400_and_nothing_is_stored(
    fakes: Fakes, tmp_path: Path, expires_at: str
) -> None:
    """Found in review: a moment whose UTC time is in year 10000 (or rounds into it) was stored, then every answer
    describing it was a 500: the create (the key shown nowhere) and every later ``GET /admin/keys``."""
    database = f"sqlite:///{tmp_path / 'usage.sqlite3'}"
    with serve(settings_for(fakes, tmp_path, database)) as url, httpx.Client(base_url=url, timeout=30) as client:
        answer = client.post("/admin/keys", json={"name": "far", "expires_at": expires_at}, headers=bearer(ADMIN))
        assert answer.status_code == 400, answer.text
        assert "expires_at" in answer.json()["statusMessage"], answer.text
        listing = client.get("/admin/keys", headers=bearer(ADMIN))
        assert listing.status_code == 200, listing.text
        assert [key["name"] for key in listing.json()["keys"] if key["source"] == "api"] == []
        # The last moment that can be written is taken, and listed as written.
        last = client.post(
            "/admin/keys", json={"name": "far", "expires_at": "9999-12-31T23:59:59Z"}, headers=bearer(ADMIN)
        )
        assert last.status_code == 201 and last.json()["expires_at"] == "9999-12-31T23:59:59Z", last.text
        assert client.get("/admin/keys", headers=bearer(ADMIN)).status_code == 200


def test_a_limit_past_what_the_key_store_holds_is_a_400(fakes: Fakes, tmp_path: Path, ledger_url: str) -> None:
    """Found in review: 2**64 reached the database and came back as a 503 (SQLite's OverflowError)."""
    with serve(settings_for(fakes, tmp_path, ledger_url)) as url, httpx.Client(base_url=url, timeout=30) as client:
        for field in ("requests_per_minute", "concurrent_streams"):
            for value, status in ((2**64, 400), (MAX_KEY_LIMIT + 1, 400), (MAX_KEY_LIMIT, 201)):
                answer = client.post(
                    "/admin/keys", json={"name": f"{field}-{value}", field: value}, headers=bearer(ADMIN)
                )
                assert answer.status_code == status, (field, value, answer.text)
                if status == 400:
                    assert field in answer.json()["statusMessage"], answer.text
    # The keys file takes the same bound (its keys are written to the same store).
    (tmp_path / "keys.toml").write_text(f'[[keys]]\nkey = "k-1"\nconcurrent_streams = {2**64}\n', encoding="utf-8")
    path = write_catalogue(tmp_path / "limits.toml", *PRICED, header='[server]\nkeys_file = "keys.toml"\n')
    with pytest.raises(CatalogueError, match="concurrent_streams"):
        load_keyring(Settings(), load_catalogue(path))


def test_a_run_time_keys_budget_is_enforced_and_a_bad_one_refused(fakes: Fakes, tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'usage.sqlite3'}"
    # 6 prompt + 2 completion tokens a request: the second takes the key to 16 of 15 (one request over),
    # the third is refused.
    fakes.ollama.script(*[Reply(tokens=["a", "b"], usage=(6, 2)) for _ in range(3)])
    with serve(settings_for(fakes, tmp_path, database)) as url, httpx.Client(base_url=url, timeout=30) as client:
        bad = client.post("/admin/keys", json={"name": "b", "budget": {"tokens_per_week": 5}}, headers=bearer(ADMIN))
        assert bad.status_code == 400 and "tokens_per_week" in bad.json()["statusMessage"], bad.text
        empty = client.post("/admin/keys", json={"name": "b", "budget": {}}, headers=bearer(ADMIN))
        assert empty.status_code == 400 and "at least one" in empty.json()["statusMessage"], empty.text
        tiny = client.post("/admin/keys", json={"name": "b", "budget": {"usd_per_day": 1e-300}}, headers=bearer(ADMIN))
        assert tiny.status_code == 400 and "usd_per_day" in tiny.json()["statusMessage"], tiny.text

        body = {"name": "capped", "budget": {"tokens_per_day": 15}}
        created = client.post("/admin/keys", json=body, headers=bearer(ADMIN))
        assert created.status_code == 201, created.text
        assert created.json()["budget"] == {"tokens_per_day": 15}
        secret = created.json()["key"]
        answers = [client.post(TINY, json={**BODY, "max_tokens": 2}, headers=bearer(secret)) for _ in range(3)]
        assert [a.status_code for a in answers] == [200, 200, 429], [a.text for a in answers]
        assert "tokens per day" in answers[2].json()["statusMessage"]
        assert int(answers[2].headers["retry-after"]) > 0


def test_a_run_time_keys_spending_survives_a_restart(fakes: Fakes, tmp_path: Path) -> None:
    """The in-process counters die with the process; a run-time key, loaded from the database after start, starts
    its counters from the ledger as a file key does (before, it came back with its whole budget)."""
    settings = settings_for(fakes, tmp_path, f"sqlite:///{tmp_path / 'usage.sqlite3'}")
    fakes.ollama.default = Reply(tokens=["a", "b"], usage=(6, 2))  # 8 tokens a request
    with serve(settings) as url, httpx.Client(base_url=url, timeout=30) as client:
        body = {"name": "capped", "budget": {"tokens_per_day": 15}}
        secret = client.post("/admin/keys", json=body, headers=bearer(ADMIN)).json()["key"]
        answers = [client.post(TINY, json={**BODY, "max_tokens": 2}, headers=bearer(secret)) for _ in range(2)]
        assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]  # 16 of 15 spent

    def spent(client: httpx.Client) -> object:
        answer = client.get("/api/usage?limit=0", headers=bearer(secret))  # 401 until the key is loaded
        return answer.status_code == 200 and answer.json()["budget"][0]["spent"]

    with serve(settings) as url, httpx.Client(base_url=url, timeout=30) as client:
        wait_for(lambda: spent(client) == 16, "the run-time key's counters restored from the ledger")
        refused = client.post(TINY, json={**BODY, "max_tokens": 2}, headers=bearer(secret))
        assert refused.status_code == 429 and "tokens per day" in refused.json()["statusMessage"], refused.text


# --- the keys file is imported, not replaced ---------------------------------------------------------


def test_file_and_environment_keys_are_listed_and_stay_the_files(fakes: Fakes, tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'usage.sqlite3'}"
    keys_file = tmp_path / "keys.toml"
    keys_file.write_text(
        f'[[keys]]\nname = "from-file"\nkey = "{FILE_KEY}"\nrequests_per_minute = 5\n'
        "[keys.budget]\nusd_per_month = 2.5\n"
    )
    settings = settings_for(
        fakes, tmp_path, database, header='[server]\nkeys_file = "keys.toml"\n', api_keys=("mg-env-key-2",)
    )
    app = create_app(settings, load_catalogue(settings.config_path))
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        listed = client.get("/admin/keys", headers=bearer(ADMIN)).json()["keys"]
        by_name = {k["name"]: k for k in listed}
        assert by_name["from-file"]["source"] == "file" and by_name["from-file"]["requests_per_minute"] == 5
        assert by_name["from-file"]["budget"] == {"usd_per_month": 2.5}
        assert by_name["env-1"]["source"] == "env"
        file_id = by_name["from-file"]["id"]
        assert file_id == hashlib.sha256(FILE_KEY.encode()).hexdigest()[:12]
        refused = client.delete(f"/admin/keys/{file_id}", headers=bearer(ADMIN))
        assert refused.status_code == 409 and "keys file" in refused.json()["statusMessage"]
        assert client.post(f"/admin/keys/{file_id}/rotate", headers=bearer(ADMIN)).status_code == 409
        assert chat(client, FILE_KEY) == 200

        # The file loses the key; a reload swaps it out and the listing follows.
        keys_file.write_text('[[keys]]\nname = "other"\nkey = "mg-other-key-3"\n')
        app.state.gateway.reload()
        assert chat(client, FILE_KEY) == 401

        def file_key_revoked() -> bool:
            keys = {k["name"]: k for k in client.get("/admin/keys", headers=bearer(ADMIN)).json()["keys"]}
            return keys["from-file"]["status"] == "revoked" and keys.get("other", {}).get("status") == "active"

        wait_for(file_key_revoked, "the listing to follow the keys file")


# --- two instances on one database --------------------------------------------------------------------


def test_a_revocation_reaches_another_instance_on_the_same_database(
    fakes: Fakes, tmp_path: Path, ledger_url: str
) -> None:
    """Two apps in this process, sharing one SQLite file or PostgreSQL database (the two-process version
    with Redis is in test_cluster_keys.py)."""
    database = ledger_url
    settings = settings_for(fakes, tmp_path, database)
    with ExitStack() as stack:
        a = stack.enter_context(serve(settings))
        b = stack.enter_context(serve(settings))
        client = stack.enter_context(httpx.Client(timeout=30))
        key = client.post(a + "/admin/keys", json={"name": "shared"}, headers=bearer(ADMIN)).json()
        wait_for(lambda: chat_at(client, b, key["key"]) == 200, "instance B to learn the new key")
        assert client.delete(f"{b}/admin/keys/{key['id']}", headers=bearer(ADMIN)).status_code == 200
        wait_for(lambda: chat_at(client, a, key["key"]) == 401, "instance A to refuse the revoked key", timeout=5)


def chat_at(client: httpx.Client, base: str, key: str) -> int:
    return client.post(base + TINY, json=BODY, headers=bearer(key)).status_code


# --- a database that goes away -------------------------------------------------------------------------


def _allow_connections(cluster: PostgresCluster, database: str, allow: bool) -> None:
    async def run() -> None:
        connection = await asyncpg.connect(cluster.url())
        try:
            await connection.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS {str(allow).lower()}')
            if not allow:
                await connection.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", database
                )
        finally:
            await connection.close()

    asyncio.run(run())


@pytest.mark.postgres
def test_keys_keep_working_while_the_database_is_gone(
    fakes: Fakes, tmp_path: Path, postgres: PostgresCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """The request path reads no database: with it unreachable the loaded keys still let in (and refuse),
    /admin/keys answers 503, and everything resumes when it is back."""
    database = postgres.create_database()
    name = database.rsplit("/", 1)[1]
    with serve(settings_for(fakes, tmp_path, database)) as url, httpx.Client(base_url=url, timeout=30) as client:
        key = client.post("/admin/keys", json={"name": "steady"}, headers=bearer(ADMIN)).json()
        _allow_connections(postgres, name, allow=False)
        try:
            wait_for(lambda: "run-time keys: cannot read the database" in caplog.text, "the refresh to fail")
            assert chat(client, key["key"]) == 200
            assert chat(client, "mg-unknown") == 401
            down = client.get("/admin/keys", headers=bearer(ADMIN))
            assert down.status_code == 503 and set(down.json()) == {"statusCode", "statusMessage"}
        finally:
            _allow_connections(postgres, name, allow=True)
        wait_for(lambda: client.get("/admin/keys", headers=bearer(ADMIN)).status_code == 200, "the database back")
        assert client.delete(f"/admin/keys/{key['id']}", headers=bearer(ADMIN)).status_code == 200
        assert chat(client, key["key"]) == 401


@pytest.mark.postgres
def test_a_grace_period_ends_on_time_while_the_database_does_not_answer(
    fakes: Fakes, tmp_path: Path, postgres: PostgresCluster
) -> None:
    """Found in review: expiries and grace ends need no database, but they were applied only after a poll of it
    returned. A database that hangs instead of refusing (a table lock, a network black hole: no error for as long as
    it lasts) kept a rotated-out key working past its grace period for that long."""
    database = postgres.create_database()
    locked, unlock = threading.Event(), threading.Event()

    async def hold_the_revision_locked() -> None:
        connection = await asyncpg.connect(database)
        try:
            async with connection.transaction():  # every instance's poll of the revision waits on it
                await connection.execute("LOCK TABLE modelgate_key_revision IN ACCESS EXCLUSIVE MODE")
                locked.set()
                await asyncio.to_thread(unlock.wait)
        finally:
            await connection.close()

    with serve(settings_for(fakes, tmp_path, database)) as url, httpx.Client(base_url=url, timeout=30) as client:
        old = client.post("/admin/keys", json={"name": "app"}, headers=bearer(ADMIN)).json()
        answer = client.post(f"/admin/keys/{old['id']}/rotate", json={"grace_seconds": 5}, headers=bearer(ADMIN))
        new = answer.json()
        locker = threading.Thread(target=asyncio.run, args=(hold_the_revision_locked(),))
        locker.start()
        try:
            assert locked.wait(30)  # (within the grace period, or the ring was rebuilt before: this passes anyway)
            wait_for(lambda: chat(client, old["key"]) == 401, "the grace period to end", timeout=20)
            assert chat(client, new["key"]) == 200
        finally:
            unlock.set()
            locker.join()


def test_with_an_admin_key_an_instance_whose_database_is_down_starts_closed(
    fakes: Fakes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It cannot know which run-time keys exist, so it refuses unknown callers rather than admitting all;
    without an admin key (no run-time keys in use) it stays the open service it was."""
    monkeypatch.setattr(runtime_keys, "FIRST_LOAD_TIMEOUT", 0.5)
    unreachable = "postgresql://modelgate@127.0.0.1:9/nothing"  # the discard port: connection refused
    with serve(settings_for(fakes, tmp_path, unreachable)) as url, httpx.Client(base_url=url, timeout=30) as client:
        assert chat(client, None) == 401
        assert client.get("/admin/keys", headers=bearer(ADMIN)).status_code == 503
    with serve(settings_for(fakes, tmp_path, unreachable, admin_key=None)) as url:
        assert httpx.post(url + TINY, json=BODY, timeout=30).status_code == 200


# --- units ---------------------------------------------------------------------------------------------


def record(**changes: Any) -> KeyRecord:
    values: dict[str, Any] = {
        "id": "r1",
        "name": "k",
        "source": "api",
        "digest": key_digest("new").hex(),
        "models": ("*",),
        "requests_per_minute": None,
        "concurrent_streams": None,
        "budget": None,
        "created_at": 0.0,
        "updated_at": 0.0,
        **changes,
    }
    return KeyRecord(**values)


def test_a_record_lets_in_its_key_and_the_previous_one_during_the_grace_period() -> None:
    graced = record(previous_digest=key_digest("old").hex(), previous_until=100.0, expires_at=200.0)
    assert {k.digest for k in graced.api_keys(50.0)} == {key_digest("new"), key_digest("old")}
    assert {k.key_id for k in graced.api_keys(50.0)} == {"r1"}
    assert [k.digest for k in graced.api_keys(150.0)] == [key_digest("new")]
    assert graced.api_keys(250.0) == [] and graced.status(250.0) == "expired"
    assert (graced.next_change(50.0), graced.next_change(150.0), graced.next_change(250.0)) == (100.0, 200.0, None)
    assert record(revoked_at=1.0).api_keys(0.0) == []


def test_compose_keeps_the_files_entry_for_a_shared_key() -> None:
    local = KeyRing((ApiKey(key_digest("same"), "file-name", models=("a/*",)),))
    stored = [ApiKey(key_digest("same"), "api-name", id="x1"), ApiKey(key_digest("other"), "api-2", id="x2")]
    ring = compose(local, stored, required=False)
    assert [k.name for k in ring.keys] == ["file-name", "api-2"]
    assert ring.identify(b"same") is local.keys[0]
    assert compose(KeyRing(), [], required=True).enabled  # no key left, yet keys stay required


def test_local_sources_tell_the_file_from_the_environment() -> None:
    ring = KeyRing((ApiKey(key_digest("f"), "ci"), ApiKey(key_digest("e"), "env-1")))
    assert [source for _, source in local_sources(ring, ["e"])] == ["file", "env"]


# --- the CLI against a running server -----------------------------------------------------------------


def test_the_cli_creates_lists_rotates_and_revokes(fakes: Fakes, tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'usage.sqlite3'}"
    with serve(settings_for(fakes, tmp_path, database)) as url, httpx.Client(base_url=url, timeout=30) as client:
        env = {"MODELGATE_ADMIN_KEY": ADMIN}
        made = run_cli("keys", "create", "ci", "--model", "acme/*", "--rpm", "30", "--url", url, env=env)
        assert made.returncode == 0, made.stderr
        secret = made.stdout.strip()
        assert secret.startswith("mg-") and "not shown again" in made.stderr
        assert chat(client, secret) == 200
        key_id = hashlib.sha256(secret.encode()).hexdigest()[:12]

        listed = run_cli("keys", "list", "--url", url, env=env)
        assert listed.returncode == 0, listed.stderr
        assert key_id in listed.stdout and "ci" in listed.stdout and "acme/*" in listed.stdout
        assert "30" in listed.stdout and secret not in listed.stdout

        rotated = run_cli("keys", "rotate", key_id, "--url", url, env=env)
        assert rotated.returncode == 0, rotated.stderr
        assert chat(client, secret) == 401 and chat(client, rotated.stdout.strip()) == 200

        revoked = run_cli("keys", "revoke", key_id, "--url", url, env=env)
        assert revoked.returncode == 0 and f"revoked key 'ci' (id {key_id})" in revoked.stdout
        assert chat(client, rotated.stdout.strip()) == 401

        refused = run_cli("keys", "list", "--url", url, env={"MODELGATE_ADMIN_KEY": "mg-wrong"})
        assert refused.returncode == 1 and "401" in refused.stderr and "Traceback" not in refused.stderr


@pytest.mark.parametrize("amount", ["nan", "inf", "-Infinity", "lots"])
def test_the_cli_refuses_a_budget_that_is_no_finite_number_itself(amount: str) -> None:
    """Found probing: ``--budget tokens_per_day=nan`` reached the JSON encoder and failed as
    "http://127.0.0.1:...: Out of range float values are not JSON compliant", blaming the server's URL."""
    done = run_cli(
        "keys",
        "create",
        "ci",
        "--budget",
        f"tokens_per_day={amount}",
        "--url",
        "http://127.0.0.1:9",
        "--admin-key",
        ADMIN,
    )
    assert done.returncode == 1
    assert f"--budget 'tokens_per_day={amount}': expected NAME=NUMBER (a finite number)" in done.stderr, done.stderr
    assert "127.0.0.1" not in done.stderr and "Traceback" not in done.stderr
