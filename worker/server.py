"""The worker's HTTP job API (FastAPI), and `serve()` behind `fluxgate worker`.

Routes (every one needs `Authorization: Bearer <secret>` when the worker has a secret):
- `POST /v1/jobs` JSON `{id?, prompt, width?, height?, seed?, steps?, guidance?,
  images?: [base64], output_format?: png|jpeg|webp}` → 202, the job (below). `id` is the
  client's choice (letters, digits, `-`, `_`; up to 64): sending it again answers the same job.
  The size is the family's (`worker/families.py`); a missing seed is drawn and reported.
- `GET /v1/jobs/{id}` → `{id, status, step, steps, progress, width, height, seed, error,
  batch_size, content_type}`; 404 once unknown or forgotten.
- `GET /v1/jobs/{id}/result` → the image bytes (409 until the job succeeded).
- `POST /v1/jobs/{id}/cancel` → the job (cancel takes effect between two steps).
- `GET /health` → `{status, model, family, pipeline, device, dtype, queue_depth, running,
  max_batch, max_queue, max_steps, memory: {rss_bytes, peak_rss_bytes, device_allocated_bytes,
  device_reserved_bytes, device_total_bytes}, images_made, batches_run}`.
Errors: `{"error": {"code", "message"}}` with 400 (bad input), 401, 404, 409, 413, 429 (queue
full: nothing was queued, another worker may take it).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import io
import logging
import os
import re
import resource
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from PIL import Image, ImageOps
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from worker.families import Family, capped, detect
from worker.jobs import JobBoard, QueueFull
from worker.pipeline import Loaded, Runner, Work, load

log = logging.getLogger(__name__)

MAX_IMAGE_BYTES = 20 * 1024 * 1024
MAX_IMAGE_PIXELS = 40_000_000
MAX_BODY_BYTES = 120 * 1024 * 1024
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class JobRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str | None = Field(default=None, max_length=64)
    prompt: str = Field(min_length=1, max_length=10_000)
    width: int | None = Field(default=None, ge=16, le=8192)
    height: int | None = Field(default=None, ge=16, le=8192)
    seed: int | None = Field(default=None, ge=0, lt=2**63)
    steps: int | None = Field(default=None, ge=1)
    guidance: float | None = Field(default=None, ge=0, le=100)
    images: list[str] = Field(default_factory=list)
    output_format: Literal["png", "jpeg", "webp"] = "png"


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass(slots=True)
class WorkerConfig:
    model_path: Path
    device: str = "cpu"
    host: str = "127.0.0.1"
    port: int = 8200
    secret: str | None = None
    model: str | None = None  # the model id to report (default: the family's)
    max_batch: int = 1
    max_queue: int = 64
    max_steps: int = 100
    max_area: int | None = None  # render at most this many pixels (same ratio)


def _decode_image(text: str, family: Family) -> Image.Image:
    """One base64 input → an upright RGB image; raises ApiError (400/413)."""
    if len(text) > MAX_IMAGE_BYTES * 4 // 3 + 4:
        raise ApiError(413, "image_too_large", "an input image is over 20 MB")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(400, "invalid_image", "an input image is not valid base64") from exc
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > MAX_IMAGE_PIXELS:  # checked before decoding pixels
                raise ApiError(413, "image_too_large", "an input image is over 40 MP")
            upright = ImageOps.exif_transpose(im).convert("RGB")
    except ApiError:
        raise
    except Exception as exc:  # Pillow raises many types for a bad file
        raise ApiError(400, "invalid_image", "an input image cannot be decoded") from exc
    if min(upright.size) < family.min_input_side:
        raise ApiError(400, "invalid_image", f"input images must be at least "
                       f"{family.min_input_side} px on each side")
    return upright


def _memory(loaded: Loaded) -> dict[str, int | None]:
    page = os.sysconf("SC_PAGE_SIZE")
    try:
        rss = int(Path("/proc/self/statm").read_text().split()[1]) * page
    except (OSError, ValueError, IndexError):
        rss = None
    out: dict[str, int | None] = {
        "rss_bytes": rss, "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        * 1024, "device_allocated_bytes": None, "device_reserved_bytes": None,
        "device_total_bytes": None}
    if loaded.device.startswith("cuda"):
        import torch

        out["device_allocated_bytes"] = int(torch.cuda.memory_allocated(loaded.device))
        out["device_reserved_bytes"] = int(torch.cuda.memory_reserved(loaded.device))
        out["device_total_bytes"] = int(
            torch.cuda.get_device_properties(loaded.device).total_memory)
    return out


def create_app(loaded: Loaded, config: WorkerConfig) -> FastAPI:
    """The job API over one loaded pipeline; the runner thread runs for the app's lifespan.
    (Long for a function: the routes are closures over one board and config, kept together.)"""
    family = loaded.family
    board = JobBoard(Runner(loaded), max_batch=config.max_batch, max_queue=config.max_queue)
    model = config.model or family.model

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        board.start()
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(board.stop)

    app = FastAPI(title="fluxgate worker", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.board = board

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Response:
        if config.secret is not None:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {config.secret}".encode()):
                return _error(401, "unauthorized", "missing or wrong worker secret")
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > MAX_BODY_BYTES:
            return _error(413, "request_too_large", "the request body is too large")
        response: Response = await call_next(request)
        return response

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.code, exc.message)

    @app.post("/v1/jobs", status_code=202)
    async def submit(request: Request) -> JSONResponse:
        try:
            body = JobRequest.model_validate_json(await request.body())
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise ApiError(400, "invalid_request", f"{where}: {err['msg']}") from exc
        if body.id is not None and not _ID.match(body.id):
            raise ApiError(400, "invalid_request", "id: letters, digits, '-' and '_' only")
        if body.id is not None and (existing := board.get(body.id)) is not None:
            return JSONResponse(existing.view(), status_code=200)
        if len(body.images) > family.max_input_images:
            raise ApiError(400, "invalid_request", f"{model} takes at most "
                           f"{family.max_input_images} input image(s)")
        steps = body.steps or family.default_steps
        if steps > config.max_steps:
            raise ApiError(400, "invalid_request", f"steps: at most {config.max_steps}")
        images = [await anyio.to_thread.run_sync(_decode_image, text, family)
                  for text in body.images]
        first = images[0].size if images else None
        width, height = capped(family.output_size(body.width, body.height, first),
                               config.max_area)
        work = Work(prompt=body.prompt, width=width, height=height, steps=steps,
                    guidance=family.default_guidance if body.guidance is None
                    else body.guidance,
                    seed=body.seed if body.seed is not None else secrets.randbelow(2**32),
                    images=images, output_format=body.output_format)
        try:
            job = board.submit(work, body.id)
        except QueueFull as exc:
            raise ApiError(429, "queue_full", str(exc)) from exc
        log.info("job %s queued: %dx%d, %d steps, %d input(s)", job.id, width, height, steps,
                 len(images))
        return JSONResponse(job.view(), status_code=202)

    def _job(job_id: str) -> Any:
        job = board.get(job_id)
        if job is None:
            raise ApiError(404, "not_found", "no such job (unknown, or forgotten)")
        return job

    @app.get("/v1/jobs/{job_id}")
    async def poll(job_id: str) -> JSONResponse:
        return JSONResponse(_job(job_id).view())

    @app.get("/v1/jobs/{job_id}/result")
    async def result(job_id: str) -> Response:
        job = _job(job_id)
        if job.status != "succeeded" or job.result is None:
            raise ApiError(409, "not_ready", f"the job is {job.status}")
        return Response(job.result, media_type=job.content_type)

    @app.post("/v1/jobs/{job_id}/cancel")
    async def cancel(job_id: str) -> JSONResponse:
        job = board.cancel(job_id)
        if job is None:
            raise ApiError(404, "not_found", "no such job (unknown, or forgotten)")
        return JSONResponse(job.view())

    @app.get("/health")
    async def health() -> JSONResponse:
        return JSONResponse({
            "status": "ok", "model": model, "family": family.name,
            "pipeline": family.pipeline_class, "device": loaded.device, "dtype": loaded.dtype,
            "queue_depth": board.queue_depth(), "running": board.running(),
            "max_batch": board.max_batch, "max_queue": board.max_queue,
            "max_steps": config.max_steps, "max_area": config.max_area,
            "max_input_images": family.max_input_images,
            "memory": _memory(loaded), "images_made": board.images_made,
            "batches_run": board.batches_run})

    return app


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def serve(config: WorkerConfig) -> None:
    """Load the model, then serve the job API until SIGINT/SIGTERM; raises ModelDirError for a
    folder that holds no supported pipeline, RuntimeError for an unusable device."""
    import uvicorn

    family = detect(config.model_path)
    log.info("loading %s from %s onto %s", family.pipeline_class, config.model_path,
             config.device)
    loaded = load(config.model_path, family, config.device)
    app = create_app(loaded, config)
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning",
                timeout_graceful_shutdown=5)
