"""OpenAI image streaming: `stream: true` on POST /v1/images/generations and /v1/images/edits.

The answer is `text/event-stream` as OpenAI sends it (and as openai-python's
`client.images.generate(..., stream=True)` / `images.edit(..., stream=True)` read it): one
`event: image_generation.completed` (edits: `image_edit.completed`) per image, whose `data` is
the event object with `b64_json`, `created_at`, `size`, `quality`, `background`,
`output_format` and `usage`, plus our `url`, `width`, `height`, `seed` and `revised_prompt`.
While the upstream works, a `: ping` comment goes out every `chat.keepalive` seconds (proxies
and clients keep the connection). `size` is one of OpenAI's sizes or `auto` (older SDKs in
strict mode accept nothing else; `width`/`height` say the real size); `quality` is `auto`;
`background` is `opaque`. `usage` is nominal (images are not tokens): about 4 prompt
characters per text token, one image token per input image, one output token per image.

`partial_images` (0-3) is accepted; Kontext upstreams make no intermediate images, so no
`*.partial_image` events are sent (OpenAI says fewer than asked may come). Everything that can
be refused (key, limits, model, input, balance) is refused before the stream starts, as a normal
JSON error; a job that fails afterwards ends the stream with `data: {"error": {...}}`, which the
SDKs raise as an APIError. A client that leaves does not cancel its jobs (they run in the job
service, are stored and charged, or released, as any other).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import Request
from fastapi.responses import StreamingResponse

from billing.errors import BillingError
from gateway.api.deps import Services
from gateway.api.errors import stream_error_event
from gateway.errors import GatewayError, InvalidRequest
from gateway.jobs import intake
from gateway.jobs.model import JobStatus
from gateway.jobs.tables import JobRow

log = logging.getLogger(__name__)

StreamKind = Literal["image_generation", "image_edit"]
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
#: the `size` values every openai SDK accepts in a stream event (strict mode included)
EVENT_SIZES = ("1024x1024", "1024x1536", "1536x1024")
MAX_PARTIAL_IMAGES = 3
#: `responses=` entry of the creating routes: with `stream: true` the 200 is an event stream
STREAMED: dict[int | str, dict[str, Any]] = {200: {
    "description": "The images (JSON), or with `stream: true` OpenAI's image stream "
                   "(server-sent events)",
    "content": {"application/json": {}, "text/event-stream": {"schema": {"type": "string"}}}}}


def wants_stream(stream: object, partial_images: object, *, respond_async: bool) -> bool:
    """Whether the caller asked for an SSE stream (`stream` true); InvalidRequest for a
    `stream` or `partial_images` (0-3) that cannot be read, or a stream asked as a task."""
    on = False if stream is None else intake.parse_switch(stream, param="stream")  # strict
    if partial_images not in (None, ""):
        count = intake.parse_int(partial_images, param="partial_images")
        if not 0 <= count <= MAX_PARTIAL_IMAGES:
            raise InvalidRequest(f"Invalid partial_images {count}: use 0 to "
                                 f"{MAX_PARTIAL_IMAGES}.", param="partial_images")
    if on and respond_async:
        raise InvalidRequest("stream and async (Prefer: respond-async) cannot be combined: "
                             "choose one.", param="stream", code="invalid_stream")
    return on


def usage_of(prompt: str, input_images: int) -> dict[str, Any]:
    """Nominal per-image usage in OpenAI's shape (see the module docstring)."""
    text = max(1, math.ceil(len(prompt) / 4))
    return {"input_tokens": text + input_images, "output_tokens": 1,
            "total_tokens": text + input_images + 1,
            "input_tokens_details": {"text_tokens": text, "image_tokens": input_images}}


def completed_events(kind: StreamKind, answer: dict[str, Any], usage: dict[str, Any],
                     ) -> list[str]:
    """The `<kind>.completed` SSE frames of a finished images answer (one per image)."""
    frames = []
    for item in answer["data"]:
        size = f"{item['width']}x{item['height']}"
        event = {"type": f"{kind}.completed", "b64_json": item["b64_json"],
                 "created_at": int(time.time()), "size": size if size in EVENT_SIZES else "auto",
                 "quality": "auto", "background": "opaque",
                 "output_format": answer["output_format"], "usage": usage,
                 "url": item.get("url"), "width": item["width"], "height": item["height"],
                 "seed": item.get("seed"), "revised_prompt": item.get("revised_prompt")}
        frames.append(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n")
    return frames


async def events(services: Services, kind: StreamKind, job_ids: list[str], prompt: str,
                 input_images: int) -> AsyncIterator[str]:
    """The SSE answer for placed jobs; never raises (a failure is an error event)."""
    from gateway.api.images import images_response  # images imports this module

    keepalive = services.settings.chat.keepalive
    deadline = time.monotonic() + services.settings.jobs.sync_wait
    finished = False
    try:
        try:
            rows: list[JobRow] = []
            while True:
                remaining = deadline - time.monotonic()
                rows = await services.jobs.wait(job_ids,
                                                within=max(0.01, min(keepalive, remaining)))
                if all(JobStatus(r.status).terminal for r in rows) or remaining <= keepalive \
                        or services.jobs.draining:  # a stop: images_response says so
                    break
                yield ": ping\n\n"
            answer = await images_response(services, rows, None)
            for frame in completed_events(kind, answer, usage_of(prompt, input_images)):
                yield frame
        except Exception as exc:
            if not isinstance(exc, GatewayError | BillingError):
                log.exception("image stream for jobs %s failed", job_ids)
            yield stream_error_event(exc)
        finished = True
    finally:
        if not finished:
            log.info("image stream client left during jobs %s; they continue and are stored",
                     job_ids)


def stream_response(request: Request, services: Services, kind: StreamKind, rows: list[JobRow],
                    prompt: str, input_images: int) -> StreamingResponse:
    """The `text/event-stream` answer for jobs just placed (rate headers kept)."""
    headers = {**SSE_HEADERS, **(getattr(request.state, "rate_headers", None) or {})}
    return StreamingResponse(events(services, kind, [r.id for r in rows], prompt, input_images),
                             media_type="text/event-stream", headers=headers)
