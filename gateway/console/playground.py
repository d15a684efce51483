"""The playground: a form that makes images through the public API (`/v1/images/generations`
or `/v1/images/edits` with `Prefer: respond-async`, then `/v1/images/tasks/{id}`) with the
session's key, sent in-process by the server, so the key never reaches the browser.

A customer uses its own key. The operator has no key of its own: the playground uses a
test-mode key (the sandbox upstream, no money) that the console makes once; its plaintext is
kept sealed in the key row's `meta` (`SecretBox`, the session codec's key), never shown."""

from __future__ import annotations

import re
from typing import Any

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import select
from starlette.datastructures import UploadFile

from billing import keys
from billing.tables import ApiKeyRow
from gateway import models as catalogue
from gateway.api.deps import Services, ServicesDep
from gateway.api.schemas import RATIOS
from gateway.console.access import PostDep, SessionDep, codec_of
from gateway.console.render import page
from gateway.console.session import ConsoleSession
from gateway.jobs.batches import batch_jobs
from gateway.webhooks.signing import SecretError

router = APIRouter()

PLAYGROUND_KEY = "console playground"
OWNER = "fluxgate console"
TASK_ID = re.compile(r"imgtask_[A-Za-z0-9]{1,56}")
TEXT_FIELDS = ("model", "prompt", "n", "seed", "output_format", "aspect_ratio", "size")


async def playground_key(request: Request, services: Services,
                         session: ConsoleSession) -> tuple[str, str]:
    """(key id, plaintext) the playground submits with for `session`."""
    if not session.operator:
        assert session.key_id is not None and session.key is not None
        return session.key_id, session.key
    codec = codec_of(request, services)
    async with services.sessions.begin() as db:
        rows = (await db.execute(select(ApiKeyRow).where(
            ApiKeyRow.name == PLAYGROUND_KEY, ApiKeyRow.owner == OWNER,
            ApiKeyRow.mode == "test", ApiKeyRow.revoked_at.is_(None),
            ApiKeyRow.disabled.is_(False)))).scalars().all()
        for row in rows:
            try:
                return row.id, codec.open(str((row.meta or {}).get("console_sealed", "")))
            except SecretError:
                continue  # sealed under another secret: make a new one
        created = await keys.create_key(db, name=PLAYGROUND_KEY, owner=OWNER, mode="test")
        created.row.meta = {"console_sealed": codec.seal(created.plaintext)}
        return created.row.id, created.plaintext


def _client(request: Request) -> httpx.AsyncClient:
    """A client that calls this same app in-process (the public API path, middleware
    included), as the browser's own address."""
    host = request.client.host if request.client else "127.0.0.1"
    transport = httpx.ASGITransport(app=request.app, client=(host, 0))
    return httpx.AsyncClient(transport=transport, base_url=str(request.base_url),
                             timeout=httpx.Timeout(120.0))


@router.get("/console/playground")
async def playground(request: Request, services: ServicesDep, session: SessionDep) -> Response:
    served = set(services.router.models())
    models = [(m.id, m.description, m.id in served) for m in catalogue.MODELS]
    key_id, _ = await playground_key(request, services, session)
    return page(request, "playground.html", session, models=models, ratios=RATIOS,
                key_id=key_id, base_url=str(request.base_url).rstrip("/"))


def _proxied(answer: httpx.Response) -> Response:
    return Response(answer.content, status_code=answer.status_code,
                    media_type=answer.headers.get("content-type", "application/json"),
                    headers={"cache-control": "no-store"})


@router.post("/console/playground/submit")
async def submit(request: Request, services: ServicesDep, session: PostDep) -> Response:
    """Forward the playground's form to the images API as an async task; answers the API's
    own answer (202 and the task, or its error)."""
    form = await request.form()
    _, key = await playground_key(request, services, session)
    fields = {name: value.strip() for name in TEXT_FIELDS
              if isinstance(value := form.get(name), str) and value.strip()}
    images = [part for part in form.getlist("image") if isinstance(part, UploadFile)]
    mask = form.get("mask")
    headers = {"authorization": f"Bearer {key}", "prefer": "respond-async"}
    async with _client(request) as client:
        if images:
            files: list[tuple[str, tuple[str, bytes, str]]] = [
                ("image[]", (part.filename or f"image{i}.png", await part.read(),
                             part.content_type or "application/octet-stream"))
                for i, part in enumerate(images)]
            if isinstance(mask, UploadFile):
                files.append(("mask", ("mask.png", await mask.read(), "image/png")))
            answer = await client.post("/v1/images/edits", data=fields, files=files,
                                       headers=headers)
        else:
            body: dict[str, Any] = dict(fields)
            for name in ("n", "seed"):
                if name in body:
                    body[name] = int(body[name]) if body[name].lstrip("-").isdigit() \
                        else body[name]
            answer = await client.post("/v1/images/generations", json=body, headers=headers)
    return _proxied(answer)


@router.get("/console/playground/tasks/{task_id}")
async def task(task_id: str, request: Request, services: ServicesDep,
               session: SessionDep) -> Response:
    """The task as `GET /v1/images/tasks/{id}` answers it for the playground's key, with the
    ids of its jobs (`jobs`) for links to their pages."""
    if not TASK_ID.fullmatch(task_id):
        return JSONResponse({"error": {"message": "No such task.", "type": "invalid_request_error",
                                       "param": "task_id", "code": "task_not_found"}},
                            status_code=404)
    key_id, key = await playground_key(request, services, session)
    async with _client(request) as client:
        answer = await client.get(f"/v1/images/tasks/{task_id}",
                                  params={"response_format": "url"},
                                  headers={"authorization": f"Bearer {key}"})
    if answer.status_code != 200:
        return _proxied(answer)
    body = answer.json()
    batch = "batch_" + task_id.removeprefix("imgtask_")
    body["jobs"] = [r.id for r in await batch_jobs(services.sessions, batch, key_id)]
    return JSONResponse(body, headers={"cache-control": "no-store"})
