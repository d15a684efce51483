"""JobService: the whole job lifecycle in one place.

validate (intake) -> quote -> reserve -> route -> submit -> poll -> download and re-host ->
settle, or release on any failure. Once a job row exists, its failure is data on the job
(status, error_code, error_message) and the money follows the job's state: a job is settled
only after its image is stored, and released otherwise, never both (guarded transitions).

The database does only what durability and money need. On the happy path a job is at most
three write transactions, each a few single statements through the `Writer` (group commit on
SQLite): T1 `_create` inserts the job (status `running`: "it may be at an upstream from now
on"), its input files and its reservation; T2 records the upstream's job id (what crash
recovery needs to resume it; skipped when the upstream answered at once); T3 `_finish` writes
the terminal state with the output files, the settlement or release and the webhook outbox
row. Everything else (routing, attempts, polls, notes, stage times) is progress kept on the
job's in-memory row, which the runner works from and `get`/`wait` answer from, and is written
with T2 or T3. Off the happy path, a job that must wait (for channel capacity, or a throttling
upstream) is marked `queued` first and `running` again before its next submit, so a crash
never re-sends a submit that may have reached an upstream, and a crash while it waits lets
the next runner submit it.

Replicas may share the database: a job runs in the one process holding its lease (`leases.py`).
This service claims the jobs it creates in the transaction that creates them, renews its leases
in one heartbeat (which is also how it learns that a job was canceled through another replica),
adopts unfinished jobs whose lease has passed (at start and then every `jobs.adopt_interval`:
their runner crashed or stopped) and releases its leases when it stops.

The module is longer than our usual ~400 lines on purpose: every step that touches a job's
state or money is here, where one reading shows all transitions. Pure work lives elsewhere:
parsing in `intake.py`, channel choice in `routing.py`, pixels in `gateway/images/`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import anyio
from sqlalchemy import Table, bindparam, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from adapters.base import (
    AdapterError,
    InputImage,
    UpstreamAmbiguous,
    UpstreamAuthError,
    UpstreamJob,
    UpstreamOutput,
    UpstreamRejected,
    UpstreamRequest,
    UpstreamState,
    UpstreamUnavailable,
)
from adapters.buckets import bucket_for_ratio, nearest_ratio, ratio_text
from billing import ledger
from billing.pricing import PriceTable, to_micro
from gateway import logcontext
from gateway.database import Writer, values_of
from gateway.errors import (
    ContentPolicy,
    GatewayError,
    InvalidRequest,
    ServiceUnavailable,
    Timeout,
    UpstreamError,
)
from gateway.families import Catalogue
from gateway.images.provenance import has_c2pa
from gateway.images.stitch import stitch
from gateway.jobs import channel_state, leases
from gateway.jobs.connections import job_error_code
from gateway.jobs.intake import expected_size
from gateway.jobs.model import JobOutput, JobSpec, JobStatus, OutputFormat, Stage
from gateway.jobs.provenance import ProvenancePolicy
from gateway.jobs.quotes import quote_job
from gateway.jobs.results import finish_result
from gateway.jobs.routing import Channel, Router
from gateway.jobs.tables import JobRow
from gateway.jobs.telemetry import JobTelemetry
from gateway.settings import JobSettings
from gateway.storage.files import FileStore
from gateway.storage.tables import FileRow
from gateway.webhooks.outbox import Outbox

log = logging.getLogger(__name__)


class _Superseded(Exception):
    """The job is no longer this task's to write: it ended elsewhere or changed runner."""


TERMINAL = [s.value for s in JobStatus if s.terminal]
UNFINISHED = [s.value for s in JobStatus if not s.terminal]
#: the tables: the pipeline's statements are Core (no ORM unit of work, no identity map)
_JOBS = cast(Table, JobRow.__table__)
_FILES = cast(Table, FileRow.__table__)


@functools.cache
def _update_statement(columns: tuple[str, ...], running_here: bool) -> Any:
    """The guarded UPDATE of a job's `columns`, built once per column set (so the hot path
    reuses the statement and SQLAlchemy's compiled form). `running_here`: only while it is
    unfinished and this runner's (or nobody's); else: only while it is not terminal."""
    guard = [_JOBS.c.id == bindparam("job_id")]
    if running_here:
        guard += [_JOBS.c.status.in_(UNFINISHED),
                  or_(_JOBS.c.runner == bindparam("job_runner"), _JOBS.c.runner.is_(None))]
    else:
        guard.append(_JOBS.c.status.not_in(TERMINAL))
    return update(_JOBS).where(*guard).values({c: bindparam(f"v_{c}") for c in columns})


#: what a running job gathers in memory and writes with its next write (T2 or T3)
_PROGRESS = ("stage", "channel", "upstream_model", "upstream_id", "poll_url", "upstream_handle",
             "attempts", "polls", "spec", "timeline", "outputs", "upstream_cost",
             "upstream_latency", "submitted_at")
_CANCEL_TIMEOUT = 15.0  # seconds for a best-effort upstream cancel
_DOWNLOAD_ATTEMPTS = 3  # a result download is a safe GET: retried on transient failures
_STITCH_MAX_PIXELS = 4_000_000  # Kontext works at ~1 MP; keeps the merged upload small

