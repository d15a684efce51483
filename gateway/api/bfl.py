"""BFL-style async API: POST /v1/flux-kontext-{pro,max,dev}, the FLUX.2 routes
(/v1/flux-2-pro, -pro-preview, -max, -flex, -klein-4b, -klein-9b), /v1/flux-3-image, and
GET /v1/get_result.

FLUX.2 bodies are BFL's (`input_image`, `input_image_2..8`, `width`/`height`, `seed`,
`safety_tolerance` 0..5, `output_format`, `disable_pup`; flex `steps`, `guidance`,
`prompt_upsampling`); FLUX 3's are BFL's too (`images` 1..10, `aspect_ratio`, `resolution`,
`grounding`, `safety_tolerance` 0..4, `version`). A field the model does not take is dropped
and noted on the job (BFL's FLUX 3 would answer 422); a value out of range is a 422 naming
it. The create answer's `cost` is our price in credits (hundredths), and `input_mp` /
`output_mp` the megapixels it was quoted on (2^20 pixels each; Kontext: null, as before).

The wire shapes follow Black Forest Labs' API (docs.bfl.ml, OpenAPI `AsyncResponse` and
`ResultResponse`; see /work/shared/reference/upstreams.md §1), so code written against BFL
only changes its base URL and key:

* create: header `x-key` (or `Authorization: Bearer`), JSON `{prompt, input_image?,
  input_image_2..4?, aspect_ratio?, seed?, output_format?, safety_tolerance?,
  prompt_upsampling?, webhook_url?, webhook_secret?}`; the job is created (price reserved)
  and the answer is immediate: `{"id", "polling_url", "cost", "input_mp", "output_mp"}`.
  `cost` is our price in hundredths of the billing currency (BFL: credits, 1 credit = $0.01,
  so with a USD price table it reads the same); `input_mp`/`output_mp` are null.
* poll: `GET /v1/get_result?id=<id>` (the absolute `polling_url`, on `public_base_url`)
  answers `{"id", "status", "result", "progress", "details", "preview"}` with status `Pending`,
  `Ready` (`result.sample` = our signed file URL, plus `seed`, `prompt`, `start_time`,
  `end_time`, `duration`), `Request Moderated`, `Content Moderated`, `Error` or `Task not
  found` (HTTP 404; also for another key's job). Polls are not counted against the key's
  requests-per-minute limit (clients poll every 0.5 s).

Errors on these routes are FastAPI/BFL-style `{"detail": ...}` (see `gateway/api/errors.py`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, WithJsonSchema

from gateway.api import family_fields
from gateway.api.deps import LimitedPrincipalDep, Principal, PrincipalDep, Services, ServicesDep
from gateway.api.errors import DetailErrorRoute
from gateway.api.guards import Gate, idempotent
from gateway.api.images import DeskDep, customer_of
from gateway.api.openapi import DETAIL_CREATE_ERRORS, DETAIL_ERRORS
from gateway.api.schemas import (
    IMAGE_REFERENCE_SCHEMA,
    PROMPT_SCHEMA,
    WEBHOOK_SECRET_SCHEMA,
    WEBHOOK_URL_SCHEMA,
    AspectRatio,
    JsonInt,
    OutputFormatField,
)
from gateway.families import MODELS as CATALOGUE_MODELS
from gateway.jobs import family_rules, intake
from gateway.jobs.intake import MAX_SEED
from gateway.jobs.model import JobSpec, JobStatus, Stage
from gateway.jobs.orders import Order, OrderDesk
from gateway.jobs.quotes import job_megapixels
from gateway.jobs.tables import JobRow

router = APIRouter(route_class=DetailErrorRoute, tags=["bfl"], responses=DETAIL_ERRORS)

#: the BFL endpoints we serve, and our canonical model for each
MODEL_PATHS = {"flux-kontext-pro": "flux-kontext-pro", "flux-kontext-max": "flux-kontext-max",
               "flux-kontext-dev": "flux-kontext-dev"}

#: coarse progress of a running job by stage (refined by an upstream's own, when it has one)
_PROGRESS = {Stage.ROUTED.value: 0.05, Stage.SUBMITTED.value: 0.1,
             Stage.UPSTREAM_DONE.value: 0.9, Stage.STORED.value: 0.95}


class BflKontextRequest(BaseModel):
    """BFL's Kontext input (`FluxKontextProInputs`); unknown fields are accepted and ignored,
    `guidance` and `steps` (sent through the Comfy proxy schema) are passed on as extras."""

    model_config = ConfigDict(extra="allow")

    prompt: str = Field(json_schema_extra=PROMPT_SCHEMA)  # intake refuses a blank prompt
    input_image: str | None = Field(default=None, json_schema_extra=IMAGE_REFERENCE_SCHEMA)
    input_image_2: str | None = Field(default=None, json_schema_extra=IMAGE_REFERENCE_SCHEMA)
    input_image_3: str | None = Field(default=None, json_schema_extra=IMAGE_REFERENCE_SCHEMA)
    input_image_4: str | None = Field(default=None, json_schema_extra=IMAGE_REFERENCE_SCHEMA)
    seed: Annotated[JsonInt | None,
                    Field(json_schema_extra={"minimum": -1, "maximum": MAX_SEED})] = None
    aspect_ratio: AspectRatio = None
    output_format: OutputFormatField = None
    webhook_url: str | None = Field(default=None, max_length=2048,
                                    json_schema_extra=WEBHOOK_URL_SCHEMA)
    webhook_secret: str | None = Field(default=None, json_schema_extra=WEBHOOK_SECRET_SCHEMA)
    prompt_upsampling: StrictBool | None = None
    # numbers are JSON numbers (`false` or "5" is a 422, as the schema says)
    safety_tolerance: Annotated[JsonInt, Field(ge=0, le=6), WithJsonSchema(
        {"type": "integer", "minimum": 0, "maximum": 6})] | None = None
    guidance: StrictFloat | None = None
    steps: JsonInt | None = None


class BflResultResponse(BaseModel):
    """BFL's `ResultResponse` (also the 404 answer, with status `Task not found`)."""

    id: str
    status: str
    result: dict[str, Any] | None = None
    progress: float | None = None
    details: dict[str, Any] | None = None
    preview: dict[str, Any] | None = None


