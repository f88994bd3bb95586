"""``GET /api/usage``: the usage ledger (``ledger.py``), filtered, with totals.

Who sees what:

- the admin key (``MODELGATE_ADMIN_KEY``) sees every row and may filter by ``key``;
- with API keys configured, a key sees only its own rows (asking for another ``key`` is 403);
- with neither configured the service is open (every chat call is anonymous), and so is its usage.

A key with a budget (``budgets.py``) also sees its budget's state (``budget``: used, remaining, reset).

The admin key is compared by SHA-256 digest in constant time, like the API keys (``auth.KeyRing``).
"""

from __future__ import annotations

import re
from dataclasses import asdict
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, BeforeValidator, Field
from starlette.responses import Response

from modelgate.app import JSON, GatewayState, gateway
from modelgate.auth import BearerUnauthorized, is_admin_token, presented_token
from modelgate.errors import Forbidden, ModelgateError

if TYPE_CHECKING:
    from modelgate.ledger import UsageRecord

router = APIRouter(tags=["usage"])

#: Most rows one answer lists (the totals and groups always cover every matching row).
MAX_RECORDS = 1000


class LedgerOff(ModelgateError):
    status = 404

    def __init__(self) -> None:
        super().__init__("The usage ledger is off (MODELGATE_DATABASE_URL=off)")


def usage_scope(state: GatewayState, authorization: str | None) -> str | None:
    """The one key id whose rows the caller may read, or None for every row. Raises 401 (missing or wrong key)."""
    admin = state.settings.admin_key
    keyring = state.keys
    if admin is None and not keyring.enabled:
        return None
    token = presented_token(authorization)
    if is_admin_token(token, admin):
        return None
    if keyring.enabled:
        key_id = keyring.principal(token).key_id  # raises 401 for an unknown key
        assert key_id is not None  # keys are configured, so the principal is one of them
        return key_id
    raise BearerUnauthorized("Invalid API key")


def _unix(moment: datetime | None) -> float | None:
    if moment is None:
        return None
    return (moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)).timestamp()


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _record_out(record: UsageRecord) -> dict[str, Any]:
    """A row as the answer lists it: ``ts`` in ISO 8601, and no ``record_id`` (the writer's key against writing a
    row twice, of no use to a reader)."""
    row = asdict(record)
    del row["record_id"]
    return {**row, "ts": _iso(record.ts)}


async def _budget_state(state: GatewayState, key_id: str) -> list[dict[str, Any]] | None:
    """The calling key's budget now: each limit's spending, what running requests hold, and its reset time."""
    budget = next((k.budget for k in state.keys.keys if k.key_id == key_id), None)
    if budget is None:
        return None
    return [
        {
            "budget": s.name,
            "limit": s.limit,
            "spent": s.spent,
            "reserved": s.reserved,
            "remaining": s.remaining,
            "resetsAt": s.resets_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        for s in await state.limiter.budgets.state(key_id, budget)
    ]


class UsageTotalsOut(BaseModel):
    requests: int
    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int
    cached_tokens: int = Field(description="Of prompt_tokens, those the providers served from their prompt cache")
    cost: float | None = Field(description="USD; null when no matching request has a price or a reported cost")


class UsageAnswer(BaseModel):
    """The body of ``GET /api/usage`` (for the OpenAPI document; built by ``usage``)."""

    filters: dict[str, Any]
    totals: UsageTotalsOut
    groups: list[dict[str, Any]] = Field(description="Totals per key, model and provider")
    records: list[dict[str, Any]] = Field(description="The newest matching requests, newest first")
    budget: list[dict[str, Any]] | None = Field(
        default=None, description="A key's own budget (when it has one): spent, reserved, remaining, resetsAt per limit"
    )


#: No control characters in a filter: none is in any id, and PostgreSQL refuses a NUL in text outright (a 500).
_PRINTABLE = r"^[^\x00-\x1f\x7f]*$"


def _iso_8601(value: object) -> object:
    """Only ISO 8601 text: pydantic reads a number as Unix seconds or milliseconds by its size, so ``from=2026``
    was 1970 and ``from=253402300800`` 1978, where the README promises ISO 8601."""
    if isinstance(value, str) and re.fullmatch(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*", value):
        raise ValueError("expected an ISO 8601 date or time, e.g. 2026-12-01 or 2026-12-01T12:00:00Z")
    return value


@router.get(
    "/api/usage",
    summary="Usage from the ledger: totals, per key and model, newest requests",
    responses={200: {"model": UsageAnswer}},
)
async def usage(
    request: Request,
    key: Annotated[
        str | None, Query(max_length=64, pattern=_PRINTABLE, description="A key id (as in the logs)")
    ] = None,
    model: Annotated[
        str | None, Query(max_length=256, pattern=_PRINTABLE, description="The model that answered")
    ] = None,
    provider: Annotated[str | None, Query(max_length=64, pattern=_PRINTABLE)] = None,
    since: Annotated[
        datetime | None, BeforeValidator(_iso_8601), Query(alias="from", description="ISO 8601; UTC when no offset")
    ] = None,
    until: Annotated[
        datetime | None, BeforeValidator(_iso_8601), Query(alias="to", description="ISO 8601, exclusive")
    ] = None,
    limit: Annotated[int, Query(ge=0, le=MAX_RECORDS, description="Newest rows to list")] = 100,
) -> Response:
    from modelgate.usage_store import UsageFilter  # the database layer, loaded with the ledger

    state = gateway(request)
    scope = usage_scope(state, request.headers.get("authorization"))
    if state.ledger is None:
        raise LedgerOff()
    if scope is not None:  # a key: its own rows
        if key is not None and key != scope:
            raise Forbidden("A key can read only its own usage")
        key = scope
    query = UsageFilter(key_id=key, model=model, provider=provider, since=_unix(since), until=_unix(until), limit=limit)
    report = await state.ledger.report(query)
    body: dict[str, Any] = {
        "filters": {
            "key": key,
            "model": model,
            "provider": provider,
            "from": since.isoformat() if since else None,
            "to": until.isoformat() if until else None,
        },
        "totals": asdict(report.totals),
        "groups": [
            {"key_id": g.key_id, "model": g.model, "provider": g.provider, **asdict(g.totals)} for g in report.groups
        ],
        "records": [_record_out(r) for r in report.records],
    }
    if scope is not None:
        body["budget"] = await _budget_state(state, scope)
    return Response(orjson.dumps(body), media_type=JSON, headers={"Cache-Control": "no-store"})
