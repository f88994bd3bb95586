"""The README's OpenAI-compatible API example runs as written (base URL swapped for a test server)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from modelgate.app import create_app
from modelgate.settings import Settings
from tests.fakes import Fakes, Reply
from tests.servers import serve_in_thread

README = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")


def test_the_readme_example_works_against_the_service(fakes: Fakes, capsys: pytest.CaptureFixture[str]) -> None:
    start = README.index("\n## OpenAI-compatible API\n")
    found = re.search(r"```python\n(.*?)```", README[start:], re.S)
    assert found, "the section has no python example"
    example = found.group(1)
    assert 'base_url="http://127.0.0.1:8000/v1"' in example
    fakes.huggingface.script(Reply(tokens=["Hi", " there", "!"]))
    with serve_in_thread(create_app(Settings.from_env(fakes.env()))) as url:
        exec(compile(example.replace("http://127.0.0.1:8000", url), "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "qwen/Qwen2.5-72B-Instruct huggingface 32267\n" in out
    assert out.endswith("Hi there!")
    sent = fakes.huggingface.last.json  # the HF router: Chat Completions
    assert (sent["max_tokens"], sent["temperature"]) == (256, 0.2)
