"""The orphan sweep: stored objects with no file row, and file rows no job references.

Crashes and refusals leave two kinds of leftovers (issue 17 item 6): an object written whose
`FileRow` was never committed (the bytes are stored first and the row is written with the job:
a crash in between, or an order refused for funds after its inputs were stored), or a
half-written `.name.uuid.tmp` of local storage; and a file row that no job points to (an
output recorded for a job that does not list it, rows of jobs that are gone, rows written
by versions that recorded files in transactions of their own). The sweep relies only on the
`files` and `jobs` tables and the storage listing (`Storage.scan`), never on how the file
store writes.

`find_orphans` reports them; `sweep` removes them. The rules:

* nothing younger than the grace period is an orphan (a request may be between storing an
  input and creating its job, a job between storing an output and recording it). The grace is
  never shorter than a job's whole life (`jobs.deadline` + `jobs.download_timeout`, see
  `effective_grace`), so a live job's bytes are never judged by age alone;
* only kinds `input`, `mask` and `output` are judged by references (`upload`s of the files API
  stay until their owner deletes them);
* an output row is referenced when its job lists it in `outputs` or its job is live (queued or
  running); an input or mask row when a job's spec names it (`input_file_ids`,
  `mask_file_id`). Jobs name an input only when created right after it was stored, so for a
  row of key K the jobs of K created within `grace` (plus a 10-minute clock skew) of it are
  searched, and every live job's spec besides;
* a stored object is an orphan when no file row names its key and no live job names its file
  id (in its spec or its outputs). Only keys the gateway writes are judged
  (`{kind}/YYYY/MM/DD/{file id}.{ext}`, their `.tmp` leftovers, `.fluxgate-probe/` objects);
  anything else under the root or prefix is counted as `unknown` and left alone;
* rows are re-judged in the transaction that deletes them, and a row is deleted before its
  object, so a crash in between leaves an object orphan (found next time), never a row
  without its bytes.

Every replica may sweep: deletes are idempotent.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.jobs.model import JobStatus
from gateway.jobs.tables import JobRow
from gateway.settings import Settings
from gateway.storage.base import Storage, StorageError
from gateway.storage.tables import FileRow

log = logging.getLogger(__name__)

JUDGED_KINDS = ("input", "mask", "output")
LIVE = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)
SKEW = timedelta(minutes=10)
PAGE = 500
#: the first sweep after start waits up to this long (replicas started together spread out)
FIRST_DELAY_MAX = 60.0

_KEY = re.compile(r"^(?:input|mask|output|upload)/\d{4}/\d{2}/\d{2}/"
                  r"(?P<tmp>\.)?(?P<id>file_[A-Za-z0-9]+)\.[a-z0-9]+"
                  r"(?(tmp)\.[0-9a-f]{32}\.tmp)$")
_PROBE = re.compile(r"^\.fluxgate-probe/[0-9a-f]{32}$")


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(dt: datetime) -> datetime:
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt


def effective_grace(settings: Settings, grace: float | None = None) -> float:
    """The grace period the sweep uses: `grace` (default `storage.sweep_grace`), but never less
    than a job's longest life (`jobs.deadline` + `jobs.download_timeout`), so that bytes a live
    job stored and has not yet recorded are never old enough to be judged."""
    wanted = settings.storage.sweep_grace if grace is None else grace
    return max(wanted, settings.jobs.deadline + settings.jobs.download_timeout)


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


@dataclass(slots=True)
class _Live:
    """What the live (queued or running) jobs hold: their ids and every file id they name."""

    jobs: set[str] = field(default_factory=set)
    files: set[str] = field(default_factory=set)


def _spec_files(spec: dict[str, Any]) -> set[str]:
    ids = {str(i) for i in spec.get("input_file_ids") or [] if i}
    if spec.get("mask_file_id"):
        ids.add(str(spec["mask_file_id"]))
    return ids


def _output_files(outputs: Iterable[dict[str, Any]] | None) -> set[str]:
    return {str(o["file_id"]) for o in outputs or [] if o.get("file_id")}


async def _live(session: AsyncSession) -> _Live:
    live = _Live()
    for job_id, spec, outputs in await session.execute(
            select(JobRow.id, JobRow.spec, JobRow.outputs).where(JobRow.status.in_(LIVE))):
        live.jobs.add(job_id)
        live.files |= _spec_files(spec or {}) | _output_files(outputs)
    return live


async def _unreferenced(session: AsyncSession, page: Sequence[FileRow], grace: timedelta,
                        live: _Live) -> list[FileRow]:
    """The rows of `page` no job references (see the module docstring)."""
    page = [r for r in page if r.id not in live.files]
    outputs = [r for r in page if r.kind == "output" and r.job_id not in live.jobs]
    inputs = [r for r in page if r.kind != "output"]
    listed: dict[str, set[str]] = {}  # job id -> file ids in its outputs
    owners = {r.job_id for r in outputs if r.job_id}
    if owners:
        for job_id, job_outputs in await session.execute(
                select(JobRow.id, JobRow.outputs).where(JobRow.id.in_(owners))):
            listed[job_id] = _output_files(job_outputs)
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
    orphans = [r for r in outputs if r.id not in listed.get(r.job_id or "", set())]
    orphans += [r for r in inputs if r.id not in named]
    return orphans


async def orphan_rows(sessions: async_sessionmaker[AsyncSession], cutoff: datetime,
                      grace: timedelta) -> dict[str, str]:
    """File rows (id -> storage key) of the judged kinds, created before `cutoff`, that no job
    references; read in pages of 500."""
    found: dict[str, str] = {}
    after: tuple[datetime, str] | None = None
    async with sessions() as session:
        live = await _live(session)
        while True:
            query = (select(FileRow).where(FileRow.kind.in_(JUDGED_KINDS),
                                           FileRow.created_at < cutoff)
                     .order_by(FileRow.created_at, FileRow.id).limit(PAGE))
            if after is not None:
                query = query.where(tuple_(FileRow.created_at, FileRow.id) > after)
            page = list((await session.execute(query)).scalars())
            if not page:
                return found
            for row in await _unreferenced(session, page, grace, live):
                found[row.id] = row.storage_key
            after = (page[-1].created_at, page[-1].id)


async def orphan_objects(storage: Storage, sessions: async_sessionmaker[AsyncSession],
                         cutoff: datetime) -> tuple[list[str], int]:
    """(keys of objects written before `cutoff` that no file row and no live job names, count
    of objects under keys the gateway does not write). Raises StorageError when the listing
    fails."""
    orphans: list[str] = []
    unknown = 0
    batch: dict[str, str] = {}  # key -> file id
    async with sessions() as session:
        live = await _live(session)

    async def judge() -> None:
        async with sessions() as session:
            known = {(file_id, key) for file_id, key in await session.execute(
                select(FileRow.id, FileRow.storage_key).where(
                    FileRow.id.in_(set(batch.values()))))}
        orphans.extend(k for k, i in batch.items() if (i, k) not in known and i not in live.files)
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
    """Every orphan at least `grace` seconds old at `now` (see the module docstring). Raises
    StorageError when the storage cannot be listed, and the database's errors."""
    cutoff = (now or _now()) - timedelta(seconds=grace)
    rows = await orphan_rows(sessions, cutoff, timedelta(seconds=grace))
    objects, unknown = await orphan_objects(storage, sessions, cutoff)
    return Orphans(objects=objects, rows=rows, unknown=unknown)


