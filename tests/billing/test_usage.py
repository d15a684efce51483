"""Usage reports agree with the ledger to the micro-unit."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from billing import ledger, usage
from billing.keys import create_key
from gateway.jobs.tables import JobRow

Sessions = async_sessionmaker[AsyncSession]
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _job(job_id: str, key_id: str, status: str, *, model: str = "flux-kontext-pro",
         op: str = "generate", ratio: str = "1:1", channel: str = "sandbox",
         created: datetime = T0, seconds: float = 10.0) -> JobRow:
    return JobRow(id=job_id, key_id=key_id, surface="openai.images", status=status,
                  stage="created", model=model, operation=op, spec={}, prompt="p",
                  aspect_ratio=ratio, channel=channel, polls=0, attempts=1, outputs=[],
                  price=0, timeline=[], created_at=created, updated_at=created,
                  finished_at=created + timedelta(seconds=seconds)
                  if status in ("succeeded", "failed") else None)


async def _scenario(sessions: Sessions) -> tuple[str, str]:
    async with sessions.begin() as s:
        a = (await create_key(s, name="a", balance=1_000_000)).row.id
        b = (await create_key(s, name="b", balance=None)).row.id
        s.add_all([
            _job("j1", a, "succeeded", seconds=4),
            _job("j2", a, "succeeded", model="flux-kontext-max", op="edit", ratio="16:9",
                 channel="bfl", seconds=8, created=T0 + timedelta(days=1)),
            _job("j3", a, "failed", seconds=1),
            _job("j4", a, "failed", seconds=2),  # moderated: fee kept
            _job("j5", a, "running"),
            _job("j6", b, "succeeded", seconds=20),
        ])
        await s.flush()
        for job_id, key, amount in (("j1", a, 40_000), ("j2", a, 80_000), ("j3", a, 40_000),
                                    ("j4", a, 40_000), ("j5", a, 40_000), ("j6", b, 40_000),
                                    ("j7", a, 25_000)):
            await ledger.reserve(s, key, job_id, amount)
        await ledger.settle(s, a, "j1", 40_000, upstream_cost=30_000)
        await ledger.settle(s, a, "j2", 80_000, upstream_cost=60_000)
        await ledger.release(s, a, "j3")
        await ledger.release(s, a, "j4", fee=1_000)
        await ledger.settle(s, b, "j6", 40_000)
        await ledger.settle(s, a, "j7", 25_000)  # a job the jobs table does not know
        await ledger.refund(s, a, "j7", 5_000)
        await ledger.adjustment(s, a, -3_000, note="correction")
    return a, b


async def test_key_report_agrees_with_the_ledger(sessions: Sessions) -> None:
    a, _ = await _scenario(sessions)
    async with sessions() as s:
        report = await usage.usage_report(s, key_id=a)
        balance = await ledger.ledger_sum(s, a)
    t = report.totals
    assert (t.jobs, t.succeeded, t.failed, t.in_flight) == (6, 3, 2, 1)
    assert t.spend == 40_000 + 80_000 + 0 + 1_000 + 20_000
    assert t.held == 40_000
    assert report.balance == balance
    assert report.topups + report.adjustments - t.spend - t.held == balance
    assert t.success_rate == 3 / 5
    assert t.average_cost == round(t.spend / 3)
    assert t.upstream_cost == 90_000 and t.margin == t.spend - 90_000
    assert t.latency_p50 == 4 and t.latency_p95 == 8  # j7 has no jobs row: no latency
    assert report.by["model"]["flux-kontext-max"].spend == 80_000
    assert report.by["operation"]["edit"].jobs == 1
    assert report.by["aspect_ratio"]["16:9"].succeeded == 1
    assert report.by["channel"]["bfl"].upstream_cost == 60_000
    today = datetime.now(UTC).date().isoformat()  # j7 is dated by its reservation
    assert set(report.by["day"]) == {"2026-03-01", "2026-03-02", today}
    assert report.by["day"]["2026-03-01"].jobs == 4
    assert sum(g.spend for g in report.by["model"].values()) == t.spend
    assert report.as_dict()["totals"]["spend"] == t.spend


async def test_overall_report_and_period(sessions: Sessions) -> None:
    a, b = await _scenario(sessions)
    async with sessions() as s:
        overall = await usage.usage_report(s)
        day2 = await usage.usage_report(s, key_id=a, since=T0 + timedelta(days=1),
                                        until=T0 + timedelta(days=2))
    assert overall.totals.jobs == 7
    assert overall.by["key_id"][b].spend == 40_000
    assert overall.balance is None
    assert (day2.totals.jobs, day2.totals.spend) == (1, 80_000)


async def test_credit_summary_and_csv(sessions: Sessions) -> None:
    a, _ = await _scenario(sessions)
    async with sessions() as s:
        credit = await usage.credit_summary(s, a)
        assert await usage.credit_summary(s, "key_missing") is None
        text = await usage.usage_csv(s, key_id=a)
        balance = await ledger.ledger_sum(s, a)
    assert credit is not None
    assert credit.total_available == balance
    assert credit.total_granted == 1_000_000
    assert credit.total_used == 1_000_000 - balance
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["job_id"] for r in rows] == ["j1", "j3", "j4", "j5", "j2", "j7"]
    assert sum(int(r["spend"]) + int(r["held"]) for r in rows) == 1_000_000 - 3_000 - balance
    j1 = next(r for r in rows if r["job_id"] == "j1")
    assert (j1["spend"], j1["upstream_cost"], j1["margin"], j1["latency_s"]) == (
        "40000", "30000", "10000", "4.000")


def test_percentile() -> None:
    assert usage.percentile([], 50) is None
    assert usage.percentile([3, 1, 2], 50) == 2
    assert usage.percentile(list(range(1, 101)), 95) == 95
