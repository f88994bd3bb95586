"""The CLI's way out (an error line, a table), and its calls to a running server (``models --url``, ``usage``,
``keys``).

Every way such a call fails is one line on stderr and exit code 1, never a traceback: a key that cannot be an HTTP
header, a malformed ``--url``, a server that cannot be reached, or one that answers an error.
"""

# No ``from __future__ import annotations``: see cli.py (typer and start-up).

from typing import TYPE_CHECKING, Any, NoReturn

import typer

if TYPE_CHECKING:
    import httpx
    from rich.console import Console
    from rich.table import Table


def fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(message, err=True)
    raise typer.Exit(code)


def cell(value: object) -> str:
    """A table cell as the text it is: control characters (an escape sequence a server put in a name) shown
    escaped, never sent to the terminal."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


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


def request_or_fail(
    method: str, url: str, path: str, *, key: str | None, key_option: str, json: Any = None, params: Any = None
) -> "httpx.Response":
    """``method`` ``url`` + ``path`` with ``key`` as the bearer (named ``key_option`` in messages): the success
    answer, or one line and exit 1."""
    # Imported here: ``modelgate --help`` and the catalogue commands load no HTTP client (issue 13, start-up).
    import httpx

    from modelgate.client import ModelgateAPIError

    if key is not None:
        check_key(key, key_option)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        response = httpx.request(method, url.rstrip("/") + path, json=json, params=params, headers=headers, timeout=30)
    except httpx.InvalidURL as exc:  # not an HTTPError
        fail(f"--url {url!r}: {exc}")
    except httpx.HTTPError as exc:
        fail(f"cannot reach {url}: {exc}")
    except ValueError as exc:  # a value httpx cannot send (e.g. a query parameter it cannot encode)
        fail(f"{url}: {exc}")
    if not response.is_success:
        fail(f"{url}: {ModelgateAPIError.from_response(response)}")
    return response
