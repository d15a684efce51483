"""Replicate-compatible predictions API, mounted at `/replicate` for the official clients
(Python: `base_url=".../replicate"`, JS: `baseUrl: ".../replicate/v1"`).

    POST /replicate/v1/models/{owner}/{name}/predictions   create (Prefer: wait[=N], max 60)
    GET  /replicate/v1/predictions/{id}                    the prediction (the caller's only)
    POST /replicate/v1/predictions/{id}/cancel             cancel; nothing is charged
    POST /replicate/v1/files                               upload (multipart part `content`)
    GET  /replicate/v1/files/{id}                          the File object
    GET  /replicate/v1/models/{owner}/{name}               a minimal Model object

Facts the clients depend on (`/work/shared/reference/clients.md` §2.5, §3.4): a Prediction has
`id`, `model`, `version` (always the string "hidden") and a `status` of starting, processing,
succeeded, failed or canceled. With `Prefer: wait`, `replicate.run()` treats every status but
`starting` as final, so the create answer is the finished prediction or `starting`, never
`processing` (polls may say `processing`). A Kontext output is one URI string. A failed job is
a `failed` prediction with `error` text (moderation included), not an HTTP error.

A file uploaded here is answered with `urls.get` = the gateway's signed file URL; inputs that
name it (or any other gateway file URL) are read from storage, never fetched over HTTP.

Webhooks: `webhook` becomes the job's webhook URL and receives the gateway's own signed job
payload (`gateway/webhooks/outbox.py`), not a Replicate prediction object, once, when the job
ends; `webhook_events_filter` without `completed` turns it off (no other events are sent).
Errors are Replicate's `{"title", "detail", "status"}` (see `gateway/api/errors.py`).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool
from starlette.formparsers import MultiPartException, MultiPartParser

from gateway.api import family_fields
from gateway.api.deps import LimitedPrincipalDep, Principal, PrincipalDep, Services, ServicesDep
from gateway.api.edits import bounded
from gateway.api.guards import Gate, idempotent
from gateway.api.images import DeskDep, customer_of
from gateway.api.openapi import FILE_REQUEST_BODY, REPLICATE_CREATE_ERRORS, REPLICATE_ERRORS
from gateway.api.own_files import attach_refs
from gateway.api.schemas import PROMPT_SCHEMA, RATIOS
from gateway.errors import InvalidRequest, NotFound, PayloadTooLarge
from gateway.jobs import intake
from gateway.jobs.intake import MAX_SEED
from gateway.jobs.model import JobSpec, JobStatus, OutputFormat
from gateway.jobs.orders import Order, OrderDesk
from gateway.jobs.tables import JobRow
from gateway.models import MODELS, resolve_model
from gateway.storable import refuse_unstorable
from gateway.storage.tables import FileRow

router = APIRouter(prefix="/replicate", responses=REPLICATE_ERRORS)

OWNER = "black-forest-labs"
VERSION = "hidden"  # what Replicate shows for official models; the clients need a string
MAX_WAIT = 60
IMAGE_FIELDS = ("input_image", "input_image_1", "input_image_2", "input_image_3",
                "input_image_4")
EVENTS = {"start", "output", "logs", "completed"}
#: job status -> prediction status on polls (the create answer never says `processing`)
STATUSES = {JobStatus.QUEUED: "starting", JobStatus.RUNNING: "processing",
            JobStatus.SUCCEEDED: "succeeded", JobStatus.FAILED: "failed",
            JobStatus.CANCELED: "canceled"}
_FORMAT_NAMES = {"jpeg": "jpg"}  # Replicate's enum says jpg
_WAIT_RE = re.compile(r"^\s*wait\s*(?:=\s*(\d+)\s*)?$", re.IGNORECASE)


#: the documented shape of a prediction's `input` (Replicate's Kontext schema; checked by
#: `order_for`, not by the model, so the errors stay Replicate-style)
PREDICTION_INPUT: dict[str, Any] = {
    "required": ["prompt"],
    "properties": {
        "prompt": {"type": "string", **PROMPT_SCHEMA},
        "input_image": {"type": "string", "description": "URL, data URL or uploaded file URL"},
        "aspect_ratio": {"type": "string", "enum": [*RATIOS, "match_input_image"]},
        "seed": {"type": "integer", "minimum": -1, "maximum": MAX_SEED},
        "output_format": {"type": "string", "enum": ["png", "jpg", "jpeg", "webp"]},
        "safety_tolerance": {"type": "integer", "minimum": 0, "maximum": 6},
        "prompt_upsampling": {"type": "boolean"},
        "go_fast": {"type": "boolean"},
        "guidance": {"type": "number", "minimum": 0, "maximum": 10},
        "num_inference_steps": {"type": "integer", "minimum": 4, "maximum": 50},
        "output_quality": {"type": "integer", "minimum": 0, "maximum": 100},
    },
}


class PredictionRequest(BaseModel):
    """The body of an official model's create call (unknown fields are ignored)."""

    model_config = ConfigDict(extra="allow")

    input: dict[str, Any] = Field(json_schema_extra=PREDICTION_INPUT)
    webhook: str | None = None
    webhook_events_filter: list[str] | None = None
    stream: StrictBool | None = None  # a JSON boolean (not "yes")


