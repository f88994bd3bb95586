"""The README's usage ledger section runs as written: its price table parses, its shell example answers
in the JSON shape it shows (base URL swapped for a test server)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from modelgate.app import create_app
from modelgate.catalogue import parse_catalogue
from modelgate.settings import Settings
from tests.catalogue_files import catalogue_toml, model_toml
from tests.fakes import Fakes

README = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
ADMIN = "mg-readme-admin-4f1c"


def section() -> str:
    start = README.index("\n## Usage ledger and costs\n")
    return README[start : README.index("\n## ", start + 1)]


def block(kind: str) -> str:
    found = re.search(rf"```{kind}\n(.*?)```", section(), re.S)
    assert found, f"the section has no {kind} example"
    return found.group(1)


def shape(value: Any) -> Any:
    """Keys all the way down (lists by their first item), so an example and an answer compare by shape."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return None


def test_the_price_example_parses() -> None:
    pricing = block("toml").split("[models.pricing]", 1)[1]
    catalogue = parse_catalogue(
        tomllib.loads(catalogue_toml(model_toml(extra="[models.pricing]" + pricing))), source="x"
    )
    price = catalogue.models[0].pricing
    assert price is not None and (price.input, price.output, price.cached_input) == (0.15, 0.60, 0.075)
    assert price.cost(1000, 100, 800) == pytest.approx((200 * 0.15 + 800 * 0.075 + 100 * 0.60) / 1e6)


@pytest.mark.skipif(shutil.which("curl") is None, reason="the example uses curl")
def test_the_shell_example_answers_as_shown(fakes: Fakes) -> None:
    from tests.servers import serve_in_thread

    settings = Settings.from_env({**fakes.env(), "MODELGATE_ADMIN_KEY": ADMIN}, probe_interval=0)
    with serve_in_thread(create_app(settings)) as url:
        assert (
            httpx.post(
                url + "/api/ai/ollama/rwkv-6-world/chat", json={"messages": [{"role": "user", "content": "Hi"}]}
            ).status_code
            == 200
        )
        script = block("sh").replace("http://127.0.0.1:8000", url)
        env = {
            **os.environ,
            "MODELGATE_ADMIN_KEY": ADMIN,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script], env=env, capture_output=True, text=True, timeout=60, check=False
        )
    assert done.returncode == 0, done.stderr
    answer, end = json.JSONDecoder().raw_decode(done.stdout)  # curl's answer, then the table
    table = done.stdout[end:]
    assert shape(answer) == shape(orjson.loads(block("json")))
    assert answer["totals"]["requests"] == 1
    assert answer["records"][0]["model"] == "ollama/rwkv-6-world"
    assert "ollama/rwkv-6-world" in table and "total" in table
