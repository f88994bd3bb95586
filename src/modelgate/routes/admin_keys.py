"""``/admin/keys``: create, list, read, revoke and rotate run-time keys (``runtime_keys.py``).

Only the admin key (``MODELGATE_ADMIN_KEY``, compared by digest in constant time) may call it: no admin
key configured is 403 for everyone, a missing or unknown key 401, a chat key 403 — in the seed's
``{"statusCode", "statusMessage"}`` shape. A key is shown once, in the answer that creates or rotates
it; the database keeps its SHA-256 digest only.

The instance that makes a change applies it before answering (``RuntimeKeys.refresh``); the others
within ``MODELGATE_KEY_REFRESH_INTERVAL`` seconds plus one query.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Annotated, Any

import orjson
from fastapi import APIRouter, Body, Path, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.responses import Response

from modelgate.app import JSON, GatewayState, gateway
from modelgate.auth import (
    KEY_ID_LENGTH,
    MAX_KEY_LIMIT,
    MAX_KEY_MODELS,
    BearerUnauthorized,
    is_admin_token,
    presented_token,
)
from modelgate.budget_rules import Budget
from modelgate.errors import BadRequest, Forbidden, ModelgateError, NotFound
from modelgate.routes.openai import JSONBodyRoute
from modelgate.runtime_keys import SOURCE_API, KeyRecord, RuntimeKeys, digest_hex, new_secret

if TYPE_CHECKING:
    from modelgate.key_store import KeyStore

#: As on /v1: a body without Content-Type is read as JSON, another media type is a 415 saying what to send.
router = APIRouter(prefix="/admin/keys", tags=["keys"], route_class=JSONBodyRoute)
log = logging.getLogger("modelgate.keys")

#: Longest grace period a rotation may give the old key.
MAX_GRACE_SECONDS = 7 * 24 * 3600
#: The latest ``expires_at`` (Unix time): the last second ``datetime`` can write in UTC. A later moment (year 9999
#: with a negative offset is year 10000 in UTC) could be stored but never described: every answer naming it failed.
LAST_EXPIRY = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()


class KeysOff(ModelgateError):
    status = 404

    def __init__(self) -> None:
        super().__init__("Run-time keys live in the usage ledger's database, which is off (MODELGATE_DATABASE_URL=off)")


class KeysUnavailable(ModelgateError):
    status = 503
    transient = True

    def __init__(self) -> None:
        super().__init__("The keys database is unavailable; try again shortly")


class KeyConflict(ModelgateError):
    status = 409


_closed = ConfigDict(extra="forbid")
KeyId = Annotated[str, Path(min_length=1, max_length=32, description="The key's id, as listed and in the logs")]


class NewKey(BaseModel):
    """The body of ``POST /admin/keys``."""

    model_config = _closed

    name: Annotated[str, Field(min_length=1, max_length=64, description="Shown in logs and limit messages; unique")]
    models: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=256)]], Field(min_length=1, max_length=MAX_KEY_MODELS)
    ] = Field(default_factory=lambda: ["*"], description="fnmatch globs over publisher/name")
    requests_per_minute: Annotated[int | None, Field(gt=0, le=MAX_KEY_LIMIT)] = None
    concurrent_streams: Annotated[int | None, Field(gt=0, le=MAX_KEY_LIMIT)] = None
    budget: Annotated[
        Budget | None,
        Field(description="tokens_per_day, tokens_per_month, usd_per_day, usd_per_month (budgets.py)"),
    ] = None
    expires_at: Annotated[datetime | None, Field(description="ISO 8601; UTC when no offset; the key stops then")] = None

    @field_validator("name")
    @classmethod
    def _printable(cls, value: str) -> str:
        if not value.isascii() or not value.isprintable():
            raise ValueError("must be printable ASCII")
        return value


class Rotation(BaseModel):
    """The (optional) body of ``POST /admin/keys/{id}/rotate``."""

    model_config = _closed

    grace_seconds: Annotated[
        int, Field(ge=0, le=MAX_GRACE_SECONDS, description="Seconds the old key keeps working (default 0: none)")
    ] = 0


def require_admin(state: GatewayState, authorization: str | None) -> None:
    """Let the admin key through; 401 for a missing or unknown key, 403 for any other key."""
    admin = state.settings.admin_key
    if admin is None:
        raise Forbidden("Key management is off: set MODELGATE_ADMIN_KEY on the server")
    token = presented_token(authorization, "Missing admin key: send 'Authorization: Bearer <MODELGATE_ADMIN_KEY>'")
    if is_admin_token(token, admin):
        return
    if state.keys.identify(token) is not None:
        raise Forbidden("This key may not manage keys: use the admin key")
    raise BearerUnauthorized("Invalid admin key")


@asynccontextmanager
async def _admin(request: Request) -> AsyncIterator[tuple[GatewayState, RuntimeKeys, KeyStore]]:
    """The admin's access to the key store; a database failure becomes one log line and a 503."""
    state = gateway(request)
    require_admin(state, request.headers.get("authorization"))
    runtime = state.runtime_keys
    if runtime is None:
        raise KeysOff()
    store = await runtime.store()
    if store is None:
        raise KeysUnavailable()
    try:
        yield state, runtime, store
    except ModelgateError:
        raise
    except Exception as exc:  # the driver's and SQLAlchemy's errors (not imported here: loaded with the database)
        first_line = str(exc).partition("\n")[0]
        log.error("/admin/keys: database error (%s: %s)", type(exc).__name__, state.redactor.scrub(first_line))
        raise KeysUnavailable() from exc


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    # min: a record stored before LAST_EXPIRY bounded expires_at must not make every listing fail.
    return datetime.fromtimestamp(min(ts, LAST_EXPIRY), UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def describe(record: KeyRecord, now: float) -> dict[str, Any]:
    """A record as the API shows it: everything but digests."""
    return {
        "id": record.id,
        "name": record.name,
        "source": record.source,
        "status": record.status(now),
        "models": list(record.models),
        "requests_per_minute": record.requests_per_minute,
        "concurrent_streams": record.concurrent_streams,
        "budget": record.budget,
        "created_at": _iso(record.created_at),
        "expires_at": _iso(record.expires_at),
        "revoked_at": _iso(record.revoked_at),
        "previous_key_until": _iso(record.previous_until) if (record.previous_until or 0) > now else None,
    }


def _answer(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type=JSON, headers={"Cache-Control": "no-store"})


async def _record(store: KeyStore, key_id: str) -> KeyRecord:
    record = await store.get(key_id)
    if record is None:
        raise NotFound(f"No key with id '{key_id}'")
    return record


def _managed_here(record: KeyRecord) -> None:
    if record.source != SOURCE_API:
        where = "the keys file" if record.source == "file" else "MODELGATE_API_KEYS"
        raise KeyConflict(f"Key '{record.name}' comes from {where}: change it there")


@router.post("", summary="Create a key (the answer is the only time the key is shown)", status_code=201)
async def create_key(request: Request, new: NewKey) -> Response:
    async with _admin(request) as (state, runtime, store):
        for pattern in new.models:
            if not any(fnmatchcase(model.id, pattern) for model in state.catalogue.models):
                raise BadRequest(f"models: '{pattern}' matches no catalogue model (models are 'publisher/name')")
        now = time.time()
        expires = None
        if new.expires_at is not None:
            moment = new.expires_at if new.expires_at.tzinfo else new.expires_at.replace(tzinfo=UTC)
            expires = moment.timestamp()
            if expires <= now:
                raise BadRequest("expires_at: must be in the future")
            if expires > LAST_EXPIRY:
                raise BadRequest("expires_at: must be at most 9999-12-31T23:59:59Z")
        taken = {r.id for r in await store.records()}
        secret = new_secret()
        while digest_hex(secret)[:KEY_ID_LENGTH] in taken:  # 48-bit ids: a clash is improbable
            secret = new_secret()
        record = KeyRecord(
            id=digest_hex(secret)[:KEY_ID_LENGTH],
            name=new.name,
            source=SOURCE_API,
            digest=digest_hex(secret),
            models=tuple(new.models),
            requests_per_minute=new.requests_per_minute,
            concurrent_streams=new.concurrent_streams,
            budget=new.budget.model_dump(exclude_none=True) if new.budget else None,
            created_at=now,
            updated_at=now,
            expires_at=expires,
        )
        if not await store.create(record):  # checked there, in the write's transaction: concurrent creates race
            raise KeyConflict(f"A key named '{new.name}' exists: revoke it or choose another name")
        await runtime.refresh()  # this instance lets it in before the client gets it
    return _answer({"key": secret, **describe(record, now)}, status=201)


@router.get("", summary="Every key: run-time, keys file and environment (never a key or its digest)")
async def list_keys(request: Request) -> Response:
    async with _admin(request) as (_, _, store):
        records = await store.records()
    now = time.time()
    return _answer({"keys": [describe(record, now) for record in records]})


@router.get("/{key_id}", summary="One key")
async def get_key(request: Request, key_id: KeyId) -> Response:
    async with _admin(request) as (_, _, store):
        record = await _record(store, key_id)
    return _answer(describe(record, time.time()))


@router.delete("/{key_id}", summary="Revoke a key: it stops working on every instance within seconds")
async def revoke_key(request: Request, key_id: KeyId) -> Response:
    async with _admin(request) as (_, runtime, store):
        _managed_here(await _record(store, key_id))
        await store.revoke(key_id, time.time())
        await runtime.refresh()  # this instance refuses it before the client hears it is revoked
        record = await _record(store, key_id)
    return _answer(describe(record, time.time()))


@router.post("/{key_id}/rotate", summary="A new key for the same record and limits; the old one stops")
async def rotate_key(request: Request, key_id: KeyId, rotation: Annotated[Rotation | None, Body()] = None) -> Response:
    async with _admin(request) as (_, runtime, store):
        record = await _record(store, key_id)
        _managed_here(record)
        now = time.time()
        if record.status(now) != "active":
            raise KeyConflict(f"Key '{record.name}' is {record.status(now)}: create a new one")
        grace = (rotation or Rotation()).grace_seconds
        secret = new_secret()
        if not await store.rotate(key_id, record.digest, digest_hex(secret), now, now + grace if grace else None):
            raise KeyConflict(f"Key '{record.name}' was changed meanwhile (rotated or revoked): read it and retry")
        await runtime.refresh()
        record = await _record(store, key_id)
    return _answer({"key": secret, **describe(record, time.time())})
