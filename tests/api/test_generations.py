"""POST /v1/images/generations through the real server with the real openai SDK."""

from __future__ import annotations

import base64
import io

import httpx
import openai
import pytest
from PIL import Image

from tests.conftest import Gateway, ImageServer, png_bytes


def client(gw: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.base_url}/v1", api_key=key, max_retries=0,
                         _strict_response_validation=True)


def fetch_image(url: str) -> tuple[Image.Image, bytes, str]:
    resp = httpx.get(url)
    assert resp.status_code == 200, resp.text
    return Image.open(io.BytesIO(resp.content)), resp.content, resp.headers["content-type"]


@pytest.mark.parametrize(("size_field", "expected"), [
    ({"extra_body": {"aspect_ratio": "16:9"}}, (1392, 752)),
    ({"size": "16x9"}, (1392, 752)),
    ({"size": "9:16"}, (752, 1392)),
    ({"size": "1024x1024"}, (1024, 1024)),
    ({"size": "1536x1024"}, (1248, 832)),
    ({"size": "auto"}, (1024, 1024)),
    ({"extra_body": {"aspect_ratio": "21:9"}}, (1568, 672)),
])
def test_url_downloads_image_of_the_ratio_bucket(gateway: Gateway, api_key: str,
                                                 size_field: dict, expected: tuple) -> None:
    result = client(gateway, api_key).images.generate(
        model="flux-kontext-pro", prompt="a red fox in snow", response_format="url",
        **size_field)
    assert isinstance(result.created, int)
    assert result.data[0].b64_json is None
    url = result.data[0].url
    assert url and url.startswith(gateway.base_url + "/files/")
    image, _, ctype = fetch_image(url)
    assert image.size == expected
    assert ctype == "image/png"
    assert (result.data[0].width, result.data[0].height) == expected  # type: ignore[attr-defined]
    size = f"{expected[0]}x{expected[1]}"
    assert result.size == (size if size in ("1024x1024", "1024x1536", "1536x1024") else None)


def test_b64_json_decodes_and_output_format(gateway: Gateway, api_key: str) -> None:
    result = client(gateway, api_key).images.generate(
        model="flux-kontext-max", prompt="a lighthouse", response_format="b64_json",
        extra_body={"output_format": "jpg", "quality": "hd", "background": "opaque",
                    "moderation": "low", "style": "vivid"})
    assert result.data[0].url is None
    raw = base64.b64decode(result.data[0].b64_json or "")
    image = Image.open(io.BytesIO(raw))
    assert image.format == "JPEG" and image.size == (1024, 1024)
    assert result.output_format == "jpeg"


def test_absent_response_format_fills_both_fields(gateway: Gateway, api_key: str) -> None:
    resp = httpx.post(f"{gateway.base_url}/v1/images/generations",
                      headers={"authorization": f"Bearer {api_key}"},
                      json={"model": "flux-kontext-pro", "prompt": "a cat",
                            "output_format": "webp"}, timeout=30)
    assert resp.status_code == 200, resp.text
    item = resp.json()["data"][0]
    assert resp.json()["sandbox"] is True  # labelled: synthetic images, not a model's
    assert item["url"] and item["b64_json"]
    assert Image.open(io.BytesIO(base64.b64decode(item["b64_json"]))).format == "WEBP"
    assert fetch_image(item["url"])[1] == base64.b64decode(item["b64_json"])


def test_n2_gives_two_different_images(gateway: Gateway, api_key: str) -> None:
    result = client(gateway, api_key).images.generate(
        model="flux-kontext-pro", prompt="two foxes", n=2, response_format="b64_json")
    assert len(result.data) == 2
    assert result.data[0].b64_json != result.data[1].b64_json


def test_same_seed_gives_identical_bytes(gateway: Gateway, api_key: str) -> None:
    c = client(gateway, api_key)
    kwargs = {"model": "flux-kontext-pro", "prompt": "a blue bird", "response_format": "b64_json",
              "extra_body": {"seed": 42, "aspect_ratio": "4:3"}}
    first = c.images.generate(**kwargs)  # type: ignore[arg-type]
    second = c.images.generate(**kwargs)  # type: ignore[arg-type]
    assert first.data[0].b64_json == second.data[0].b64_json
    other = c.images.generate(**{**kwargs, "extra_body": {"seed": 43, "aspect_ratio": "4:3"}})  # type: ignore[arg-type]
    assert other.data[0].b64_json != first.data[0].b64_json


def test_random_seed_minus_one_differs(gateway: Gateway, api_key: str) -> None:
    c = client(gateway, api_key)
    a = c.images.generate(model="flux-kontext-pro", prompt="x", response_format="b64_json",
                          extra_body={"seed": -1})
    b = c.images.generate(model="flux-kontext-pro", prompt="x", response_format="b64_json",
                          extra_body={"seed": -1})
    assert a.data[0].b64_json != b.data[0].b64_json


def test_image_urls_in_prompt_are_used_as_inputs(gateway: Gateway, api_key: str,
                                                 image_server: ImageServer) -> None:
    url = image_server.add("girl.png", png_bytes((800, 600), (200, 30, 30)))
    result = client(gateway, api_key).images.generate(
        model="flux-kontext-pro", prompt=f"{url} make her wear sunglasses",
        response_format="url")
    assert image_server.hits == ["girl.png"]
    assert result.data[0].revised_prompt == "make her wear sunglasses"
    image, _, _ = fetch_image(result.data[0].url or "")
    assert image.size == (1184, 880)  # the 4:3 input's bucket
    r, g, b = image.convert("RGB").getpixel((image.width // 2, image.height // 2))
    assert (r, g, b) == (55, 225, 225)  # the sandbox inverts the first input


def test_input_image_field_accepts_base64_and_data_url(gateway: Gateway, api_key: str) -> None:
    raw = png_bytes((300, 600), (10, 20, 30))
    c = client(gateway, api_key)
    for ref in (base64.b64encode(raw).decode(),
                "data:image/png;base64," + base64.b64encode(raw).decode()):
        result = c.images.generate(model="flux-kontext-pro", prompt="edit",
                                   response_format="b64_json", extra_body={"input_image": ref})
        image = Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json or "")))
        assert image.size == (720, 1456)  # the 1:2 input's bucket
        assert image.convert("RGB").getpixel((image.width // 2, image.height // 2)) == \
            (245, 235, 225)


async def test_async_client_strict(gateway: Gateway, api_key: str) -> None:
    async with openai.AsyncOpenAI(base_url=f"{gateway.base_url}/v1", api_key=api_key,
                                  max_retries=0, _strict_response_validation=True) as c:
        result = await c.images.generate(model="black-forest-labs/flux-kontext-pro",
                                         prompt="async fox", response_format="b64_json",
                                         extra_body={"aspect_ratio": "3:4", "seed": 7})
        again = await c.images.generate(model="flux-kontext-pro", prompt="async fox",
                                        response_format="b64_json",
                                        extra_body={"aspect_ratio": "3:4", "seed": 7})
    image = Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json or "")))
    assert image.size == (880, 1184)
    assert result.data[0].b64_json == again.data[0].b64_json
