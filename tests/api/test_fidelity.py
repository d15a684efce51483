"""Image fidelity through real HTTP (issue 10): the served image is in the asked format and
ratio, at the asked quality, whatever the upstream answered.

An OpenAI-compatible upstream is stubbed at the transport (respx) with OpenAI's documented
images answer (`{"created", "data": [{"b64_json"}]}`); each case chooses the size and format
it answers. Every case asserts the pixels: the format sniffed from the served bytes, the ratio
error, and the largest pixel difference from what the upstream sent (or the input, under a
black mask)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

import httpx
import pytest
import respx
from PIL import Image, ImageChops, ImageCms, JpegImagePlugin

from gateway.images.validate import sniff
from tests.conftest import Gateway, jobs_of
from tests.images.credentials import active_manifest, image_data, sign
from tests.images.profiles import display_p3

UPSTREAM = "https://oai.fidelity.test"


# -- pixels ----------------------------------------------------------------------------------
def picture(size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    """A smooth, position-coded picture: every region is told apart by its colour."""
    x = Image.linear_gradient("L").rotate(90).resize(size)  # left bright, right dark
    y = Image.linear_gradient("L").resize(size)  # top dark, bottom bright
    im = Image.merge("RGB", (x, y, Image.new("L", size, 128)))
    return im.convert(mode) if mode != "RGB" else im


def encode(im: Image.Image, fmt: str, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def decoded(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def max_diff(a: Image.Image, b: Image.Image) -> int:
    """The largest per-channel difference of two same-size images (RGB)."""
    assert a.size == b.size, (a.size, b.size)
    extrema = ImageChops.difference(a.convert("RGB"), b.convert("RGB")).getextrema()
    return max(hi for _, hi in extrema)


def ratio_error(size: tuple[int, int], ratio: float) -> float:
    return abs(size[0] / size[1] / ratio - 1)


def centre(im: Image.Image, ratio: float) -> Image.Image:
    w, h = im.size
    if w / h > ratio:
        cw, ch = round(h * ratio), h
    else:
        cw, ch = w, round(w / ratio)
    left, top = (w - cw) // 2, (h - ch) // 2
    return im.crop((left, top, left + cw, top + ch))


# -- the stubbed upstream --------------------------------------------------------------------
@dataclass
class FakeOpenAI:
    """Answers every images call with `answer` (bytes) and records what it was asked."""

    answer: bytes = b""
    status: int = 200  # anything else: an OpenAI error envelope with that status
    asked: list[dict[str, Any]] = field(default_factory=list)
    images: list[bytes] = field(default_factory=list)  # the input images of the last edit

    def respond(self, request: httpx.Request) -> httpx.Response:
        if request.headers.get("content-type", "").startswith("application/json"):
            fields = json.loads(request.content)
        else:
            head = f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode()
            message = BytesParser(policy=HTTP).parsebytes(head + request.content)
            fields, self.images = {}, []
            for part in message.iter_parts():
                payload = part.get_payload(decode=True)
                assert isinstance(payload, bytes)
                if part.get_filename():
                    self.images.append(payload)
                else:
                    fields[str(part.get_param("name", header="content-disposition"))] = \
                        payload.decode()
        self.asked.append(fields)
        if self.status != 200:
            return httpx.Response(self.status, json={"error": {
                "message": "overloaded", "type": "server_error", "param": None, "code": None}})
        return httpx.Response(200, json={"created": 1, "data": [
            {"b64_json": base64.b64encode(self.answer).decode()}]})


@pytest.fixture
def upstream(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAI]:
    monkeypatch.setenv("FIDELITY_KEY", "sk-upstream")
    fake = FakeOpenAI()
    with respx.mock(assert_all_called=False) as mock:
        mock.route(host="127.0.0.1").pass_through()
        mock.post(f"{UPSTREAM}/v1/images/generations").mock(side_effect=fake.respond)
        mock.post(f"{UPSTREAM}/v1/images/edits").mock(side_effect=fake.respond)
        yield fake


def start(gateway_factory: Any, fit: str | None = None, *, options: dict[str, Any] | None = None,
          more: tuple[dict[str, Any], ...] = (), **settings: Any) -> tuple[Gateway, str, str]:
    """A gateway whose channel `oai` is the stubbed upstream (plus `more` channels)."""
    channel: dict[str, Any] = {"name": "oai", "type": "openai", "base_url": UPSTREAM,
                               "api_key_env": "FIDELITY_KEY", "options": options or {}}
    if fit is not None:
        channel["fit"] = fit
    gw: Gateway = gateway_factory(channels=[channel, *more], **settings)
    key_id, key = gw.create_key(balance=10_000_000)
    return gw, key_id, key


def generate(gw: Gateway, key: str, **fields: Any) -> bytes:
    resp = httpx.post(f"{gw.base_url}/v1/images/generations",
                      headers={"authorization": f"Bearer {key}"},
                      json={"model": "flux-kontext-pro", "prompt": "a fox",
                            "response_format": "b64_json", **fields}, timeout=60)
    assert resp.status_code == 200, resp.text
    return base64.b64decode(resp.json()["data"][0]["b64_json"])


def notes(gw: Gateway, key_id: str) -> str:
    [row] = jobs_of(gw, key_id)
    return " | ".join(row.spec["notes"])


# -- format is a promise ---------------------------------------------------------------------
SIZE = (1024, 1024)
FORMAT_CASES = [
    # asked, upstream answer format, save options, max pixel difference from the upstream's
    pytest.param("png", "JPEG", {"quality": 90}, 0, id="jpeg->png lossless"),
    pytest.param("png", "GIF", {}, 0, id="gif->png lossless"),
    pytest.param("png", "WEBP", {"quality": 80}, 0, id="webp->png lossless"),
    pytest.param("webp", "PNG", {}, 0, id="png->webp lossless"),
    pytest.param("webp", "JPEG", {"quality": 90}, 0, id="jpeg->webp lossless"),
    pytest.param("jpeg", "PNG", {}, 6, id="png->jpeg q95 4:4:4"),
    pytest.param("jpeg", "WEBP", {"lossless": True}, 6, id="webp->jpeg q95 4:4:4"),
]


@pytest.mark.parametrize(("asked", "answered", "options", "tolerance"), FORMAT_CASES)
def test_served_format_is_the_asked_one(gateway_factory: Any, upstream: FakeOpenAI, asked: str,
                                        answered: str, options: dict[str, Any],
                                        tolerance: int) -> None:
    source = picture(SIZE)
    if answered == "GIF":
        source = source.convert("P", palette=Image.Palette.ADAPTIVE)
    upstream.answer = encode(source, answered, **options)
    gw, key_id, key = start(gateway_factory)
    served = generate(gw, key, output_format=asked)
    assert sniff(served) == {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}[asked]
    image = decoded(served)
    assert image.size == SIZE
    assert max_diff(image, decoded(upstream.answer)) <= tolerance
    if asked == "jpeg":
        assert JpegImagePlugin.get_sampling(image) == 0  # 4:4:4: chroma kept
    assert f"answered {answered}; converted to {asked.upper()}" in notes(gw, key_id)


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_asked_format_is_sent_upstream_and_passed_through(gateway_factory: Any,
                                                          upstream: FakeOpenAI,
                                                          fmt: str) -> None:
    """OpenAI-compatible upstreams take png, jpeg and webp: each is asked for as it is, and an
    answer in that format and ratio is served as it came: the encoded image byte for byte
    (only the XMP digital source type is added around it, see tests/api/test_provenance.py)."""
    pillow = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}[fmt]
    upstream.answer = encode(picture(SIZE), pillow)
    gw, key_id, key = start(gateway_factory)
    served = generate(gw, key, output_format=fmt)
    assert upstream.asked[-1]["output_format"] == fmt
    assert hashlib.sha256(image_data(served)).digest() == \
        hashlib.sha256(image_data(upstream.answer)).digest()
    assert notes(gw, key_id) == ""


# -- ratio is a promise, with a policy --------------------------------------------------------
RATIO_CASES = [
    # asked ratio, upstream answer size, fit, expected served size
    pytest.param("16:9", (1024, 1024), None, (1024, 576), id="square for 16:9, crop"),
    pytest.param("16:9", (752, 1392), "crop", (752, 423), id="portrait for 16:9, crop"),
    pytest.param("21:9", (1200, 900), "crop", (1200, 514), id="4:3 for 21:9, crop"),
    pytest.param("9:16", (1024, 1024), "crop", (576, 1024), id="square for 9:16, crop"),
    pytest.param("16:9", (1024, 1024), "pad", (1821, 1024), id="square for 16:9, pad"),
    pytest.param("16:9", (1024, 1024), "pass", (1024, 1024), id="square for 16:9, pass"),
    pytest.param("16:9", (1392, 752), "crop", (1392, 752), id="the bucket itself"),
    pytest.param("16:9", (1920, 1080), "crop", (1920, 1080), id="exactly 16:9"),
    pytest.param("1:1", (1040, 1024), "crop", (1040, 1024), id="1.6 % off: within 2 %"),
]


@pytest.mark.parametrize(("ratio", "answered", "fit", "expected"), RATIO_CASES)
def test_served_ratio_follows_the_channel_fit(gateway_factory: Any, upstream: FakeOpenAI,
                                              ratio: str, answered: tuple[int, int],
                                              fit: str | None,
                                              expected: tuple[int, int]) -> None:
    source = picture(answered)
    upstream.answer = encode(source, "PNG")
    gw, key_id, key = start(gateway_factory, fit)
    served = generate(gw, key, aspect_ratio=ratio)
    image = decoded(served)
    assert sniff(served) == "PNG" and image.size == expected
    w, h = (int(x) for x in ratio.split(":"))
    changed = expected != answered
    if changed and fit != "pad":  # cropped: the centre of the upstream's image, unchanged
        assert ratio_error(image.size, w / h) <= 0.005
        assert max_diff(image, centre(source, w / h)) == 0
        assert "centre-cropped" in notes(gw, key_id)
    elif fit == "pad":
        assert ratio_error(image.size, w / h) <= 0.005
        left = (expected[0] - answered[0]) // 2
        inner = image.crop((left, 0, left + answered[0], answered[1]))
        assert max_diff(inner, source) == 0
        assert image.convert("RGBA").getpixel((0, 0))[3] == 0  # the bars are transparent
        assert "padded" in notes(gw, key_id)
    else:  # served as it came: the encoded image byte for byte
        assert image_data(served) == image_data(upstream.answer)
        assert ("fit: pass" in notes(gw, key_id)) == (fit == "pass")


def test_masked_edit_comes_back_at_the_input_size_cropped_not_stretched(
        gateway_factory: Any, upstream: FakeOpenAI) -> None:
    """The upstream answers a square to a 3:2 input: the result is centre-cropped to 3:2
    before the mask is applied, so the edited half shows the middle band of the answer and
    the kept half is the input, bit for bit."""
    answer = Image.new("RGB", (1024, 1024), (0, 0, 255))  # blue bands top and bottom
    answer.paste((0, 200, 0), (0, 150, 1024, 874))  # the middle (a 3:2 crop: 170..853) is green
    upstream.answer = encode(answer, "PNG")
    gw, key_id, key = start(gateway_factory)
    original = picture((300, 200))
    mask = Image.new("L", (300, 200), 0)
    mask.paste(255, (150, 0, 300, 200))  # right half: edit
    resp = httpx.post(f"{gw.base_url}/v1/images/edits",
                      headers={"authorization": f"Bearer {key}"},
                      files={"image": ("in.png", encode(original, "PNG"), "image/png"),
                             "mask": ("mask.png", encode(mask, "PNG"), "image/png")},
                      data={"model": "flux-kontext-pro", "prompt": "green",
                            "response_format": "b64_json"}, timeout=60)
    assert resp.status_code == 200, resp.text
    image = decoded(base64.b64decode(resp.json()["data"][0]["b64_json"])).convert("RGB")
    assert image.size == (300, 200)
    assert max_diff(image.crop((0, 0, 150, 200)), original.crop((0, 0, 150, 200))) == 0
    edited = image.crop((152, 0, 300, 200))  # stretched, the top and bottom rows would be blue
    assert max_diff(edited, Image.new("RGB", edited.size, (0, 200, 0))) <= 2
    assert "centre-cropped" in notes(gw, key_id)


# -- quality -----------------------------------------------------------------------------------
def quant(data: bytes) -> dict[int, list[int]]:
    return {k: list(v) for k, v in decoded(data).quantization.items()}  # type: ignore[attr-defined]


def test_output_compression_is_forwarded_and_applied_where_the_gateway_encodes(
        gateway_factory: Any, upstream: FakeOpenAI) -> None:
    """OpenAI's `output_compression` goes upstream as is; when the upstream answers PNG anyway
    the gateway's own JPEG is written at that quality (4:2:0 below 90)."""
    source = picture(SIZE)
    upstream.answer = encode(source, "PNG")
    gw, key_id, key = start(gateway_factory)
    served = generate(gw, key, output_format="jpeg", output_compression=60)
    assert upstream.asked[-1]["output_format"] == "jpeg"
    assert upstream.asked[-1]["output_compression"] == 60
    assert sniff(served) == "JPEG"
    assert quant(served) == quant(encode(source, "JPEG", quality=60))
    assert "quality 60" in notes(gw, key_id)