# -- parsing ----------------------------------------------------------------------------------
def prefer_wait(header: str | None) -> int:
    """Seconds to hold the create call: `Prefer: wait` is 60, `wait=N` is N (at most 60),
    anything else (absent, `respond-async`) 0."""
    for pref in (header or "").split(","):
        m = _WAIT_RE.match(pref)
        if m:
            return min(int(m.group(1)), MAX_WAIT) if m.group(1) else MAX_WAIT
    return 0


def model_for(owner: str, name: str) -> str:
    """Our canonical model for `{owner}/{name}` (every family's Replicate name); raises
    NotFound."""
    if owner.lower() != OWNER:
        raise NotFound(f"Model {owner}/{name} not found; this gateway serves "
                       f"{', '.join(f'{OWNER}/{m.id}' for m in MODELS)}.", code="model_not_found")
    return resolve_model(f"{owner}/{name}")


def _bounded_number(fields: dict[str, Any], name: str, lo: float, hi: float, *,
                    integer: bool) -> None:
    value = fields.get(name)
    if value is None:
        return
    number: float = (intake.parse_int(value, param=name) if integer
                     else intake.parse_float(value, param=name))
    if not lo <= number <= hi:
        raise InvalidRequest(f"Invalid {name} {value!r}: must be between {lo:g} and {hi:g}.",
                             param=name)
    fields[name] = number


def knobs(inputs: dict[str, Any]) -> dict[str, Any]:
    """The flux-kontext-dev knobs (`go_fast`, `guidance`, `num_inference_steps`,
    `output_quality`), checked against Replicate's ranges; raises InvalidRequest."""
    extra = {k: inputs[k] for k in ("go_fast", "guidance", "num_inference_steps",
                                    "output_quality") if inputs.get(k) is not None}
    _bounded_number(extra, "guidance", 0, 10, integer=False)
    _bounded_number(extra, "num_inference_steps", 4, 50, integer=True)
    _bounded_number(extra, "output_quality", 0, 100, integer=True)
    if "go_fast" in extra:
        extra["go_fast"] = intake.parse_bool(extra["go_fast"], param="go_fast")
    return extra


def _image_list(inputs: dict[str, Any], key: str) -> list[tuple[str, str]]:
    value = inputs.get(key)
    if value in (None, ""):
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidRequest(f"Invalid {key}: expected a list of image URLs.", param=key)
    return [(f"{key}[{i}]", v) for i, v in enumerate(value) if v]


