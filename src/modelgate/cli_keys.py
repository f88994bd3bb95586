"""``modelgate keys create | list | revoke | rotate``: the admin API (``/admin/keys``) of a running server.

Like ``modelgate usage``, it talks to a server (``--url``) rather than to the database, so it works the
same on SQLite and PostgreSQL and obeys the same admin key (``--admin-key`` or ``MODELGATE_ADMIN_KEY``).
``create`` and ``rotate`` print the new key alone on stdout (``KEY=$(modelgate keys create ci)``) and
what to do with it on stderr.
"""

# No ``from __future__ import annotations`` here: typer reads every command's annotations each time the CLI
# runs (``--help`` included), and string annotations would be evaluated again on every run (issue 13 item 5).

import json
import math
import sys
from collections.abc import Mapping
from typing import Annotated, Any

import typer

from modelgate.cli_http import cell, fail, print_table, request_or_fail
from modelgate.redact import shown_url

DEFAULT_URL = "http://127.0.0.1:8000"
KEY_COLUMNS = ("id", "name", "source", "status", "models", "rpm", "streams", "budget", "created", "expires")

keys_cli = typer.Typer(
    name="keys",
    help="Manage API keys on a running server (/admin/keys; needs MODELGATE_ADMIN_KEY).",
    no_args_is_help=True,
)

