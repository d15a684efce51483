"""GET /files/{id}.{ext}: re-hosted files behind HMAC-signed, expiring URLs (no auth)."""

from __future__ import annotations

from fastapi import APIRouter, Query
from fastapi.responses import Response

from gateway.api.deps import ServicesDep
from gateway.errors import NotFound, PermissionDenied
from gateway.storage.base import ObjectMissing

router = APIRouter()


@router.api_route("/files/{name}", methods=["GET", "HEAD"], include_in_schema=False)
async def get_file(name: str, services: ServicesDep, exp: int = Query(0),
                   sig: str = Query("")) -> Response:
    """The file's bytes with its sniffed Content-Type; 403 for a bad or expired signature."""
    if not services.files.signer.verify(name, exp, sig):
        raise PermissionDenied("This file URL is invalid or has expired.", code="url_expired")
    file_id, _, ext = name.partition(".")
    row = await services.files.row(file_id)
    if row.ext != ext:
        raise NotFound(f"No file {name!r}.", code="file_not_found")
    try:
        data = await services.files.storage.get(row.storage_key)
    except ObjectMissing as exc:
        raise NotFound(f"No file {name!r}.", code="file_not_found") from exc
    return Response(content=data, media_type=row.content_type, headers={
        "x-content-type-options": "nosniff",
        "cache-control": "private, max-age=86400",
        "etag": f'"{row.sha256[:32]}"',
        "content-disposition": f'inline; filename="{name}"',
    })
