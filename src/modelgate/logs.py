"""Logging setup: JSON lines on stderr, credentials redacted from every record.

``logging_config`` is what ``modelgate serve`` hands uvicorn: every logger (modelgate's, uvicorn's)
writes JSON lines (``JsonFormatter``) to stderr through one ``access_log.JsonLinesHandler``, so the
access lines (written to that handler directly, batched: see ``access_log.py``) and every other
record come out in order. uvicorn's own access log is off; ``modelgate.access`` replaces it.

Redaction: ``RedactingFilter`` scrubs every configured secret (provider credentials, API keys), words
starting like one, key-shaped words and any ``Bearer …`` token (``redact.py``) from message,
arguments, structured fields and tracebacks. The app installs it on every log handler present when
it starts (its own and the server's), so no record reaches an output unscrubbed, whoever logged it.
The access line is built without credentials and redacts its few free-text fields itself
(``access_log.py`` says which).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson

from modelgate.redact import REDACTED, Redactor

if TYPE_CHECKING:
    from modelgate.settings import Settings

__all__ = ["REDACTED", "JsonFormatter", "RedactingFilter", "logging_config", "secrets_of"]


# --- redaction ----------------------------------------------------------------------------------


class RedactingFilter(Redactor, logging.Filter):
    """Replaces secrets and bearer tokens in a record, in place, so every later handler sees it clean.

    What counts as a secret is ``redact.Redactor``'s rule, the same as for client-visible upstream text.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        logging.Filter.__init__(self)
        Redactor.__init__(self, secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not hide the rest of the record
            message = str(record.msg)
        record.msg = self.scrub(message)
        record.args = None
        structured = getattr(record, "structured", None)
        if isinstance(structured, dict):
            record.structured = {k: self.scrub(v) if isinstance(v, str) else v for k, v in structured.items()}
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = self.scrub(record.stack_info)
        return True

    def install(self) -> None:
        """Attach to every handler of every logger that exists now (root, modelgate, uvicorn, …)."""
        for handler in _all_handlers():
            handler.addFilter(self)

    def uninstall(self) -> None:
        for handler in _all_handlers():
            handler.removeFilter(self)


def _all_handlers() -> list[logging.Handler]:
    loggers: list[logging.Logger] = [logging.getLogger()]
    loggers += [lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)]
    seen: dict[int, logging.Handler] = {}
    for logger in loggers:
        for handler in logger.handlers:
            seen[id(handler)] = handler
    return list(seen.values())


def secrets_of(settings: Settings) -> list[str]:
    """Every value that must never appear in a log: provider credentials and API keys."""
    values = [value for creds in settings.credentials.values() for value in creds.values()]
    values += list(settings.api_keys)
    if settings.admin_key:
        values.append(settings.admin_key)
    password = urlsplit(settings.database_url).password if settings.database_url else None
    if password:
        values.append(password)
    # Keys of the keys file are held only as digests; presented ones travel as "Bearer …", scrubbed by pattern.
    return values


# --- JSON lines ---------------------------------------------------------------------------------


class JsonFormatter(logging.Formatter):
    """One JSON object per line. Access records print their fields; others ts, level, logger, msg, exc."""

    def format(self, record: logging.LogRecord) -> str:
        structured = getattr(record, "structured", None)
        if isinstance(structured, dict):
            return orjson.dumps(structured).decode()
        line: dict[str, Any] = {
            "ts": _iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exc"] = record.exc_text
        return orjson.dumps(line).decode()


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def logging_config(level: str = "info") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for ``uvicorn.run(log_config=...)``: JSON lines on stderr for
    modelgate and uvicorn alike, through one ``JsonLinesHandler``; uvicorn's access log off
    (``modelgate.access`` replaces it, ending at that handler so its lines can skip ``logging``)."""
    upper = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "modelgate.logs.JsonFormatter"}},
        "handlers": {
            "stderr": {
                "class": "modelgate.access_log.JsonLinesHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["stderr"], "level": upper},
        "loggers": {
            "modelgate.access": {"handlers": ["stderr"], "propagate": False},
            "uvicorn": {"level": upper},
            "uvicorn.error": {"level": upper},
            "uvicorn.access": {"level": "WARNING", "propagate": False},
        },
    }