@pytest.mark.parametrize(("fields", "expected"), [
    pytest.param({"quality": "high"}, None, id="a word is OpenAI's level: ignored"),
    pytest.param({"quality": 70}, 70, id="a number is a quality"),
    pytest.param({"quality": "85"}, 85, id="a numeric string too"),
    pytest.param({"output_compression": 40, "quality": 90}, 40, id="output_compression wins"),
])
def test_quality_fields(gateway_factory: Any, upstream: FakeOpenAI, fields: dict[str, Any],
                        expected: int | None) -> None:
    source = picture((1024, 1024))
    upstream.answer = encode(source, "PNG")
    gw, key_id, key = start(gateway_factory)
    served = generate(gw, key, output_format="jpeg", **fields)
    assert upstream.asked[-1].get("output_compression") == expected
    assert quant(served) == quant(encode(source, "JPEG", quality=expected or 95))
    [row] = jobs_of(gw, key_id)
    assert row.spec["quality"] == expected


@pytest.mark.parametrize(("field_name", "value"), [("output_compression", 101),
                                                   ("output_compression", "lots"),
                                                   ("quality", -1)])
def test_bad_quality_is_a_400_naming_the_field(gateway_factory: Any, upstream: FakeOpenAI,
                                               field_name: str, value: Any) -> None:
    gw, _, key = start(gateway_factory)
    resp = httpx.post(f"{gw.base_url}/v1/images/generations",
                      headers={"authorization": f"Bearer {key}"},
                      json={"model": "flux-kontext-pro", "prompt": "a fox", field_name: value},
                      timeout=30)
    assert resp.status_code == 400
    assert resp.json()["error"]["param"] == field_name
    assert upstream.asked == []


