"""Stitching several inputs side by side with equal heights, within the pixel limit."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from gateway.errors import InvalidRequest, UnsupportedMedia
from gateway.images.stitch import plan_layout, stitch


def encode(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def test_heights_equalised_to_smallest_and_order_kept() -> None:
    red = Image.new("RGB", (100, 200), (255, 0, 0))
    blue = Image.new("RGB", (300, 100), (0, 0, 255))
    green = Image.new("RGB", (50, 50), (0, 255, 0))
    out = stitch([encode(red), encode(blue), encode(green)])
    assert out.height == 50 and out.mime == "image/png"
    assert [t.index for t in out.layout] == [0, 1, 2]
    assert [(t.x, t.width, t.height) for t in out.layout] == [(0, 25, 50), (25, 150, 50),
                                                              (175, 50, 50)]
    assert out.width == 225
    assert out.layout[0].scale == pytest.approx(0.25)
    with Image.open(io.BytesIO(out.data)) as im:
        assert im.size == (225, 50)
        rgb = im.convert("RGB")
        assert rgb.getpixel((12, 25)) == (255, 0, 0)
        assert rgb.getpixel((100, 25)) == (0, 0, 255)
        assert rgb.getpixel((200, 25)) == (0, 255, 0)
    assert out.layout[1].as_dict()["x"] == 25


def test_result_within_pixel_limit() -> None:
    a = Image.new("RGB", (400, 300), "white")
    b = Image.new("RGB", (400, 300), "black")
    out = stitch([encode(a), encode(b)], max_pixels=60_000)
    assert out.width * out.height <= 60_000
    assert all(t.height == out.height for t in out.layout)
    assert out.layout[1].x == out.layout[0].width
    # aspect ratios of the tiles are preserved (to a pixel)
    assert abs(out.layout[0].width / out.height - 4 / 3) < 0.02


def test_plan_layout_never_exceeds_limit() -> None:
    sizes = [(3000, 2000), (1999, 2999), (17, 4000)]
    for limit in (1_000, 77_777, 20_000_000):
        tiles = plan_layout(sizes, max_pixels=limit)
        width = tiles[-1].x + tiles[-1].width
        assert width * tiles[0].height <= limit
    with pytest.raises(ValueError):
        plan_layout([], max_pixels=10)


def test_alpha_kept_and_bad_inputs_refused() -> None:
    clear = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    out = stitch([encode(clear), encode(Image.new("RGB", (10, 10)))])
    with Image.open(io.BytesIO(out.data)) as im:
        assert im.mode == "RGBA"
    with pytest.raises(UnsupportedMedia) as ei:
        stitch([encode(clear), b"<html>"])
    assert ei.value.param == "image[1]"
    with pytest.raises(InvalidRequest):
        stitch([])
