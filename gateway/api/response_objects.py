"""The Responses API's objects: the request, the `image_generation` tool's options, and the
Response, its output items, usage and stream events as OpenAI shapes them. Pure, no I/O.

Every response holds two output items: the `image_generation_call` (base64 `result`, `status`,
`action`, `size`, `output_format`, `revised_prompt`, plus our `url`, `width`, `height`, `seed`)
and an assistant `message` whose `output_text` is a markdown link to the image
(`![image](<signed URL>)`): SDKs' `output_text` then shows the image, and agent loops that
stop on a final message stop (without one they would ask again, and pay again). Ids derive
from the job pipeline's own: `resp_<batch>`, `ig_<job>`, `msg_<job>`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, StrictBool

from gateway.api.schemas import AspectRatio, Compression, Flag, OutputFormatField, Safety, Seed
from gateway.errors import InvalidRequest
from gateway.jobs import intake

RESPONSE_PREFIX = "resp_"
ITEM_PREFIX = "ig_"
MESSAGE_PREFIX = "msg_"
BATCH_PREFIX = "batch_"
JOB_PREFIX = "job_"
#: `size` values the SDKs know (older ones in strict mode take nothing else in a tool)
OPENAI_SIZES = ("1024x1024", "1024x1536", "1536x1024")
_QUALITIES = ("low", "medium", "high", "auto")
_BACKGROUNDS = ("transparent", "opaque", "auto")
Action = Literal["generate", "edit", "auto"]
_ACTIONS: tuple[Action, ...] = ("generate", "edit", "auto")
MAX_PARTIAL_IMAGES = 3


class ResponseCreateRequest(BaseModel):
    """POST /v1/responses. `input` is read by `gateway.api.response_input`; the first
    `image_generation` tool's options apply; other tools, `instructions`, `temperature`,
    `reasoning`, `text`... are accepted and ignored (the Kontext model reads only the prompt).
    Kontext fields may come at the top level (the SDKs' `extra_body`) or in the tool."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    input: str | list[dict[str, Any]]
    instructions: str | list[Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    previous_response_id: str | None = None
    stream: StrictBool | None = False
    background: StrictBool | None = False
    store: StrictBool | None = True
    metadata: dict[str, str] | None = None
    user: str | None = None
    parallel_tool_calls: StrictBool | None = None
    aspect_ratio: AspectRatio = None
    seed: Seed = None
    output_format: OutputFormatField = None
    output_compression: Compression = None
    safety_tolerance: Safety = None
    prompt_upsampling: Flag = None


@dataclass(frozen=True, slots=True)
class ImageTool:
    """The `image_generation` tool's options, parsed. `param` names the tool in errors."""

    param: str
    present: bool = False
    model: str | None = None
    action: Action = "auto"
    size: str | None = None
    aspect_ratio: str | None = None
    output_format: Any = None
    output_compression: Any = None
    quality: Any = None
    background: str | None = None
    partial_images: int = 0
    seed: Any = None
    safety_tolerance: Any = None
    prompt_upsampling: Any = None
    mask: dict[str, Any] | None = None

    def echo(self, output_format: str) -> dict[str, Any]:
        """The tool as the Response repeats it (values every SDK version accepts), with the
        output format the request resolved to."""
        tool: dict[str, Any] = {"type": "image_generation"}
        if self.model:
            tool["model"] = self.model
        tool["action"] = self.action
        tool["size"] = self.size if self.size in (*OPENAI_SIZES, "auto") else "auto"
        tool["quality"] = self.quality if self.quality in _QUALITIES else "auto"
        tool["background"] = "opaque"
        tool["output_format"] = output_format
        if self.output_compression is not None:
            tool["output_compression"] = self.output_compression
        tool["partial_images"] = self.partial_images
        return tool


def _text(value: object, param: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f"Invalid {param}: expected a string.", param=param)
    return value


def image_tool(tools: list[dict[str, Any]] | None) -> ImageTool:
    """The first `image_generation` tool of `tools` (`present=False` when there is none);
    raises InvalidRequest naming the tool's field for an option that cannot be read."""
    for i, tool in enumerate(tools or []):
        if tool.get("type") != "image_generation":
            continue
        param = f"tools[{i}]"
        action: Action = tool.get("action") or "auto"
        if action not in _ACTIONS:
            raise InvalidRequest(f"Invalid {param}.action {action!r}: use generate, edit or "
                                 "auto.", param=f"{param}.action")
        partial = tool.get("partial_images")
        count = 0 if partial is None else intake.parse_int(partial,
                                                           param=f"{param}.partial_images")
        if not 0 <= count <= MAX_PARTIAL_IMAGES:
            raise InvalidRequest(f"Invalid {param}.partial_images {count}: use 0 to "
                                 f"{MAX_PARTIAL_IMAGES}.", param=f"{param}.partial_images")
        mask = tool.get("input_image_mask")
        if mask is not None and not isinstance(mask, dict):
            raise InvalidRequest(f"Invalid {param}.input_image_mask: expected an object with "
                                 "image_url or file_id.", param=f"{param}.input_image_mask")
        return ImageTool(
            param=param, present=True, model=_text(tool.get("model"), f"{param}.model"),
            action=action, size=_text(tool.get("size"), f"{param}.size"),
            aspect_ratio=_text(tool.get("aspect_ratio"), f"{param}.aspect_ratio"),
            output_format=tool.get("output_format"),
            output_compression=tool.get("output_compression"), quality=tool.get("quality"),
            background=_text(tool.get("background"), f"{param}.background"),
            partial_images=count, seed=tool.get("seed"),
            safety_tolerance=tool.get("safety_tolerance"),
            prompt_upsampling=tool.get("prompt_upsampling"), mask=mask or None)
    return ImageTool(param="tools")


def response_id_of(batch_id: str) -> str:
    """The response id of an order's batch."""
    return RESPONSE_PREFIX + batch_id.removeprefix(BATCH_PREFIX)


def batch_of(response_id: str) -> str | None:
    """The batch id of a response id, or None for text that is no response id of ours."""
    if not response_id.startswith(RESPONSE_PREFIX) or len(response_id) > 64:
        return None
    return BATCH_PREFIX + response_id.removeprefix(RESPONSE_PREFIX)


def item_id(job_id: str) -> str:
    return ITEM_PREFIX + job_id.removeprefix(JOB_PREFIX)


def job_of_item(item: str) -> str | None:
    """The job id of an `ig_` item id, or None."""
    if not item.startswith(ITEM_PREFIX) or len(item) > 64:
        return None
    return JOB_PREFIX + item.removeprefix(ITEM_PREFIX)


def usage(prompt: str, input_images: int, images: int) -> dict[str, Any]:
    """Nominal usage (images are not tokens): ~4 prompt characters per text token, one input
    token per input image, one output token per image made."""
    text = max(1, math.ceil(len(prompt) / 4))
    return {"input_tokens": text + input_images,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": images, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": text + input_images + images}


#: ResponseError codes (the newest SDKs type `code` as a closed list) for our error codes
_ERROR_CODES = {"content_policy_violation": "image_content_policy_violation",
                "moderated": "image_content_policy_violation",
                "rate_limit_exceeded": "rate_limit_exceeded", "invalid_prompt": "invalid_prompt"}


def response_error(body: dict[str, Any]) -> dict[str, Any]:
    """A Response's `error` from our OpenAI error envelope (`{"error": {...}}`): `code` one
    OpenAI names, our own code kept as `fluxgate_code`."""
    inner = body["error"]
    code = inner.get("code") or ""
    return {"code": _ERROR_CODES.get(code, "server_error"), "message": inner["message"],
            "fluxgate_code": code or None}


def message_item(job_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {"id": MESSAGE_PREFIX + job_id.removeprefix(JOB_PREFIX), "type": "message",
            "role": "assistant", "status": status,
            "content": [{"type": "output_text", "text": text, "annotations": [],
                         "logprobs": []}] if status == "completed" else []}
