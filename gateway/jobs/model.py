"""The internal job model: `JobSpec` (what to make) and `JobStatus` (where it stands).

Every public surface (OpenAI images and chat, BFL-style, Replicate-style) builds a JobSpec;
the JobService turns it into a persisted job and runs it. A job's life:

    queued -> running -> succeeded | failed | canceled

`stage` records the finer step (validated, reserved, submitted, ..., settled/released) and the
job's `timeline` keeps a timestamp for every stage.
"""

from __future__ import annotations

import enum
from typing import Any, Literal

from pydantic import BaseModel, Field

OutputFormat = Literal["png", "jpeg", "webp"]


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED)


class Stage(enum.StrEnum):
    CREATED = "created"
    RESERVED = "reserved"
    ROUTED = "routed"
    SUBMITTED = "submitted"
    UPSTREAM_DONE = "upstream_done"
    STORED = "stored"
    SETTLED = "settled"
    RELEASED = "released"
    FAILED = "failed"


class JobSpec(BaseModel):
    """One image to make, fully validated: inputs are already stored file ids.

    `model` is our canonical model name. `aspect_ratio` is "W:H" within range, or None for
    the default (input image's ratio, else 1:1). `seed` is always set (random seeds are drawn
    before the spec is built, so they can be reported)."""

    key_id: str
    key_mode: Literal["live", "test"] = "live"
    price_group: str | None = None
    surface: str = "openai.images"  # which public API created it
    batch_id: str | None = None
    model: str
    operation: Literal["generate", "edit"] = "generate"
    prompt: str
    input_file_ids: list[str] = Field(default_factory=list)
    mask_file_id: str | None = None
    aspect_ratio: str | None = None
    seed: int
    output_format: OutputFormat = "png"
    quality: int | None = Field(default=None, ge=0, le=100)  # JPEG/WebP quality asked, 0..100
    safety_tolerance: int | None = None
    prompt_upsampling: bool = False
    extra: dict[str, Any] = Field(default_factory=dict)
    webhook_url: str | None = None  # checked against the SSRF policy when accepted
    webhook_secret: str | None = None  # the request's own secret, SEALED (webhooks.SecretBox)
    notes: list[str] = Field(default_factory=list)  # decisions worth recording on the job
    # the key's own provenance mode (None: its price group's, else the default)
    provenance: Literal["off", "metadata", "signed"] | None = None
    #: what the creating API repeats when the job's answer is read again (the Responses API:
    #: the request's model name, tools, instructions, metadata); never sent upstream
    echo: dict[str, Any] | None = None
    # the model family (gateway/families.py) and its size control: FLUX.2's width/height,
    # FLUX 3's resolution class (width/height then are the size expected back)
    family: str = "kontext"
    width: int | None = None
    height: int | None = None
    resolution: str | None = None
    input_pixels: int = 0  # the inputs' pixels, counted by per-megapixel prices


class JobOutput(BaseModel):
    """One stored result of a job."""

    file_id: str
    ext: str
    content_type: str
    width: int
    height: int
    size: int
    storage_key: str | None = None  # where the bytes are: a b64 answer reads no file row
