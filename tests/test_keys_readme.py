"""The README's "Keys managed at run time" example runs as written (base URL swapped for a test server):
curl creates a key in the JSON shape shown, ``modelgate keys`` creates, lists, rotates and revokes."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import orjson
import pytest

from modelgate.app import create_app
from modelgate.settings import Settings
from tests.fakes import Fakes
from tests.servers import serve_in_thread
from tests.test_usage_readme import shape

README = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
ADMIN = "mg-readme-admin-keys-81d2"


def section() -> str:
    start = README.index("\n### Keys managed at run time")
    return README[start : README.index("\n## ", start + 1)]


def block(kind: str) -> str:
    found = re.search(rf"```{kind}\n(.*?)```", section(), re.S)
    assert found, f"the section has no {kind} example"
    return found.group(1)


@pytest.mark.skipif(shutil.which("curl") is None or shutil.which("sha256sum") is None, reason="curl, sha256sum")
def test_the_keys_example_runs_as_shown(fakes: Fakes, tmp_path: Path) -> None:
    env = {
        **fakes.env(),
        "MODELGATE_ADMIN_KEY": ADMIN,
        "MODELGATE_DATABASE_URL": f"sqlite:///{tmp_path / 'usage.sqlite3'}",
    }
    settings = Settings.from_env(env, probe_interval=0)
    with serve_in_thread(create_app(settings)) as url:
        script = block("sh").replace("http://127.0.0.1:8000", url)
        shell_env = {
            **os.environ,
            "MODELGATE_ADMIN_KEY": ADMIN,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            env=shell_env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        listed = httpx.get(url + "/admin/keys", headers={"Authorization": f"Bearer {ADMIN}"}).json()["keys"]
    created, end = json.JSONDecoder().raw_decode(done.stdout)  # curl's answer, then the rest
    assert shape(created) == shape(orjson.loads(block("json")))
    assert (created["name"], created["models"], created["requests_per_minute"]) == ("ci", ["ollama/*"], 60)
    status, table = done.stdout[end:].lstrip("\n").split("\n", 1)
    assert status == "200"  # /v1/models with the new key
    assert "playground" in table and "ci" in table and "ollama/*" in table
    assert "\n200\nrevoked key 'playground'" in table  # the rotated key worked, then the record was revoked
    assert {key["name"]: key["status"] for key in listed} == {"ci": "active", "playground": "revoked"}