MASKED_CASES = [
    # output format, extra fields, expected max diff under black, check of the encoding
    pytest.param("webp", {}, 0, "VP8L", id="webp lossless by default"),
    pytest.param("webp", {"output_compression": 70}, None, "VP8 ", id="webp lossy when asked"),
    pytest.param("jpeg", {}, 3, "444", id="jpeg q95 4:4:4"),
    pytest.param("png", {}, 0, "PNG", id="png lossless"),
]


@pytest.mark.parametrize(("fmt", "fields", "kept_diff", "encoding"), MASKED_CASES)
def test_masked_results_are_encoded_by_the_quality_rules(
        gateway: Gateway, api_key: str, fmt: str, fields: dict[str, Any],
        kept_diff: int | None, encoding: str) -> None:
    """Masked results are written by the gateway (sandbox upstream): WebP lossless unless a
    quality is given, JPEG 4:4:4 at 95, PNG lossless; the kept half stays the input's."""
    original = picture((320, 240))
    mask = Image.new("L", (320, 240), 0)
    mask.paste(255, (160, 0, 320, 240))
    resp = httpx.post(f"{gateway.base_url}/v1/images/edits",
                      headers={"authorization": f"Bearer {api_key}"},
                      files={"image": ("in.png", encode(original, "PNG"), "image/png"),
                             "mask": ("mask.png", encode(mask, "PNG"), "image/png")},
                      data={"model": "flux-kontext-pro", "prompt": "x", "output_format": fmt,
                            "response_format": "b64_json",
                            **{k: str(v) for k, v in fields.items()}}, timeout=60)
    assert resp.status_code == 200, resp.text
    served = base64.b64decode(resp.json()["data"][0]["b64_json"])
    image = decoded(served)
    assert image.size == (320, 240)
    kept = max_diff(image.crop((0, 0, 150, 240)), original.crop((0, 0, 150, 240)))
    if kept_diff is not None:
        assert kept <= kept_diff
    if encoding in ("VP8L", "VP8 "):
        # (the chunk after VP8X: the XMP digital source type makes the file extended)
        assert encoding.encode() in (served[12:16], served[30:34])
    elif encoding == "444":
        assert JpegImagePlugin.get_sampling(image) == 0
    else:
        assert sniff(served) == "PNG"


