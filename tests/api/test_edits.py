"""POST /v1/images/edits through the real server: the openai SDK, Node- and requests-shaped
multipart, JSON bodies, masks, stitching, and every refused input (before any upstream call).

The sandbox upstream returns the first input colour-inverted and fitted to the Kontext bucket,
so an edited pixel is predictable: (200, 30, 30) comes back as (55, 225, 225)."""

from __future__ import annotations

import base64
import io
import random
import struct
import time
import zlib
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from PIL import Image

from tests.conftest import Gateway, ImageServer, jobs_of, png_bytes, traced_while

RED, INVERTED_RED = (200, 30, 30), (55, 225, 225)
BLUE = (20, 40, 220)


def client(gw: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.base_url}/v1", api_key=key, max_retries=0,
                         _strict_response_validation=True)


def decode(item: Any) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(item.b64_json or "")))


def encode(im: Image.Image, fmt: str = "PNG", **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def noise(size: tuple[int, int], seed: int = 1) -> Image.Image:
    rng = random.Random(seed)
    return Image.frombytes("RGB", size, bytes(rng.randrange(256) for _ in range(size[0] * size[1]
                                                                                * 3)))


def submitted(gw: Gateway) -> int:
    return sum(getattr(c.adapter, "submitted", 0) for c in gw.services.router.channels)


def multipart(parts: list[tuple[str, bytes | str, str | None, str | None]],
              boundary: str) -> bytes:
    """A multipart body from (name, value, filename, part content type) in the given order."""
    out = io.BytesIO()
    for name, value, filename, ctype in parts:
        out.write(f"--{boundary}\r\n".encode())
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out.write(f"Content-Disposition: {disposition}\r\n".encode())
        if ctype:
            out.write(f"Content-Type: {ctype}\r\n".encode())
        out.write(b"\r\n")
        out.write(value.encode() if isinstance(value, str) else value)
        out.write(b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue()


def chunks(data: bytes, size: int = 16 * 1024) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


def png_header(width: int, height: int) -> bytes:
    """A syntactically valid PNG claiming `width` x `height` with almost no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0"))
            + chunk(b"IEND", b""))


# -- the openai SDK --------------------------------------------------------------------------
def test_sdk_one_image(gateway: Gateway, api_key: str) -> None:
    result = client(gateway, api_key).images.edit(
        model="flux-kontext-max", image=("photo.webp", png_bytes((800, 600), RED), "image/webp"),
        prompt="make it night", response_format="b64_json")
    image = decode(result.data[0])
    assert image.size == (1184, 880)  # the 4:3 input's bucket: match_input_image
    assert image.convert("RGB").getpixel((592, 440)) == INVERTED_RED
    assert result.data[0].revised_prompt == "make it night"
    [row] = jobs_of(gateway)
    assert row.operation == "edit" and len(row.spec["input_file_ids"]) == 1


def test_sdk_image_list_keeps_order(gateway: Gateway, api_key: str) -> None:
    a, b = png_bytes((256, 256), RED), png_bytes((256, 256), BLUE)
    result = client(gateway, api_key).images.edit(
        model="flux-kontext-pro", image=[("a.png", a, "image/png"), ("b.png", b, "image/png")],
        prompt="put the blue thing in", response_format="b64_json")
    image = decode(result.data[0]).convert("RGB")
    assert image.size == (1024, 1024)
    assert image.getpixel((300, 512)) == INVERTED_RED  # the first image is the one edited
    assert image.getpixel((931, 931)) == BLUE  # the second rides along as a reference
    [row] = jobs_of(gateway)
    assert len(row.spec["input_file_ids"]) == 2 and row.spec["notes"] == []


def test_sdk_extra_body_and_ignored_openai_fields(gateway: Gateway, api_key: str) -> None:
    c = client(gateway, api_key)
    kwargs: dict[str, Any] = dict(
        model="flux-kontext-pro", image=png_bytes((300, 300), RED), prompt="wide",
        response_format="b64_json", quality="high", background="opaque", input_fidelity="high",
        extra_body={"aspect_ratio": "16:9", "seed": 7, "safety_tolerance": 2,
                    "output_format": "jpeg", "prompt_upsampling": True, "guidance": 2.5,
                    "steps": 28, "moderation": "low"})
    first = c.images.edit(**kwargs)
    second = c.images.edit(**kwargs)
    image = decode(first.data[0])
    assert image.format == "JPEG" and image.size == (1392, 752)
    assert first.output_format == "jpeg" and first.data[0].seed == 7
    assert first.data[0].b64_json == second.data[0].b64_json
    spec = jobs_of(gateway)[0].spec
    assert (spec["seed"], spec["safety_tolerance"], spec["prompt_upsampling"]) == (7, 2, True)
    assert spec["extra"] == {"guidance": 2.5, "steps": 28}
    assert spec["aspect_ratio"] == "16:9"


def test_sdk_size_maps_to_ratio_and_url_response(gateway: Gateway, api_key: str) -> None:
    result = client(gateway, api_key).images.edit(
        model="flux-kontext-pro", image=png_bytes((300, 300), RED), prompt="tall",
        size="1024x1536", response_format="url")
    assert result.data[0].b64_json is None
    resp = httpx.get(result.data[0].url or "")
    assert Image.open(io.BytesIO(resp.content)).size == (832, 1248)


def test_result_url_fetchable_with_and_without_a_forwarded_authorization(gateway: Gateway,
                                                                         api_key: str) -> None:
    """Open WebUI and the AI SDK fetch `data[].url` forwarding their Authorization header;
    a markdown <img> fetches it with none. Both must get the image, as image/*."""
    result = client(gateway, api_key).images.edit(
        model="flux-kontext-pro", image=png_bytes((256, 256), RED), prompt="x",
        response_format="url")
    url = result.data[0].url or ""
    assert url.startswith(f"{gateway.base_url}/files/")  # same origin as the API
    for headers in ({}, {"authorization": f"Bearer {api_key}"},
                    {"authorization": "Bearer sk-open-webui-own-key"}):
        resp = httpx.get(url, headers=headers)
        assert resp.status_code == 200, (headers, resp.text)
        assert resp.headers["content-type"] == "image/png"
        assert resp.headers["x-content-type-options"] == "nosniff"
        assert Image.open(io.BytesIO(resp.content)).size == (1024, 1024)


# -- multipart as other clients shape it -----------------------------------------------------
def test_node_shaped_chunked_multipart_files_first(gateway: Gateway, api_key: str) -> None:
    boundary = "openai-" + "7" * 24
    mask = Image.new("L", (256, 256), 255)
    body = multipart([
        ("model", "flux-kontext-max", None, None),
        ("image", png_bytes((256, 256), RED), "input.png", "application/octet-stream"),
        ("mask", encode(mask), "mask.png", "application/octet-stream"),
        ("prompt", "make it night", None, None),
        ("aspect_ratio", "1:1", None, None),
        ("seed", "7", None, None),
        ("safety_tolerance", "2", None, None),
        ("output_format", "png", None, None),
        ("prompt_upsampling", "false", None, None),
    ], boundary)
    resp = httpx.post(f"{gateway.base_url}/v1/images/edits", content=chunks(body),
                      headers={"authorization": f"Bearer {api_key}",
                               "content-type": f"multipart/form-data; boundary={boundary}"},
                      timeout=30)
    assert resp.request.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in resp.request.headers
    assert resp.status_code == 200, resp.text
    item = resp.json()["data"][0]
    image = Image.open(io.BytesIO(base64.b64decode(item["b64_json"])))
    assert image.size == (256, 256)  # masked: the input's size
    assert image.convert("RGB").getpixel((128, 128)) == INVERTED_RED
    spec = jobs_of(gateway)[0].spec
    assert spec["seed"] == 7 and spec["prompt_upsampling"] is False
    assert spec["mask_file_id"]


def test_requests_shaped_multipart_without_part_content_type(gateway: Gateway,
                                                             api_key: str) -> None:
    boundary = "a1b2c3d4e5f6"
    body = multipart([
        ("model", "flux-kontext-pro", None, None), ("prompt", "night", None, None),
        ("quality", "low", None, None), ("background", "opaque", None, None),
        ("n", "1", None, None), ("seed", "0", None, None), ("size", "auto", None, None),
        ("moderation", "low", None, None), ("prompt_upsampling", "True", None, None),
        ("image", png_bytes((600, 300), RED), "image_0.png", None),
    ], boundary)
    resp = httpx.post(f"{gateway.base_url}/v1/images/edits", content=body,
                      headers={"authorization": f"Bearer {api_key}",
                               "user-agent": "python-requests/2.34.2",
                               "content-type": f"multipart/form-data; boundary={boundary}"},
                      timeout=30)
    assert resp.status_code == 200, resp.text
    item = resp.json()["data"][0]
    assert item["url"] and item["b64_json"]  # response_format absent: both
    image = Image.open(io.BytesIO(base64.b64decode(item["b64_json"])))
    assert image.size == (1456, 720)  # size=auto: the 2:1 input's bucket
    spec = jobs_of(gateway)[0].spec
    assert spec["seed"] == 0 and spec["prompt_upsampling"] is True


def test_repeated_and_indexed_image_parts_in_arrival_order(gateway: Gateway,
                                                           api_key: str) -> None:
    boundary = "xyz"
    body = multipart([
        ("prompt", "mix", None, None), ("model", "flux-kontext-pro", None, None),
        ("response_format", "b64_json", None, None),
        ("image", png_bytes((256, 256), BLUE), "1.png", "image/png"),
        ("image", png_bytes((256, 256), RED), "2.png", "image/png"),
        ("image[0]", png_bytes((256, 256), (0, 255, 0)), "3.png", "image/png"),
    ], boundary)
    resp = httpx.post(f"{gateway.base_url}/v1/images/edits", content=body,
                      headers={"authorization": f"Bearer {api_key}",
                               "content-type": f"multipart/form-data; boundary={boundary}"},
                      timeout=30)
    assert resp.status_code == 200, resp.text
    image = Image.open(io.BytesIO(base64.b64decode(resp.json()["data"][0]["b64_json"])))
    assert image.convert("RGB").getpixel((300, 512)) == (235, 215, 35)  # inverted BLUE
    assert len(jobs_of(gateway)[0].spec["input_file_ids"]) == 3


def test_json_body_with_url_base64_and_data_url(gateway: Gateway, api_key: str,
                                                image_server: ImageServer) -> None:
    url = image_server.add("a.png", png_bytes((256, 256), RED))
    b = base64.b64encode(png_bytes((256, 256), BLUE)).decode()
    mask = "data:image/png;base64," + base64.b64encode(
        encode(Image.new("L", (256, 256), 255))).decode()
    resp = httpx.post(f"{gateway.base_url}/v1/images/edits",
                      headers={"authorization": f"Bearer {api_key}"},
                      json={"model": "flux-kontext-pro", "prompt": "mix", "image": [url, b],
                            "mask": mask, "response_format": "b64_json", "seed": "3"},
                      timeout=30)
    assert resp.status_code == 200, resp.text
    assert image_server.hits == ["a.png"]
    image = Image.open(io.BytesIO(base64.b64decode(resp.json()["data"][0]["b64_json"])))
    assert image.size == (256, 256)
    assert image.convert("RGB").getpixel((128, 128)) == INVERTED_RED
    # OpenAI's JSON shape
    resp = httpx.post(f"{gateway.base_url}/v1/images/edits",
                      headers={"authorization": f"Bearer {api_key}"},
                      json={"model": "flux-kontext-pro", "prompt": "x",
                            "images": [{"image_url": url}], "response_format": "b64_json"},
                      timeout=30)
    assert resp.status_code == 200, resp.text


def test_gif_first_frame_and_exif_orientation(gateway: Gateway, api_key: str) -> None:
    frames = [Image.new("RGB", (300, 200), RED), Image.new("RGB", (300, 200), BLUE)]
    gif = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    c = client(gateway, api_key)
    image = decode(c.images.edit(model="flux-kontext-pro", image=gif, prompt="x",
                                 response_format="b64_json").data[0]).convert("RGB")
    assert image.getpixel((image.width // 2, image.height // 2)) == INVERTED_RED
    # a 400x200 JPEG stored sideways (orientation 6) is a 200x400 image: the mask must match
    exif = Image.Exif()
    exif[0x0112] = 6
    jpeg = encode(Image.new("RGB", (400, 200), RED), "JPEG", exif=exif.tobytes())
    upright_mask = encode(Image.new("L", (200, 400), 255))
    result = c.images.edit(model="flux-kontext-pro", image=jpeg, mask=upright_mask,
                           prompt="x", response_format="b64_json")
    assert decode(result.data[0]).size == (200, 400)
    with pytest.raises(openai.BadRequestError) as err:
        c.images.edit(model="flux-kontext-pro", image=jpeg, prompt="x",
                      mask=encode(Image.new("L", (400, 200), 255)))
    assert err.value.body["param"] == "mask"  # type: ignore[index]
    assert err.value.body["code"] == "mask_size_mismatch"  # type: ignore[index]


# -- masks ----------------------------------------------------------------------------------
def test_mask_black_keeps_input_bits_white_takes_result(gateway: Gateway, api_key: str) -> None:
    src = Image.new("RGB", (256, 256), RED)
    src.paste(noise((128, 256)), (0, 0))  # left half: noise, to be kept bit for bit
    mask = Image.new("L", (256, 256), 0)
    mask.paste(255, (128, 0, 256, 256))  # right half: edit
    result = client(gateway, api_key).images.edit(
        model="flux-kontext-pro", image=("in.png", encode(src), "image/png"),
        mask=("mask.png", encode(mask), "image/png"), prompt="edit the right half",
        response_format="b64_json", extra_body={"output_format": "png"})
    out = decode(result.data[0])
    assert out.format == "PNG" and out.size == src.size
    out = out.convert("RGB")
    left = (0, 0, 128, 256)
    assert out.crop(left).tobytes() == src.crop(left).tobytes()
    for x in range(160, 250, 10):  # away from the seam and the sandbox's captions
        for y in range(40, 220, 20):
            assert out.getpixel((x, y)) == INVERTED_RED


def test_mask_gray_ramp_blends_monotonically(gateway: Gateway, api_key: str) -> None:
    mask = Image.frombytes("L", (256, 256), bytes(range(256)) * 256)  # 0 left .. 255 right
    result = client(gateway, api_key).images.edit(
        model="flux-kontext-pro", image=png_bytes((256, 256), RED), mask=encode(mask),
        prompt="fade", response_format="b64_json")
    row = [decode(result.data[0]).convert("RGB").getpixel((x, 128)) for x in range(256)]
    reds = [p[0] for p in row]
    greens = [p[1] for p in row]
    assert reds == sorted(reds, reverse=True) and greens == sorted(greens)
    assert row[0] == RED and abs(row[255][0] - INVERTED_RED[0]) <= 2
    assert len(set(reds)) > 100  # a real ramp, not a step


def test_openai_rgba_mask_transparent_means_edit(gateway: Gateway, api_key: str) -> None:
    mask = Image.new("RGBA", (256, 256), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, 128, 256))  # left half transparent: edit there
    result = client(gateway, api_key).images.edit(
        model="flux-kontext-pro", image=png_bytes((256, 256), RED), mask=encode(mask),
        prompt="x", response_format="b64_json")
    out = decode(result.data[0]).convert("RGB")
    assert out.getpixel((60, 128)) == INVERTED_RED
    assert out.getpixel((200, 128)) == RED


# -- several images on a one-slot channel -----------------------------------------------------
def test_inputs_are_stitched_for_a_channel_with_fewer_slots(gateway_factory: Any) -> None:
    gw = gateway_factory(channels=[{"name": "one-slot", "type": "sandbox",
                                    "options": {"max_input_images": 1}}])
    key = gw.create_key("k")[1]
    a, b = png_bytes((256, 256), RED), png_bytes((256, 512), BLUE)
    result = client(gw, key).images.edit(
        model="flux-kontext-pro", image=[a, b], prompt="combine", response_format="b64_json")
    image = decode(result.data[0]).convert("RGB")
    assert image.size == (1024, 1024)  # the first input's ratio, not the stitched canvas's
    # the stitched canvas is [red 256x256 | blue 128x256]; the 1:1 crop keeps both
    assert image.getpixel((200, 512)) == INVERTED_RED
    assert image.getpixel((900, 512)) == (235, 215, 35)  # inverted BLUE
    [row] = jobs_of(gw)
    assert row.channel == "one-slot"
    [note] = row.spec["notes"]
    assert "stitched side by side" in note and "384x256" in note


def test_native_multi_reference_channel_preferred_over_stitching(gateway_factory: Any) -> None:
    gw = gateway_factory(channels=[
        {"name": "one-slot", "type": "sandbox", "priority": 10,
         "options": {"max_input_images": 1}},
        {"name": "four-slots", "type": "sandbox", "priority": 0}])
    c = client(gw, gw.create_key("k")[1])
    c.images.edit(model="flux-kontext-pro", image=[png_bytes(), png_bytes()], prompt="two")
    c.images.edit(model="flux-kontext-pro", image=png_bytes(), prompt="one")
    by_prompt = {row.prompt: row for row in jobs_of(gw)}
    assert by_prompt["two"].channel == "four-slots" and by_prompt["two"].spec["notes"] == []
    assert by_prompt["one"].channel == "one-slot"


def test_empty_mask_part_means_no_mask(gateway: Gateway, api_key: str) -> None:
    result = client(gateway, api_key).images.edit(
        model="flux-kontext-pro", image=png_bytes((256, 256), RED), mask=("mask.png", b""),
        prompt="x", response_format="b64_json")
    assert decode(result.data[0]).size == (1024, 1024)
    assert jobs_of(gateway)[0].spec["mask_file_id"] is None


# -- refused inputs ---------------------------------------------------------------------------
def _huge_pixels() -> bytes:
    return encode(Image.new("L", (5000, 5000)), "PNG", compress_level=1)


BAD_INPUTS: list[tuple[str, Any, int, str, str]] = [
    ("21 MB file", lambda: {"image": b"\x89PNG\r\n\x1a\n" + bytes(21 * 1024 * 1024)},
     413, "image", "payload_too_large"),
    ("25 MP image", lambda: {"image": _huge_pixels()}, 400, "image", "image_too_large"),
    ("SVG", lambda: {"image": ("x.png", b'<svg xmlns="http://www.w3.org/2000/svg"/>',
                               "image/png")}, 415, "image", "unsupported_image_format"),
    ("HTML", lambda: {"image": b"<!doctype html><html><body>hi</body></html>"},
     415, "image", "unsupported_image_format"),
    ("truncated PNG", lambda: {"image": encode(noise((128, 128)))[:3000]},
     400, "image", "invalid_image"),
    ("mask of the wrong size", lambda: {"image": png_bytes((256, 256)),
                                        "mask": png_bytes((128, 128))},
     400, "mask", "mask_size_mismatch"),
    ("8:1 image", lambda: {"image": png_bytes((800, 100))}, 400, "image", "invalid_aspect_ratio"),
    ("second image bad", lambda: {"image": [png_bytes((64, 64)), b"GIF89a-not-really"]},
     400, "image[1]", "invalid_image"),
    ("5 images", lambda: {"image": [png_bytes((64, 64))] * 5}, 400, "image", "too_many_images"),
]


@pytest.mark.parametrize(("label", "files", "status", "param", "code"), BAD_INPUTS,
                         ids=[b[0] for b in BAD_INPUTS])
def test_bad_inputs_refused_before_any_upstream_call(gateway: Gateway, api_key: str, label: str,
                                                     files: Any, status: int, param: str,
                                                     code: str) -> None:
    with pytest.raises(openai.APIStatusError) as err:
        client(gateway, api_key).images.edit(model="flux-kontext-pro", prompt="x", **files())
    assert err.value.status_code == status, err.value.body
    body: dict[str, Any] = err.value.body  # type: ignore[assignment]
    assert (body["param"], body["code"]) == (param, code)
    assert param.split("[")[0] in body["message"]
    assert submitted(gateway) == 0 and jobs_of(gateway) == []


def test_giant_png_header_refused_fast(gateway: Gateway, api_key: str) -> None:
    data = png_header(50_000, 50_000)
    boundary = "b"
    body = multipart([("model", "flux-kontext-pro", None, None), ("prompt", "x", None, None),
                      ("image", data, "huge.png", "image/png")], boundary)
    with httpx.Client(timeout=10) as http:
        headers = {"authorization": f"Bearer {api_key}",
                   "content-type": f"multipart/form-data; boundary={boundary}"}
        # warm the connection and the key cache, then take the best of five (a loaded CI
        # machine adds scheduling noise; the refusal itself must stay well under 100 ms)
        http.get(f"{gateway.base_url}/v1/models", headers={"authorization": f"Bearer {api_key}"})
        timings = []
        for _ in range(5):
            started = time.perf_counter()
            resp = http.post(f"{gateway.base_url}/v1/images/edits", content=body,
                             headers=headers)
            timings.append(time.perf_counter() - started)
        elapsed = min(timings)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert (error["param"], error["code"]) == ("image", "image_too_large")
    assert "20000000" in error["message"] or "20 MP" in error["message"]
    assert elapsed < 0.1, elapsed
    assert submitted(gateway) == 0


def test_chunked_body_over_the_cap_is_refused(gateway_factory: Any) -> None:
    gw = gateway_factory(limits={"max_image_bytes": 64 * 1024, "max_input_images": 1})
    key = gw.create_key("k")[1]
    boundary = "cap"
    body = multipart([("prompt", "x", None, None),
                      ("image", b"\x89PNG\r\n\x1a\n" + bytes(3 * 1024 * 1024), "a.png", None)],
                     boundary)
    resp = httpx.post(f"{gw.base_url}/v1/images/edits", content=chunks(body, 64 * 1024),
                      headers={"authorization": f"Bearer {key}",
                               "content-type": f"multipart/form-data; boundary={boundary}"},
                      timeout=30)
    assert resp.status_code == 413, resp.text
    assert resp.json()["error"]["code"] == "payload_too_large"


def test_missing_image_prompt_and_wrong_content_type(gateway: Gateway, api_key: str) -> None:
    url = f"{gateway.base_url}/v1/images/edits"
    auth = {"authorization": f"Bearer {api_key}"}
    resp = httpx.post(url, headers=auth, json={"model": "flux-kontext-pro", "prompt": "x"})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "image"
    resp = httpx.post(url, headers=auth, json={"model": "flux-kontext-pro",
                                               "image": base64.b64encode(png_bytes()).decode()})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "prompt"
    resp = httpx.post(url, headers={**auth, "content-type": "text/plain"}, content=b"hi")
    assert resp.status_code == 415
    resp = httpx.post(url, json={"model": "flux-kontext-pro", "prompt": "x"})
    assert resp.status_code == 401


def test_multipart_text_image_part_is_a_url(gateway: Gateway, api_key: str,
                                            image_server: ImageServer) -> None:
    url = image_server.add("r.png", png_bytes((256, 256), RED))
    body = multipart([("prompt", "x", None, None), ("model", "flux-kontext-pro", None, None),
                      ("response_format", "b64_json", None, None),
                      ("image[]", url, None, None),
                      ("image[]", png_bytes((256, 256), BLUE), "b.png", None)], "u")
    resp = httpx.post(f"{gateway.base_url}/v1/images/edits", content=body,
                      headers={"authorization": f"Bearer {api_key}",
                               "content-type": "multipart/form-data; boundary=u"}, timeout=30)
    assert resp.status_code == 200, resp.text
    image = Image.open(io.BytesIO(base64.b64decode(resp.json()["data"][0]["b64_json"])))
    assert image.convert("RGB").getpixel((300, 512)) == INVERTED_RED
    assert image_server.hits == ["r.png"]


def test_idempotency_key_on_edits(gateway: Gateway, api_key: str) -> None:
    """A retried edit (the SDK builds a new multipart body, new boundary) with the same
    Idempotency-Key replays the first answer without a second job; another image is a 422."""
    c = client(gateway, api_key)
    image = png_bytes((64, 64), RED)
    kwargs: dict[str, Any] = {"model": "flux-kontext-pro", "prompt": "night",
                              "response_format": "b64_json",
                              "extra_headers": {"Idempotency-Key": "edit-1"}}
    first = c.images.edit(image=("a.png", image, "image/png"), **kwargs)
    again = c.images.edit(image=("b.png", image, "image/png"), **kwargs)
    assert first.data[0].b64_json == again.data[0].b64_json
    assert len(jobs_of(gateway)) == 1 and submitted(gateway) == 1
    with pytest.raises(openai.UnprocessableEntityError):
        c.images.edit(image=("a.png", png_bytes((64, 64), BLUE), "image/png"), **kwargs)
    assert len(jobs_of(gateway)) == 1


# -- memory: a 20 MB upload is held once, not several times over ------------------------------
def _big_png() -> bytes:
    """A ~20 MB (incompressible) PNG, just under the 20 MiB limit."""
    rnd = random.Random(3)
    image = Image.frombytes("RGB", (2600, 2600), rnd.randbytes(2600 * 2600 * 3))
    return encode(image, "PNG", compress_level=0)


def _traced_edit(gw: Gateway, key: str, **kwargs: Any) -> tuple[httpx.Response, float, float]:
    """Post an edit whose job takes 5 s; (response, MB traced while the job runs, peak MB)."""
    out: dict[str, httpx.Response] = {}
    headers = {"authorization": f"Bearer {key}", **kwargs.pop("headers", {})}

    def post() -> None:
        out["r"] = httpx.post(f"{gw.base_url}/v1/images/edits", headers=headers, timeout=120,
                              **kwargs)

    held, peak = traced_while(post, gw)  # while the job (sandbox:latency=5) is upstream
    return out["r"], held, peak


@pytest.mark.parametrize("shape", ["multipart", "json data URL"])
def test_a_20_mb_upload_is_not_held_several_times_over(gateway: Gateway, api_key: str,
                                                       shape: str) -> None:
    data = _big_png()
    size = len(data) / 1e6
    assert 19 < size < 21
    prompt = "x sandbox:latency=5"
    if shape == "multipart":
        kwargs: dict[str, Any] = {
            "files": {"image": ("a.png", data, "image/png")},
            "data": {"model": "flux-kontext-pro", "prompt": prompt, "response_format": "url"}}
    else:
        b64 = base64.b64encode(data).decode()
        kwargs = {"headers": {"content-type": "application/json"}, "content": (
            f'{{"model": "flux-kontext-pro", "prompt": "{prompt}", "response_format": "url", '
            f'"image": "data:image/png;base64,{b64}"}}').encode()}
        del b64
    del data
    resp, held, peak = _traced_edit(gateway, api_key, **kwargs)
    assert resp.status_code == 200, resp.text
    # while the job runs, the job's own copy of the input is all that is kept; the request's
    # bytes (and a JSON body's base64 text) are gone
    assert held < 1.5 * size, (held, size)
    # the request body (1.33x as base64), its parsed text and the decoded image, not more
    assert peak < 4 * size, (peak, size)
