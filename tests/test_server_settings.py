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


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("MODELGATE_CACHE_MAX_AGE", "1m", "MODELGATE_CACHE_MAX_AGE: expected a whole number, got '1m'"),
        ("MODELGATE_PROBE_INTERVAL", "soon", "MODELGATE_PROBE_INTERVAL: expected a number of seconds, got 'soon'"),
        (
            "MODELGATE_HEADER_TIMEOUT",
            "nan",
            "MODELGATE_HEADER_TIMEOUT: expected a number of seconds >= 0.01, got 'nan'",
        ),
        ("MODELGATE_GRACEFUL_TIMEOUT", "-1", "MODELGATE_GRACEFUL_TIMEOUT: expected a number of seconds >= 0, got '-1'"),
        ("MODELGATE_MAX_CONNECTIONS", "0", "MODELGATE_MAX_CONNECTIONS: expected a whole number >= 1, got '0'"),
        ("MODELGATE_MAX_HEADER_BYTES", "32k", "MODELGATE_MAX_HEADER_BYTES: expected a whole number, got '32k'"),
        ("MODELGATE_UPSTREAM_MAX_EVENT_BYTES", "4 MiB", "MODELGATE_UPSTREAM_MAX_EVENT_BYTES: expected a whole number"),
        ("MODELGATE_UPSTREAM_MAX_STREAM_SECONDS", "1h", "MODELGATE_UPSTREAM_MAX_STREAM_SECONDS: expected a number"),
        ("MODELGATE_DATABASE_URL", "mysql://db/usage", "MODELGATE_DATABASE_URL: unsupported database URL scheme"),
    ],
)
def test_a_value_the_environment_cannot_use_names_its_variable(variable: str, value: str, expected: str) -> None:
    # A bare int("1m") said "invalid literal for int() with base 10: '1m'": which of thirty variables?
    with pytest.raises(ValueError) as info:
        Settings.from_env({variable: value})
    assert str(info.value).startswith(expected), str(info.value)


def test_a_negative_cache_max_age_is_refused_at_start() -> None:
    # It was served as "Cache-Control: public, max-age=-60"; the file's cache_max_age is checked (>= 0) too.
    with pytest.raises(ValueError, match=r"^MODELGATE_CACHE_MAX_AGE: expected a whole number >= 0 and <= 2147483647"):
        Settings.from_env({"MODELGATE_CACHE_MAX_AGE": "-60"})
    assert Settings.from_env({"MODELGATE_CACHE_MAX_AGE": "0"}).cache_max_age == 0


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("MODELGATE_HUGGINGFACE_BASE_URL", "router.huggingface.co/v1", "must be an http:// or https:// URL"),
        ("MODELGATE_LLAMA_BASE_URL", "127.0.0.1:8080/v1", "must be an http:// or https:// URL"),
        ("MODELGATE_LLAMA_BASE_URL", "ftp://127.0.0.1/v1", "must be an http:// or https:// URL"),
        ("MODELGATE_LLAMA_BASE_URL", "http://127.0.0.1:99999/v1", "the port is not one of 1 to 65535"),
        ("MODELGATE_LLAMA_BASE_URL", "http://127.0.0.1:8080/v1?key=1", "no query or fragment"),
        ("OLLAMA_HOST", "127.0.0.1:port", "the port is not one of 1 to 65535"),
    ],
)
def test_a_base_url_the_environment_cannot_use_names_its_variable(variable: str, value: str, expected: str) -> None:
    # Accepted before (the file's base_url is checked, the variable that wins over it was not): serve and
    # check-config said nothing, and every call to the provider was a 502 "NonHttpUrlClientError", retried.
    with pytest.raises(ValueError) as info:
        Settings.from_env({variable: value})
    assert str(info.value).startswith(f"{variable}: "), str(info.value)
    assert expected in str(info.value), str(info.value)


@pytest.mark.parametrize(
    ("value", "base_url"),
    [
        # As Ollama's own clients read OLLAMA_HOST (envconfig.Host; ollama-python _parse_host's doctests).
        ("1.2.3.4", "http://1.2.3.4:11434"),
        (":56789", "http://127.0.0.1:56789"),
        ("example.com:56789/", "http://example.com:56789"),
        ("example.com/path", "http://example.com:11434/path"),
        ("example.com:56789/path/", "http://example.com:56789/path"),
        ("[0001:002:003:0004::1]", "http://[0001:002:003:0004::1]:11434"),
        ("[::1]:56789/path", "http://[::1]:56789/path"),
        ("::1", "http://[::1]:11434"),  # envconfig.Host: a bare IPv6 address
        ("https://example.com", "https://example.com"),  # the scheme's own port
        ("ollama.com", "https://ollama.com:443"),  # envconfig.Host: the cloud's own name is its https port
    ],
)
def test_ollama_host_is_read_as_ollamas_clients_read_it(value: str, base_url: str) -> None:
    assert Settings.from_env({"OLLAMA_HOST": value}).base_url_override("ollama") == base_url


def test_a_base_url_from_the_environment_is_taken_as_written() -> None:
    settings = Settings.from_env(
        {"MODELGATE_LLAMA_BASE_URL": "http://[::1]:8080/v1/", "MODELGATE_OPENROUTER_BASE_URL": "https://or.example"}
    )
    assert settings.base_url_override("llama") == "http://[::1]:8080/v1"
    assert settings.base_url_override("openrouter") == "https://or.example"


def test_check_config_refuses_a_base_url_variable_in_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["check-config"], env={"MODELGATE_LLAMA_BASE_URL": "http://u:secret@llama:8080:x"})
    assert result.exit_code == 1
    assert result.output == (
        "MODELGATE_LLAMA_BASE_URL: 'http://u:***@llama:8080:x': the port is not one of 1 to 65535\n"
    ), result.output