# -- inputs sent upstream ----------------------------------------------------------------------
def grainy(size: tuple[int, int]) -> Image.Image:
    """Photo-like grain: its lossless PNG is several times its JPEG."""
    rng = random.Random(5)
    grain = Image.frombytes("L", size, bytes(rng.randrange(256) for _ in range(size[0] * size[1])))
    return Image.merge("RGB", (grain, Image.linear_gradient("L").resize(size), grain))


def test_rotated_jpeg_is_sent_upstream_as_an_upright_jpeg_within_the_limit(
        gateway_factory: Any, upstream: FakeOpenAI) -> None:
    """Orientation=6 JPEG: the upstream receives the upright picture as a JPEG (q95, 4:4:4)
    within the gateway's own input limit, not a PNG several times over it; the job says so."""
    photo = grainy((900, 600))
    exif = Image.Exif()
    exif[0x0112] = 6
    upload = encode(photo, "JPEG", quality=90, exif=exif.tobytes())
    limit = 2 * len(upload)
    assert len(encode(photo, "PNG")) > limit
    upstream.answer = encode(picture((832, 1248)), "PNG")
    gw, key_id, key = start(gateway_factory, limits={"max_image_bytes": limit})
    resp = httpx.post(f"{gw.base_url}/v1/images/edits",
                      headers={"authorization": f"Bearer {key}"},
                      files={"image": ("photo.jpg", upload, "image/jpeg")},
                      data={"model": "flux-kontext-pro", "prompt": "x",
                            "response_format": "b64_json"}, timeout=60)
    assert resp.status_code == 200, resp.text
    [sent] = upstream.images
    assert sniff(sent) == "JPEG" and len(sent) <= limit
    upright = decoded(sent)
    assert upright.size == (600, 900) and JpegImagePlugin.get_sampling(upright) == 0
    want = decoded(upload).convert("RGB").transpose(Image.Transpose.ROTATE_270)
    assert max_diff(upright, want) <= 48  # one more generation at q95 over heavy grain
    assert "EXIF orientation was applied; sent upstream re-encoded as JPEG" in notes(gw, key_id)


