"""Local-disk storage: one file per object under a root directory, written atomically."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import anyio

from gateway.storage.base import ObjectMissing, StorageError, StoredObject


class LocalStorage:
    """Objects as files under `root`; writes go to a temporary name and are renamed."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.name = f"local:{self.root}"

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root not in path.parents:
            raise StorageError(f"storage key escapes the root: {key!r}")
        return path

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        path = self._path(key)

        def write() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)

        await anyio.to_thread.run_sync(write)

    async def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return await anyio.Path(path).read_bytes()
        except FileNotFoundError as exc:
            raise ObjectMissing(key) from exc

    async def delete(self, key: str) -> None:
        try:
            await anyio.Path(self._path(key)).unlink()
        except FileNotFoundError:
            pass

    async def scan(self) -> AsyncIterator[StoredObject]:
        """Every file under the root (temporary `.name.uuid.tmp` files of interrupted writes
        too), one directory read at a time in a worker thread."""

        def read(directory: Path) -> tuple[list[Path], list[StoredObject]]:
            dirs: list[Path] = []
            found: list[StoredObject] = []
            try:
                entries = list(os.scandir(directory))
            except FileNotFoundError:
                return dirs, found
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        dirs.append(Path(entry.path))
                    elif entry.is_file(follow_symlinks=False):
                        key = Path(entry.path).relative_to(self.root).as_posix()
                        found.append(StoredObject(key, datetime.fromtimestamp(
                            entry.stat(follow_symlinks=False).st_mtime, UTC)))
                except FileNotFoundError:  # removed while we looked
                    continue
            return dirs, found

        pending = [self.root]
        while pending:
            dirs, found = await anyio.to_thread.run_sync(read, pending.pop())
            pending.extend(dirs)
            for obj in found:
                yield obj
