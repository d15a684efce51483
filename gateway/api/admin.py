"""The admin API under /admin: keys (create, update, top up, adjust, revoke), usage and its
CSV, ledger reconciliation, jobs, channels (enable/disable).

Authorised by `Authorization: Bearer <FLUXGATE_ADMIN_TOKEN>` (settings `admin_token`); with
no token configured the admin API answers 404 to everything. Money: `*_micro` integers, or
decimal strings/numbers in the currency unit for `amount` and `balance`.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from billing import keys, ledger, usage
from billing.errors import InvalidKey
from billing.pricing import to_micro
from billing.tables import ApiKeyRow
from gateway.api.deps import Services, ServicesDep
from gateway.api.usage import SinceQ, parse_when, report_body
from gateway.errors import AuthenticationError, InvalidRequest, NotFound
from gateway.jobs import channel_state
from gateway.jobs.tables import JobRow


def require_admin(request: Request, services: ServicesDep) -> None:
    """Raise NotFound when no admin token is configured, AuthenticationError when the
    presented bearer token is not it."""
    token = services.settings.admin_token
    if not token:
        raise NotFound("Not found.", code="not_found")
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(),
                                                             token.encode()):
        raise AuthenticationError("A valid admin token is required.", code="invalid_admin_token")


router = APIRouter(prefix="/admin", dependencies=[Depends(require_admin)],
                   include_in_schema=False)


def key_view(row: ApiKeyRow) -> dict[str, Any]:
    """A key as the admin API and CLI show it (never the secret)."""
    return {
        "id": row.id, "name": row.name, "owner": row.owner, "key": row.display,
        "mode": row.mode, "balance_micro": row.balance, "unlimited": row.unlimited,
        "disabled": row.disabled, "models": row.models, "ip_allow": row.ip_allow,
        "rpm": row.rpm, "max_concurrency": row.max_concurrency,
        "price_group": row.price_group, "provenance": row.provenance,
        "created_at": row.created_at.isoformat() if row.created_at else None,
        "expires_at": row.expires_at.isoformat() if row.expires_at else None,
        "revoked_at": row.revoked_at.isoformat() if row.revoked_at else None,
    }


def job_view(row: JobRow) -> dict[str, Any]:
    return {
        "id": row.id, "key_id": row.key_id, "status": row.status, "stage": row.stage,
        "model": row.model, "operation": row.operation, "aspect_ratio": row.aspect_ratio,
        "channel": row.channel, "price_micro": row.price, "charged_micro": row.charged,
        "upstream_cost_micro": row.upstream_cost, "error_code": row.error_code,
        "error_message": row.error_message, "created_at": row.created_at.isoformat(),
        "finished_at": row.finished_at.isoformat() if row.finished_at else None,
        "notes": list((row.spec or {}).get("notes") or []),  # what the gateway decided
    }


def money(amount: str | float | int | None, micro: int | None, param: str) -> int | None:
    if micro is not None:
        return micro
    if amount is None:
        return None
    try:
        return to_micro(amount)
    except ArithmeticError as exc:
        raise InvalidRequest(f"Invalid {param}: a decimal amount is expected.",
                             param=param) from exc


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    mode: str = "live"
    balance: str | float | None = None  # currency units; None with no balance_micro: unlimited
    balance_micro: int | None = Field(default=None, ge=0)
    owner: str | None = None
    models: list[str] | None = None
    ip_allow: list[str] | None = None
    rpm: int | None = Field(default=None, ge=1)
    max_concurrency: int | None = Field(default=None, ge=1)
    price_group: str | None = None
    expires_at: datetime | None = None
    provenance: Literal["off", "metadata", "signed"] | None = None  # None: group's or default


class KeyUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=200)
    owner: str | None = None
    models: list[str] | None = None
    ip_allow: list[str] | None = None
    rpm: int | None = Field(default=None, ge=1)
    max_concurrency: int | None = Field(default=None, ge=1)
    price_group: str | None = None
    expires_at: datetime | None = None
    disabled: StrictBool | None = None  # JSON booleans only
    unlimited: StrictBool | None = None
    provenance: Literal["off", "metadata", "signed"] | None = None  # null: group's or default


class Money(BaseModel):
    model_config = ConfigDict(extra="forbid")

    amount: str | float | None = None
    amount_micro: int | None = None
    note: str | None = Field(default=None, max_length=200)


async def _key(session: Any, key_id: str) -> ApiKeyRow:
    try:
        return await keys.get_key(session, key_id)
    except InvalidKey as exc:
        raise NotFound(f"No API key with id {key_id!r}.", param="key_id") from exc


@router.get("/keys")
async def list_keys(services: ServicesDep) -> dict[str, Any]:
    async with services.sessions() as session:
        rows = await keys.list_keys(session)
    return {"object": "list", "data": [key_view(r) for r in rows]}


@router.post("/keys", status_code=201)
async def create_key(body: KeyCreate, services: ServicesDep) -> dict[str, Any]:
    """Create a key; the answer holds its secret, shown this once."""
    balance = money(body.balance, body.balance_micro, "balance")
    async with services.sessions.begin() as session:
        created = await keys.create_key(
            session, name=body.name, mode=body.mode, balance=balance, owner=body.owner,
            models=body.models, rpm=body.rpm, max_concurrency=body.max_concurrency,
            price_group=body.price_group, expires_at=body.expires_at, ip_allow=body.ip_allow,
            provenance=body.provenance)
    return {**key_view(created.row), "secret": created.plaintext}


@router.get("/keys/{key_id}")
async def get_key(key_id: str, services: ServicesDep) -> dict[str, Any]:
    async with services.sessions() as session:
        return key_view(await _key(session, key_id))


@router.patch("/keys/{key_id}")
async def update_key(key_id: str, body: KeyUpdate, services: ServicesDep) -> dict[str, Any]:
    """Change the fields present in the body (null clears a limit or list)."""
    changes = body.model_dump(exclude_unset=True)
    for flag in ("name", "disabled", "unlimited"):
        if flag in changes and changes[flag] is None:
            raise InvalidRequest(f"{flag} cannot be null.", param=flag)
    async with services.sessions.begin() as session:
        await _key(session, key_id)
        row = await keys.update_key(session, key_id, **changes)
    services.key_cache.invalidate(key_id=key_id)
    return key_view(row)


async def _change_balance(services: Services, key_id: str,
                          change: Callable[[AsyncSession], Awaitable[object]]) -> dict[str, Any]:
    """Apply a ledger `change` to an existing key in one transaction; the key as it is after."""
    async with services.sessions.begin() as session:
        await _key(session, key_id)
        await change(session)
        row = await _key(session, key_id)
        await session.refresh(row)
    return key_view(row)


@router.post("/keys/{key_id}/topup")
async def top_up(key_id: str, body: Money, services: ServicesDep) -> dict[str, Any]:
    amount = money(body.amount, body.amount_micro, "amount")
    if amount is None or amount <= 0:
        raise InvalidRequest("A top-up needs a positive amount.", param="amount")
    return await _change_balance(services, key_id, lambda session: ledger.top_up(
        session, key_id, amount, note=body.note))


@router.post("/keys/{key_id}/adjust")
async def adjust(key_id: str, body: Money, services: ServicesDep) -> dict[str, Any]:
    """A signed correction with a reason (`note`); refuses to take a prepaid key below 0."""
    amount, note = money(body.amount, body.amount_micro, "amount"), body.note
    if not amount or not note:
        raise InvalidRequest("An adjustment needs a non-zero amount and a note.",
                             param="amount")
    return await _change_balance(services, key_id, lambda session: ledger.adjustment(
        session, key_id, amount, note=note))


@router.post("/keys/{key_id}/revoke")
async def revoke(key_id: str, services: ServicesDep) -> dict[str, Any]:
    """Revoke a key: refused at once by this replica, within 5 s by every other."""
    async with services.sessions.begin() as session:
        await _key(session, key_id)
        row = await keys.revoke(session, key_id, cache=services.key_cache)
    services.key_cache.invalidate(key_id=key_id)
    return key_view(row)


KeyQ = Annotated[str | None, Query()]


@router.get("/usage")
async def get_usage(services: ServicesDep, key_id: KeyQ = None, since: SinceQ = None,
                    until: SinceQ = None) -> dict[str, Any]:
    """Usage of one key or of every key (with a split by key)."""
    async with services.sessions() as session:
        if key_id is not None:
            await _key(session, key_id)
        report = await usage.usage_report(session, key_id=key_id,
                                          since=parse_when(since, "since"),
                                          until=parse_when(until, "until"))
    return report_body(report, services.settings.billing.currency)


@router.get("/usage.csv")
async def usage_csv(services: ServicesDep, key_id: KeyQ = None, since: SinceQ = None,
                    until: SinceQ = None) -> Response:
    """One CSV line per job (money in micro-units)."""
    async with services.sessions() as session:
        text = await usage.usage_csv(session, key_id=key_id, since=parse_when(since, "since"),
                                     until=parse_when(until, "until"))
    return Response(text, media_type="text/csv",
                    headers={"content-disposition": 'attachment; filename="usage.csv"'})


@router.get("/reconcile")
async def reconcile(services: ServicesDep) -> dict[str, Any]:
    """Keys whose balance differs from their ledger sum (the list must be empty)."""
    async with services.sessions() as session:
        drift = await ledger.reconcile(session)
    return {"object": "list", "data": [
        {"key_id": d.key_id, "balance_micro": d.balance, "ledger_sum_micro": d.ledger_sum}
        for d in drift]}


@router.get("/jobs")
async def list_jobs(services: ServicesDep, key_id: KeyQ = None,
                    status: Annotated[str | None, Query()] = None,
                    limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict[str, Any]:
    """The newest jobs, optionally of one key or in one status."""
    query = select(JobRow).order_by(JobRow.created_at.desc()).limit(limit)
    if key_id is not None:
        query = query.where(JobRow.key_id == key_id)
    if status is not None:
        query = query.where(JobRow.status == status)
    async with services.sessions() as session:
        rows = (await session.execute(query)).scalars().all()
    return {"object": "list", "data": [job_view(r) for r in rows]}


@router.get("/jobs/{job_id}")
async def get_job(job_id: str, services: ServicesDep) -> dict[str, Any]:
    async with services.sessions() as session:
        row = await session.get(JobRow, job_id)
        if row is None:
            raise NotFound(f"No job with id {job_id!r}.", param="job_id")
        charge = await ledger.job_charge(session, job_id)
    return {**job_view(row), "ledger_charge_micro": charge}


def channel_view(channel: Any) -> dict[str, Any]:
    return {"name": channel.name, "type": channel.kind, "label": channel.label,
            "models": list(channel.model_map), "priority": channel.priority,
            "weight": channel.weight, "active": channel.active,
            "disabled": channel.disabled_reason, "breaker": channel.breaker.state,
            "cost_per_image_micro": channel.cost_per_image}


@router.get("/channels")
async def list_channels(services: ServicesDep) -> dict[str, Any]:
    return {"object": "list", "data": [channel_view(c) for c in services.router.channels]}


@router.post("/channels/{name}/{action}")
async def toggle_channel(name: str, action: str, services: ServicesDep) -> dict[str, Any]:
    """`action` is `enable` or `disable`: stored, so it holds across restarts and reaches
    every replica within `jobs.channel_sync_interval` seconds."""
    channel = services.router.get(name)
    if channel is None:
        raise NotFound(f"No channel named {name!r}.", param="name")
    if action == "disable":
        await channel_state.disable(services.sessions, channel, "disabled by an admin")
    elif action == "enable":
        await channel_state.enable(services.sessions, channel)
    else:
        raise NotFound(f"Unknown action {action!r}: use enable or disable.", param="action")
    return channel_view(channel)