# -- several images ----------------------------------------------------------------------------
def edit(gw: Gateway, key: str, images: list[bytes], mask: bytes | None = None,
         **fields: str) -> httpx.Response:
    files = [("image[]", (f"in{i}.jpg", data, "image/jpeg")) for i, data in enumerate(images)]
    if mask is not None:
        files.append(("mask", ("mask.png", mask, "image/png")))
    return httpx.post(f"{gw.base_url}/v1/images/edits",
                      headers={"authorization": f"Bearer {key}"}, files=files,
                      data={"model": "flux-kontext-pro", "prompt": "x",
                            "response_format": "b64_json", **fields}, timeout=60)


def test_stitched_jpeg_inputs_are_stitched_losslessly(gateway_factory: Any,
                                                      upstream: FakeOpenAI) -> None:
    a = encode(picture((300, 200)), "JPEG", quality=85)
    b = encode(grainy((200, 200)), "JPEG", quality=85)
    upstream.answer = encode(picture((1248, 832)), "PNG")
    gw, key_id, key = start(gateway_factory, options={"max_input_images": 1})
    assert edit(gw, key, [a, b]).status_code == 200
    [canvas] = upstream.images
    assert sniff(canvas) == "PNG"  # not a second JPEG generation
    stitched = decoded(canvas)
    assert stitched.size == (500, 200)
    assert max_diff(stitched.crop((0, 0, 300, 200)), decoded(a)) == 0
    assert max_diff(stitched.crop((300, 0, 500, 200)), decoded(b)) == 0
    assert "stitched side by side" in notes(gw, key_id)


