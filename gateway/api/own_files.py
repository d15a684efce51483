"""Input images given as this gateway's own file URLs: read from storage, never over HTTP.

Shared by every surface that takes image URLs from clients which may hand back a URL the
gateway gave them (chat shells re-sending an earlier result, the replicate client sending the
`urls.get` of a file it uploaded to `POST /replicate/v1/files`).
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from gateway.api.deps import Principal, Services
from gateway.errors import InvalidRequest, NotFound
from gateway.jobs.orders import Order
from gateway.storage.base import ObjectMissing


async def own_file(services: Services, principal: Principal, url: str, *,
                   param: str) -> bytes | None:
    """The bytes of a gateway file URL (`{public base}/files/{id}.{ext}?exp&sig`) read from
    storage, or None for any other URL. The file must belong to the caller's key, or the URL
    must carry a valid signature; raises InvalidRequest (naming `param`) otherwise or when
    the file is gone."""
    signer = services.files.signer
    if not url.startswith(f"{signer.base_url}/files/"):
        return None
    parts = urlsplit(url)
    name = parts.path.rsplit("/", 1)[-1]
    file_id = name.partition(".")[0]
    query = parse_qs(parts.query)
    try:
        exp = int(query.get("exp", ["0"])[0])
    except ValueError:
        exp = 0
    try:
        row, data = await services.files.read(file_id)
    except (NotFound, ObjectMissing) as exc:
        raise InvalidRequest(f"{param}: the image {url} no longer exists on this gateway.",
                             param=param, code="invalid_image_url") from exc
    signed = signer.verify(name, exp, query.get("sig", [""])[0])
    if not signed and row.key_id != principal.key_id:
        raise InvalidRequest(f"{param}: the image URL {url} has expired or belongs to "
                             "another key.", param=param, code="invalid_image_url")
    return data


async def attach_refs(services: Services, principal: Principal,
                      refs: list[tuple[str, str]], order: Order, *, param: str) -> None:
    """Put the image references `(param, ref)` on `order`, in order. When any is a gateway
    file URL, every image is loaded here (own files from storage, others through the
    fetcher) into `order.image_blobs`; otherwise they go to `order.image_refs` for the
    OrderDesk to fetch. Raises InvalidRequest (`too_many_images`, naming `param`)."""
    own = [await own_file(services, principal, ref, param=name) for name, ref in refs]
    if all(data is None for data in own):
        order.image_refs = refs
        return
    limit = services.settings.limits.max_input_images
    found = services.jobs.catalogue.find(order.model)
    if found is not None:  # FLUX.2 takes 8, FLUX 3 10
        limit = max(limit, found.max_refs)
    if len(refs) > limit:
        raise InvalidRequest(f"Too many input images: {len(refs)}; at most {limit} per "
                             "request.", param=param, code="too_many_images")
    for (name, ref), data in zip(refs, own, strict=True):
        if data is None:
            data = await services.fetcher.load(ref, param=name)
        order.image_blobs.append((name, data))