def polling_url(services: Services, job_id: str) -> str:
    """Where a client polls a job: absolute, on the public base URL."""
    return f"{services.settings.resolved_public_base_url}/v1/get_result?id={job_id}"


def _make_create(model: str) -> Callable[..., Awaitable[Response]]:
    async def create(request: Request, body: BflKontextRequest, principal: LimitedPrincipalDep,
                     services: ServicesDep, desk: DeskDep) -> Response:
        return await idempotent(request, principal, services,
                                lambda gate: _create(gate, model, body, principal, services,
                                                     desk))

    create.__name__ = f"bfl_{model.replace('-', '_')}"
    create.__doc__ = (f"Create a {model} task (BFL-style); answers at once with its id and "
                      "polling_url.")
    return create


for _path, _model in MODEL_PATHS.items():
    router.add_api_route(f"/v1/{_path}", _make_create(_model), methods=["POST"],
                         summary=f"BFL-style {_path}", responses=DETAIL_CREATE_ERRORS)


def _ranged(lo: float, hi: float, kind: type = int) -> Any:
    """A JSON number within lo..hi, as the schema says (pydantic refuses the others: 422)."""
    base = JsonInt if kind is int else StrictFloat | JsonInt
    return Annotated[base, Field(ge=lo, le=hi), WithJsonSchema(
        {"type": "integer" if kind is int else "number", "minimum": lo, "maximum": hi})] | None


_Ref = Annotated[str | None, Field(json_schema_extra=IMAGE_REFERENCE_SCHEMA)]


