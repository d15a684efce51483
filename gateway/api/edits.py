"""OpenAI images API: POST /v1/images/edits, as multipart (what the SDKs send) or JSON.

Multipart: every part named `image`, `image[]` or `image[N]` is an input image, in arrival order
(the SDKs send `image[]` even for one file); `mask` is the mask; text parts are the OpenAI and
Kontext fields, as strings (`"7"`, `"2.5"`, `"true"`/`"True"`). A text part named like an image
holds a URL, base64 or a data URL. Parts may come in any order (Node sends files first) and the
body may be chunked with no Content-Length: the whole body is capped while it is read, and each
file is checked against the byte limit before it is read into memory.

JSON: `image` as a string or a list of strings (URLs, base64, data URLs), or OpenAI's
`images: [{"image_url": ...}]`; `mask` as a string or `{"image_url": ...}`.

Unknown OpenAI fields (`background`, `input_fidelity`, `moderation`, ...) are ignored; `quality`
is used when it is a number (0-100, like `output_compression`), ignored when it is a word.
The default aspect ratio is the first input's own (`match_input_image`); inputs must be within
3:7..7:3. With a mask, the gateway composites the upstream's whole-image edit into the input
(see `gateway/images/masks.py`), so the output has the input's size.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from adapters.buckets import MAX_RATIO, MIN_RATIO
from gateway.api import family_fields
from gateway.api.deps import LimitedPrincipalDep, Principal, Services, ServicesDep
from gateway.api.guards import Gate, idempotent
from gateway.api.image_stream import STREAMED, stream_response, wants_stream
from gateway.api.images import DeskDep, customer_of, images_response, parse_response_format
from gateway.api.openapi import EDIT_REQUEST_BODY, OPENAI_CREATE_ERRORS, OPENAI_ERRORS
from gateway.api.schemas import ImageEditRequest, ImageRef
from gateway.api.tasks import ACCEPTED, accepted, wants_async
from gateway.errors import InvalidRequest, PayloadTooLarge, UnsupportedMedia
from gateway.images.fetch import ImageFetcher
from gateway.jobs import intake
from gateway.jobs.orders import Order, OrderDesk
from gateway.models import resolve_model
from gateway.settings import LimitSettings
from gateway.storable import refuse_unstorable

router = APIRouter(responses=OPENAI_ERRORS)

_IMAGE_PART = re.compile(r"^image(\[\d*\])?$")
_FORM_OVERHEAD = 1024 * 1024  # text fields and multipart framing
_MAX_FIELDS = 200
M = TypeVar("M", bound=BaseModel)
#: width/height range of edit inputs (Kontext: 3:7 .. 7:3)
EDIT_RATIO = (MIN_RATIO, MAX_RATIO)

Part = str | UploadFile


@dataclass(slots=True)
class EditForm:
    """The request's fields and its image and mask parts (bytes or references), in order."""

    body: ImageEditRequest
    images: list[bytes | str] = field(default_factory=list)
    mask: bytes | str | None = None


def body_limit(limits: LimitSettings) -> int:
    """The largest request body accepted: every image and a mask at the byte limit, as base64
    (JSON, text parts), plus room for the fields."""
    return (limits.max_input_images + 1) * limits.max_image_bytes * 4 // 3 + _FORM_OVERHEAD


async def bounded(request: Request, limit: int, what: str = "an edit request",
                  ) -> AsyncGenerator[bytes, None]:
    """The request body, chunk by chunk; raises PayloadTooLarge once more than `limit` bytes
    arrived (whatever Content-Length says, and with none, as in chunked uploads)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(_too_large(limit, what))
    total = 0
    async with aclosing(request.stream()) as stream:
        async for chunk in stream:
            total += len(chunk)
            if total > limit:
                raise PayloadTooLarge(_too_large(limit, what))
            yield chunk


def _too_large(limit: int, what: str) -> str:
    return f"The request body is larger than {limit} bytes, the limit for {what}."


def _image_param(index: int, count: int) -> str:
    return "image" if count == 1 else f"image[{index}]"


async def _read_upload(upload: UploadFile, param: str, limits: LimitSettings) -> bytes:
    """The bytes of an uploaded file; PayloadTooLarge before reading when it is too big."""
    size = upload.size or 0
    if size > limits.max_image_bytes:
        raise PayloadTooLarge(
            f"{param}: image is {size} bytes; the limit is {limits.max_image_bytes} bytes "
            f"({limits.max_image_bytes / (1024 * 1024):g} MB).", param=param)
    await upload.seek(0)
    return await upload.read()


def validated(model: type[M], data: object) -> M:
    """`data` (a parsed JSON body or form fields) as `model`; InvalidRequest naming the first
    bad field, worded as for FastAPI-parsed bodies. Text the databases cannot store (a NUL,
    a lone surrogate), in any field or key, is refused first (`invalid_text`), before the
    model is looked up, as `gateway/api/text_guard.py` does for FastAPI-parsed bodies."""
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    refuse_unstorable(data)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = ".".join(str(p) for p in err.get("loc", ())) or None
        raise InvalidRequest(f"Invalid {param}: {err.get('msg')}", param=param) from exc


def _ref_text(ref: ImageRef, param: str) -> str:
    """A URL/base64/data URL from a string or OpenAI's `{"image_url": ...}`."""
    if isinstance(ref, dict):
        url = ref.get("image_url") or ref.get("url")
        if not url:
            raise InvalidRequest(f"{param}: give the image as {{\"image_url\": URL or data URL}};"
                                 " file ids are not supported.", param=param)
        return url
    return ref


