"""OpenAI Responses API for images: POST /v1/responses and GET /v1/responses/{id}.

What the AI SDK's default provider (`openai(id)` with `openai.tools.imageGeneration()`) and the
openai SDKs' `client.responses.create/stream` send, served by the job pipeline of
/v1/images/* and chat: one request makes one image (one job), charged once.

- **Model**: the `image_generation` tool's `model` if given, else the request's `model` when
  it is one of ours or an alias (`flux-kontext-pro`, `gpt-image-1`...), else (a mainline name
  such as `gpt-5` with the tool) the model `gpt-image-1` is an alias of (`flux-kontext-pro`
  when aliases are off). A request with one of our models and no tool is an image request too
  (as in chat); an unknown model without the tool is a 404.
- **Input**: see `gateway.api.response_input`. The images of the last user message are
  edited; without any, the most recent image of the earlier items, else the previous
  response's image (`previous_response_id`: its result, else the image it edited). The tool's
  `action: "generate"` makes a new image from the prompt without taking one from history,
  `"edit"` refuses a request without any image (400), `"auto"` (default) does as said.
- **Answer**: a Response (`gateway.api.response_objects`), or with `stream: true` its event
  stream (`gateway.api.response_stream`); `background: true` answers at once (`queued`) and
  `GET /v1/responses/{id}` tells how it stands. Ids are scoped to the key: another key's
  response or item id is a 404.

Errors found before the job starts are ordinary JSON errors with their status; a job that
fails answers the images route's error (non-stream) or ends the stream with `response.failed`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from gateway.api.chat import SSE_HEADERS, finished
from gateway.api.deps import LimitedPrincipalDep, Principal, PrincipalDep, Services, ServicesDep
from gateway.api.edits import body_limit, bounded, validated
from gateway.api.guards import Gate, idempotent
from gateway.api.images import DeskDep, customer_of
from gateway.api.openapi import OPENAI_CREATE_ERRORS, OPENAI_ERRORS, json_request_body
from gateway.api.own_files import attach_refs, own_file
from gateway.api.response_input import ImageSource, response_input
from gateway.api.response_objects import (
    ImageTool,
    ResponseCreateRequest,
    batch_of,
    image_tool,
    item_id,
    job_of_item,
)
from gateway.api.response_stream import events, response_body
from gateway.errors import InvalidRequest, NotFound
from gateway.jobs import intake
from gateway.jobs.batches import batch_jobs, key_job
from gateway.jobs.model import JobStatus
from gateway.jobs.orders import Order, OrderDesk
from gateway.jobs.tables import JobRow
from gateway.models import DEFAULT_ALIASES, resolve_model
from gateway.settings import LimitSettings
from gateway.storage.base import ObjectMissing

router = APIRouter(responses=OPENAI_ERRORS)

SURFACE = "openai.responses"
#: the model the image tool means when nothing names one (OpenAI's default for the tool)
TOOL_DEFAULT = "gpt-image-1"


async def read_request(request: Request, limits: LimitSettings,
                       ) -> tuple[ResponseCreateRequest, dict[str, object]]:
    """The request and its idempotency fingerprint, read as chat reads its own (bounded; the
    raw and parsed forms are dropped once the next exists: data URLs can be 20 MB each)."""
    raw = bytearray()
    async for chunk in bounded(request, body_limit(limits), "a responses request"):
        raw += chunk
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise InvalidRequest("The request body is not valid JSON.", code="invalid_json") from exc
    del raw
    body = validated(ResponseCreateRequest, data)
    canonical: dict[str, object] = {}
    if not body.stream and "idempotency-key" in request.headers:
        text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                          default=str)
        canonical["json_sha256"] = hashlib.sha256(text.encode()).hexdigest()
    return body, canonical


def choose_model(body: ResponseCreateRequest, tool: ImageTool,
                 aliases: dict[str, str]) -> str:
    """The Kontext model of the request (see the module docstring); NotFound otherwise."""
    if tool.model:
        return resolve_model(tool.model, param=f"{tool.param}.model", aliases=aliases)
    try:
        return resolve_model(body.model, aliases=aliases)
    except NotFound:
        if not tool.present:
            raise
    default = aliases.get(TOOL_DEFAULT) or DEFAULT_ALIASES[TOOL_DEFAULT]
    return resolve_model(default, aliases=aliases)


async def response_rows(services: Services, principal: Principal, response_id: str,
                        param: str) -> list[JobRow]:
    """The jobs of one of this key's responses; NotFound (naming `param`) otherwise."""
    batch = batch_of(response_id)
    rows = await batch_jobs(services.sessions, batch, principal.key_id) if batch else []
    rows = [r for r in rows if r.surface == SURFACE]
    if not rows:
        raise NotFound(f"Response with id '{response_id}' not found.", param=param,
                       code="response_not_found")
    return rows


