"""The ``modelgate`` command line: typer's runner where no server is needed, real processes and servers otherwise."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from modelgate import __version__
from modelgate.app import create_app
from modelgate.catalogue import load_catalogue
from modelgate.cli import ONLINE_COLUMNS, TABLE_COLUMNS, cli
from modelgate.settings import Settings
from tests.catalogue_files import model_toml, write_catalogue
from tests.cli_process import run_cli, serve_subprocess
from tests.fakes import Fakes, Reply
from tests.fakes.cloudflare import CONTEXT_WINDOW as CF_CONTEXT_WINDOW
from tests.fakes.huggingface import ROUTER_CONTEXT_WINDOWS
from tests.fakes.openai_compatible import CONTEXT_WINDOW as OPENAI_CONTEXT_WINDOW
from tests.redis_server import free_port
from tests.servers import serve_in_thread

GOLDEN = json.loads((Path(__file__).parent / "fixtures" / "models.example.json").read_text(encoding="utf-8"))
runner = CliRunner()

INVALID = model_toml("acme", "tiny", max_new_tokens=0)
INVALID_WHY = "model 'acme/tiny': configuration.parameters.max_new_tokens: Input should be greater than 0 (got 0)"


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with serve_in_thread(create_app(Settings())) as base:
        yield base


def table_rows(output: str) -> list[list[str]]:
    """The header and body rows of a rich table (box-drawing borders stripped)."""
    rows = []
    for line in output.splitlines():
        if line[:1] in ("│", "┃"):
            rows.append([cell.strip() for cell in line.strip("│┃").replace("┃", "│").split("│")])
    return rows


# --- check-config ------------------------------------------------------------------------------------


def test_check_config_valid_file(tmp_path: Path) -> None:
    path = write_catalogue(tmp_path / "c.toml", model_toml("a", "x"), model_toml("b", "y", provider="openrouter"))
    result = runner.invoke(cli, ["check-config", str(path)])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"{path}: OK, 2 models from 2 publishers (ollama 1, openrouter 1)"


def test_check_config_invalid_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(INVALID, encoding="utf-8")
    result = runner.invoke(cli, ["check-config", str(path)])
    assert result.exit_code == 1
    assert result.stderr.strip() == f"{path}: {INVALID_WHY}"
    assert result.stdout == ""


def test_check_config_missing_file_through_the_console_script(tmp_path: Path) -> None:
    result = run_cli("check-config", str(tmp_path / "absent.toml"))
    assert result.returncode == 1
    assert result.stderr.strip() == f"{tmp_path / 'absent.toml'}: file not found"
    assert "Traceback" not in result.stderr


def test_check_config_of_the_default_catalogue() -> None:
    default = load_catalogue()
    result = runner.invoke(cli, ["check-config", default.source])
    assert result.exit_code == 0
    assert "OK, 12 models from 8 publishers (huggingface 7, cloudflare 1, openrouter 3, ollama 1)" in result.stdout


def test_check_config_without_a_path_checks_modelgate_config(tmp_path: Path) -> None:
    path = write_catalogue(tmp_path / "c.toml", model_toml("a", "x"))
    result = run_cli("check-config", env={"MODELGATE_CONFIG": str(path)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{path}: OK, 1 models from 1 publishers (ollama 1)"


# --- check-config --online: the providers' own listings, through a real process --------------------

RWKV = "mollysama/rwkv-6-world:1.6b"
LLAMA_FREE = "meta-llama/llama-3.3-70b-instruct:free"
CF_8B = "@cf/meta/llama-3.1-8b-instruct"


def online_catalogue(tmp_path: Path, *extra: str) -> Path:
    return write_catalogue(
        tmp_path / "online.toml",
        model_toml("ollama", "rwkv", upstream=RWKV, truncate=1000, max_new_tokens=100),
        model_toml("meta", "llama", provider="openrouter", upstream=LLAMA_FREE, truncate=8000, max_new_tokens=2048),
        # 30000 + 1000 tokens do not fit the 24000 the Cloudflare listing states: flagged, not failed.
        model_toml("meta", "small", provider="cloudflare", upstream=CF_8B, truncate=30000, max_new_tokens=1000),
        *extra,
    )


def online_rows(stdout: str) -> dict[str, list[str]]:
    """The table's body rows by model id (the header row is left out)."""
    return {row[0]: row[1:] for row in table_rows(stdout) if row[0] not in ("model", "")}