def test_stitching_a_signed_upload_notes_the_lost_credentials(gateway_factory: Any,
                                                            upstream: FakeOpenAI) -> None:
    """The stitched canvas cannot carry an input's C2PA manifest: the job says so."""
    signed = sign(encode(picture((300, 200)), "PNG"), "image/png")
    plain = encode(grainy((200, 200)), "PNG")
    upstream.answer = encode(picture((1248, 832)), "PNG")
    gw, key_id, key = start(gateway_factory, options={"max_input_images": 1})
    assert edit(gw, key, [plain, signed]).status_code == 200
    [canvas] = upstream.images
    assert active_manifest(canvas, "image/png") is None
    assert "C2PA content credentials of input #2 were not kept" in notes(gw, key_id)


def test_mask_with_images_that_would_be_stitched_is_a_clear_400(gateway_factory: Any,
                                                               upstream: FakeOpenAI) -> None:
    gw, key_id, key = start(gateway_factory, options={"max_input_images": 1})
    a, b = encode(picture((300, 200)), "PNG"), encode(picture((200, 200)), "PNG")
    resp = edit(gw, key, [a, b], mask=encode(Image.new("L", (300, 200), 255), "PNG"))
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert (error["param"], error["code"]) == ("mask", "mask_with_stitching")
    assert upstream.asked == [] and jobs_of(gw, key_id) == []


def test_mask_with_several_images_uses_a_native_channel_and_the_first_images_region(
        gateway_factory: Any, upstream: FakeOpenAI) -> None:
    """The native (4-slot) channel fails; the one-slot channel that would stitch is skipped
    for a masked job, so it fails instead of compositing the wrong region. With the native
    channel working, the edit of the first image is composited where its mask says."""
    upstream.status = 503
    one_slot = {"name": "one-slot", "type": "sandbox", "priority": -1,
                "options": {"max_input_images": 1}}
    gw, _, key = start(gateway_factory, options={"max_input_images": 4},
                            more=(one_slot,))
    original = picture((300, 200))
    mask = Image.new("L", (300, 200), 0)
    mask.paste(255, (150, 0, 300, 200))
    images = [encode(original, "PNG"), encode(picture((200, 200)), "PNG")]
    resp = edit(gw, key, images, mask=encode(mask, "PNG"))
    assert resp.status_code == 503
    assert "a mask cannot be placed on a stitched result" in resp.json()["error"]["message"]
    assert gw.services.router.get("one-slot").adapter.submitted == 0  # type: ignore[union-attr]
    upstream.status = 200
    answer = Image.new("RGB", (1248, 832), (0, 200, 0))
    upstream.answer = encode(answer, "PNG")
    resp = edit(gw, key, images, mask=encode(mask, "PNG"))
    assert resp.status_code == 200, resp.text
    assert len(upstream.images) == 2  # sent natively, not stitched
    image = decoded(base64.b64decode(resp.json()["data"][0]["b64_json"])).convert("RGB")
    assert image.size == (300, 200)
    assert max_diff(image.crop((0, 0, 150, 200)), original.crop((0, 0, 150, 200))) == 0
    assert max_diff(image.crop((150, 0, 300, 200)), Image.new("RGB", (150, 200), (0, 200, 0))) == 0


