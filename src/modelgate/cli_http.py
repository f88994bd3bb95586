"""The CLI's way out (an error line, a table), and its calls to a running server (``models --url``, ``usage``,
``keys``).

Every way such a call fails is one line on stderr and exit code 1, never a traceback: a key that cannot be an HTTP
header, a malformed ``--url``, a server that cannot be reached, or one that answers an error.
"""

# No ``from __future__ import annotations``: see cli.py (typer and start-up).

import os
import unicodedata
from typing import TYPE_CHECKING, Any, NoReturn

import typer

from modelgate.redact import shown_url

if TYPE_CHECKING:
    import httpx
    from rich.console import Console
    from rich.table import Table


def fail(message: str, code: int = 1) -> NoReturn:
    # A message may quote a server's text (its error, an upstream's through it): no terminal control from there.
    typer.echo(terminal_text(message), err=True)
    raise typer.Exit(code)


def cell(value: object) -> str:
    """A table cell as the text it is: control characters (an escape sequence a server put in a name) shown
    escaped, never sent to the terminal."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def terminal_text(text: str) -> str:
    """Running text (a reply, an error line) for the terminal: its line breaks and tabs as they are, every other
    control character (C0, DEL, C1: an escape sequence a server, an upstream or a model wrote) shown escaped."""
    if text.isprintable():
        return text
    return "".join(char if char in "\n\t" or unicodedata.category(char) != "Cc" else repr(char)[1:-1] for char in text)


def print_table(table: "Table", console: "Console | None" = None) -> None:
    """Print ``table`` to stdout with every cell whole and as written. Fitted to a narrower terminal, rich cuts
    cells with an ellipsis (``12345…``), and a count, a cost or a key id shown cut is a wrong one: the table
    keeps its natural width and the terminal wraps its lines. Cells are not rich markup: a key named ``[/x]``
    made every ``keys list`` a MarkupError, and ``*/[a-z]*`` was shown as ``*/*``."""
    if console is None:
        from rich.console import Console

        console = Console(soft_wrap=False, markup=False, emoji=False, highlight=False)
    unbounded = console.options.update(max_width=1 << 20)  # measured against the console, a width is capped by it
    console.width = max(console.width, console.measure(table, options=unbounded).maximum)
    console.print(table)


def check_key(key: str, key_option: str) -> None:
    """One line and exit 1 for a key no HTTP header can carry, never quoting it: httpx's own error for a key
    ending in a line break (read from a file) printed the whole key to stderr."""
    if not key.isascii():  # httpx would raise UnicodeEncodeError on the header
        fail(f"{key_option}: must be ASCII, as an HTTP header is")
    if not key.isprintable():
        fail(f"{key_option}: holds a control character (a line break at its end?), which no HTTP header can carry")


#: Seconds one CLI call may take in all, from connecting to the answer's last byte (``MODELGATE_CLI_TIMEOUT``).
#: httpx's timeouts are per read: a server sending a byte now and then held the CLI for ever.
CALL_SECONDS = 60.0


def request_or_fail(
    method: str, url: str, path: str, *, key: str | None, key_option: str, json: Any = None, params: Any = None
) -> bytes:
    """``method`` ``url`` + ``path`` with ``key`` as the bearer (named ``key_option`` in messages): the success
    answer's body (decoded, at most ``MAX_DOCUMENT_BYTES``), or one line and exit 1."""
    # Imported here: ``modelgate --help`` and the catalogue commands load no HTTP client (issue 13, start-up).
    import asyncio

    import httpx

    from modelgate.client import ModelgateAPIError, ModelgateClientError, document

    if key is not None:
        check_key(key, key_option)
    seconds = call_seconds()
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    shown = shown_url(url)
    try:
        response, body = asyncio.run(_call(method, url.rstrip("/") + path, seconds, json, params, headers))
    except TimeoutError:
        fail(f"{shown}: no whole answer within {seconds:g} s (MODELGATE_CLI_TIMEOUT)")
    except httpx.InvalidURL as exc:  # not an HTTPError
        fail(f"--url {shown!r}: {exc}")
    except httpx.HTTPError as exc:
        fail(f"cannot reach {shown}: {exc}")
    except ValueError as exc:  # a value httpx cannot send (e.g. a query parameter it cannot encode)
        fail(f"{shown}: {exc}")
    if not response.is_success:
        fail(f"{shown}: {ModelgateAPIError.from_response(response, body)}")
    try:
        return document(body)
    except ModelgateClientError as exc:
        fail(f"{shown}: {exc}")


async def _call(
    method: str, url: str, seconds: float, json: Any, params: Any, headers: dict[str, str]
) -> "tuple[httpx.Response, bytes]":
    import asyncio

    import httpx

    from modelgate.client import MAX_DOCUMENT_BYTES, async_read_up_to

    async with (
        asyncio.timeout(seconds),
        httpx.AsyncClient(timeout=seconds) as client,
        client.stream(method, url, json=json, params=params, headers=headers) as response,
    ):
        return response, await async_read_up_to(response.aiter_bytes(), MAX_DOCUMENT_BYTES)


def call_seconds() -> float:
    """``MODELGATE_CLI_TIMEOUT``, or ``CALL_SECONDS``; a value that is no such number is one line and exit 1."""
    from modelgate.settings import MIN_SECONDS, env_number

    try:
        seconds = env_number(os.environ, "MODELGATE_CLI_TIMEOUT", float, minimum=MIN_SECONDS)
    except ValueError as exc:
        fail(str(exc))
    return CALL_SECONDS if seconds is None else seconds