def test_check_config_online_lists_every_model_with_the_providers_context(fakes: Fakes, tmp_path: Path) -> None:
    path = online_catalogue(tmp_path)
    result = run_cli("check-config", "--online", str(path), env=fakes.env())
    assert result.returncode == 0, result.stdout + result.stderr
    assert [row for row in table_rows(result.stdout) if row[0] == "model"] == [list(ONLINE_COLUMNS)]
    assert online_rows(result.stdout) == {
        "ollama/rwkv": ["ollama", RWKV, "yes", "—", "1000 + 100 = 1100", ""],
        "meta/llama": ["openrouter", LLAMA_FREE, "yes", "131072", "8000 + 2048 = 10048", ""],
        "meta/small": [
            "cloudflare",
            CF_8B,
            "yes",
            str(CF_CONTEXT_WINDOW),
            "30000 + 1000 = 31000 !",
            "exceeds the provider's context by 7000",
        ],
    }
    assert result.stdout.rstrip().endswith("online: OK, every model is listed by its provider (3 models)")
    # Listings only: checking a catalogue never bills a generation.
    assert all(fake.requests == [] for fake in fakes.all())
    assert {r.path for r in fakes.ollama.listings} == {"/api/tags"}
    assert {r.path for r in fakes.openrouter.listings} == {"/api/v1/models"}
    assert {r.method for fake in fakes.all() for r in fake.listings} == {"GET"}


def test_check_config_online_fails_on_a_withdrawn_model(fakes: Fakes, tmp_path: Path) -> None:
    withdrawn = model_toml("acme", "gone", provider="openrouter", upstream="acme/withdrawn:free")
    result = run_cli("check-config", "--online", str(online_catalogue(tmp_path, withdrawn)), env=fakes.env())
    assert result.returncode == 1
    rows = online_rows(result.stdout)
    assert rows["acme/gone"] == [
        "openrouter",
        "acme/withdrawn:free",
        "NO",
        "—",
        "1000 + 100 = 1100",
        "openrouter does not list 'acme/withdrawn:free'",
    ]
    assert rows["meta/llama"][2] == "yes"
    assert result.stderr.strip() == "1 of 4 models failed the online check"
    assert "Traceback" not in result.stderr


def test_check_config_online_fails_when_a_provider_is_unreachable_or_unconfigured(fakes: Fakes, tmp_path: Path) -> None:
    env = {**fakes.env(), "MODELGATE_OLLAMA_BASE_URL": f"http://127.0.0.1:{free_port()}"}
    env.pop("CLOUDFLARE_API_TOKEN")
    result = run_cli("check-config", "--online", str(online_catalogue(tmp_path)), env=env)
    assert result.returncode == 1
    rows = online_rows(result.stdout)
    assert rows["ollama/rwkv"][2] == "?"
    assert rows["ollama/rwkv"][5].startswith("ollama unreachable: ")
    assert "unreachable (ClientConnectorError)" in rows["ollama/rwkv"][5]
    assert rows["meta/small"][2] == "?"
    assert rows["meta/small"][5] == "not checked: set CLOUDFLARE_API_TOKEN"
    assert rows["meta/llama"][2] == "yes"
    assert result.stderr.strip() == "2 of 3 models failed the online check"
    assert fakes.cloudflare.listings == []  # no credentials: not even asked


