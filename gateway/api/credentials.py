"""GET /files/{id}/credentials: what a stored result carries about its origin (README,
"Provenance"): the IPTC digital source type in its XMP and its C2PA manifest as c2pa's reader
validates it, against the operator's trust anchors (`provenance.trust_anchors_file`).

Only the key the file belongs to may ask; any other key gets the same 404 as a missing file.
"""

from __future__ import annotations

from typing import Any

import anyio
from fastapi import APIRouter

from gateway.api.deps import PrincipalDep, ServicesDep
from gateway.api.openapi import OPENAI_ERRORS
from gateway.errors import NotFound
from gateway.images.credentials import describe
from gateway.storage.base import ObjectMissing

router = APIRouter(responses=OPENAI_ERRORS)


@router.get("/files/{file_id}/credentials", tags=["files"])
async def file_credentials(file_id: str, principal: PrincipalDep,
                           services: ServicesDep) -> dict[str, Any]:
    """The file's provenance: `digital_source_type` (XMP, null when absent) and `c2pa` (the
    active manifest's validation state, generator, signer, actions and ingredients; null
    when the file has no manifest)."""
    missing = NotFound(f"No file {file_id!r}.", param="file_id", code="file_not_found")
    try:
        row = await services.files.row(file_id.partition(".")[0])
    except NotFound:
        raise missing from None
    if row.key_id != principal.key_id:
        raise missing
    try:
        data = await services.files.storage.get(row.storage_key)
    except ObjectMissing as exc:
        raise missing from exc
    anchors = services.jobs.provenance.trust_anchors if services.jobs.provenance else None
    found = await anyio.to_thread.run_sync(lambda: describe(data, trust_anchors=anchors))
    return {"object": "file.credentials", "id": row.id, "content_type": row.content_type,
            **found}