def family_order_for(services: Services, principal: Principal, model: str,
                     inputs: dict[str, Any], webhook_url: str | None,
                     webhook_secret: str | None) -> Order:
    """An Order from a FLUX.2 or FLUX 3 prediction's `input`, in Replicate's schemas
    (`black-forest-labs/flux-2-*`: `input_images`, `aspect_ratio` incl. `match_input_image`/
    `custom` with `width`/`height`, `resolution` in megapixels, `output_format` default webp;
    `flux-3-image`: `images`, `aspect_ratio`, `resolution` class, `grounding`). Fields the
    model does not take are dropped and noted; raises InvalidRequest (422)."""
    spec = services.jobs.catalogue.spec(model)
    flux3 = spec.family.name == "flux3"
    prompt = inputs.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidRequest("input.prompt is required (a non-empty string).", param="prompt")
    refs = _image_list(inputs, "images" if flux3 else "input_images")
    ratio_text = str(inputs.get("aspect_ratio") or "").strip()
    custom = ratio_text == "custom"
    ratio = None if custom or ratio_text in ("", "auto") else \
        intake.choose_aspect_ratio(aspect_ratio=ratio_text, size=None)
    fields = dict(inputs)
    if "num_inference_steps" in fields:  # flux-2-dev's name for steps
        fields["steps"] = fields.pop("num_inference_steps")
    size = None
    if not flux3 and not custom and inputs.get("resolution") not in (None, ""):
        mp = _megapixels(inputs["resolution"])
        w, h = (float(x) for x in (ratio or "1:1").split(":"))
        size = f"{round((mp * (1 << 20) * w / h) ** 0.5)}x{round((mp * (1 << 20) * h / w) ** 0.5)}"
        fields.pop("resolution")
    order = Order(
        model=model, prompt=prompt,
        seed=intake.parse_seed(None if flux3 else inputs.get("seed")),
        operation="edit" if refs else "generate", aspect_ratio=ratio,
        output_format=intake.parse_output_format(inputs.get("output_format"), default="webp"),
        quality=intake.parse_quality(output_quality=inputs.get("output_quality")),
        safety_tolerance=intake.parse_safety(inputs.get("safety_tolerance")),
        prompt_upsampling=intake.parse_bool(inputs.get("prompt_upsampling") or False,
                                            param="prompt_upsampling"),
        image_refs=refs, surface="replicate", webhook_url=webhook_url,
        webhook_secret=webhook_secret)
    known = {"prompt", "images", "input_images", "aspect_ratio", "seed", "output_format",
             "output_quality", "safety_tolerance", "prompt_upsampling", "width", "height",
             "resolution"}
    knobs = {k: v for k, v in fields.items() if k not in known}
    family_fields.fit(order, services, principal,
                      {**{k: fields.get(k) for k in ("resolution",) if flux3},
                       **({"width": fields.get("width"), "height": fields.get("height")}
                          if custom or not flux3 else {}),
                       **knobs}, size=size, seed=inputs.get("seed") if flux3 else None,
                      knobs=tuple(knobs))
    return order


def _megapixels(value: Any) -> float:
    """Replicate's FLUX.2 `resolution`: "1 MP", "0.5", 2 ... -> megapixels (0.25..4)."""
    text = str(value).strip().lower().removesuffix("mp").strip()
    mp = intake.parse_float(text, param="resolution")
    if not 0.25 <= mp <= 4:
        raise InvalidRequest(f"Invalid resolution {value!r}: 0.25 to 4 megapixels.",
                             param="resolution")
    return mp


