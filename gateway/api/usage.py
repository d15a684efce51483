"""The key holder's usage and balance: GET /v1/usage, GET /v1/dashboard/billing/credit_grants.

Money is reported in integer micro-units of the configured currency (`*_micro` fields and
the report), with the currency-unit floats OpenAI's credit_grants clients expect beside it.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import WithJsonSchema

from billing import usage
from billing.pricing import from_micro
from gateway.api.deps import PrincipalDep, ServicesDep
from gateway.api.openapi import OPENAI_ERRORS
from gateway.errors import InvalidRequest

router = APIRouter(responses=OPENAI_ERRORS)


def parse_when(value: str | None, param: str) -> datetime | None:
    """An ISO date/datetime or unix seconds as an aware UTC datetime (None stays None; an
    empty value is no date, so it is refused like any other)."""
    if value is None:
        return None
    try:
        if value.replace(".", "", 1).isdigit():
            return datetime.fromtimestamp(float(value), UTC)
        if len(value) == 10:
            return datetime.combine(date.fromisoformat(value), datetime.min.time(), UTC)
        parsed = datetime.fromisoformat(value)
    except (ValueError, OverflowError, OSError) as exc:  # out of range: not a 500
        raise InvalidRequest(f"Invalid {param}: use an ISO date or unix seconds.",
                             param=param) from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


SinceQ = Annotated[str | None, Query(description="ISO date/datetime or unix seconds"),
                   WithJsonSchema({"anyOf": [{"type": "string", "format": "date"},
                                             {"type": "string", "format": "date-time"},
                                             {"type": "string", "pattern": r"^\d{1,10}(\.\d*)?$"},
                                             {"type": "null"}]})]


def report_body(report: usage.UsageReport, currency: str) -> dict[str, Any]:
    body = report.as_dict()
    body.update(object="usage", currency=currency, unit="micro")
    return body


@router.get("/v1/usage")
async def get_usage(principal: PrincipalDep, services: ServicesDep, since: SinceQ = None,
                    until: SinceQ = None) -> dict[str, Any]:
    """The calling key's jobs, success rate, spend, latency, by model/operation/ratio/
    channel/day, and its balance; agrees with the ledger to the micro-unit."""
    async with services.sessions() as session:
        report = await usage.usage_report(session, key_id=principal.key_id,
                                          since=parse_when(since, "since"),
                                          until=parse_when(until, "until"))
    return report_body(report, services.settings.billing.currency)


@router.get("/v1/dashboard/billing/credit_grants")
async def credit_grants(principal: PrincipalDep, services: ServicesDep) -> dict[str, Any]:
    """The calling key's balance in the shape of OpenAI's legacy credit_grants."""
    async with services.sessions() as session:
        summary = await usage.credit_summary(session, principal.key_id)
    assert summary is not None  # the key was just authenticated
    return {
        "object": "credit_summary",
        "total_granted": float(from_micro(summary.total_granted)),
        "total_used": float(from_micro(summary.total_used)),
        "total_available": float(from_micro(summary.total_available)),
        "total_granted_micro": summary.total_granted,
        "total_used_micro": summary.total_used,
        "total_available_micro": summary.total_available,
        "unlimited": summary.unlimited,
        "currency": services.settings.billing.currency,
    }
