"""Usage reports over the ledger and the gateway's `jobs` table, and their CSV export.

Money comes only from the ledger, so a report always agrees with the balance to the
micro-unit: for a key, `topups + adjustments - spend - held == balance`. Per job, `spend` is
what a finished job (settled or released) cost after refunds, `held` what an unfinished one
has reserved. Job facts (status, model, operation, aspect ratio, channel, latency) come from
the `jobs` table, which billing names by its columns only (`JOBS`, no gateway import); a job
the ledger knows but the table does not (or the other way round) is still counted.

Aggregation happens in Python over the jobs of the period: percentiles are not portable SQL.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, Integer, String, TableClause, case, column, func, select, table
from sqlalchemy.ext.asyncio import AsyncSession

from billing.ledger import TERMINAL_KINDS
from billing.tables import ApiKeyRow, LedgerRow

#: The gateway's jobs table, by the columns usage reads.
JOBS: TableClause = table(
    "jobs",
    column("id", String), column("key_id", String), column("status", String),
    column("model", String), column("operation", String), column("aspect_ratio", String),
    column("channel", String), column("price", Integer), column("charged", Integer),
    column("upstream_cost", Integer), column("created_at", DateTime(timezone=True)),
    column("finished_at", DateTime(timezone=True)),
)

DIMENSIONS = ("model", "operation", "aspect_ratio", "channel", "day")
FINISHED = ("succeeded", "failed", "canceled")


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@dataclass(slots=True)
class JobUsage:
    """One job as usage sees it (a row of the CSV export)."""

    job_id: str
    key_id: str
    created_at: datetime | None
    status: str
    model: str | None = None
    operation: str | None = None
    aspect_ratio: str | None = None
    channel: str | None = None
    latency: float | None = None  # seconds from creation to finish, succeeded jobs only
    spend: int = 0
    held: int = 0
    upstream_cost: int | None = None

    @property
    def day(self) -> str | None:
        return self.created_at.date().isoformat() if self.created_at else None

    def dimension(self, name: str) -> str:
        value = self.day if name == "day" else getattr(self, name)
        return "" if value is None else str(value)


@dataclass(slots=True)
class UsageStats:
    """Totals over a set of jobs; money in micro-units."""

    jobs: int = 0
    succeeded: int = 0
    failed: int = 0
    canceled: int = 0
    in_flight: int = 0
    spend: int = 0
    held: int = 0
    upstream_cost: int = 0
    latency_p50: float | None = None
    latency_p95: float | None = None

    @property
    def success_rate(self) -> float | None:
        """succeeded / finished, None before anything finished."""
        finished = self.succeeded + self.failed + self.canceled
        return self.succeeded / finished if finished else None

    @property
    def average_cost(self) -> int:
        """Spend per succeeded job, rounded half up (0 with no success)."""
        return (2 * self.spend + self.succeeded) // (2 * self.succeeded) if self.succeeded else 0

    @property
    def margin(self) -> int:
        """Spend minus the upstream's recorded cost."""
        return self.spend - self.upstream_cost

    def as_dict(self) -> dict[str, Any]:
        return {"jobs": self.jobs, "succeeded": self.succeeded, "failed": self.failed,
                "canceled": self.canceled, "in_flight": self.in_flight,
                "success_rate": self.success_rate, "spend": self.spend, "held": self.held,
                "average_cost": self.average_cost, "upstream_cost": self.upstream_cost,
                "margin": self.margin, "latency_p50": self.latency_p50,
                "latency_p95": self.latency_p95}


@dataclass(slots=True)
class UsageReport:
    """Usage of one key (or of every key when `key_id` is None) over a period."""

    key_id: str | None
    since: datetime | None
    until: datetime | None
    totals: UsageStats
    by: dict[str, dict[str, UsageStats]] = field(default_factory=dict)
    balance: int | None = None  # the key's balance (key reports only)
    topups: int = 0  # lifetime, key reports only
    adjustments: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "totals": self.totals.as_dict(),
            "by": {dim: {k: s.as_dict() for k, s in groups.items()}
                   for dim, groups in self.by.items()},
            "balance": self.balance, "topups": self.topups, "adjustments": self.adjustments,
        }