def test_check_config_online_covers_every_instance(fakes: Fakes, tmp_path: Path) -> None:
    path = write_catalogue(
        tmp_path / "instances.toml",
        model_toml("qwen", "qwen", provider="huggingface", upstream="Qwen/Qwen2.5-72B-Instruct", truncate=30000),
        model_toml("local", "smol", provider="llama", upstream="HuggingFaceTB/SmolLM2-135M-Instruct", truncate=1000),
        model_toml("local", "ghost", provider="llama", upstream="not-served/ghost-7b"),
        header=f'[providers.llama]\nkind = "openai"\nbase_url = "{fakes.openai.url}"\n',
    )
    result = run_cli("check-config", "--online", str(path), env=fakes.env())
    assert result.returncode == 1
    assert online_rows(result.stdout) == {
        # The router's smallest serving provider's window; 30000 + 100 fits it.
        "qwen/qwen": [
            "huggingface",
            "Qwen/Qwen2.5-72B-Instruct",
            "yes",
            str(min(ROUTER_CONTEXT_WINDOWS)),
            "30000 + 100 = 30100",
            "",
        ],
        "local/smol": [
            "llama",
            "HuggingFaceTB/SmolLM2-135M-Instruct",
            "yes",
            str(OPENAI_CONTEXT_WINDOW),
            "1000 + 100 = 1100",
            "",
        ],
        "local/ghost": [
            "llama",
            "not-served/ghost-7b",
            "NO",
            "—",
            "1000 + 100 = 1100",
            "llama does not list 'not-served/ghost-7b'",
        ],
    }
    assert result.stderr.strip() == "1 of 3 models failed the online check"
    assert {r.path for r in fakes.huggingface.listings} == {"/v1/models"}
    assert {r.path for r in fakes.openai.listings} == {"/v1/models"}
    assert all(fake.requests == [] for fake in fakes.all())


# --- serve refuses an invalid file --------------------------------------------------------------------


