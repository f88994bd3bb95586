"""A request its key's budget refuses reaches no upstream, so it takes none of the key's ``requests_per_minute``:
like a request over a concurrency cap, it is not "admitted" (``limits.Admission.reserve_budget``).

Before, the window counted it: a client retrying a busy or spent budget used up its rate limit, and once the budget
let it in again it heard "Rate limit exceeded" for the rest of the minute. In the process and in Redis alike.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from modelgate.app import create_app
from modelgate.catalogue import load_catalogue
from modelgate.settings import Settings
from tests.catalogue_files import model_toml, write_catalogue
from tests.fakes import Fakes, Reply
from tests.redis_server import running_redis
from tests.servers import serve_in_thread

KEY = "mg-budget-rpm-5a1f0c"
RPM = 3
#: The budget lets one request in (8 prompt + 3 completion tokens reported): the next ones find it spent.
KEYS_TOML = f"""
[[keys]]
name = "team"
key = "{KEY}"
requests_per_minute = {RPM}
[keys.budget]
tokens_per_day = 10
"""
BODY = {"messages": [{"role": "user", "content": "Hi!"}]}


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with running_redis() as url:
        yield url


@pytest.fixture(params=["memory", "redis"])
def counters(request: pytest.FixtureRequest) -> str | None:
    """Where the limits and budgets count: None for the process, else a Redis URL."""
    if request.param == "memory":
        return None
    url: str = request.getfixturevalue("redis_url")
    return url


def test_a_request_the_budget_refuses_takes_no_requests_per_minute(
    fakes: Fakes, tmp_path: Path, counters: str | None
) -> None:
    (tmp_path / "keys.toml").write_text(KEYS_TOML, encoding="utf-8")
    path = write_catalogue(
        tmp_path / "catalogue.toml", model_toml("acme", "tiny"), header='[server]\nkeys_file = "keys.toml"\n'
    )
    settings = Settings(
        **fakes.settings_overrides(), config_path=path, database_url=None, probe_interval=0, redis_url=counters
    )
    fakes.ollama.default = Reply(tokens=["a", "b", "c"], usage=(8, 3))
    with (
        serve_in_thread(create_app(settings, load_catalogue(path))) as url,
        httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {KEY}"}) as client,
    ):
        assert client.post("/api/ai/ollama/tiny/chat", json=BODY).status_code == 200
        # Three times the rate limit of refusals: each names the budget, none the rate limit.
        for _ in range(3 * RPM):
            refused = client.post("/api/ai/ollama/tiny/chat", json=BODY)
            assert refused.status_code == 429
            assert refused.json()["statusMessage"].startswith("Budget exhausted: key 'team'"), refused.text
    assert len([r for r in fakes.ollama.requests if r.path == "/api/chat"]) == 1
