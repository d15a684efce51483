"""The sandbox upstream: a deterministic, offline, synthetic stand-in for every FLUX model family
(FLUX.1 Kontext, FLUX.2, FLUX 3 Image).

Used for test-mode keys, demos, tests and benchmarks. It is labelled a sandbox everywhere a
user can see it: the capability label is "sandbox" and every image carries the text
"FLUXGATE SANDBOX".

Contract:
- The same model, prompt, seed, aspect ratio, output format, quality and inputs give the same
  bytes (`quality` is used for JPEG and WebP, as an upstream that takes one would).
- The output size is the Kontext ~1 MP bucket for the requested ratio (or, with an input image
  and no ratio, for the input's ratio); for FLUX.2 it is the asked `width` x `height`, for
  FLUX 3 the size of its ratio and resolution class (what the gateway expects back).
- It takes as many input images as the real family: Kontext 4 (the `max_input_images`
  option), FLUX.2 8 (klein 4: the gateway applies the model's limit), FLUX 3 10.
- With input images, the result is a visible, deterministic transformation of the first input
  (fitted to the bucket and colour-inverted); further inputs appear as thumbnails in a corner.
- Behaviour knobs (from the channel options, or per request by words in the prompt):
  latency (`sandbox:latency=SECONDS`), failure (`failure_rate`, `sandbox:fail`), moderation
  (`moderation_word`, `sandbox:moderate`) and stuck jobs (`sandbox:stuck`, never finishes).
Tasks live in memory: after a restart the sandbox answers "not found", like an upstream that
lost a task.
"""

from __future__ import annotations

import hashlib
import io
import random
import re
import time
import uuid
from dataclasses import dataclass

import anyio
from PIL import Image, ImageDraw, ImageFont, ImageOps
from pydantic import BaseModel, Field

from adapters.base import (
    Capabilities,
    InputImage,
    UpstreamJob,
    UpstreamOutput,
    UpstreamRequest,
    UpstreamState,
    UpstreamUnavailable,
)
from adapters.buckets import MAX_RATIO, MIN_RATIO, bucket_for_ratio

SANDBOX_MODELS = ("flux-kontext-pro", "flux-kontext-max", "flux-kontext-dev", "flux-2-pro",
                  "flux-2-pro-preview", "flux-2-max", "flux-2-flex", "flux-2-klein-4b",
                  "flux-2-klein-9b", "flux-2-dev", "flux-3-image")
#: input images per family beyond Kontext's (BFL's figures: upstreams-2026-12.md §1.1)
FAMILY_INPUTS = {"flux2": 8, "flux3": 10}
_LATENCY_RE = re.compile(r"sandbox:latency=(\d+(?:\.\d+)?)")


class SandboxOptions(BaseModel):
    """Channel options for the sandbox upstream."""

    latency: float = 0.05  # seconds from submit to Ready
    failure_rate: float = 0.0  # share of jobs that end in an upstream error
    moderation_word: str = "sandbox:moderate"  # a prompt containing it is moderated
    fail_word: str = "sandbox:fail"
    stuck_word: str = "sandbox:stuck"
    random_seed: int = 0  # makes the failure draw repeatable
    models: tuple[str, ...] = SANDBOX_MODELS
    max_input_images: int = Field(default=4, ge=1, le=8)  # fewer slots make the gateway stitch


@dataclass(slots=True)
class _Task:
    request: UpstreamRequest
    ready_at: float
    outcome: UpstreamState
    error: str | None = None


