"""The Storage protocol: where re-hosted bytes live (local disk, S3-compatible)."""

from __future__ import annotations

from typing import Protocol


class StorageError(Exception):
    """A storage operation failed."""


class ObjectMissing(StorageError):
    """No object under that key."""


class Storage(Protocol):
    """Bytes by key. Keys are relative, `/`-separated paths chosen by the gateway."""

    name: str  # for the start-up log, e.g. "local:/srv/fluxgate/files"

    async def put(self, key: str, data: bytes, content_type: str) -> None: ...

    async def get(self, key: str) -> bytes:
        """The object's bytes; raises ObjectMissing."""
        ...

    async def delete(self, key: str) -> None: ...
