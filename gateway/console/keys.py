"""Console pages for API keys: the operator's list, create (the secret shown once), edit,
top up, adjust and revoke (through the admin API's own handlers, gateway/api/admin.py); a
customer's view of its own key."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from pydantic import ValidationError
from sqlalchemy import select
from starlette.datastructures import FormData

from billing import keys
from billing.errors import BillingError
from billing.tables import LedgerRow
from gateway.api import admin
from gateway.api.deps import Services, ServicesDep
from gateway.console.access import ConsoleDenied, OperatorDep, OperatorPostDep, SessionDep
from gateway.console.render import page
from gateway.console.session import ConsoleSession
from gateway.errors import GatewayError

router = APIRouter()

Failure = (GatewayError, BillingError, ValidationError)


def failure_text(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        return f"{where}: {first.get('msg')}" if where else str(first.get("msg"))
    return str(getattr(exc, "message", exc))


def text(form: FormData, name: str) -> str | None:
    """A form field, stripped; None when absent or empty."""
    value = form.get(name)
    if not isinstance(value, str) or not value.strip():
        return None
    return value.strip()


def listed(form: FormData, name: str) -> list[str] | None:
    """A comma- or line-separated list; None (no restriction) when empty."""
    value = text(form, name)
    if value is None:
        return None
    return [item.strip() for item in value.replace("\n", ",").split(",") if item.strip()]


def limits(form: FormData) -> dict[str, Any]:
    """The fields the create and edit forms share (empty: no limit)."""
    return {"owner": text(form, "owner"), "models": listed(form, "models"),
            "ip_allow": listed(form, "ip_allow"), "rpm": text(form, "rpm"),
            "max_concurrency": text(form, "max_concurrency"),
            "price_group": text(form, "price_group"), "expires_at": text(form, "expires_at")}


async def _key_page(request: Request, services: Services, session: ConsoleSession,
                    key_id: str, *, error: str | None = None, status: int = 200) -> Response:
    async with services.sessions() as db:
        try:
            row = await keys.get_key(db, key_id)
        except BillingError as exc:
            raise ConsoleDenied(f"No API key with id {key_id!r}.", 404) from exc
        ledger = (await db.execute(select(LedgerRow).where(LedgerRow.key_id == key_id)
                                   .order_by(LedgerRow.id.desc()).limit(50))).scalars().all()
    return page(request, "key.html", session, key=admin.key_view(row), ledger=ledger,
                price_groups=sorted(services.settings.billing.price_groups), error=error,
                done=request.query_params.get("done"), status=status)


@router.get("/console/keys")
async def key_list(request: Request, services: ServicesDep, session: OperatorDep) -> Response:
    return await _list_page(request, services, session)


async def _list_page(request: Request, services: Services, session: ConsoleSession, *,
                     created: dict[str, Any] | None = None, error: str | None = None,
                     status: int = 200) -> Response:
    async with services.sessions() as db:
        rows = await keys.list_keys(db)
    return page(request, "keys.html", session, keys=[admin.key_view(r) for r in rows],
                price_groups=sorted(services.settings.billing.price_groups),
                created=created, error=error, status=status)


@router.post("/console/keys")
async def key_create(request: Request, services: ServicesDep,
                     session: OperatorPostDep) -> Response:
    """Create a key; the page that answers shows its secret this once."""
    form = await request.form()
    try:
        body = admin.KeyCreate(name=text(form, "name") or "", mode=text(form, "mode") or "live",
                               balance=text(form, "balance"), **limits(form))
        created = await admin.create_key(body, services)
    except Failure as exc:
        return await _list_page(request, services, session, error=failure_text(exc),
                                status=400)
    return await _list_page(request, services, session, created=created, status=201)


@router.get("/console/keys/{key_id}")
async def key_detail(key_id: str, request: Request, services: ServicesDep,
                     session: OperatorDep) -> Response:
    return await _key_page(request, services, session, key_id)


def _back(key_id: str, done: str) -> Response:
    return RedirectResponse(f"/console/keys/{quote(key_id)}?done={quote(done)}",
                            status_code=303)


@router.post("/console/keys/{key_id}")
async def key_update(key_id: str, request: Request, services: ServicesDep,
                     session: OperatorPostDep) -> Response:
    form = await request.form()
    try:
        body = admin.KeyUpdate(name=text(form, "name"), disabled=form.get("disabled") == "on",
                               unlimited=form.get("unlimited") == "on", **limits(form))
        await admin.update_key(key_id, body, services)
    except Failure as exc:
        return await _key_page(request, services, session, key_id, error=failure_text(exc),
                               status=400)
    return _back(key_id, "Saved.")


@router.post("/console/keys/{key_id}/topup")
async def key_top_up(key_id: str, request: Request, services: ServicesDep,
                     session: OperatorPostDep) -> Response:
    form = await request.form()
    try:
        await admin.top_up(key_id, admin.Money(amount=text(form, "amount"),
                                               note=text(form, "note")), services)
    except Failure as exc:
        return await _key_page(request, services, session, key_id, error=failure_text(exc),
                               status=400)
    return _back(key_id, "Topped up.")


@router.post("/console/keys/{key_id}/adjust")
async def key_adjust(key_id: str, request: Request, services: ServicesDep,
                     session: OperatorPostDep) -> Response:
    form = await request.form()
    try:
        await admin.adjust(key_id, admin.Money(amount=text(form, "amount"),
                                               note=text(form, "note")), services)
    except Failure as exc:
        return await _key_page(request, services, session, key_id, error=failure_text(exc),
                               status=400)
    return _back(key_id, "Adjusted.")


@router.post("/console/keys/{key_id}/revoke")
async def key_revoke(key_id: str, request: Request, services: ServicesDep,
                     session: OperatorPostDep) -> Response:
    try:
        await admin.revoke(key_id, services)
    except Failure as exc:
        return await _key_page(request, services, session, key_id, error=failure_text(exc),
                               status=400)
    return _back(key_id, "Revoked.")


@router.get("/console/key")
async def own_key(request: Request, services: ServicesDep, session: SessionDep) -> Response:
    """A customer's own key: balance, limits, status, its recent ledger."""
    if session.operator or session.key_id is None:
        return RedirectResponse("/console/keys", status_code=303)
    async with services.sessions() as db:
        row = await keys.get_key(db, session.key_id)
        ledger = (await db.execute(select(LedgerRow).where(LedgerRow.key_id == row.id)
                                   .order_by(LedgerRow.id.desc()).limit(50))).scalars().all()
    return page(request, "key.html", session, key=admin.key_view(row), ledger=ledger,
                price_groups=[], error=None, done=None)
