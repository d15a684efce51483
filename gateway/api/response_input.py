"""Reading a Responses API `input`: the prompt and the images to edit. Pure, no I/O.

`input` is a string (the prompt) or a list of items, as OpenAI's SDKs and the AI SDK send them:

- messages `{"role", "content"}` (with or without `"type": "message"`); `content` is a string
  or parts: `input_text` / `output_text` (text, in which image URLs are found as chat does,
  see `gateway.api.chat_input.read_text`) and `input_image` (`image_url`: an http(s) or data
  URL; or `file_id`);
- `image_generation_call` items handed back (`id`, and the base64 `result` when the client
  keeps it), and `item_reference` items naming one by id (the AI SDK's default);
- anything else (reasoning, function calls and outputs, files) is ignored.

The prompt is the text of the last user message. Its images are the images to edit; when it
has none, the most recent image of the earlier items is (then the caller falls back to the
previous response named by `previous_response_id`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from gateway.api.chat_input import read_text
from gateway.errors import InvalidRequest

SourceKind = Literal["ref", "file", "item", "result"]
_TEXT_PARTS = ("input_text", "output_text", "text")


@dataclass(frozen=True, slots=True)
class ImageSource:
    """One input image: `ref` an http(s)/data URL (or a gateway file URL), `file` a file id
    of this key, `item` the id of an earlier `image_generation_call` (`ig_...`), `result` the
    base64 result a client handed back (an `item` not made here, e.g. by OpenAI itself, is
    read from its `result` when the client sent it). `param` names it in errors."""

    kind: SourceKind
    value: str
    param: str
    result: str | None = None  # an `item`'s base64 result, when the client handed it back


@dataclass(frozen=True, slots=True)
class ResponseInput:
    """The prompt, the images of the last user message, and the most recent image of the
    earlier items (None when there is none)."""

    prompt: str
    images: list[ImageSource]
    history: ImageSource | None = None


def _part_images(part: dict[str, Any], param: str) -> list[ImageSource]:
    kind = part.get("type")
    if kind == "input_image":
        url = part.get("image_url")
        if isinstance(url, dict):  # chat-style {"url": ...}, tolerated
            url = url.get("url")
        if isinstance(url, str) and url.strip():
            return [ImageSource("ref", url.strip(), f"{param}.image_url")]
        file_id = part.get("file_id")
        if isinstance(file_id, str) and file_id.strip():
            return [ImageSource("file", file_id.strip(), f"{param}.file_id")]
        raise InvalidRequest(f"{param}: an input_image needs an image_url or a file_id.",
                             param=param, code="invalid_image")
    if kind == "image_url":  # a chat-completions part sent here by mistake: read it too
        value = part.get("image_url")
        url = value.get("url") if isinstance(value, dict) else value
        if isinstance(url, str) and url.strip():
            return [ImageSource("ref", url.strip(), f"{param}.image_url")]
    return []


def read_message(item: dict[str, Any], param: str) -> tuple[list[ImageSource], str]:
    """(images, text without image URLs) of one message item, in the order they appear."""
    content = item.get("content")
    parts: Sequence[Any] = ([{"type": "input_text", "text": content}]
                            if isinstance(content, str) else
                            content if isinstance(content, list) else [])
    images: list[ImageSource] = []
    texts: list[str] = []
    for i, part in enumerate(parts):
        where = param if isinstance(content, str) else f"{param}.content[{i}]"
        if not isinstance(part, dict):
            continue
        if part.get("type") in _TEXT_PARTS and isinstance(part.get("text"), str):
            urls, text = read_text(part["text"])
            images += [ImageSource("ref", url, where) for url in urls]
            if text:
                texts.append(text)
        else:
            images += _part_images(part, where)
    return images, "\n".join(texts)


def _item_images(item: dict[str, Any], param: str) -> list[ImageSource]:
    """The images an earlier item holds (a generated image, a reference to one, a message's)."""
    kind = item.get("type")
    if kind in ("image_generation_call", "item_reference"):
        item_id, result = item.get("id"), item.get("result")
        result = result if kind == "image_generation_call" and isinstance(result, str) \
            and result else None
        if isinstance(item_id, str) and item_id.startswith("ig_"):
            return [ImageSource("item", item_id, f"{param}.id", result)]
        return [ImageSource("result", result, f"{param}.result")] if result else []
    if kind in (None, "message") and "role" in item:
        return read_message(item, param)[0]
    return []


def _is_message(item: object, role: str) -> bool:
    return (isinstance(item, dict) and item.get("type") in (None, "message")
            and item.get("role") == role)


def response_input(value: object) -> ResponseInput:
    """The prompt and images of a Responses `input` (see the module docstring). Raises
    InvalidRequest (param `input`) when there is no user message or its text is empty."""
    if isinstance(value, str):
        urls, prompt = read_text(value)
        if not prompt.strip():
            raise InvalidRequest("input has no text to use as the prompt (image URLs alone "
                                 "are not a prompt).", param="input", code="invalid_prompt")
        return ResponseInput(prompt, [ImageSource("ref", u, "input") for u in urls])
    if not isinstance(value, list) or not value:
        raise InvalidRequest("input must be a string or a non-empty list of items.",
                             param="input", code="invalid_input")
    items: list[Any] = value
    last = next((i for i in range(len(items) - 1, -1, -1) if _is_message(items[i], "user")),
                None)
    if last is None:
        raise InvalidRequest("input must contain a user message with the prompt.",
                             param="input", code="invalid_prompt")
    images, prompt = read_message(items[last], f"input[{last}]")
    if not prompt.strip():
        raise InvalidRequest("The last user message has no text to use as the prompt (images "
                             "alone are not a prompt).", param=f"input[{last}]",
                             code="invalid_prompt")
    history: ImageSource | None = None
    for i in range(last - 1, -1, -1):
        found = _item_images(items[i], f"input[{i}]") if isinstance(items[i], dict) else []
        if found:
            history = found[-1]
            break
    return ResponseInput(prompt, images, history)
