"""The Storage protocol: where re-hosted bytes live (local disk, S3-compatible)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


class StorageError(Exception):
    """A storage operation failed."""


class ObjectMissing(StorageError):
    """No object under that key."""


@dataclass(frozen=True, slots=True)
class StoredObject:
    """One object as a listing shows it: its key and when it was last written (UTC)."""

    key: str
    modified: datetime


class Storage(Protocol):
    """Bytes by key. Keys are relative, `/`-separated paths chosen by the gateway."""

    name: str  # for the start-up log, e.g. "local:/srv/fluxgate/files"

    async def put(self, key: str, data: bytes, content_type: str) -> None: ...

    async def get(self, key: str) -> bytes:
        """The object's bytes; raises ObjectMissing."""
        ...

    async def delete(self, key: str) -> None: ...

    def scan(self) -> AsyncIterator[StoredObject]:
        """Every object under the storage's root or prefix, including half-written leftovers
        of crashed writes, in no particular order (for the orphan sweep)."""
        ...
