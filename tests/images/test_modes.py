"""16-bit grayscale inputs (issue 10, item 1): scaled to 8 bits, never clipped to white, on
every path that changes pixels (mask composite, stitching, EXIF rotation)."""

from __future__ import annotations

import io

from PIL import Image, ImageChops

from gateway.images.masks import composite
from gateway.images.modes import to_8bit
from gateway.images.stitch import stitch
from gateway.images.validate import validate_image

LIMITS = {"max_bytes": 20 * 1024 * 1024, "max_pixels": 20_000_000}


def gray16(size: tuple[int, int] = (64, 32)) -> Image.Image:
    """A 16-bit horizontal ramp 0..65535, as Pillow decodes a 16-bit grayscale PNG."""
    im = Image.new("I;16", size)
    w = size[0]
    im.putdata([round(x * 65535 / (w - 1)) for _ in range(size[1]) for x in range(w)])
    return im


def png(im: Image.Image, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG", **kwargs)
    return buf.getvalue()


def expected_l(im: Image.Image) -> Image.Image:
    """The correct 8-bit reduction: v -> round(v / 257), computed independently."""
    out = Image.new("L", im.size)
    out.putdata([min(255, int(v / 257 + 0.5)) for v in im.get_flattened_data()])
    return out


def max_diff(a: Image.Image, b: Image.Image) -> int:
    lo_hi = ImageChops.difference(a.convert("RGB"), b.convert("RGB")).getextrema()
    return max(hi for _, hi in lo_hi)


def test_16_bit_png_decodes_as_i16_and_is_scaled_not_clipped() -> None:
    src = gray16()
    decoded = Image.open(io.BytesIO(png(src)))
    assert decoded.mode == "I;16"
    out = to_8bit(decoded)
    assert out.mode == "L"
    assert max_diff(out, expected_l(src)) == 0
    assert out.getextrema() == (0, 255)  # a ramp, not a white field


def test_masked_16_bit_input_keeps_its_pixels_under_black() -> None:
    src = gray16()
    result = png(Image.new("RGB", src.size, (10, 200, 30)))
    mask = Image.new("L", src.size, 0)
    mask.paste(255, (src.width // 2, 0, src.width, src.height))  # right half is edited
    out = Image.open(io.BytesIO(composite(png(src), result, mask, "png")))
    left = (0, 0, src.width // 2, src.height)
    assert max_diff(out.crop(left), expected_l(src).crop(left)) == 0
    assert out.getpixel((src.width - 1, 0))[:3] == (10, 200, 30)


def test_stitched_16_bit_tile_is_not_white() -> None:
    src = gray16((32, 32))
    other = Image.new("RGB", (32, 32), (200, 30, 30))
    merged = stitch([png(src), png(other)], max_pixels=10_000)
    canvas = Image.open(io.BytesIO(merged.data))
    tile = canvas.crop((0, 0, 32, 32))
    assert max_diff(tile, expected_l(src)) == 0


def test_rotated_16_bit_png_sent_upstream_is_the_upright_gray_image() -> None:
    src = gray16((64, 32))
    exif = Image.Exif()
    exif[0x0112] = 6
    image = validate_image(png(src, exif=exif), param="image", **LIMITS)
    upright = Image.open(io.BytesIO(image.data))
    assert (image.width, image.height) == (32, 64)
    want = expected_l(src).transpose(Image.Transpose.ROTATE_270)
    assert max_diff(upright, want) == 0
