"""OpenAI-facing request and response models, named as OpenAI names them.

Requests accept unknown fields (OpenAI's `quality`, `style`, `background`, `moderation`, ...)
and ignore them. Numbers and booleans are typed loosely because resellers' clients send
strings; `gateway.jobs.intake` parses them with clear errors.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

Loose = int | float | str | bool | None


class ImageGenerationRequest(BaseModel):
    """POST /v1/images/generations (OpenAI fields plus the Kontext fields at the top level)."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    prompt: str = Field(min_length=1)
    n: Loose = None
    size: str | None = None
    response_format: str | None = None
    user: str | None = None
    aspect_ratio: str | None = None
    seed: Loose = None
    output_format: str | None = None
    safety_tolerance: Loose = None
    prompt_upsampling: Loose = None
    input_image: str | None = None
    input_image_2: str | None = None
    input_image_3: str | None = None
    input_image_4: str | None = None
    webhook_url: str | None = None
    webhook_secret: str | None = None


class Image(BaseModel):
    url: str | None = None
    b64_json: str | None = None
    revised_prompt: str | None = None
    seed: int | None = None  # extra: the seed used, so a result can be reproduced


class ImagesResponse(BaseModel):
    created: int
    data: list[Image]
    output_format: str | None = None
    size: str | None = None
    model_config = ConfigDict(extra="allow")


class ModelCard(BaseModel):
    id: str
    object: str = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelCard]


def drop_none(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if v is not None}


ImageRef = str | dict[str, str | None]


class ImageEditRequest(BaseModel):
    """POST /v1/images/edits: the JSON body, or the text parts of the multipart form (whose
    files are collected separately). Images are URLs, base64 or data URLs: `image` (one or a
    list), or OpenAI's JSON shape `images: [{"image_url": ...}]`; `mask` likewise."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    prompt: str | None = None
    n: Loose = None
    size: str | None = None
    response_format: str | None = None
    user: str | None = None
    aspect_ratio: str | None = None
    seed: Loose = None
    output_format: str | None = None
    safety_tolerance: Loose = None
    prompt_upsampling: Loose = None
    guidance: Loose = None
    steps: Loose = None
    image: ImageRef | list[ImageRef] | None = None
    images: list[ImageRef] | None = None
    mask: ImageRef | None = None
    webhook_url: str | None = None