class SandboxAdapter:
    """In-process synthetic upstream (see the module docstring)."""

    def __init__(self, options: SandboxOptions | None = None) -> None:
        self.options = options or SandboxOptions()
        self.capabilities = Capabilities(
            models=self.options.models,
            max_input_images=self.options.max_input_images,
            min_ratio=MIN_RATIO,
            max_ratio=MAX_RATIO,
            output_formats=("png", "jpeg", "webp"),
            safety_range=(0, 6),
            supports_cancel=True,
            label="sandbox",
            family_inputs=dict(FAMILY_INPUTS),
        )
        self._tasks: dict[str, _Task] = {}
        self._rng = random.Random(self.options.random_seed)
        self.submitted = 0  # for tests and benchmarks: how many jobs were accepted

    async def submit(self, req: UpstreamRequest) -> UpstreamJob:
        opts = self.options
        prompt = req.prompt
        latency = opts.latency
        if m := _LATENCY_RE.search(prompt):
            latency = float(m.group(1))
        outcome, error = UpstreamState.SUCCEEDED, None
        if opts.moderation_word and opts.moderation_word in prompt:
            outcome, error = UpstreamState.MODERATED, "Request Moderated (sandbox)"
        elif opts.stuck_word and opts.stuck_word in prompt:
            outcome = UpstreamState.PENDING
        elif ((opts.fail_word and opts.fail_word in prompt)
              or self._rng.random() < opts.failure_rate):
            outcome, error = UpstreamState.FAILED, "sandbox upstream error (simulated failure)"
        task_id = f"sbx_{uuid.uuid4().hex}"
        self._tasks[task_id] = _Task(req, time.monotonic() + latency, outcome, error)
        self.submitted += 1
        return UpstreamJob(id=task_id, state=UpstreamState.PENDING,
                           poll_url=f"sandbox://tasks/{task_id}", progress=0.0)

    async def poll(self, job: UpstreamJob) -> UpstreamJob:
        task = self._tasks.get(job.id)
        if task is None:
            job.state = UpstreamState.NOT_FOUND
            job.error_code, job.error_message = "not_found", "Task not found (sandbox)"
            return job
        now = time.monotonic()
        if task.outcome is UpstreamState.PENDING or now < task.ready_at:
            remaining = max(task.ready_at - now, 0.0)
            job.state = UpstreamState.PENDING
            job.retry_after = min(remaining, 1.0) if remaining else 1.0
            return job
        job.state = task.outcome
        if task.outcome is UpstreamState.SUCCEEDED:
            data, mime = await anyio.to_thread.run_sync(render, task.request)
            job.outputs = [UpstreamOutput(data=data, content_type=mime)]
            job.progress = 1.0
            job.cost = 0.0
        else:
            job.error_code = "content_moderated" if task.outcome is UpstreamState.MODERATED \
                else "upstream_error"
            job.error_message = task.error
        self._tasks.pop(job.id, None)
        return job

    async def cancel(self, job: UpstreamJob) -> None:
        self._tasks.pop(job.id, None)

    async def download(self, output: UpstreamOutput) -> bytes:
        if output.data is not None:
            return output.data
        raise UpstreamUnavailable("the sandbox returns its images inline; nothing to download")


def _digest(req: UpstreamRequest) -> bytes:
    h = hashlib.sha256()
    parts = [req.model, req.prompt, str(req.seed), str(req.aspect_ratio), req.output_format,
             str(req.quality)]
    if req.family != "kontext":  # FLUX.2/3: the size and knobs change the image too
        parts += [str(req.width), str(req.height), str(req.resolution),
                  repr(sorted(req.extra.items()))]
    for part in parts:
        h.update(part.encode())
        h.update(b"\0")
    for image in req.images:
        h.update(hashlib.sha256(image.data).digest())
    return h.digest()


def output_size(req: UpstreamRequest) -> tuple[int, int]:
    """The bucket the sandbox renders for `req` (the asked or expected size for FLUX.2/3)."""
    if req.family != "kontext" and req.width and req.height:
        return req.width, req.height
    if req.aspect_ratio:
        w, h = req.aspect_ratio.split(":")
        return bucket_for_ratio(float(w) / float(h))
    if req.images:
        first = req.images[0]
        return bucket_for_ratio(first.width / first.height)
    return (1024, 1024)


def _open(image: InputImage) -> Image.Image:
    with Image.open(io.BytesIO(image.data)) as im:
        upright = ImageOps.exif_transpose(im)
        return upright.convert("RGB")


def render(req: UpstreamRequest) -> tuple[bytes, str]:
    """Render the deterministic sandbox image for `req`; answers (bytes, mime type)."""
    width, height = output_size(req)
    digest = _digest(req)
    rng = random.Random(digest)
    if req.images:
        canvas = ImageOps.invert(ImageOps.fit(_open(req.images[0]), (width, height)))
        for i, extra in enumerate(req.images[1:]):
            thumb = ImageOps.fit(_open(extra), (width // 6, height // 6))
            canvas.paste(thumb, (width - (i + 1) * (width // 6 + 8), height - height // 6 - 8))
    else:
        c1 = tuple(rng.randrange(256) for _ in range(3))
        c2 = tuple(rng.randrange(256) for _ in range(3))
        gradient = Image.linear_gradient("L").resize((width, height))
        canvas = ImageOps.colorize(gradient, c1, c2)
        draw = ImageDraw.Draw(canvas)
        for _ in range(6):
            x, y = rng.randrange(width), rng.randrange(height)
            r = rng.randrange(40, 220)
            fill = tuple(rng.randrange(256) for _ in range(3))
            draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=28)
    label = f"FLUXGATE SANDBOX  {req.model}  seed={req.seed}"
    draw.rectangle((0, 0, width, 44), fill=(0, 0, 0))
    draw.text((12, 8), label, fill=(255, 255, 0), font=font)
    draw.text((12, height - 40), req.prompt[:60], fill=(255, 255, 255), font=font,
              stroke_width=2, stroke_fill=(0, 0, 0))
    buf = io.BytesIO()
    if req.output_format == "jpeg":
        canvas.save(buf, "JPEG", quality=90 if req.quality is None else req.quality)
        return buf.getvalue(), "image/jpeg"
    if req.output_format == "webp":
        canvas.save(buf, "WEBP", quality=85 if req.quality is None else req.quality)
        return buf.getvalue(), "image/webp"
    canvas.save(buf, "PNG", compress_level=3)
    return buf.getvalue(), "image/png"
