"""``Redactor``: removes credentials from text before it leaves the process (a log line or a client reply).

It replaces, with ``[REDACTED]``:

* every configured secret value (provider credentials, API keys), wherever it appears;
* any word that *starts* like a configured secret (its first ``PREFIX_LENGTH`` characters): providers
  quote a refused key partially ("invalid key sk-or-v1-ab12…"), and a clipped message can cut a key;
* any ``Bearer …`` token (an upstream that reflects our ``Authorization`` header);
* the user information of a URL we call (``https://user:password@host``), and the ``Basic`` token the HTTP client
  sends for it (``url_secrets``: the caller adds them to the secrets);
* words shaped like the well-known provider keys (``sk-…``, ``hf_…``), whoever's they are, and like the keys
  ``/admin/keys`` makes (``mg-…``): those are created at run time, on any instance, so no list holds them all.

Used by the log filter (``logs.RedactingFilter``), ``/api/status`` and ``providers._http.Upstream``, the
one place where upstream text becomes client-visible text; and by the Python client, whose errors quote httpx's.
``shown_url`` writes a URL for a message with its password as ``***`` (the CLI and the client).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from urllib.parse import unquote, urlsplit

REDACTED = "[REDACTED]"

#: Shorter values are not treated as secrets: redacting "1" everywhere would destroy every message.
MIN_SECRET_LENGTH = 4
#: A word beginning with this many characters of a secret is taken for (part of) that secret. Only
#: secrets at least ``MIN_PREFIX_SECRET`` long get this rule, so the prefix itself stays a small part.
PREFIX_LENGTH = 6
MIN_PREFIX_SECRET = 12

#: The rest of a word: what a key, or its quoted and elided form ("…", "***"), can be made of.
_WORD_REST = r"[^\s\"'`,;()<>\[\]{}]*"
_BEARER = r"(?i:\bbearer\s+)[^\s\"',;]+"
#: OpenAI/OpenRouter/Anthropic-style ``sk-…``, Hugging Face ``hf_…`` and our own ``mg-…`` keys
#: (``runtime_keys.new_secret``), whole or partial. HF tokens and ours are mixed-case: one capital among the
#: first characters tells them from a name such as ``hf_transfer`` or ``mg-gateway-2``. Ours looks for it among
#: the 43 characters a key has after ``mg-``, no further: ``-`` is one of them, so an unbounded look-ahead read on
#: through every ``mg-mg-mg-…`` that followed, and 64 KB of them (an upstream's error body) took seconds of CPU.
_KEY_SHAPES = (
    r"\b(?:sk-[A-Za-z0-9]"
    + _WORD_REST
    + r"|hf_(?=[a-z0-9]*[A-Z])[A-Za-z0-9]{6,}"
    + _WORD_REST
    + r"|mg-(?=[a-z0-9_-]{0,42}[A-Z])[A-Za-z0-9_-]{8,}"
    + _WORD_REST
    + ")"
)


def url_secrets(url: str) -> list[str]:
    """The credentials of ``url``'s user information: its password (as written and decoded; without one the user,
    a token put there), and the ``Authorization: Basic`` token aiohttp makes of them and sends with every call."""
    try:
        parts = urlsplit(url)
        user, password = parts.username, parts.password
    except ValueError:  # not a URL a client could call
        return []
    if user is None and password is None:
        return []
    user, password = user or "", password or ""
    found = [password, unquote(password)] if password else [user, unquote(user)]
    found.append(base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode("latin-1", "replace")).decode())
    return found


def shown_url(url: str) -> str:
    """``url`` as a message may show it: a password in it (``http://user:secret@host``) replaced by ``***``."""
    return re.sub(r"(//[^/?#@:]*:)[^/?#@]*@", r"\1***@", url)


class Redactor:
    """Replaces secrets, their prefixes, bearer tokens and key-shaped words in text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._pattern = re.compile(_BEARER)
        self.update(secrets)

    def update(self, secrets: Iterable[str]) -> None:
        values = sorted({s for s in secrets if len(s) >= MIN_SECRET_LENGTH}, key=len, reverse=True)
        prefixes = sorted({s[:PREFIX_LENGTH] for s in values if len(s) >= MIN_PREFIX_SECRET})
        alternatives = [re.escape(s) for s in values]
        alternatives += [re.escape(p) + _WORD_REST for p in prefixes]
        alternatives += [_BEARER, _KEY_SHAPES]
        self._pattern = re.compile("|".join(alternatives))

    def scrub(self, text: str) -> str:
        return self._pattern.sub(_replacement, text)


def _replacement(match: re.Match[str]) -> str:
    text = match.group(0)
    if text[:6].lower() == "bearer":
        return text[: len(text) - len(text.lstrip()[6:].lstrip())] + REDACTED
    return REDACTED