def test_serve_refuses_an_invalid_catalogue(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(INVALID, encoding="utf-8")
    result = run_cli("serve", "--config", str(path), "--port", "0")
    assert result.returncode == 1
    assert result.stderr.strip() == f"{path}: {INVALID_WHY}"
    assert "Traceback" not in result.stderr + result.stdout


def test_serve_refuses_an_invalid_catalogue_named_by_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[[models]\n", encoding="utf-8")
    result = run_cli("serve", "--port", "0", "--workers", "2", env={"MODELGATE_CONFIG": str(path)})
    assert result.returncode == 1
    assert result.stderr.startswith(f"{path}: not valid TOML: ")
    assert "Traceback" not in result.stderr


def test_serve_default_catalogue_matches_the_seed(tmp_path: Path) -> None:
    with serve_subprocess([], tmp_path) as served:
        assert served.url.startswith("http://127.0.0.1:")
        assert httpx.get(served.url + "/models").json() == GOLDEN


def test_serve_config_option_and_environment(tmp_path: Path) -> None:
    by_option = write_catalogue(tmp_path / "a.toml", model_toml("acme", "from-option"))
    by_env = write_catalogue(tmp_path / "b.toml", model_toml("acme", "from-env"))
    with serve_subprocess(["--config", str(by_option)], tmp_path, env={"MODELGATE_CONFIG": str(by_env)}) as served:
        assert httpx.get(served.url + "/models").json()["models"] == ["acme/from-option"]
    with serve_subprocess([], tmp_path, env={"MODELGATE_CONFIG": str(by_env)}) as served:
        assert httpx.get(served.url + "/models").json()["models"] == ["acme/from-env"]


# --- models ------------------------------------------------------------------------------------------


def test_models_table_from_the_default_catalogue() -> None:
    result = runner.invoke(cli, ["models"])
    assert result.exit_code == 0
    rows = table_rows(result.stdout)
    assert rows[0] == list(TABLE_COLUMNS)
    assert rows[1] == [
        "google",
        "gemma-2-27b-it",
        "instruct",
        "huggingface",
        "500",
        "7692",
        "/api/ai/huggingface/gemma-2-27b-it/chat",
    ]
    assert [f"{r[0]}/{r[1]}" for r in rows[1:]] == GOLDEN["models"]


def test_models_table_from_a_file(tmp_path: Path) -> None:
    path = write_catalogue(tmp_path / "c.toml", model_toml("acme", "tiny", max_new_tokens=42, truncate=99))
    result = runner.invoke(cli, ["models", "--config", str(path)])
    assert result.exit_code == 0
    assert table_rows(result.stdout)[1:] == [["acme", "tiny", "chat", "ollama", "42", "99", "/api/ai/ollama/tiny/chat"]]


def test_models_json_from_a_file_is_the_document() -> None:
    result = runner.invoke(cli, ["models", "--json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout) == GOLDEN


def test_models_from_a_running_server(url: str) -> None:
    from_url = runner.invoke(cli, ["models", "--url", url])
    from_file = runner.invoke(cli, ["models"])
    assert from_url.exit_code == 0
    assert table_rows(from_url.stdout) == table_rows(from_file.stdout)


def test_models_json_from_a_running_server_is_the_raw_body(url: str) -> None:
    result = runner.invoke(cli, ["models", "--url", url, "--json"])
    assert result.exit_code == 0
    assert result.stdout.rstrip("\n") == load_catalogue().body.decode()


def test_models_provider_is_read_back_from_endpoints(tmp_path: Path) -> None:
    # "same" on two providers, but where it sits in each endpoint list leaves one reading only.
    path = write_catalogue(
        tmp_path / "c.toml",
        model_toml("a", "same", provider="openrouter"),
        model_toml("b", "y", provider="cloudflare"),
        model_toml("c", "x", provider="openrouter"),
        model_toml("d", "same", provider="cloudflare"),
    )
    with serve_in_thread(create_app(Settings(config_path=path))) as base:
        from_url = runner.invoke(cli, ["models", "--url", base])
    from_file = runner.invoke(cli, ["models", "--config", str(path)])
    assert [(r[0], r[3]) for r in table_rows(from_url.stdout)[1:]] == [
        ("a", "openrouter"),
        ("b", "cloudflare"),
        ("c", "openrouter"),
        ("d", "cloudflare"),
    ]
    assert table_rows(from_url.stdout) == table_rows(from_file.stdout)


def test_models_ambiguous_providers_are_shown_not_guessed(tmp_path: Path) -> None:
    # One name on three providers: the seed's document cannot say which publisher each one serves.
    path = write_catalogue(
        tmp_path / "c.toml",
        model_toml("b", "same", provider="openrouter"),
        model_toml("a", "same", provider="cloudflare"),
        model_toml("c", "same", provider="huggingface"),
    )
    with serve_in_thread(create_app(Settings(config_path=path))) as base:
        result = runner.invoke(cli, ["models", "--url", base])
    providers = [r[3] for r in table_rows(result.stdout)[1:]]
    assert providers == ["huggingface | cloudflare | openrouter"] * 3


def test_models_url_and_config_together_is_a_usage_error(tmp_path: Path) -> None:
    result = runner.invoke(cli, ["models", "--url", "http://127.0.0.1:9", "--config", str(tmp_path / "x.toml")])
    assert result.exit_code == 2
    assert "either --url or --config" in result.stderr


def test_models_from_an_unreachable_server() -> None:
    result = runner.invoke(cli, ["models", "--url", "http://127.0.0.1:9"])
    assert result.exit_code == 1
    assert result.stderr.startswith("cannot reach http://127.0.0.1:9")


def test_models_from_a_server_that_answers_an_error(url: str) -> None:
    result = runner.invoke(cli, ["models", "--url", url + "/nope"])
    assert result.exit_code == 1
    assert result.stderr.strip() == f"{url}/nope: 404 Page not found: /nope/api/models"


def test_models_invalid_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(INVALID, encoding="utf-8")
    result = runner.invoke(cli, ["models", "--config", str(path)])
    assert result.exit_code == 1
    assert result.stderr.strip() == f"{path}: {INVALID_WHY}"


# --- chat --------------------------------------------------------------------------------------------


@pytest.fixture
def gateway_url(fakes: Any) -> Iterator[str]:
    with serve_in_thread(create_app(Settings(**fakes.settings_overrides(), api_keys=("mg-cli-key-1",)))) as base:
        yield base


def test_chat_streams_the_reply_to_stdout(gateway_url: str, fakes: Any) -> None:
    fakes.openrouter.script(Reply(tokens=["Bon", "jour", "!"]))
    result = run_cli(
        "chat", "openrouter/deepseek-chat", "Say hello", "--url", gateway_url, env={"MODELGATE_API_KEY": "mg-cli-key-1"}
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Bonjour!\n"
    assert fakes.openrouter.last.json["messages"][-1] == {"role": "user", "content": "Say hello"}


def test_chat_error_goes_to_stderr(gateway_url: str) -> None:
    result = runner.invoke(cli, ["chat", "openrouter/deepseek-chat", "Hi", "--url", gateway_url])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: 401 ")


def test_chat_with_the_server_down_is_one_line_not_a_traceback() -> None:
    """The command as a user runs it (a real process): nothing listens at --url."""
    from tests.redis_server import free_port

    url = f"http://127.0.0.1:{free_port()}"
    result = run_cli("chat", "acme/tiny", "hi", "--url", url, env={"MODELGATE_API_KEY": "mg-cli-secret-key-42"})
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith(f"cannot reach {url}: ConnectError: "), result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "mg-cli-secret-key-42" not in result.stderr


def test_chat_rejects_a_malformed_model() -> None:
    result = runner.invoke(cli, ["chat", "no-slash", "Hi", "--url", "http://127.0.0.1:9"])
    assert result.exit_code == 1
    assert "publisher/name" in result.stderr


# --- help and version ----------------------------------------------------------------------------------


# --- a bad environment or a malformed argument: one line, never a traceback ------------------------------


def one_line_failure(result: Any) -> str:
    """The stderr of a command that failed as the CLI promises: exit 1, one line, no exception escaping."""
    assert isinstance(result.exception, SystemExit), result.exception  # the runner catches any other as exit 1 too
    assert result.exit_code == 1
    message: str = result.stderr
    assert message.count("\n") == 1 and "Traceback" not in message, message
    return message.strip()


@pytest.mark.parametrize("command", ["check-config", "models", "serve"])
@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("MODELGATE_CACHE_MAX_AGE", "1m", "MODELGATE_CACHE_MAX_AGE: expected a whole number, got '1m'"),
        ("MODELGATE_PROBE_INTERVAL", "soon", "MODELGATE_PROBE_INTERVAL: expected a number of seconds, got 'soon'"),
        ("MODELGATE_DATABASE_URL", "mysql://db/usage", "unsupported database URL scheme 'mysql'"),
        # Taken before: the server ran with a ledger that never opened, logging so every second.
        ("MODELGATE_DATABASE_URL", "sqlite://usage.db", "a SQLite URL has no host"),
        ("MODELGATE_DATABASE_URL", "postgresql://u:pw@db:54x2/u", "the port is not one of 1 to 65535"),
        # Taken before: serve bound, then its start-up failed with redis-py's traceback in the log (exit 3), and
        # check-config said OK.
        ("MODELGATE_REDIS_URL", "localhost:6379", "MODELGATE_REDIS_URL: not a Redis URL: use redis://HOST[:PORT]"),
        ("MODELGATE_REDIS_URL", "http://cache:6379", "MODELGATE_REDIS_URL: unsupported Redis URL scheme 'http'"),
        ("MODELGATE_REDIS_URL", "redis://:pw@cache:6380x/0", "MODELGATE_REDIS_URL: the port is not one of 1 to 65535"),
    ],
)
def test_a_bad_environment_value_is_one_line_naming_the_variable(
    tmp_path: Path, command: str, variable: str, value: str, expected: str
) -> None:
    path = write_catalogue(tmp_path / "c.toml", model_toml())
    result = runner.invoke(cli, [command], env={"MODELGATE_CONFIG": str(path), variable: value})
    message = one_line_failure(result)
    assert variable in message and expected in message, message


@pytest.mark.parametrize(
    "variable",
    [
        "MODELGATE_CLIENT_BODY_TIMEOUT",
        "MODELGATE_CLIENT_SEND_TIMEOUT",
        "MODELGATE_HEADER_TIMEOUT",
        "MODELGATE_KEEPALIVE_TIMEOUT",
        "MODELGATE_LEDGER_FLUSH_INTERVAL",
        "MODELGATE_KEY_REFRESH_INTERVAL",
    ],
)
def test_a_timeout_or_interval_that_cannot_be_off_refuses_zero(tmp_path: Path, variable: str) -> None:
    # 0 was taken: every request a 408 as it arrived (header timeout), or a loop polling the database without a
    # pause (key refresh). The least is the one `serve --header-timeout` has always had.
    path = write_catalogue(tmp_path / "c.toml", model_toml())
    result = runner.invoke(cli, ["check-config"], env={"MODELGATE_CONFIG": str(path), variable: "0"})
    assert one_line_failure(result).endswith(f"{variable}: expected a number of seconds >= 0.01, got '0'")
    accepted = runner.invoke(cli, ["check-config"], env={"MODELGATE_CONFIG": str(path), variable: "0.01"})
    assert accepted.exit_code == 0, accepted.output


def test_zero_still_turns_the_probes_off_and_the_grace_period_to_none() -> None:
    settings = Settings.from_env({"MODELGATE_PROBE_INTERVAL": "0", "MODELGATE_GRACEFUL_TIMEOUT": "0"})
    assert (settings.probe_interval, settings.graceful_timeout) == (0, 0)


@pytest.mark.parametrize(
    "args",
    [
        ["models", "--url", "http://[::1"],
        ["usage", "--url", "http://[::1"],
        ["chat", "acme/tiny", "hi", "--url", "http://[::1"],
        ["keys", "list", "--url", "http://[::1"],
    ],
)
def test_a_malformed_url_is_one_line(args: list[str]) -> None:
    assert one_line_failure(runner.invoke(cli, args)).startswith("--url 'http://[::1': ")


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["usage", "--url", "http://127.0.0.1:9", "--api-key", "clé-ключ"], "--api-key"),
        (["keys", "list", "--url", "http://127.0.0.1:9", "--admin-key", "clé-ключ"], "--admin-key"),
    ],
)
def test_a_key_that_is_not_ascii_is_one_line(args: list[str], option: str) -> None:
    # An HTTP header carries ASCII only: httpx raised UnicodeEncodeError before sending anything.
    assert one_line_failure(runner.invoke(cli, args)).startswith(f"{option} (or MODELGATE_")