async def _job_image(services: Services, principal: Principal, source: ImageSource) -> bytes:
    """The result of this key's earlier image item `source.value` (`ig_...`)."""
    job_id = job_of_item(source.value)
    row = await key_job(services.sessions, job_id, principal.key_id) if job_id else None
    if (row is None or row.surface != SURFACE) and source.result:  # made elsewhere
        return await services.fetcher.load(
            source.result, param=source.param.removesuffix(".id") + ".result")
    if row is None or row.surface != SURFACE:
        raise NotFound(f"Item with id '{source.value}' not found.", param=source.param,
                       code="item_not_found")
    if row.status != JobStatus.SUCCEEDED.value or not row.outputs:
        raise InvalidRequest(f"{source.param}: the image item {source.value} has no image "
                             f"(its job is {row.status}).", param=source.param,
                             code="invalid_image")
    output = row.outputs[0]
    if output.get("storage_key"):
        return await services.files.blob(output["storage_key"])
    return (await services.files.read(output["file_id"]))[1]


async def _file_image(services: Services, principal: Principal, source: ImageSource) -> bytes:
    try:
        row, data = await services.files.read(source.value)
    except (NotFound, ObjectMissing):
        row, data = None, b""
    if row is None or row.key_id != principal.key_id or row.kind == "mask":
        raise NotFound(f"File with id '{source.value}' not found.", param=source.param,
                       code="image_file_not_found")
    return data


async def load_source(services: Services, principal: Principal, source: ImageSource) -> bytes:
    """The bytes of one input image (URLs through the SSRF-safe fetcher, gateway file URLs
    from storage); raises InvalidRequest/NotFound naming `source.param`."""
    if source.kind == "item":
        return await _job_image(services, principal, source)
    if source.kind == "file":
        return await _file_image(services, principal, source)
    own = await own_file(services, principal, source.value, param=source.param)
    if own is not None:
        return own
    return await services.fetcher.load(source.value, param=source.param)


async def attach_sources(services: Services, principal: Principal,
                         sources: list[ImageSource], order: Order) -> None:
    """Put the input images on `order`, in order (the first is the one edited)."""
    if all(s.kind == "ref" for s in sources):  # the desk fetches them, all at once
        await attach_refs(services, principal, [(s.param, s.value) for s in sources], order,
                          param="input")
        return
    limit = services.settings.limits.max_input_images
    if len(sources) > limit:
        raise InvalidRequest(f"Too many input images: {len(sources)}; at most {limit} per "
                             "request.", param="input", code="too_many_images")
    for source in sources:
        order.image_blobs.append((source.param, await load_source(services, principal,
                                                                    source)))


def _previous_image(rows: list[JobRow]) -> ImageSource | None:
    """The image a previous response leaves to edit: its result, else the image it edited."""
    row = rows[0]
    if row.status == JobStatus.SUCCEEDED.value and row.outputs:
        return ImageSource("item", item_id(row.id), "previous_response_id")
    if not JobStatus(row.status).terminal:
        raise InvalidRequest("The previous response is still in progress; retry once it has "
                             "finished.", param="previous_response_id",
                             code="previous_response_in_progress")
    inputs = row.spec.get("input_file_ids") or []
    return ImageSource("file", inputs[0], "previous_response_id") if inputs else None


def _echo(body: ResponseCreateRequest, tool: ImageTool, action: str,
          output_format: str) -> dict[str, Any]:
    """What the Response repeats of the request (stored with the job, for GET)."""
    choice = body.tool_choice
    if not (choice in ("auto", "none", "required")
            or (isinstance(choice, dict) and isinstance(choice.get("type"), str))):
        choice = "auto"
    return {"model": body.model, "tools": [tool.echo(output_format)] if tool.present else [],
            "tool_choice": choice,
            "instructions": body.instructions if isinstance(body.instructions, str) else None,
            "metadata": body.metadata or {}, "previous_response_id": body.previous_response_id,
            "user": body.user, "background": bool(body.background), "action": action,
            "partial_images": tool.partial_images}


