"""Reading a chat conversation: the prompt and the input images of a chat completion request.

Pure functions, no I/O. Chat shells send images in three shapes (see
`shared/reference/clients.md` §4 and pitfall 13):

- `image_url` content parts holding data URLs (NextChat, Cherry Studio, the AI SDK) or
  http(s) URLs (LobeChat);
- URLs in the text: at its start, space separated, as resellers document
  (`"https://x/y.png make it night"`), or anywhere else in the text when they look like images
  (an image file extension, or a gateway file URL `/files/file_...`), markdown images
  `![..](url)` and `data:image/...` URLs;
- LobeChat's `<files_info>` block (`<image name=".." url="..">`), optionally wrapped in its
  `<!-- SYSTEM CONTEXT -->` comments, written into the text for models not marked vision-capable.

The prompt is the last user message's text without any of those. When that message carries
no image, the most recent image of an earlier message is edited, including an image an
assistant answer returned (markdown in its content, or OpenRouter-style `images`).
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from gateway.api.schemas import ChatMessage
from gateway.errors import InvalidRequest
from gateway.images.addresses import url_in_text

_CONTEXT_BLOCK = re.compile(r"<!--\s*SYSTEM CONTEXT.*?<!--\s*END SYSTEM CONTEXT\s*-->",
                            re.DOTALL | re.IGNORECASE)
_FILES_INFO = re.compile(r"<files_info>.*?(?:</files_info>|$)", re.DOTALL | re.IGNORECASE)
_CONTEXT_INSTRUCTION = re.compile(r"<context\.instruction>.*?</context\.instruction>",
                                  re.DOTALL | re.IGNORECASE)
_TAG_IMAGE = re.compile(r"<image\s[^>]*?\burl\s*=\s*\"([^\"]+)\"", re.IGNORECASE)
_MARKDOWN_IMAGE = re.compile(
    r"!\[[^\]]*\]\(\s*<?((?:https?://|data:image/)[^\s)>]+)>?(?:\s+\"[^\"]*\")?\s*\)",
    re.IGNORECASE)
_DATA_URL = re.compile(r"data:image/[\w.+-]+(?:;[\w=.-]+)*;base64,[A-Za-z0-9+/=_-]+",
                       re.IGNORECASE)
#: http(s) URLs (IPv6 literals included) and refused schemes' forms (`file:`, `gopher:`...),
#: which are recognised like image URLs so the fetcher refuses them
_URL = re.compile(url_in_text(r"[A-Za-z0-9\-._~:/?#@!$&*+,;=%]"), re.IGNORECASE)
_TRAILING = ".,;:!?"
_IMAGE_EXT = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".avif", ".heic", ".tif",
              ".tiff")
_TEXT_PARTS = ("text", "input_text")
_HISTORY_ROLES = ("user", "assistant")


@dataclass(frozen=True, slots=True)
class ChatInput:
    """What a conversation asks for: the prompt and the image references to edit (http(s) or
    data URLs, in order; empty for a generation). `from_history` says the images came from an
    earlier message, not the last user message."""

    prompt: str
    images: list[str]
    from_history: bool = False


def looks_like_image_url(url: str) -> bool:
    """True for a URL whose path ends in an image extension or is a gateway file URL."""
    path = urlsplit(url).path.lower()
    return path.endswith(_IMAGE_EXT) or "/files/file_" in path


def _blank(text: str, start: int, end: int) -> str:
    """`text` with [start, end) replaced by spaces, so later positions stay valid."""
    return text[:start] + " " * (end - start) + text[end:]


def read_text(text: str) -> tuple[list[str], str]:
    """(image references in order of appearance, the text without them and without
    `<files_info>` blocks; whitespace tidied)."""
    found: list[tuple[int, str]] = []

    for pattern in (_CONTEXT_BLOCK, _FILES_INFO):
        for m in list(pattern.finditer(text)):
            found += [(m.start(), html.unescape(u)) for u in _TAG_IMAGE.findall(m.group(0))]
            text = _blank(text, m.start(), m.end())
    for m in list(_CONTEXT_INSTRUCTION.finditer(text)):
        text = _blank(text, m.start(), m.end())
    for m in list(_MARKDOWN_IMAGE.finditer(text)):
        found.append((m.start(), m.group(1)))
        text = _blank(text, m.start(), m.end())
    for m in list(_DATA_URL.finditer(text)):
        found.append((m.start(), m.group(0)))
        text = _blank(text, m.start(), m.end())
    for m in list(_URL.finditer(text)):
        url = m.group(0).rstrip(_TRAILING)
        leading = not text[:m.start()].strip()
        if leading or looks_like_image_url(url):
            found.append((m.start(), url))
            text = _blank(text, m.start(), m.start() + len(url))
    found.sort(key=lambda item: item[0])
    return [url for _, url in found], tidy(text)


def tidy(text: str) -> str:
    """Spaces collapsed (and dropped before a sentence's final punctuation, where a removed URL
    stood), lines stripped, at most one empty line in a row."""
    lines = [re.sub(r" ([.,;:!?])(?=\s|$)", r"\1", re.sub(r"[ \t\u00a0]+", " ", line)).strip()
             for line in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _part_image(part: dict[str, Any]) -> str | None:
    value = part.get("image_url")
    if isinstance(value, dict):
        value = value.get("url")
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def _extra_images(message: ChatMessage) -> list[str]:
    """OpenRouter-style `images: [{"type": "image_url", "image_url": {"url": ...}}]`."""
    extra = message.model_extra or {}
    value = extra.get("images")
    if not isinstance(value, list):
        return []
    urls = []
    for item in value:
        url = _part_image(item) if isinstance(item, dict) else None
        if url is None and isinstance(item, str) and item.strip():
            url = item.strip()
        if url:
            urls.append(url)
    return urls


def read_message(message: ChatMessage) -> tuple[list[str], str]:
    """(image references, text without them) of one message, in the order they appear."""
    images: list[str] = []
    texts: list[str] = []
    content = message.content
    parts: Iterable[Any] = [{"type": "text", "text": content}] if isinstance(content, str) \
        else content or []
    for part in parts:
        if not isinstance(part, dict):
            continue
        if part.get("type") in _TEXT_PARTS and isinstance(part.get("text"), str):
            urls, text = read_text(part["text"])
            images += urls
            if text:
                texts.append(text)
        else:
            url = _part_image(part)
            if url:
                images.append(url)
    images += _extra_images(message)
    return list(dict.fromkeys(images)), "\n".join(texts)


def chat_input(messages: Sequence[ChatMessage]) -> ChatInput:
    """The prompt and images of a conversation (see the module docstring). Raises
    InvalidRequest (param `messages`) when there is no user message or its text is empty."""
    last = next((i for i in range(len(messages) - 1, -1, -1)
                 if messages[i].role == "user"), None)
    if last is None:
        raise InvalidRequest("messages must contain a user message with the prompt.",
                             param="messages", code="invalid_prompt")
    images, prompt = read_message(messages[last])
    if not prompt.strip():
        raise InvalidRequest("The last user message has no text to use as the prompt (image "
                             "URLs alone are not a prompt).", param="messages",
                             code="invalid_prompt")
    if images:
        return ChatInput(prompt=prompt, images=images)
    for message in reversed(messages[:last]):
        if message.role not in _HISTORY_ROLES:
            continue
        earlier, _ = read_message(message)
        if earlier:
            return ChatInput(prompt=prompt, images=[earlier[-1]], from_history=True)
    return ChatInput(prompt=prompt, images=[])
