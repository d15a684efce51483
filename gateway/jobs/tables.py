"""ORM row of a job: everything needed to resume it after a restart, and who runs it now.

`runner` names the process running the job and `lease_until` how long its claim holds without
renewal (gateway/jobs/leases.py): another replica adopts a non-terminal job only once its lease
has passed (NULL counts as passed: rows from before leases, or released at shutdown)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Float, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from gateway.database import GatewayBase


class JobRow(GatewayBase):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_key_created", "key_id", "created_at"),
        Index("ix_jobs_status", "status"),
        Index("ix_jobs_batch", "batch_id"),
        Index("ix_jobs_status_lease", "status", "lease_until"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(32))
    batch_id: Mapped[str | None] = mapped_column(String(40), default=None)
    surface: Mapped[str] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(16))
    stage: Mapped[str] = mapped_column(String(20))
    model: Mapped[str] = mapped_column(String(100))
    operation: Mapped[str] = mapped_column(String(16))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)  # the JobSpec, verbatim
    prompt: Mapped[str] = mapped_column(Text)
    aspect_ratio: Mapped[str | None] = mapped_column(String(16), default=None)
    seed: Mapped[int | None] = mapped_column(BigInteger, default=None)
    channel: Mapped[str | None] = mapped_column(String(100), default=None)
    upstream_model: Mapped[str | None] = mapped_column(String(200), default=None)
    upstream_id: Mapped[str | None] = mapped_column(String(200), default=None)
    poll_url: Mapped[str | None] = mapped_column(Text, default=None)
    upstream_handle: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    polls: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # submits tried (failover)
    outputs: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    error_code: Mapped[str | None] = mapped_column(String(64), default=None)
    error_message: Mapped[str | None] = mapped_column(Text, default=None)
    price: Mapped[int] = mapped_column(BigInteger, default=0)  # micro-units held/charged
    charged: Mapped[int | None] = mapped_column(BigInteger, default=None)  # set when settled
    upstream_cost: Mapped[int | None] = mapped_column(BigInteger, default=None)
    upstream_latency: Mapped[float | None] = mapped_column(Float, default=None)
    timeline: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    submitted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    deadline_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    runner: Mapped[str | None] = mapped_column(String(64), default=None)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)


class ChannelStateRow(GatewayBase):
    """A channel disabled by an upstream's 401/402/403 or by an admin: kept across restarts
    and read by every replica (see gateway/jobs/channel_state.py). No row = enabled."""

    __tablename__ = "channel_states"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    disabled_reason: Mapped[str] = mapped_column(Text)
    disabled_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
