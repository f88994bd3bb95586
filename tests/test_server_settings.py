"""The server's limits: each a ``modelgate serve`` flag and an environment variable, documented in the README."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from modelgate.cli import cli
from modelgate.server import ServerLimits
from modelgate.settings import Settings

README = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")

#: field → (flag, variable, a value to set, the default)
LIMITS: dict[str, tuple[str, str, str, object]] = {
    "max_header_bytes": ("--max-header-bytes", "MODELGATE_MAX_HEADER_BYTES", "1024", 32_768),
    "header_timeout": ("--header-timeout", "MODELGATE_HEADER_TIMEOUT", "2.5", 10.0),
    "keepalive_timeout": ("--keepalive-timeout", "MODELGATE_KEEPALIVE_TIMEOUT", "1.5", 5.0),
    "max_connections": ("--max-connections", "MODELGATE_MAX_CONNECTIONS", "64", None),
    "graceful_timeout": ("--graceful-timeout", "MODELGATE_GRACEFUL_TIMEOUT", "7", 30.0),
}


@pytest.mark.parametrize("field", LIMITS)
def test_each_limit_is_read_from_the_environment(field: str) -> None:
    _, variable, value, default = LIMITS[field]
    assert getattr(Settings.from_env({}), field) == default
    assert getattr(Settings.from_env({variable: value}), field) == float(value)


@pytest.mark.parametrize("field", LIMITS)
def test_each_limit_is_a_serve_flag_and_documented(field: str) -> None:
    flag, variable, _, _ = LIMITS[field]
    serve_help = CliRunner().invoke(cli, ["serve", "--help"], terminal_width=200).stdout
    assert flag in serve_help
    assert f"`{flag}" in README and f"`{variable}`" in README


def test_the_connection_cap_defaults_to_half_the_open_files_limit() -> None:
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    limits = ServerLimits.from_settings(Settings())
    assert limits.max_connections == (10_000 if soft == resource.RLIM_INFINITY else max(16, soft // 2))
    assert ServerLimits.from_settings(Settings(max_connections=3)).max_connections == 3


def test_private_ops_is_documented() -> None:
    assert "`MODELGATE_PRIVATE_OPS=1`" in README
