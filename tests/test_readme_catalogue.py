"""The README's catalogue, CLI and client sections cannot drift: their examples run here."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from modelgate.app import create_app
from modelgate.catalogue import load_catalogue
from modelgate.cli import cli
from modelgate.errors import CatalogueError
from modelgate.settings import Settings
from tests.fakes import Reply
from tests.servers import serve_in_thread

README = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")


def section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else None]


def code_block(text: str, language: str) -> str:
    found = re.search(rf"```{language}\n(.*?)```", text, re.S)
    assert found, f"no {language} block"
    return found.group(1)


def test_the_catalogue_example_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "catalogue.toml"
    path.write_text(code_block(section("The catalogue file"), "toml"), encoding="utf-8")
    catalogue = load_catalogue(path)
    document = catalogue.document
    assert document["models"] == ["acme/tiny-chat", "qwen/Qwen2.5-72B-Instruct"]
    assert list(document["configurations"]) == ["qwen", "acme"]
    assert document["endpoints"]["huggingface"] == ["/api/ai/huggingface/Qwen2.5-72B-Instruct/chat"]
    assert document["endpoints"]["ollama"] == ["/api/ai/ollama/tiny-chat/chat"]
    assert (
        "temperature" not in document["configurations"]["qwen"]["Qwen2.5-72B-Instruct"]["configuration"]["parameters"]
    )


def test_the_documented_error_line_is_what_the_loader_says(tmp_path: Path) -> None:
    text = section("The catalogue file")
    documented = code_block(text, "text").strip()
    broken = code_block(text, "toml").replace("max_new_tokens = 256", "max_new_tokens = 0")
    path = tmp_path / "catalogue.toml"
    path.write_text(broken, encoding="utf-8")
    with pytest.raises(CatalogueError) as info:
        load_catalogue(path)
    assert info.value.message == f"{tmp_path}/{documented}"


def test_the_documented_cli_options_exist() -> None:
    usage = code_block(section("Command line"), "text")
    runner = CliRunner()
    for line in usage.splitlines():
        if not line.startswith("modelgate "):
            continue
        words = line.split()[1:]
        command = words[:2] if words[0] == "keys" else words[:1]  # ``modelgate keys`` has sub-commands
        help_text = runner.invoke(cli, [*command, "--help"], terminal_width=200).stdout
        for option in re.findall(r"--[a-z-]+", line.split("#")[0]):
            assert option in help_text, f"{command} {option}"


def test_the_client_example_runs(fakes: Any, capsys: pytest.CaptureFixture[str]) -> None:
    example = code_block(section("Python client"), "python")
    fakes.huggingface.script(Reply(tokens=["Hi", " there"]))
    with serve_in_thread(create_app(Settings(**fakes.settings_overrides()))) as url:
        exec(example.replace("http://127.0.0.1:8000", url), {})  # the README's own code, as written
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "google/gemma-2-27b-it"
    assert printed[1].startswith("['/api/ai/openrouter/gemini-2.0-pro-exp-02-05/chat'")
    assert printed[2] == "Hi there"


@pytest.mark.parametrize(
    ("variable", "value", "attribute", "expected"),
    [
        ("MODELGATE_CONFIG", "/etc/modelgate.toml", "config_path", Path("/etc/modelgate.toml")),
        ("MODELGATE_WATCH_CONFIG", "1", "watch_config", True),
        ("MODELGATE_CACHE_MAX_AGE", "30", "cache_max_age", 30),
        (
            "MODELGATE_CORS_ORIGINS",
            "https://a.example,https://b.example",
            "cors_origins",
            ("https://a.example", "https://b.example"),
        ),
        ("MODELGATE_LOG_LEVEL", "DEBUG", "log_level", "debug"),
        ("MODELGATE_OTEL", "1", "tracing", True),
    ],
)
def test_the_documented_environment_variables(variable: str, value: str, attribute: str, expected: object) -> None:
    assert f"`{variable}" in section("Environment variables (catalogue service)")
    assert getattr(Settings.from_env({variable: value}), attribute) == expected
