"""The console's job gallery (thumbnails of inputs, mask and outputs; filters; pages) and a
job's page (timeline, attempts, notes, money, webhook delivery; cancel, replay the webhook).
A customer sees its own key's jobs only: another key's job or file is a 403."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import select

from billing.tables import ApiKeyRow, LedgerRow
from gateway import models as catalogue
from gateway.api.deps import Services, ServicesDep
from gateway.console.access import ConsoleDenied, OperatorPostDep, PostDep, SessionDep
from gateway.console.render import page
from gateway.console.session import ConsoleSession
from gateway.console.thumbs import Thumbnails
from gateway.jobs.model import JobStatus
from gateway.jobs.tables import JobRow
from gateway.storage.base import StorageError
from gateway.storage.tables import FileRow
from gateway.webhooks.tables import WebhookDeliveryRow

router = APIRouter()

PAGE = 24  # jobs per page by default; `per` asks for 6 to 96
PER_PAGE = (6, 96)
STATUSES = [s.value for s in JobStatus]


def images_of(row: JobRow) -> list[tuple[str, str]]:
    """(role, file id) of a job's images: inputs, mask, outputs."""
    spec = row.spec or {}
    out = [("input", fid) for fid in spec.get("input_file_ids") or []]
    if spec.get("mask_file_id"):
        out.append(("mask", spec["mask_file_id"]))
    out += [("output", o["file_id"]) for o in row.outputs or [] if o.get("file_id")]
    return out


def _day(value: str | None) -> date | None:
    try:
        return date.fromisoformat(value) if value else None
    except ValueError:
        return None


def filters_of(request: Request, session: ConsoleSession) -> dict[str, str]:
    q = request.query_params
    found = {name: q[name] for name in ("key_id", "model", "status", "since", "until", "per")
             if q.get(name)}
    if not session.operator:
        if found.get("key_id") not in (None, session.key_id):
            raise ConsoleDenied("A key's console shows its own jobs only.")
        found.pop("key_id", None)
    return found


def per_page(filters: dict[str, str]) -> int:
    try:
        return min(max(int(filters.get("per", PAGE)), PER_PAGE[0]), PER_PAGE[1])
    except ValueError:
        return PAGE


async def _jobs(services: Services, session: ConsoleSession, filters: dict[str, str],
                page_no: int) -> tuple[list[JobRow], bool]:
    query = select(JobRow).order_by(JobRow.created_at.desc(), JobRow.id.desc())
    key_id = session.key_id if not session.operator else filters.get("key_id")
    if key_id:
        query = query.where(JobRow.key_id == key_id)
    if filters.get("model"):
        query = query.where(JobRow.model == filters["model"])
    if filters.get("status"):
        query = query.where(JobRow.status == filters["status"])
    since, until = _day(filters.get("since")), _day(filters.get("until"))
    if since:
        query = query.where(JobRow.created_at >= datetime(since.year, since.month, since.day,
                                                          tzinfo=UTC))
    if until:
        end = until + timedelta(days=1)
        query = query.where(JobRow.created_at < datetime(end.year, end.month, end.day,
                                                         tzinfo=UTC))
    async with services.sessions() as db:
        size = per_page(filters)
        rows = list((await db.execute(query.offset(page_no * size).limit(size + 1))).scalars())
    return rows[:size], len(rows) > size


@router.get("/console/jobs")
async def gallery(request: Request, services: ServicesDep, session: SessionDep) -> Response:
    filters = filters_of(request, session)
    try:
        page_no = max(0, int(request.query_params.get("page", "0")))
    except ValueError:
        page_no = 0
    rows, more = await _jobs(services, session, filters, page_no)
    key_names: dict[str, str] = {}
    if session.operator:
        async with services.sessions() as db:
            key_names = {r.id: r.name for r in (await db.execute(select(ApiKeyRow))).scalars()}
    next_url = (f"/console/jobs?{urlencode({**filters, 'page': page_no + 1})}" if more
                else None)
    return page(request, "jobs.html", session, jobs=[(r, images_of(r)) for r in rows],
                filters=filters, models=[m.id for m in catalogue.MODELS], statuses=STATUSES,
                key_names=key_names, next_url=next_url, page_no=page_no)