# -- colour ------------------------------------------------------------------------------------
def in_profile(im: Image.Image, icc: bytes) -> Image.Image:
    """`im` (sRGB numbers) as numbers in the profile `icc`."""
    dst = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    out = ImageCms.profileToProfile(im.convert("RGB"), ImageCms.createProfile("sRGB"), dst,
                                    outputMode="RGB")
    assert out is not None
    return out


@pytest.mark.parametrize(("fmt", "kept", "edited"), [("png", 0, 0), ("webp", 0, 0),
                                                     ("jpeg", 3, 3)])
def test_masked_result_keeps_the_inputs_colour_profile(gateway_factory: Any,
                                                       upstream: FakeOpenAI, fmt: str,
                                                       kept: int, edited: int) -> None:
    """A Display-P3 input: the served file carries the input's profile in every format, the
    kept half has the input's numbers, and the edited half means the colour the upstream
    answered (an untagged, so sRGB, green), not the same numbers read as P3."""
    p3 = display_p3()
    original = picture((300, 200))
    mask = Image.new("L", (300, 200), 0)
    mask.paste(255, (150, 0, 300, 200))
    upstream.answer = encode(Image.new("RGB", (1248, 832), (0, 200, 0)), "PNG")
    gw, key_id, key = start(gateway_factory)
    resp = httpx.post(f"{gw.base_url}/v1/images/edits",
                      headers={"authorization": f"Bearer {key}"},
                      files={"image": ("p3.png", encode(original, "PNG", icc_profile=p3),
                                       "image/png"),
                             "mask": ("mask.png", encode(mask, "PNG"), "image/png")},
                      data={"model": "flux-kontext-pro", "prompt": "green", "output_format": fmt,
                            "response_format": "b64_json"}, timeout=60)
    assert resp.status_code == 200, resp.text
    image = decoded(base64.b64decode(resp.json()["data"][0]["b64_json"]))
    assert image.info.get("icc_profile") == p3
    # (JPEG blocks are 8 pixels wide: the one at the mask's edge mixes both halves)
    assert max_diff(image.crop((0, 0, 144, 200)), original.crop((0, 0, 144, 200))) <= kept
    edit = image.crop((160, 0, 300, 200))
    want = in_profile(Image.new("RGB", edit.size, (0, 200, 0)), p3)  # sRGB green, in P3 numbers
    assert want.getpixel((0, 0)) != (0, 200, 0)  # (the same numbers would mean another green)
    assert max_diff(edit, want) <= edited
    assert "colour profile" in notes(gw, key_id)


def test_converted_result_keeps_its_own_profile(gateway_factory: Any,
                                                upstream: FakeOpenAI) -> None:
    p3 = display_p3()
    source = picture(SIZE)
    upstream.answer = encode(source, "JPEG", quality=92, icc_profile=p3)
    gw, _, key = start(gateway_factory)
    served = decoded(generate(gw, key, output_format="png"))
    assert served.format == "PNG" and served.info.get("icc_profile") == p3
    assert max_diff(served, decoded(upstream.answer)) == 0