UrlOption = Annotated[str, typer.Option(help="The modelgate server.")]
AdminKeyOption = Annotated[
    str | None, typer.Option(envvar="MODELGATE_ADMIN_KEY", help="The server's admin key (MODELGATE_ADMIN_KEY).")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the raw answer.")]


def _call(url: str, admin_key: str | None, method: str, path: str, body: Any = None) -> dict[str, Any]:
    content = request_or_fail(
        method, url, "/admin/keys" + path, key=admin_key, key_option="--admin-key (or MODELGATE_ADMIN_KEY)", json=body
    )
    try:
        answer = json.loads(content)
    except ValueError:  # some other server answered
        fail(f"{shown_url(url)}: the answer is not JSON")
    if not isinstance(answer, dict):
        fail(f"{shown_url(url)}: the answer is not a key management answer")
    return answer


def _new_key(answer: Mapping[str, Any], what: str, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(_dumps(answer) + "\n")
        return
    key = answer.get("key")
    if not isinstance(key, str) or not key.isascii() or not key.isprintable():  # it goes to KEY=$(modelgate ...)
        fail("the server's answer holds no printable key")
    sys.stdout.write(key + "\n")
    name, key_id = cell(answer.get("name")), cell(answer.get("id"))
    typer.echo(f"{what} key '{name}' (id {key_id}): store it now, it is not shown again", err=True)


def _dumps(value: Any) -> str:
    return json.dumps(value, indent=2)


def _budget(values: list[str]) -> dict[str, float] | None:
    budget: dict[str, float] = {}
    for item in values:
        name, _, amount = item.partition("=")
        try:
            number = float(amount)
        except ValueError:
            number = math.nan
        # Not NaN or infinity either: JSON has no such numbers, and the call failed naming the server's URL.
        if not math.isfinite(number):
            fail(f"--budget {item!r}: expected NAME=NUMBER (a finite number), e.g. tokens_per_day=200000")
        budget[name.strip()] = number
    return budget or None


@keys_cli.command()
def create(
    name: Annotated[str, typer.Argument(help="Shown in logs and limit messages; unique among active keys.")],
    model: Annotated[
        list[str] | None, typer.Option("--model", "-m", help="A glob over publisher/name (repeat; default: all).")
    ] = None,
    rpm: Annotated[int | None, typer.Option("--rpm", help="Requests per minute.", min=1)] = None,
    streams: Annotated[int | None, typer.Option("--streams", help="Concurrent streams.", min=1)] = None,
    budget: Annotated[
        list[str] | None,
        typer.Option(help="NAME=NUMBER: tokens_per_day, tokens_per_month, usd_per_day, usd_per_month (repeat)."),
    ] = None,
    expires: Annotated[str | None, typer.Option(help="When the key stops (ISO 8601, UTC by default).")] = None,
    url: UrlOption = DEFAULT_URL,
    admin_key: AdminKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create a key; print it (the only time it is shown)."""
    body: dict[str, Any] = {"name": name}
    if model:
        body["models"] = model
    if rpm is not None:
        body["requests_per_minute"] = rpm
    if streams is not None:
        body["concurrent_streams"] = streams
    if budget:
        body["budget"] = _budget(budget)
    if expires is not None:
        body["expires_at"] = expires
    _new_key(_call(url, admin_key, "POST", "", body), "created", as_json)


def key_rows(answer: Mapping[str, Any]) -> list[tuple[str, ...]]:
    """The keys of a ``GET /admin/keys`` answer as table rows."""

    def text(value: Any) -> str:
        return "-" if value is None else str(value)

    rows: list[tuple[str, ...]] = []
    for key in answer["keys"]:
        budget = key["budget"]
        if not isinstance(key["models"], list) or not isinstance(budget, dict | None):
            raise TypeError("not a key record")
        rows.append(
            (
                key["id"],
                key["name"],
                key["source"],
                key["status"],
                ", ".join(key["models"]),
                text(key["requests_per_minute"]),
                text(key["concurrent_streams"]),
                ", ".join(f"{k}={v:g}" for k, v in budget.items()) if budget else "-",
                text(key["created_at"]),
                text(key["expires_at"]),
            )
        )
    return rows


@keys_cli.command("list")
def list_keys(url: UrlOption = DEFAULT_URL, admin_key: AdminKeyOption = None, as_json: JsonOption = False) -> None:
    """List every key (run-time, keys file, environment): ids, limits, status; never a key."""
    answer = _call(url, admin_key, "GET", "")
    if as_json:
        sys.stdout.write(_dumps(answer) + "\n")
        return
    from rich.table import Table

    try:
        rows = key_rows(answer)
    except (KeyError, TypeError, ValueError, AttributeError):  # some other server, or a broken one
        fail(f"{shown_url(url)}: the answer is not a GET /admin/keys listing")
    table = Table(*KEY_COLUMNS, title=f"{len(rows)} keys on {shown_url(url)}")
    for row in rows:
        table.add_row(*map(cell, row))
    print_table(table)


@keys_cli.command()
def revoke(
    key_id: Annotated[str, typer.Argument(metavar="ID", help="The key's id (as listed and in the logs).")],
    url: UrlOption = DEFAULT_URL,
    admin_key: AdminKeyOption = None,
) -> None:
    """Revoke a key: every instance refuses it within seconds."""
    answer = _call(url, admin_key, "DELETE", _key_path(key_id))
    if answer.get("id") != key_id or answer.get("status") != "revoked":
        # Some other server's 200 is no revocation: an operator revoking a leaked key must not be told it is done.
        fail(f"{shown_url(url)}: the answer does not confirm that key {cell(key_id)} is revoked")
    typer.echo(f"revoked key '{cell(answer.get('name'))}' (id {cell(answer.get('id'))})")


@keys_cli.command()
def rotate(
    key_id: Annotated[str, typer.Argument(metavar="ID", help="The key's id (as listed and in the logs).")],
    grace: Annotated[int, typer.Option(help="Seconds the old key keeps working.", min=0)] = 0,
    url: UrlOption = DEFAULT_URL,
    admin_key: AdminKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """A new key for the same record, limits and usage; the old one stops (after --grace seconds)."""
    _new_key(_call(url, admin_key, "POST", f"{_key_path(key_id)}/rotate", {"grace_seconds": grace}), "rotated", as_json)


def _key_path(key_id: str) -> str:
    """``/<id>``, the id quoted: ``../../v1/x`` or ``a#b`` sent as they are reached another path, or another key,
    with the admin key."""
    from urllib.parse import quote

    return "/" + quote(key_id, safe="")
