"""Command line: ``modelgate serve | models | check-config | chat | usage | keys``.

Thin by design: arguments → ``create_app`` + uvicorn, or → the catalogue loader, or → the client.
A catalogue problem, an environment variable it cannot use, a malformed ``--url`` or ``--api-key``: each is one
message on stderr and exit code 1, never a traceback.
"""

# No ``from __future__ import annotations`` here: typer reads every command's annotations each time the CLI
# runs (``--help`` included), and string annotations would be evaluated again on every run (issue 13 item 5).

import contextlib
import json
import math
import os
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import replace
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer

from modelgate.cli_http import cell, check_key, fail, print_table, request_or_fail, terminal_text
from modelgate.cli_keys import keys_cli
from modelgate.errors import CatalogueError
from modelgate.redact import shown_url
from modelgate.settings import LEDGER_OFF, MIN_SECONDS, Settings
from modelgate.settings import database_url as ledger_database_url

# Each command imports what it uses, inside it: `modelgate --help` needs none of the server (uvicorn,
# FastAPI, aiohttp), `modelgate models` only the catalogue loader, the client commands only httpx
# (issue 13 item 5; tests/test_startup_imports.py holds it).
if TYPE_CHECKING:
    from modelgate.auth import KeyRing
    from modelgate.catalogue import Catalogue
    from modelgate.schema import ModelsResponse

DEFAULT_URL = "http://127.0.0.1:8000"
TABLE_COLUMNS = ("publisher", "model", "type", "provider", "max_new_tokens", "truncate", "endpoint")
ONLINE_COLUMNS = ("model", "provider", "upstream id", "listed", "context", "truncate + max_new_tokens", "note")

cli = typer.Typer(
    name="modelgate",
    help="An open model catalogue and chat gateway.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
cli.add_typer(keys_cli)  # modelgate keys create | list | revoke | rotate (cli_keys.py)


class LogLevel(StrEnum):
    critical = "critical"
    error = "error"
    warning = "warning"
    info = "info"
    debug = "debug"


def settings_or_fail() -> Settings:
    """The environment's settings, or the variable it cannot use (``from_env`` names it) and exit 1."""
    try:
        return Settings.from_env()
    except ValueError as exc:
        fail(str(exc))


def keys_or_fail(settings: Settings, catalogue: "Catalogue") -> "KeyRing":
    """The API keys (environment + the keys file the catalogue names), or the problem and exit 1."""
    from modelgate.auth import load_keyring

    try:
        return load_keyring(settings, catalogue)
    except CatalogueError as exc:
        fail(exc.message)


def load_or_fail(path: Path | None) -> "Catalogue":
    from modelgate.catalogue import load_catalogue

    try:
        return load_catalogue(path)
    except CatalogueError as exc:
        fail(exc.message)


def _version(value: bool) -> None:
    if value:
        from modelgate import __version__

        typer.echo(f"modelgate {__version__}")
        raise typer.Exit()


@cli.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """An open model catalogue and chat gateway."""


# --- serve -----------------------------------------------------------------------------------------

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="Catalogue file (TOML). Default: $MODELGATE_CONFIG, else the built-in catalogue.",
        dir_okay=False,
    ),
]