def test_version_and_help() -> None:
    assert runner.invoke(cli, ["--version"]).stdout.strip() == f"modelgate {__version__}"
    help_text = runner.invoke(cli, ["--help"]).stdout
    for command in ("serve", "models", "check-config", "chat"):
        assert command in help_text
    serve_help = runner.invoke(cli, ["serve", "--help"], terminal_width=200).stdout
    for option in ("--config", "--host", "--port", "--workers", "--watch", "--log-level"):
        assert option in serve_help
    assert "127.0.0.1" in serve_help and "8000" in serve_help


def test_python_dash_m_runs_the_cli() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"modelgate {__version__}"
    assert sys.executable  # the same interpreter runs the subprocess


@pytest.mark.parametrize("width", [40, 80, 200])
def test_a_table_is_never_cut_to_fit_a_narrow_terminal(width: int) -> None:
    """``modelgate usage`` on an 80-column terminal showed ``12345…`` for a count: a wrong figure."""
    import io

    from rich.console import Console
    from rich.table import Table

    from modelgate.cli import USAGE_COLUMNS
    from modelgate.cli_http import print_table

    row = ("3f9a1c2b4d5e", "meta-llama/llama-3.3-70b-instruct", "openrouter", "1234567", "123456789012")
    row += ("12345678901", "1234567890", "123456789", "123.45678901")
    table = Table(*USAGE_COLUMNS)
    table.add_row(*row)
    out = io.StringIO()
    print_table(table, Console(file=out, width=width, force_terminal=True, color_system=None))
    line = next(line for line in out.getvalue().splitlines() if "3f9a1c2b4d5e" in line)
    assert [cell.strip() for cell in line.strip("│").split("│")] == list(row)
    assert "…" not in out.getvalue()


