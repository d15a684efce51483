"""Input image validation: sniff the bytes, check limits from the header, decode safely.

(Foundation version: magic-byte sniffing, byte and pixel limits from the header before any
decode, EXIF orientation. The editing issue hardens this module.)
"""

from __future__ import annotations

import io

from PIL import Image, ImageOps

from adapters.base import InputImage
from gateway.errors import InvalidRequest, PayloadTooLarge, UnsupportedMedia

_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif"}


def sniff(data: bytes) -> str | None:
    """The Pillow format name for known raster magic bytes, else None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    return None


def validate_image(data: bytes, *, param: str, max_bytes: int, max_pixels: int) -> InputImage:
    """A validated, upright input image; raises PayloadTooLarge (413), UnsupportedMedia (415)
    or InvalidRequest (400) naming `param` and the limit. CPU-bound: call in a thread."""
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"{param}: image is {len(data)} bytes; the limit is "
                              f"{max_bytes} bytes ({max_bytes // (1024 * 1024)} MB).", param=param)
    fmt = sniff(data)
    if fmt is None:
        raise UnsupportedMedia(f"{param}: not a PNG, JPEG, WebP or GIF image.", param=param,
                               code="unsupported_image_format")
    try:
        with Image.open(io.BytesIO(data), formats=[fmt]) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise InvalidRequest(f"{param}: image is {w}x{h} = {w * h} pixels; the limit is "
                                     f"{max_pixels} pixels.", param=param, code="image_too_large")
            im.load()
            upright = ImageOps.exif_transpose(im)
            if upright is not im or fmt == "GIF":
                buf = io.BytesIO()
                upright.convert("RGBA" if "A" in upright.getbands() else "RGB").save(buf, "PNG")
                data, fmt = buf.getvalue(), "PNG"
            w, h = upright.size
    except (OSError, Image.DecompressionBombError, ValueError) as exc:
        raise InvalidRequest(f"{param}: the image could not be decoded ({exc}).", param=param,
                             code="invalid_image") from exc
    return InputImage(data=data, mime=_FORMATS[fmt], width=w, height=h)