class BflKleinRequest(BaseModel):
    """BFL's FLUX.2 input (klein: 4 references); other fields are accepted, dropped and noted
    on the job. A side is 64..2048 here (so any pair is within BFL's 4 MP), rounded to 16."""

    model_config = ConfigDict(extra="allow")

    prompt: str = Field(json_schema_extra=PROMPT_SCHEMA)
    input_image: _Ref = None
    input_image_2: _Ref = None
    input_image_3: _Ref = None
    input_image_4: _Ref = None
    seed: Annotated[JsonInt | None,
                    Field(json_schema_extra={"minimum": -1, "maximum": MAX_SEED})] = None
    width: _ranged(64, 2048) = None  # type: ignore[valid-type]
    height: _ranged(64, 2048) = None  # type: ignore[valid-type]
    safety_tolerance: _ranged(0, 5) = None  # type: ignore[valid-type]
    output_format: OutputFormatField = None
    disable_pup: StrictBool | None = None
    prompt_upsampling: StrictBool | None = None
    steps: _ranged(1, 50) = None  # type: ignore[valid-type]
    guidance: _ranged(1.5, 10, float) = None  # type: ignore[valid-type]
    webhook_url: str | None = Field(default=None, max_length=2048,
                                    json_schema_extra=WEBHOOK_URL_SCHEMA)
    webhook_secret: str | None = Field(default=None, json_schema_extra=WEBHOOK_SECRET_SCHEMA)


class BflFlux2Request(BflKleinRequest):
    """BFL's FLUX.2 [pro]/[max]/[flex] input: 8 references."""

    input_image_5: _Ref = None
    input_image_6: _Ref = None
    input_image_7: _Ref = None
    input_image_8: _Ref = None


class BflFlux3Request(BaseModel):
    """BFL's FLUX 3 Image input; other fields (`seed` included) are accepted, dropped and
    noted on the job. Each image must be at least 256x256 (a 400 otherwise)."""

    model_config = ConfigDict(extra="allow")

    prompt: str = Field(json_schema_extra=PROMPT_SCHEMA)
    images: list[Annotated[str, Field(json_schema_extra=IMAGE_REFERENCE_SCHEMA)]] | None = \
        Field(default=None, max_length=10)
    aspect_ratio: Literal["auto", "21:9", "2:1", "16:9", "3:2", "7:5", "4:3", "5:4", "1:1",
                          "4:5", "3:4", "5:7", "2:3", "9:16", "1:2", "9:21"] | None = None
    resolution: Literal["768sq", "1k", "1.5k", "2k", "4k"] | None = None
    grounding: StrictBool | None = None
    safety_tolerance: _ranged(0, 4) = None  # type: ignore[valid-type]
    version: str | None = Field(default=None, max_length=64)
    webhook_url: str | None = Field(default=None, max_length=2048,
                                    json_schema_extra=WEBHOOK_URL_SCHEMA)
    webhook_secret: str | None = Field(default=None, json_schema_extra=WEBHOOK_SECRET_SCHEMA)


_FLUX2_IMAGES = ("input_image", *(f"input_image_{i}" for i in range(2, 9)))
#: the FLUX.2 and FLUX 3 models BFL sells, each served at /v1/{id}
FAMILY_PATHS = {m.id: m.family for m in CATALOGUE_MODELS
                if m.family in ("flux2", "flux3") and m.bfl_route}


def _make_family_create(model: str, family: str) -> Callable[..., Awaitable[Response]]:
    create: Callable[..., Awaitable[Response]]
    if family == "flux3":
        async def create3(request: Request, body: BflFlux3Request,
                          principal: LimitedPrincipalDep, services: ServicesDep,
                          desk: DeskDep) -> Response:
            return await idempotent(request, principal, services, lambda gate: _create_family(
                gate, model, body, principal, services, desk))
        create = create3
    elif "klein" in model:
        async def create_klein(request: Request, body: BflKleinRequest,
                               principal: LimitedPrincipalDep, services: ServicesDep,
                               desk: DeskDep) -> Response:
            return await idempotent(request, principal, services, lambda gate: _create_family(
                gate, model, body, principal, services, desk))
        create = create_klein
    else:
        async def create2(request: Request, body: BflFlux2Request,
                          principal: LimitedPrincipalDep, services: ServicesDep,
                          desk: DeskDep) -> Response:
            return await idempotent(request, principal, services, lambda gate: _create_family(
                gate, model, body, principal, services, desk))
        create = create2
    create.__name__ = f"bfl_{model.replace('-', '_')}"
    create.__doc__ = (f"Create a {model} task (BFL-style); answers at once with its id, "
                      "polling_url, cost, input_mp and output_mp.")
    return create


