"""ORM row of a stored file (job outputs and user inputs)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from gateway.database import GatewayBase


class FileRow(GatewayBase):
    __tablename__ = "files"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # output | input | mask | upload
    job_id: Mapped[str | None] = mapped_column(String(40), default=None, index=True)
    key_id: Mapped[str | None] = mapped_column(String(32), default=None)
    ext: Mapped[str] = mapped_column(String(8))
    content_type: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    width: Mapped[int | None] = mapped_column(Integer, default=None)
    height: Mapped[int | None] = mapped_column(Integer, default=None)
    sha256: Mapped[str] = mapped_column(String(64))
    storage_key: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # uploads (Replicate-style `POST /v1/files`): the client's file name and metadata object
    name: Mapped[str | None] = mapped_column(String(255), default=None)
    meta: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
