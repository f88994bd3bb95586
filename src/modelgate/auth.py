"""API keys: who is calling, and which models they may use.

Keys come from ``MODELGATE_API_KEYS`` (comma-separated, every model, no limits) and from the keys file
named by the catalogue's ``[server] keys_file`` (TOML, path relative to the catalogue file)::

    [[keys]]
    name = "ci"                                  # shown in logs; defaults to "key-<key_id>"
    sha256 = "9f86d081884c7d65..."                # or key = "..." (plaintext); exactly one of the two
    models = ["qwen/*", "google/gemma-2-27b-it"]  # fnmatch globs over publisher/name; default ["*"]
    requests_per_minute = 60                     # optional
    concurrent_streams = 2                       # optional
    [keys.budget]                                # optional: tokens and/or USD per UTC day/month (budgets.py)
    tokens_per_day = 200000

Keys can also be created, revoked and rotated while the service runs (``/admin/keys``): those live in
the database and join the ring built here (``runtime_keys.py``); this module only says where a key ring
comes from when it is the file and the environment, and how a request is checked against a ring.

With any key configured, ``/api/ai/...`` and ``/v1/...`` need ``Authorization: Bearer <key>``; every
other path stays public. A presented key is hashed once and its SHA-256 digest looked up among the
configured keys' digests (``KeyRing.identify``: one lookup, with ten keys or a hundred thousand; timing can
only tell about the hash of what was sent, never a prefix of a key). A key is never logged or echoed:
``key_id`` (a short SHA-256 prefix) names it.

``may_call`` is the one policy: ``/v1/models`` lists exactly the models it allows, and ``admit``
(``limits.py``) refuses exactly the ones it does not — lists and authorization cannot disagree. A
fallback goes through it too (``limits.Admission.admit_fallback``): never a way to a refused model.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from modelgate.budget_rules import Budget
from modelgate.catalogue import describe_validation_error, read_toml
from modelgate.errors import CatalogueError, ModelgateError, Unauthorized

if TYPE_CHECKING:
    from modelgate.catalogue import Catalogue, CatalogueModel
    from modelgate.settings import Settings

log = logging.getLogger("modelgate.auth")

#: Characters a key may contain: printable ASCII without spaces, so it survives any HTTP header as-is.
_KEY_CHARS = re.compile(r"^[\x21-\x7e]+$")
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
#: Length of ``key_id``: enough to tell keys apart in logs, far too short to matter as a hash leak.
KEY_ID_LENGTH = 12
#: The largest ``requests_per_minute`` / ``concurrent_streams`` a key takes: far past any real use, and within
#: the key store's INTEGER columns (32-bit on PostgreSQL, where a larger value fails the write).
MAX_KEY_LIMIT = 10**9
#: The most model globs one key may list: each request of the key matches its model against every one.
MAX_KEY_MODELS = 256

#: ``scope["state"]`` entries the access middleware maintains (Starlette's ``request.state``).
PRINCIPAL_STATE = "modelgate_principal"
CLEANUPS_STATE = "modelgate_cleanups"


def key_digest(key: str | bytes) -> bytes:
    return hashlib.sha256(key.encode("ascii") if isinstance(key, str) else key).digest()


def bearer_token(authorization: str | bytes | None) -> bytes:
    """The token of an ``Authorization: Bearer <token>`` header (its raw bytes, or its value as ASGI decodes it:
    latin-1), as the bytes the client sent; empty for any other header or none."""
    header = authorization.encode("latin-1") if isinstance(authorization, str) else authorization or b""
    scheme, _, token = header.strip().partition(b" ")
    return token.strip() if scheme.lower() == b"bearer" else b""


def is_admin_token(token: bytes, admin_key: str | None) -> bool:
    """``token`` is ``MODELGATE_ADMIN_KEY``: compared by digest in constant time, as the API keys are."""
    if not token or admin_key is None:
        return False
    return hmac.compare_digest(key_digest(token), key_digest(admin_key.encode()))


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One configured key, held only as its SHA-256 digest."""

    digest: bytes
    name: str
    models: tuple[str, ...] = ("*",)
    requests_per_minute: int | None = None
    concurrent_streams: int | None = None
    budget: Budget | None = None
    #: A run-time key's record id (``runtime_keys.py``): it outlives a rotation, so the ledger, the limit
    #: counters and the logs keep naming the same key. None: the digest prefix names it.
    id: str | None = None

    @property
    def key_id(self) -> str:
        return self.id or self.digest.hex()[:KEY_ID_LENGTH]

    def __repr__(self) -> str:  # never the digest in full, in case a repr reaches a log
        return f"ApiKey(name={self.name!r}, key_id={self.key_id!r})"


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller of one request: a configured key, or nobody when the service has no keys."""

    key: ApiKey | None = None

    @property
    def key_id(self) -> str | None:
        return self.key.key_id if self.key else None

    @property
    def name(self) -> str | None:
        return self.key.name if self.key else None


#: The caller when no key is configured (an open service).
ANONYMOUS = Principal()


def may_call(principal: Principal, model_id: str) -> bool:
    """The one access policy: may ``principal`` use the catalogue model ``model_id`` (``publisher/name``)?"""
    if principal.key is None:
        return True
    return any(fnmatchcase(model_id, pattern) for pattern in principal.key.models)


def visible_models(principal: Principal, catalogue: Catalogue) -> list[CatalogueModel]:
    """The catalogue models ``principal`` may call, in ``GET /models`` order (what ``/v1/models`` lists)."""
    return [model for model in catalogue.models if may_call(principal, model.id)]


# --- the key ring -------------------------------------------------------------------------------


class BearerUnauthorized(Unauthorized):
    """401 with the ``WWW-Authenticate`` challenge RFC 9110 §11.6.1 requires on every 401."""

    @property
    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="modelgate"'}


#: What every route says of a request without an ``Authorization`` header, and of one that is not ``Bearer <key>``.
MISSING_KEY = "Missing API key: send 'Authorization: Bearer <key>'"
MALFORMED_AUTHORIZATION = "Malformed Authorization header: expected 'Bearer <key>'"


def presented_token(authorization: str | bytes | None, missing: str = MISSING_KEY) -> bytes:
    """The token of an ``Authorization: Bearer <token>`` header; else a 401 saying ``missing`` (no header) or that
    the header is malformed, as ``KeyRing.authenticate`` says it on the chat routes."""
    if not authorization:
        raise BearerUnauthorized(missing)
    token = bearer_token(authorization)
    if not token:
        raise BearerUnauthorized(MALFORMED_AUTHORIZATION)
    return token


@dataclass(frozen=True)
class KeyRing:
    keys: tuple[ApiKey, ...] = ()
    #: Require a key even when none is configured: run-time keys exist (or are not loaded yet), and
    #: revoking the last of them must not open the service (``runtime_keys.py``).
    required: bool = False
    #: The keys by digest (the last of a repeated digest wins, as ``keys`` order says).
    _by_digest: Mapping[bytes, ApiKey] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_digest", {key.digest: key for key in self.keys})

    @property
    def enabled(self) -> bool:
        return bool(self.keys) or self.required

    def identify(self, presented: bytes) -> ApiKey | None:
        """The configured key equal to ``presented``: one lookup of its SHA-256 digest, however many keys there are
        (a scan comparing every digest cost each request time in proportion to the run-time keys). A lookup by
        digest tells a caller nothing a timing could use: what is compared is the hash of what it sent, and making
        a hash share a prefix with a stored one takes the preimage work SHA-256 rules out."""
        return self._by_digest.get(key_digest(presented))

    def authenticate(self, authorization: bytes | None) -> Principal:
        """The principal for an ``Authorization`` header value; raises ``Unauthorized`` (401)."""
        if not self.enabled:
            return ANONYMOUS
        return self.principal(presented_token(authorization))

    def principal(self, token: bytes) -> Principal:
        """The principal of a presented key (``presented_token``); raises ``Unauthorized`` (401) for an unknown one."""
        key = self.identify(token)
        if key is None:
            raise BearerUnauthorized("Invalid API key")
        return Principal(key)


# --- the keys file --------------------------------------------------------------------------------

_closed = ConfigDict(extra="forbid")


class KeyEntry(BaseModel):
    model_config = _closed

    name: Annotated[str | None, Field(min_length=1, max_length=64, description="Shown in logs")] = None
    key: Annotated[str | None, Field(description="The key itself (plaintext)")] = None
    sha256: Annotated[str | None, Field(description="Hex SHA-256 of the key, so the file need not hold it")] = None
    models: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1, max_length=MAX_KEY_MODELS)] = (
        Field(default_factory=lambda: ["*"], description="fnmatch globs over publisher/name")
    )
    requests_per_minute: Annotated[int | None, Field(gt=0, le=MAX_KEY_LIMIT)] = None
    concurrent_streams: Annotated[int | None, Field(gt=0, le=MAX_KEY_LIMIT)] = None
    budget: Budget | None = None

    @field_validator("key")
    @classmethod
    def _key_chars(cls, value: str | None) -> str | None:
        if value is not None and not _KEY_CHARS.match(value):
            raise ValueError("must be non-empty printable ASCII without spaces")
        return value

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, value: str | None) -> str | None:
        if value is not None and not _HEX64.match(value):
            raise ValueError("must be 64 hex digits (e.g. the output of: printf %s KEY | sha256sum)")
        return value

    @model_validator(mode="after")
    def _one_secret(self) -> KeyEntry:
        if (self.key is None) == (self.sha256 is None):
            raise ValueError("set exactly one of 'key' and 'sha256'")
        return self

    def digest(self) -> bytes:
        return bytes.fromhex(self.sha256) if self.sha256 is not None else key_digest(self.key or "")


class KeysFile(BaseModel):
    model_config = _closed

    keys: list[KeyEntry] = Field(default_factory=list)


def keys_file_path(catalogue: Catalogue) -> Path | None:
    """The keys file named by the catalogue, resolved relative to the catalogue file."""
    if not catalogue.server.keys_file:
        return None
    return Path(catalogue.source).parent / catalogue.server.keys_file


def load_keyring(settings: Settings, catalogue: Catalogue) -> KeyRing:
    """Every configured key: the keys file's, then ``MODELGATE_API_KEYS``'. Raises ``CatalogueError``."""
    keys: list[ApiKey] = []
    path = keys_file_path(catalogue)
    if path is not None:
        keys.extend(load_keys_file(path, catalogue))
    known = {key.digest for key in keys}
    for index, value in enumerate(settings.api_keys, start=1):
        if not _KEY_CHARS.match(value):
            raise CatalogueError(f"MODELGATE_API_KEYS: key #{index}: must be printable ASCII without spaces")
        digest = key_digest(value)
        if digest not in known:  # the file's entry (with its models and limits) wins
            known.add(digest)
            keys.append(ApiKey(digest=digest, name=f"env-{index}"))
    _check_unique_ids(keys, str(path) if path else "MODELGATE_API_KEYS")
    return KeyRing(tuple(keys))


def load_keys_file(path: Path, catalogue: Catalogue) -> list[ApiKey]:
    source = str(path)
    raw = read_toml(path, missing=f"keys file not found (named by [server] keys_file in {catalogue.source})")
    try:
        parsed = KeysFile.model_validate(raw)
    except ValidationError as exc:
        raise CatalogueError(*_describe(exc, raw, source)) from None

    keys: list[ApiKey] = []
    digests: set[bytes] = set()
    names: set[str] = set()
    for index, entry in enumerate(parsed.keys):
        digest = entry.digest()
        name = entry.name or f"key-{digest.hex()[:KEY_ID_LENGTH]}"
        label = f"{source}: keys[{index}] ({name})"
        if digest in digests:
            raise CatalogueError(f"{label}: the same key is listed twice")
        if name in names:
            raise CatalogueError(f"{label}: name: '{name}' is used by another key")
        for pattern in entry.models:
            if not any(fnmatchcase(model.id, pattern) for model in catalogue.models):
                raise CatalogueError(
                    f"{label}: models: '{pattern}' matches no catalogue model (models are 'publisher/name')"
                )
        digests.add(digest)
        names.add(name)
        keys.append(
            ApiKey(
                digest=digest,
                name=name,
                models=tuple(entry.models),
                requests_per_minute=entry.requests_per_minute,
                concurrent_streams=entry.concurrent_streams,
                budget=entry.budget,
            )
        )
    return keys


def _check_unique_ids(keys: Iterable[ApiKey], source: str) -> None:
    # key_id names a key in logs and in limit counters, so two keys must never share one.
    seen: dict[str, str] = {}
    for key in keys:
        if key.key_id in seen:
            raise CatalogueError(f"{source}: keys '{seen[key.key_id]}' and '{key.name}' share key_id {key.key_id}")
        seen[key.key_id] = key.name


def _describe(exc: ValidationError, raw: dict[str, Any], source: str) -> list[str]:
    return describe_validation_error(
        exc, source, collection="keys", label=lambda i: f"keys[{i}]{_entry_name(raw, i)}", whole_entry="(entry): "
    )


def _entry_name(raw: dict[str, Any], index: int) -> str:
    try:
        name = raw["keys"][index]["name"]
    except (KeyError, IndexError, TypeError):
        return ""
    return f" ({name})" if isinstance(name, str) else ""


# --- the request boundary -------------------------------------------------------------------------


def is_protected_path(path: str) -> bool:
    """Paths that need a key when keys are configured: the chat endpoints and the OpenAI surface."""
    return path.startswith("/api/ai/") or path == "/v1" or path.startswith("/v1/")


Cleanup = Callable[[], Awaitable[None]]
ErrorResponder = Callable[[ModelgateError, str], Response]


class AccessMiddleware:
    """Authenticates protected paths before routing, and runs per-request cleanups at the very end.

    Authenticating here (not in each route) means a route that forgets to ask still cannot be
    reached without a key, and an unknown ``/v1/...`` path answers 401, not 404. The cleanups
    (concurrency slots taken by ``admit``) run when the ASGI call returns — after the response
    finished, failed, or the client went away — which a body iterator's ``finally`` cannot promise.
    """

    def __init__(self, app: ASGIApp, *, respond: ErrorResponder) -> None:
        self.app = app
        self.respond = respond

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state: MutableMapping[str, Any] = scope.setdefault("state", {})
        cleanups: list[Cleanup] = []
        state[CLEANUPS_STATE] = cleanups
        path: str = scope["path"]
        # CORS preflights carry no credentials by design; they never reach a handler that does work.
        if is_protected_path(path) and scope["method"] != "OPTIONS":
            keyring: KeyRing = scope["app"].state.gateway.keys
            try:
                state[PRINCIPAL_STATE] = keyring.authenticate(_header(scope, b"authorization"))
            except ModelgateError as exc:
                await self.respond(exc, path)(scope, receive, send)
                return
        try:
            await self.app(scope, receive, send)
        finally:
            for cleanup in reversed(cleanups):
                try:
                    await cleanup()
                except Exception:  # one failed cleanup must not skip the others
                    log.exception("request cleanup failed on %s", path)


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return bytes(value)
    return None


def request_principal(request: Request) -> Principal:
    """The caller of ``request``: authenticated by the middleware, or now for an unprotected path."""
    principal = request.scope.get("state", {}).get(PRINCIPAL_STATE)
    if isinstance(principal, Principal):
        return principal
    keyring: KeyRing = request.app.state.gateway.keys
    principal = keyring.authenticate(request.headers.get("authorization", "").encode("latin-1") or None)
    request.scope.setdefault("state", {})[PRINCIPAL_STATE] = principal
    return principal


def on_request_end(request: Request, cleanup: Cleanup) -> None:
    """Run ``cleanup`` when the whole request is over (response sent, failed, or client gone)."""
    cleanups = request.scope.get("state", {}).get(CLEANUPS_STATE)
    if cleanups is None:
        raise RuntimeError("AccessMiddleware is not installed (create_app installs it)")
    cleanups.append(cleanup)


def access_notice(keyring: KeyRing, host: str) -> tuple[int, str]:
    """The log level and line ``modelgate serve`` starts with: who may call the service, and where."""
    if keyring.enabled:
        return logging.INFO, f"API keys required on /api/ai/... and /v1/... ({len(keyring.keys)} configured)"
    if _is_loopback(host):
        return logging.WARNING, (
            f"no API keys configured: the service is open, so it is bound to loopback ({host}) only; "
            "set MODELGATE_API_KEYS or [server] keys_file before serving on another interface with --host"
        )
    return logging.WARNING, (
        f"no API keys configured and bound to {host}: anyone who can reach this port can use the chat "
        "endpoints and the provider credentials behind them"
    )


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