async def read_multipart(request: Request, limits: LimitSettings, desk: OrderDesk) -> EditForm:
    """Parse the multipart form (bounded), keeping image parts in arrival order."""
    parser = MultiPartParser(
        request.headers, bounded(request, body_limit(limits)),
        max_files=2 * limits.max_input_images + 2, max_fields=_MAX_FIELDS,
        max_part_size=limits.max_image_bytes * 4 // 3 + 1024)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise InvalidRequest(f"Invalid multipart body: {exc.message}",
                             code="invalid_multipart") from exc
    try:
        fields: dict[str, str] = {}
        parts: list[Part] = []
        mask_part: Part | None = None
        for name, value in form.multi_items():
            if _IMAGE_PART.match(name):
                parts.append(value)
            elif name in ("mask", "mask[]"):
                mask_part = value
            elif isinstance(value, str):
                fields[name] = value
        body = validated(ImageEditRequest, fields)
        desk.check_image_count(len(parts), model=body.model)
        out = EditForm(body=body)
        for i, part in enumerate(parts):
            param = _image_param(i, len(parts))
            out.images.append(part if isinstance(part, str)
                              else await _read_upload(part, param, limits))
        if isinstance(mask_part, str):
            out.mask = mask_part.strip() or None
        elif mask_part is not None:
            out.mask = await _read_upload(mask_part, "mask", limits) or None  # empty: no mask
        return out
    finally:
        await form.close()


async def read_json(request: Request, limits: LimitSettings, desk: OrderDesk) -> EditForm:
    """Parse a JSON edit. The images' text moves from the body model to `EditForm.images`
    (held once; the idempotency fingerprint uses their digests)."""
    raw = bytearray()
    async for chunk in bounded(request, body_limit(limits)):
        raw += chunk
    try:
        text = raw.decode("utf-8-sig")
        del raw  # the body is held once at a time: bytes, then text, then the parsed values
        data = json.loads(text)
    except ValueError as exc:  # UnicodeDecodeError included
        raise InvalidRequest("The request body is not valid JSON.", code="invalid_json") from exc
    del text
    body = validated(ImageEditRequest, data)
    del data
    refs: list[ImageRef] = []
    if isinstance(body.image, list):
        refs += body.image
    elif body.image:
        refs.append(body.image)
    refs += body.images or []
    desk.check_image_count(len(refs), model=body.model)
    out = EditForm(body=body)
    out.images = [_ref_text(ref, _image_param(i, len(refs))) for i, ref in enumerate(refs)]
    if body.mask:
        out.mask = _ref_text(body.mask, "mask")
    body.image = body.images = body.mask = None
    return out


