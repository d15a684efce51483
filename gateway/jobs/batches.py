"""Reading the jobs of one order: every job an order places shares its `batch_id`."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.jobs.tables import JobRow


async def batch_jobs(sessions: async_sessionmaker[AsyncSession], batch_id: str,
                     key_id: str) -> list[JobRow]:
    """The jobs of `batch_id` that belong to `key_id`, in the order they were made (none for
    an unknown batch or another key's)."""
    async with sessions() as session:
        rows = await session.execute(
            select(JobRow).where(JobRow.batch_id == batch_id, JobRow.key_id == key_id)
            .order_by(JobRow.created_at, JobRow.seed))
        return list(rows.scalars())


async def key_job(sessions: async_sessionmaker[AsyncSession], job_id: str,
                  key_id: str) -> JobRow | None:
    """The job `job_id` if it belongs to `key_id` (None for an unknown id or another key's)."""
    async with sessions() as session:
        row = await session.get(JobRow, job_id)
    return row if row is not None and row.key_id == key_id else None
