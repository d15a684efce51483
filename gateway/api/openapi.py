"""What the OpenAPI document says about errors and hand-parsed bodies.

Each route family answers errors in its own body (see `gateway/api/errors.py`); the models
here describe those bodies; `*_ERRORS` are the `responses=` each family's routers declare and
`*_CREATE_ERRORS` what its creating routes add, so `/openapi.json` lists every status a route
can really answer. Declaring `422` also replaces
FastAPI's default `HTTPValidationError`, which none of our routes answers as such (the OpenAI
family answers validation errors as 400, Replicate's 422 `detail` is text).

The statuses come from `gateway.api.errors.STATUS` (OpenAI family), `_render` (Replicate:
invalid input is 422; only content-policy refusals stay 400) and `DETAIL_STATUS` (BFL-style:
a bad key is 403, invalid input (an unsupported media type included) 422 with
FastAPI's list).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from gateway.api.schemas import (
    IMAGE_REFERENCE_SCHEMA,
    WEBHOOK_SECRET_SCHEMA,
    WEBHOOK_URL_SCHEMA,
    ChatCompletionRequest,
)


class OpenAIErrorObject(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIError(BaseModel):
    """OpenAI's error envelope, for the `/v1` OpenAI-style routes."""

    error: OpenAIErrorObject


class ReplicateError(BaseModel):
    """Replicate's RFC 7807-style problem, for the routes under `/replicate`."""

    title: str
    detail: str
    status: int


class DetailError(BaseModel):
    """FastAPI/BFL-style `{"detail": "<message>"}` (BFL-style routes, every status but 422)."""

    detail: str


class ValidationItem(BaseModel):
    model_config = ConfigDict(extra="allow")

    loc: list[str | int]
    msg: str
    type: str


class DetailValidationError(BaseModel):
    """FastAPI/BFL's `HTTPValidationError` (BFL-style routes, 422)."""

    detail: list[ValidationItem]


_DESCRIPTIONS = {
    400: "Invalid request", 401: "Missing or invalid API key", 402: "Insufficient balance",
    403: "The key may not do this", 404: "Not found", 409: "Conflict (an Idempotency-Key in use)",
    413: "Request body too large", 415: "Unsupported media type",
    422: "Invalid input", 429: "Rate limited (per-minute or jobs-in-flight limit)",
    500: "Internal error", 502: "The upstream failed the job",
    503: "Service unavailable (no channel can take the job, file store down)",
    504: "The job did not finish in time",
}
_SHOULD_RETRY = {"description": "Whether the request may be retried as it is ('true'/'false').",
                 "schema": {"type": "string", "enum": ["true", "false"]}}
_RETRY_AFTER = {"description": "Seconds to wait before retrying.",
                "schema": {"type": "string", "pattern": r"^\d+$"}}


