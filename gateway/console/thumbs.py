"""Thumbnails of a job's images (inputs, mask, outputs) for the console's gallery: made once
with Pillow (in a thread), stored through the file store's storage as a `thumb` file row
whose id is derived from its source's (`thumb_id`), and read from there afterwards. The
browser never scales full-size images. Rows of kind `thumb` are not judged by the orphan
sweep (it judges inputs, masks and outputs only)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import weakref
from datetime import UTC, datetime

import anyio
from PIL import Image, ImageOps
from sqlalchemy.exc import IntegrityError

from gateway.storage.base import StorageError
from gateway.storage.files import FileStore
from gateway.storage.tables import FileRow

EDGE = 320  # the longer side of a thumbnail, pixels
MAX_SOURCE_PIXELS = 64_000_000  # stored images are already within the input limits


def thumb_id(source_id: str) -> str:
    return "thumb_" + source_id.removeprefix("file_")


def make_thumbnail(data: bytes) -> tuple[bytes, tuple[int, int]]:
    """A WebP no larger than EDGE x EDGE of the image in `data`; raises OSError/ValueError."""
    with Image.open(io.BytesIO(data)) as im:
        if im.width * im.height > MAX_SOURCE_PIXELS:
            raise ValueError("image too large for a thumbnail")
        im.draft("RGB", (EDGE, EDGE))  # JPEG: decode at a reduced scale
        small = ImageOps.exif_transpose(im)
        small.thumbnail((EDGE, EDGE))
        if small.mode not in ("RGB", "RGBA", "L"):
            small = small.convert("RGBA" if "A" in small.getbands() else "RGB")
        out = io.BytesIO()
        small.save(out, "WEBP", quality=78, method=4)
        return out.getvalue(), small.size


class Thumbnails:
    """Finds or makes the thumbnail of a stored file."""

    def __init__(self, files: FileStore) -> None:
        self.files = files
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary())

    async def get(self, source: FileRow) -> bytes:
        """The thumbnail's bytes (WebP), made and stored on the first call for `source`;
        raises StorageError, OSError or ValueError when the source cannot be read."""
        tid = thumb_id(source.id)
        lock = self._locks.setdefault(tid, asyncio.Lock())
        async with lock:
            async with self.files.sessions() as db:
                row = await db.get(FileRow, tid)
            if row is not None:
                try:
                    return await self.files.blob(row.storage_key)
                except StorageError:
                    pass  # its bytes are gone: make it again below
            data, size = await anyio.to_thread.run_sync(
                make_thumbnail, await self.files.blob(source.storage_key))
            await self._store(tid, source, data, size, replace=row is not None)
            return data

    async def _store(self, tid: str, source: FileRow, data: bytes, size: tuple[int, int], *,
                     replace: bool) -> None:
        key = f"thumb/{datetime.now(UTC):%Y/%m/%d}/{tid}.webp"
        await self.files.storage.put(key, data, "image/webp")
        try:
            async with self.files.sessions.begin() as db:
                if replace:
                    old = await db.get(FileRow, tid)
                    if old is not None:
                        await db.delete(old)
                        await db.flush()
                db.add(FileRow(id=tid, kind="thumb", job_id=source.job_id,
                               key_id=source.key_id, ext="webp", content_type="image/webp",
                               size=len(data), width=size[0], height=size[1],
                               sha256=hashlib.sha256(data).hexdigest(), storage_key=key,
                               created_at=datetime.now(UTC), name=source.id))
        except IntegrityError:  # another replica stored it meanwhile: keep theirs
            await self.files.storage.delete(key)