def order_for(model: str, inputs: dict[str, Any], webhook_url: str | None,
              webhook_secret: str | None) -> Order:
    """An Order from a prediction's `input` (Replicate's Kontext schema); raises
    InvalidRequest for missing or malformed fields (rendered as 422)."""
    prompt = inputs.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidRequest("input.prompt is required (a non-empty string).", param="prompt")
    default: OutputFormat = "webp" if model == "flux-kontext-dev" else "png"
    refs = intake.collect_image_refs(inputs, IMAGE_FIELDS)
    return Order(
        model=model, prompt=prompt, seed=intake.parse_seed(inputs.get("seed")),
        operation="edit" if refs else "generate",
        aspect_ratio=intake.choose_aspect_ratio(aspect_ratio=inputs.get("aspect_ratio"),
                                                size=None),
        output_format=intake.parse_output_format(inputs.get("output_format"), default=default),
        quality=intake.parse_quality(output_quality=inputs.get("output_quality")),
        safety_tolerance=intake.parse_safety(inputs.get("safety_tolerance")),
        prompt_upsampling=intake.parse_bool(inputs.get("prompt_upsampling") or False,
                                            param="prompt_upsampling"),
        extra=knobs(inputs), image_refs=refs, surface="replicate",
        webhook_url=webhook_url, webhook_secret=webhook_secret)


# -- rendering --------------------------------------------------------------------------------
def _iso(dt: datetime | None) -> str | None:
    if dt is None:
        return None
    aware = dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)
    return aware.astimezone(UTC).isoformat().replace("+00:00", "Z")


async def prediction(services: Services, row: JobRow, *, creating: bool = False,
                     ) -> dict[str, Any]:
    """The Replicate Prediction object for a job. `creating`: the create answer, where a job
    that is not finished is `starting` (see the module docstring)."""
    spec = JobSpec.model_validate(row.spec)
    status = JobStatus(row.status)
    shown = "starting" if creating and not status.terminal else STATUSES[status]
    base = f"{services.settings.resolved_public_base_url}/replicate/v1/predictions/{row.id}"
    inputs: dict[str, Any] = {"prompt": spec.prompt, "seed": spec.seed,
                              "aspect_ratio": spec.aspect_ratio or "match_input_image",
                              "output_format": _FORMAT_NAMES.get(spec.output_format,
                                                                 spec.output_format),
                              "prompt_upsampling": spec.prompt_upsampling}
    if spec.safety_tolerance is not None:
        inputs["safety_tolerance"] = spec.safety_tolerance
    inputs.update(spec.extra)
    stored: list[str | None] = []
    for file_id in spec.input_file_ids:
        try:  # the stored copy, not the client's (possibly megabytes of base64) reference
            stored.append(services.files.url(file_id, (await services.files.row(file_id)).ext))
        except NotFound:
            stored.append(None)
    if spec.family == "kontext":
        inputs.update(zip(("input_image", "input_image_2", "input_image_3", "input_image_4"),
                          stored, strict=False))
    else:
        inputs.pop("prompt_upsampling", None)
        if spec.family == "flux3":
            inputs.pop("seed", None)
            inputs["aspect_ratio"] = spec.aspect_ratio or "auto"
            inputs["resolution"] = spec.resolution
        else:
            inputs.update(aspect_ratio="custom", width=spec.width, height=spec.height)
        if stored:
            inputs["images" if spec.family == "flux3" else "input_images"] = stored
    output = None
    if status is JobStatus.SUCCEEDED and row.outputs:
        first = row.outputs[0]
        output = services.files.url(first["file_id"], first["ext"])
    error = None
    if status is JobStatus.FAILED:
        error = row.error_message or "The prediction failed."
        if row.error_code == "content_policy_violation" and "safety" not in error.lower():
            error = f"Content moderated by the safety filter: {error}"
    metrics: dict[str, Any] = {}
    if status is JobStatus.SUCCEEDED:
        metrics = {"image_count": len(row.outputs)}
        if row.upstream_latency is not None:
            metrics["predict_time"] = row.upstream_latency
    return {
        "id": row.id, "model": f"{OWNER}/{row.model}", "version": VERSION, "status": shown,
        "input": inputs, "output": output, "error": error, "logs": "\n".join(spec.notes),
        "metrics": metrics,
        "data_removed": False, "source": "api",
        "created_at": _iso(row.created_at), "started_at": _iso(row.submitted_at),
        "completed_at": _iso(row.finished_at) if status.terminal else None,
        "urls": {"get": base, "cancel": f"{base}/cancel"},
        "webhook": spec.webhook_url,
    }


