"""OpenAI-shaped async image tasks: submit, get an id, poll (`GET /v1/images/tasks/{id}`).

For clients behind proxies that cut a request after ~100 s (Cloudflare, corporate proxies):
`POST /v1/images/generations` or `/v1/images/edits` with the header `Prefer: respond-async`
(RFC 7240, as Replicate's API takes it) or the body field `"async": true` answers at once with
**202** and an `ImageTask` (its `polling_url` also in `Location`). The jobs run as they would
for a synchronous call (same checks, money, idempotency, webhooks); only the answer differs.

The task follows the vocabulary of OpenAI's own long-running objects (videos, background
responses): `status` is `queued`, `in_progress`, `completed`, `failed` or `cancelled`;
`progress` is 0-100 (coarse: from the jobs' stages); a completed task's `result` is exactly the
images response the synchronous call answers (in the request's `response_format`, carried by
`polling_url`; without it both `url` and `b64_json`), a failed one's `error` is the OpenAI error
object the synchronous call would have raised. A task of `n` images completes when every job
has ended and at least one succeeded (only those are returned and billed, as synchronously).
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from gateway.api.deps import PrincipalDep, Services, ServicesDep
from gateway.api.errors import error_body
from gateway.api.openapi import OPENAI_ERRORS
from gateway.api.schemas import ImagesResponse
from gateway.errors import NotFound
from gateway.jobs.batches import batch_jobs
from gateway.jobs.intake import parse_bool
from gateway.jobs.model import JobStatus, Stage
from gateway.jobs.service import job_error
from gateway.jobs.tables import JobRow

router = APIRouter(responses=OPENAI_ERRORS, tags=["openai"])

TASK_PREFIX = "imgtask_"
_BATCH_PREFIX = "batch_"
TaskStatus = Literal["queued", "in_progress", "completed", "failed", "cancelled"]
#: coarse progress (percent) of a running job by stage
_PROGRESS = {Stage.CREATED.value: 0, Stage.RESERVED.value: 0, Stage.ROUTED.value: 5,
             Stage.SUBMITTED.value: 10, Stage.UPSTREAM_DONE.value: 90, Stage.STORED.value: 95}


class ImageTaskError(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ImageTask(BaseModel):
    """An async image request (`POST ... Prefer: respond-async`) and, once done, its result."""

    id: str
    object: Literal["image.task"] = "image.task"
    status: TaskStatus
    progress: int
    model: str
    created: int  # unix seconds, as in ImagesResponse (also parsed by SDKs that see a 202)
    created_at: int
    completed_at: int | None = None
    polling_url: str
    result: ImagesResponse | None = None
    error: ImageTaskError | None = None


#: `responses=` entry of the creating routes for their async answer
ACCEPTED: dict[int | str, dict[str, Any]] = {202: {
    "model": ImageTask,
    "description": "Accepted: an async task to poll (`Prefer: respond-async` or `async`)",
    "headers": {"location": {"description": "The task's polling_url.",
                             "schema": {"type": "string"}}}}}


def wants_async(request: Request, field: object) -> bool:
    """Whether the caller asked for a task: `Prefer: respond-async` (any of its preferences,
    RFC 7240) or a true `async` field (`true`, `"true"`, `1`...); InvalidRequest for a value
    that is no boolean."""
    for header in request.headers.getlist("prefer"):
        tokens = (part.split(";")[0].split("=")[0].strip().lower() for part in header.split(","))
        if "respond-async" in tokens:
            return True
    if field is None or field == "":
        return False
    return parse_bool(field, param="async")


def task_id_of(rows: list[JobRow]) -> str:
    batch = rows[0].batch_id or ""
    return TASK_PREFIX + batch.removeprefix(_BATCH_PREFIX)


def polling_url(services: Services, task_id: str, response_format: str | None) -> str:
    """Where the task is polled: absolute, on the public base URL, carrying the request's
    `response_format` (so the result comes back as the request asked)."""
    base = f"{services.settings.resolved_public_base_url}/v1/images/tasks/{task_id}"
    return f"{base}?response_format={response_format}" if response_format else base


def _status(rows: list[JobRow]) -> TaskStatus:
    states = [JobStatus(r.status) for r in rows]
    if not all(s.terminal for s in states):
        moving = any(s is JobStatus.RUNNING or _PROGRESS.get(r.stage, 0) > 0
                     for s, r in zip(states, rows, strict=True))
        return "in_progress" if moving else "queued"
    if JobStatus.SUCCEEDED in states:
        return "completed"
    return "cancelled" if all(s is JobStatus.CANCELED for s in states) else "failed"


def _progress(rows: list[JobRow]) -> int:
    done = [100 if JobStatus(r.status).terminal else _PROGRESS.get(r.stage, 0) for r in rows]
    return sum(done) // len(done)


async def task_body(services: Services, rows: list[JobRow], response_format: str | None,
                    ) -> ImageTask:
    """The task of an order's jobs as they stand now (`rows` non-empty)."""
    from gateway.api.images import images_response  # images imports this module

    status = _status(rows)
    task_id = task_id_of(rows)
    created = int(min(r.created_at for r in rows).timestamp())
    task = ImageTask(id=task_id, status=status, model=rows[0].model, created=created,
                     created_at=created, progress=100 if status == "completed"
                     else _progress(rows),
                     polling_url=polling_url(services, task_id, response_format))
    if status in ("completed", "failed", "cancelled"):
        ends = [r.finished_at for r in rows if r.finished_at is not None]
        task.completed_at = int(max(ends).timestamp()) if ends else int(time.time())
    if status == "completed":
        task.result = ImagesResponse.model_validate(
            await images_response(services, rows, response_format))
    elif status in ("failed", "cancelled"):
        failed = next(r for r in rows if JobStatus(r.status).terminal)
        task.error = ImageTaskError.model_validate(error_body(job_error(failed))["error"])
    return task


async def accepted(services: Services, rows: list[JobRow], response_format: str | None,
                   ) -> JSONResponse:
    """The 202 answer of a creating call that asked for a task."""
    task = await task_body(services, rows, response_format)
    return JSONResponse(task.model_dump(mode="json", exclude_none=True), status_code=202,
                        headers={"location": task.polling_url})


@router.get("/v1/images/tasks/{task_id}", response_model=ImageTask,
            response_model_exclude_none=True)
async def get_task(task_id: str, principal: PrincipalDep, services: ServicesDep,
                   response_format: Annotated[Literal["url", "b64_json"] | None, Query(
                       description="url or b64_json; absent: both")] = None,
                   ) -> dict[str, Any]:
    """The state of an async image task of this key; once `completed`, its images. An
    unknown id, or another key's task, is a 404. Polls do not count against the key's
    requests per minute."""
    rows = []
    if task_id.startswith(TASK_PREFIX) and len(task_id) <= 64:
        rows = await batch_jobs(services.sessions,
                                _BATCH_PREFIX + task_id.removeprefix(TASK_PREFIX),
                                principal.key_id)
    if not rows:
        raise NotFound(f"No image task {task_id!r}.", param="task_id", code="task_not_found")
    task = await task_body(services, rows, response_format)
    return task.model_dump(mode="json", exclude_none=True)
