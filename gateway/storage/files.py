"""The file store: bytes in `Storage`, a `FileRow` per file, and signed URLs for outputs."""

from __future__ import annotations

import hashlib
import io
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import anyio
from PIL import Image
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.errors import NotFound
from gateway.storage.base import Storage
from gateway.storage.signing import UrlSigner
from gateway.storage.tables import FileRow

EXT_BY_TYPE = {"image/png": "png", "image/jpeg": "jpeg", "image/webp": "webp",
               "image/gif": "gif"}


@dataclass(frozen=True, slots=True)
class StoredFile:
    id: str
    ext: str
    content_type: str
    size: int
    width: int | None
    height: int | None


def stored_file(row: FileRow) -> StoredFile:
    return StoredFile(row.id, row.ext, row.content_type, row.size, row.width, row.height)


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the header, or None when Pillow cannot read it."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


class FileStore:
    """Stores files and signs their URLs."""

    def __init__(self, storage: Storage, sessions: async_sessionmaker[AsyncSession],
                 signer: UrlSigner) -> None:
        self.storage = storage
        self.sessions = sessions
        self.signer = signer

    async def stage(self, data: bytes, content_type: str, *, kind: str,
                    job_id: str | None = None, key_id: str | None = None,
                    size: tuple[int, int] | None = None, name: str | None = None,
                    meta: dict[str, Any] | None = None) -> FileRow:
        """Store `data` and answer its row, NOT yet recorded: the caller inserts it in its own
        transaction (the job pipeline writes a job's files with the job). A blob whose row is
        never committed (a crash in between) is an orphan for the storage sweep."""
        file_id = f"file_{secrets.token_urlsafe(18).replace('-', 'a').replace('_', 'b')}"
        ext = EXT_BY_TYPE.get(content_type, "bin")
        if size is None:
            size = await anyio.to_thread.run_sync(image_size, data)
        storage_key = f"{kind}/{datetime.now(UTC):%Y/%m/%d}/{file_id}.{ext}"
        await self.storage.put(storage_key, data, content_type)
        return FileRow(id=file_id, kind=kind, job_id=job_id, key_id=key_id, ext=ext,
                       content_type=content_type, size=len(data),
                       width=size[0] if size else None, height=size[1] if size else None,
                       sha256=hashlib.sha256(data).hexdigest(), storage_key=storage_key,
                       created_at=datetime.now(UTC), name=name, meta=meta)

    async def put(self, data: bytes, content_type: str, *, kind: str, job_id: str | None = None,
                  key_id: str | None = None, size: tuple[int, int] | None = None,
                  name: str | None = None, meta: dict[str, Any] | None = None) -> StoredFile:
        """Store `data` and record it (with an upload's client-side `name` and `meta`) in a
        transaction of its own; answers the file's id and facts."""
        row = await self.stage(data, content_type, kind=kind, job_id=job_id, key_id=key_id,
                               size=size, name=name, meta=meta)
        async with self.sessions.begin() as session:
            session.add(row)
        return stored_file(row)

    async def row(self, file_id: str) -> FileRow:
        async with self.sessions() as session:
            row = await session.get(FileRow, file_id)
        if row is None:
            raise NotFound(f"No file {file_id!r}.", code="file_not_found")
        return row

    async def blob(self, storage_key: str) -> bytes:
        """A stored file's bytes by its storage key (no database read)."""
        return await self.storage.get(storage_key)

    async def read(self, file_id: str) -> tuple[FileRow, bytes]:
        row = await self.row(file_id)
        return row, await self.storage.get(row.storage_key)

    def url(self, file_id: str, ext: str) -> str:
        return self.signer.url(file_id, ext)