def percentile(values: list[float], q: float) -> float | None:
    """The nearest-rank `q` percentile (0 < q <= 100) of `values`, None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil without floats drifting
    return ordered[int(rank) - 1]


def summarize(jobs: Iterable[JobUsage]) -> UsageStats:
    """Totals over `jobs`."""
    stats = UsageStats()
    latencies: list[float] = []
    for job in jobs:
        stats.jobs += 1
        if job.status == "succeeded":
            stats.succeeded += 1
        elif job.status == "failed":
            stats.failed += 1
        elif job.status == "canceled":
            stats.canceled += 1
        else:
            stats.in_flight += 1
        stats.spend += job.spend
        stats.held += job.held
        stats.upstream_cost += job.upstream_cost or 0
        if job.latency is not None:
            latencies.append(job.latency)
    stats.latency_p50 = percentile(latencies, 50)
    stats.latency_p95 = percentile(latencies, 95)
    return stats


async def job_usage(session: AsyncSession, *, key_id: str | None = None,
                    since: datetime | None = None, until: datetime | None = None,
                    jobs_table: TableClause = JOBS) -> list[JobUsage]:
    """Every job of `key_id` (or of every key) created in `[since, until)`, oldest first."""
    since, until = _aware(since), _aware(until)
    terminal = func.max(case((LedgerRow.kind.in_(TERMINAL_KINDS), 1), else_=0))
    ledger_q = (select(LedgerRow.job_id, LedgerRow.key_id, func.min(LedgerRow.created_at),
                       func.sum(LedgerRow.amount), terminal, func.sum(LedgerRow.upstream_cost),
                       func.max(LedgerRow.model),
                       func.max(case((LedgerRow.kind == "release", 1), else_=0)))
                .where(LedgerRow.job_id.is_not(None))
                .group_by(LedgerRow.job_id, LedgerRow.key_id))
    j = jobs_table.c
    jobs_q = select(j.id, j.key_id, j.status, j.model, j.operation, j.aspect_ratio, j.channel,
                    j.upstream_cost, j.created_at, j.finished_at)
    if key_id is not None:
        ledger_q = ledger_q.where(LedgerRow.key_id == key_id)
        jobs_q = jobs_q.where(j.key_id == key_id)
    out: dict[str, JobUsage] = {}
    for (jid, kid, status, model, op, ratio, channel, cost, created,
         finished) in await session.execute(jobs_q):
        created, finished = _aware(created), _aware(finished)
        latency = ((finished - created).total_seconds()
                   if status == "succeeded" and created and finished else None)
        out[jid] = JobUsage(job_id=jid, key_id=kid, created_at=created, status=status,
                            model=model, operation=op, aspect_ratio=ratio, channel=channel,
                            latency=latency, upstream_cost=cost)
    for jid, kid, first, total, is_final, cost, model, released in await session.execute(
            ledger_q):
        job = out.get(jid)
        if job is None:  # the ledger knows it, the jobs table does not
            status = ("failed" if released else "succeeded") if is_final else "running"
            job = out[jid] = JobUsage(job_id=jid, key_id=kid, created_at=_aware(first),
                                      status=status, model=model)
        if is_final:
            job.spend = -int(total)
        else:
            job.held = -int(total)
        if cost is not None:
            job.upstream_cost = int(cost)
    jobs = [job for job in out.values()
            if (since is None or (job.created_at is not None and job.created_at >= since))
            and (until is None or (job.created_at is not None and job.created_at < until))]
    jobs.sort(key=lambda job: (job.created_at or datetime.min.replace(tzinfo=UTC), job.job_id))
    return jobs


async def usage_report(session: AsyncSession, *, key_id: str | None = None,
                       since: datetime | None = None, until: datetime | None = None,
                       jobs_table: TableClause = JOBS) -> UsageReport:
    """Totals and splits (model, operation, aspect ratio, channel, day; and key for an
    overall report) of the jobs created in `[since, until)`. For a key report, also its
    balance and lifetime top-ups and adjustments from the ledger."""
    jobs = await job_usage(session, key_id=key_id, since=since, until=until,
                           jobs_table=jobs_table)
    dims = DIMENSIONS if key_id is not None else ("key_id", *DIMENSIONS)
    by: dict[str, dict[str, UsageStats]] = {}
    for dim in dims:
        groups: dict[str, list[JobUsage]] = defaultdict(list)
        for job in jobs:
            groups[job.dimension(dim)].append(job)
        by[dim] = {name: summarize(members) for name, members in sorted(groups.items())}
    report = UsageReport(key_id=key_id, since=since, until=until, totals=summarize(jobs), by=by)
    if key_id is not None:
        report.balance = (await session.execute(
            select(ApiKeyRow.balance).where(ApiKeyRow.id == key_id))).scalar_one_or_none()
        sums = {kind: total for kind, total in await session.execute(
            select(LedgerRow.kind, func.sum(LedgerRow.amount))
            .where(LedgerRow.key_id == key_id, LedgerRow.kind.in_(("topup", "adjustment")))
            .group_by(LedgerRow.kind))}
        report.topups = int(sums.get("topup") or 0)
        report.adjustments = int(sums.get("adjustment") or 0)
    return report


@dataclass(frozen=True, slots=True)
class CreditSummary:
    """The key holder's balance in the shape of OpenAI's credit_grants (micro-units)."""

    total_granted: int  # top-ups and positive adjustments
    total_used: int  # granted - available
    total_available: int  # the balance
    unlimited: bool


async def credit_summary(session: AsyncSession, key_id: str) -> CreditSummary | None:
    """The key's granted/used/available money; None for an unknown key."""
    key = (await session.execute(
        select(ApiKeyRow.balance, ApiKeyRow.unlimited).where(ApiKeyRow.id == key_id))).first()
    if key is None:
        return None
    granted = (await session.execute(
        select(func.coalesce(func.sum(LedgerRow.amount), 0))
        .where(LedgerRow.key_id == key_id, LedgerRow.amount > 0,
               LedgerRow.kind.in_(("topup", "adjustment"))))).scalar_one()
    balance = int(key.balance)
    return CreditSummary(total_granted=int(granted), total_used=int(granted) - balance,
                         total_available=balance, unlimited=bool(key.unlimited))


