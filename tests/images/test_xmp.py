"""The IPTC digital source type spliced into PNG, JPEG and WebP without touching the image."""

from __future__ import annotations

import io
from typing import Any

import pytest
from PIL import Image

from gateway.images.xmp import COMPOSITE, GENERATED, XmpError, source_type_of, with_source_type
from tests.images.credentials import image_data


def _file(fmt: str, mode: str = "RGB", **options: Any) -> bytes:
    im = Image.linear_gradient("L").resize((67, 45)).convert(mode)
    if mode == "RGBA":
        im.putalpha(Image.linear_gradient("L").resize((67, 45)))
    buf = io.BytesIO()
    im.save(buf, fmt, **options)
    return buf.getvalue()


CASES = [
    pytest.param(_file("PNG"), id="png"),
    pytest.param(_file("PNG", "RGBA"), id="png alpha"),
    pytest.param(_file("JPEG", quality=90), id="jpeg jfif"),
    pytest.param(_file("JPEG", exif=Image.Exif().tobytes()), id="jpeg exif"),
    pytest.param(_file("WEBP", lossless=True), id="webp lossless (VP8L)"),
    pytest.param(_file("WEBP", quality=80), id="webp lossy (VP8)"),
    pytest.param(_file("WEBP", "RGBA", lossless=True), id="webp lossless alpha"),
    pytest.param(_file("WEBP", "RGBA", quality=70), id="webp lossy alpha (VP8X+ALPH)"),
]


@pytest.mark.parametrize("data", CASES)
def test_source_type_is_written_and_the_image_is_untouched(data: bytes) -> None:
    assert source_type_of(data) is None
    out, note = with_source_type(data, COMPOSITE, "fluxgate test")
    assert note is None and source_type_of(out) == COMPOSITE
    assert image_data(out) == image_data(data)
    before, after = Image.open(io.BytesIO(data)), Image.open(io.BytesIO(out))
    assert (after.mode, after.size) == (before.mode, before.size)
    assert after.tobytes() == before.tobytes()
    again, kept = with_source_type(out, GENERATED, "fluxgate test")
    assert again == out and kept is not None and "kept" in kept  # an existing type is kept


def test_an_xmp_packet_without_a_source_type_is_replaced_and_said_so() -> None:
    im = Image.new("RGB", (8, 8))
    buf = io.BytesIO()
    im.save(buf, "JPEG", xmp=b"<x:xmpmeta xmlns:x='adobe:ns:meta/'/>")
    out, note = with_source_type(buf.getvalue(), GENERATED, "fluxgate test")
    assert source_type_of(out) == GENERATED
    assert note is not None and "replaced" in note
    assert out.count(b"http://ns.adobe.com/xap/1.0/\x00") == 1  # one packet, not two


def test_other_formats_are_refused() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "GIF")
    with pytest.raises(XmpError):
        with_source_type(buf.getvalue(), GENERATED, "fluxgate test")
