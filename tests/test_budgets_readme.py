"""The README's "Budgets per key" section runs as written: its keys file loads, its 429 is what a spent budget
answers, and its shell example answers the budget it shows (base URL swapped for a test server)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from modelgate.app import create_app
from modelgate.auth import load_keyring
from modelgate.budget_rules import Budget, Charge
from modelgate.budget_store import MemoryCounters
from modelgate.budgets import Budgets
from modelgate.catalogue import load_catalogue
from modelgate.errors import RateLimited
from modelgate.settings import Settings
from tests.catalogue_files import model_toml, write_catalogue
from tests.cli_process import wait_for
from tests.fakes import Fakes
from tests.servers import serve_in_thread

README = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
README_BUDGET = Budget(tokens_per_day=200000, tokens_per_month=3000000, usd_per_day=5.0, usd_per_month=50.0)


def section() -> str:
    start = README.index("\n## Budgets per key\n")
    return README[start : README.index("\n## ", start + 1)]


def blocks(kind: str) -> list[str]:
    found = re.findall(rf"```{kind}\n(.*?)```", section(), re.S)
    assert found, f"the section has no {kind} example"
    return found


def catalogue_with_keys(directory: Path) -> Path:
    (directory / "keys.toml").write_text(blocks("toml")[0], encoding="utf-8")
    return write_catalogue(
        directory / "catalogue.toml", model_toml("acme", "tiny"), header='[server]\nkeys_file = "keys.toml"\n'
    )


def test_the_keys_file_example_loads(tmp_path: Path) -> None:
    [key] = load_keyring(Settings(), load_catalogue(catalogue_with_keys(tmp_path))).keys
    assert key.name == "team-a"
    assert key.budget == README_BUDGET


def test_the_429_example_is_what_a_spent_budget_answers() -> None:
    shown = orjson.loads(blocks("json")[0])
    resets = datetime.fromisoformat(shown["data"]["resetsAt"])
    now = resets.timestamp() - shown["data"]["retryAfter"]
    budgets = Budgets(MemoryCounters(), clock=lambda: now)

    async def refusal() -> RateLimited:
        budget = Budget(tokens_per_day=200000)
        reservation = await budgets.reserve("k", "team-a", budget, Charge(200000, 0), 0)
        await budgets.settle(reservation, Charge(200000, 0))
        with pytest.raises(RateLimited) as refused:
            await budgets.reserve("k", "team-a", budget, Charge(1, 0), 0)
        return refused.value

    error = asyncio.run(refusal())
    assert {"statusCode": error.status, "statusMessage": error.message, "data": error.data} == shown
    assert error.headers["Retry-After"] == str(shown["data"]["retryAfter"])


def without_resets(budget: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{name: value for name, value in entry.items() if name != "resetsAt"} for entry in budget]


@pytest.mark.skipif(shutil.which("curl") is None, reason="the example uses curl")
def test_the_shell_example_shows_the_budget(fakes: Fakes, tmp_path: Path) -> None:
    settings = Settings(
        config_path=catalogue_with_keys(tmp_path),
        database_url=f"sqlite:///{tmp_path / 'usage.sqlite3'}",
        **fakes.settings_overrides(),  # type: ignore[arg-type]
    )
    with serve_in_thread(create_app(settings)) as url:
        chat = httpx.post(
            url + "/api/ai/acme/tiny/chat",
            json={"messages": [{"role": "user", "content": "Hi"}]},
            headers={"Authorization": "Bearer mg-team-a-change-me"},
            timeout=30,
        )
        assert chat.status_code == 200  # 11 + 4 tokens (the fake's usage), no price: 0 USD
        script = blocks("sh")[0].replace("http://127.0.0.1:8000", url)

        def settled() -> dict[str, Any] | None:
            done = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", script], env=dict(os.environ), capture_output=True, text=True
            )
            assert done.returncode == 0, done.stderr
            parsed: dict[str, Any] = orjson.loads(done.stdout)
            return parsed if parsed["budget"][0]["spent"] else None  # settled an instant after the last byte

        found = wait_for(settled, "the chat to be settled")
    shown = orjson.loads(blocks("json")[1])
    assert without_resets(found["budget"]) == without_resets(shown["budget"])
    assert {"filters", "totals", "groups", "records"} <= set(found)
    today = datetime.now(UTC)
    assert found["budget"][0]["resetsAt"] > today.strftime("%Y-%m-%dT%H:%M:%SZ")
