"""The webhook outbox: the delivery row written with a job's terminal transition.

`Outbox.add(session, job)` is called by `JobService._finish` inside the transaction that moves
the job to its terminal state, so a terminal job with a `webhook_url` has exactly one delivery
row (the `job_id` column is unique) and never none. The payload is frozen at that moment.

Payload (minified JSON, UTF-8):

    {"id": "job_...", "type": "image.completed" | "image.failed",
     "status": "succeeded" | "failed" | "canceled", "created": <unix s>, "finished": <unix s>,
     "model": "flux-kontext-pro", "seed": 42,
     "data": [{"url": "<signed gateway URL>", "width": 1024, "height": 1024}],
     "error": null | {"code": "content_policy_violation", "message": "..."}}
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.jobs.model import JobStatus
from gateway.jobs.tables import JobRow
from gateway.storage.files import FileStore
from gateway.webhooks.tables import WebhookDeliveryRow

PENDING = "pending"
DELIVERED = "delivered"
FAILED = "failed"
DISABLED = "disabled"


def endpoint_of(url: str) -> str:
    """`scheme://host:port` of a webhook URL, lower-case, the default port filled in: the unit
    the delivery worker's per-endpoint concurrency limit counts. Never raises (an unparsable
    URL is its own endpoint; its attempts fail anyway)."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return url[:300]
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    port = port or {"http": 80, "https": 443}.get(scheme, 0)
    return f"{scheme}://{host}:{port}"[:300]


def _now() -> datetime:
    return datetime.now(UTC)


def new_event_id() -> str:
    """A fresh `msg_...` event id (no '.', as `webhook-id` requires)."""
    return f"msg_{secrets.token_hex(12)}"


def _unix(dt: datetime | None) -> int | None:
    if dt is None:
        return None
    return int((dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp())


def job_payload(job: JobRow, files: FileStore) -> dict[str, Any]:
    """The webhook body of a terminal job (see the module docstring)."""
    succeeded = job.status == JobStatus.SUCCEEDED.value
    data = [{"url": files.url(o["file_id"], o["ext"]), "width": o["width"],
             "height": o["height"]} for o in (job.outputs if succeeded else [])]
    error = None if succeeded else {"code": job.error_code or "upstream_error",
                                    "message": job.error_message or ""}
    return {"id": job.id, "type": "image.completed" if succeeded else "image.failed",
            "status": job.status, "created": _unix(job.created_at),
            "finished": _unix(job.finished_at), "model": job.model, "seed": job.seed,
            "data": data, "error": error}


class Outbox:
    """Writes webhook deliveries in the caller's transaction; tells listeners (the delivery
    worker) after the caller committed, via `notify()`."""

    def __init__(self, files: FileStore, *, clock: Callable[[], datetime] = _now) -> None:
        self.files = files
        self.clock = clock
        self._listeners: list[Callable[[], None]] = []

    def subscribe(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def notify(self) -> None:
        for listener in self._listeners:
            listener()

    async def add(self, session: AsyncSession, job: JobRow) -> WebhookDeliveryRow | None:
        """The delivery row for terminal `job`, added to `session` (None without a
        webhook_url). The job's spec carries the URL (checked when the request was accepted)
        and, sealed, its per-request secret."""
        spec = job.spec or {}
        url = spec.get("webhook_url")
        if not url:
            return None
        now = self.clock()
        row = WebhookDeliveryRow(
            id=new_event_id(), job_id=job.id, url=url, endpoint=endpoint_of(url),
            payload=job_payload(job, self.files),
            secret=spec.get("webhook_secret"), status=PENDING, attempts=0, next_attempt_at=now,
            created_at=now, updated_at=now)
        session.add(row)
        return row


async def replay(session: AsyncSession, delivery_id: str, now: datetime) -> bool:
    """Make a failed or disabled delivery pending again, due at `now`, with a fresh schedule
    (same event id); answers False when there is no such finished delivery."""
    result = await session.execute(
        update(WebhookDeliveryRow).where(WebhookDeliveryRow.id == delivery_id,
                                         WebhookDeliveryRow.status.in_([FAILED, DISABLED]))
        .values(status=PENDING, attempts=0, next_attempt_at=now, lease_token=None,
                lease_until=None, updated_at=now))
    replayed: bool = result.rowcount == 1  # type: ignore[attr-defined]
    return replayed
