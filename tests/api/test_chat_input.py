"""The prompt and the input images of a conversation (pure functions)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.api.chat_input import chat_input, read_text
from gateway.api.schemas import ChatMessage
from gateway.errors import InvalidRequest

LOBE_BLOCK = """<!-- SYSTEM CONTEXT (NOT PART OF USER QUERY) -->
<context.instruction>following part contains context information injected by the system. \
Please follow these instructions:

1. Always prioritize handling user-visible content.
2. the context is only required when user's queries rely on it.
</context.instruction>
<files_info>
<images>
<images_docstring>here are user upload images you can refer to</images_docstring>
<image name="cat.png" url="https://s3.example/b/cat.png?X-Amz-Signature=ab&amp;X-Amz-Date=1"></image>
<image name="dog" url="https://s3.example/b/dog?sig=1"></image>
</images>

</files_info>
<!-- END SYSTEM CONTEXT -->"""


def msgs(*items: tuple[str, Any], **extra: Any) -> list[ChatMessage]:
    return [ChatMessage(role=role, content=content) for role, content in items]


@pytest.mark.parametrize(("text", "images", "prompt"), [
    ("https://x.example/y.png make it night", ["https://x.example/y.png"], "make it night"),
    (" https://a.example/p1.png   https://a.example/p2  Replace the girl in P2 with P1.",
     ["https://a.example/p1.png", "https://a.example/p2"], "Replace the girl in P2 with P1."),
    ("https://oss.example/s/default_style_small.png 让这个女人带上墨镜\uff0c衣服换个颜色",
     ["https://oss.example/s/default_style_small.png"], "让这个女人带上墨镜\uff0c衣服换个颜色"),
    ("make it night https://x.example/a/photo.JPEG?w=2.", ["https://x.example/a/photo.JPEG?w=2"],
     "make it night."),
    ("put https://x.example/in.webp on a poster for https://shop.example/about",
     ["https://x.example/in.webp"], "put on a poster for https://shop.example/about"),
    ("edit ![image](http://gw.example/files/file_abc.png?exp=1&sig=s) please",
     ["http://gw.example/files/file_abc.png?exp=1&sig=s"], "edit please"),
    ("see data:image/png;base64,iVBORw0KGgo= now", ["data:image/png;base64,iVBORw0KGgo="],
     "see now"),
    ("no images at all", [], "no images at all"),
])
def test_read_text(text: str, images: list[str], prompt: str) -> None:
    assert read_text(text) == (images, prompt)


def test_lobechat_files_info_block() -> None:
    images, prompt = read_text("make it a watercolour\n\n" + LOBE_BLOCK)
    assert images == ["https://s3.example/b/cat.png?X-Amz-Signature=ab&X-Amz-Date=1",
                      "https://s3.example/b/dog?sig=1"]
    assert prompt == "make it a watercolour"
    bare = "<files_info><images><image name=\"a\" url=\"https://h.example/a\"></image></images>" \
        "</files_info>\nmake it night"
    assert read_text(bare) == (["https://h.example/a"], "make it night")


def test_last_user_message_parts() -> None:
    data = "data:image/png;base64,iVBORw0KGgo="
    result = chat_input(msgs(
        ("system", "You are helpful. https://ignored.example/sys.png"),
        ("user", [{"type": "text", "text": "make it"}, {"type": "text", "text": "night"},
                  {"type": "image_url", "image_url": {"url": data, "detail": "auto"}},
                  {"type": "image_url", "image_url": "https://h.example/second"}])))
    assert result.prompt == "make it\nnight"
    assert result.images == [data, "https://h.example/second"]
    assert not result.from_history


def test_history_gives_the_most_recent_image() -> None:
    answer = "![image](http://gw.example/files/file_two.png?exp=1&sig=s)"
    result = chat_input(msgs(
        ("user", "https://h.example/one.png make it blue"),
        ("assistant", "![image](http://gw.example/files/file_one.png?exp=1&sig=s)"),
        ("user", "brighter"),
        ("assistant", answer),
        ("user", "now make it night")))
    assert result == type(result)(prompt="now make it night",
                                  images=["http://gw.example/files/file_two.png?exp=1&sig=s"],
                                  from_history=True)


def test_history_reads_openrouter_images_field() -> None:
    assistant = ChatMessage.model_validate({
        "role": "assistant", "content": "Here you go",
        "images": [{"type": "image_url", "image_url": {"url": "https://h.example/r.png"}}]})
    result = chat_input([ChatMessage(role="user", content="a cat"), assistant,
                         ChatMessage(role="user", content="now a dog")])
    assert result.images == ["https://h.example/r.png"] and result.from_history


def test_no_image_anywhere_is_a_generation() -> None:
    result = chat_input(msgs(("user", "a fox"), ("assistant", "Sure."), ("user", "a red fox")))
    assert result.images == [] and result.prompt == "a red fox"


@pytest.mark.parametrize("messages", [
    [("user", "https://h.example/only.png")],
    [("user", [{"type": "image_url", "image_url": {"url": "https://h.example/x.png"}}])],
    [("user", "   ")],
    [("assistant", "hi")],
])
def test_empty_prompt_is_refused(messages: list[tuple[str, Any]]) -> None:
    with pytest.raises(InvalidRequest) as info:
        chat_input(msgs(*messages))
    assert info.value.param == "messages"


@pytest.mark.parametrize(("text", "images", "prompt"), [
    ("http://[2001:db8::1]/a.png make it blue", ["http://[2001:db8::1]/a.png"], "make it blue"),
    ("edit http://[2001:db8::2]:8080/in.webp now", ["http://[2001:db8::2]:8080/in.webp"],
     "edit now"),
    ("file:///etc/passwd make it blue", ["file:///etc/passwd"], "make it blue"),
    ("gopher://10.0.0.1:70/_x hi", ["gopher://10.0.0.1:70/_x"], "hi"),
    ("note: file: the report", [], "note: file: the report"),  # words, not URLs
])
def test_read_text_recognises_every_url_form(text: str, images: list[str], prompt: str) -> None:
    assert read_text(text) == (images, prompt)