async def _delete_rows(sessions: async_sessionmaker[AsyncSession], found: dict[str, str],
                       grace: timedelta) -> dict[str, str]:
    """Delete the rows of `found` that are still unreferenced, judged again in the deleting
    transaction; answers those deleted (id -> storage key)."""
    deleted: dict[str, str] = {}
    ids = list(found)
    for start in range(0, len(ids), PAGE):
        async with sessions.begin() as session:
            page = list((await session.execute(
                select(FileRow).where(FileRow.id.in_(ids[start:start + PAGE])))).scalars())
            doomed = await _unreferenced(session, page, grace, await _live(session))
            if doomed:
                await session.execute(delete(FileRow).where(
                    FileRow.id.in_([r.id for r in doomed])))
            deleted |= {r.id: r.storage_key for r in doomed}
    return deleted


async def sweep(storage: Storage, sessions: async_sessionmaker[AsyncSession], *,
                grace: float, now: datetime | None = None) -> Orphans:
    """Find the orphans and remove them: each orphan row (judged again as it is deleted) and
    then its object, then each orphan object. Answers what was removed; an object that could
    not be deleted is logged and left for the next sweep. Raises as `find_orphans`."""
    found = await find_orphans(storage, sessions, grace=grace, now=now)
    if found.rows:
        found.rows = await _delete_rows(sessions, found.rows, timedelta(seconds=grace))
    for key in [*found.rows.values(), *found.objects]:
        try:
            await storage.delete(key)
        except StorageError as exc:  # tried again next sweep
            log.warning("orphan sweep could not delete %s: %s", key, exc)
    return found


async def run(storage: Storage, sessions: async_sessionmaker[AsyncSession], *,
              interval: float, grace: float, clock: Callable[[], datetime] = _now) -> None:
    """`sweep` soon after start (within `FIRST_DELAY_MAX`, or `interval` if shorter) and then
    every `interval` seconds, until cancelled. Never raises."""
    await asyncio.sleep(random.uniform(0, min(interval, FIRST_DELAY_MAX)))
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
          settings: Settings) -> asyncio.Task[None] | None:
    """The sweep as a background task, every `storage.sweep_interval` seconds with
    `effective_grace(settings)` (None when the interval is 0); end it with `stop`."""
    interval = settings.storage.sweep_interval
    if not interval:
        return None
    return asyncio.create_task(run(storage, sessions, interval=interval,
                                   grace=effective_grace(settings)), name="storage-sweep")


async def stop(task: asyncio.Task[None] | None) -> None:
    """Cancel a task from `start` and wait for it to end."""
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