# -- quality from every surface reaches the upstream (the sandbox encodes at it) ---------------
def _served_by(gw: Gateway, key: str, surface: str) -> bytes:
    auth = {"authorization": f"Bearer {key}"}
    if surface == "replicate":
        resp = httpx.post(f"{gw.base_url}/replicate/v1/models/black-forest-labs/"
                          "flux-kontext-pro/predictions", headers={**auth, "prefer": "wait"},
                          json={"input": {"prompt": "a fox", "output_format": "jpg",
                                          "output_quality": 40}}, timeout=60)
        assert resp.status_code == 201, resp.text
        url = resp.json()["output"]
    elif surface == "chat":
        resp = httpx.post(f"{gw.base_url}/v1/chat/completions", headers=auth, timeout=60,
                          json={"model": "flux-kontext-pro", "output_format": "jpeg",
                                "output_compression": 40,
                                "messages": [{"role": "user", "content": "a fox"}]})
        assert resp.status_code == 200, resp.text
        content = resp.json()["choices"][0]["message"]["content"]
        url = content.split("](", 1)[1].split(")", 1)[0]
    else:
        return generate(gw, key, output_format="jpeg", output_compression=40)
    image = httpx.get(url, timeout=30)
    assert image.status_code == 200
    return image.content


@pytest.mark.parametrize("surface", ["openai.images", "chat", "replicate"])
def test_quality_from_every_surface_reaches_the_upstream(gateway: Gateway, api_key: str,
                                                         surface: str) -> None:
    served = _served_by(gateway, api_key, surface)
    assert sniff(served) == "JPEG"
    assert quant(served) == quant(encode(Image.new("RGB", (16, 16)), "JPEG", quality=40))


# -- provenance --------------------------------------------------------------------------------
MIMES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


@pytest.mark.parametrize(("answered", "asked", "ratio", "kept"), [
    pytest.param("png", "png", "1:1", True, id="png passes through: manifest kept"),
    pytest.param("jpeg", "jpeg", "1:1", True, id="jpeg passes through: manifest kept"),
    pytest.param("webp", "webp", "1:1", True, id="webp passes through: manifest kept"),
    pytest.param("png", "jpeg", "1:1", False, id="converted: lost, and noted"),
    pytest.param("jpeg", "jpeg", "16:9", False, id="cropped: lost, and noted"),
])
def test_content_credentials_are_kept_or_their_loss_is_noted(
        gateway_factory: Any, upstream: FakeOpenAI, answered: str, asked: str, ratio: str,
        kept: bool) -> None:
    plain = encode(picture(SIZE), {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}[answered])
    upstream.answer = sign(plain, MIMES[answered])
    label = active_manifest(upstream.answer, MIMES[answered])
    assert label is not None
    gw, key_id, key = start(gateway_factory)
    served = generate(gw, key, output_format=asked, aspect_ratio=ratio)
    if kept:
        assert served == upstream.answer
        assert active_manifest(served, MIMES[asked]) == label
        assert "C2PA manifest was kept byte for byte" in notes(gw, key_id)
    else:
        assert active_manifest(served, MIMES[asked]) is None
        assert "C2PA content credentials (manifest) were lost" in notes(gw, key_id)


def test_masked_edit_of_a_signed_result_notes_the_lost_credentials(
        gateway_factory: Any, upstream: FakeOpenAI) -> None:
    upstream.answer = sign(encode(picture((1248, 832)), "PNG"), "image/png")
    gw, key_id, key = start(gateway_factory)
    mask = Image.new("L", (300, 200), 255)
    resp = httpx.post(f"{gw.base_url}/v1/images/edits",
                      headers={"authorization": f"Bearer {key}"},
                      files={"image": ("in.png", encode(picture((300, 200)), "PNG"), "image/png"),
                             "mask": ("mask.png", encode(mask, "PNG"), "image/png")},
                      data={"model": "flux-kontext-pro", "prompt": "x",
                            "response_format": "b64_json"}, timeout=60)
    assert resp.status_code == 200, resp.text
    served = base64.b64decode(resp.json()["data"][0]["b64_json"])
    assert active_manifest(served, "image/png") is None
    assert "C2PA content credentials (manifest) were lost" in notes(gw, key_id)
