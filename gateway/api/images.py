"""OpenAI images API: POST /v1/images/generations (edits live in `edits.py`)."""

from __future__ import annotations

import base64
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from gateway.api import family_fields
from gateway.api.deps import LimitedPrincipalDep, Principal, Services, ServicesDep, from_sandbox
from gateway.api.guards import Gate, idempotent
from gateway.api.image_stream import STREAMED, stream_response, wants_stream
from gateway.api.openapi import OPENAI_CREATE_ERRORS, OPENAI_ERRORS
from gateway.api.schemas import ImageGenerationRequest
from gateway.api.tasks import ACCEPTED, accepted, wants_async
from gateway.errors import InvalidRequest, not_ready
from gateway.jobs import intake
from gateway.jobs.model import JobStatus
from gateway.jobs.orders import Customer, Order, OrderDesk
from gateway.jobs.service import job_error
from gateway.jobs.tables import JobRow
from gateway.models import resolve_model

router = APIRouter(responses=OPENAI_ERRORS)

#: the only `size` values openai-python 1.x-3.0 accept in strict mode (a Literal there);
#: any other output size travels as each image's `width` and `height` only
SDK_SIZES = ("1024x1024", "1024x1536", "1536x1024")


def get_desk(services: ServicesDep) -> OrderDesk:
    return OrderDesk(jobs=services.jobs, files=services.files, fetcher=services.fetcher,
                     limits=services.settings.limits, budget=services.pixel_budget)


DeskDep = Annotated[OrderDesk, Depends(get_desk)]


_PROVENANCE: dict[str | None, Literal["off", "metadata", "signed"]] = {
    "off": "off", "metadata": "metadata", "signed": "signed"}


def customer_of(principal: Principal) -> Customer:
    provenance = _PROVENANCE.get(principal.provenance)
    if principal.mode == "test":
        return Customer(key_id=principal.key_id, mode="test", price_group=principal.price_group,
                        provenance=provenance)
    return Customer(key_id=principal.key_id, mode="live", price_group=principal.price_group,
                    provenance=provenance)


def parse_response_format(value: str | None) -> str | None:
    """`url`, `b64_json`, or None (= both fields filled)."""
    if value is None or value == "":
        return None
    if value not in ("url", "b64_json"):
        raise InvalidRequest(f"Invalid response_format {value!r}: use 'url' or 'b64_json'.",
                             param="response_format", code="invalid_response_format")
    return value


async def images_response(services: Services, rows: list[JobRow], response_format: str | None,
                          ) -> dict[str, Any]:
    """The OpenAI ImagesResponse for finished jobs (valid for every openai SDK, strict or not:
    each image has its `width`/`height`, `size` only when it is one OpenAI names); raises the
    first job's error when no job succeeded, Timeout when they are still running."""
    done = [r for r in rows if r.status == JobStatus.SUCCEEDED.value]
    if not done:
        failed = [r for r in rows if r.status == JobStatus.FAILED.value]
        if failed:
            raise job_error(failed[0])
        raise not_ready([r.id for r in rows], draining=services.jobs.draining)
    data = []
    first = done[0].outputs[0]
    for row in done:
        for output in row.outputs:
            item: dict[str, Any] = {"revised_prompt": row.prompt, "seed": row.seed,
                                    "width": output["width"], "height": output["height"]}
            if response_format in (None, "url"):
                item["url"] = services.files.url(output["file_id"], output["ext"])
            if response_format in (None, "b64_json"):
                stored_at = output.get("storage_key")
                blob = (await services.files.blob(stored_at) if stored_at
                        else (await services.files.read(output["file_id"]))[1])
                item["b64_json"] = base64.b64encode(blob).decode()
            data.append(item)
    size = f"{first['width']}x{first['height']}"
    answer: dict[str, Any] = {"created": int(time.time()), "data": data,
                              "output_format": first["ext"]}
    if size in SDK_SIZES:  # Kontext's other buckets (1392x752...) would fail older SDKs
        answer["size"] = size
    if any(from_sandbox(services, row.channel) for row in done):
        answer["sandbox"] = True  # synthetic images from the sandbox upstream, not a model
    return answer


@router.post("/v1/images/generations",
             responses={**OPENAI_CREATE_ERRORS, **ACCEPTED, **STREAMED})
async def create_image(request: Request, body: ImageGenerationRequest,
                       principal: LimitedPrincipalDep, services: ServicesDep,
                       desk: DeskDep) -> Response:
    """Generate (or, with input images, edit) `n` images and wait for them; with
    `Prefer: respond-async` or `"async": true`, answer 202 with a task to poll instead; with
    `stream: true`, answer OpenAI's image stream (server-sent events)."""
    respond_async = wants_async(request, body.async_)
    if wants_stream(body.stream, body.partial_images, respond_async=respond_async):
        # an SSE stream cannot be replayed, so Idempotency-Key does not apply (as in chat)
        return await _create_image(Gate(services, principal), body, principal, services, desk,
                                   stream_to=request)
    return await idempotent(request, principal, services,
                            lambda gate: _create_image(gate, body, principal, services, desk,
                                                       respond_async=respond_async))


async def _create_image(gate: Gate, body: ImageGenerationRequest, principal: Principal,
                        services: Services, desk: OrderDesk, *, respond_async: bool = False,
                        stream_to: Request | None = None) -> Response:
    model = resolve_model(body.model, aliases=services.settings.model_aliases,
                          catalogue=services.jobs.catalogue)
    principal.check_model(model)
    response_format = parse_response_format(body.response_format)
    webhook_url, webhook_secret = await services.webhooks.accept(body.webhook_url,
                                                                 body.webhook_secret)
    urls, prompt = intake.split_leading_urls(body.prompt)
    refs = intake.collect_image_refs(body.model_dump())
    refs += [(f"prompt[{i}]", url) for i, url in enumerate(urls)]
    order = Order(
        model=model, prompt=prompt, n=intake.parse_n(body.n), seed=intake.parse_seed(body.seed),
        operation="edit" if refs else "generate",
        aspect_ratio=intake.choose_aspect_ratio(aspect_ratio=body.aspect_ratio, size=body.size),
        output_format=intake.parse_output_format(body.output_format),
        quality=intake.parse_quality(output_compression=body.output_compression,
                                     quality=body.quality),
        safety_tolerance=intake.parse_safety(body.safety_tolerance),
        prompt_upsampling=intake.parse_bool(body.prompt_upsampling or False,
                                            param="prompt_upsampling"),
        image_refs=refs, webhook_url=webhook_url, webhook_secret=webhook_secret)
    family_fields.fit(order, services, principal, {**(body.model_extra or {})}, size=body.size,
                      quality=body.quality, seed=body.seed)
    rows = await gate.place(desk, customer_of(principal), order)
    if stream_to is not None:
        return stream_response(stream_to, services, "image_generation", rows, prompt, len(refs))
    if respond_async:
        return await accepted(services, rows, response_format)
    rows = await services.jobs.wait([r.id for r in rows])
    return JSONResponse(await images_response(services, rows, response_format))
