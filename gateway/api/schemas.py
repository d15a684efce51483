"""OpenAI-facing request and response models, named as OpenAI names them.

Requests accept unknown fields (OpenAI's `quality`, `style`, `background`, `moderation`, ...)
and ignore them. Numbers and booleans are typed loosely because resellers' clients send
strings; `gateway.jobs.intake` parses them with clear errors. Their OpenAPI schema documents
the canonical values the parsers accept (`WithJsonSchema`: documented, not enforced here, so
the errors stay intake's).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StrictBool,
    WithJsonSchema,
    model_serializer,
)

from gateway.jobs.intake import MAX_SEED

Loose = int | float | str | bool | None


def _json_number(value: object) -> object:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("Input should be a valid integer")
    return value


#: a JSON integer (1 or 1.0, as JSON Schema's `integer`); not `true`, not "1"
JsonInt = Annotated[int, BeforeValidator(_json_number)]


def _documented(schema: dict[str, Any], description: str) -> WithJsonSchema:
    return WithJsonSchema({"anyOf": [schema, {"type": "null"}], "description": description})


#: loosely typed fields, documented by what intake accepts (numbers may also come as strings)
N = Annotated[Loose, _documented({"type": "integer", "minimum": 1, "maximum": 4},
                                 "Images to make, 1 to 4.")]
Seed = Annotated[Loose, _documented({"type": "integer", "minimum": -1, "maximum": MAX_SEED},
                                    "Seed; -1 or absent for a random one.")]
Safety = Annotated[Loose, _documented({"type": "integer", "minimum": 0, "maximum": 6},
                                      "Moderation tolerance, 0 (strict) to 6.")]
Flag = Annotated[Loose, _documented({"type": "boolean"}, "true or false.")]
Compression = Annotated[Loose, _documented(
    {"type": "integer", "minimum": 0, "maximum": 100},
    "JPEG/WebP quality, 0 to 100 (OpenAI's output_compression).")]
Quality = Annotated[Loose, _documented(
    {"anyOf": [{"type": "string"}, {"type": "integer", "minimum": 0, "maximum": 100}]},
    "OpenAI's words (low, medium, high, auto...) are accepted and ignored; a number 0 to 100 "
    "is the JPEG/WebP quality.")]
#: the aspect ratios Kontext makes (any W:H or WxH between 21:9 and 9:21 is accepted)
RATIOS = ("21:9", "16:9", "4:3", "3:2", "1:1", "2:3", "3:4", "9:16", "9:21")
AspectRatio = Annotated[str | None, _documented(
    {"type": "string", "enum": [*RATIOS, "match_input_image", "auto"]},
    "W:H between 21:9 and 9:21 (e.g. 16:9), or match_input_image/auto.")]
Size = Annotated[str | None, _documented(
    {"type": "string", "enum": ["1024x1024", "1536x1024", "1024x1536", "1024x768", "auto"]},
    "WxH (only its aspect ratio counts, 21:9 to 9:21), or auto.")]
OutputFormatField = Annotated[str | None, _documented(
    {"type": "string", "enum": ["png", "jpeg", "jpg", "webp"]}, "png, jpeg or webp.")]
ResponseFormat = Annotated[str | None, _documented(
    {"type": "string", "enum": ["url", "b64_json"]}, "url or b64_json; absent: both.")]
#: an input image: an http(s) URL, a data URL or base64 of a PNG, JPEG, WebP or GIF (the
#: pattern: what the server can tell from the text; empty is none), which must really be one
#: (fetched from an allowed host): the custom `format` names that, for clients and for the
#: contract test (tests/api/contract_formats.py)
IMAGE_REFERENCE_SCHEMA: dict[str, Any] = {
    "format": "image-reference",
    "pattern": "^$|^https?://[^\\s\\u0000]+$|^(data:image/(png|jpeg|webp|gif);base64,)?"
               "(iVBORw0KGgo|/9j/|UklGR|R0lGOD)[A-Za-z0-9+/]*={0,2}$",
    "description": "An image (PNG, JPEG, WebP or GIF) as an http(s) URL, a data URL or base64."}
#: a webhook URL: http(s), resolvable, and allowed by the fetch policy (see README), or empty
#: for none; the custom `format` names that
WEBHOOK_URL_SCHEMA: dict[str, Any] = {
    "format": "webhook-url", "maxLength": 2048, "pattern": "^(\\s*|\\s*https?://[^\\u0000]+)$",
    "description": "An http(s) URL of a host the gateway may reach, or empty for none."}
#: a Standard Webhooks secret: `whsec_` and base64 (or the base64 alone) of at least 9 bytes
#: (the server's floor is 8; see gateway/webhooks/signing.py), or empty for none
WEBHOOK_SECRET_SCHEMA: dict[str, Any] = {
    "maxLength": 256, "description": "whsec_ followed by base64, or the base64 alone",
    "pattern": "^$|^(whsec_)?([A-Za-z0-9+/]{4}){3,}([A-Za-z0-9+/]{2}(==)?|[A-Za-z0-9+/]{3}=?)?$"}
#: a prompt with some text (an empty or blank prompt is refused) and no NUL character
PROMPT_SCHEMA: dict[str, Any] = {"minLength": 1,
                                 "pattern": "^[^\\u0000]*[^\\s\\u0000][^\\u0000]*$"}


class KontextImageFields(BaseModel):
    """The fields both images endpoints share: OpenAI's, the Kontext extras at the top level
    (where the SDKs put `extra_body`) and the webhook. Unknown fields are accepted."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    n: N = None
    size: Size = None
    response_format: ResponseFormat = None
    user: str | None = None
    aspect_ratio: AspectRatio = None
    seed: Seed = None
    output_format: OutputFormatField = None
    output_compression: Compression = None
    quality: Quality = None
    safety_tolerance: Safety = None
    prompt_upsampling: Flag = None
    webhook_url: str | None = Field(default=None, json_schema_extra=WEBHOOK_URL_SCHEMA)
    webhook_secret: str | None = Field(default=None, json_schema_extra=WEBHOOK_SECRET_SCHEMA)
    # answer 202 with a task to poll (gateway/api/tasks.py); also `Prefer: respond-async`
    async_: Flag = Field(default=None, alias="async")
    # answer as OpenAI's image stream (gateway/api/image_stream.py)
    stream: Flag = None
    partial_images: Annotated[Loose, _documented({"type": "integer", "minimum": 0, "maximum": 3},
                                                 "Partial images to stream, 0 to 3.")] = None