def file_object(services: Services, row: FileRow) -> dict[str, Any]:
    """The Replicate File object, with the name and metadata it was uploaded with; `urls.get`
    is the gateway's signed file URL."""
    return {
        "id": row.id, "name": row.name or f"{row.id}.{row.ext}",
        "content_type": row.content_type, "size": row.size, "etag": row.sha256[:32],
        "checksums": {"sha256": row.sha256}, "metadata": row.meta or {},
        "created_at": _iso(row.created_at), "expires_at": None,
        "urls": {"get": services.files.url(row.id, row.ext)},
    }


# -- routes -----------------------------------------------------------------------------------
async def _own_job(services: Services, principal: Principal, prediction_id: str) -> JobRow:
    row = await services.jobs.get(prediction_id)
    if row is None or row.key_id != principal.key_id or row.surface != "replicate":
        raise NotFound(f"Prediction {prediction_id} not found.", code="prediction_not_found")
    return row


@router.post("/v1/models/{owner}/{name}/predictions", status_code=201,
             responses=REPLICATE_CREATE_ERRORS)
async def create_prediction(owner: str, name: str, body: PredictionRequest, request: Request,
                            principal: LimitedPrincipalDep, services: ServicesDep,
                            desk: DeskDep) -> Response:
    """Create a prediction for an official Kontext model; with `Prefer: wait[=N]` hold the
    call up to N s (60 at most) for it to finish. Honours `Idempotency-Key`."""
    return await idempotent(request, principal, services, lambda gate: _create(
        gate, owner, name, body, prefer_wait(request.headers.get("prefer")), principal,
        services, desk))


async def _create(gate: Gate, owner: str, name: str, body: PredictionRequest, wait: int,
                  principal: Principal, services: Services, desk: OrderDesk) -> JSONResponse:
    model = model_for(owner, name)
    principal.check_model(model)
    webhook = body.webhook
    if body.webhook_events_filter is not None:
        unknown = set(body.webhook_events_filter) - EVENTS
        if unknown:
            raise InvalidRequest(f"Invalid webhook_events_filter {sorted(unknown)}: use "
                                 f"{sorted(EVENTS)}.", param="webhook_events_filter")
        if "completed" not in body.webhook_events_filter:
            webhook = None  # only the completed event is ever sent
    webhook_url, webhook_secret = await services.webhooks.accept(webhook, None)
    if services.jobs.catalogue.family_of(model) == "kontext":
        order = order_for(model, body.input, webhook_url, webhook_secret)
    else:
        order = family_order_for(services, principal, model, body.input, webhook_url,
                                 webhook_secret)
    refs, order.image_refs = order.image_refs, []
    await attach_refs(services, principal, refs, order,
                      param=refs[0][0].partition("[")[0] if refs else "input_image")
    [row] = await gate.place(desk, customer_of(principal), order)
    if wait > 0:
        [row] = await services.jobs.wait([row.id], within=wait)
    return JSONResponse(await prediction(services, row, creating=True), status_code=201)


@router.get("/v1/predictions/{prediction_id}")
async def get_prediction(prediction_id: str, principal: PrincipalDep,
                         services: ServicesDep) -> JSONResponse:
    """The caller's prediction (404 for another key's). Not counted against the rate limit:
    the clients poll every 0.5 s."""
    row = await _own_job(services, principal, prediction_id)
    return JSONResponse(await prediction(services, row))


@router.post("/v1/predictions/{prediction_id}/cancel")
async def cancel_prediction(prediction_id: str, principal: PrincipalDep,
                            services: ServicesDep) -> JSONResponse:
    """Cancel the caller's prediction; a finished one is answered as it is."""
    await _own_job(services, principal, prediction_id)
    row = await services.jobs.cancel(prediction_id)
    if row is None:
        raise NotFound(f"Prediction {prediction_id} not found.", code="prediction_not_found")
    return JSONResponse(await prediction(services, row))


@router.post("/v1/files", status_code=201, openapi_extra=FILE_REQUEST_BODY,
              responses=REPLICATE_CREATE_ERRORS)
