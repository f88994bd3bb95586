"""Run-time keys and the ledger across two ``modelgate serve`` instances sharing Redis and PostgreSQL
(``tests/cluster.py``): a revocation on one stops the key on the other within 5 s; every chat request
of both is in the ledger exactly once with its tokens; a SIGTERM'd instance writes all its rows,
the stream it was serving included."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import httpx
import pytest

from tests.catalogue_files import model_toml, write_catalogue
from tests.cli_process import wait_for
from tests.cluster import Backends, running_cluster
from tests.fakes import Fakes, Reply

ADMIN = "mg-cluster-admin-19fa4c"
TINY = "/api/ai/acme/tiny/chat"
BODY = {"messages": [{"role": "user", "content": "Hi"}]}
#: The bound issue 14 sets for a revocation to reach every instance (a deadline, not a measured time).
REVOCATION_BOUND = 5.0


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def chat(base: str, key: str, request_id: str | None = None) -> int:
    headers = {**bearer(key), **({"X-Request-ID": request_id} if request_id else {})}
    return httpx.post(base + TINY, json=BODY, headers=headers, timeout=30).status_code


@pytest.mark.timeout(180)
def test_a_key_revoked_on_one_instance_stops_on_the_other_within_5_s(
    cluster_backends: Backends, fakes: Fakes, tmp_path: Path
) -> None:
    catalogue = write_catalogue(tmp_path / "catalogue.toml", model_toml("acme", "tiny"))
    env = {**fakes.env(), "MODELGATE_ADMIN_KEY": ADMIN}
    with running_cluster(cluster_backends, catalogue, tmp_path, env=env) as cluster:
        a, b = cluster.urls
        created = httpx.post(a + "/admin/keys", json={"name": "shared"}, headers=bearer(ADMIN), timeout=30)
        assert created.status_code == 201, created.text
        key = created.json()
        assert chat(a, key["key"]) == 200
        wait_for(lambda: _knows(b, key["key"]), "instance B to learn the new key", REVOCATION_BOUND)
        listed = httpx.get(b + "/admin/keys", headers=bearer(ADMIN), timeout=30).json()["keys"]
        assert [(k["id"], k["status"]) for k in listed] == [(key["id"], "active")]

        revoked = httpx.delete(f"{a}/admin/keys/{key['id']}", headers=bearer(ADMIN), timeout=30)
        assert revoked.status_code == 200
        assert chat(a, key["key"]) == 401  # the instance that revoked it, at once
        wait_for(lambda: chat(b, key["key"]) == 401, "instance B to refuse the revoked key", REVOCATION_BOUND)

        # A rotation, the same way round: the old key stops on A, the new one works there.
        second = httpx.post(b + "/admin/keys", json={"name": "second"}, headers=bearer(ADMIN), timeout=30).json()
        rotated = httpx.post(f"{b}/admin/keys/{second['id']}/rotate", headers=bearer(ADMIN), timeout=30).json()
        wait_for(lambda: chat(a, rotated["key"]) == 200, "instance A to learn the rotated key", REVOCATION_BOUND)
        assert chat(a, second["key"]) == 401


@pytest.mark.timeout(240)
def test_every_request_of_both_instances_is_in_the_ledger_once_and_sigterm_loses_none(
    cluster_backends: Backends, fakes: Fakes, tmp_path: Path
) -> None:
    """The ledger writes only at shutdown here (an hour between flushes), so what is in the database after
    instance A's SIGTERM is exactly what A's shutdown wrote: all of A's requests, its open stream included."""
    catalogue = write_catalogue(tmp_path / "catalogue.toml", model_toml("acme", "tiny"))
    env = {**fakes.env(), "MODELGATE_ADMIN_KEY": ADMIN, "MODELGATE_LEDGER_FLUSH_INTERVAL": "3600"}
    quick = 12
    expected = {f"req-{i}": (10 + i, 1 + i % 4) for i in range(quick)}
    fakes.ollama.script(
        *[Reply(tokens=["t"] * completion, usage=(prompt, completion)) for prompt, completion in expected.values()],
        Reply(tokens=["s"] * 30, usage=(7, 30), delay=0.05),  # the stream SIGTERM finds running on A
    )
    expected["in-flight"] = (7, 30)
    with running_cluster(cluster_backends, catalogue, tmp_path, env=env) as cluster:
        a, b = cluster.urls
        key = httpx.post(a + "/admin/keys", json={"name": "ledger"}, headers=bearer(ADMIN), timeout=30).json()
        wait_for(lambda: _knows(b, key["key"]), "instance B to learn the key", REVOCATION_BOUND)
        served_by = {}
        for index, request_id in enumerate(list(expected)[:quick]):
            base = (a, b)[index % 2]
            assert chat(base, key["key"], request_id) == 200
            served_by[request_id] = base
        statuses: list[int] = []
        opened = threading.Event()

        def stream() -> None:
            headers = {**bearer(key["key"]), "X-Request-ID": "in-flight"}
            with httpx.stream("POST", a + TINY, json=BODY, headers=headers, timeout=60) as response:
                statuses.append(response.status_code)
                opened.set()
                response.read()

        reader = threading.Thread(target=stream)
        reader.start()
        assert opened.wait(30)
        assert cluster.usage_rows() == []  # nothing written yet: rows wait for a flush or the shutdown
        assert cluster.sigterm(0) == -signal.SIGTERM
        reader.join(timeout=60)
        assert statuses == [200]
        written = [row["request_id"] for row in cluster.usage_rows()]
        assert sorted(written) == sorted([rid for rid, base in served_by.items() if base == a] + ["in-flight"])
    rows = cluster.usage_rows()  # B wrote its rows when the cluster stopped it
    assert sorted(row["request_id"] for row in rows) == sorted(expected)  # every request, exactly once
    for row in rows:
        assert (row["prompt_tokens"], row["completion_tokens"]) == expected[row["request_id"]], row
        assert (row["key_id"], row["status"], row["outcome"]) == (key["id"], 200, "ok")


def _knows(base: str, key: str) -> bool:
    # /v1/models reaches no upstream. Until B sees the first key it is an open service, where any key "works".
    models = base + "/v1/models"
    return httpx.get(models, headers=bearer(key)).status_code == 200 and httpx.get(models).status_code == 401