class ImageGenerationRequest(KontextImageFields):
    """POST /v1/images/generations (OpenAI fields plus the Kontext fields at the top level)."""

    prompt: str = Field(min_length=1, json_schema_extra=PROMPT_SCHEMA)
    input_image: str | None = Field(default=None, json_schema_extra=IMAGE_REFERENCE_SCHEMA)
    input_image_2: str | None = Field(default=None, json_schema_extra=IMAGE_REFERENCE_SCHEMA)
    input_image_3: str | None = Field(default=None, json_schema_extra=IMAGE_REFERENCE_SCHEMA)
    input_image_4: str | None = Field(default=None, json_schema_extra=IMAGE_REFERENCE_SCHEMA)


class Image(BaseModel):
    url: str | None = None
    b64_json: str | None = None
    revised_prompt: str | None = None
    seed: int | None = None  # extra: the seed used, so a result can be reproduced
    width: int | None = None  # extra: the output's pixel size (`size` is only OpenAI's three)
    height: int | None = None


class ImagesResponse(BaseModel):
    created: int
    data: list[Image]
    output_format: str | None = None
    size: Literal["1024x1024", "1024x1536", "1536x1024"] | None = None
    model_config = ConfigDict(extra="allow")


class ModelCard(BaseModel):
    id: str
    object: str = "model"
    created: int
    owned_by: str
    # extra: the model's family, reference limit, size control, fields and their ranges
    # (gateway/families.py `ModelSpec.capabilities`)
    capabilities: dict[str, Any] | None = None


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelCard]


# -- chat completions ------------------------------------------------------------------------
class ChatMessage(BaseModel):
    """One message of a chat request. `content` is a string or a list of content parts
    (`text`, `image_url`, ...), kept as sent and read by `gateway.api.chat_input`. Assistant
    messages may carry OpenRouter-style `images` (kept as an extra field)."""

    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: StrictBool | None = None  # booleans are JSON booleans (not "yes")


class ChatCompletionRequest(BaseModel):
    """POST /v1/chat/completions. Sampling fields (`temperature`, `top_p`, penalties,
    `max_tokens`, ...) are accepted and ignored; Kontext fields may come at the top level."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    stream: StrictBool | None = False  # true or false only: "yes" or 1 is a 400
    stream_options: StreamOptions | None = None
    n: Loose = None
    user: str | None = None
    temperature: Loose = None
    top_p: Loose = None
    presence_penalty: Loose = None
    frequency_penalty: Loose = None
    max_tokens: Loose = None
    max_completion_tokens: Loose = None
    size: Size = None
    aspect_ratio: AspectRatio = None
    seed: Seed = None
    output_format: OutputFormatField = None
    output_compression: Compression = None
    safety_tolerance: Safety = None
    prompt_upsampling: Flag = None


class ImageURL(BaseModel):
    url: str


class ChatCompletionContentPartImage(BaseModel):
    """`{"type": "image_url", "image_url": {"url": ...}}`: an image in a message (OpenRouter's
    `message.images` / `delta.images` use the same shape)."""

    type: Literal["image_url"] = "image_url"
    image_url: ImageURL


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletionMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    images: list[ChatCompletionContentPartImage] | None = None


class Choice(BaseModel):
    index: int = 0
    message: ChatCompletionMessage
    finish_reason: Literal["stop", "length", "content_filter"] = "stop"
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: CompletionUsage | None = None
    system_fingerprint: str | None = None


class ChoiceDelta(BaseModel):
    """A streamed piece of the assistant message; unset fields are left out of the JSON."""

    role: Literal["assistant"] | None = None
    content: str | None = None
    images: list[ChatCompletionContentPartImage] | None = None

    @model_serializer(mode="wrap")
    def _drop_unset(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        return {k: v for k, v in data.items() if v is not None}


class ChunkChoice(BaseModel):
    """A choice of a `chat.completion.chunk` (the SDK's `chat_completion_chunk.Choice`)."""

    index: int = 0
    delta: ChoiceDelta
    logprobs: None = None
    finish_reason: Literal["stop", "length", "content_filter"] | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChunkChoice]
    usage: CompletionUsage | None = None


def drop_none(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if v is not None}


ImageRef = str | dict[str, str | None]


class ImageEditRequest(KontextImageFields):
    """POST /v1/images/edits: the JSON body, or the text parts of the multipart form (whose
    files are collected separately). Images are URLs, base64 or data URLs: `image` (one or a
    list), or OpenAI's JSON shape `images: [{"image_url": ...}]`; `mask` likewise."""

    prompt: str | None = None
    guidance: Loose = None
    steps: Loose = None
    image: ImageRef | list[ImageRef] | None = None
    images: list[ImageRef] | None = None
    mask: ImageRef | None = None
