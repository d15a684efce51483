"""Masks: convention detection, size check, compositing the upstream result onto the original."""

from __future__ import annotations

import io
import itertools

import pytest
from PIL import Image

from gateway.errors import InvalidRequest, UnsupportedMedia
from gateway.images.masks import composite, load_mask

W, H = 64, 32


def encode(im: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


def decode(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB")


@pytest.fixture
def original() -> Image.Image:
    return Image.effect_noise((W, H), 80).convert("RGB")


def half_mask() -> Image.Image:
    """Left half black (keep), right half white (edit)."""
    m = Image.new("L", (W, H), 0)
    m.paste(255, (W // 2, 0, W, H))
    return m


@pytest.mark.parametrize("fmt", ["png", "webp"])
def test_black_is_bit_identical_white_is_result(original: Image.Image, fmt: str) -> None:
    result = Image.new("RGB", (W, H), (1, 2, 250))
    mask = load_mask(encode(half_mask()), image_size=(W, H))
    out = decode(composite(encode(original), encode(result), mask, fmt))  # type: ignore[arg-type]
    assert out.size == (W, H)
    for y in range(H):
        for x in range(W):
            if x < W // 2:
                assert out.getpixel((x, y)) == original.getpixel((x, y))
            else:
                assert out.getpixel((x, y)) == (1, 2, 250)


def test_result_is_scaled_to_original_size(original: Image.Image) -> None:
    # upstream answered at another size: left half green, right half red, twice as large
    result = Image.new("RGB", (W * 2, H * 2), (0, 255, 0))
    result.paste((255, 0, 0), (W, 0, W * 2, H * 2))
    mask = Image.new("L", (W, H), 255)
    out = decode(composite(encode(original), encode(result), mask, "png"))
    assert out.size == (W, H)
    assert out.getpixel((5, 5)) == (0, 255, 0)
    assert out.getpixel((W - 5, 5)) == (255, 0, 0)


def test_gray_ramp_blends_monotonically() -> None:
    black = Image.new("RGB", (256, 4), (0, 0, 0))
    white = Image.new("RGB", (256, 4), (255, 255, 255))
    ramp = Image.new("L", (256, 4))
    ramp.putdata([x for _ in range(4) for x in range(256)])  # 0 at left .. 255 at right
    mask = load_mask(encode(ramp), image_size=(256, 4))
    out = decode(composite(encode(black), encode(white), mask, "png"))
    row = list(out.getchannel("R").crop((0, 2, 256, 3)).tobytes())
    assert row[0] == 0 and row[-1] == 255
    assert all(b >= a for a, b in itertools.pairwise(row))
    mid = mask.getpixel((128, 2))
    assert isinstance(mid, int) and abs(row[128] - mid) <= 1


def test_openai_rgba_transparent_area_is_edited(original: Image.Image) -> None:
    # OpenAI style: the image itself, opaque except a fully transparent hole (edit here)
    rgba = original.convert("RGBA")
    rgba.paste((0, 0, 0, 0), (W // 2, 0, W, H))
    weights = load_mask(encode(rgba), image_size=(W, H))
    assert weights.mode == "L"
    assert weights.getpixel((2, 2)) == 0 and weights.getpixel((W - 2, 2)) == 255
    result = Image.new("RGB", (W, H), (9, 9, 9))
    out = decode(composite(encode(original), encode(result), weights, "png"))
    assert out.getpixel((2, 2)) == original.getpixel((2, 2))
    assert out.getpixel((W - 2, 2)) == (9, 9, 9)


def test_partial_alpha_gives_partial_weight() -> None:
    m = Image.new("RGBA", (4, 4), (255, 255, 255, 255))
    m.putpixel((0, 0), (255, 255, 255, 55))
    assert load_mask(encode(m), image_size=(4, 4)).getpixel((0, 0)) == 200


def test_opaque_rgba_mask_is_read_as_grayscale() -> None:
    m = Image.new("RGBA", (4, 4), (0, 0, 0, 255))
    m.putpixel((1, 1), (255, 255, 255, 255))
    w = load_mask(encode(m), image_size=(4, 4))
    assert w.getpixel((0, 0)) == 0 and w.getpixel((1, 1)) == 255


def test_rgb_and_palette_masks() -> None:
    rgb = Image.new("RGB", (4, 4), (255, 255, 255))
    assert load_mask(encode(rgb), image_size=(4, 4)).getextrema() == (255, 255)
    pal = Image.new("RGB", (4, 4), (0, 0, 0)).convert("P")
    assert load_mask(encode(pal), image_size=(4, 4)).getextrema() == (0, 0)


def test_sixteen_bit_grayscale_mask_is_scaled() -> None:
    m = Image.new("I;16", (4, 4), 65535)
    assert load_mask(encode(m), image_size=(4, 4)).getextrema() == (255, 255)


def test_mask_of_wrong_size_is_400_naming_both_sizes() -> None:
    with pytest.raises(InvalidRequest) as ei:
        load_mask(encode(Image.new("L", (W + 1, H))), image_size=(W, H))
    assert ei.value.param == "mask" and ei.value.code == "mask_size_mismatch"
    assert f"{W + 1}x{H}" in ei.value.message and f"{W}x{H}" in ei.value.message


def test_mask_must_be_an_image() -> None:
    with pytest.raises(UnsupportedMedia) as ei:
        load_mask(b"<svg/>", image_size=(W, H))
    assert ei.value.param == "mask"


def test_alpha_original_keeps_alpha_and_jpeg_output_works(original: Image.Image) -> None:
    rgba = original.convert("RGBA")
    rgba.putalpha(128)
    result = Image.new("RGB", (W, H), (200, 0, 0))
    mask = Image.new("L", (W, H), 0)
    png = composite(encode(rgba), encode(result), mask, "png")
    with Image.open(io.BytesIO(png)) as im:
        assert im.mode == "RGBA" and im.getpixel((3, 3)) == rgba.getpixel((3, 3))
    jpeg = composite(encode(rgba), encode(result), Image.new("L", (W, H), 255), "jpeg")
    with Image.open(io.BytesIO(jpeg)) as im:
        assert im.format == "JPEG" and im.mode == "RGB"
        r, g, b = im.getpixel((10, 10))  # type: ignore[misc]
        assert r > 180 and g < 30 and b < 30