async def read_edit_request(request: Request, limits: LimitSettings,
                            desk: OrderDesk) -> EditForm:
    """The edit request from a multipart or JSON body; raises 413/415/400 before any upstream
    call."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        return await read_multipart(request, limits, desk)
    if ctype == "application/json" or ctype.endswith("+json"):
        return await read_json(request, limits, desk)
    raise UnsupportedMedia(f"Send the edit as multipart/form-data or application/json, not "
                           f"{ctype or 'a body without a Content-Type'}.",
                           code="unsupported_content_type")


async def _resolve(fetcher: ImageFetcher, value: bytes | str, param: str) -> bytes:
    return value if isinstance(value, bytes) else await fetcher.load(value, param=param)


def canonical_form(form: EditForm) -> dict[str, object]:
    """What identifies an edit request for `Idempotency-Key`: its fields and the digests of its
    images (a multipart boundary changes between retries; the content does not)."""

    def digest(value: bytes | str) -> str:
        return hashlib.sha256(value if isinstance(value, bytes) else value.encode()).hexdigest()

    return {"fields": form.body.model_dump(mode="json", exclude_none=True),
            "images": [digest(v) for v in form.images],
            "mask": digest(form.mask) if form.mask is not None else None}


@router.post("/v1/images/edits", openapi_extra=EDIT_REQUEST_BODY,
             responses={**OPENAI_CREATE_ERRORS, **ACCEPTED, **STREAMED})
async def create_edit(request: Request, principal: LimitedPrincipalDep, services: ServicesDep,
                      desk: DeskDep) -> Response:
    """Edit the input image(s) as `prompt` says, `n` times, and wait for the results."""
    form = await read_edit_request(request, services.settings.limits, desk)
    respond_async = wants_async(request, form.body.async_)  # 202 + a task (api/tasks.py)
    if wants_stream(form.body.stream, form.body.partial_images, respond_async=respond_async):
        # an SSE stream cannot be replayed, so Idempotency-Key does not apply (as in chat)
        return await _create_edit(Gate(services, principal), form, principal, services, desk,
                                  stream_to=request)
    return await idempotent(request, principal, services,
                            lambda gate: _create_edit(gate, form, principal, services, desk,
                                                      respond_async=respond_async),
                            canonical=canonical_form(form))


async def _create_edit(gate: Gate, form: EditForm, principal: Principal, services: Services,
                       desk: OrderDesk, *, respond_async: bool = False,
                       stream_to: Request | None = None) -> Response:
    body = form.body
    model = resolve_model(body.model, aliases=services.settings.model_aliases,
                          catalogue=services.jobs.catalogue)
    principal.check_model(model)
    response_format = parse_response_format(body.response_format)
    webhook_url, webhook_secret = await services.webhooks.accept(body.webhook_url,
                                                                 body.webhook_secret)
    if not form.images:
        raise InvalidRequest("image: at least one input image is required (as `image`, "
                             "`image[]` or a URL).", param="image", code="missing_image")
    aspect_ratio = intake.choose_aspect_ratio(aspect_ratio=body.aspect_ratio, size=body.size)
    notes = []
    if form.mask is not None:
        notes.append("mask honoured by the gateway: the upstream edited the whole image and the "
                     "result was scaled to the input's size and composited with the mask")
        if aspect_ratio is not None:
            notes.append(f"aspect ratio {aspect_ratio} ignored: a masked edit keeps the input's "
                         "size")
            aspect_ratio = None
    extra: dict[str, object] = {}
    if body.guidance not in (None, ""):
        extra["guidance"] = intake.parse_float(body.guidance, param="guidance")
    if body.steps not in (None, ""):
        extra["steps"] = intake.parse_int(body.steps, param="steps")
    order = Order(
        model=model, prompt=body.prompt or "", n=intake.parse_n(body.n),
        seed=intake.parse_seed(body.seed), operation="edit", aspect_ratio=aspect_ratio,
        output_format=intake.parse_output_format(body.output_format),
        quality=intake.parse_quality(output_compression=body.output_compression,
                                     quality=body.quality),
        safety_tolerance=intake.parse_safety(body.safety_tolerance),
        prompt_upsampling=intake.parse_bool(
            body.prompt_upsampling if body.prompt_upsampling is not None else False,
            param="prompt_upsampling"),
        extra=extra, webhook_url=webhook_url, webhook_secret=webhook_secret,
        input_ratio=EDIT_RATIO, notes=notes)
    family_fields.fit(order, services, principal, {**(body.model_extra or {})}, size=body.size,
                      quality=body.quality, seed=body.seed)
    # the request's copies are let go as soon as they are used: a 20 MB upload (or its base64
    # text) must not stay in memory, several times over, while the job runs for minutes
    count = len(form.images)
    for i in range(count):
        param = _image_param(i, count)
        value, form.images[i] = form.images[i], b""
        order.image_blobs.append((param, await _resolve(services.fetcher, value, param)))
        del value
    if form.mask is not None:
        mask, form.mask = form.mask, None
        order.mask = await _resolve(services.fetcher, mask, "mask")
        del mask
    try:
        rows = await gate.place(desk, customer_of(principal), order)
    finally:
        order.image_blobs.clear()
        order.mask = None
    if stream_to is not None:
        return stream_response(stream_to, services, "image_edit", rows, order.prompt, count)
    if respond_async:
        return await accepted(services, rows, response_format)
    rows = await services.jobs.wait([r.id for r in rows])
    return JSONResponse(await images_response(services, rows, response_format))