@cli.command()
def serve(
    config: ConfigOption = None,
    host: Annotated[
        str, typer.Option(help="Interface to bind. Loopback by default, with or without API keys: expose explicitly.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind (0: any free port).", min=0, max=65535)] = 8000,
    workers: Annotated[
        str,
        typer.Option(
            help="Worker processes: a number, or auto = one per usable CPU core (1 while limits are counted "
            "in the process, i.e. without MODELGATE_REDIS_URL).",
        ),
    ] = "auto",
    watch: Annotated[
        bool, typer.Option("--watch", help="Reload the catalogue when its file changes (or MODELGATE_WATCH_CONFIG=1).")
    ] = False,
    log_level: Annotated[LogLevel, typer.Option(help="Log level.", case_sensitive=False)] = LogLevel.info,
    max_header_bytes: Annotated[
        int | None,
        typer.Option(help="Bytes of request line + headers, then 431 (default 32768).", min=1),
    ] = None,
    header_timeout: Annotated[
        float | None,
        typer.Option(help="Seconds to send the request headers, then 408 (default 10).", min=MIN_SECONDS),
    ] = None,
    keepalive_timeout: Annotated[
        float | None,
        typer.Option(help="Seconds an idle keep-alive connection stays open (default 5).", min=MIN_SECONDS),
    ] = None,
    max_connections: Annotated[
        int | None,
        typer.Option(
            help="Open connections per process, then 503 (default: half the open-files limit).",
            min=1,
        ),
    ] = None,
    graceful_timeout: Annotated[
        float | None,
        typer.Option(
            help="Seconds running replies get after SIGTERM, then they end with an error (default 30).",
            min=0,
        ),
    ] = None,
    database_url: Annotated[
        str | None,
        typer.Option(
            envvar="MODELGATE_DATABASE_URL",
            show_envvar=False,
            help="Usage ledger: sqlite:///PATH or postgresql://…, or 'off'. "
            "Default: $MODELGATE_DATABASE_URL, else SQLite beside the catalogue file.",
        ),
    ] = None,
) -> None:
    """Serve GET /models, the chat endpoints and the OpenAI-compatible API. SIGHUP reloads the catalogue."""
    from modelgate.workers import in_process_limits, parse, resolve, shared_directory

    try:
        requested_workers = parse(workers)
        env = Settings.from_env(database_url=None)  # the ledger's default depends on --config: decided below
        path = config or env.config_path
        # Absolute, not resolved: a reload reads the path again, following symlinks re-pointed since (a
        # Kubernetes ConfigMap swaps ``..data``, then deletes the directory the old target was in).
        configured = path.absolute() if path is not None else None
        resolved = path.resolve() if path is not None else None
    except ValueError as exc:
        fail(str(exc))
    try:
        ledger_url = ledger_database_url(database_url, resolved)
    except ValueError as exc:
        fail(f"--database-url (or MODELGATE_DATABASE_URL): {exc}")
    server_options = {
        "max_header_bytes": max_header_bytes,
        "header_timeout": header_timeout,
        "keepalive_timeout": keepalive_timeout,
        "max_connections": max_connections,
        "graceful_timeout": graceful_timeout,
    }
    settings = replace(
        env,
        config_path=configured,
        watch_config=watch or env.watch_config,
        log_level=log_level.value,
        **{name: value for name, value in server_options.items() if value is not None},  # type: ignore[arg-type]
        database_url=ledger_url,
    )
    import logging
    import logging.config

    from modelgate import server
    from modelgate.auth import access_notice
    from modelgate.logs import logging_config

    catalogue = load_or_fail(settings.config_path)  # refuse to start on an invalid file, before binding
    keys = keys_or_fail(settings, catalogue)  # the keys file too
    notice = access_notice(keys, host)
    worker_count, why = resolve(requested_workers, in_process_limits=in_process_limits(settings, catalogue, keys))
    with contextlib.ExitStack() as stack:
        if worker_count > 1:
            # One /metrics for all workers (prometheus_client's multiprocess mode). The library reads its
            # directory once, when first imported: by the logging configuration below (access_log.py).
            stack.enter_context(shared_directory())
        # JSON lines on stderr for modelgate and uvicorn alike; the app's request observer replaces
        # uvicorn's access log.
        common: dict[str, Any] = {
            "host": host,
            "port": port,
            "log_config": logging_config(log_level.value),
            "access_log": False,
        }
        logging.config.dictConfig(common["log_config"])  # so the access notice is a log line like the others
        logging.getLogger("modelgate.auth").log(*notice)
        if why is not None:
            logging.getLogger("modelgate.workers").warning(why)
        if worker_count == 1:
            from modelgate.app import create_app

            server.run(create_app(settings, catalogue, handle_sighup=True, tune_gc=True), settings, **common)
            return
        _serve_workers(settings, worker_count, {**server_options, "log_level": log_level.value}, common)


def _serve_workers(settings: Settings, workers: int, options: dict[str, Any], common: dict[str, Any]) -> None:
    """Each worker builds its own app from the environment; uvicorn's supervisor turns SIGHUP into a
    rolling restart, in which a worker that cannot load the file exits and the old one keeps serving."""
    from modelgate import server
    from modelgate.workers import forked_workers, preload_app

    if settings.config_path is not None:
        os.environ["MODELGATE_CONFIG"] = str(settings.config_path)
    if settings.watch_config:
        os.environ["MODELGATE_WATCH_CONFIG"] = "1"
    for name, value in options.items():
        if value is not None:  # the workers' apps read e.g. the graceful-shutdown limit from the environment
            os.environ[f"MODELGATE_{name.upper()}"] = str(value)
    os.environ["MODELGATE_DATABASE_URL"] = settings.database_url or LEDGER_OFF
    # Forked from this process once it has imported the app, rather than each importing it again (workers.py).
    with forked_workers() as forking:
        if forking:
            preload_app()
        server.run("modelgate.app:create_app_from_env", settings, workers=workers, **common)