def test_models_from_a_server_with_hundreds_of_models() -> None:
    """Found from outside: the provider read-back recursed once per model; 250 passed Python's limit (a traceback
    from ``models --url`` for a catalogue ``check-config`` calls valid)."""
    from modelgate.cli import providers_from_endpoints

    models = [f"p/m{i}" for i in range(600)]
    endpoints = {"ollama": [f"/api/ai/ollama/m{i}/chat" for i in range(0, 600, 2)]}
    endpoints["openrouter"] = [f"/api/ai/openrouter/m{i}/chat" for i in range(1, 600, 2)]
    assert providers_from_endpoints(models, endpoints) == [["ollama"], ["openrouter"]] * 300


def test_models_of_one_name_on_every_provider_are_ambiguous_in_bounded_time() -> None:
    """120 models of one name over 4 providers made ~N**4 states: 14 s of CPU on a hostile server's answer. Past
    a bound the answer is every provider listing the name (ambiguous, never wrong)."""
    from modelgate.cli import providers_from_endpoints

    providers = ["a", "b", "c", "d"]
    endpoints = {p: [f"/api/ai/{p}/x/chat"] * 30 for p in providers}
    assert providers_from_endpoints(["p/x"] * 120, endpoints) == [providers] * 120


@pytest.mark.parametrize(
    "args",
    [
        ["usage", "--url", "http://127.0.0.1:9", "--api-key", "mg-secret-key-123\n"],
        ["keys", "list", "--url", "http://127.0.0.1:9", "--admin-key", "mg-secret-key-123\r\nX-Evil: 1"],
        ["chat", "acme/tiny", "hi", "--url", "http://127.0.0.1:9", "--api-key", "mg-secret-key-123\n"],
    ],
)
def test_a_key_with_a_line_break_is_refused_without_being_printed(args: list[str]) -> None:
    """Found from outside: httpx's error for such a header ("Illegal header value b'Bearer …'") printed the whole
    key to stderr, behind a misleading "cannot reach"."""
    message = one_line_failure(runner.invoke(cli, args))
    assert "control character" in message and "mg-secret-key-123" not in message