for _path, _family in FAMILY_PATHS.items():
    router.add_api_route(f"/v1/{_path}", _make_family_create(_path, _family), methods=["POST"],
                         summary=f"BFL-style {_path}", responses=DETAIL_CREATE_ERRORS)


async def _create_family(gate: Gate, model: str, body: BflKleinRequest | BflFlux3Request,
                         principal: Principal, services: Services,
                         desk: OrderDesk) -> JSONResponse:
    principal.check_model(model)
    webhook_url, webhook_secret = await services.webhooks.accept(body.webhook_url,
                                                                 body.webhook_secret)
    fields = body.model_dump(exclude_none=True)
    unknown = dict(body.model_extra or {})
    order_notes: list[str] = []
    if isinstance(body, BflFlux3Request):
        refs = [(f"images[{i}]", ref) for i, ref in enumerate(body.images or [])]
        seed = unknown.pop("seed", None)
        ratio = None if (body.aspect_ratio or "auto") == "auto" else \
            intake.choose_aspect_ratio(aspect_ratio=body.aspect_ratio, size=None)
        upsampling = False
    else:
        slots = services.jobs.catalogue.spec(model).max_refs
        refs = intake.collect_image_refs(fields, _FLUX2_IMAGES[:slots])
        for key in _FLUX2_IMAGES[slots:]:  # klein: a fifth reference is not one of its fields
            unknown.pop(key, None)
            if fields.get(key):
                order_notes.append(f"{key}: {model} takes {slots} references; dropped")
        seed = body.seed
        ratio = None
        upsampling = bool(body.prompt_upsampling)
    order = Order(
        model=model, prompt=body.prompt,
        seed=intake.parse_seed(body.seed if isinstance(body, BflKleinRequest) else None),
        operation="edit" if refs else "generate", surface="bfl", aspect_ratio=ratio,
        output_format=intake.parse_output_format(
            fields.get("output_format"), default=services.jobs.catalogue.spec(model)
            .family.default_format),
        safety_tolerance=intake.parse_int(body.safety_tolerance, param="safety_tolerance")
        if body.safety_tolerance is not None else None,
        prompt_upsampling=upsampling, image_refs=refs, webhook_url=webhook_url,
        webhook_secret=webhook_secret, notes=order_notes)
    knobs = {k: v for k, v in fields.items() if k in family_fields.KNOBS}
    knobs.update(unknown)  # what the model does not take is dropped and noted
    family_rules.apply(order, services.jobs.catalogue.spec(model), width=fields.get("width"),
                       height=fields.get("height"), resolution=fields.get("resolution"),
                       seed_asked=family_rules.wants_seed(seed), knobs=knobs,
                       grounding_default=principal.grounding)
    rows = await gate.place(desk, customer_of(principal), order)
    row = rows[0]
    spec = JobSpec.model_validate(row.spec)
    input_mp, output_mp = job_megapixels(spec)
    return JSONResponse({"id": row.id, "polling_url": polling_url(services, row.id),
                         "cost": row.price / 10_000, "input_mp": input_mp,
                         "output_mp": output_mp})


