"""The orphan sweep: stored objects with no file row, and file rows no job references.

Crashes leave two kinds of leftovers (issue 17 item 6): an object written whose `FileRow` was
never committed (`FileStore.put` writes the bytes first), or a half-written `.name.uuid.tmp` of
local storage; and a file row that no job points to (inputs stored by an order whose jobs were
never created; an output stored by a job that then crashed, whose restart stored another copy).

`find_orphans` reports them; `sweep` removes them. The rules:

* nothing younger than `grace` is an orphan (a request may be between storing an input and
  creating its job, a job between storing an output and recording it);
* only kinds `input`, `mask` and `output` are judged by references (`upload`s of the files API
  stay until their owner deletes them);
* an output is referenced when its job lists it in `outputs`, or its job is live (queued or
  running); an input or mask when a job's spec names it (`input_file_ids`, `mask_file_id`).
  Jobs name an input only when created right after it was stored, so for a row of key K the
  jobs of K created within `grace` (plus a 10-minute clock skew) of it are searched, and every
  live job's spec besides;
* a stored object is judged only under keys the gateway writes (`{kind}/YYYY/MM/DD/{file id}.
  {ext}`, their `.tmp` leftovers, `.fluxgate-probe/` objects); anything else under the root or
  prefix is counted as `unknown` and left alone;
* a row is deleted before its object, so a crash in between leaves an object orphan (found
  next time), never a row without its bytes.

Every replica may sweep: deletes are idempotent.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, or_, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.jobs.model import JobStatus
from gateway.jobs.tables import JobRow
from gateway.settings import StorageSettings
from gateway.storage.base import Storage, StorageError
from gateway.storage.tables import FileRow

log = logging.getLogger(__name__)

JUDGED_KINDS = ("input", "mask", "output")
LIVE = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)
SKEW = timedelta(minutes=10)
PAGE = 500

_KEY = re.compile(r"^(?:input|mask|output|upload)/\d{4}/\d{2}/\d{2}/"
                  r"(?P<tmp>\.)?(?P<id>file_[A-Za-z0-9]+)\.[a-z0-9]+"
                  r"(?(tmp)\.[0-9a-f]{32}\.tmp)$")
_PROBE = re.compile(r"^\.fluxgate-probe/[0-9a-f]{32}$")


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(dt: datetime) -> datetime:
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt


@dataclass(slots=True)
class Orphans:
    """What a look found: object keys with no row, file rows (id -> storage key) with no
    referencing job, and how many objects were under keys the gateway does not write."""

    objects: list[str] = field(default_factory=list)
    rows: dict[str, str] = field(default_factory=dict)
    unknown: int = 0

    @property
    def total(self) -> int:
        return len(self.objects) + len(self.rows)


def _spec_files(spec: dict[str, object]) -> set[str]:
    ids = {str(i) for i in spec.get("input_file_ids") or [] if i}  # type: ignore[attr-defined]
    if spec.get("mask_file_id"):
        ids.add(str(spec["mask_file_id"]))
    return ids


async def _live_references(session: AsyncSession) -> tuple[set[str], set[str]]:
    """(ids of live jobs, file ids their specs name)."""
    jobs, files = set(), set()
    for job_id, spec in await session.execute(
            select(JobRow.id, JobRow.spec).where(JobRow.status.in_(LIVE))):
        jobs.add(job_id)
        files |= _spec_files(spec or {})
    return jobs, files


async def _unreferenced(session: AsyncSession, page: Sequence[FileRow], grace: timedelta,
                        live_jobs: set[str], live_files: set[str]) -> list[FileRow]:
    """The rows of `page` no job references (see the module docstring)."""
    outputs = [r for r in page if r.kind == "output"]
    inputs = [r for r in page if r.kind != "output" and r.id not in live_files]
    listed: dict[str, set[str]] = {}  # job id -> file ids in its outputs
    owners = {r.job_id for r in outputs if r.job_id} | {r.job_id for r in inputs if r.job_id}
    if owners:
        for job_id, job_outputs in await session.execute(
                select(JobRow.id, JobRow.outputs).where(JobRow.id.in_(owners))):
            listed[job_id] = {str(o.get("file_id")) for o in job_outputs or []}
    named: set[str] = set()
    for key_id in {r.key_id for r in inputs if r.key_id}:
        mine = [r for r in inputs if r.key_id == key_id]
        first = min(_aware(r.created_at) for r in mine) - SKEW
        last = max(_aware(r.created_at) for r in mine) + grace + SKEW
        for (spec,) in await session.execute(
                select(JobRow.spec).where(JobRow.key_id == key_id,
                                          JobRow.created_at >= first,
                                          JobRow.created_at <= last)):
            named |= _spec_files(spec or {})
    orphans = []
    for row in outputs:
        if row.job_id in live_jobs:
            continue
        if row.job_id not in listed or row.id not in listed[row.job_id]:
            orphans.append(row)
    for row in inputs:
        if row.id in named or (row.job_id is not None and row.job_id in listed):
            continue
        orphans.append(row)
    return orphans


async def orphan_rows(sessions: async_sessionmaker[AsyncSession], cutoff: datetime,
                      grace: timedelta) -> dict[str, str]:
    """File rows (id -> storage key) of the judged kinds, older than `cutoff`, that no job
    references; read in pages of 500."""
    found: dict[str, str] = {}
    after: tuple[datetime, str] | None = None
    async with sessions() as session:
        live_jobs, live_files = await _live_references(session)
        while True:
            query = (select(FileRow).where(FileRow.kind.in_(JUDGED_KINDS),
                                           FileRow.created_at < cutoff)
                     .order_by(FileRow.created_at, FileRow.id).limit(PAGE))
            if after is not None:
                query = query.where(tuple_(FileRow.created_at, FileRow.id) > after)
            page = list((await session.execute(query)).scalars())
            if not page:
                return found
            for row in await _unreferenced(session, page, grace, live_jobs, live_files):
                found[row.id] = row.storage_key
            after = (page[-1].created_at, page[-1].id)


async def orphan_objects(storage: Storage, sessions: async_sessionmaker[AsyncSession],
                         cutoff: datetime) -> tuple[list[str], int]:
    """(keys of objects written before `cutoff` that no file row names, count of objects
    under keys the gateway does not write)."""
    orphans: list[str] = []
    unknown = 0
    batch: dict[str, str] = {}  # key -> file id

    async def judge() -> None:
        async with sessions() as session:
            known = set(await session.execute(
                select(FileRow.id, FileRow.storage_key).where(
                    FileRow.id.in_(set(batch.values())))))
        orphans.extend(k for k, i in batch.items() if (i, k) not in known)
        batch.clear()

    async for obj in storage.scan():
        if _aware(obj.modified) >= cutoff:
            continue
        match = _KEY.match(obj.key)
        if match is None:
            if _PROBE.match(obj.key):
                orphans.append(obj.key)
            else:
                unknown += 1
        elif match["tmp"]:
            orphans.append(obj.key)  # an interrupted write: never a complete object
        else:
            batch[obj.key] = match["id"]
            if len(batch) >= PAGE:
                await judge()
    if batch:
        await judge()
    return orphans, unknown


async def find_orphans(storage: Storage, sessions: async_sessionmaker[AsyncSession], *,
                       grace: float, now: datetime | None = None) -> Orphans:
    """Every orphan at least `grace` seconds old at `now` (see the module docstring)."""
    cutoff = (now or _now()) - timedelta(seconds=grace)
    rows = await orphan_rows(sessions, cutoff, timedelta(seconds=grace))
    objects, unknown = await orphan_objects(storage, sessions, cutoff)
    return Orphans(objects=objects, rows=rows, unknown=unknown)


async def sweep(storage: Storage, sessions: async_sessionmaker[AsyncSession], *,
                grace: float, now: datetime | None = None) -> Orphans:
    """Find the orphans and remove them: each orphan row (re-checked: still unreferenced by a
    live job) and then its object, then each orphan object. Answers what was found."""
    found = await find_orphans(storage, sessions, grace=grace, now=now)
    if found.rows:
        async with sessions.begin() as session:
            live_jobs, live_files = await _live_references(session)
            doomed = [i for i in found.rows if i not in live_files]
            statement = delete(FileRow).where(FileRow.id.in_(doomed))
            if live_jobs:
                statement = statement.where(or_(FileRow.job_id.is_(None),
                                                FileRow.job_id.not_in(live_jobs)))
            await session.execute(statement)
        found.rows = {i: found.rows[i] for i in doomed}
    for key in [*found.rows.values(), *found.objects]:
        try:
            await storage.delete(key)
        except StorageError as exc:  # tried again next sweep
            log.warning("orphan sweep could not delete %s: %s", key, exc)
    return found


async def run(storage: Storage, sessions: async_sessionmaker[AsyncSession], *,
              interval: float, grace: float, clock: Callable[[], datetime] = _now) -> None:
    """`sweep` every `interval` seconds (first at start), until cancelled. Never raises."""
    while True:
        try:
            found = await sweep(storage, sessions, grace=grace, now=clock())
            if found.total:
                log.info("orphan sweep removed %d objects without a file row and %d file rows "
                         "no job references", len(found.objects), len(found.rows))
        except Exception as exc:  # a database or storage hiccup: try again next round
            log.warning("orphan sweep failed: %s: %s", type(exc).__name__, exc)
        await asyncio.sleep(interval)


def start(storage: Storage, sessions: async_sessionmaker[AsyncSession],
          settings: StorageSettings) -> asyncio.Task[None] | None:
    """The sweep as a background task, as `storage.sweep_interval` / `sweep_grace` say (None
    when the interval is 0); end it with `stop`."""
    if not settings.sweep_interval:
        return None
    return asyncio.create_task(run(storage, sessions, interval=settings.sweep_interval,
                                   grace=settings.sweep_grace), name="storage-sweep")


async def stop(task: asyncio.Task[None] | None) -> None:
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
