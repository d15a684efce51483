"""The console's usage page: spend and jobs per day, balance over time, success rate,
latency percentiles and splits by model, channel and aspect ratio (billing/usage.py), with
the operator's margin and CSV export. A customer sees its own key only."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime, timedelta

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from billing import usage
from billing.tables import ApiKeyRow, LedgerRow
from gateway.api.deps import ServicesDep
from gateway.console import charts
from gateway.console.access import ConsoleDenied, SessionDep
from gateway.console.render import page
from gateway.console.session import ConsoleSession

router = APIRouter()

PERIODS = (7, 30, 90)


def _scope(request: Request, session: ConsoleSession) -> tuple[str | None, int, datetime]:
    """(key id or None for every key, days, since) of a usage request."""
    try:
        days = int(request.query_params.get("days", "30"))
    except ValueError:
        days = 30
    days = days if days in PERIODS else 30
    key_id = request.query_params.get("key_id") or None
    if not session.operator:
        if key_id not in (None, session.key_id):
            raise ConsoleDenied("A key's console shows its own usage only.")
        key_id = session.key_id
    start = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return key_id, days, start - timedelta(days=days - 1)


async def balance_by_day(db: AsyncSession, key_id: str, since: datetime) -> list[
        tuple[str, int]]:
    """The key's balance at the end of each day from `since` to today (from the ledger)."""
    rows = (await db.execute(select(LedgerRow.created_at, LedgerRow.amount)
                             .where(LedgerRow.key_id == key_id)
                             .order_by(LedgerRow.id))).all()
    balance, by_day = 0, {}
    first = since.date()
    for created, amount in rows:
        balance += int(amount)
        day = created.date() if created else first
        by_day[max(day, first)] = balance
    out, running = [], 0
    before = [b for d, b in by_day.items() if d < first]
    running = before[-1] if before else 0
    day = first
    while day <= date.today():
        running = by_day.get(day, running)
        out.append((day.isoformat(), running))
        day += timedelta(days=1)
    return out


@router.get("/console/usage")
async def usage_page(request: Request, services: ServicesDep, session: SessionDep) -> Response:
    key_id, days, since = _scope(request, session)
    currency = services.settings.billing.currency
    async with services.sessions() as db:
        report = await usage.usage_report(db, key_id=key_id, since=since)
        balance = await balance_by_day(db, key_id, since) if key_id else []
        key_names = ({r.id: r.name for r in (await db.execute(select(ApiKeyRow))).scalars()}
                     if session.operator else {})
    per_day = report.by.get("day", {})
    labels = sorted(d for d in per_day if d)
    def fmt(v: float) -> str:
        return f"{v / 1_000_000:,.2f}"

    spend_chart = charts.bars(f"Spend per day ({currency})", labels,
                              [per_day[d].spend for d in labels], fmt)
    jobs_chart = charts.bars("Jobs per day", labels, [per_day[d].jobs for d in labels])
    balance_chart = (charts.line(f"Balance at the end of each day ({currency})",
                                 [d for d, _ in balance], [b for _, b in balance], fmt)
                     if balance else None)
    splits = [(title, report.by.get(dim, {})) for dim, title in (
        ("model", "By model"), ("channel", "By channel"), ("aspect_ratio", "By aspect ratio"),
        ("operation", "By operation"))]
    if session.operator and key_id is None:
        splits.append(("By key", report.by.get("key_id", {})))
    return page(request, "usage.html", session, report=report, totals=report.totals,
                days=days, periods=PERIODS, key_id=key_id, key_names=key_names,
                spend_chart=spend_chart, jobs_chart=jobs_chart, balance_chart=balance_chart,
                per_day=[(d, per_day[d]) for d in labels], splits=splits)


def _without(text: str, columns: tuple[str, ...]) -> str:
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        return text
    keep = [i for i, name in enumerate(rows[0]) if name not in columns]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    for row in rows:
        writer.writerow([row[i] for i in keep])
    return buf.getvalue()


@router.get("/console/usage.csv")
async def usage_csv(request: Request, services: ServicesDep, session: SessionDep) -> Response:
    """One line per job of the period (money in micro-units), as the admin API's CSV."""
    key_id, _, since = _scope(request, session)
    async with services.sessions() as db:
        text = await usage.usage_csv(db, key_id=key_id, since=since)
    if not session.operator:  # a customer is not shown the upstream's cost
        text = _without(text, ("upstream_cost", "margin"))
    return Response(text, media_type="text/csv", headers={
        "content-disposition": 'attachment; filename="usage.csv"', "cache-control": "no-store"})