# --- models ----------------------------------------------------------------------------------------


def rows_from_catalogue(catalogue: "Catalogue") -> list[tuple[str, ...]]:
    return [
        (
            m.publisher,
            m.name,
            m.type,
            m.provider,
            str(m.parameters.max_new_tokens),
            str(m.parameters.truncate),
            m.endpoint,
        )
        for m in catalogue.models
    ]


#: How far each provider's endpoint list has been matched (``providers_from_endpoints``).
Cursors = tuple[int, ...]


def providers_from_endpoints(models: Sequence[str], endpoints: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """For each of ``models``, every provider that can serve it according to ``endpoints``.

    The document relates models to endpoints only through the name: ``endpoints[p]`` lists provider
    ``p``'s models in ``models`` order as ``/api/ai/{p}/{name}/chat``. A model's provider is one that
    some complete, order-keeping assignment of all models gives it; with names repeated across providers
    more than one can be possible, and the table says so rather than guess.
    """
    names = [model.partition("/")[2] for model in models]
    providers = list(endpoints)

    lists = [endpoints[p] for p in providers]
    wanted = [[f"/api/ai/{p}/{name}/chat" for p in providers] for name in names]

    def choices(i: int, cursors: Cursors) -> list[int]:
        paths = wanted[i]
        return [k for k, at in enumerate(cursors) if at < len(lists[k]) and lists[k][at] == paths[k]]

    def advance(cursors: Cursors, k: int) -> Cursors:
        return (*cursors[:k], cursors[k] + 1, *cursors[k + 1 :])

    # Level by level, not by recursion (a catalogue of ~250 models passed Python's recursion limit): the
    # cursor states reachable after each model, then back from the end those that complete the assignment.
    levels: list[set[Cursors]] = [{tuple(0 for _ in providers)}]
    for i in range(len(names)):
        levels.append({advance(c, k) for c in levels[-1] for k in choices(i, c)})
        if len(levels[-1]) > MAX_ASSIGNMENT_STATES:
            # Names repeated across providers make the states grow as a power of the models: past this many,
            # each model's candidates are every provider listing its name next (ambiguous, never wrong).
            return [[p for p in providers if f"/api/ai/{p}/{name}/chat" in endpoints[p]] for name in names]
    done = tuple(len(endpoints[p]) for p in providers)
    completing: set[Cursors] = {done} & levels[-1]
    possible: list[list[str]] = [[] for _ in names]
    for i in reversed(range(len(names))):
        found: set[int] = set()
        before: set[Cursors] = set()
        for cursors in levels[i]:
            for k in choices(i, cursors):
                if advance(cursors, k) in completing:
                    found.add(k)
                    before.add(cursors)
        possible[i] = [providers[k] for k in sorted(found)]
        completing = before
    return possible


#: The most cursor states ``providers_from_endpoints`` follows per model before it settles for an ambiguous
#: answer (a hostile server's 120 models of one name took 14 s of CPU).
MAX_ASSIGNMENT_STATES = 2_000


def rows_from_response(document: "ModelsResponse") -> list[tuple[str, ...]]:
    """Rows in ``models`` order, the provider read back from ``endpoints`` (``a | b`` when ambiguous)."""
    endpoints = cast(Mapping[str, list[str]], document.endpoints)
    rows: list[tuple[str, ...]] = []
    for model_id, providers in zip(document.models, providers_from_endpoints(document.models, endpoints), strict=True):
        publisher, _, name = model_id.partition("/")
        entry = document.configurations.get(publisher, {}).get(name)
        params = entry.configuration.parameters if entry else None
        rows.append(
            (
                publisher,
                name,
                entry.type if entry else "?",
                " | ".join(providers) or "?",
                str(params.max_new_tokens) if params else "?",
                str(params.truncate) if params else "?",
                " | ".join(f"/api/ai/{p}/{name}/chat" for p in providers),
            )
        )
    return rows


@cli.command()
def models(
    url: Annotated[
        str | None, typer.Option(help="Read the catalogue from a running server, e.g. " + DEFAULT_URL)
    ] = None,
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw GET /models document.")] = False,
) -> None:
    """Show the catalogue as a table, from a catalogue file (default) or a running server (--url)."""
    if url is not None and config is not None:
        fail("use either --url or --config, not both", code=2)
    from rich.table import Table

    if url is not None:
        from modelgate.schema import ModelsResponse

        body = request_or_fail("GET", url, "/api/models", key=None, key_option="--api-key")
        if as_json:
            sys.stdout.write(body.decode("utf-8", "replace") + "\n")
            return
        try:
            rows = rows_from_response(ModelsResponse.model_validate_json(body))
        except ValueError:  # a pydantic ValidationError: some other server answered
            fail(f"{shown_url(url)}: the answer is not a GET /models document")
        source = shown_url(url)
    else:
        path = config or settings_or_fail().config_path
        catalogue = load_or_fail(path)
        if as_json:
            sys.stdout.write(catalogue.body.decode() + "\n")
            return
        rows = rows_from_catalogue(catalogue)
        source = catalogue.source
    table = Table(*TABLE_COLUMNS, title=f"{len(rows)} models from {source}")
    for row in rows:
        table.add_row(*map(cell, row))
    print_table(table)


# --- check-config ----------------------------------------------------------------------------------


@cli.command("check-config")
def check_config(
    path: Annotated[
        Path | None,
        typer.Argument(
            help="Catalogue file to validate. Default: $MODELGATE_CONFIG, else the built-in catalogue.",
            dir_okay=False,
            show_default=False,
        ),
    ] = None,
    online: Annotated[
        bool,
        typer.Option(
            "--online",
            help="Also ask each provider for its free model listing (base URLs and credentials from the "
            "environment, as serve reads them): exit 1 if a model is not listed or a provider is unreachable.",
        ),
    ] = False,
) -> None:
    """Validate a catalogue file without serving it (exit 0 when valid, 1 with the problem otherwise)."""
    settings = settings_or_fail()
    catalogue = load_or_fail(path or settings.config_path)
    keys_or_fail(Settings(), catalogue)  # the keys file it names, if any
    providers = Counter(m.provider for m in catalogue.models)
    publishers = {m.publisher for m in catalogue.models}
    per_provider = ", ".join(f"{name} {count}" for name, count in providers.items())
    typer.echo(
        f"{catalogue.source}: OK, {len(catalogue.models)} models from {len(publishers)} publishers ({per_provider})"
    )
    if online:
        _check_online(settings, catalogue)


def _check_online(settings: Settings, catalogue: "Catalogue") -> None:
    import asyncio

    from rich.table import Table

    from modelgate.online_check import check_online, failed

    checks = asyncio.run(check_online(settings, catalogue))
    table = Table(*ONLINE_COLUMNS, title=f"{len(checks)} models checked against their providers' listings")
    for check in checks:
        listed = {True: "yes", False: "NO", None: "?"}[check.listed]
        window = str(check.context_length) if check.context_length is not None else "—"
        p = check.model.parameters
        sum_cell = f"{p.truncate} + {p.max_new_tokens} = {check.requested}"
        note = check.problem or check.note or ""
        if check.over_window:
            sum_cell += " !"
            note = f"exceeds the provider's context by {check.over_window}" + (f"; {note}" if note else "")
        row = (check.model.id, check.model.provider, check.model.upstream_model, listed, window, sum_cell, note)
        table.add_row(*map(cell, row))
    print_table(table)
    problems = failed(checks)
    if problems:
        fail(f"{len(problems)} of {len(checks)} models failed the online check")
    typer.echo(f"online: OK, every model is listed by its provider ({len(checks)} models)")


# --- chat ------------------------------------------------------------------------------------------


@cli.command()
def chat(
    model: Annotated[str, typer.Argument(help="publisher/name, e.g. qwen/Qwen2.5-72B-Instruct")],
    prompt: Annotated[str, typer.Argument(help="The user message.")],
    url: Annotated[str, typer.Option(help="The modelgate server.")] = DEFAULT_URL,
    api_key: Annotated[
        str | None, typer.Option(envvar="MODELGATE_API_KEY", help="API key, if the server requires one.")
    ] = None,
) -> None:
    """Stream one reply from a running server to stdout."""
    import httpx

    from modelgate.client import ModelgateClient, ModelgateClientError, ModelgateConnectionError

    if api_key is not None:
        check_key(api_key, "--api-key (or MODELGATE_API_KEY)")
    try:
        with ModelgateClient(url, api_key=api_key) as client:
            for chunk in client.chat(model, prompt):
                sys.stdout.write(terminal_text(chunk))
                sys.stdout.flush()
    except ModelgateConnectionError as exc:  # "cannot reach <url>: …", before any reply
        fail(str(exc))
    except (ModelgateClientError, ValueError) as exc:
        sys.stdout.write("\n")
        fail(f"error: {exc}")
    except httpx.InvalidURL as exc:  # not an HTTPError: a malformed --url
        fail(f"--url {shown_url(url)!r}: {exc}")
    sys.stdout.write("\n")


# --- usage -----------------------------------------------------------------------------------------

USAGE_COLUMNS = ("key", "model", "provider", "requests", "prompt", "cached", "completion", "reasoning", "cost (USD)")


def _cost(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TypeError(f"a cost that is not a number: {value!r}")
    shown = f"{value:.8f}"  # a request costs millionths of a dollar
    # A cost under half a hundred-millionth of a dollar is not 0: it is shown in its own digits.
    return shown if value == 0 or shown.strip("-0.") else f"{value:.2e}"


def _whole(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TypeError(f"a count that is not a whole number: {value!r}")
    return str(value)


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"a name that is not text: {value!r}")
    return value


def usage_rows(report: Mapping[str, Any]) -> list[tuple[str, ...]]:
    """The groups of a ``GET /api/usage`` answer as table rows, then the totals row. A value of another type
    than the report's is a ``TypeError``: a server's list or object was shown in a count's cell."""

    def counts(entry: Mapping[str, Any]) -> tuple[str, ...]:
        return (
            _whole(entry["requests"]),
            _whole(entry["prompt_tokens"]),
            _whole(entry["cached_tokens"]) if "cached_tokens" in entry else "-",  # a server from before the column
            _whole(entry["completion_tokens"]),
            _whole(entry["reasoning_tokens"]),
            _cost(entry["cost"]),
        )

    rows = [
        ((g["key_id"] and _text(g["key_id"])) or "-", _text(g["model"]), _text(g["provider"]), *counts(g))
        for g in report["groups"]
    ]
    rows.append(("total", "", "", *counts(report["totals"])))
    return rows


@cli.command()
def usage(
    url: Annotated[str, typer.Option(help="The modelgate server.")] = DEFAULT_URL,
    api_key: Annotated[
        str | None,
        typer.Option(envvar="MODELGATE_API_KEY", help="A key (its own usage) or the admin key (everyone's)."),
    ] = None,
    key: Annotated[str | None, typer.Option(help="Only this key id (as in the logs).")] = None,
    model: Annotated[str | None, typer.Option(help="Only this model (publisher/name).")] = None,
    provider: Annotated[str | None, typer.Option(help="Only this provider.")] = None,
    since: Annotated[str | None, typer.Option("--from", help="From this time (ISO 8601, UTC by default).")] = None,
    until: Annotated[str | None, typer.Option("--to", help="Before this time (ISO 8601).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw GET /api/usage answer.")] = False,
) -> None:
    """Show the usage ledger of a running server (GET /api/usage): tokens and cost per key, model and provider."""
    given = {"key": key, "model": model, "provider": provider, "from": since, "to": until}
    params = {name: value for name, value in given.items() if value is not None}
    if not as_json:
        params["limit"] = "0"  # the table shows the groups; the rows are for --json
    from rich.table import Table

    body = request_or_fail(
        "GET", url, "/api/usage", key=api_key, key_option="--api-key (or MODELGATE_API_KEY)", params=params
    )
    if as_json:
        sys.stdout.write(body.decode("utf-8", "replace") + "\n")
        return
    try:
        rows = usage_rows(json.loads(body))
    except (ValueError, KeyError, TypeError):  # some other server answered
        fail(f"{shown_url(url)}: the answer is not a GET /api/usage report")
    table = Table(*USAGE_COLUMNS, title=f"usage from {shown_url(url)}")
    for number in range(3, len(USAGE_COLUMNS)):
        table.columns[number].justify = "right"
    for row in rows:
        table.add_row(*map(cell, row), end_section=row[0] == "total" or row is rows[-2])
    print_table(table)


def main() -> None:
    cli(prog_name="modelgate")
