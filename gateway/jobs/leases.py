"""Job leases: which process runs a job, and until when its claim holds without renewal.

Replicas sharing one database run each job in exactly one process: the one whose id is in
`jobs.runner` while `jobs.lease_until` has not passed. Every claim is one conditional UPDATE,
so two replicas never both take a job; a runner renews all its leases with one UPDATE (its
heartbeat); a graceful stop releases them (adoptable at once), a crash leaves them to expire.
A NULL `lease_until` counts as passed: rows from before leases existed, or released ones.

Times come from each replica's own clock, so replicas' clocks must agree to well within the
lease (NTP does). Pure SQL on a session the caller opens; `JobService` decides when to call.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from gateway.jobs.model import JobStatus
from gateway.jobs.tables import JobRow

#: spelled as IN, not NOT IN over the terminal ones, so the (status, lease_until) index serves
#: the adoption query however many finished jobs the table holds
_UNFINISHED = [s.value for s in JobStatus if not s.terminal]
_CHUNK = 500  # ids per IN (...): far below SQLite's and asyncpg's bound-parameter limits


def runner_id() -> str:
    """A name for this process, unique across replicas and restarts (at most 64 characters):
    host and pid for people reading the table, a random suffix for uniqueness."""
    suffix = f":{os.getpid()}:{secrets.token_hex(3)}"
    return socket.gethostname()[:64 - len(suffix)] + suffix


def _adoptable(now: datetime) -> ColumnElement[bool]:
    return and_(JobRow.status.in_(_UNFINISHED),
                or_(JobRow.lease_until.is_(None), JobRow.lease_until < now))


async def expired_ids(session: AsyncSession, now: datetime) -> list[str]:
    """Unfinished jobs whose lease has passed (or was never set), oldest first."""
    return list((await session.execute(
        select(JobRow.id).where(_adoptable(now)).order_by(JobRow.created_at))).scalars())


async def claim(session: AsyncSession, job_id: str, runner: str, now: datetime,
                until: datetime) -> bool:
    """Take the job's lease for `runner` until `until`, if it is unfinished and its lease has
    passed at `now`. Answers whether `runner` now holds it (False: another runner was first,
    or the job is terminal)."""
    result = await session.execute(
        update(JobRow).where(JobRow.id == job_id, _adoptable(now))
        .values(runner=runner, lease_until=until))
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


async def renew(session: AsyncSession, job_ids: Sequence[str], runner: str,
                until: datetime) -> set[str]:
    """Extend `runner`'s leases on `job_ids` to `until`. Answers the ids `runner` no longer
    holds: another runner adopted them after this one's lease passed, or they ended
    elsewhere (canceled through another replica). That is how a running job learns it must
    stop, without reading its row."""
    lost: set[str] = set()
    for start in range(0, len(job_ids), _CHUNK):
        chunk = list(job_ids[start:start + _CHUNK])
        result = await session.execute(
            update(JobRow).where(JobRow.id.in_(chunk), JobRow.runner == runner,
                                 JobRow.status.in_(_UNFINISHED))
            .values(lease_until=until))
        if result.rowcount != len(chunk):  # type: ignore[attr-defined]
            held = (await session.execute(select(JobRow.id).where(
                JobRow.id.in_(chunk), JobRow.runner == runner,
                JobRow.status.in_(_UNFINISHED)))).scalars()
            lost.update(set(chunk) - set(held))
    return lost


async def release(session: AsyncSession, runner: str) -> int:
    """Give up `runner`'s leases on its unfinished jobs, so that they can be adopted at once.
    Answers how many were released."""
    result = await session.execute(
        update(JobRow).where(JobRow.runner == runner, JobRow.status.in_(_UNFINISHED))
        .values(lease_until=None))
    return int(result.rowcount)  # type: ignore[attr-defined]