async def _place(gate: Gate, body: ResponseCreateRequest, principal: Principal,
                 services: Services, desk: OrderDesk) -> JobRow:
    """Validate the request and create its job; raises before anything is charged."""
    tool = image_tool(body.tools)
    model = choose_model(body, tool, services.settings.model_aliases)
    principal.check_model(model)
    wanted = response_input(body.input)
    previous = (await response_rows(services, principal, body.previous_response_id,
                                    "previous_response_id")
                if body.previous_response_id else None)
    sources = list(wanted.images)
    if not sources and tool.action != "generate":
        history = wanted.history or (_previous_image(previous) if previous else None)
        sources = [history] if history else []
    if tool.action == "edit" and not sources:
        raise InvalidRequest("action is 'edit' but there is no image to edit: send an "
                             "input_image, or a previous_response_id with an image.",
                             param=f"{tool.param}.action", code="missing_image")
    action: Literal["generate", "edit"] = "edit" if sources else "generate"
    output_format = intake.parse_output_format(tool.output_format or body.output_format)
    order = Order(
        model=model, prompt=wanted.prompt, operation=action, output_format=output_format,
        seed=intake.parse_seed(tool.seed if tool.seed is not None else body.seed),
        aspect_ratio=intake.choose_aspect_ratio(
            aspect_ratio=tool.aspect_ratio or body.aspect_ratio, size=tool.size),
        quality=intake.parse_quality(
            output_compression=(tool.output_compression if tool.output_compression is not None
                                else body.output_compression), quality=tool.quality),
        safety_tolerance=intake.parse_safety(
            tool.safety_tolerance if tool.safety_tolerance is not None
            else body.safety_tolerance),
        prompt_upsampling=intake.parse_bool(
            tool.prompt_upsampling if tool.prompt_upsampling is not None
            else body.prompt_upsampling or False, param="prompt_upsampling"),
        surface=SURFACE, echo=_echo(body, tool, action, output_format))
    await attach_sources(services, principal, sources, order)
    if tool.mask is not None:
        order.mask = await load_source(services, principal, _mask_source(tool))
    [row] = await gate.place(desk, customer_of(principal), order)
    return row


def _mask_source(tool: ImageTool) -> ImageSource:
    assert tool.mask is not None
    param = f"{tool.param}.input_image_mask"
    url, file_id = tool.mask.get("image_url"), tool.mask.get("file_id")
    if isinstance(url, str) and url.strip():
        return ImageSource("ref", url.strip(), f"{param}.image_url")
    if isinstance(file_id, str) and file_id.strip():
        return ImageSource("file", file_id.strip(), f"{param}.file_id")
    raise InvalidRequest(f"{param} needs an image_url or a file_id.", param=param)


RESPONSES_REQUEST_BODY = json_request_body(ResponseCreateRequest)


@router.post("/v1/responses", openapi_extra=RESPONSES_REQUEST_BODY,
             responses={**OPENAI_CREATE_ERRORS, 200: {
                 "description": "The Response (JSON), or with `stream: true` its events as "
                                "server-sent events",
                 "content": {"application/json": {},
                             "text/event-stream": {"schema": {"type": "string"}}}}})
async def create_response(request: Request, principal: LimitedPrincipalDep,
                          services: ServicesDep, desk: DeskDep) -> Response:
    """Generate or edit one image (see the module docstring). Counts against the key's rate
    limit and jobs-in-flight cap; `Idempotency-Key` is honoured without `stream`."""
    body, canonical = await read_request(request, services.settings.limits)
    if body.stream:
        row = await _place(Gate(services, principal), body, principal, services, desk)
        headers = {**SSE_HEADERS, **(getattr(request.state, "rate_headers", None) or {})}
        return StreamingResponse(events(services, row), media_type="text/event-stream",
                                 headers=headers)
    return await idempotent(request, principal, services,
                            lambda gate: _complete(gate, body, principal, services, desk),
                            canonical=canonical)


async def _complete(gate: Gate, body: ResponseCreateRequest, principal: Principal,
                    services: Services, desk: OrderDesk) -> Response:
    row = await _place(gate, body, principal, services, desk)
    if not body.background:
        [row] = await services.jobs.wait([row.id])
        finished(row, draining=services.jobs.draining)  # the job's error, as images answer
    return JSONResponse(await response_body(services, row))


@router.get("/v1/responses/{response_id}")
async def get_response(response_id: str, principal: PrincipalDep,
                       services: ServicesDep) -> JSONResponse:
    """One of this key's responses as it stands now (`queued`, `in_progress`, `completed`
    with its image, `failed` with its error); another key's or an unknown id is a 404. Reads
    do not count against the key's requests per minute."""
    [row, *_] = await response_rows(services, principal, response_id, "response_id")
    return JSONResponse(await response_body(services, row))
