"""S3-compatible storage (AWS S3, MinIO, Cloudflare R2...) through aiobotocore.

The bucket stays private: the gateway still serves every file itself at `/files/{id}.{ext}`
with its own signed URLs, so no S3 URL is ever handed out and the bucket needs no public access.
The credentials need s3:PutObject, s3:GetObject and s3:DeleteObject on `{prefix}/*`, and
s3:ListBucket on the bucket for the orphan sweep (`storage.sweep_interval`).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any, Literal

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from gateway.storage.base import ObjectMissing, StorageError, StoredObject

#: error codes that mean "no such object" (GetObject answers NoSuchKey; a HEAD-style 404 too)
_MISSING = frozenset({"NoSuchKey", "404", "NotFound"})


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class S3Storage:
    """Objects under `prefix/` in one bucket. Call `start()` before use and `aclose()` after."""

    def __init__(self, *, bucket: str, prefix: str = "", region: str | None = None,
                 endpoint_url: str | None = None, access_key: str | None = None,
                 secret_key: str | None = None,
                 addressing_style: Literal["auto", "virtual", "path"] = "auto",
                 connect_timeout: float = 5.0, read_timeout: float = 30.0,
                 max_attempts: int = 3) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.name = (f"s3:{endpoint_url.rstrip('/') + '/' if endpoint_url else ''}{bucket}"
                     f"{'/' + self.prefix if self.prefix else ''}")
        self._client_args: dict[str, Any] = {
            "region_name": region, "endpoint_url": endpoint_url,
            "aws_access_key_id": access_key, "aws_secret_access_key": secret_key,
            "config": AioConfig(connect_timeout=connect_timeout, read_timeout=read_timeout,
                                retries={"max_attempts": max_attempts, "mode": "standard"},
                                s3={"addressing_style": addressing_style}),
        }
        self._stack = AsyncExitStack()
        self._client: Any = None  # aiobotocore's S3 client (untyped)

    async def start(self) -> None:
        """Create the client (its connection pool lives on the running event loop)."""
        if self._client is None:
            session = get_session()
            self._client = await self._stack.enter_async_context(
                session.create_client("s3", **self._client_args))

    async def probe(self) -> None:
        """Prove the bucket takes writes, with only the permissions the storage needs: put and
        delete a small object under the prefix. Raises StorageError naming S3's error code."""
        client = self._require_client()
        key = self.object_key(f".fluxgate-probe/{uuid.uuid4().hex}")
        try:
            await client.put_object(Bucket=self.bucket, Key=key, Body=b"probe",
                                    ContentType="text/plain")
            await client.delete_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            raise StorageError(f"bucket {self.bucket!r} at {self.name} refused a test write: "
                               f"{_error_code(exc) or exc}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"bucket {self.bucket!r} at {self.name} is unreachable: "
                               f"{type(exc).__name__}") from exc

    async def aclose(self) -> None:
        self._client = None
        await self._stack.aclose()

    def object_key(self, key: str) -> str:
        """The bucket key of our storage key: `{prefix}/{key}`."""
        parts = key.split("/")
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise StorageError(f"invalid storage key: {key!r}")
        return f"{self.prefix}/{key}" if self.prefix else key

    def _require_client(self) -> Any:
        if self._client is None:
            raise StorageError("S3 storage is not started")
        return self._client

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        client = self._require_client()
        try:
            await client.put_object(Bucket=self.bucket, Key=self.object_key(key), Body=data,
                                    ContentType=content_type)
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"S3 put {key!r} failed: {exc}") from exc

    async def get(self, key: str) -> bytes:
        client = self._require_client()
        try:
            resp = await client.get_object(Bucket=self.bucket, Key=self.object_key(key))
            async with resp["Body"] as body:
                data: bytes = await body.read()
        except ClientError as exc:
            if _error_code(exc) in _MISSING:
                raise ObjectMissing(key) from exc
            raise StorageError(f"S3 get {key!r} failed: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"S3 get {key!r} failed: {exc}") from exc
        return data

    async def delete(self, key: str) -> None:
        """Idempotent: deleting a missing object is not an error (S3 answers 204 either way)."""
        client = self._require_client()
        try:
            await client.delete_object(Bucket=self.bucket, Key=self.object_key(key))
        except ClientError as exc:
            if _error_code(exc) in _MISSING:
                return
            raise StorageError(f"S3 delete {key!r} failed: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"S3 delete {key!r} failed: {exc}") from exc

    async def scan(self) -> AsyncIterator[StoredObject]:
        """Every object under `prefix/` (ListObjectsV2, 1,000 a page), keys without the
        prefix. Raises StorageError when listing fails."""
        client = self._require_client()
        start = f"{self.prefix}/" if self.prefix else ""
        try:
            paginator = client.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=start):
                for item in page.get("Contents", []):
                    yield StoredObject(item["Key"][len(start):], item["LastModified"])
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"S3 list {self.bucket!r} failed: {exc}") from exc