async def _own_job(services: Services, session: ConsoleSession, job_id: str) -> JobRow:
    async with services.sessions() as db:
        row = await db.get(JobRow, job_id)
    if row is None:
        raise ConsoleDenied(f"No job with id {job_id!r}.", 404)
    if not session.operator and row.key_id != session.key_id:
        raise ConsoleDenied("This job belongs to another key.")
    return row


@router.get("/console/jobs/{job_id}")
async def job_page(job_id: str, request: Request, services: ServicesDep,
                   session: SessionDep) -> Response:
    row = await _own_job(services, session, job_id)
    async with services.sessions() as db:
        ledger = (await db.execute(select(LedgerRow).where(LedgerRow.job_id == job_id)
                                   .order_by(LedgerRow.id))).scalars().all()
        delivery = (await db.execute(select(WebhookDeliveryRow).where(
            WebhookDeliveryRow.job_id == job_id))).scalar_one_or_none()
    spec: dict[str, Any] = row.spec or {}
    outputs = [{**o, "url": services.files.url(o["file_id"], o["ext"])}
               for o in row.outputs or [] if o.get("file_id")]
    return page(request, "job.html", session, job=row, spec=spec, images=images_of(row),
                outputs=outputs, ledger=ledger, delivery=delivery,
                terminal=JobStatus(row.status).terminal, done=request.query_params.get("done"))


@router.post("/console/jobs/{job_id}/cancel")
async def cancel(job_id: str, services: ServicesDep, session: PostDep) -> Response:
    """Cancel a job that has not finished (its reservation is released)."""
    await _own_job(services, session, job_id)
    await services.jobs.cancel(job_id)
    return RedirectResponse(f"/console/jobs/{job_id}?done=Canceled.", status_code=303)


@router.post("/console/jobs/{job_id}/replay")
async def replay(job_id: str, services: ServicesDep, session: OperatorPostDep) -> Response:
    """Send the job's failed or disabled webhook again (a new attempt schedule)."""
    async with services.sessions() as db:
        delivery = (await db.execute(select(WebhookDeliveryRow).where(
            WebhookDeliveryRow.job_id == job_id))).scalar_one_or_none()
    if delivery is None:
        raise ConsoleDenied("This job has no webhook to replay.", 404)
    done = ("Webhook queued again." if await services.webhooks.worker.replay(delivery.id)
            else "Only a failed or disabled webhook can be replayed.")
    return RedirectResponse(f"/console/jobs/{job_id}?done={done}", status_code=303)


async def _own_file(services: Services, session: ConsoleSession, file_id: str) -> FileRow:
    async with services.sessions() as db:
        row = await db.get(FileRow, file_id)
    if row is None or row.kind == "thumb":
        raise ConsoleDenied(f"No file {file_id!r}.", 404)
    if not session.operator and row.key_id != session.key_id:
        raise ConsoleDenied("This file belongs to another key.")
    return row


def thumbnails(request: Request, services: Services) -> Thumbnails:
    found: Thumbnails | None = getattr(request.app.state, "console_thumbs", None)
    if found is None or found.files is not services.files:
        found = request.app.state.console_thumbs = Thumbnails(services.files)
    return found


@router.get("/console/thumbs/{file_id}")
async def thumb(file_id: str, request: Request, services: ServicesDep,
                session: SessionDep) -> Response:
    """The stored thumbnail of one of the session's files (WebP)."""
    source = await _own_file(services, session, file_id)
    try:
        data = await thumbnails(request, services).get(source)
    except (StorageError, OSError, ValueError) as exc:
        raise ConsoleDenied("This image cannot be shown.", 404) from exc
    return Response(data, media_type="image/webp",
                    headers={"cache-control": "private, max-age=86400"})


@router.get("/console/files/{file_id}")
async def full_image(file_id: str, services: ServicesDep, session: SessionDep) -> Response:
    """One of the session's stored images at full size."""
    row = await _own_file(services, session, file_id)
    try:
        data = await services.files.blob(row.storage_key)
    except StorageError as exc:
        raise ConsoleDenied("This image is no longer stored.", 404) from exc
    return Response(data, media_type=row.content_type,
                    headers={"cache-control": "private, max-age=3600"})