def error_responses(model: type[BaseModel], statuses: tuple[int, ...],
                    overrides: dict[int, type[BaseModel]] | None = None,
                    ) -> dict[int | str, dict[str, Any]]:
    """`responses=` for `statuses`, each answered with `model` (or its override)."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        headers: dict[str, Any] = {"x-should-retry": _SHOULD_RETRY}
        if status in (429, 503):
            headers["retry-after"] = _RETRY_AFTER
        out[status] = {"model": (overrides or {}).get(status, model),
                       "description": _DESCRIPTIONS[status], "headers": headers}
    return out


#: statuses every route of a family can answer: auth (401/403; BFL-style: 403), unknown ids
#: (404), bad query or path values (400 or 422), internal errors and an unreachable database
#: or file store (500, 503). 422 is listed everywhere so FastAPI's default is not added.
OPENAI_READ = (400, 401, 403, 404, 422, 500, 503)
REPLICATE_READ = (401, 403, 404, 422, 500, 503)
DETAIL_READ = (403, 404, 422, 500, 503)
#: what creating calls add: invalid input, balance, `Idempotency-Key` in use or reused, body
#: size and type, rate and jobs-in-flight limits, upstream failure and wait timeout
OPENAI_CREATE = (400, 402, 409, 413, 415, 422, 429, 502, 504)
REPLICATE_CREATE = (400, 402, 409, 413, 415, 422, 429, 502, 504)
DETAIL_CREATE = (400, 402, 409, 413, 422, 429, 502, 504)

OPENAI_ERRORS = error_responses(OpenAIError, OPENAI_READ)
REPLICATE_ERRORS = error_responses(ReplicateError, REPLICATE_READ)
DETAIL_ERRORS = error_responses(DetailError, DETAIL_READ, {422: DetailValidationError})
OPENAI_CREATE_ERRORS = error_responses(OpenAIError, OPENAI_CREATE)
REPLICATE_CREATE_ERRORS = error_responses(ReplicateError, REPLICATE_CREATE)
DETAIL_CREATE_ERRORS = error_responses(DetailError, DETAIL_CREATE, {422: DetailValidationError})


def _binary(description: str) -> dict[str, Any]:
    return {"type": "string", "format": "binary", "description": description}


#: the text fields of an edit (multipart parts are strings)
_EDIT_TEXT_FIELDS: dict[str, Any] = {
    "prompt": {"type": "string", "minLength": 1, "pattern": r"\S"},
    "model": {"type": "string"},
    "n": {"type": "string", "pattern": r"^[1-4]$"},
    "size": {"type": "string"},
    "aspect_ratio": {"type": "string"},
    "response_format": {"type": "string", "enum": ["url", "b64_json"]},
    "output_format": {"type": "string", "enum": ["png", "jpeg", "jpg", "webp"]},
    "seed": {"type": "string", "pattern": r"^\d{1,9}$"},
    "safety_tolerance": {"type": "string", "pattern": r"^[0-6]$"},
    "prompt_upsampling": {"type": "string", "enum": ["true", "false"]},
    "guidance": {"type": "string", "pattern": r"^\d{1,2}(\.\d+)?$"},
    "steps": {"type": "string", "pattern": r"^\d{1,2}$"},
    "user": {"type": "string"},
    "webhook_url": {"type": "string", **WEBHOOK_URL_SCHEMA},
    "webhook_secret": {"type": "string", **WEBHOOK_SECRET_SCHEMA},
    "async": {"type": "string", "enum": ["true", "false"]},
    "stream": {"type": "string", "enum": ["true", "false"]},
    "partial_images": {"type": "string", "pattern": r"^[0-3]$"},
}
_IMAGE_REF = {"type": "string", "minLength": 1, **IMAGE_REFERENCE_SCHEMA}
#: OpenAI's `{"image_url": ...}` (other keys must be strings too)
_IMAGE_OBJECT = {"type": "object", "required": ["image_url"],
                 "properties": {"image_url": _IMAGE_REF},
                 "additionalProperties": {"type": ["string", "null"]}}

#: the image types uploads and inputs may hold (anything else is a 415 on uploads)
IMAGE_MEDIA_TYPES = "image/png, image/jpeg, image/webp, image/gif"

#: input images per edit (`limits.max_input_images`' default; the schema states it)
MAX_EDIT_IMAGES = 4


def _image_count_rule() -> list[dict[str, Any]]:
    """`anyOf` branches saying that a JSON edit's images together (`image` and `images`) are
    at most MAX_EDIT_IMAGES (a form's `image` and `image[]`: `dependentSchemas`)."""
    return [{"not": {"required": ["image"]}},
            {"required": ["image"], "properties": {"image": {"type": "null"}}},
            {"required": ["image"], "properties": {
                "image": {"type": "string"}, "images": {"maxItems": MAX_EDIT_IMAGES - 1}}},
            *({"required": ["image"], "properties": {
                "image": {"type": "array", "maxItems": n},
                "images": {"maxItems": MAX_EDIT_IMAGES - n}}}
              for n in range(MAX_EDIT_IMAGES + 1))]


def _not_stream_and_async(true: Any) -> dict[str, Any]:
    """`stream` and `async` both true are refused (choose one)."""
    return {"not": {"required": ["stream", "async"], "properties": {
        "stream": {"const": true}, "async": {"const": true}}}}


#: `openapi_extra` of POST /v1/images/edits, whose body is parsed by hand (multipart or JSON)
EDIT_REQUEST_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {
        "type": "object", "required": ["prompt"],
        "properties": {
            # one list: the parts `image` and `image[]` (OpenAI's SDKs) are the same images
            "image": {"type": "array", "maxItems": MAX_EDIT_IMAGES, "items": _binary(
                "An input image. Repeat the part (named `image` or `image[]`) for several, "
                f"up to {MAX_EDIT_IMAGES} in all. A text part may hold a URL or base64.")},
            "mask": _binary("Optional mask (transparent where the image is to be edited)."),
            **_EDIT_TEXT_FIELDS,
        },
    }, "encoding": {name: {"contentType": IMAGE_MEDIA_TYPES}
                    for name in ("image", "mask")}},
    "application/json": {"schema": {
        "type": "object", "required": ["prompt"], "anyOf": _image_count_rule(),
        **_not_stream_and_async(True),
        "properties": {
            **_EDIT_TEXT_FIELDS,
            "n": {"type": "integer", "minimum": 1, "maximum": 4},
            "seed": {"type": "integer", "minimum": -1, "maximum": 2**32 - 1},
            "safety_tolerance": {"type": "integer", "minimum": 0, "maximum": 6},
            "prompt_upsampling": {"type": "boolean"},
            "guidance": {"type": "number"},
            "steps": {"type": "integer"},
            "image": {"anyOf": [_IMAGE_REF,
                                {"type": "array", "items": _IMAGE_REF, "maxItems": 4}]},
            "images": {"type": "array", "maxItems": 4, "items": _IMAGE_OBJECT},
            "mask": {"anyOf": [_IMAGE_REF, _IMAGE_OBJECT]},
            "async": {"type": "boolean"},
            "stream": {"type": "boolean"},
            "partial_images": {"type": "integer", "minimum": 0, "maximum": 3},
        },
    }},
}}}

#: `openapi_extra` of POST /replicate/v1/files (multipart, parsed by hand); other text parts
#: are ignored (other file parts are refused)
FILE_REQUEST_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {
        "type": "object", "required": ["content"], "additionalProperties": {"type": "string"},
        "properties": {
            "content": _binary("The image file: PNG, JPEG, WebP or GIF (anything else is "
                               "refused with 415)."),
            "metadata": {"type": "object", "description": "Optional JSON object."},
        },
    }, "encoding": {"metadata": {"contentType": "application/json"},
                    "content": {"contentType": IMAGE_MEDIA_TYPES}}},
}}}


def _inlined(schema: Any, defs: dict[str, Any]) -> Any:
    """`schema` with its `#/$defs/...` references replaced by the definitions (no cycles)."""
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inlined(defs[ref.removeprefix("#/$defs/")], defs)
        return {k: _inlined(v, defs) for k, v in schema.items() if k != "$defs"}
    if isinstance(schema, list):
        return [_inlined(v, defs) for v in schema]
    return schema


def json_request_body(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` documenting a JSON body that the route parses by hand."""
    schema = model.model_json_schema()
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": _inlined(schema, schema.get("$defs", {}))}}}}


#: POST /v1/chat/completions reads its JSON body itself (see gateway/api/chat.py)
CHAT_REQUEST_BODY = json_request_body(ChatCompletionRequest)
