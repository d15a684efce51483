"""ORM rows owned by billing: API keys and the ledger (their own metadata)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class BillingBase(DeclarativeBase):
    """Declarative base of billing's tables."""


class ApiKeyRow(BillingBase):
    """An API key. The plaintext is never stored: `hash` is sha256 of it."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    owner: Mapped[str | None] = mapped_column(String(200), default=None)
    hash: Mapped[str] = mapped_column(String(64), unique=True)
    display: Mapped[str] = mapped_column(String(40))  # "fk_live_AbCd...wxyz"
    mode: Mapped[str] = mapped_column(String(8), default="live")  # live | test
    balance: Mapped[int] = mapped_column(BigInteger, default=0)  # micro-units
    unlimited: Mapped[bool] = mapped_column(Boolean, default=False)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    models: Mapped[list[str] | None] = mapped_column(JSON, default=None)
    ip_allow: Mapped[list[str] | None] = mapped_column(JSON, default=None)
    rpm: Mapped[int | None] = mapped_column(Integer, default=None)
    max_concurrency: Mapped[int | None] = mapped_column(Integer, default=None)
    price_group: Mapped[str | None] = mapped_column(String(64), default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    meta: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    # off | metadata | signed: what this key's results carry (NULL: price group's, else default)
    provenance: Mapped[str | None] = mapped_column(String(16), default=None)


class LedgerRow(BillingBase):
    """One change of a key's balance. The balance always equals the sum of its rows."""

    __tablename__ = "ledger"
    __table_args__ = (
        UniqueConstraint("job_id", "kind", name="uq_ledger_job_kind"),
        UniqueConstraint("terminal_of", name="uq_ledger_terminal_of"),
        Index("ix_ledger_key_created", "key_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key_id: Mapped[str] = mapped_column(String(32), index=True)
    job_id: Mapped[str | None] = mapped_column(String(40), default=None)
    # topup | reserve | settle | release | refund | adjustment
    kind: Mapped[str] = mapped_column(String(16))
    amount: Mapped[int] = mapped_column(BigInteger)  # signed micro-units
    upstream_cost: Mapped[int | None] = mapped_column(BigInteger, default=None)
    model: Mapped[str | None] = mapped_column(String(100), default=None)
    note: Mapped[str | None] = mapped_column(String(200), default=None)
    # the job id on a job's one terminal row (settle or release), NULL elsewhere: its unique
    # constraint makes "settled or released, never both" hold across concurrent writers
    terminal_of: Mapped[str | None] = mapped_column(String(40), default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class IdempotencyRow(BillingBase):
    """A client's `Idempotency-Key`, scoped to its API key, and the answer to replay."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (
        UniqueConstraint("key_id", "idem_key", name="uq_idempotency_scope"),
        Index("ix_idempotency_created", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key_id: Mapped[str] = mapped_column(String(32))
    idem_key: Mapped[str] = mapped_column(String(255))
    fingerprint: Mapped[str] = mapped_column(String(64))  # sha256 of the canonical request
    state: Mapped[str] = mapped_column(String(16))  # in_progress | completed
    status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    response_body: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)
    response_headers: Mapped[dict[str, str] | None] = mapped_column(JSON, default=None)
    job_id: Mapped[str | None] = mapped_column(String(40), default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
