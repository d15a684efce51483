"""ORM row of the webhook outbox: one delivery per terminal job that asked for a webhook."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from gateway.database import GatewayBase


class WebhookDeliveryRow(GatewayBase):
    """A durable webhook delivery. `id` is the stable event id sent as `webhook-id`.

    `status`: pending -> delivered | failed (schedule exhausted, kept for replay) | disabled
    (the receiver answered 410). `lease_token`/`lease_until` mark a claimed attempt: another
    worker may take the row only once the lease has passed (a crashed worker's claim expires).
    `secret` is the per-request secret sealed with `SecretBox` (None: the gateway secret).
    `endpoint` is `scheme://host:port` of `url` (`outbox.endpoint_of`), what the worker's
    per-endpoint concurrency limit counts (None on rows written before it existed).
    """

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
                      Index("ix_webhook_deliveries_endpoint", "status", "endpoint"))

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(40), unique=True)  # exactly one per job
    url: Mapped[str] = mapped_column(Text)
    endpoint: Mapped[str | None] = mapped_column(String(300), default=None)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    secret: Mapped[str | None] = mapped_column(Text, default=None)
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    lease_token: Mapped[str | None] = mapped_column(String(40), default=None)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    last_status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