async def create_file(request: Request, principal: LimitedPrincipalDep, services: ServicesDep,
                      desk: DeskDep) -> JSONResponse:
    """Store an uploaded image (multipart part `content`, optional `metadata` JSON) and
    answer its File object. Only images are accepted (sniffed, with the usual limits)."""
    limits = services.settings.limits
    if request.headers.get("content-type", "").partition(";")[0].strip() \
            != "multipart/form-data":
        raise InvalidRequest("Send the file as multipart/form-data with a `content` part.",
                             param="content")
    # two file parts at most: replicate-js sends `metadata` as a JSON blob (filename "blob")
    parser = MultiPartParser(request.headers, bounded(request, limits.max_image_bytes + 65536),
                             max_files=2, max_fields=8, max_part_size=65536)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise InvalidRequest(f"Invalid multipart body: {exc.message}", param="content") from exc
    try:
        part = form.get("content")
        if part is None or isinstance(part, str):
            raise InvalidRequest("The file must be sent as the multipart part `content`.",
                                 param="content")
        if (part.size or 0) > limits.max_image_bytes:
            raise PayloadTooLarge(f"content: the file is larger than {limits.max_image_bytes} "
                                  "bytes.", param="content")
        data = await part.read()
        filename = part.filename
        raw_meta = form.get("metadata")
        if raw_meta is not None and not isinstance(raw_meta, str):  # a file part (JS client)
            if (raw_meta.size or 0) > 65536:
                raise InvalidRequest("metadata is larger than 64 KiB.", param="metadata")
            raw_meta = (await raw_meta.read()).decode("utf-8", errors="replace")
        if [k for k, v in form.multi_items() if k not in ("content", "metadata")
                and not isinstance(v, str)]:
            raise InvalidRequest("Only the parts `content` and `metadata` are accepted.",
                                 param="content")
        # other text parts are ignored, but not ones the databases could not store
        refuse_unstorable({k: v for k, v in form.multi_items() if isinstance(v, str)})
    finally:
        await form.close()
    metadata: dict[str, Any] = {}
    if isinstance(raw_meta, str) and raw_meta.strip():
        try:
            parsed = json.loads(raw_meta)
        except ValueError as exc:
            raise InvalidRequest("metadata must be a JSON object.", param="metadata") from exc
        if not isinstance(parsed, dict):
            raise InvalidRequest("metadata must be a JSON object.", param="metadata")
        metadata = parsed
    refuse_unstorable({"content": filename or "", "metadata": metadata})
    image = await desk.load_image("content", data)
    stored = await services.files.put(image.data, image.mime, kind="upload",
                                      key_id=principal.key_id, size=(image.width, image.height),
                                      name=(filename or "")[:255] or None, meta=metadata)
    row = await services.files.row(stored.id)
    return JSONResponse(file_object(services, row), status_code=201)


@router.get("/v1/files/{file_id}")
async def get_file(file_id: str, principal: PrincipalDep, services: ServicesDep) -> JSONResponse:
    """The File object of a file the caller uploaded."""
    try:
        row = await services.files.row(file_id)
    except NotFound:
        row = None
    if row is None or row.key_id != principal.key_id or row.kind != "upload":
        raise NotFound(f"File {file_id} not found.", code="file_not_found")
    return JSONResponse(file_object(services, row))


@router.get("/v1/models/{owner}/{name}")
async def get_model(owner: str, name: str, _principal: PrincipalDep) -> JSONResponse:
    """A minimal Model object (no versions or schema: official models are run by name)."""
    model = model_for(owner, name)
    info = next(m for m in MODELS if m.id == model)
    return JSONResponse({
        "url": f"https://replicate.com/{OWNER}/{model}", "owner": OWNER, "name": model,
        "description": info.description, "visibility": "public", "run_count": 0,
        "github_url": None, "paper_url": None, "license_url": None, "cover_image_url": None,
        "default_example": None, "latest_version": None,
    })