CSV_COLUMNS = ("job_id", "key_id", "created_at", "day", "status", "model", "operation",
               "aspect_ratio", "channel", "latency_s", "spend", "held", "upstream_cost",
               "margin")


def jobs_csv(jobs: Iterable[JobUsage]) -> str:
    """One CSV line per job (money in micro-units), with a header line."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for job in jobs:
        writer.writerow([
            job.job_id, job.key_id, job.created_at.isoformat() if job.created_at else "",
            job.day or "", job.status, job.model or "", job.operation or "",
            job.aspect_ratio or "", job.channel or "",
            "" if job.latency is None else f"{job.latency:.3f}", job.spend, job.held,
            "" if job.upstream_cost is None else job.upstream_cost,
            "" if job.upstream_cost is None else job.spend - job.upstream_cost,
        ])
    return buf.getvalue()


async def usage_csv(session: AsyncSession, *, key_id: str | None = None,
                    since: datetime | None = None, until: datetime | None = None,
                    jobs_table: TableClause = JOBS) -> str:
    """The CSV export (one line per job) of `job_usage` with the same arguments."""
    return jobs_csv(await job_usage(session, key_id=key_id, since=since, until=until,
                                    jobs_table=jobs_table))


async def in_flight_jobs(session: AsyncSession, key_id: str, *,
                         jobs_table: TableClause = JOBS) -> int:
    """How many jobs of `key_id` are not finished yet (the concurrency limit's count)."""
    j = jobs_table.c
    count = (await session.execute(
        select(func.count()).select_from(jobs_table)
        .where(j.key_id == key_id, j.status.not_in(FINISHED)))).scalar_one()
    return int(count)