async def _create(gate: Gate, model: str, body: BflKontextRequest, principal: Principal,
                  services: Services, desk: OrderDesk) -> JSONResponse:
    principal.check_model(model)
    webhook_url, webhook_secret = await services.webhooks.accept(body.webhook_url,
                                                                 body.webhook_secret)
    refs = intake.collect_image_refs(body.model_dump())
    extra: dict[str, Any] = {}
    if body.guidance is not None:
        extra["guidance"] = body.guidance
    if body.steps is not None:
        extra["steps"] = body.steps
    order = Order(
        model=model, prompt=body.prompt, seed=intake.parse_seed(body.seed),
        operation="edit" if refs else "generate", surface="bfl",
        aspect_ratio=intake.choose_aspect_ratio(aspect_ratio=body.aspect_ratio, size=None),
        output_format=intake.parse_output_format(body.output_format),
        safety_tolerance=intake.parse_safety(body.safety_tolerance),
        prompt_upsampling=bool(body.prompt_upsampling), extra=extra,
        image_refs=refs, webhook_url=webhook_url, webhook_secret=webhook_secret)
    rows = await gate.place(desk, customer_of(principal), order)
    row = rows[0]
    return JSONResponse({"id": row.id, "polling_url": polling_url(services, row.id),
                         "cost": row.price / 10_000, "input_mp": None, "output_mp": None})


def _unix(row: JobRow, attr: str) -> float | None:
    value = getattr(row, attr)
    return round(value.timestamp(), 3) if value is not None else None


def _moderation_status(row: JobRow) -> str:
    """`Request Moderated` (the input was refused) or `Content Moderated` (the output was).
    Upstreams that say which keep it in the message (BFL's adapter and the sandbox prefix its
    status); a job refused before any upstream took it is a refused request; any other
    moderation happened to the output."""
    message = row.error_message or ""
    if "Request Moderated" in message:
        return "Request Moderated"
    if "Content Moderated" in message or row.upstream_id:
        return "Content Moderated"
    return "Request Moderated"


def result_body(services: Services, row: JobRow) -> dict[str, Any]:
    """BFL's `ResultResponse` for a job of the caller."""
    body: dict[str, Any] = {"id": row.id, "status": "Pending", "result": None,
                            "progress": None, "details": None, "preview": None}
    status = JobStatus(row.status)
    if status is JobStatus.SUCCEEDED and row.outputs:
        output = row.outputs[0]
        start, end = _unix(row, "created_at"), _unix(row, "finished_at")
        body.update(status="Ready", progress=1.0, result={
            "sample": services.files.url(output["file_id"], output["ext"]),
            "seed": row.seed if (row.spec or {}).get("family") != "flux3" else None,
            "prompt": row.prompt, "start_time": start, "end_time": end,
            "duration": round(end - start, 3) if start is not None and end is not None
            else None})
    elif status.terminal:
        details: dict[str, Any] = {"code": row.error_code, "message": row.error_message}
        if row.error_code == "content_policy_violation":
            body["status"] = _moderation_status(row)
            details["Moderation Reasons"] = [row.error_message or "flagged"]
        else:
            body["status"] = "Error"
        body["details"] = details
    else:
        body["progress"] = _PROGRESS.get(row.stage, 0.0)
        upstream = (row.upstream_handle or {}).get("progress")
        if isinstance(upstream, int | float) and row.stage == Stage.SUBMITTED.value:
            # the upstream reports its own progress (a local worker: per denoising step)
            body["progress"] = round(0.1 + 0.8 * min(max(float(upstream), 0.0), 1.0), 4)
    return body


@router.get("/v1/get_result", responses={
    200: {"model": BflResultResponse},
    404: {"model": BflResultResponse, "description": "Task not found"}})
async def get_result(principal: PrincipalDep, services: ServicesDep,
                     id: Annotated[str, Query(max_length=100)]) -> JSONResponse:
    """The state of a task this key created; `Task not found` (404) for any other id."""
    row = await services.jobs.get(id)
    if row is None or row.key_id != principal.key_id:
        return JSONResponse({"id": id, "status": "Task not found", "result": None,
                             "progress": None, "details": None, "preview": None},
                            status_code=404)
    return JSONResponse(result_body(services, row))
