"""The two-instance harness itself (``tests/cluster.py``): both instances serve, and share one ledger."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest

from tests.catalogue_files import model_toml, write_catalogue
from tests.cli_process import wait_for
from tests.cluster import Backends, running_cluster
from tests.fakes import Fakes

CHAT_BODY = {"messages": [{"role": "user", "content": "Hi"}]}


@pytest.mark.timeout(180)
def test_two_instances_answer_and_write_one_shared_ledger(
    cluster_backends: Backends, fakes: Fakes, tmp_path: Path
) -> None:
    catalogue = write_catalogue(tmp_path / "catalogue.toml", model_toml("acme", "tiny"))
    with running_cluster(cluster_backends, catalogue, tmp_path, env=fakes.env()) as cluster:
        assert len(set(cluster.urls)) == 2
        request_ids = []
        for index, url in enumerate(cluster.urls):
            response = httpx.post(
                f"{url}/api/ai/acme/tiny/chat?protocol=text",
                json=CHAT_BODY,
                headers={"X-Request-ID": f"cluster-smoke-{index}"},
                timeout=30,
            )
            assert response.status_code == 200, response.text
            assert response.text == "Hello, world!"
            request_ids.append(response.headers["x-request-id"])
            ready = httpx.get(f"{url}/ready", timeout=10)
            assert ready.status_code == 200, ready.text

        def both_rows() -> list[str] | None:
            ids = [row["request_id"] for row in cluster.usage_rows()]
            return ids if sorted(ids) == sorted(request_ids) else None

        wait_for(both_rows, "both instances' ledger rows in PostgreSQL")
        assert cluster.sigterm(0) == -signal.SIGTERM
        assert "Application shutdown complete." in cluster.instances[0].log()
        # The other instance keeps serving.
        survivor = httpx.post(f"{cluster.urls[1]}/api/ai/acme/tiny/chat?protocol=text", json=CHAT_BODY, timeout=30)
        assert survivor.status_code == 200
        assert survivor.text == "Hello, world!"