#: job error code -> the gateway error a synchronous caller receives
FAILURES: dict[str, type[GatewayError]] = {
    "content_policy_violation": ContentPolicy,
    "invalid_request": InvalidRequest,
    "timeout": Timeout,
    "no_channel": ServiceUnavailable,
    "upstream_unavailable": ServiceUnavailable,
}


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(dt: datetime | None) -> datetime | None:
    return dt.replace(tzinfo=UTC) if dt is not None and dt.tzinfo is None else dt


def _stage(row: JobRow, stage: Stage) -> None:
    """Record `stage` (and its time) on the in-memory row; written with the next write."""
    row.stage = stage.value
    row.timeline = [*row.timeline, {"stage": stage.value, "at": _now().isoformat()}]


def job_error(row: JobRow) -> GatewayError:
    """The error a synchronous caller gets for a failed job."""
    cls = FAILURES.get(row.error_code or "", UpstreamError)
    return cls(row.error_message or "The image could not be generated.", code=row.error_code)


@dataclass(frozen=True, slots=True)
class _Attempt:
    """How offering a job to one channel ended."""

    done: bool = False  # the job reached its end (accepted and followed, or failed for good)
    error: str | None = None
    retry_after: float | None = None  # the channel is throttling: worth another round


class JobService:
    """Creates jobs, runs them to a terminal state, and lets callers wait for them."""

    def __init__(self, *, sessions: async_sessionmaker[AsyncSession], router: Router,
                 files: FileStore, prices: PriceTable, settings: JobSettings,
                 moderation_fee: int = 0, outbox: Outbox | None = None,
                 writer: Writer | None = None,
                 observer: Callable[[JobRow], None] | None = None,
                 provenance: ProvenancePolicy | None = None,
                 catalogue: Catalogue | None = None,
                 telemetry: JobTelemetry | None = None) -> None:
        self.sessions = sessions  # reads; every write of a job goes through `writer`
        self.writer = writer or Writer(sessions, group_commit=False)
        self.outbox = outbox  # webhook deliveries, written in the terminal transaction
        self.observer = observer  # told of each job once it is terminal (metrics)
        self.telemetry = telemetry or JobTelemetry()  # stage times, upstream errors, spans
        self.router = router
        self.files = files
        self.prices = prices
        self.settings = settings
        self.moderation_fee = moderation_fee
        self.provenance = provenance  # what results carry (None: nothing, as `off`)
        self.catalogue = catalogue or Catalogue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._running: dict[str, asyncio.Task[None]] = {}  # job id -> its task
        self._live: dict[str, JobRow] = {}  # job id -> the row its task here works from
        self._done: dict[str, asyncio.Event] = {}
        self._closing = False
        self._draining = False  # a stop has begun: waits answer now, creates are refused
        self._creating = 0  # jobs admitted by `create` and not yet started
        self.runner_id = leases.runner_id()  # this process, in `jobs.runner`
        self._heartbeat: asyncio.Task[None] | None = None
        self._adopter: asyncio.Task[None] | None = None

    @property
    def running(self) -> int:
        """How many jobs run in this process now."""
        return len(self._running)

    def oldest_age(self) -> float:
        """Seconds since the oldest job running in this process was created (0: none)."""
        created = [r.created_at for r in self._live.values() if r.created_at is not None]
        if not created:
            return 0.0
        oldest = _aware(min(created, key=lambda c: _aware(c) or _now()))
        return max(0.0, (_now() - oldest).total_seconds()) if oldest is not None else 0.0

    @property
    def draining(self) -> bool:
        return self._draining

    def drain(self) -> None:
        """A stop has begun (see gateway/serving.py): every `wait` answers at once with the
        jobs as they stand, and `create` refuses new jobs (503). The jobs keep running until
        `close()`, which releases them to another replica."""
        self._draining = True
        for event in self._done.values():
            event.set()

    # -- creation -------------------------------------------------------------------------
    def quote(self, spec: JobSpec, size: tuple[int, int] | None = None) -> int:
        """Price of one job in micro-units (test-mode keys are never charged), for the size
        it asks (the reservation), or for the `size` it came back with (the settlement)."""
        return quote_job(self.prices, spec, size)

    def slots(self, channel: Channel, spec: JobSpec) -> int:
        """How many input images `channel` takes for the job's model, natively."""
        return min(channel.adapter.capabilities.inputs_for(spec.family),
                   self.catalogue.spec(spec.model).max_refs)

    async def create(self, specs: Sequence[JobSpec], *,
                     files: Sequence[FileRow] = ()) -> list[JobRow]:
        """Persist the jobs, their input `files` (staged by `FileStore.stage`) and their
        reservations in one transaction, then start them.

        Raises billing.errors.InsufficientFunds (nothing is created) when the balance cannot
        cover every job, ServiceUnavailable (503, Retry-After) when this process already runs
        `jobs.max_in_flight` jobs: back-pressure before anything is created or charged."""
        busy = len(self._running) + self._creating
        if self._closing or self._draining:
            raise ServiceUnavailable("The gateway is restarting; retry shortly.",
                                     code="shutting_down", retry_after=2)
        if busy + len(specs) > self.settings.max_in_flight:
            raise ServiceUnavailable(
                "The gateway is at capacity right now; retry shortly.", code="overloaded",
                retry_after=1)
        self._creating += len(specs)  # counted from now on: concurrent creates see them
        try:
            return await asyncio.shield(self._create(specs, files))
        finally:
            self._creating -= len(specs)

    async def _create(self, specs: Sequence[JobSpec], files: Sequence[FileRow]) -> list[JobRow]:
        """`create` once admitted; shielded, so a client that disconnects meanwhile cannot
        leave a created job unstarted. T1: one INSERT per table and the reservations."""
        now = _now()
        at = now.isoformat()
        rows = []
        for spec in specs:
            rows.append(JobRow(
                id=f"job_{secrets.token_hex(12)}", key_id=spec.key_id, batch_id=spec.batch_id,
                surface=spec.surface, status=JobStatus.RUNNING.value,
                stage=Stage.RESERVED.value, model=spec.model, operation=spec.operation,
                spec=spec.model_dump(mode="json"), prompt=spec.prompt,
                aspect_ratio=spec.aspect_ratio, seed=spec.seed, price=self.quote(spec),
                outputs=[], polls=0, attempts=0,
                timeline=[{"stage": Stage.CREATED.value, "at": at},
                          {"stage": Stage.RESERVED.value, "at": at}],
                created_at=now, updated_at=now,
                deadline_at=now + timedelta(seconds=self.settings.deadline),
                runner=self.runner_id, lease_until=self._lease_end(now)))
        job_values = [values_of(row) for row in rows]
        file_values = [values_of(f) for f in files]

        async def work(session: AsyncSession) -> None:
            if file_values:
                await session.execute(insert(_FILES), file_values)
            await session.execute(insert(_JOBS), job_values)
            for row in rows:
                if row.price > 0:
                    await ledger.reserve(session, row.key_id, row.id, row.price,
                                         model=row.model)

        await self.writer.run(work)
        self.telemetry.created(rows)
        for row in rows:
            self.start(row)
        return rows

    def start(self, row: JobRow, *, adopted: bool = False) -> None:
        """Run a job in the background (it outlives the request that created it), working
        from `row`. The caller holds the job's lease (created or adopted here); the heartbeat
        keeps it."""
        if self._heartbeat is None and not self._closing:
            self._heartbeat = asyncio.create_task(self._renew_leases(), name="jobs:heartbeat")
        self._done.setdefault(row.id, asyncio.Event())
        self._live[row.id] = row
        task = asyncio.create_task(self._run_guarded(row, adopted), name=f"job:{row.id}")
        self._tasks.add(task)
        self._running[row.id] = task
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(
            lambda t: self._running.pop(row.id) if self._running.get(row.id) is t else None)

    async def cancel(self, job_id: str) -> JobRow | None:
        """Cancel a job that is not terminal yet: it becomes `canceled` and its reservation is
        released (nothing is charged); its task is stopped and its upstream job, if one was
        submitted, is asked to cancel (best effort). A terminal job is left as it is. Answers
        the job as it stands afterwards (None for an unknown id). A job running on another
        replica stops there at its runner's next heartbeat (see `_renew_leases`)."""
        row = await self.get(job_id)
        if row is None or JobStatus(row.status).terminal:
            return row
        # stop the task first, so it cannot write over the canceled state; a job it finished
        # meanwhile stays finished (_finish is guarded)
        task = self._running.get(job_id)
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if not await self._finish(row, JobStatus.CANCELED, code="canceled",
                                  message="The job was canceled by the client."):
            return await self._read(job_id)  # it ended otherwise meanwhile
        channel = self.router.get(row.channel) if row.channel else None
        if row.upstream_id and channel is not None:
            await self._cancel_upstream(channel, UpstreamJob(
                id=row.upstream_id, poll_url=row.poll_url, handle=dict(row.upstream_handle or {})))
        return row

    # -- waiting --------------------------------------------------------------------------
    async def get(self, job_id: str) -> JobRow | None:
        """The job as it stands: from memory while it runs here, else from the database."""
        live = self._live.get(job_id)
        return live if live is not None else await self._read(job_id)

    async def _read(self, job_id: str) -> JobRow | None:
        async with self.sessions() as session:
            return await session.get(JobRow, job_id)

    async def wait(self, job_ids: Sequence[str], within: float | None = None) -> list[JobRow]:
        """The jobs once all are terminal, or as they stand after `within` seconds. A job
        running here is waited for in memory; one running elsewhere is read every 0.5 s."""
        deadline = time.monotonic() + (within or self.settings.sync_wait)
        found: dict[str, JobRow] = {}
        for job_id in job_ids:
            while True:
                live, event = self._live.get(job_id), self._done.get(job_id)
                if live is not None and event is not None:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(event.wait(),
                                               max(0.0, deadline - time.monotonic()))
                    if JobStatus(live.status).terminal or time.monotonic() >= deadline \
                            or self._draining:
                        found[job_id] = live
                        break
                    # its task here stopped unfinished: another replica runs it now
                row = await self._read(job_id)
                if row is None:
                    break
                found[job_id] = row
                remaining = deadline - time.monotonic()
                if JobStatus(row.status).terminal or self._closing or self._draining \
                        or remaining <= 0:
                    break
                await asyncio.sleep(min(remaining, 0.5))
        return [found[j] for j in job_ids if j in found]

    # -- lifecycle ------------------------------------------------------------------------
    async def _run_guarded(self, row: JobRow, adopted: bool) -> None:
        logcontext.job_id.set(row.id)  # this task's own context
        try:
            with self.telemetry.job(row):
                await self._run(row, adopted)
        except asyncio.CancelledError:
            raise
        except _Superseded as exc:
            log.info("job %s stopped here: %s", row.id, exc)
        except Exception as exc:  # a bug must not leave the job or its money hanging
            log.exception("job %s crashed", row.id)
            await self._fail(row, "internal_error", f"Internal error: {type(exc).__name__}")
        finally:
            if self._live.get(row.id) is row:
                del self._live[row.id]
            event = self._done.pop(row.id, None)
            if event is not None:
                event.set()

    async def _write_progress(self, row: JobRow, **values: Any) -> None:
        """Write `values` and the progress gathered in memory (one guarded UPDATE), then keep
        `values` on the row. Raises _Superseded instead when the job ended elsewhere or
        another runner took its lease: this task must stop rather than write over that."""
        now = _now()
        changes = {**{k: getattr(row, k) for k in _PROGRESS}, **values, "updated_at": now}

        stmt = _update_statement(tuple(sorted(changes)), True)
        params = {f"v_{k}": v for k, v in changes.items()}
        params.update(job_id=row.id, job_runner=self.runner_id)

        async def work(session: AsyncSession) -> bool:
            result = await session.execute(stmt, params)
            return bool(result.rowcount == 1)  # type: ignore[attr-defined]

        if not await self.writer.run(work):
            raise _Superseded("it ended elsewhere, or another runner holds it now")
        for key, value in changes.items():
            setattr(row, key, value)

    async def _run(self, row: JobRow, adopted: bool) -> None:
        if JobStatus(row.status).terminal:
            return
        spec = JobSpec.model_validate(row.spec)
        if row.upstream_id and row.channel:
            channel = self.router.get(row.channel)
            if channel is None:
                await self._fail(row, "upstream_error",
                                 f"Channel {row.channel!r} is no longer configured.")
                return
            async with channel.slot(spec.model):
                upstream = UpstreamJob(id=row.upstream_id, poll_url=row.poll_url,
                                       handle=dict(row.upstream_handle or {}))
                await self._follow(row, spec, channel, upstream)
            return
        if adopted and row.status == JobStatus.RUNNING.value:
            # we crashed after it was marked "may be at an upstream" and before the upstream's
            # answer was recorded: it may have been sent, so it is never sent again
            await self._fail(row, "upstream_ambiguous", "The job was interrupted while it "
                             "was being submitted; it was not charged.")
            return
        deadline = _aware(row.deadline_at)
        if deadline is not None and deadline <= _now():
            # found after its deadline (e.g. resumed after a long stop): never sent upstream
            await self._fail(row, "timeout", "The job's deadline passed before it could be "
                             "sent to an upstream; it was not charged.")
            return
        inputs = await self._load_inputs(spec)
        await self._submit(row, spec, inputs)

    async def _load_inputs(self, spec: JobSpec) -> list[InputImage]:
        images = []
        for file_id in spec.input_file_ids:
            file_row, data = await self.files.read(file_id)
            images.append(InputImage(data=data, mime=file_row.content_type,
                                     width=file_row.width or 0, height=file_row.height or 0))
        return images

    def _channels_for(self, spec: JobSpec, inputs: int) -> list[Channel]:
        """The failover order: channels taking every input natively first (routing order
        kept inside each group), then those that get the inputs stitched into one image."""
        if spec.key_mode == "test":
            test = self.router.test_channel
            return [test] if test is not None else []
        channels = self.router.candidates(spec.model, claim=False)  # claimed when tried
        return sorted(channels, key=lambda c: self.slots(c, spec) < inputs)

    async def _fit_inputs(self, row: JobRow, spec: JobSpec, channel: Channel,
                          inputs: list[InputImage], stitched: list[InputImage],
                          ) -> tuple[list[InputImage], JobSpec]:
        """The inputs to send to `channel`: as they are when it takes them all, else merged
        side by side into one image (heights equalised; cached in `stitched`). Stitching
        records a note on the job and, with no explicit ratio, asks for the first input's
        ratio (the stitched canvas is wider than the image being edited)."""
        slots = self.slots(channel, spec)
        if len(inputs) <= slots:
            return inputs, spec
        if not stitched:
            fmt: OutputFormat = "png"  # lossless: a JPEG input gets no second generation
            merged = await anyio.to_thread.run_sync(lambda: stitch(
                [i.data for i in inputs], output_format=fmt, max_pixels=_STITCH_MAX_PIXELS,
                max_bytes=max(len(i.data) for i in inputs),
                max_input_pixels=max(i.width * i.height for i in inputs)))
            stitched.append(InputImage(data=merged.data, mime=merged.mime,
                                       width=merged.width, height=merged.height))
            layout = ", ".join(f"#{t.index + 1} at x={t.x} ({t.width}x{t.height})"
                               for t in merged.layout)
            note = (f"channel {channel.name} takes {slots} input image(s): the {len(inputs)} "
                    f"inputs were stitched side by side into one {merged.width}x"
                    f"{merged.height} image ({layout})")
            signed = [str(i + 1) for i, image in enumerate(inputs) if has_c2pa(image.data)]
            if signed:  # never stripped silently (issue 10 item 8)
                note += (f"; the C2PA content credentials of input #{', #'.join(signed)} "
                         "were not kept in the stitched image")
            spec = spec.model_copy(update={"notes": [*spec.notes, note]})
            row.spec = spec.model_dump(mode="json")  # written with the job's next write
        if spec.aspect_ratio is None:
            first = inputs[0]
            w, h = bucket_for_ratio(first.width / first.height)
            spec = spec.model_copy(update={"aspect_ratio": ratio_text(w, h)})
        return stitched, spec

    def _request_for(self, spec: JobSpec, channel: Channel,
                     inputs: list[InputImage]) -> UpstreamRequest:
        caps = channel.adapter.capabilities
        ratio = spec.aspect_ratio
        if ratio and caps.aspect_ratios:
            w, h = ratio.split(":")
            ratio = nearest_ratio(float(w) / float(h), caps.aspect_ratios)
        fmt = spec.output_format if spec.output_format in caps.output_formats else "png"
        safety = spec.safety_tolerance
        if safety is not None:
            safety = min(max(safety, caps.safety_range[0]), caps.safety_range[1])
        first = (inputs[0].width, inputs[0].height) if inputs else None
        width, height = expected_size(spec.aspect_ratio, first)
        if spec.width and spec.height:  # FLUX.2's asked size, FLUX 3's expected one
            width, height = spec.width, spec.height
        if spec.family == "flux3":
            ratio = spec.aspect_ratio  # FLUX 3's own enum (family_rules), None = auto
        return UpstreamRequest(
            model=channel.upstream_model(spec.model), prompt=spec.prompt,
            operation=spec.operation, images=tuple(inputs), aspect_ratio=ratio,
            width=width, height=height,
            seed=None if spec.family == "flux3" else spec.seed, output_format=fmt,
            quality=spec.quality, safety_tolerance=safety,
            prompt_upsampling=spec.prompt_upsampling, extra=dict(spec.extra),
            family=spec.family, resolution=spec.resolution)

    async def _submit(self, row: JobRow, spec: JobSpec, inputs: list[InputImage]) -> None:
        """Offer the job to the channels in routing order until one accepts it. When every
        channel refused it and at least one only asked us to slow down (429 with
        Retry-After), wait and offer it again, at most `submit_rounds` times."""
        stitched: list[InputImage] = []
        last_error = "every channel refused the job"
        deadline = _aware(row.deadline_at) or _now() + timedelta(seconds=self.settings.deadline)
        for round_no in range(self.settings.submit_rounds):
            channels = self._channels_for(spec, len(inputs))
            if not channels:
                if round_no == 0:
                    await self._fail(row, "no_channel",
                                     f"No upstream channel can serve {spec.model} right now.")
                    return
                break
            throttled: float | None = None
            for channel in channels:
                attempt = await self._try_channel(row, spec, channel, inputs, stitched)
                if attempt.done:
                    return
                last_error = attempt.error or last_error
                if attempt.retry_after is not None:
                    throttled = max(throttled or 0.0, attempt.retry_after)
            remaining = (deadline - _now()).total_seconds()
            if throttled is None or round_no + 1 >= self.settings.submit_rounds:
                break
            wait = min(throttled * random.uniform(1.0, 1.2), self.settings.submit_backoff_max,
                       remaining - 1)
            if wait <= 0:
                break
            log.info("job %s: every channel is throttling; retrying in %.1f s", row.id, wait)
            # nothing is at an upstream now: a restart during the wait may submit it again
            await self._write_progress(row, status=JobStatus.QUEUED.value)
            await asyncio.sleep(wait)
        await self._fail(row, "upstream_unavailable",
                         f"No upstream could take the job: {last_error}")

    async def _try_channel(self, row: JobRow, spec: JobSpec, channel: Channel,
                           inputs: list[InputImage], stitched: list[InputImage]) -> _Attempt:
        """Submit to one channel and, once accepted, follow the job to its end (done=True).
        Refusals that another channel (or a later round) may not meet answer done=False."""
        if spec.mask_file_id and len(inputs) > self.slots(channel, spec):
            return _Attempt(error=f"channel {channel.name} would stitch the inputs, and a mask "
                            "cannot be placed on a stitched result")
        sent, sent_spec = await self._fit_inputs(row, spec, channel, inputs, stitched)
        if channel.would_wait(spec.model) and row.status == JobStatus.RUNNING.value:
            # it may wait long for a slot: a restart meanwhile may submit it again
            await self._write_progress(row, status=JobStatus.QUEUED.value)
        with self.telemetry.stage("queue", channel.name):
            await channel.acquire(spec.model)
        probing = channel.breaker.state == "half_open"
        if not channel.breaker.allow():  # opened, or its one probe was taken, meanwhile
            channel.release(spec.model)
            return _Attempt(error=f"channel {channel.name} is failing; its breaker is open")
        try:
            if row.status != JobStatus.RUNNING.value:  # "may be at an upstream" from now on
                await self._write_progress(row, status=JobStatus.RUNNING.value)
            row.attempts += 1
            logcontext.channel.set(channel.name)
            req = self._request_for(sent_spec, channel, sent)
            row.channel, row.upstream_model = channel.name, req.model
            _stage(row, Stage.ROUTED)
            started = time.monotonic()
            try:
                with self.telemetry.stage("submit", channel.name), \
                        anyio.fail_after(self.settings.submit_timeout):  # None: the adapter's
                    upstream = await channel.adapter.submit(req)
            except UpstreamAuthError as exc:
                reason = f"{exc.status or ''} {exc.message}".strip()
                try:  # for every replica, until an admin re-enables it
                    await channel_state.disable(self.sessions, channel, reason)
                except Exception as store_exc:  # disabled here at least; the job goes on
                    channel.disable(reason)
                    log.warning("could not store channel %s's state: %s", channel.name,
                                type(store_exc).__name__)
                return _Attempt(error=exc.message)
            except UpstreamRejected as exc:
                if exc.code == "unsupported_request":  # this channel can't; another may
                    return _Attempt(error=exc.message)
                if not exc.retryable:
                    channel.breaker.success()  # the upstream works; the request is bad
                    code = exc.code if exc.code == "content_policy_violation" \
                        else "invalid_request"
                    await self._fail(row, code, exc.message)
                    return _Attempt(done=True)
                if exc.status == 429:  # overloaded, not broken: back off, keep the breaker
                    return _Attempt(error=exc.message, retry_after=exc.retry_after or 1.0)
                channel.breaker.failure()
                return _Attempt(error=exc.message)
            except (UpstreamAmbiguous, TimeoutError) as exc:
                channel.breaker.failure()
                await self._fail(row, "upstream_ambiguous",
                                 "The upstream did not answer the submit in time; the job "
                                 f"was not re-sent and not charged ({exc}).")
                return _Attempt(done=True)
            channel.breaker.success()
            row.upstream_id, row.poll_url = upstream.id, upstream.poll_url
            row.upstream_handle, row.submitted_at = dict(upstream.handle), _now()
            _stage(row, Stage.SUBMITTED)
            if not upstream.state.terminal:  # T2: what a resumed job needs to follow it
                try:
                    await self._write_progress(row)
                except _Superseded:  # canceled while it was being submitted: nobody will use it
                    await self._cancel_upstream(channel, upstream)
                    raise
            # the inputs are at the upstream now (and in storage): don't hold up to 4 x 20 MB
            # in memory for the minutes the job may run
            del req, sent
            inputs.clear()
            stitched.clear()
            await self._follow(row, spec, channel, upstream, started=started)
            return _Attempt(done=True)
        finally:
            if probing:  # a probe that ended without success() or failure() is given back
                channel.breaker.abandon_probe()
            channel.release(spec.model)

    async def _follow(self, row: JobRow, spec: JobSpec, channel: Channel,
                      upstream: UpstreamJob, started: float | None = None) -> None:
        """Poll until the upstream job is terminal, then store or fail it. Every wait and
        every poll is bounded by the job's deadline; polls follow the upstream's hint
        (Retry-After), else back off with jitter and within `jobs.poll_rate` polls per second
        for the whole process, and are counted in memory only."""
        started = started or time.monotonic()
        deadline = _aware(row.deadline_at) or _now() + timedelta(seconds=self.settings.deadline)
        interval = self.settings.poll_initial
        with self.telemetry.stage("upstream", channel.name):
            while not upstream.state.terminal:
                remaining = (deadline - _now()).total_seconds()
                if remaining <= 0:
                    await self._time_out(row, channel, upstream)
                    return
                # the upstream's hint wins (it may ask for less, or for more after a 429/503)
                # ...else back off, never faster than the process's poll budget allows
                own = max(interval, len(self._running) / self.settings.poll_rate)
                wait = upstream.retry_after if upstream.retry_after is not None \
                    else own * random.uniform(0.8, 1.2)
                await asyncio.sleep(max(0.01, min(wait, remaining)))
                interval = min(interval * 1.5, self.settings.poll_max)
                remaining = (deadline - _now()).total_seconds()
                if remaining <= 0:
                    await self._time_out(row, channel, upstream)
                    return
                try:
                    upstream.retry_after = None  # a hint holds for one poll only
                    with anyio.fail_after(remaining):
                        upstream = await channel.adapter.poll(upstream)
                except TimeoutError:
                    await self._time_out(row, channel, upstream)
                    return
                except UpstreamUnavailable as exc:
                    log.warning("job %s: poll failed (%s); retrying", row.id, exc.message)
                    self.telemetry.upstream_error(channel.name, "upstream", exc)
                    upstream.retry_after = min(exc.retry_after, 60.0) if exc.retry_after else None
                    continue
                row.polls += 1
                if upstream.progress is not None:  # the upstream's own (per-step) progress
                    row.upstream_handle = {**(row.upstream_handle or {}),
                                           "progress": upstream.progress}
        row.upstream_latency = round(time.monotonic() - started, 3)
        cost = channel.cost_per_image
        if cost is None and upstream.cost is not None:
            cost = to_micro(upstream.cost)
        row.upstream_cost = cost
        _stage(row, Stage.UPSTREAM_DONE)
        if upstream.state is UpstreamState.SUCCEEDED:
            await self._store(row, spec, channel, upstream)
        elif upstream.state is UpstreamState.MODERATED:
            await self._fail(row, "content_policy_violation",
                             upstream.error_message or "The request was rejected by the "
                             "upstream's safety filter.", fee=self.moderation_fee)
        elif upstream.state is UpstreamState.NOT_FOUND:
            await self._fail(row, "upstream_error", upstream.error_message or
                             "The upstream no longer knows this job.")
        elif upstream.state is UpstreamState.CANCELED:
            await self._fail(row, "upstream_error", "The upstream canceled the job.")
        else:
            await self._fail(row, job_error_code(upstream.error_code),
                             upstream.error_message or "The upstream failed the job.")

    async def _time_out(self, row: JobRow, channel: Channel, upstream: UpstreamJob) -> None:
        """The deadline passed: the job fails now; the upstream is asked to cancel afterwards,
        in the background, so the deadline holds however slow the upstream is."""
        self.telemetry.upstream_error(channel.name, "upstream", TimeoutError())
        await self._fail(row, "timeout", "The upstream did not finish the image "
                         f"within {self.settings.deadline:.0f} s.")
        task = asyncio.create_task(self._cancel_upstream(channel, upstream),
                                   name=f"cancel:{row.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _cancel_upstream(self, channel: Channel, upstream: UpstreamJob) -> None:
        """Best effort: an upstream that cannot be reached to cancel does not change how the
        job ends (it still times out and is released)."""
        try:
            with anyio.fail_after(_CANCEL_TIMEOUT):
                await channel.adapter.cancel(upstream)
        except (AdapterError, TimeoutError) as exc:
            log.warning("cancel of upstream job %s failed: %s", upstream.id, exc)

    async def _download(self, channel: Channel, output: UpstreamOutput) -> bytes:
        """The result's bytes within `download_timeout` in total. A download is a safe GET:
        a transient failure (UpstreamUnavailable) is retried, at most `_DOWNLOAD_ATTEMPTS`
        times with jittered backoff; an expired URL (UpstreamRejected) is not. Raises the
        last error, or TimeoutError."""
        with self.telemetry.stage("download", channel.name), \
                anyio.fail_after(self.settings.download_timeout):
            for attempt in range(1, _DOWNLOAD_ATTEMPTS + 1):
                try:
                    return await channel.adapter.download(output)
                except UpstreamUnavailable as exc:
                    if attempt == _DOWNLOAD_ATTEMPTS:
                        raise
                    log.warning("download attempt %d failed (%s); retrying", attempt,
                                exc.message)
                    self.telemetry.upstream_error(channel.name, "download", exc)
                    await asyncio.sleep(random.uniform(0, 0.5 * 2 ** attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    async def _store(self, row: JobRow, spec: JobSpec, channel: Channel,
                     upstream: UpstreamJob) -> None:
        outputs: list[JobOutput] = []
        staged: list[FileRow] = []
        try:
            for output in upstream.outputs:
                data = output.data if output.data is not None \
                    else await self._download(channel, output)
                with self.telemetry.stage("store", channel.name):
                    try:  # format, ratio, quality and mask as asked (gateway/images/output.py)
                        done = await finish_result(self.files, spec, data,
                                                   fit=channel.settings.fit,
                                                   provenance=self.provenance,
                                                   channel_type=channel.kind)
                    except InvalidRequest as exc:
                        raise UpstreamRejected(f"the result is unusable: {exc.message}") \
                            from exc
                    data, size = done.data, (done.width, done.height)
                    if done.notes:  # what the output pipeline changed, after the job's notes
                        row.spec = {**row.spec,
                                    "notes": [*row.spec.get("notes", []), *done.notes]}
                    stored = await self.files.stage(data, done.mime, kind="output",
                                                    job_id=row.id, key_id=row.key_id, size=size)
                staged.append(stored)
                outputs.append(JobOutput(file_id=stored.id, ext=stored.ext,
                                         content_type=stored.content_type, width=size[0],
                                         height=size[1], size=stored.size,
                                         storage_key=stored.storage_key))
        except (UpstreamRejected, UpstreamUnavailable, TimeoutError) as exc:
            message = getattr(exc, "message", None) or "the download timed out"
            await self._fail(row, job_error_code(getattr(exc, "code", None)),
                             f"The result could not be downloaded from the upstream: {message}")
            return
        if not outputs:
            await self._fail(row, "upstream_error", "The upstream returned no image.")
            return
        row.outputs = [o.model_dump() for o in outputs]
        _stage(row, Stage.STORED)
        # a size-priced model is settled on what came back (never above the reservation)
        charge = min(row.price, self.quote(spec, (outputs[0].width, outputs[0].height)))
        await self._finish(row, JobStatus.SUCCEEDED, files=staged, charge=charge)

    async def _finish(self, row: JobRow, status: JobStatus, *, code: str | None = None,
                      message: str | None = None, fee: int = 0,
                      files: Sequence[FileRow] = (), charge: int | None = None) -> bool:
        """T3: move a job to a terminal state, with its output `files`, and settle or release
        its money, atomically. Answers False when the job was already terminal (nothing
        happens twice); on success the terminal state is kept on `row`.

        A job with a `webhook_url` gets its one webhook delivery row in that same transaction
        (so it exists exactly when the job is terminal); the worker is told after commit."""
        now = _now()
        succeeded = status is JobStatus.SUCCEEDED
        stage = Stage.SETTLED if succeeded else Stage.RELEASED
        charged = (row.price if charge is None else charge) if succeeded \
            else min(max(fee, 0), row.price)
        ours = self._live.get(row.id) is row  # its progress is ours to write, not a stale read
        changes: dict[str, Any] = {k: getattr(row, k) for k in _PROGRESS} if ours else {}
        changes.update(status=status.value, error_code=code, error_message=message,
                       finished_at=now, updated_at=now, stage=stage.value, charged=charged,
                       timeline=[*row.timeline, {"stage": stage.value, "at": now.isoformat()}])
        # what the webhook payload shows (only built for a job that has a webhook)
        final = JobRow(**{**values_of(row), **changes}) \
            if self.outbox is not None and (row.spec or {}).get("webhook_url") else None
        file_values = [values_of(f) for f in files]

        stmt = _update_statement(tuple(sorted(changes)), False)
        params = {f"v_{k}": v for k, v in changes.items()}
        params["job_id"] = row.id

        async def work(session: AsyncSession) -> tuple[bool, bool]:
            result = await session.execute(stmt, params)
            if result.rowcount != 1:  # type: ignore[attr-defined]
                return False, False
            if file_values:
                await session.execute(insert(_FILES), file_values)
            if row.price > 0:
                if succeeded:
                    await ledger.settle(session, row.key_id, row.id, charged,
                                        upstream_cost=row.upstream_cost)
                else:
                    await ledger.release(session, row.key_id, row.id, fee=charged, note=code)
            queued = await self.outbox.add(session, final) \
                if self.outbox is not None and final is not None else None
            return True, queued is not None

        with self.telemetry.stage("settle", row.channel):
            done, queued = await self.writer.run(work)
        if not done:
            return False
        for key, value in changes.items():
            setattr(row, key, value)
        if queued and self.outbox is not None:
            self.outbox.notify()
        if self.observer is not None:
            try:
                self.observer(row)
            except Exception:  # metrics never stop a job
                log.exception("the job observer failed")
        return True

    async def _fail(self, row: JobRow, code: str, message: str, *, fee: int = 0) -> None:
        log.info("job %s failed: %s: %s", row.id, code, message)
        await self._finish(row, JobStatus.FAILED, code=code, message=message, fee=fee)

    # -- leases: start-up, heartbeat, adoption, shutdown ------------------------------------
    def _lease_end(self, now: datetime) -> datetime:
        return now + timedelta(seconds=self.settings.lease)

    async def resume(self) -> int:
        """Adopt every unfinished job that no live runner holds (found after a restart: the
        lease was released at a graceful stop, or has passed since a crash) and from now on
        look again every `adopt_interval` until `close()`. Answers how many it adopted now."""
        adopted = await self._adopt()
        if self._adopter is None and not self._closing:
            self._adopter = asyncio.create_task(self._adopt_forever(), name="jobs:adopt")
        return adopted

    async def _adopt(self) -> int:
        """Claim (one guarded UPDATE each, in one transaction) and start the jobs whose lease
        has passed."""
        async with self.sessions() as session:
            ids = [i for i in await leases.expired_ids(session, _now())
                   if i not in self._running]  # ours: the heartbeat was late, and renews it
        if not ids:
            return 0
        now = _now()

        async def work(session: AsyncSession) -> list[str]:
            return [job_id for job_id in ids
                    if await leases.claim(session, job_id, self.runner_id, now,
                                          self._lease_end(now))]

        claimed = await self.writer.run(work)  # others: another replica was first, or ended
        async with self.sessions() as session:
            rows = (await session.execute(select(JobRow).where(JobRow.id.in_(claimed))
                                          .order_by(JobRow.created_at))).scalars().all()
        for row in rows:
            self.start(row, adopted=True)
        if rows:
            log.info("adopted %d unfinished jobs", len(rows))
        return len(rows)

    async def _adopt_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.adopt_every)
            try:
                await self._adopt()
            except Exception:  # the database may be briefly unavailable; look again later
                log.exception("looking for jobs to adopt failed")

    async def _renew_leases(self) -> None:
        """The heartbeat: every lease/3 s, renew the leases of the jobs running here (one
        UPDATE). A job that ended elsewhere (canceled through another replica) or whose lease
        another runner took (this process stalled past its lease) is no longer this
        process's: its task here is stopped, and the job is not failed."""
        while True:
            await asyncio.sleep(self.settings.lease / 3)
            ids = list(self._running)
            if not ids:
                continue
            until = self._lease_end(_now())
            try:
                lost = await self.writer.run(functools.partial(
                    leases.renew, job_ids=ids, runner=self.runner_id, until=until))
            except Exception:  # harmless until a whole lease passes without a renewal
                log.exception("renewing job leases failed")
                continue
            for job_id in lost:
                task, live = self._running.get(job_id), self._live.get(job_id)
                # (a job that simply finished here during the renewal is not "lost")
                if task is not None and not task.done() and live is not None \
                        and not JobStatus(live.status).terminal:
                    log.warning("job %s: it ended elsewhere, or its lease passed to another "
                                "runner; stopped here", job_id)
                    task.cancel()

    async def close(self, *, release: bool = True) -> None:
        """Stop the running jobs, the heartbeat and adoption. With `release` (a graceful stop)
        this process's leases are given up, so the next start or another replica adopts its
        jobs at once. `release=False` leaves what a crash leaves behind: leases that other
        replicas honour until they pass."""
        self._closing = True
        loops = [t for t in (self._adopter, self._heartbeat) if t is not None]
        self._adopter = self._heartbeat = None
        for task in [*loops, *self._tasks]:
            task.cancel()
        await asyncio.gather(*loops, *self._tasks, return_exceptions=True)
        if not release:
            return
        try:
            released = await self.writer.run(
                lambda session: leases.release(session, self.runner_id))
        except Exception:  # shutdown goes on; the leases then pass on their own
            log.exception("releasing job leases failed")
            return
        if released:
            log.info("released %d unfinished jobs for adoption", released)