def _keys_server(answer: Any, status: int = 200) -> Any:
    """A server answering every ``/admin/keys`` call with ``answer``; the paths it was asked for."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    asked: list[str] = []

    async def any_call(request: Any) -> JSONResponse:
        asked.append(request.scope["raw_path"].decode())
        return JSONResponse(answer, status_code=status)

    app = Starlette(routes=[Route("/{path:path}", any_call, methods=["GET", "POST", "DELETE"])])
    return app, asked


def test_keys_list_shows_names_as_written_never_as_markup_or_terminal_codes() -> None:
    """Found from outside: ``keys create '[/x]'`` (a name the server accepts) made every later ``keys list`` a
    rich MarkupError traceback; ``*/[a-z]*`` was shown as ``*/*``; an escape sequence reached the terminal."""
    key = {"id": "0123456789ab", "name": "[/x]", "source": "api", "status": "active", "models": ["*/[a-z]*"]}
    key |= {"requests_per_minute": None, "concurrent_streams": None, "budget": None}
    key |= {"created_at": "2026-12-03T00:00:00Z", "expires_at": None}
    evil = {**key, "id": "ba9876543210", "name": "x\x1b]0;pwned\x07"}
    app, _ = _keys_server({"keys": [key, evil]})
    with serve_in_thread(app) as url:
        result = runner.invoke(cli, ["keys", "list", "--url", url, "--admin-key", "k"])
    assert result.exit_code == 0, result.output
    assert "[/x]" in result.stdout and "*/[a-z]*" in result.stdout
    assert "\x1b" not in result.stdout and "\\x1b]0;pwned\\x07" in result.stdout


@pytest.mark.parametrize(
    ("args", "answer"),
    [
        (["keys", "list"], [1, 2]),
        (["keys", "list"], {"keys": {"a": 1}}),
        (["keys", "list"], {"keys": [{}]}),
        (["keys", "create", "x"], {"id": "k"}),
        (["keys", "create", "x"], {"key": "mg-abc\x1b]0;pwned\x07\nrm -rf", "name": "x", "id": "k"}),
        (["keys", "revoke", "0123456789ab"], []),
        # Some other server answering 200: a revocation nobody confirmed is no success (a leaked key stays live).
        (["keys", "revoke", "0123456789ab"], {}),
        (["keys", "revoke", "0123456789ab"], {"id": "ba9876543210", "name": "x", "status": "revoked"}),
        (["keys", "revoke", "0123456789ab"], {"id": "0123456789ab", "name": "x", "status": "active"}),
    ],
)
def test_a_keys_answer_in_another_shape_is_one_line_not_a_traceback(args: list[str], answer: Any) -> None:
    app, _ = _keys_server(answer, 201 if args[1] == "create" else 200)
    with serve_in_thread(app) as url:
        result = runner.invoke(cli, [*args, "--url", url, "--admin-key", "k"])
    one_line_failure(result)  # exit 1, one line on stderr, no traceback
    assert "\x1b" not in result.stdout


@pytest.mark.parametrize("key_id", ["../../v1/x", "a#frag", "a?b=c"])
def test_a_key_id_is_sent_as_one_path_segment(key_id: str) -> None:
    """Found from outside: ``keys revoke ../../v1/x`` sent ``DELETE /v1/x`` with the admin key; ``a#frag``
    revoked key ``a``."""
    app, asked = _keys_server({"id": "x", "name": "x"})
    with serve_in_thread(app) as url:
        runner.invoke(cli, ["keys", "revoke", key_id, "--url", url, "--admin-key", "k"])
    from urllib.parse import quote

    assert asked == ["/admin/keys/" + quote(key_id, safe="")]
